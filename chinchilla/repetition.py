"""What repeating data costs the runs of a plan (`chinchilla plan --repetition`).

Two sources, both the data-constrained law of Muennighoff et al. 2023
(chinchilla/fit/constrained.py):

- a number, R*_D alone (for instance a published one). It says what repeated tokens
  are worth, D' / D, and nothing in nats: the base law of another corpus and model
  family is not ours, and R*_N needs our base law's compute-optimal sizes.
- a `fit_data_constrained.json` written by `chinchilla fit --law data-constrained`: the
  whole fitted law, so each run also gets its cost in nats, L(N, D, U) of the law minus
  the base law's L(N, D) with as many fresh tokens (excess parameters included).

numpy only; the fit module is imported only for the law's formulas.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chinchilla.errors import UserError

BASE = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class RepetitionLaw:
    rd_star: float
    source: str  # in words, for the plan's note and its JSON
    base: dict | None = None  # the fitted base law (a fit file), else None
    rn_star: float | None = None
    n_convention: str | None = None  # the fit's N: "total" or "nonembedding"

    def worth(self, D, U) -> np.ndarray:
        """D' / D: the fraction of a run's tokens worth fresh ones."""
        from chinchilla.fit.constrained import effective_tokens

        D = np.asarray(D, float)
        return effective_tokens(D, U, self.rd_star) / D

    def cost_nats(self, N, D, U) -> np.ndarray | None:
        """The law's loss with U unique tokens minus the base law's with fresh ones."""
        if self.base is None:
            return None
        from chinchilla.fit.constrained import constrained_loss
        from chinchilla.fit.parametric import parametric_loss

        fresh = parametric_loss(
            np.asarray(N, float), np.asarray(D, float), *(self.base[k] for k in BASE)
        )
        return constrained_loss(N, D, U, self.base, self.rn_star, self.rd_star) - fresh

    def as_dict(self) -> dict:
        return {
            "rd_star": self.rd_star,
            "rn_star": self.rn_star,
            "base": self.base,
            "source": self.source,
            "n_convention": self.n_convention,
            "worth": "D'/D: the fraction of a run's D tokens worth fresh ones, "
            "D' = U + U R*_D (1 - exp(-(D/U - 1) / R*_D))",
            "cost_nats": None
            if self.base is None
            else "the fitted law's loss with the run's unique tokens minus the base law's "
            "with as many fresh tokens (nats/token)",
        }


def _positive(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--repetition: {what} must be positive and finite, got {value!r}")
    return value


def load(spec: str) -> RepetitionLaw:
    """`--repetition R*_D` or `--repetition fit_data_constrained.json`."""
    try:
        value = float(spec)
    except ValueError:
        pass
    else:
        v = _positive(value, "R*_D")
        return RepetitionLaw(rd_star=v, source=f"R*_D = {v:g} as given (no base law: no nats)")
    path = Path(spec)
    if path.is_dir():
        path = path / "fit_data_constrained.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"--repetition {spec}: neither a number (R*_D) nor an existing file "
            "(a fit_data_constrained.json, or the folder holding one)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"--repetition {path}: cannot read it as JSON ({exc})") from None
    law = doc.get("data_constrained") if isinstance(doc, dict) else None
    if not isinstance(law, dict):
        raise UserError(
            f"--repetition {path}: no data_constrained section (write one with "
            "`chinchilla fit RUNS --law data-constrained --out DIR`)"
        )
    try:
        base = {k: _positive(float(law[k]), k) for k in BASE}
        rd = _positive(float(law["rd_star"]), "rd_star")
        rn = _positive(float(law["rn_star"]), "rn_star")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"--repetition {path}: data_constrained lacks a number ({exc})") from None
    conv = (doc.get("conventions") or {}).get("n_params")
    if conv not in ("total", "nonembedding"):
        raise UserError(
            f"--repetition {path}: conventions.n_params is {conv!r}, not total or nonembedding"
        )
    return RepetitionLaw(
        rd_star=rd,
        source=f"the law fitted in {path} (N: {conv} parameters)",
        base=base,
        rn_star=rn,
        n_convention=conv,
    )


def for_runs(law: RepetitionLaw, runs, n_convention: str) -> list[dict]:
    """Per planned run: D'/D and, with a fitted law, the cost in nats. A fitted law
    whose N convention differs from the plan's is refused (its N would not be ours)."""
    if law.n_convention is not None and law.n_convention != n_convention:
        raise UserError(
            f"--repetition: the law was fitted with N = {law.n_convention} parameters, "
            f"the plan counts {n_convention} (grid.n_convention); refit or set it to match"
        )
    if not runs:
        return []
    N = np.array(
        [r.n_params if n_convention == "total" else r.n_params_nonembedding for r in runs],
        float,
    )
    D = np.array([r.n_tokens for r in runs], float)
    U = np.array([r.unique_tokens for r in runs], float)
    worth = law.worth(D, U)
    cost = law.cost_nats(N, D, U)
    return [
        {
            "effective_tokens": float(worth[i] * D[i]),
            "worth": float(worth[i]),
            "repetition_cost_nats": None if cost is None else float(cost[i]),
        }
        for i in range(len(runs))
    ]
