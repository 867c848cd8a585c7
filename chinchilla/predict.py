"""Compute-optimal N and D for target budgets or target model sizes, per approach.

Approaches 1 and 2: N_opt = k_N C^a and D_opt = k_D C^b (their power laws).
Approach 3: the frontier of L(N, D) under C = 6ND (Hoffmann et al. 2022, eq. 4).
A target model size N gives the budget at which N is optimal (the paper's Table 3
layout). Loss is Approach 3's L(N, D), evaluated at each approach's (N_opt, D_opt).
Intervals come from the bootstrap replicates of each approach's parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from chinchilla.fit.bootstrap import LEVELS, percentile_interval
from chinchilla.fit.parametric import parametric_loss
from chinchilla.fit.results import FitReport


def _law_allocation(a, log10_kn, b, log10_kd, flops=None, n_target=None):
    """(C, N, D) from power laws; arrays broadcast over bootstrap replicates."""
    if flops is None:
        flops = np.power(10.0, (np.log10(n_target) - log10_kn) / a)
    return (
        flops,
        np.power(10.0, log10_kn) * np.power(flops, a),
        np.power(10.0, log10_kd) * np.power(flops, b),
    )


def _parametric_allocation(E, A, B, alpha, beta, flops=None, n_target=None):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    if flops is None:
        flops = 6.0 * np.power(n_target / G, 1 / a)
    c6 = flops / 6.0
    return flops, G * np.power(c6, a), np.power(c6, b) / G


def approach_params(
    rep: FitReport, k: int
) -> tuple[dict[str, float], dict[str, np.ndarray] | None]:
    """Approach k's parameters as `allocate` takes them: (the point estimate, the
    bootstrap replicates as arrays, or None without a bootstrap)."""
    s = rep.samples.get(k)
    if k == 3:
        f = rep.approach3
        point = {"E": f.E, "A": f.A, "B": f.B, "alpha": f.alpha, "beta": f.beta}
    else:
        f = rep.approach1 if k == 1 else rep.approach2
        point = {
            "a": f.a,
            "b": f.b,
            "log10_k_n": math.log10(f.n_law.coefficient),
            "log10_k_d": math.log10(f.d_law.coefficient),
        }
    reps = None if s is None else {name: s.values[name] for name in point if name in s.values}
    return point, reps


def allocate(k: int, p: dict, flops=None, n_target=None):
    """(C, N_opt, D_opt) of approach k with parameters `p` (`approach_params`) at compute
    `flops`, or at the compute where `n_target` is optimal; arrays broadcast."""
    if k == 3:
        return _parametric_allocation(
            p["E"], p["A"], p["B"], p["alpha"], p["beta"], flops=flops, n_target=n_target
        )
    return _law_allocation(
        p["a"], p["log10_k_n"], p["b"], p["log10_k_d"], flops=flops, n_target=n_target
    )


def predictions(rep: FitReport, budgets=(), model_sizes=()) -> list[dict[str, Any]]:
    """One row per (approach, target): budget targets first, then model-size targets."""
    rows: list[dict[str, Any]] = []
    fits = {1: rep.approach1, 2: rep.approach2, 3: rep.approach3}
    p3 = rep.approach3
    c_max, n_max = float(np.max(rep.results.flops)), float(np.max(rep.results.n_params))
    for k, fit in fits.items():
        if fit is None:
            continue
        point, reps = approach_params(rep, k)
        targets = [("flops", float(c)) for c in budgets] + [
            ("n_params", float(n)) for n in model_sizes
        ]
        for kind, value in targets:
            kw = {"flops": value} if kind == "flops" else {"n_target": value}
            with np.errstate(all="ignore"):
                c, n_opt, d_opt = (float(v) for v in allocate(k, point, **kw))
            loss = float(p3.loss(n_opt, d_opt)) if p3 is not None else None
            row = {
                "approach": k,
                "target": kind,
                "flops": c,
                "n_opt": n_opt,
                "d_opt": d_opt,
                "tokens_per_param": d_opt / n_opt,
                "loss": loss,
                "loss_source": (
                    "approach 3 L(N, D) at this (N_opt, D_opt)" if loss is not None else None
                ),
                "extrapolation": c / c_max,  # C over the largest C in the data
                "n_extrapolation": n_opt / n_max,  # N_opt over the largest sampled N
                "warning": (
                    f"N_opt is {n_opt / n_max:.3g}x the largest sampled N: extrapolated"
                    if n_opt > n_max
                    else None
                ),
            }
            if reps:
                kw_r = (
                    {"flops": np.full(len(next(iter(reps.values()))), value)}
                    if kind == "flops"
                    else {"n_target": value}
                )
                with np.errstate(all="ignore"):
                    cs, ns, ds = allocate(k, reps, **kw_r)
                    ls = None
                    if k == 3:
                        ls = parametric_loss(
                            ns, ds, reps["E"], reps["A"], reps["B"], reps["alpha"], reps["beta"]
                        )
                for lvl in LEVELS:
                    sfx = "" if lvl == "80" else "_95"
                    row[f"n_opt_ci{sfx}"] = percentile_interval(ns, lvl)
                    row[f"d_opt_ci{sfx}"] = percentile_interval(ds, lvl)
                    if kind == "n_params":
                        row[f"flops_ci{sfx}"] = percentile_interval(cs, lvl)
                    if ls is not None:
                        row[f"loss_ci{sfx}"] = percentile_interval(ls, lvl)
            rows.append(row)
    return rows


def default_budgets(flops) -> list[float]:
    """The largest compute `flops` holds, and 10x, 100x, 1000x beyond it (extrapolation)."""
    top = float(np.max(flops))
    return [top * 10**k for k in range(4)]
