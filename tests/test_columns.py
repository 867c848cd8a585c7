"""`chinchilla fit --columns`: tables that name or scale their columns otherwise."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app

from .conftest import ROOT

runner = CliRunner()


@pytest.fixture
def exported(tmp_path):
    """The example table as a W&B-style export: N in millions, D in billions."""
    t = pd.read_csv(ROOT / "examples" / "tiny_sweep.csv")
    w = pd.DataFrame(
        {"Name": t["run_id"], "params_M": t["n_params"] / 1e6,
         "tokens_B": t["n_tokens"] / 1e9, "val/loss": t["loss"], "note": "x"}
    )  # fmt: skip
    path = tmp_path / "export.csv"
    w.to_csv(path, index=False)
    return path


def _fit(*args):
    r = runner.invoke(app, ["fit", *args, "--approach", "3", "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_mapped_and_scaled_columns_fit_as_the_original(exported):
    want = _fit(str(ROOT / "examples" / "tiny_sweep.csv"))["approach3"]
    doc = _fit(
        str(exported), "--columns", "n_params=params_M*1e6,n_tokens=tokens_B*1e9,loss=val/loss"
    )
    got = doc["approach3"]
    for k in ("E", "A", "B", "alpha", "beta", "a"):
        assert got[k] == pytest.approx(want[k], rel=1e-6), k
    assert doc["conventions"]["columns"]["n_params"] == "params_M x 1e+06"
    assert doc["conventions"]["columns"]["loss"] == "val/loss"


@pytest.mark.parametrize(
    "spec, says",
    [
        ("size=params_M", "QUANTITY"),
        ("n_params=nope", "no such column"),
        ("n_params=params_M*0", "factor"),
        ("n_params=params_M,n_params=tokens_B", "twice"),
        ("n_params=note*2,n_tokens=tokens_B,loss=val/loss", "note"),
    ],
)
def test_bad_mappings_give_one_line_and_exit_2(exported, spec, says):
    r = runner.invoke(app, ["fit", str(exported), "--columns", spec])
    assert r.exit_code == 2, r.output
    assert says in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(app, ["fit", str(exported), "--columns", "n_params=params_M", "--n-col", "x"])
    assert r.exit_code == 2 and "twice" in r.output
