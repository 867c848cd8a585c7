"""Bootstrap intervals: resample runs with replacement, refit, take percentiles.

Seeded and reproducible. Approach 3 refits every resample at once (one weight vector
of resample counts per resample, warm-started from the full fit's local optima);
Approaches 1 and 2 refit in a loop (each fit is a few small numpy operations).
Percentiles: 10th-90th as in the paper's Table 2, and 2.5th-97.5th (95%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from chinchilla.fit.isoflop import NotEnoughData

LEVELS = {"80": (10.0, 90.0), "95": (2.5, 97.5)}


def percentile_interval(values: np.ndarray, level: str = "80") -> list[float] | None:
    """[lo, hi] percentiles of the finite replicates for `level` ("80" or "95"); None
    with fewer than two."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None
    lo, hi = LEVELS[level]
    return [float(np.percentile(v, lo)), float(np.percentile(v, hi))]


@dataclass
class Samples:
    """Bootstrap replicates of named quantities (NaN where a resample could not be fitted)."""

    values: dict[str, np.ndarray]  # name -> (R,)
    n_resamples: int
    n_failed: int

    def interval(self, name: str, level: str = "80") -> list[float] | None:
        v = self.values.get(name)
        return None if v is None else percentile_interval(v, level)

    def intervals(self) -> dict[str, dict[str, list[float] | None]]:
        return {name: {lvl: self.interval(name, lvl) for lvl in LEVELS} for name in self.values}


def resample_counts(n_points: int, n_resamples: int, seed: int) -> np.ndarray:
    """(R, n) how often each point appears in each resample (with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_points, size=(n_resamples, n_points))
    counts = np.zeros((n_resamples, n_points))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def bootstrap_loop(
    n_points: int, n_resamples: int, seed: int, fit_one: Callable[[np.ndarray], dict[str, float]]
) -> Samples:
    """Call `fit_one(indices)` on each resample; failures (NotEnoughData, numerical
    errors) count as failed and leave NaN."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    failed = 0
    for r in range(n_resamples):
        idx = rng.integers(0, n_points, size=n_points)
        try:
            out = fit_one(idx)
        except (NotEnoughData, np.linalg.LinAlgError, ValueError, FloatingPointError):
            failed += 1
            out = {}
        for k in set(values) | set(out):
            values.setdefault(k, [np.nan] * r).append(out.get(k, np.nan))
    return Samples({k: np.asarray(v) for k, v in values.items()}, n_resamples, failed)
