"""Predictions checked by training: `chinchilla verify RUNS --budget C`.

From the fit of a sweep, predict the compute-optimal N at a budget beyond the grid
(default 4x the largest), train the predicted optimum and its neighbours at N/2 and 2N
(N/3 and 3N, or N/4 and 4N, when the shape family is too coarse for three sizes)
with the sweep's own recipe (same config, resume, parquet and executors, in
`RUNS/verify-<C>/`), and compare each approach's prediction with what the three runs
measured: N_opt (the vertex of the parabola in log N through the three final losses,
or the best run when the vertex falls outside them) and the minimum loss. Each
approach predicts the minimum loss its own way: Approach 3 by L(N, D) at its allocation
(interval from its bootstrap), Approaches 1 and 2 by L(C) = E + k C^-gamma through their
own minimum losses against C (the envelope; the parabolas' minima), with an 80%
interval from Approach 1's own run bootstrap, or for Approach 2 a residual bootstrap of
the minima when more than three budgets carry the law.

The centre trained is the geometric mean of the approaches' predicted N_opt, so every
approach's prediction lies near the three sizes. Budgets are in the sweep's compute
convention; the fit's C is 6·N·D with the fit's N, the same number under the default
conventions (`grid.flops_convention: 6nd`, `grid.n_convention: total`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla.adaptive import profile
from chinchilla.errors import UserError
from chinchilla.fit.backtest import (
    loss_law_at,
    loss_law_interval,
    minimum_loss_at,
    minimum_loss_points,
)
from chinchilla.fit.data import load_results
from chinchilla.fit.isoflop import profile_vertex
from chinchilla.fit.results import FitOptions, approach1_samples, fit_all
from chinchilla.grid import budget_runs, candidate_shapes, sizes_for_target
from chinchilla.predict import predictions
from chinchilla.store import ok_losses
from chinchilla.sweep import run_sweep, sweep_config


def _measured_optimum(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, str]:
    p = profile_vertex(n, loss)
    if p is not None:
        return p.n_opt, p.loss_opt, "parabola vertex through the runs"
    best = int(np.argmin(loss))
    return float(n[best]), float(loss[best]), "best run (the vertex is not bracketed)"


def _envelope_loss_interval(rep, c: float, n: int, seed: int) -> list[float] | None:
    """80% interval of Approach 1's minimum-loss law at c, by Approach 1's own bootstrap
    (`approach1_samples`: final losses redrawn with the measured noise, or runs
    resampled): the envelope is a grid of points interpolated from the same curves, so
    its residuals are not independent draws."""
    if not n:
        return None

    def one(env):
        value = loss_law_at(env.flops, env.loss, c)
        if value is None:
            raise ValueError("the loss law did not converge")
        return {"loss": value}

    return approach1_samples(rep, n, seed + 1, one).interval("loss")


def _inside(value: float, interval) -> bool | None:
    return None if not interval else bool(interval[0] <= value <= interval[1])


def _verification_runs(cfg, budget: float, centre: float):
    """N/2, N and 2N at the budget with the sweep's recipe (wider apart where the shape
    family is too coarse for three distinct sizes)."""
    vcfg = dataclasses.replace(
        cfg, grid=dataclasses.replace(cfg.grid, budgets=(budget,), adaptive=False)
    )
    candidates = candidate_shapes(vcfg, n_cap=16 * centre)
    warnings: list[str] = []
    for span in (2, 3, 4):
        shapes = sizes_for_target([centre / span, centre, span * centre], vcfg, candidates)
        runs = list(budget_runs(vcfg, shapes, budget, warnings, planned_by="verify"))
        if len(runs) >= 3:
            return vcfg, runs
    raise UserError(
        f"verify: only {len(runs)} distinct runs at {budget:.3g} around N = {centre:.3g}"
        + (f" ({'; '.join(warnings)})" if warnings else "")
    )


def _against(rep, r: dict, n_meas: float, loss_meas: float, bootstrap: int, seed: int) -> dict:
    """One approach's prediction `r` against the measured optimum."""
    if r["approach"] in (1, 2):  # its own minimum losses against C, extrapolated
        law_c = float(r["flops"])
        if r["approach"] == 1:  # the envelope's points are not independent
            ci = _envelope_loss_interval(rep, law_c, bootstrap, seed)
        else:  # one minimum per budget
            pts = minimum_loss_points(rep, 2)
            ci = loss_law_interval(*pts, law_c, n_resamples=bootstrap or 200, seed=seed)
        r = r | {"loss": minimum_loss_at(rep, r["approach"], law_c), "loss_ci": ci}
    return {
        "approach": r["approach"],
        "n_opt_predicted": r["n_opt"],
        "n_opt_ci": r.get("n_opt_ci"),
        "n_opt_ratio": r["n_opt"] / n_meas,
        "n_opt_measured_inside_ci": _inside(n_meas, r.get("n_opt_ci")),
        "loss_predicted": r["loss"],
        "loss_ci": r.get("loss_ci"),
        "loss_error": None if r["loss"] is None else r["loss"] - loss_meas,
        "loss_measured_inside_ci": _inside(loss_meas, r.get("loss_ci")),
    }


def verify(
    out: Path,
    budget: float | None = None,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    workers: int | None = None,
    live: bool | None = None,
) -> dict[str, Any]:
    """Train the optimum the sweep's fit predicts at `budget` (default 4x its largest)
    and two sizes around it; compare each approach's N_opt and loss with what they
    measured."""
    out = Path(out)
    cfg = sweep_config(out)
    if cfg.grid.kind != "isoflop":
        raise UserError("verify: the sweep must be an IsoFLOP grid (grid.kind: isoflop)")
    if budget is not None and not budget > 0:
        raise UserError("--budget must be > 0")

    # 1. the fit of the sweep, and each approach's prediction at the new budget
    rep = fit_all(load_results(out), FitOptions(bootstrap=bootstrap, seed=seed))
    top = float(np.max(rep.budgets))  # the largest budget the sweep trained
    budget = float(budget or 4 * top)
    rows = predictions(rep, budgets=[budget])
    if not rows:
        raise UserError(f"verify: no approach could be fitted to {out} ({rep.skipped})")
    centre = math.exp(np.mean([math.log(r["n_opt"]) for r in rows]))

    # 2. train N/2, N and 2N at the budget with the sweep's recipe
    vcfg, runs = _verification_runs(cfg, budget, centre)
    vout = out / f"verify-{budget:.3g}"
    run_sweep(vcfg, vout, runs=runs, workers=workers, live=live)

    # 3. what the runs measured, against each approach
    got = ok_losses(vout, {r.run_id for r in runs})
    n, loss = profile(runs, got, rep.results.n_convention)
    order = np.argsort(n)
    n, loss = n[order], loss[order]
    if len(n) < 2:
        raise UserError(f"verify: {len(n)} of the runs in {vout} finished ok")
    n_meas, loss_meas, how = _measured_optimum(n, loss)
    approaches = [_against(rep, r, n_meas, loss_meas, bootstrap, seed) for r in rows]
    centre_run = int(np.argmin(np.abs(np.log(n) - math.log(centre))))
    return {
        "budget": budget,
        "extrapolation": budget / top,
        "directory": str(vout),
        "centre_n": centre,
        "runs": [{"n_params": float(a), "loss": float(b)} for a, b in zip(n, loss, strict=True)],
        "measured": {"n_opt": n_meas, "loss_min": loss_meas, "how": how},
        "best_run_is_the_predicted_optimum": bool(np.argmin(loss) == centre_run),
        "approaches": approaches,
        "skipped": rep.skipped,
        "convention": "C = 6 N D (the sweep's budget convention); N as in the fit",
        "loss_note": "predicted minimum loss: Approach 3's L(N, D) at its allocation; "
        "Approaches 1 and 2: L(C) = E + k C^-gamma through their own minimum losses (the "
        "envelope, the parabolas' minima), 80% intervals by Approach 1's bootstrap (as in "
        "its fit) and a residual bootstrap of Approach 2's minima (none from 3 budgets or "
        "fewer)",
    }
