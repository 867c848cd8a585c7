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


def test_a_capped_sweep_records_unique_tokens_and_epochs(tmp_path, micro_sweep):
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
    # fitted with its fresh twin, an uncapped sweep recorded before unique_tokens existed:
    # U = D there (a synthetic source), said; a capped run that never repeated is the
    # same run as its fresh twin and counts once
    import shutil

    fresh = tmp_path / "fresh"
    shutil.copytree(micro_sweep, fresh)
    old = pd.read_parquet(fresh / "runs.parquet").drop(columns=["unique_tokens", "epochs"])
    old.to_parquet(fresh / "runs.parquet")
    fixes = ["--fix", "E=2.0", "--fix", "A=50", "--fix", "B=300", "--fix", "alpha=0.3",
             "--fix", "beta=0.3"]  # fmt: skip
    r = runner.invoke(
        app, ["fit", str(fresh), str(out), "--law", "data-constrained", "--bootstrap", "0",
              "--json", "--out", str(tmp_path / "joint"), *fixes],
    )  # fmt: skip
    assert r.exit_code in (0, 1), r.output
    joint = json.loads(r.stdout)
    twins = int((runs["epochs"] <= 1).sum())  # the capped runs that did not repeat
    assert joint["n_points"] == len(old) + len(runs) - twins
    assert joint["duplicates_collapsed"] == twins
    assert any("U = D for 4 runs" in n for n in joint["notes"])
    assert (tmp_path / "joint" / "fit_data_constrained.json").exists()
    # several tables are a data-constrained fit only
    r = runner.invoke(app, ["fit", str(fresh), str(out)])
    assert r.exit_code == 2 and "several tables" in r.output


def _paper_worth(epochs: float, rd: float) -> float:
    """D'/D from Muennighoff et al.'s eq. 5, written out on its own: U = 1."""
    import math

    return (1 + rd * (1 - math.exp(-(epochs - 1) / rd))) / epochs


def test_plan_estimates_what_repetition_costs_from_r_star_or_a_fitted_law(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(MICRO_YAML.replace("n_rules: 256}", "n_rules: 256, unique_tokens: 2000}"))
    r = runner.invoke(app, ["plan", str(p), "--repetition", "15.39", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["repetition"]["rd_star"] == 15.39 and doc["repetition"]["base"] is None
    for run in doc["runs"]:
        assert run["worth"] == pytest.approx(_paper_worth(run["epochs"], 15.39), rel=1e-12)
        assert run["repetition_cost_nats"] is None
    assert min(run["worth"] for run in doc["runs"]) < 0.99  # some run repeats
    # a fitted law: the cost in nats, against a float64 recomputation of both laws
    base = {"E": 2.0, "A": 50.0, "B": 300.0, "alpha": 0.3, "beta": 0.35}
    law = {**base, "rn_star": 5.0, "rd_star": 4.0}
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "fit_data_constrained.json").write_text(
        json.dumps({"conventions": {"n_params": "total"}, "data_constrained": law})
    )
    r = runner.invoke(app, ["plan", str(p), "--repetition", str(fit), "--json"])
    assert r.exit_code == 0, r.output
    a, b = base["alpha"], base["beta"]
    g = (a * base["A"] / (b * base["B"])) ** (1 / (a + b))
    for run in json.loads(r.stdout)["runs"]:
        N, D, U = run["n_params"], run["n_tokens"], run["unique_tokens"]
        dp = U * (1 + 4.0 * (1 - np.exp(-(D / U - 1) / 4.0)))
        un = min(N, g * (g * U) ** (b / a))  # the base law's compute-optimal N for U tokens
        n_p = un * (1 + 5.0 * (1 - np.exp(-(N / un - 1) / 5.0)))
        want = (base["A"] / n_p**a + base["B"] / dp**b) - (base["A"] / N**a + base["B"] / D**b)
        assert run["repetition_cost_nats"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert run["repetition_cost_nats"] >= 0
    r = runner.invoke(app, ["plan", str(p), "--repetition", str(fit)])
    assert r.exit_code == 0 and "cost" in r.output and "worth" in r.output
    # a law of another N convention, a bad value, a file of something else: one line, 2
    (fit / "fit_data_constrained.json").write_text(
        json.dumps({"conventions": {"n_params": "nonembedding"}, "data_constrained": law})
    )
    for bad in (str(fit), "0", "nan", str(tmp_path / "missing.json"), str(p)):
        r = runner.invoke(app, ["plan", str(p), "--repetition", bad])
        assert r.exit_code == 2, (bad, r.output)
        assert r.output.startswith("error: --repetition") and len(r.output.splitlines()) == 1
