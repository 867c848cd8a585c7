import numpy as np
import pytest

from chinchilla.fit.bootstrap import Samples, bootstrap_loop, residual_bootstrap
from chinchilla.fit.isoflop import (
    NotEnoughData,
    fit_isoflop,
    fit_parabola,
    fit_power_law,
    near_minimum,
)
from chinchilla.fit.parametric import parametric_loss

from .test_fit_parametric import TRUE


def skewed_profiles(a_true=0.5, budgets=12, sizes=16):
    """IsoFLOP profiles whose minimum is exactly at N_opt = k C^a_true, with a cubic and a
    quartic term that grow with the budget: far from the minimum they rise asymmetrically
    (as real profiles do, several nats above the minimum), near it they are parabolas."""
    rows = []
    for i, c in enumerate(np.logspace(18, 22, budgets)):
        x_opt = a_true * np.log10(c) - 9.2
        u = np.linspace(-1.5, 1.5, sizes) + 0.1 * (i % 3)
        c3 = 0.15 * i / (budgets - 1)
        loss = 3.0 - 0.1 * i + 0.3 * u**2 + c3 * u**3 + 0.25 * c3 * u**4
        for du, lo in zip(u, loss, strict=True):
            n = 10 ** (x_opt + du)
            rows.append((n, c / (6 * n), c, lo))
    return np.array(rows).T


def test_near_minimum_parabolas_are_unbiased_where_full_range_ones_are_not():
    n, d, c, loss = skewed_profiles()
    fit = fit_isoflop(n, d, loss, c)
    full = [fit_parabola(b, n[c == b], d[c == b], loss[c == b]).n_opt for b in np.unique(c)]
    a_full = fit_power_law(np.unique(c), np.array(full)).exponent
    assert abs(a_full - 0.5) > 0.05  # one parabola through every size is pulled away
    assert fit.a == pytest.approx(0.5, abs=0.02)
    assert all(p.n_points == 7 for p in fit.parabolas)
    assert "nearest" in fit.rule


def test_near_minimum_picks_the_sizes_around_the_lowest_loss():
    n = np.logspace(7, 10, 10)
    loss = (np.log10(n) - 8.0) ** 2
    idx = near_minimum(n, loss, k=3)
    assert list(idx) == [2, 3, 4]


def _design(budgets, sizes, span=0.8, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.logspace(-span, span, sizes):
            rows.append((n, c / (6 * n), c))
    n, d, c = np.array(rows).T
    loss = parametric_loss(n, d, **TRUE) * np.exp(rng.normal(0, noise, len(n)))
    return n, d, c, loss


def test_budgets_are_dropped_with_a_note_and_three_must_remain():
    n, d, c, loss = _design(np.logspace(18, 20, 4), 5)
    three = c != c.max()
    # the top budget sampled far below its optimum: its vertex lies outside the sizes
    shift = np.where(c == c.max(), 0.05, 1.0)
    n2 = n * shift
    d2 = c / (6 * n2)
    loss2 = parametric_loss(n2, d2, **TRUE)
    fit = fit_isoflop(n2, d2, loss2, c)
    assert len(fit.used) == 3 and c.max() not in fit.used
    with pytest.raises(NotEnoughData, match="need 3"):
        fit_isoflop(
            n2[~three | (c == c.min())],
            d2[~three | (c == c.min())],
            loss2[~three | (c == c.min())],
            c[~three | (c == c.min())],
        )


def test_three_size_budgets_are_dropped():
    n, d, c, loss = _design(np.logspace(18, 20, 4), 3)
    with pytest.raises(NotEnoughData, match="a parabola needs 4"):
        fit_isoflop(n, d, loss, c)


def test_residual_bootstrap_works_on_a_3x5_design():
    n, d, c, loss = _design(np.logspace(18, 20, 3), 5, noise=0.003, seed=2)
    fit = fit_isoflop(n, d, loss, c)
    s = residual_bootstrap(fit, n, d, loss, 6 * n * d, 200, seed=0)
    assert s.withheld is None and s.n_failed <= 20
    lo, hi = s.interval("a")
    assert lo < fit.a < hi and hi - lo < 0.2

    def one(idx):
        return {"a": fit_isoflop(n[idx], d[idx], loss[idx], c[idx]).a}

    # resampling all runs together leaves budgets with too few sizes: intervals withheld
    pooled = bootstrap_loop(len(n), 200, 0, one)
    assert pooled.n_failed > 20 and pooled.withheld and pooled.interval("a") is None


def test_intervals_are_withheld_past_ten_percent_failures():
    v = np.r_[np.linspace(0, 1, 89), [np.nan] * 11]
    assert Samples({"a": v}, 100, 11).interval("a") is None
    assert Samples({"a": v}, 100, 10).interval("a") is not None
