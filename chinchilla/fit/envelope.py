"""Approach 1: the envelope of training curves (Hoffmann et al. 2022, section 3.1, Fig. 2).

At each of `n_grid` log-spaced FLOP values the envelope is the lowest loss any model size
reaches there, and the size attaining it gives N_opt and D_opt. Power laws
N_opt = k_N C^a and D_opt = k_D C^b are fitted through those points.

Which points may enter: a cosine run's loss part-way through its schedule is higher than
that of a run whose schedule ends there (the paper's Figure A1), so the envelope is read
from finished schedules: each model size trained to several horizons (`grid.kind:
horizons`, the paper's 4 per size over 16x) gives a curve through its runs' final
losses. Only when no size has two horizons are the logged curves themselves read, with a
warning: most envelope points then come from runs part-way through their cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chinchilla.fit.isoflop import AllocationLaws, NotEnoughData, PowerLaw, fit_power_law

FINISHED = "finished runs: each size's final losses over its horizons"
MID_SCHEDULE = "logged training curves (points part-way through cosine schedules)"
MID_SCHEDULE_WARNING = (
    "Approach 1 read mid-schedule points of cosine runs (no model size has two horizons): "
    "they lie above what a run finishing there reaches, which biases N_opt; plan "
    "grid.kind: horizons for Approach 1"
)


@dataclass
class EnvelopeFit(AllocationLaws):
    flops: np.ndarray  # (n_grid,) log-spaced FLOP values
    loss: np.ndarray  # lowest smoothed loss at each
    n_opt: np.ndarray  # N of the run attaining it
    d_opt: np.ndarray  # tokens that run had seen at that FLOP count
    run: np.ndarray  # index of that run
    n_law: PowerLaw
    d_law: PowerLaw
    source: str = FINISHED
    warnings: list[str] = field(default_factory=list)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average whose window shrinks symmetrically at the ends (the first
    and last points are their own values): a one-sided window at the end would average
    the final, lowest points with earlier, higher ones and raise them."""
    y = np.asarray(y, dtype=float)
    half = window // 2
    if half < 1 or len(y) < 3:
        return y.copy()
    c = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(len(y))
    h = np.minimum(half, np.minimum(i, len(y) - 1 - i))
    return (c[i + h + 1] - c[i - h]) / (2 * h + 1)


def _envelope(curves, n_of_curve: np.ndarray, n_grid: int, source: str) -> EnvelopeFit:
    """`curves`: (curve index, log C, tokens, loss) sorted by C. Envelope over the C range
    where at least two curves compete."""
    lo = min(c[1][0] for c in curves)
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
        d_at[idx[better]] = np.exp(np.interp(grid[idx[better]], lf, np.log(t)))
    # only where at least two curves compete: elsewhere the "envelope" is one curve
    ok = (who >= 0) & (cover >= 2)
    c = np.exp(grid[ok])
    n_opt = n_of_curve[who[ok]]
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
        source=source,
        warnings=[MID_SCHEDULE_WARNING] if source == MID_SCHEDULE else [],
    )


def horizon_sizes(n_params: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """Model sizes trained to at least two token counts (horizons)."""
    sizes = np.unique(n_params)
    return np.array([s for s in sizes if len(np.unique(n_tokens[n_params == s])) >= 2])


def fit_envelope_finished(
    n_params: np.ndarray,
    flops: np.ndarray,
    n_tokens: np.ndarray,
    loss: np.ndarray,
    n_grid: int = 1500,
) -> EnvelopeFit:
    """Approach 1 from finished runs: per model size, a curve of final loss against C
    through its horizons (interpolated in log C), then the envelope over sizes. Runs of
    one size and horizon (repeats with other seeds) enter as their mean: interpolating
    through two points at one C would read whichever the row order put first."""
    sizes = horizon_sizes(n_params, n_tokens)
    if len(sizes) < 2:
        raise NotEnoughData("fewer than 2 model sizes trained to 2 or more horizons")
    curves = []
    for k, s in enumerate(sizes):
        sel = np.nonzero(n_params == s)[0]
        tokens, which = np.unique(n_tokens[sel], return_inverse=True)  # ascending: C too
        count = np.bincount(which)
        mean_loss = np.bincount(which, weights=loss[sel]) / count
        mean_flops = np.bincount(which, weights=flops[sel]) / count
        curves.append((k, np.log(mean_flops), tokens, mean_loss))
    return _envelope(curves, sizes, n_grid, FINISHED)


def fit_envelope(
    run: np.ndarray,
    flops: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    n_params: np.ndarray,
    n_grid: int = 1500,
    smooth_frac: float = 0.05,
) -> EnvelopeFit:
    """Approach 1 from logged curves (mid-schedule points; see the module docstring).
    `run`, `flops`, `tokens`, `loss` are the curve rows; `n_params` is per run index."""
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
    return _envelope(curves, n_params, n_grid, MID_SCHEDULE)
