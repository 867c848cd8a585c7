"""Repeated-data sweeps: data.unique_tokens caps the training split, runs record their
unique tokens and epochs, and the data-constrained fit reads a sweep."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.data import TokenData, capped
from chinchilla.errors import UserError
from chinchilla.grid import plan

from .conftest import MICRO_YAML, ROOT

runner = CliRunner()


def test_a_capped_split_cycles_through_its_first_chunks():
    tokens = np.arange(17 * 100, dtype=np.int64) % 1000
    data = capped(TokenData(train=tokens, val=tokens[:34], vocab_size=1000, seq_len=16), 5 * 16)
    assert data.n_train_chunks == 5 and data.train_tokens == 80
    seen = np.concatenate([data.train_batch(s, 2, seed=0) for s in range(10)])  # 4 epochs
    first = {tuple(r) for r in tokens[: 5 * 17].reshape(5, 17)}
    assert {tuple(r) for r in seen} == first  # only the first 5 chunks, each reused
    with pytest.raises(UserError, match="holds only"):
        capped(TokenData(train=tokens, val=tokens, vocab_size=1000, seq_len=16), 10**6)


def test_the_cap_is_validated_and_leaves_uncapped_run_ids_alone(tmp_path):
    # the demo's run ids are those of the example table, trained before the cap existed
    ids = {r["run_id"] for r in csv.DictReader((ROOT / "examples" / "tiny_sweep.csv").open())}
    assert {r.run_id for r in plan(load_config(ROOT / "configs" / "tiny.yaml")).runs} == ids
    p = tmp_path / "c.yaml"
    p.write_text(MICRO_YAML.replace("n_rules: 256}", "n_rules: 256, unique_tokens: 8}"))
    r = runner.invoke(app, ["plan", str(p)])
    assert r.exit_code == 2 and "data.unique_tokens" in r.output and "seq_len" in r.output
    p.write_text(MICRO_YAML.replace("n_rules: 256}", "n_rules: 256, unique_tokens: '2e3'}"))
    capped_plan = plan(load_config(p))
    assert all(run.unique_tokens == min(run.n_tokens, 2000) for run in capped_plan.runs)
    assert max(run.epochs for run in capped_plan.runs) > 2
    p.write_text(MICRO_YAML)  # a capped run is another experiment: another id
    assert not {r.run_id for r in capped_plan.runs} & {r.run_id for r in plan(load_config(p)).runs}


def test_a_capped_sweep_records_unique_tokens_and_epochs(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(MICRO_YAML.replace("n_rules: 256}", "n_rules: 256, unique_tokens: 2000}"))
    r = runner.invoke(app, ["plan", str(p)])
    assert r.exit_code == 0 and "epochs" in r.output
    out = tmp_path / "s"
    r = runner.invoke(app, ["sweep", str(p), "--out", str(out)])
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["unique_tokens"] == np.minimum(runs["n_tokens"], 2000)).all()
    assert np.allclose(runs["epochs"], runs["n_tokens"] / runs["unique_tokens"])
    assert runs["epochs"].max() > 2
    # the fit reads the sweep's columns (the base held: 4 runs cannot fit it)
    r = runner.invoke(
        app,
        ["fit", str(out), "--law", "data-constrained", "--bootstrap", "0", "--json",
         "--fix", "E=2.0", "--fix", "A=50", "--fix", "B=300", "--fix", "alpha=0.3",
         "--fix", "beta=0.3"],
    )  # fmt: skip
    assert r.exit_code in (0, 1), r.output  # 4 runs may leave R* uncertified
    doc = json.loads(r.stdout)
    assert doc["n_points"] == len(runs) and doc["data_constrained"]["rd_star"] > 0
    assert (out / "fit_data_constrained.json").exists()
