"""Outlier screening: the robust rule against known truth (planted outliers, clean noise)
and against the rows Epoch AI's replication dropped by hand."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.fit.data import Results, load_results
from chinchilla.fit.outliers import THRESHOLD
from chinchilla.fit.results import FitOptions, fit_all

from .conftest import reference_file
from .test_fit_parametric import synthetic_points

runner = CliRunner()
EPOCH_DROPPED_A = 0.3672 / (0.3473 + 0.3672)  # Epoch's fit on the 240 lowest-loss points


def _results(n, d, loss) -> Results:
    return Results.from_arrays(n, d, loss, source="simulated")


def test_planted_outliers_are_flagged_and_nothing_else():
    for seed in range(3):
        n, d, loss = synthetic_points(seed=seed, noise=0.01, outliers=0)
        rng = np.random.default_rng(100 + seed)
        planted = rng.choice(len(n), 5, replace=False)
        loss[planted] *= 1.25  # diverged-looking runs
        rep = fit_all(_results(n, d, loss), FitOptions(approaches=(3,), bootstrap=0))
        assert {r["run"] for r in rep.outliers.as_dict()["rows"]} == {f"r{i}" for i in planted}


def test_gaussian_noise_alone_flags_nothing():
    for seed in range(5):
        n, d, loss = synthetic_points(seed=seed, noise=0.02, outliers=0)
        rep = fit_all(_results(n, d, loss), FitOptions(approaches=(3,), bootstrap=0))
        assert rep.outliers.screened and rep.outliers.rows == []


def test_epochs_points_flag_the_highest_losses_and_dropping_them_gives_epochs_fit():
    path = reference_file("epoch_chinchilla_fig4_points.csv")
    res = load_results(path)
    kept = fit_all(res, FitOptions(approaches=(3,), bootstrap=0))
    rows = kept.outliers.as_dict()["rows"]
    # the four highest-loss rows of the file (Epoch dropped the five highest by hand)
    highest = {res.run_id[i] for i in np.argsort(-res.loss)[:4]}
    assert {r["run"] for r in rows} == highest
    assert all(abs(r["robust_z"]) > THRESHOLD for r in rows)
    assert kept.approach3.a == pytest.approx(0.565, abs=0.002)  # kept: they move a
    dropped = fit_all(res, FitOptions(approaches=(3,), bootstrap=0, drop_outliers=True))
    assert len(dropped.results) == len(res) - 4
    assert dropped.results.excluded == {"outlier": 4}
    assert dropped.approach3.a == pytest.approx(EPOCH_DROPPED_A, abs=0.005)


def test_the_cli_names_the_rows_and_records_the_rule(tmp_path):
    n, d, loss = synthetic_points(noise=0.01, outliers=0)
    loss[[3, 40]] *= 1.3
    p = tmp_path / "t.csv"
    p.write_text(
        "N,D,loss\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(n, d, loss, strict=True))
    )
    r = runner.invoke(app, ["fit", str(p), "--bootstrap", "0", "--approach", "3"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # the console wraps long lines
    assert "2 outlier rows" in text and "row 5 " in text and "row 42 " in text
    assert "--drop-outliers refits without them" in text
    out = tmp_path / "fit"
    r = runner.invoke(
        app, ["fit", str(p), "--bootstrap", "0", "--drop-outliers", "--out", str(out), "--no-plots"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "fit.json").read_text())
    assert doc["outliers"]["excluded"] and doc["n_points"] == len(n) - 2
    assert {x["run"] for x in doc["outliers"]["rows"]} == {"row 5", "row 42"}
    assert "robust" in doc["outliers"]["rule"]


def test_a_table_too_small_for_the_law_says_it_was_not_screened():
    n, d, loss = synthetic_points(noise=0.01, outliers=0)
    rep = fit_all(_results(n[:6], d[:6], loss[:6]), FitOptions(approaches=(2,), bootstrap=0))
    doc = rep.outliers.as_dict()
    assert not doc["screened"] and "6 distinct" in doc["why_not"]
    assert "approach3" not in rep.skipped  # not requested, not reported as skipped
