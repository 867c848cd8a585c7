"""Bootstrap intervals: redraw the data, refit, take percentiles.

Seeded and reproducible. What a resample redraws differs by approach, and each fit
records it (`Samples.method`):
- Approach 1 (finished horizons): with repeats, every run's final loss is redrawn around
  its measured value with its budget's run-to-run noise, the design fixed (`noise_loop`);
  without repeats, runs are resampled within each model size. Resampling runs deletes a
  size's curve whenever a size with two horizons draws one of them twice (half the time):
  such a resample is no experiment the sweep could have produced, and on the demo the run
  bootstrap's intervals were 4.5 times wider than the spread of the exponent over 10
  reruns with other seeds (README, "How wide should the intervals be").
- Approach 2 resamples each parabola's residuals within its budget
  (`residual_bootstrap`: every profile keeps its sizes).
- Approach 3 refits every resample of the runs at once (one weight vector of resample
  counts per resample, warm-started from the full fit's local optima).
Intervals are withheld when more than `MAX_FAILED` of the resamples fail: the survivors
are not a sample of the fit's sampling distribution.
Percentiles: 10th-90th as in the paper's Table 2, and 2.5th-97.5th (95%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from chinchilla.fit.isoflop import IsoFlopFit, NotEnoughData, fit_parabola, fit_power_law

LEVELS = {"80": (10.0, 90.0), "95": (2.5, 97.5)}
PREDICTED_METHOD = "; predicted rows' losses redrawn with their prediction sd"


def prediction_rng(seed: int) -> np.random.Generator:
    """The stream that draws predicted rows' errors (`Results.prediction_noise`): its own,
    so a table without predicted rows draws exactly what it drew before."""
    return np.random.default_rng(seed + 1_000_003)


MAX_FAILED = 0.10


def percentile_interval(values: np.ndarray, level: str = "80") -> list[float] | None:
    """[lo, hi] percentiles of the finite replicates for `level` ("80" or "95"); None
    with fewer than two."""
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None
    lo, hi = LEVELS[level]
    return [float(np.percentile(v, lo)), float(np.percentile(v, hi))]


def student_interval(estimate: float, se: float, dof: float, level: str = "80") -> list[float]:
    """estimate +- t(dof) quantile x se, at `level` ("80" or "95")."""
    from scipy.special import stdtrit  # scipy.stats would add 0.3 s of imports

    q = float(stdtrit(dof, LEVELS[level][1] / 100)) * se
    return [estimate - q, estimate + q]


def widened_interval(iv: list[float], estimate: float, dof: float, level: str) -> list[float]:
    """A percentile interval's two arms about `estimate`, each stretched by the ratio of
    Student's t quantile on `dof` degrees of freedom to the normal's: a parametric
    bootstrap that redraws noise of an estimated scale treats the scale as known, and
    with few degrees of freedom it is not (the same step from z to t as in a t-test)."""
    from scipy.special import ndtri, stdtrit

    q = LEVELS[level][1] / 100
    f = float(stdtrit(dof, q) / ndtri(q))
    return [estimate - (estimate - iv[0]) * f, estimate + (iv[1] - estimate) * f]


@dataclass
class Samples:
    """Bootstrap replicates of named quantities (NaN where a resample could not be fitted)."""

    values: dict[str, np.ndarray]  # name -> (R,)
    n_resamples: int
    n_failed: int
    method: str | None = None  # what each resample redraws, in words
    # name -> (estimate, standard error, degrees of freedom): a Student-t interval in
    # place of the percentiles (`pooled_t_intervals`)
    student: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    # (estimates by name, degrees of freedom): percentile intervals widened about each
    # estimate by t(dof) / normal quantiles, where the resamples took an estimated noise
    # scale as known (`widened_interval`)
    widen: tuple[dict[str, float], float] | None = None

    @property
    def withheld(self) -> str | None:
        """Why no interval is given, or None."""
        if self.n_failed > MAX_FAILED * self.n_resamples:
            return (
                f"{self.n_failed} of {self.n_resamples} resamples could not be fitted "
                f"(over {MAX_FAILED:.0%}): intervals withheld"
            )
        return None

    def interval(self, name: str, level: str = "80") -> list[float] | None:
        v = self.values.get(name)
        if v is None or self.withheld:
            return None
        if name in self.student:
            return student_interval(*self.student[name], level)
        iv = percentile_interval(v, level)
        if iv is not None and self.widen is not None and name in self.widen[0]:
            return widened_interval(iv, self.widen[0][name], self.widen[1], level)
        return iv

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
    n_points: int,
    n_resamples: int,
    seed: int,
    fit_one: Callable[[np.ndarray], dict[str, float]],
    groups: np.ndarray | None = None,
) -> Samples:
    """Call `fit_one(indices)` on each resample; failures (NotEnoughData, numerical
    errors) count as failed and leave NaN. With `groups` (a label per point), points are
    resampled within their group."""
    rng = np.random.default_rng(seed)
    members = (
        [np.arange(n_points)]
        if groups is None
        else [np.nonzero(groups == g)[0] for g in np.unique(groups)]
    )
    return _refit_loop(
        n_resamples,
        lambda: np.concatenate([m[rng.integers(0, len(m), size=len(m))] for m in members]),
        fit_one,
    )


def noise_loop(
    sigma: np.ndarray,
    n_resamples: int,
    seed: int,
    fit_one: Callable[[np.ndarray], dict[str, float]],
) -> Samples:
    """A parametric bootstrap with the design fixed: call `fit_one(noise)` with noise
    drawn from N(0, sigma**2) independently per point (`sigma`: each point's standard
    deviation, e.g. its run-to-run noise measured by repeats)."""
    rng = np.random.default_rng(seed)
    sigma = np.asarray(sigma, dtype=float)
    return _refit_loop(n_resamples, lambda: sigma * rng.standard_normal(len(sigma)), fit_one)


def _refit_loop(n_resamples: int, draw: Callable[[], np.ndarray], fit_one) -> Samples:
    """`fit_one(draw())` per resample; failures (NotEnoughData, numerical errors) count
    as failed and leave NaN."""
    values: dict[str, list[float]] = {}
    failed = 0
    for r in range(n_resamples):
        try:
            out = fit_one(draw())
        except (NotEnoughData, np.linalg.LinAlgError, ValueError, FloatingPointError):
            failed += 1
            out = {}
        for k in set(values) | set(out):
            values.setdefault(k, [np.nan] * r).append(out.get(k, np.nan))
    return Samples({k: np.asarray(v) for k, v in values.items()}, n_resamples, failed)


def residual_bootstrap(
    fit: IsoFlopFit,
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    flops: np.ndarray,
    n_resamples: int,
    seed: int,
    prediction_sd: np.ndarray | None = None,
):
    """Bootstrap of the allocation laws by resampling each parabola's residuals within
    its budget (the design stays fixed: resampling runs would leave budgets with too few
    distinct sizes). Residuals are inflated by sqrt(m / (m - 3)) for the 3 fitted
    coefficients. A resample whose vertex leaves the sizes used counts as failed.
    `prediction_sd`: rows predicted rather than measured get N(0, sd^2) draws added."""
    rng = np.random.default_rng(seed)
    extra = prediction_rng(seed)
    used = [p for p in fit.parabolas if p.usable]
    fitted, resid = [], []
    for p in used:
        x = np.log10(n[p.index])
        f = np.polyval(p.coef, x)
        m = len(x)
        fitted.append(f)
        resid.append((loss[p.index] - f) * np.sqrt(m / (m - 3)))
    c = np.array([p.flops for p in used])
    out = {k: np.full(n_resamples, np.nan) for k in ("a", "b", "log10_k_n", "log10_k_d")}
    failed = 0
    for r in range(n_resamples):
        n_opt, d_opt = [], []
        for p, f, e in zip(used, fitted, resid, strict=True):
            y = f + e[rng.integers(0, len(e), len(e))]
            if prediction_sd is not None:
                y = y + prediction_sd[p.index] * extra.standard_normal(len(y))
            q = fit_parabola(p.budget, n[p.index], d[p.index], y)
            n_opt.append(q.n_opt)
            d_opt.append(q.d_opt)
            if not q.inside:
                break
        else:
            nl, dl = fit_power_law(c, np.array(n_opt)), fit_power_law(c, np.array(d_opt))
            out["a"][r], out["b"][r] = nl.exponent, dl.exponent
            out["log10_k_n"][r] = np.log10(nl.coefficient)
            out["log10_k_d"][r] = np.log10(dl.coefficient)
            continue
        failed += 1
    method = "each parabola's residuals resampled within its budget"
    if prediction_sd is not None:
        method += PREDICTED_METHOD
    s = Samples(out, n_resamples, failed, method=method)
    if failed < n_resamples - 1:
        pooled_t_intervals(s, fit, c, [len(p.index) for p in used])
    return s


def pooled_t_intervals(s: Samples, fit: IsoFlopFit, c: np.ndarray, m: list[int]) -> None:
    """Student-t intervals for Approach 2's laws, calibrated where percentiles are not.

    The residual bootstrap knows the vertices' noise only through each parabola's
    residuals: m - 3 degrees of freedom per budget (2 for 5 sizes), so its spread is
    itself uncertain, and its percentiles under-covered (72-78% for a nominal 80% on 3-4
    budgets). The power law's own scatter about its line measures the same variance of
    the exponent with k - 2 more degrees of freedom (k budgets). The interval is the
    estimate +- a t quantile times the pooled standard error
        se^2 = (nu_b se_boot^2 + (k - 2) se_line^2) / (nu_b + k - 2),  nu_b = sum (m - 3),
    on nu_b + k - 2 degrees of freedom (se_line from the least-squares line through the
    vertices in log10 C: its slope's standard error for a and b, its intercept's for the
    coefficients). The coverage study (benchmarks/fit_coverage.py) measures the result."""
    x = np.log10(c)
    k = len(x)
    nu_b = float(sum(mi - 3 for mi in m))
    sxx = float(((x - x.mean()) ** 2).sum())
    used = [p for p in fit.parabolas if p.usable]
    for law, name, coef in (("n", "a", "log10_k_n"), ("d", "b", "log10_k_d")):
        yv = np.log10([p.n_opt if law == "n" else p.d_opt for p in used])
        pl = fit.n_law if law == "n" else fit.d_law
        pred = np.log10(pl.coefficient) + pl.exponent * x
        s2 = float(((yv - pred) ** 2).sum() / (k - 2)) if k > 2 else 0.0
        line = {name: s2 / sxx, coef: s2 * (1 / k + x.mean() ** 2 / sxx)}
        est = {name: pl.exponent, coef: float(np.log10(pl.coefficient))}
        for q in (name, coef):
            v = s.values[q]
            boot = float(np.nanvar(v, ddof=1))
            dof = nu_b + k - 2
            var = (nu_b * boot + (k - 2) * line[q]) / dof
            s.student[q] = (est[q], float(np.sqrt(var)), dof)
    s.method += (
        "; Student-t intervals on the standard error pooled from the resamples and the "
        "vertices' scatter about the power law"
    )
