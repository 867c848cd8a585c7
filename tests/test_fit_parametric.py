import csv

import numpy as np
import pytest

from chinchilla.fit.isoflop import NotEnoughData
from chinchilla.fit.parametric import (
    design_rank,
    fit_parametric,
    optimal_allocation,
    paper_start_grid,
    parametric_loss,
    profile_starts,
    refit_many,
)

from .conftest import reference_file
from .scipy_loop import loop_fit

TRUE = {"E": 1.9, "A": 520.0, "B": 1800.0, "alpha": 0.36, "beta": 0.31}


def synthetic_points(seed=0, noise=0.01, outliers=5):
    """An IsoFLOP-like design: 8 budgets x 9 sizes, log-normal noise, a few outliers."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.logspace(18, 21, 8):
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.logspace(-0.8, 0.8, 9):
            rows.append((n, c / (6 * n)))
    n, d = np.array(rows).T
    loss = parametric_loss(n, d, **TRUE) * np.exp(rng.normal(0, noise, len(n)))
    idx = rng.choice(len(n), outliers, replace=False)
    loss[idx] *= 1.25  # diverged-looking runs
    return n, d, loss


def test_paper_start_grid_is_the_papers():
    g = paper_start_grid()
    assert g.shape == (4500, 5)
    assert sorted(set(g[:, 3])) == [0, 0.5, 1, 1.5, 2]
    assert sorted(set(g[:, 0])) == [0, 5, 10, 15, 20, 25]
    assert sorted(set(g[:, 2])) == [-1, -0.5, 0, 0.5, 1]


def test_recovers_known_parameters_despite_noise_and_outliers():
    n, d, loss = synthetic_points()
    fit = fit_parametric(n, d, loss)
    assert fit.success
    assert abs(fit.alpha - TRUE["alpha"]) < 0.03
    assert abs(fit.beta - TRUE["beta"]) < 0.03
    assert fit.E == pytest.approx(TRUE["E"], rel=0.03)


def _epoch_points():
    rows = list(csv.DictReader(reference_file("epoch_chinchilla_fig4_points.csv").open()))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss)[:240]  # Epoch drop the 5 highest-loss points
    return n[keep], (c / (6 * n))[keep], loss[keep]


def test_reproduces_epochs_replication_within_one_percent():
    n, d, loss = _epoch_points()
    fit = fit_parametric(n, d, loss)
    assert fit.E == pytest.approx(1.8172, rel=0.01)
    assert fit.alpha == pytest.approx(0.3473, rel=0.01)
    assert fit.beta == pytest.approx(0.3672, rel=0.01)
    assert fit.A == pytest.approx(477.84, rel=0.01)
    assert fit.B == pytest.approx(2143.86, rel=0.01)
    assert fit.objective == pytest.approx(1.01827e-3, rel=1e-4)


def design(kind: str, seed: int = 0):
    """Synthetic data from known laws: (n, d, loss). IsoFLOP designs of several sizes."""
    rng = np.random.default_rng(seed)
    law, noise, outliers = dict(TRUE), 0.01, 0
    budgets, sizes, span = np.logspace(18, 21, 8), 9, 0.8
    if kind == "small":  # 3 budgets x 5 sizes, the smallest design anyone fits
        budgets, sizes, noise = np.logspace(18, 20, 3), 5, 0.005
    elif kind == "clean":
        noise = 0.0
    elif kind == "noisy":
        noise, outliers = 0.03, 7
    elif kind == "narrow":  # half a decade of sizes per budget
        span = 0.25
    elif kind == "flat":  # small exponents, as tiny sweeps give
        law.update(alpha=0.15, beta=0.2, A=30.0, B=60.0, E=1.2)
    rows = []
    for c in budgets:
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.logspace(-span, span, sizes):
            rows.append((n, c / (6 * n)))
    n, d = np.array(rows).T
    loss = parametric_loss(n, d, **law) * np.exp(rng.normal(0, noise, len(n)))
    if outliers:
        loss[rng.choice(len(n), outliers, replace=False)] *= 1.25
    return n, d, loss


COMPARE_STARTS = paper_start_grid()[::15]  # 300 starts: the loop stays within seconds


@pytest.mark.parametrize("delta", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("kind", ["default", "small", "clean", "noisy", "narrow", "flat"])
def test_never_loses_to_a_per_start_scipy_loop(kind, delta):
    n, d, loss = design(kind)
    fit = fit_parametric(n, d, loss, delta=delta, starts=COMPARE_STARTS)
    _, f_loop = loop_fit(n, d, loss, COMPARE_STARTS, delta=delta)
    assert fit.objective <= f_loop * (1 + 1e-6)
    assert fit.best_status in ("converged", "vanished_term")
    # certificate: Newton decrement <= 2 (rtol f + atol), rtol 1e-10, atol 1e-20 n
    assert fit.decrement * fit.objective <= 2 * (1e-10 * fit.objective + 1e-20 * len(n))


@pytest.mark.parametrize("kind", ["default", "small", "flat"])
def test_never_loses_to_the_loop_with_e_bounded(kind):
    n, d, loss = design(kind, seed=3)
    upper = np.full(5, np.inf)
    upper[2] = np.log(loss.min()) - 0.2  # E well below the lowest loss: the bound binds
    fit = fit_parametric(n, d, loss, starts=COMPARE_STARTS, upper=upper)
    bounds = [(None, None)] * 2 + [(None, float(upper[2]))] + [(None, None)] * 2
    _, f_loop = loop_fit(n, d, loss, COMPARE_STARTS, bounds=bounds)
    assert fit.objective <= f_loop * (1 + 1e-6)
    assert fit.E <= np.exp(upper[2]) * (1 + 1e-12)


@pytest.mark.parametrize("delta", [1e-3, 1e-4])
def test_never_loses_to_the_loop_on_epochs_points(delta):
    n, d, loss = _epoch_points()
    starts = paper_start_grid()[::9]
    fit = fit_parametric(n, d, loss, delta=delta, starts=starts)
    _, f_loop = loop_fit(n, d, loss, starts, delta=delta)
    assert fit.objective <= f_loop * (1 + 1e-6)


def messy_points(seed, law, noise, outlier_share, points):
    """Points scattered over 4 decades of N and D (no IsoFLOP design), log-normal noise
    and a share of runs 20% low or 50% high: data that need not follow the law well."""
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e6), np.log(1e10), points))
    d = np.exp(rng.uniform(np.log(1e8), np.log(1e12), points))
    loss = parametric_loss(n, d, **law) * np.exp(rng.normal(0, noise, points))
    k = int(outlier_share * points)
    loss[rng.choice(points, k, replace=False)] *= rng.choice([0.8, 1.5], k)
    return n, d, loss


# Cases where the profile's power-law candidates alone lost to the paper's grid (a
# negative exponent, steep terms from 15 points, a max_iter start) and ordinary ones.
E_DOMINATED = {"E": 3.0, "A": 5.0, "B": 5.0, "alpha": 0.2, "beta": 0.2}
STEEP = {"E": 2.0, "A": 1e9, "B": 1e8, "alpha": 1.5, "beta": 1.2}
PROFILE_CASES = [
    ("edom-3-30", lambda: messy_points(3, E_DOMINATED, 0.05, 0.2, 30), 1e-3),
    ("edom-3-15", lambda: messy_points(3, E_DOMINATED, 0.005, 0.0, 15), 1e-2),
    ("steep-0-15", lambda: messy_points(0, STEEP, 0.005, 0.0, 15), 1e-4),
    ("steep-3-15", lambda: messy_points(3, STEEP, 0.005, 0.0, 15), 1e-3),
    ("small", lambda: design("small", 3), 1e-4),
    ("flat", lambda: design("flat", 3), 1e-3),
]


@pytest.mark.parametrize("name,points,delta", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_profile_starts_never_lose_to_the_papers_grid(name, points, delta):
    n, d, loss = points()
    starts = profile_starts(n, d, loss, delta=delta)
    assert len(starts) < 300
    fit = fit_parametric(n, d, loss, delta=delta, starts=starts)
    full = fit_parametric(n, d, loss, delta=delta, starts=paper_start_grid())
    assert fit.objective <= full.objective * (1 + 1e-6) + 1e-20 * len(n)


def test_profile_starts_respect_a_bound_on_e():
    n, d, loss = design("default", seed=3)
    upper = np.full(5, np.inf)
    upper[2] = np.log(loss.min()) - 0.2
    starts = profile_starts(n, d, loss, upper=upper)
    assert np.all(starts[:, 2] <= upper[2])
    fit = fit_parametric(n, d, loss, starts=starts, upper=upper)
    full = fit_parametric(n, d, loss, starts=paper_start_grid(), upper=upper)
    assert fit.objective <= full.objective * (1 + 1e-6)


def test_every_start_is_accounted_for():
    n, d, loss = design("default")
    fit = fit_parametric(n, d, loss, starts=COMPARE_STARTS)
    assert sum(fit.starts.values()) == len(COMPARE_STARTS)
    assert fit.starts["converged"] > 0 and fit.starts["max_iter"] == 0


def test_refuses_points_on_one_isoflop_line():
    # 10 runs on one IsoFLOP line (log D = const - log N) with 0.3% noise
    rng = np.random.default_rng(0)
    n = np.logspace(8, 9.5, 10)
    d = 1e20 / (6 * n)
    loss = parametric_loss(n, d, **TRUE) * np.exp(rng.normal(0, 0.003, 10))
    assert design_rank(n, d) == 2
    with pytest.raises(NotEnoughData, match="one line"):
        fit_parametric(n, d, loss)


def test_flags_a_term_the_data_do_not_determine():
    # loss depends on D only: the N term has nothing to fit
    n, d, _ = design("default")
    loss = 1.9 + 1800.0 / d**0.31
    fit = fit_parametric(n, d, loss, starts=COMPARE_STARTS)
    assert not fit.success
    assert fit.identification


def test_bootstrap_refits_match_cold_refits_on_a_small_design():
    from chinchilla.fit.bootstrap import resample_counts

    n, d, loss = design("small", seed=1)
    fit = fit_parametric(n, d, loss)
    counts = resample_counts(len(n), 12, seed=5)
    warm = refit_many(fit, n, d, loss, counts)
    x, y, z = np.log(n), np.log(d), np.log(loss)
    from chinchilla.fit.parametric import objective

    worse = 0
    for r in range(len(counts)):
        if not np.all(np.isfinite(warm[r])):
            continue
        cold = fit_parametric(n, d, loss, weights=counts[r], starts=COMPARE_STARTS)
        f_warm = objective(warm[r], x, y, z, weights=counts[r])
        worse += f_warm > cold.objective * (1 + 1e-6)
    assert worse == 0


PAPER = {"E": 1.69337, "A": 406.401, "B": 410.723, "alpha": 0.33917, "beta": 0.28491}


@pytest.mark.parametrize(
    "n_params, flops, tokens",
    [
        (400e6, 2.21e19, 9.2e9),
        (1e9, 1.62e20, 27.1e9),
        (10e9, 2.46e22, 410.1e9),
        (67e9, 1.71e24, 4.1e12),
        (175e9, 1.26e25, 12.0e12),
        (280e9, 3.52e25, 20.1e12),
        (1e12, 5.65e26, 94.1e12),
        (10e12, 8.55e28, 1425.5e12),
    ],
)
def test_paper_parameters_reproduce_table_a3_approach_3(n_params, flops, tokens):
    p = PAPER
    n_at_c, d_at_c = optimal_allocation(flops, p["A"], p["B"], p["alpha"], p["beta"])
    assert n_at_c == pytest.approx(n_params, rel=0.2)
    assert d_at_c == pytest.approx(tokens, rel=0.2)


def test_bounds_keep_e_below_the_lowest_loss():
    n, d, loss = synthetic_points(seed=1)
    upper = np.full(5, np.inf)
    upper[2] = np.log(loss.min() * 0.9)
    fit = fit_parametric(n, d, loss, upper=upper)
    assert fit.E <= loss.min() * 0.9 + 1e-12
