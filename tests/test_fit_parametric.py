import csv

import numpy as np
import pytest

from chinchilla.fit.parametric import (
    fit_parametric,
    optimal_allocation,
    paper_start_grid,
    parametric_loss,
    scipy_reference_fit,
)

from .conftest import reference_file

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


def test_halving_and_exhaustive_and_scipy_loop_agree():
    n, d, loss = _epoch_points()
    halving = fit_parametric(n, d, loss, exhaustive=False)
    exhaustive = fit_parametric(n, d, loss)
    assert halving.objective <= exhaustive.objective * (1 + 1e-4)
    # the per-start L-BFGS-B loop on every 15th start (the full loop is the benchmark)
    _, f_loop = scipy_reference_fit(n, d, loss, starts=paper_start_grid()[::15])
    assert halving.objective <= f_loop * (1 + 1e-4)


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
