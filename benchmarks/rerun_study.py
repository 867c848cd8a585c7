"""How far do the fitted exponents move when a sweep is trained again with other seeds?

    python benchmarks/rerun_study.py --config configs/tiny.yaml --replicates 14 \
        --parallel 14 --out DIR

The sampling distribution of an estimate is what its bootstrap interval stands in for:
the spread of the estimate over experiments that could have been run instead. This
script runs them. Replicate k trains the config's plan with every run's seed
(initialisation and data order) offset by 1000 k; the design and the data (the synthetic
source, its evaluation set) are the same. Replicates train in parallel processes, one
worker and one thread each, and each is fitted by `chinchilla fit` with its bootstrap
(in the same process, after training; the generated data are then removed).
DIR/study.json lists, per replicate and approach, a and its 80% interval; the spread of
a over replicates is the reference the intervals are judged against (see the README's
demo section). Each replicate's runs.parquet stays in DIR/rep<k>/ for re-analysis.

`--smoke` trains two replicates of a two-budget cut of the config, to test the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def replicate(config: str, overrides: list[str], k: int, out: Path) -> None:
    """Train replicate k (seed offset 1000 k) into `out`."""
    from chinchilla.config import load_config
    from chinchilla.grid import plan, run_id
    from chinchilla.sweep import run_sweep

    cfg = load_config(config, overrides)
    runs = []
    for r in plan(cfg).runs:
        seed = (cfg.train.seed if r.seed is None else r.seed) + 1000 * k
        rid = run_id(r.shape, r.n_tokens, r.lr, cfg, seed=seed)
        runs.append(dataclasses.replace(r, run_id=rid, seed=seed))
    run_sweep(cfg, out, live=False, workers=1, runs=runs)


APPROACHES = ("approach1", "approach2", "approach3")


def fit(d: Path) -> None:
    """`chinchilla fit` of one replicate (writes its fit.json)."""
    cmd = [sys.executable, "-m", "chinchilla", "fit", str(d), "--no-plots"]
    subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)


def summarise(doc: dict) -> dict:
    """Per approach: a, its 80% interval and width, failed resamples; the demo's bars."""
    row: dict = {}
    for name in APPROACHES:
        v = doc.get(name)
        if not v:
            row[name] = None
            continue
        ci = (v.get("ci") or {}).get("a", {}).get("80")
        row[name] = {
            "a": v["a"],
            "ci80": ci,
            "width": None if not ci else ci[1] - ci[0],
            "failed": v.get("bootstrap_failed"),
            "method": v.get("bootstrap_method"),
        }
    resamples = doc["bootstrap"]["resamples"]
    fits = [row[n] for n in APPROACHES]
    a3, bayes = doc.get("approach3"), doc.get("irreducible_loss")
    e_ci = (a3 or {}).get("ci", {}).get("E", {}).get("80")
    row["bars"] = {
        "agree_within_0.1": all(fits)
        and max(f["a"] for f in fits) - min(f["a"] for f in fits) <= 0.1,
        "intervals_at_most_0.2": all(
            f and f["width"] is not None and f["width"] <= 0.2 for f in fits
        ),
        "under_5pct_failed": all(f and (f["failed"] or 0) < 0.05 * resamples for f in fits),
        "E_not_below_bayes": bayes is None or (e_ci is not None and e_ci[1] >= bayes),
    }
    row["bars"]["all"] = all(row["bars"].values())
    return row


def _keyed(d: Path):
    """A replicate's Results and, per run, a key shared by the same run of every
    replicate: (budget, N, D, why planned)."""
    import pandas as pd

    from chinchilla.fit.data import load_results

    res = load_results(d)
    t = pd.read_parquet(d / "runs.parquet").set_index("run_id")
    keys = [
        (float(t.budget[r]), int(t.n_params[r]), int(t.n_tokens[r]), str(t.planned_by[r]))
        for r in res.run_id
    ]
    return res, keys


def noise_structure(dirs: list[Path], draws: int = 400, seed: int = 0) -> dict:
    """What the replicates say about run-to-run noise: each budget's noise (RMS over its
    runs of the std across replicates), the mean correlation between two runs' losses
    across replicates, Approach 1's spread when every run's loss is drawn independently
    from its own replicates (independent noise at the measured level), and the median
    width of the run bootstrap Approach 1 used before (runs resampled within sizes)."""
    from chinchilla.fit.bootstrap import bootstrap_loop
    from chinchilla.fit.results import _approach1

    loaded = [_keyed(d) for d in dirs]
    common = set(loaded[0][1]).intersection(*(set(k) for _, k in loaded[1:]))
    base, base_keys = loaded[0]
    keep = np.array([k in common for k in base_keys])
    base = base.subset(keep)
    keys = [k for k in base_keys if k in common]
    by_key = [dict(zip(k, r.loss, strict=True)) for r, k in loaded]
    table = np.array([[losses[x] for x in keys] for losses in by_key])
    std = table.std(axis=0, ddof=1)
    budgets = sorted({k[0] for k in keys})
    by_budget = {
        f"{b:.3g}": float(
            np.sqrt(np.mean([s**2 for s, k in zip(std, keys, strict=True) if k[0] == b]))
        )
        for b in budgets
    }
    c = np.corrcoef(table.T)
    mean_corr = float(c[np.triu_indices_from(c, 1)].mean())
    rng = np.random.default_rng(seed)
    mixed = []
    for _ in range(draws):
        pick = rng.integers(0, len(dirs), size=len(keys))
        y = table[pick, np.arange(len(keys))]
        mixed.append(_approach1(dataclasses.replace(base, loss=y)).a)
    old = []
    for res, _ in loaded:
        s = bootstrap_loop(
            len(res), 200, 1, lambda i, res=res: {"a": _approach1(res, i).a}, groups=res.n_params
        )
        ci = s.interval("a")
        old.append(None if ci is None else ci[1] - ci[0])
    return {
        "noise_by_budget": by_budget,
        "mean_pairwise_correlation": mean_corr,
        "approach1_independent_draws": {
            "a_std": float(np.std(mixed, ddof=1)),
            "a_p10_p90": [float(np.percentile(mixed, 10)), float(np.percentile(mixed, 90))],
        },
        "approach1_run_bootstrap_width_median": float(np.median([w for w in old if w is not None])),
    }


def analyse(out: Path, ks: list[int], refit: bool) -> dict:
    rows = []
    ok_dirs = []
    for k in ks:
        d = out / f"rep{k}"
        if not (d / "runs.parquet").exists():
            rows.append({"replicate": k, "error": "no runs.parquet (see the replicate's log)"})
            continue
        if refit or not (d / "fit.json").exists():
            fit(d)
        rows.append({"replicate": k, **summarise(json.loads((d / "fit.json").read_text()))})
        ok_dirs.append(d)
    spread = {}
    for name in APPROACHES:
        av = np.array([r[name]["a"] for r in rows if r.get(name)])
        widths = [r[name]["width"] for r in rows if r.get(name) and r[name]["width"] is not None]
        if len(av) >= 2:
            spread[name] = {
                "replicates": int(len(av)),
                "a_mean": float(av.mean()),
                "a_std": float(av.std(ddof=1)),
                "a_p10_p90": [float(np.percentile(av, 10)), float(np.percentile(av, 90))],
                "width_median": float(np.median(widths)) if widths else None,
                "width_max": float(np.max(widths)) if widths else None,
                "intervals_withheld": int(
                    sum(1 for r in rows if r.get(name) and r[name]["width"] is None)
                ),
            }
    passed = [r["replicate"] for r in rows if r.get("bars", {}).get("all")]
    return {
        "replicates": rows,
        "spread": spread,
        "bars_hold_in": [len(passed), len(rows)],
        "noise": noise_structure(ok_dirs) if len(ok_dirs) >= 3 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--first", type=int, default=1, help="seed offset index of the first")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="config override")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument(
        "--reanalyse", action="store_true", help="train nothing: refit DIR/rep*/ and analyse"
    )
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    overrides = ["tasks.continue_k=0", *a.set]
    if a.smoke:
        overrides += ["grid.budgets=[3e9,1e10]", "grid.repeats=0"]
    if a.one is not None:
        d = out / f"rep{a.one}"
        replicate(a.config, overrides, a.one, d)
        fit(d)
        shutil.rmtree(d / "data", ignore_errors=True)  # regenerated from the config
        return

    out.mkdir(parents=True, exist_ok=True)
    ks = list(range(a.first, a.first + (2 if a.smoke else a.replicates)))
    t0 = time.time()
    todo, live = ([] if a.reanalyse else list(ks)), {}
    args = [a.config, *sum((["--set", s] for s in a.set), [])] + (["--smoke"] if a.smoke else [])
    while todo or live:
        while todo and len(live) < a.parallel:
            k = todo.pop(0)
            log = open(out / f"rep{k}.log", "w")
            cmd = [sys.executable, __file__, "--config", *args, "--out", str(out), "--one", str(k)]
            live[k] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1)
        for k, p in list(live.items()):
            if p.poll() is not None:
                del live[k]
                print(f"replicate {k}: exit {p.returncode} at {time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    result = {"config": a.config, "overrides": overrides, "train_seconds": train_s}
    result |= analyse(out, ks, refit=a.reanalyse)
    tmp = out / ".study.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out / "study.json")
    if not a.reanalyse:
        print(f"trained {len(ks)} replicates in {train_s:.0f} s")
    for name, s in result["spread"].items():
        print(
            f"{name}: a {s['a_mean']:.3f} std {s['a_std']:.3f} over {s['replicates']} "
            f"replicates; p10-p90 {s['a_p10_p90'][0]:.3f}-{s['a_p10_p90'][1]:.3f}; 80% "
            f"interval width median {s['width_median']:.3f}, max {s['width_max']:.3f}; "
            f"withheld in {s['intervals_withheld']}"
        )
    n = result["bars_hold_in"]
    print(f"the demo's bars hold in {n[0]} of {n[1]} replicates")
    z = result["noise"]
    if z:
        print(
            "noise by budget (RMS over runs of the std across replicates): "
            + ", ".join(f"{b}: {v:.4f}" for b, v in z["noise_by_budget"].items())
        )
        m = z["approach1_independent_draws"]
        print(
            f"mean correlation of two runs' losses: {z['mean_pairwise_correlation']:.3f}; "
            f"approach1 with every run drawn independently from its replicates: std "
            f"{m['a_std']:.3f}, p10-p90 {m['a_p10_p90'][0]:.3f}-{m['a_p10_p90'][1]:.3f}; "
            f"run bootstrap (within sizes) width median "
            f"{z['approach1_run_bootstrap_width_median']:.3f}"
        )


if __name__ == "__main__":
    main()
