"""Adaptive IsoFLOP grids: each budget's sizes placed where the budgets already trained
put the optimum, and extended until its minimum is bracketed.

`grid.tokens_per_param` only guesses where a budget's optimum lies (Chinchilla's 20 is
one data set's value at one scale). With `grid.adaptive`, budgets train in ascending
order and

1. the first budget is centred on that guess (`planned_by = initial`); every later one
   on the optimum predicted by those before it (`recentred`): with one trained budget,
   N_opt scaled by (C / C_0)^0.5 (the Chinchilla exponent); with two or more, the power
   law through their minima (Approach 2's law, its exponent clipped to [0.2, 0.8]);
2. once a budget's runs finish, its minimum is read the way Approach 2 reads it (the
   near-minimum parabola, `chinchilla.fit.isoflop`). When its lowest loss sits at its
   smallest or largest size, or fewer than two sizes lie on one side of the vertex,
   sizes are added on that side at the grid's own log spacing (`extended`), at most
   `grid.adaptive_extra` per budget, and the check is repeated.

Every decision is a function of the config and the recorded losses of finished runs, so
a sweep killed at any point and rerun makes the same decisions and ends with the same
runs (runs already recorded are not trained again).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from chinchilla.config import Config
from chinchilla.fit.isoflop import profile_vertex
from chinchilla.grid import (
    PlannedRun,
    budget_runs,
    candidate_shapes,
    expected_optimal_n,
    largest_target,
    log_spread,
    n_of,
    sizes_for_target,
    tuning_settings,
    tuning_shapes,
    with_repeats,
)

CHINCHILLA_EXPONENT = 0.5  # N_opt ~ C^0.5 (Hoffmann et al. 2022, Table 2)

# train(runs) trains the runs not yet recorded; losses(runs) -> {run_id: final loss} of
# the recorded ok runs among them
Train = Callable[[list[PlannedRun]], None]
Losses = Callable[[list[PlannedRun]], dict[str, float]]


def predicted_centre(budget: float, minima: list[tuple[float, float]], cfg: Config):
    """(N at the centre of this budget's sizes, planned_by)."""
    if not minima:
        return expected_optimal_n(budget, cfg), "initial"
    if len(minima) == 1:
        c0, n0 = minima[0]
        return n0 * (budget / c0) ** CHINCHILLA_EXPONENT, "recentred"
    c, n = np.log(np.array(minima)).T
    slope, icpt = np.polyfit(c, n, 1)
    slope = float(np.clip(slope, 0.2, 0.8))
    icpt = float(np.mean(n - slope * c))
    return math.exp(icpt + slope * math.log(budget)), "recentred"


def bracket(n: np.ndarray, loss: np.ndarray) -> tuple[str | None, int, float | None]:
    """Which side of a budget's profile needs more sizes: (side, how many, vertex N).
    side is "smaller", "larger" or None (bracketed: the lowest loss is at an interior
    size and at least two sizes lie on each side of the near-minimum parabola's vertex)."""
    order = np.argsort(n)
    n, loss = n[order], loss[order]
    best = int(np.argmin(loss))
    if best == 0:
        return "smaller", 2, None
    if best == len(n) - 1:
        return "larger", 2, None
    p = profile_vertex(n, loss)
    if p is None:
        side = "smaller" if best < len(n) / 2 else "larger"
        return side, 1, None
    # distinct sizes on each side (repeats of one size count once)
    below, above = len(np.unique(n[n < p.n_opt])), len(np.unique(n[n > p.n_opt]))
    if below < 2:
        return "smaller", 2 - below, p.n_opt
    if above < 2:
        return "larger", 2 - above, p.n_opt
    return None, 0, p.n_opt


def profile(runs: list[PlannedRun], got: dict[str, float], n_convention: str):
    """(N, final loss) of the recorded runs among `runs`, in the runs' order."""
    done = [r for r in runs if r.run_id in got]
    n = np.array([n_of(r.shape, n_convention) for r in done], dtype=float)
    return n, np.array([got[r.run_id] for r in done])


def run_adaptive(cfg: Config, train: Train, losses: Losses) -> list[PlannedRun]:
    """Plan, train and extend every budget in ascending order; returns every run."""
    g = cfg.grid
    top = max(g.budgets)
    # the largest model any budget could want: D = N at the top budget, times the span
    cap = 4 * math.sqrt(top / 6.0) * math.sqrt(g.size_span)
    candidates = candidate_shapes(cfg, n_cap=cap)
    step = g.size_span ** (1 / max(1, g.sizes_per_budget - 1))  # the grid's log spacing
    minima: list[tuple[float, float]] = []
    every: list[PlannedRun] = []
    for budget in sorted(g.budgets):
        warnings: list[str] = []
        centre, why = predicted_centre(budget, minima, cfg)
        shapes = sizes_for_target(
            log_spread(centre, g.size_span, g.sizes_per_budget), cfg, candidates
        )
        runs = with_repeats(list(budget_runs(cfg, shapes, budget, warnings, why)), cfg)
        train(runs)
        extra = 0
        while True:
            n, loss = profile(runs, losses(runs), g.n_convention)
            if len(n) < 3:
                break
            side, k, vertex = bracket(n, loss)
            if side is None or extra >= g.adaptive_extra:
                break
            k = min(k, g.adaptive_extra - extra)
            edge = n.min() if side == "smaller" else n.max()
            factor = 1 / step if side == "smaller" else step
            known = {r.shape for r in runs}
            new_shapes = []
            for j in range(1, 4 * k + 1):  # skip targets that land on a known shape
                (s,) = sizes_for_target([edge * factor**j], cfg, candidates)
                if s not in known and s not in new_shapes:
                    new_shapes.append(s)
                if len(new_shapes) == k:
                    break
            new = list(budget_runs(cfg, new_shapes, budget, warnings, planned_by="extended"))
            if not new:
                break
            extra += len(new)
            runs += new
            train(new)
        n, loss = profile(runs, losses(runs), g.n_convention)
        if len(n) >= 3:
            _, _, vertex = bracket(n, loss)
            # centre the next budget on this one's vertex, else its lowest-loss size
            minima.append((budget, vertex if vertex else float(n[np.argmin(loss)])))
        every += runs
    return every


def edge_side(values: list[float], best: float) -> str | None:
    """'larger' / 'smaller' when `best` is the largest / smallest of the values tried
    (the rule `chinchilla tune` leaves a budget out of a law by), else None."""
    if len(values) < 2:
        return None
    if best >= max(values):
        return "larger"
    if best <= min(values):
        return "smaller"
    return None


def _beyond(values: list[float], side: str) -> float:
    """One grid step past the edge on `side`, at the spacing of the two outermost values."""
    v = sorted(values)
    return v[-1] * v[-1] / v[-2] if side == "larger" else v[0] * v[0] / v[1]


def _neighbours(values: list[float], best: float) -> list[float]:
    """`best` and the values next to it among `values` (sorted)."""
    v = sorted(values)
    i = v.index(best)
    return v[max(0, i - 1) : i + 2]


def run_adaptive_tuning(cfg: Config, train: Train, losses: Losses) -> list[PlannedRun]:
    """Kind hparams with grid.adaptive: each budget's grid is trained; while its best run
    lies at the largest or smallest learning rate (or batch) tried, one more value is
    tried one grid step beyond that edge, at the best batch (or learning rate) and its
    neighbours (`planned_by = extended`), at most `grid.adaptive_extra` runs per budget.
    Decisions depend only on recorded losses, so a rerun after a kill makes the same."""
    g = cfg.grid
    candidates = candidate_shapes(cfg, n_cap=4 * largest_target(cfg))  # the plan's
    every: list[PlannedRun] = []
    for budget in sorted(g.budgets):
        warnings: list[str] = []
        shapes = tuning_shapes(budget, cfg, candidates)
        runs = list(budget_runs(cfg, shapes, budget, warnings, "initial", tuning_settings(cfg)))
        runs = with_repeats(runs, cfg)
        train(runs)
        extra = 0
        while extra < g.adaptive_extra:
            got = losses(runs)
            if not got:
                break
            best = min((r for r in runs if r.run_id in got), key=lambda r: got[r.run_id])
            lrs = sorted({r.lr for r in runs})
            batches = sorted({r.batch_size for r in runs})
            settings = []
            side = edge_side(lrs, best.lr)
            if side:
                lr = _beyond(lrs, side)
                settings += [(lr, b) for b in _neighbours(batches, best.batch_size)]
            side = edge_side(batches, best.batch_size)
            if side:
                b = max(1, round(_beyond(batches, side)))
                if b not in batches:
                    settings += [(lr, b) for lr in _neighbours(lrs, best.lr)]
            if not settings:
                break
            known = {(r.lr, r.batch_size, r.shape) for r in runs}
            settings = settings[: g.adaptive_extra - extra]
            new = [
                r
                for r in budget_runs(cfg, [best.shape], budget, warnings, "extended", settings)
                if (r.lr, r.batch_size, r.shape) not in known
            ]
            if not new:
                break
            extra += len(new)
            runs += new
            train(new)
        every += runs
    return every
