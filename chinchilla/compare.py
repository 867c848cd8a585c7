"""`chinchilla compare RUNS_A RUNS_B [...]`: several sweeps side by side, for instance one
per model family (`model.arch`), as Kaplan et al. 2020 compared LSTMs with Transformers
(their Figure 7).

Each sweep is fitted on its own (`fit_all`, the same three approaches, one N convention
for all: non-embedding by default, as Kaplan compare families) and reported with:

- its frontier in N: the lowest final loss of each model size over its token counts;
- each approach's compute-optimal exponent a (N_opt ∝ C^a) with its 80% interval, and
  Approach 3's E, alpha and beta;
- each approach's compute-optimal D/N at the sweep's largest compute, and each budget's
  lowest final loss (a sweep trained with tuned laws, `train.hparams`, beside one
  trained with the hand rule: what tuning changed);
- the loss at each context position (`train.position_loss`) of one run per sweep at a
  matched N: the geometric middle of the N ranges the sweeps share, each sweep's run of
  the nearest N (its lowest loss among those).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla import layout
from chinchilla.errors import UserError
from chinchilla.store import load_runs


def _label(path: Path, runs) -> str:
    arch = sorted(set(runs["arch"].dropna())) if "arch" in runs else []
    return f"{path.name} ({', '.join(arch) or 'transformer'})"


def _positions(runs, n_col: str) -> list[tuple[float, float, list[float]]]:
    """(N, loss, per-position loss) of the ok runs that recorded it."""
    if "loss_by_position" not in runs:
        return []
    out = []
    for _, r in runs.iterrows():
        text = r["loss_by_position"]
        if r["status"] == "ok" and isinstance(text, str) and text:
            out.append((float(r[n_col]), float(r["loss"]), [float(v) for v in text.split(",")]))
    return out


def compare(
    paths: list[Path],
    *,
    n_convention: str = "nonembedding",
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:

    from chinchilla.fit.data import load_results
    from chinchilla.fit.results import FitOptions, fit_all
    from chinchilla.predict import predictions

    if len(paths) < 2:
        raise UserError("compare needs at least two sweep directories")
    n_col = "n_params_nonembedding" if n_convention == "nonembedding" else "n_params"
    sweeps = []
    for path in paths:
        if not (path.is_dir() and (path / layout.RUNS).exists()):
            raise UserError(f"{path}: not a sweep directory (no runs.parquet)")
        res = load_results(path, n_convention=n_convention)
        if len(res) == 0:
            raise UserError(f"{path}: no runs with status ok")
        runs = load_runs(path)
        rep = fit_all(res, FitOptions(bootstrap=bootstrap, seed=seed))
        doc = rep.to_json()
        top = float(np.max(res.flops))
        ratio = {int(row["approach"]): row["tokens_per_param"] for row in predictions(rep, [top])}
        ok = runs[runs["status"] == "ok"]
        best = ok.groupby(n_col)["loss"].min().sort_index()
        laws = {}
        for k in (1, 2, 3):
            law = doc.get(f"approach{k}")
            if law is None:
                laws[k] = {"a": None, "a_ci": None, "skipped": doc["skipped"].get(f"approach{k}")}
                continue
            ci = law.get("a_ci") if k < 3 else (law.get("ci", {}).get("a") or {}).get("80")
            laws[k] = {
                "a": law["a"],
                "a_ci": ci,
                "skipped": None,
                "interval_withheld": law.get("bootstrap_withheld"),
            }
        a3 = doc.get("approach3")
        sweeps.append(
            {
                "path": str(path),
                "label": _label(path, runs),
                "runs": int(len(ok)),
                "n_range": [float(best.index.min()), float(best.index.max())],
                "frontier": [[float(n), float(v)] for n, v in best.items()],
                "laws": laws,
                "tokens_per_param": {"flops": top, "by_approach": ratio},
                "best_loss_by_budget": {
                    float(c): float(v) for c, v in ok.groupby("budget")["loss"].min().items()
                }
                if "budget" in ok
                else {},
                "hparams_from": sorted(set(ok["hparams_from"].dropna()))
                if "hparams_from" in ok
                else ["rule"],
                "approach3": None
                if a3 is None
                else {k: a3[k] for k in ("E", "A", "B", "alpha", "beta", "success")},
                "irreducible_loss": doc["irreducible_loss"],
                "_positions": _positions(ok, n_col),
            }
        )
    _match_positions(sweeps)
    return {
        "n_convention": n_convention,
        "compute": "C = 6 N D with the N above, per sweep and approach",
        "bootstrap": bootstrap,
        "sweeps": sweeps,
    }


def _match_positions(sweeps: list[dict]) -> None:
    """Each sweep's per-position losses at a common N (see the module docstring)."""
    lows = [s["n_range"][0] for s in sweeps]
    highs = [s["n_range"][1] for s in sweeps]
    lo, hi = max(lows), min(highs)
    if lo > hi:  # no shared range: the middle of everything
        lo, hi = min(lows), max(highs)
    target = math.sqrt(lo * hi)
    for s in sweeps:
        cands = s.pop("_positions")
        s["position_loss"] = None
        if not cands:
            continue
        dist = np.array([abs(math.log(n / target)) for n, _, _ in cands])
        near = [c for c, d in zip(cands, dist, strict=True) if d <= dist.min() + 1e-12]
        n, loss, per = min(near, key=lambda c: c[1])
        s["position_loss"] = {"target_n": target, "n": n, "loss": loss, "by_position": per}
