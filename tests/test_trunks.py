"""Shared warmup-stable trunks (grid.share_trunks): the saving the plan promises, branches
that are the independent runs they replace, and a sweep killed anywhere that still
trains every point once."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.grid import decay_start, plan

from .conftest import kill_when

runner = CliRunner()

TRUNK_YAML = """
name: trunks
model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}
grid: {kind: horizons, model_sizes: [1500, 4000], horizons: 3, horizon_span: 4,
       tokens_per_param: 12, share_trunks: true}
train: {batch_size: 8, evals: 2, eval_tokens: 512, log_every: 5, lr: 3e-3, schedule: wsd,
        decay_frac: 0.2, warmup_frac: 0.0, warmup_min_steps: 4, checkpoint_every_s: 0.2}
data: {kind: synthetic, vocab_size: 16, support: 3, val_tokens: 2048, n_rules: 256}
device: {threads: 1}
"""


@pytest.fixture
def trunk_config(tmp_path: Path) -> Path:
    path = tmp_path / "trunks.yaml"
    path.write_text(TRUNK_YAML)
    return path


def test_a_chinchilla_horizons_design_trains_at_least_30_percent_fewer_flops(tmp_path):
    """4 horizons over 16x per size (Hoffmann et al.'s Approach 1 design), decay over the
    last 20%: the trunk runs to 80% of the longest horizon, each branch decays over 20%
    of its own: (0.8 * 16 + 0.2 * 25.9) / 25.9 of the FLOPs."""
    path = tmp_path / "h.yaml"
    path.write_text(
        TRUNK_YAML.replace("horizons: 3, horizon_span: 4", "horizons: 4, horizon_span: 16")
        .replace("model_sizes: [1500, 4000]", "model_sizes: [2000, 8000, 30000]")
        .replace("warmup_frac: 0.0", "warmup_frac: 0.02")
    )
    p = plan(load_config(path))
    trunks = [r for r in p.runs if r.is_trunk]
    assert len(trunks) == 3 and len(p.points) == 12
    assert p.total_flops / p.unshared_flops < 0.70
    for t in trunks:
        branches = [r for r in p.points if r.trunk == t.run_id]
        assert sorted((r.branch_step, r.run_id) for r in branches) == list(t.branches)
        assert t.steps == max(r.branch_step for r in branches)
        for r in branches:  # the branch point is the run's own decay start
            assert r.branch_step == decay_start(r.steps, t.warmup, p.config) < r.steps
            assert r.warmup == t.warmup
    r = runner.invoke(app, ["plan", str(path)])
    assert r.exit_code == 0 and "12 points from 3 trunks" in r.output and "fewer" in r.output


def test_share_trunks_needs_a_wsd_schedule(trunk_config):
    r = runner.invoke(app, ["plan", str(trunk_config), "--set", "train.schedule=cosine"])
    assert r.exit_code == 2 and "train.schedule: wsd" in r.output


def _sweep(cfg_path, out, *over, workers=1):
    r = runner.invoke(
        app,
        ["sweep", str(cfg_path), "--out", str(out), "--workers", str(workers)]
        + [x for o in over for x in ("--set", o)],
    )
    assert r.exit_code == 0, r.output
    return pd.read_parquet(out / "runs.parquet"), pd.read_parquet(out / "curves.parquet")


def test_branches_are_the_independent_runs_they_replace(trunk_config, tmp_path):
    """Same warm-up, peak, data order and decay: a branch reproduces the independent WSD
    run of its (N, D) exactly (on CPU), and its curve continues its trunk's."""
    runs, curves = _sweep(trunk_config, tmp_path / "shared")
    alone, alone_curves = _sweep(trunk_config, tmp_path / "alone", "grid.share_trunks=false")
    points = runs[runs["status"] == "ok"]
    assert (runs["status"] == "trunk").sum() == 2 and len(points) == len(alone) == 6
    key = ["n_params", "n_tokens"]
    m = points.merge(alone, on=key, suffixes=("", "_alone"))
    assert len(m) == 6
    np.testing.assert_array_equal(m["loss"], m["loss_alone"])
    for _, row in m.iterrows():
        c = curves[curves["run_id"] == row["run_id"]]
        a = alone_curves[alone_curves["run_id"] == row["run_id_alone"]]
        steps = c["step"].tolist()
        assert steps == sorted(set(steps)) and steps[0] == 5  # from the trunk's first row
        j = c.merge(a, on="step")
        # rows the branch lacks: the independent run's own mid-run evaluations before the
        # branch point (the trunk evaluated at its own steps instead)
        missing = set(a["step"]) - set(c["step"])
        assert all(st < row["branch_step"] and st % 5 for st in missing)
        assert len(j) == len(a) - len(missing) >= 5
        # a logged training loss averages the steps since the previous row: after an
        # evaluation row that only one of the two has (the trunk evaluated at its own
        # steps), the next row averages fewer steps in that one; every other row is equal
        only = missing | (set(c["step"]) - set(a["step"]))
        after = {min(x for x in j["step"] if x > st) for st in only if st < j["step"].max()}
        same = j[~j["step"].isin(after)]
        np.testing.assert_array_equal(same["train_loss_x"], same["train_loss_y"])
    assert not list((tmp_path / "shared" / "checkpoints").glob("*"))
    # killed between recording a branch and removing its trunk state: the next sweep
    # removes what a recorded run no longer needs
    row = points.iloc[0]
    stale = tmp_path / "shared" / "checkpoints" / f"{row['trunk']}@{int(row['branch_step'])}.pt"
    stale.write_bytes(b"left behind")
    (tmp_path / "shared" / "checkpoints" / f"{row['run_id']}.pt").write_bytes(b"x")
    _sweep(trunk_config, tmp_path / "shared")
    assert not list((tmp_path / "shared" / "checkpoints").glob("*"))
    assert set(points["trunk"]) == set(runs.loc[runs["status"] == "trunk", "run_id"])
    fit = runner.invoke(
        app, ["fit", str(tmp_path / "shared"), "--approach", "1", "--bootstrap", "20"]
    )
    assert "6 runs" in fit.output, fit.output  # the trunks are not points
    # exit 1 exactly when the named approach found no answer on this tiny design
    assert fit.exit_code == (1 if "approach1 skipped" in fit.output else 0), fit.output


def test_a_failed_trunk_fails_its_branches_with_the_reason(trunk_config, tmp_path, monkeypatch):
    import chinchilla.train as train_mod

    real = train_mod.train_run

    def broken(run, *a, **k):
        if run.is_trunk:
            raise RuntimeError("disk full")
        return real(run, *a, **k)

    monkeypatch.setattr(train_mod, "train_run", broken)
    r = runner.invoke(app, ["sweep", str(trunk_config), "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(tmp_path / "s" / "runs.parquet")
    assert (runs["status"] == "failed").all()
    branches = runs[runs["trunk"].notna()]
    assert branches["error"].str.contains("checkpoint of trunk").all()


@pytest.mark.parametrize("moment", ["branch point written", "first branch recorded"])
def test_sigkill_anywhere_then_rerun_trains_every_point_once(trunk_config, tmp_path, moment):
    ref_runs, _ = _sweep(trunk_config, tmp_path / "ref", workers=2)
    out = tmp_path / "killed"
    ckpts, parts = out / "checkpoints", out / "parts"

    def reached():
        if moment == "branch point written":
            return ckpts.exists() and any("@" in p.name for p in ckpts.glob("*.pt"))
        return parts.exists() and any(
            pd.read_parquet(p)["trunk"].notna().any() for p in parts.glob("*.run.parquet")
        )

    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(trunk_config), "--out", str(out)]
    kill_when([*cmd, "--workers", "2"], reached, moment)
    runs, curves = _sweep(trunk_config, out, workers=2)
    assert sorted(runs["run_id"]) == sorted(ref_runs["run_id"])  # every point (and trunk) once
    assert not curves.duplicated(["run_id", "step"]).any()
    points = runs[runs["status"] == "ok"].set_index("run_id")
    ref = ref_runs[ref_runs["status"] == "ok"].set_index("run_id")
    assert len(points) == 6
    np.testing.assert_array_equal(points.loc[ref.index, "loss"], ref["loss"])
    for rid in points.index:
        steps = curves.loc[curves["run_id"] == rid, "step"].tolist()
        assert steps == sorted(steps) and steps[0] == 5  # continuous from the trunk
    assert not list(ckpts.glob("*.pt"))


def test_a_ray_sweep_runs_trunks_before_their_branches(trunk_config, tmp_path):
    pytest.importorskip("ray")
    from .test_executors import _ray_sweep_command, _stop_ray

    ref_runs, _ = _sweep(trunk_config, tmp_path / "ref")
    out = tmp_path / "ray"
    cmd, env = _ray_sweep_command(trunk_config, out, ["execution.executor=ray"])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    finally:
        _stop_ray()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    runs = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    ref = ref_runs.set_index("run_id")
    assert sorted(runs.index) == sorted(ref.index)
    assert (runs.loc[ref.index, "status"] == ref["status"]).all()
    ok = ref[ref["status"] == "ok"].index
    np.testing.assert_array_equal(runs.loc[ok, "loss"], ref.loc[ok, "loss"])
    assert not list((out / "checkpoints").glob("*.pt"))


def test_a_size_ladder_repeats_sizes_across_budgets_so_they_share(tmp_path):
    from chinchilla.grid import expected_optimal_n

    root = Path(__file__).resolve().parents[1]
    over = ["train.schedule=wsd", "grid.share_trunks=true", "grid.repeats=0"]
    spread = plan(load_config(root / "configs" / "markov.yaml", over))
    ladder = plan(load_config(root / "configs" / "markov.yaml", [*over, "grid.size_ladder=true"]))
    cfg = ladder.config
    by_budget: dict[float, list[int]] = {}
    for r in ladder.points:
        by_budget.setdefault(r.budget, []).append(r.n_params)
    assert all(len(v) == 5 for v in by_budget.values())
    for b, sizes in by_budget.items():  # still around each budget's centre, over ~size_span
        centre = expected_optimal_n(b, cfg)
        assert min(sizes) < centre < max(sizes)
        assert 4 < max(sizes) / min(sizes) < 16
    shared = set.intersection(*(set(v) for v in by_budget.values()))
    assert len(shared) >= 3  # a size of every budget
    assert ladder.total_flops / ladder.unshared_flops < spread.total_flops / spread.unshared_flops
    r = runner.invoke(
        app,
        [
            "plan",
            str(root / "configs" / "markov.yaml"),
            "--set",
            "grid.kind=horizons",
            "--set",
            "grid.model_sizes=[3e3]",
            "--set",
            "grid.size_ladder=true",
        ],
    )
    assert r.exit_code == 2 and "grid.size_ladder" in r.output


def test_only_runs_that_can_never_start_are_stranded(trunk_config, tmp_path):
    """A branch waits while anything is in flight; a ready run waiting for a worker (a
    dead one being replaced, say) is never failed as stranded."""
    from chinchilla.layout import branch_checkpoint
    from chinchilla.runs import stranded

    p = plan(load_config(trunk_config))
    branch = next(r for r in p.runs if r.trunk is not None)
    trunk = next(r for r in p.runs if r.is_trunk)
    out = tmp_path / "s"
    assert stranded(out, [branch], in_flight=True) == []
    assert stranded(out, [branch], in_flight=False) == [branch]
    assert stranded(out, [trunk, branch], in_flight=False) == []  # the trunk can start
    point = branch_checkpoint(out, branch.trunk, branch.branch_step)
    point.parent.mkdir(parents=True)
    point.write_bytes(b"state")
    assert stranded(out, [branch], in_flight=False) == []
