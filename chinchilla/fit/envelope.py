"""Approach 1: the envelope of training curves (Hoffmann et al. 2022, section 3.1, Fig. 2).

Every run's curve of loss against FLOPs is smoothed and interpolated in log FLOPs;
at each of `n_grid` log-spaced FLOP values the envelope is the lowest loss any run
reached there, and the run attaining it gives N_opt and D_opt. Power laws
N_opt = k_N C^a and D_opt = k_D C^b are fitted through those points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chinchilla.fit.isoflop import AllocationLaws, NotEnoughData, PowerLaw, fit_power_law


@dataclass
class EnvelopeFit(AllocationLaws):
    flops: np.ndarray  # (n_grid,) log-spaced FLOP values
    loss: np.ndarray  # lowest smoothed loss at each
    n_opt: np.ndarray  # N of the run attaining it
    d_opt: np.ndarray  # tokens that run had seen at that FLOP count
    run: np.ndarray  # index of that run
    n_law: PowerLaw
    d_law: PowerLaw


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; the ends use the points available."""
    if window <= 1 or len(y) < 3:
        return y.astype(float)
    k = np.ones(window)
    num = np.convolve(y, k, mode="same")
    den = np.convolve(np.ones_like(y, dtype=float), k, mode="same")
    return num / den


def fit_envelope(
    run: np.ndarray,
    flops: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    n_params: np.ndarray,
    n_grid: int = 1500,
    smooth_frac: float = 0.05,
) -> EnvelopeFit:
    """`run`, `flops`, `tokens`, `loss` are the curve rows; `n_params` is per run index."""
    runs = np.unique(run)
    if len(runs) < 2 or len(np.unique(n_params[runs])) < 2:
        raise NotEnoughData("training curves of at least 2 model sizes are needed")
    curves = []
    for r in runs:
        sel = run == r
        order = np.argsort(flops[sel])
        f, t, l = flops[sel][order], tokens[sel][order], loss[sel][order]
        if len(f) < 2:
            continue
        curves.append((r, np.log(f), t, smooth(l, max(1, int(round(smooth_frac * len(f)))))))
    if len(curves) < 2:
        raise NotEnoughData("curves need at least 2 logged points per run")
    # grid from where the first run has finished to where the last has (each grid point
    # is compared across every run that got that far)
    lo = min(c[1][-1] for c in curves)
    hi = max(c[1][-1] for c in curves)
    if hi <= lo:
        hi = lo + 1e-9
    grid = np.linspace(lo, hi, n_grid)
    best = np.full(n_grid, np.inf)
    who = np.full(n_grid, -1)
    d_at = np.full(n_grid, np.nan)
    cover = np.zeros(n_grid, dtype=int)
    for r, lf, t, l in curves:
        covered = (grid >= lf[0]) & (grid <= lf[-1])
        cover += covered
        li = np.interp(grid[covered], lf, l)
        idx = np.nonzero(covered)[0]
        better = li < best[idx]
        best[idx[better]] = li[better]
        who[idx[better]] = r
        d_at[idx[better]] = np.interp(grid[idx[better]], lf, t)
    # only where at least two runs compete: past the last run but one (budgets round to
    # whole steps, so one run of the top budget ends a little later) the "envelope"
    # would be a single curve
    ok = (who >= 0) & (cover >= 2)
    c = np.exp(grid[ok])
    n_opt = n_params[who[ok]]
    if len(np.unique(n_opt)) < 2:
        raise NotEnoughData("one model size attains the whole envelope; no trend in N")
    return EnvelopeFit(
        flops=c,
        loss=best[ok],
        n_opt=n_opt,
        d_opt=d_at[ok],
        run=who[ok],
        n_law=fit_power_law(c, n_opt),
        d_law=fit_power_law(c, d_at[ok]),
    )
