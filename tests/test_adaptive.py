"""Adaptive IsoFLOP grids: decisions tested with losses from a known law (fast, exact),
and the sweep path with real training on the micro config."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.adaptive import bracket, run_adaptive
from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.fit.parametric import parametric_loss
from chinchilla.grid import n_of, plan

from .conftest import ROOT

# alpha = beta and A / B chosen so that the optimum sits near D/N = 100 at these budgets
LAW = {"E": 1.6, "A": 15.0, "B": 60.0, "alpha": 0.3, "beta": 0.3}


class Law:
    """A trainer that records each run's loss from LAW, and can stop after k runs."""

    def __init__(self, stop_after=None):
        self.recorded: dict[str, float] = {}
        self.trained: list[str] = []
        self.stop_after = stop_after

    def train(self, runs):
        for r in runs:
            if r.run_id in self.recorded:
                continue
            if self.stop_after is not None and len(self.trained) >= self.stop_after:
                raise KeyboardInterrupt  # the sweep is killed here
            self.recorded[r.run_id] = float(parametric_loss(r.n_params, r.n_tokens, **LAW))
            self.trained.append(r.run_id)

    def losses(self, runs):
        return {r.run_id: self.recorded[r.run_id] for r in runs if r.run_id in self.recorded}


def _tiny(tokens_per_param):
    return load_config(
        ROOT / "configs" / "markov.yaml",
        [f"grid.tokens_per_param={tokens_per_param}", "grid.adaptive=true"],
    )


def _profiles(runs, law):
    by = {}
    for r in runs:
        by.setdefault(r.budget, []).append((n_of(r.shape, "total"), law.recorded[r.run_id]))
    return {b: np.array(v).T for b, v in by.items()}


@pytest.mark.parametrize("tokens_per_param", [2, 2000])
def test_a_wrong_centre_ends_bracketed_within_1_5x_the_fixed_grid(tokens_per_param):
    cfg = _tiny(tokens_per_param)
    law = Law()
    runs = run_adaptive(cfg, law.train, law.losses)
    for budget, (n, loss) in _profiles(runs, law).items():
        side, _, vertex = bracket(n, loss)
        assert side is None, budget  # lowest loss interior, >= 2 sizes each side
        assert vertex is not None and (n < vertex).sum() >= 2 and (n > vertex).sum() >= 2
    fixed = plan(
        load_config(ROOT / "configs" / "markov.yaml", [f"grid.tokens_per_param={tokens_per_param}"])
    )
    assert sum(r.flops for r in runs) <= 1.5 * fixed.total_flops
    assert {r.planned_by for r in runs} >= {"initial", "recentred"}
    # the fixed grid with the same centre does not bracket the smallest budget
    fixed_law = Law()
    fixed_law.train(fixed.runs)
    sides = [bracket(n, loss)[0] for n, loss in _profiles(fixed.runs, fixed_law).values()]
    assert any(s is not None for s in sides)


def test_a_killed_adaptive_sweep_ends_with_the_same_runs():
    cfg = _tiny(2)
    whole = Law()
    expected = {r.run_id for r in run_adaptive(cfg, whole.train, whole.losses)}
    for k in (3, 8, 13):
        killed = Law(stop_after=k)
        with pytest.raises(KeyboardInterrupt):
            run_adaptive(cfg, killed.train, killed.losses)
        killed.stop_after = None  # rerun with what was recorded before the kill
        again = {r.run_id for r in run_adaptive(cfg, killed.train, killed.losses)}
        assert again == expected and set(killed.trained) == expected


def test_bracket_reads_the_side_that_needs_sizes():
    n = np.logspace(3, 5, 5)
    falling = np.array([3.0, 2.8, 2.6, 2.5, 2.45])
    assert bracket(n, falling)[0] == "larger"
    assert bracket(n, falling[::-1])[0] == "smaller"
    bowl = (np.log10(n) - 4.0) ** 2 + 2.0
    side, k, vertex = bracket(n, bowl)
    assert side is None and vertex == pytest.approx(1e4, rel=1e-6)


def test_an_adaptive_sweep_trains_records_why_and_resumes(micro_config, tmp_path):
    out = tmp_path / "sweep"
    over = []
    for o in (
        "grid.sizes_per_budget=3",
        "grid.adaptive_extra=1",
        "model.head_dim=4",
        "model.aspect_ratio=8",
        "grid.size_span=8",
    ):  # 3 distinct micro shapes per budget
        over += ["--set", o]
    args = ["sweep", str(micro_config), "--out", str(out), "--adaptive", *over]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["status"] == "ok").all()
    assert set(runs["planned_by"]) <= {"initial", "recentred", "extended"}
    assert "recentred" in set(runs["planned_by"])  # the second budget was re-placed
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "0 trained now" in again.output
    st = CliRunner().invoke(app, ["status", str(out), "--json"])
    rows = json.loads(st.stdout)["runs"]
    recorded = {row["run_id"]: row["planned_by"] for row in rows if row["status"] == "ok"}
    assert recorded == dict(zip(runs["run_id"], runs["planned_by"], strict=True))
