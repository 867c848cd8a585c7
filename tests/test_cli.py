import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config

from .conftest import ROOT

runner = CliRunner()


def test_plan_json_document():
    r = runner.invoke(app, ["plan", str(ROOT / "configs" / "markov.yaml"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"runs", "total_flops", "estimated_hours"} <= set(doc)
    keys = {
        "run_id",
        "budget",
        "n_params",
        "n_params_nonembedding",
        "n_tokens",
        "flops",
        "flops_6nd",
        "flops_chinchilla",
        "d_model",
        "n_layers",
        "n_heads",
        "d_ff",
        "seq_len",
        "batch_size",
        "steps",
        "lr",
    }
    for run in doc["runs"]:
        assert keys <= set(run)
        assert abs(run["flops"] - run["budget"]) / run["budget"] <= 0.02
    assert doc["total_flops"] == sum(r["flops"] for r in doc["runs"])


def test_plan_table_names_units():
    cfg = str(ROOT / "configs" / "markov.yaml")
    r = runner.invoke(app, ["plan", cfg, "--set", "device.type=cpu"])
    assert r.exit_code == 0
    assert "N = total parameters" in r.stdout and "6ND" in r.stdout
    assert "C = budget in FLOPs" in r.stdout and "D = tokens" in r.stdout
    assert "times: timed on this CPU" in r.stdout  # device.type cpu: a measured rate


def test_plan_table_fits_100_columns_and_wide_shows_the_rest():
    for name in ("markov.yaml", "trunks.yaml", "tune.yaml", "gpu_h100.yaml"):
        r = runner.invoke(app, ["plan", str(ROOT / "configs" / name)], env={"COLUMNS": "100"})
        assert r.exit_code == 0, r.output
        rows = [ln for ln in r.stdout.splitlines() if "run_id" in ln or "─" in ln]
        assert rows and max(len(ln.rstrip()) for ln in rows) <= 100, name
        assert "…" not in r.stdout, name  # nothing cut
    r = runner.invoke(app, ["plan", str(ROOT / "configs" / "markov.yaml"), "--wide"])
    assert "N non-emb" in r.stdout and "App.F/6ND" in r.stdout and "d_ff" in r.stdout


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_configs_exit_2_with_one_line(tmp_path):
    unknown = tmp_path / "u.yaml"
    unknown.write_text("grid: {budgets: [1e18]}\ntrain: {lrr: 1}\n")
    _one_line_error(runner.invoke(app, ["plan", str(unknown)]), "train.lrr", "unknown key")
    broken = tmp_path / "b.yaml"
    broken.write_text("grid: [1e18\n")
    _one_line_error(runner.invoke(app, ["plan", str(broken)]), "invalid YAML")
    _one_line_error(runner.invoke(app, ["plan", str(tmp_path / "missing.yaml")]), "not found")
    _one_line_error(runner.invoke(app, ["plan", str(unknown), "--set", "nokey"]), "--set")
    _one_line_error(runner.invoke(app, ["sweep", str(unknown)]), "train.lrr")


def test_status_of_a_missing_directory(tmp_path):
    _one_line_error(runner.invoke(app, ["status", str(tmp_path)]), "not a sweep directory")


def test_compare_two_families_side_by_side(micro_config, tmp_path):
    from chinchilla.sweep import run_sweep

    over = ["grid.budgets=[2e8, 6e8, 1.5e9]", "train.position_loss=true"]
    dirs = []
    for arch in ("transformer", "lstm"):
        out = tmp_path / arch
        run_sweep(load_config(micro_config, [*over, f"model.arch={arch}"]), out, live=False)
        dirs.append(str(out))
    target = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", *dirs, "--out", str(target), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    assert "transformer (transformer)" in r.output and "lstm (lstm)" in r.output
    doc = json.loads((target / "compare.json").read_text())
    assert (target / "compare.png").stat().st_size > 10_000
    assert doc["n_convention"] == "nonembedding"
    assert [s["label"] for s in doc["sweeps"]] == ["transformer (transformer)", "lstm (lstm)"]
    for s in doc["sweeps"]:
        runs = pd.read_parquet(Path(s["path"]) / "runs.parquet")
        best = runs.groupby("n_params_nonembedding")["loss"].min()
        assert [n for n, _ in s["frontier"]] == sorted(best.index.tolist())
        pos = s["position_loss"]
        assert len(pos["by_position"]) == 16
        lo = max(x["n_range"][0] for x in doc["sweeps"])
        hi = min(x["n_range"][1] for x in doc["sweeps"])
        assert pos["target_n"] == pytest.approx((lo * hi) ** 0.5)
        assert np.mean(pos["by_position"]) == pytest.approx(pos["loss"], rel=1e-5)
    bad = runner.invoke(app, ["compare", dirs[0], str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "not a sweep directory" in bad.output
    one = runner.invoke(app, ["compare", dirs[0]])
    assert one.exit_code == 2 and "at least two" in one.output


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_plans(name):
    r = runner.invoke(app, ["plan", str(ROOT / "configs" / name), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n_runs"] >= 1 and doc["total_flops"] <= doc["unshared_flops"] * (1 + 1e-12)
    if name == "trunks.yaml":
        assert doc["total_flops"] / doc["unshared_flops"] < 0.70
