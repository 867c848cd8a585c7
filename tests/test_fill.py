"""grid.fill curves: the plan, a sweep of planted curves filled by the law against the
truth, the prediction error carried into the intervals, and bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.grid import plan

from .fill_truth import FILL, ROOT, planted_sweep, size_law, truth, write_planted

runner = CliRunner()


def test_the_plan_trains_all_but_each_sizes_longest_run():
    cfg = load_config(FILL)
    p = plan(cfg)
    full = plan(load_config(ROOT / "configs" / "tiny.yaml"))
    # the targets are the full grid's own runs, ids included
    assert {t.run_id for t in p.targets} == {r.run_id for r in full.runs}
    trained = {r.run_id for r in p.runs}
    by_size: dict = {}
    for t in p.targets:
        by_size.setdefault((t.n_params, t.lr, t.batch_size), []).append(t)
    probes = [r for r in p.runs if r.planned_by == "probe"]
    for key, members in by_size.items():
        longest = max(t.steps for t in members)
        for t in members:
            assert (t.run_id in trained) == (t.steps < longest)
        if all(t.steps == longest for t in members):  # one horizon: a probe instead
            (probe,) = [r for r in probes if (r.n_params, r.lr, r.batch_size) == key]
            assert probe.steps == round(cfg.grid.probe_fraction * longest)
    assert len(probes) == 2
    ratio = p.total_flops / p.unshared_flops
    assert 0.25 < ratio < 0.35  # the demo's design: 30.9%
    assert p.unshared_flops == pytest.approx(sum(r.flops for r in full.runs))
    r = runner.invoke(app, ["plan", str(FILL)])
    assert r.exit_code == 0, r.output
    assert f"{ratio:.1%} of it" in " ".join(r.output.split())
    doc = json.loads(runner.invoke(app, ["plan", str(FILL), "--json"]).output)
    assert len(doc["filled"]) == len(p.targets) and doc["n_points"] == len(p.targets)


@pytest.mark.parametrize(
    "setting, words",
    [
        ("grid.kind=horizons", "grid.fill"),
        ("grid.adaptive=true", "grid.fill"),
        ("grid.probe_fraction=1.5", "grid.probe_fraction"),
        ("grid.fill=everything", "grid.fill"),
    ],
)
def test_bad_fill_settings_give_one_line_and_exit_2(setting, words):
    r = runner.invoke(app, ["plan", str(FILL), "--set", setting])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from chinchilla.fit.fill import fill_sweep

    out = tmp_path_factory.mktemp("fill") / "sweep"
    cfg, p = planted_sweep(out)
    return out, cfg, p, fill_sweep(out)


def test_a_planted_sweep_is_filled_with_thetruth(planted):
    from chinchilla.fit.curves import lr_schedule

    out, cfg, p, f = planted
    trained = {r.run_id for r in p.runs}
    pred = f.table[f.table["predicted"]]
    # one prediction per filled point (the 3e11 budget's repeat is the same point)
    filled = {(t.n_params, t.steps) for t in p.targets if t.run_id not in trained}
    assert len(pred) == len(filled) == 8
    for row in pred.itertuples():
        true = truth(lr_schedule(cfg, int(row.steps), row.lr), size_law(row.n_params),
                     int(row.steps))[0]  # fmt: skip
        assert row.loss == pytest.approx(true, abs=0.01), row.run_id
    measured = f.table[~f.table["predicted"]]
    runs = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    assert set(measured["run_id"]) <= trained
    assert np.allclose(measured["loss"], runs.loc[measured["run_id"], "loss"])
    assert (measured["prediction_sd"] == 0).all()
    # the check: sizes with 3+ trained horizons, each hiding its longest trained one
    assert len(f.check) == 4 and f.sigma < 0.01
    assert f.sigma == pytest.approx(math.sqrt(np.mean([c["error"] ** 2 for c in f.check])))
    assert (pred["prediction_sd"] == f.sigma).all()
    assert f.trained_flops / f.grid_flops == pytest.approx(p.total_flops / p.unshared_flops)


def test_the_prediction_error_widens_the_intervals(planted, tmp_path):
    """The filled table fitted as it is, and as a CSV whose predicted rows carry a 3x
    larger prediction_sd: same estimates, wider intervals; and with the column dropped,
    the predictions count as measured. (At the planted sweep's own prediction sd, 0.005
    nats against a residual sd near 0.01, Approach 3's interval moves by Monte Carlo
    noise alone: measured 0.032 and 0.033 wide.)"""
    out, _, _, f = planted
    r = runner.invoke(app, ["fit", str(out), "--json", "--no-plots", "--approach", "2",
                            "--approach", "3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    fill = doc["fill"]
    assert fill["predicted"] == 8 and fill["law"] == "multi-power" and fill["check"]
    assert doc["predicted_rows"] == 8
    assert "prediction sd" in doc["approach2"]["bootstrap_method"]
    table = f.table
    widths = {}
    for name, sd in (("measured", None), ("as_filled", 1.0), ("wider", 3.0)):
        t = table.copy()
        if sd is None:
            t = t.drop(columns=["prediction_sd", "predicted"])
        else:
            t["prediction_sd"] = t["prediction_sd"] * sd
        path = tmp_path / f"{name}.csv"
        t.to_csv(path, index=False)
        r = runner.invoke(app, ["fit", str(path), "--json", "--no-plots", "--approach", "2",
                                "--approach", "3"])  # fmt: skip
        assert r.exit_code == 0, r.output
        d = json.loads(r.output)
        if name == "as_filled":  # a table file with the column fits as the sweep does
            assert d["approach2"]["a"] == pytest.approx(doc["approach2"]["a"])
            assert d["approach2"]["a_ci"] == pytest.approx(doc["approach2"]["a_ci"])
        widths[name] = [
            np.diff(d["approach2"]["a_ci"])[0],
            np.diff(d["approach3"]["ci"]["a"]["80"])[0],
        ]
        assert d["predicted_rows"] == (0 if sd is None else 8)
    assert widths["measured"][0] < widths["as_filled"][0] < widths["wider"][0]
    assert widths["measured"][1] < widths["wider"][1]
    assert widths["wider"][0] > 1.5 * widths["measured"][0]


def test_bad_prediction_sd_and_joins_give_one_line(planted, tmp_path):
    out, _, _, f = planted
    t = f.table.copy()
    t.loc[t.index[0], "prediction_sd"] = -1.0
    path = tmp_path / "bad.csv"
    t.to_csv(path, index=False)
    r = runner.invoke(app, ["fit", str(path), "--no-plots"])
    assert r.exit_code == 2 and "prediction_sd must be >= 0" in r.output
    r = runner.invoke(app, ["fit", str(out), str(out), "--law", "data-constrained"])
    assert r.exit_code == 2 and "predicted rows" in r.output


def test_a_fill_without_a_checkable_size_is_refused(tmp_path):
    """Three budgets: no size keeps three trained horizons, so the law's error cannot be
    measured, and the fill says so rather than guess."""
    from chinchilla.config import from_dict
    from chinchilla.errors import UserError
    from chinchilla.fit.fill import fill_sweep

    d = load_config(FILL).to_dict()
    d["grid"]["budgets"] = [3e9, 1e10, 3e10]
    cfg = from_dict(d, base_dir=str(FILL.parent))
    out = tmp_path / "s"
    write_planted(cfg, plan(cfg), out)
    with pytest.raises(UserError, match="cannot be measured"):
        fill_sweep(out)
    r = runner.invoke(app, ["fit", str(out), "--no-plots"])
    assert r.exit_code == 2 and "cannot be measured" in r.output
