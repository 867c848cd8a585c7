import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.grid import plan
from chinchilla.sweep import run_sweep, status

runner = CliRunner()


def _check_tables(out, cfg):
    runs = pd.read_parquet(out / "runs.parquet")
    curves = pd.read_parquet(out / "curves.parquet")
    planned = {r.run_id for r in plan(cfg).runs}
    assert sorted(runs["run_id"]) == sorted(planned)
    assert not curves.duplicated(["run_id", "step"]).any()
    assert runs["loss"].map(lambda v: v == v and abs(v) < float("inf")).all()
    return runs, curves


def test_sweep_records_every_run_once_and_reruns_nothing(micro_sweep, micro_config, tmp_path):
    cfg = load_config(micro_config)
    out = tmp_path / "sweep"
    shutil.copytree(micro_sweep, out)
    runs, curves = _check_tables(out, cfg)
    assert (runs["status"] == "ok").all()
    for col in (
        "status",
        "loss",
        "train_loss",
        "seconds",
        "tokens_per_second",
        "mfu",
        "device",
        "torch_version",
        "code_version",
        "seed",
        "irreducible_loss",
        "n_params",
        "flops_chinchilla",
    ):
        assert col in runs.columns
    assert (runs["irreducible_loss"] < runs["loss"]).all()
    assert set(curves.columns) >= {
        "run_id",
        "step",
        "tokens",
        "flops",
        "train_loss",
        "eval_loss",
        "lr",
    }
    assert (out / "config.yaml").exists()
    again = run_sweep(cfg, out, live=False)
    assert again.trained == 0
    _check_tables(out, cfg)
    assert status(out)["counts"] == {"ok": 4}


def test_changed_config_is_refused_unless_forced(micro_sweep, micro_config, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(micro_sweep, out)
    r = runner.invoke(
        app, ["sweep", str(micro_config), "--out", str(out), "--set", "train.lr=1e-3"]
    )
    assert r.exit_code == 2 and "different config" in r.output and "train.lr" in r.output
    r = runner.invoke(
        app, ["sweep", str(micro_config), "--out", str(out), "--set", "execution.retries=1"]
    )
    assert r.exit_code == 0, r.output
    assert "0 trained now" in r.output


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(micro_config, tmp_path, monkeypatch):
    import chinchilla.train as train

    real = train.train_run
    cfg = load_config(micro_config, ["grid.budgets=[2e8]"])
    victim = plan(cfg).runs[1].run_id

    def flaky(run, *a, **k):
        if run.run_id == victim:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(run, *a, **k)

    monkeypatch.setattr(train, "train_run", flaky)
    out = tmp_path / "sweep"
    s = run_sweep(cfg, out, live=False)
    assert s.statuses == {"ok": 1, "failed": 1}
    runs = pd.read_parquet(out / "runs.parquet")
    assert "out of memory" in runs.set_index("run_id").loc[victim, "error"]
    monkeypatch.setattr(train, "train_run", real)
    again = run_sweep(cfg, out, live=False)  # failed runs are tried again
    assert again.trained == 1 and again.statuses == {"ok": 2}


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_sigkill_then_rerun_finishes_exactly_once(micro_config, tmp_path, arch):
    # long enough runs to be killed mid-way, checkpointing every step
    over = [
        "--set",
        "grid.budgets=[1.5e9]",
        "--set",
        "train.checkpoint_every_s=0.2",
        "--set",
        "train.log_every=2",
        "--set",
        f"model.arch={arch}",
    ]
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(micro_config), "--out", str(out), *over]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    # kill once one run is recorded and another has a checkpoint
    while time.time() < deadline:
        parts = list((out / "parts").glob("*.run.parquet")) if (out / "parts").exists() else []
        ckpts = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
        if parts and ckpts:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = {c.stem for c in (out / "checkpoints").glob("*.pt")}
    assert interrupted, "no run was interrupted mid-way"
    cfg = load_config(micro_config, [o for o in over if o != "--set"])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    runs, curves = _check_tables(out, cfg)
    assert (runs["status"] == "ok").all()
    resumed = runs.set_index("run_id").loc[sorted(interrupted)]
    assert resumed["resumed_from"].notna().all()
    for rid in interrupted:
        steps = curves[curves.run_id == rid]["step"].tolist()
        assert steps == sorted(steps)
        expected = list(range(2, steps[-1] + 1, 2))
        assert [s for s in steps if s % 2 == 0] == expected


def test_the_gpu_validation_script_runs_its_resume_part_on_cpu(tmp_path):
    """benchmarks/gpu_validate.py is run only where a GPU is lent; its --smoke mode keeps
    it working in between: two uninterrupted one-run sweeps and one SIGKILLed after a
    checkpoint and rerun, on CPU, where training is deterministic."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_validate.py", "--out", str(out), "--smoke"]
        + ["--only", "resume", "--kill-after", "0.5"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "resume.json").read_text())
    assert "error" not in res, res
    assert res["straight_rc"] == res["again_rc"] == res["rerun_rc"] == 0
    assert not res["finished_before_kill"] and res["processes_left_after_kill"] == 0
    assert res["resumed_from"] not in (None, "no column")
    assert res["duplicate_curve_rows"] == 0 and res["checkpoints_left"] == 0
    assert res["loss_diff"] == 0.0 and res["noise_loss_diff"] == 0.0


def test_a_sweep_directory_resolves_relative_paths_from_its_configs_folder(tmp_path, monkeypatch):
    """`verify`, `status` and resumes read the sweep's copy of the config: a relative
    shapes_file (or data.path) still means the file beside the original config, from
    any working directory."""
    from chinchilla.grid import plan
    from chinchilla.sweep import check_directory, sweep_config

    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "shapes.csv").write_text("d_model,n_layers,n_heads\n8,1,2\n16,1,4\n24,1,6\n")
    (conf / "c.yaml").write_text(
        "model: {family: table, shapes_file: shapes.csv, seq_len: 16}\n"
        "grid: {budgets: [2e8], sizes_per_budget: 2, size_span: 2}\n"
        "data: {vocab_size: 16}\n"
    )
    cfg = load_config(conf / "c.yaml")
    out = tmp_path / "runs"
    check_directory(cfg, out, force=False)
    monkeypatch.chdir(tmp_path)
    again = sweep_config(out)
    assert again.fingerprint() == cfg.fingerprint()
    assert [r.run_id for r in plan(again).runs] == [r.run_id for r in plan(cfg).runs]
    check_directory(cfg, out, force=False)  # the same config is still the same sweep


def test_a_corrupt_part_is_set_aside_and_its_run_trained_again(micro_sweep, tmp_path):
    """A part file cut short (a disk fault, a copy interrupted): `status` passes over it
    with a warning, and the next sweep sets it aside in parts/corrupt/, trains the run
    again and ends with every run recorded once; a corrupt runs.parquet is rebuilt."""
    from chinchilla.sweep import sweep_config

    out = tmp_path / "sweep"
    shutil.copytree(micro_sweep, out)
    before = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    victim = sorted(before.index)[0]
    part = out / "parts" / f"{victim}.run.parquet"
    part.write_bytes(part.read_bytes()[:40])
    (out / "runs.parquet").write_bytes(b"not parquet")
    r = runner.invoke(app, ["status", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["run_id"]: row["status"] for row in json.loads(r.stdout)["runs"]}
    assert rows[victim] == "pending" and "is not readable" in r.stderr
    cfg = sweep_config(out)
    s = run_sweep(cfg, out, live=False)
    assert s.trained == 1
    assert (out / "parts" / "corrupt" / f"{victim}.run.parquet").exists()
    after = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    assert sorted(after.index) == sorted(before.index)
    assert (after["status"] == "ok").all()
    assert after.loc[victim, "loss"] == pytest.approx(before.loc[victim, "loss"], abs=1e-6)


def test_status_of_a_dead_sweep_says_interrupted_not_running(micro_sweep, tmp_path):
    """A sweep killed by a signal leaves inflight.json behind; with the directory's lock
    free, its claimed runs read `interrupted`; while a sweep holds the lock, `running`."""
    from chinchilla.lock import SweepLock

    out = tmp_path / "sweep"
    shutil.copytree(micro_sweep, out)
    victim = sorted(pd.read_parquet(out / "runs.parquet")["run_id"])[0]
    for path in (out / "parts").glob(f"{victim}.*"):
        path.unlink()
    (out / "inflight.json").write_text(json.dumps({victim: "host/w0/pid999999"}))
    rows = {r["run_id"]: r for r in status(out)["runs"]}
    assert rows[victim]["status"] == "interrupted" and rows[victim]["worker"] is None
    with SweepLock(out):
        rows = {r["run_id"]: r for r in status(out)["runs"]}
    assert rows[victim]["status"] == "running" and rows[victim]["worker"] == "host/w0/pid999999"
