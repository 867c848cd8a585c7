"""Backtest: leave out the largest budget(s), fit every approach on the rest, and score
each approach's prediction of the held-out budget's optimal N and minimum loss.

What counts as the truth at a held-out budget: its IsoFLOP minimum by the same
near-minimum parabola as Approach 2 when that vertex lies inside its sampled sizes, else
its lowest-loss run (said in `truth`). Every approach predicts N_opt at the budget's C
(= 6ND, the fit's convention); the minimum loss is predicted by Approach 3's L(N, D) at its
own allocation, and by L(C) = E + k C^-gamma fitted to the minimum loss against C for
Approaches 1 (the envelope's losses) and 2 (the parabolas' minima).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from chinchilla.fit.data import Results, group_budgets
from chinchilla.fit.isoflop import MIN_SIZES, NotEnoughData, profile_vertex
from chinchilla.fit.results import FitOptions, FitReport, fit_all


@dataclass
class HeldOut:
    budget: float
    flops: float  # the fit's C of the budget
    n_opt: float  # observed optimal N
    loss_min: float  # observed minimum loss
    truth: str  # how n_opt and loss_min were read


def observed_optimum(budget: float, res: Results, sel: np.ndarray) -> HeldOut:
    n, d, loss = res.n_params[sel], res.n_tokens[sel], res.loss[sel]
    c = float(np.exp(np.log(res.flops[sel]).mean()))
    p = profile_vertex(n, loss, d, min_sizes=MIN_SIZES)
    if p is not None:
        return HeldOut(budget, c, p.n_opt, p.loss_opt, "IsoFLOP parabola vertex")
    best = int(np.argmin(loss))
    bracketed = n.min() < n[best] < n.max()
    how = "lowest-loss run" + ("" if bracketed else " (at the edge of its sizes)")
    return HeldOut(budget, c, float(n[best]), float(loss[best]), how)


def _fit_loss_law(flops: np.ndarray, loss: np.ndarray):
    """L(C) = E + k C^-gamma by least squares on log L (E in [0, min loss)): the fitted
    law as a function of C, or None when the fit does not converge."""
    from scipy.optimize import least_squares

    x, y = np.log(flops / flops.max()), np.log(loss)

    def resid(p):
        e, log_k, gamma = p
        return np.log(e + np.exp(log_k - gamma * x)) - y

    e0 = 0.5 * float(loss.min())
    start = [e0, float(np.log(max(loss.max() - e0, 1e-12))), 0.1]
    fit = least_squares(resid, start, bounds=([0, -50, 0], [float(loss.min()), 50, 5]))
    if not fit.success:
        return None
    e, log_k, gamma = fit.x
    top = flops.max()
    return lambda c: e + np.exp(log_k - gamma * np.log(np.asarray(c, float) / top))


def loss_law_at(flops: np.ndarray, loss: np.ndarray, at: float) -> float | None:
    """Minimum loss extrapolated by L(C) = E + k C^-gamma (least squares on log L, E in
    [0, min loss)): a pure power law has no floor and overshoots downward. None when the
    fit does not converge."""
    law = _fit_loss_law(flops, loss)
    return None if law is None else float(law(at))


def loss_law_interval(
    flops: np.ndarray, loss: np.ndarray, at: float, n_resamples: int = 200, seed: int = 0
) -> list[float] | None:
    """80% interval of `loss_law_at` at `at` by a residual bootstrap (the fitted law plus
    resampled residuals of log L, refitted). None with 3 points or fewer (the law's three
    parameters go through them exactly: no residuals to resample) or when over 10% of
    the refits fail."""
    law = _fit_loss_law(flops, loss)
    if law is None or len(flops) <= 3:
        return None
    fitted = np.log(law(flops))
    resid = np.log(loss) - fitted
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        star = np.exp(fitted + rng.choice(resid, size=len(resid), replace=True))
        refit = _fit_loss_law(flops, star)
        if refit is not None:
            values.append(float(refit(at)))
    if len(values) < 0.9 * n_resamples:
        return None
    return [float(np.percentile(values, 10)), float(np.percentile(values, 90))]


def minimum_loss_points(rep: FitReport, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, minimum loss) that approach k (1 or 2) has at each compute: the envelope's
    points, or the usable IsoFLOP parabolas' minima."""
    if k == 1:
        return np.asarray(rep.approach1.flops), np.asarray(rep.approach1.loss)
    used = [p for p in rep.approach2.parabolas if p.usable]
    return np.array([p.flops for p in used]), np.array([p.loss_opt for p in used])


def minimum_loss_at(rep: FitReport, k: int, c: float) -> float | None:
    """Approach k's (1 or 2) minimum loss at compute c: `loss_law_at` through its own
    minimum losses; None from fewer than 3 (the law has three parameters)."""
    flops, loss = minimum_loss_points(rep, k)
    return None if len(flops) < 3 else loss_law_at(flops, loss, c)


def _predict(rep: FitReport, k: int, c: float) -> tuple[float, float | None]:
    """(N_opt, minimum loss) that approach k predicts at compute c."""
    from chinchilla.predict import allocate, approach_params

    point, _ = approach_params(rep, k)
    _, n_opt, d_opt = (float(v) for v in allocate(k, point, flops=c))
    if k == 3:
        return n_opt, float(rep.approach3.loss(n_opt, d_opt))
    return n_opt, minimum_loss_at(rep, k, c)


def backtest(res: Results, opts: FitOptions, k: int = 1) -> dict[str, Any]:
    """Leave out the `k` largest budgets; fit on the rest; score each approach."""
    budgets = group_budgets(res.flops, res.budget)
    labels = np.unique(budgets)
    if len(labels) < k + 2:
        raise NotEnoughData(
            f"{len(labels)} budget(s): leaving out {k} needs at least {k + 2} "
            "(fits need several budgets)"
        )
    held = labels[-k:]
    train = res.subset(~np.isin(budgets, held))
    rep = fit_all(train, replace(opts, bootstrap=0))
    rows = []
    for h in held:
        truth = observed_optimum(float(h), res, budgets == h)
        for a, fit in ((1, rep.approach1), (2, rep.approach2), (3, rep.approach3)):
            if fit is None:
                continue
            n_pred, loss_pred = _predict(rep, a, truth.flops)
            rows.append(
                {
                    "approach": a,
                    "budget": truth.budget,
                    "flops": truth.flops,
                    "extrapolation": truth.flops / float(np.max(train.flops)),
                    "n_opt_observed": truth.n_opt,
                    "n_opt_predicted": n_pred,
                    "n_opt_ratio": n_pred / truth.n_opt,
                    "loss_min_observed": truth.loss_min,
                    "loss_min_predicted": loss_pred,
                    "loss_error": None if loss_pred is None else loss_pred - truth.loss_min,
                    "truth": truth.truth,
                }
            )
    return {
        "held_out_budgets": [float(h) for h in held],
        "fitted_on": int(len(train)),
        "rows": rows,
        "skipped": rep.skipped,
        "report": rep,
    }
