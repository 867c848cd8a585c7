import numpy as np
import pytest

from chinchilla.fit.envelope import (
    FINISHED,
    MID_SCHEDULE,
    fit_envelope,
    fit_envelope_finished,
    smooth,
)
from chinchilla.fit.parametric import parametric_loss

from .test_fit_parametric import TRUE

A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])


def test_smoothing_leaves_a_straight_line_and_the_final_point_alone():
    y = np.linspace(5.0, 3.0, 40)  # falling, as a loss curve
    s = smooth(y, 9)
    assert np.allclose(s, y)  # a one-sided end window would raise the last points
    noisy = y + np.random.default_rng(0).normal(0, 0.05, 40)
    assert smooth(noisy, 9)[-1] == pytest.approx(noisy[-1], rel=1e-12)


def test_envelope_of_finished_horizons_recovers_the_law():
    # 9 sizes x 4 horizons over 16x in tokens (the paper's design), final losses only
    rows = []
    for n in np.logspace(7.5, 9.5, 9):
        for d in n * 20 * np.logspace(-0.6, 0.6, 4):
            rows.append((n, d))
    n, d = np.array(rows).T
    loss = parametric_loss(n, d, **TRUE)
    env = fit_envelope_finished(n, 6 * n * d, d, loss)
    assert env.source == FINISHED and not env.warnings
    assert env.a == pytest.approx(A_TRUE, abs=0.05)


def test_mid_schedule_curves_are_used_with_a_warning():
    runs, flops, tokens, loss = [], [], [], []
    sizes = np.logspace(7, 9, 5)
    for i, n in enumerate(sizes):
        d = np.logspace(8, np.log10(n * 100), 30)
        runs += [i] * len(d)
        tokens += list(d)
        flops += list(6 * n * d)
        loss += list(parametric_loss(n, d, **TRUE))
    env = fit_envelope(np.array(runs), np.array(flops), np.array(tokens), np.array(loss), sizes)
    assert env.source == MID_SCHEDULE
    assert env.warnings and "mid-schedule" in env.warnings[0]


def test_repeats_enter_the_envelope_as_their_mean_whatever_the_row_order():
    # 9 sizes x 4 horizons over 16x, the second horizon of each size trained twice
    rng = np.random.default_rng(0)
    rows = []
    for n in np.logspace(7.5, 9.5, 9):
        for j, d in enumerate(n * 20 * np.logspace(-0.6, 0.6, 4)):
            rows += [(n, d)] * (2 if j == 1 else 1)
    n, d = np.array(rows).T
    loss = parametric_loss(n, d, **TRUE) + rng.normal(0, 0.02, len(n))
    ref = fit_envelope_finished(n, 6 * n * d, d, loss)
    for seed in range(5):
        p = np.random.default_rng(seed).permutation(len(n))
        env = fit_envelope_finished(n[p], 6 * n[p] * d[p], d[p], loss[p])
        assert env.a == ref.a and np.array_equal(env.loss, ref.loss)
    # the same envelope as from the repeats' means, one row per (N, D)
    keys = sorted(set(zip(n, d, strict=True)))
    mean = np.array([loss[(n == a) & (d == b)].mean() for a, b in keys])
    mn, md = np.array(keys).T
    assert fit_envelope_finished(mn, 6 * mn * md, md, mean).a == pytest.approx(ref.a, abs=1e-12)
