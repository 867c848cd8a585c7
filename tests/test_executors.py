import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.grid import plan

runner = CliRunner()


def _assert_every_run_once(out, micro_config, over):
    runs = pd.read_parquet(out / "runs.parquet")
    curves = pd.read_parquet(out / "curves.parquet")
    cfg = load_config(micro_config, over)
    assert sorted(runs["run_id"]) == sorted(x.run_id for x in plan(cfg).runs)
    assert (runs["status"] == "ok").all()
    assert not curves.duplicated(["run_id", "step"]).any()


def test_two_workers_train_the_same_runs_to_the_same_losses(micro_sweep, micro_config, tmp_path):
    out = tmp_path / "parallel"
    r = runner.invoke(app, ["sweep", str(micro_config), "--out", str(out), "--workers", "2"])
    assert r.exit_code == 0, r.output
    assert "worker utilisation" in r.output
    serial = pd.read_parquet(micro_sweep / "runs.parquet").set_index("run_id")
    parallel = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    assert sorted(serial.index) == sorted(parallel.index)
    # one CPU thread per worker instead of two: float32 sums in another order
    np.testing.assert_allclose(parallel.loc[serial.index, "loss"], serial["loss"], rtol=1e-5)
    assert parallel["worker"].str.contains("/w").all()
    assert not (out / "inflight.json").exists()
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["workers"] == 2 and len(summary["device_utilisation"]) == 2


def test_killing_the_driver_of_a_parallel_sweep_then_resuming(micro_config, tmp_path):
    over = ["grid.budgets=[1.5e9]", "train.checkpoint_every_s=0.2", "execution.workers=2"]
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(micro_config), "--out", str(out)]
    for o in over:
        cmd += ["--set", o]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpts = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
        if len(ckpts) >= 1 and (out / "inflight.json").exists():
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers
    proc.wait()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_every_run_once(out, micro_config, over)


def test_ray_executor_with_fake_gpus_matches_serial(micro_sweep, micro_config, tmp_path):
    ray = __import__("pytest").importorskip("ray")
    from chinchilla.sweep import run_sweep

    ray.init(
        num_cpus=2,
        num_gpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        cfg = load_config(micro_config, ["execution.executor=ray", "execution.gpus_per_run=0.5"])
        out = tmp_path / "ray"
        s = run_sweep(cfg, out, live=False)
    finally:
        ray.shutdown()
    assert s.statuses == {"ok": 4}
    serial = pd.read_parquet(micro_sweep / "runs.parquet").set_index("run_id")
    remote = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    np.testing.assert_allclose(remote.loc[serial.index, "loss"], serial["loss"], rtol=1e-5)
    assert remote["worker"].str.contains("/gpu ").all()  # Ray placed them on fake GPUs
    assert json.loads((out / "sweep.json").read_text())["executor"] == "ray"


RAY_OVER = ["grid.budgets=[1.5e9]", "train.checkpoint_every_s=0.2", "execution.executor=ray"]


def _ray_sweep_command(micro_config, out, over):
    """The `chinchilla sweep` command line and environment of a Ray sweep test."""
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(micro_config), "--out", str(out)]
    for o in over:
        cmd += ["--set", o]
    return cmd, os.environ | {"PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}


def _stop_ray() -> None:
    """Stop any Ray instance a killed driver left behind."""
    subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
        capture_output=True,
        timeout=60,
    )


def test_ray_sweep_resumes_after_its_driver_is_killed(micro_config, tmp_path):
    __import__("pytest").importorskip("ray")
    over = RAY_OVER
    out = tmp_path / "sweep"
    cmd, env = _ray_sweep_command(micro_config, out, over)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        parts = list((out / "parts").glob("*.run.parquet")) if (out / "parts").exists() else []
        ckpts = list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
        if parts or ckpts:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
    proc.wait()
    _stop_ray()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    _assert_every_run_once(out, micro_config, over)


def _ray_task_pids() -> list[int]:
    """Processes running a Ray task of `_ray_work` (Ray titles them ray::_ray_work)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if cmd.startswith(b"ray::_ray_work"):
            out.append(int(pid))
    return out


def test_a_ray_task_whose_worker_dies_is_retried_from_its_checkpoint(micro_config, tmp_path):
    __import__("pytest").importorskip("ray")
    over = [*RAY_OVER, "execution.retries=1"]
    out = tmp_path / "sweep"
    cmd, env = _ray_sweep_command(micro_config, out, over)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    killed = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and killed is None:
            ckpts = (
                list((out / "checkpoints").glob("*.pt")) if (out / "checkpoints").exists() else []
            )
            tasks = _ray_task_pids()
            if ckpts and tasks:
                killed = tasks[0]
                os.kill(killed, signal.SIGKILL)  # the worker dies mid-run, not the driver
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _stop_ray()
    assert killed is not None, "no Ray task was seen running with a checkpoint"
    assert proc.returncode == 0, output[-3000:]
    assert "its Ray task died" in output and "retry 1 of 1, from its checkpoint" in output
    _assert_every_run_once(out, micro_config, over)
    assert not _ray_task_pids()


def _children(pid: int) -> list[int]:
    """Live worker processes of `pid` (multiprocessing's spawned children, not its
    resource tracker; zombies count as dead)."""
    out = []
    for stat in os.listdir("/proc"):
        if not stat.isdigit():
            continue
        try:
            fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            try:
                cmdline = open(f"/proc/{stat}/cmdline").read()
            except OSError:
                continue
            if "spawn_main" in cmdline:
                out.append(int(stat))
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_sweep(micro_config, out, over):
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(micro_config), "--out", str(out)]
    for o in over:
        cmd += ["--set", o]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    return cmd, proc


def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _two_runs_in_flight(out):
    try:
        return len(json.loads((out / "inflight.json").read_text())) == 2
    except (OSError, ValueError):
        return False


SLOW = ["grid.budgets=[1.5e9]", "train.checkpoint_every_s=0.2", "execution.workers=2"]


def test_a_killed_worker_fails_only_its_own_run(micro_config, tmp_path):
    out = tmp_path / "sweep"
    cmd, proc = _start_sweep(micro_config, out, SLOW)
    try:
        assert _wait_for(lambda: _two_runs_in_flight(out) and len(_children(proc.pid)) >= 2)
        inflight = json.loads((out / "inflight.json").read_text())
        victim, label = next(iter(inflight.items()))  # a run and the process training it
        os.kill(int(label.rsplit("/pid", 1)[1]), signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    runs = pd.read_parquet(out / "runs.parquet").set_index("run_id")
    failed = runs[runs["status"] == "failed"]
    assert list(failed.index) == [victim]
    assert "SIGKILL" in failed["error"].iloc[0]
    assert (runs.drop(failed.index)["status"] == "ok").all()
    # the next invocation trains the failed run again (from its checkpoint)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    _assert_every_run_once(out, micro_config, SLOW)


def test_a_killed_worker_is_retried_in_a_fresh_process(micro_config, tmp_path):
    out = tmp_path / "sweep"
    over = SLOW + ["execution.retries=1"]
    _, proc = _start_sweep(micro_config, out, over)
    try:
        assert _wait_for(lambda: _two_runs_in_flight(out) and len(_children(proc.pid)) >= 2)
        first = set(_children(proc.pid))
        os.kill(sorted(first)[0], signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _assert_every_run_once(out, micro_config, over)


def test_workers_exit_when_the_driver_is_killed(micro_config, tmp_path):
    out = tmp_path / "sweep"
    cmd, proc = _start_sweep(micro_config, out, SLOW)
    try:
        assert _wait_for(lambda: _two_runs_in_flight(out) and len(_children(proc.pid)) >= 2)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone
        proc.wait()
        assert _wait_for(lambda: not any(_alive(w) for w in workers), timeout=15)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if any(_alive(w) for w in workers) else None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    _assert_every_run_once(out, micro_config, SLOW)


def test_a_second_sweep_on_a_busy_directory_is_refused(micro_config, tmp_path):
    out = tmp_path / "sweep"
    cmd, proc = _start_sweep(micro_config, out, SLOW)
    try:
        assert _wait_for(lambda: (out / "inflight.json").exists())
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert "in use by a running sweep" in r.stderr and f"pid {proc.pid}" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_gpu_mapping_goes_through_an_existing_mask(monkeypatch):
    from chinchilla.device import available_cpus, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert visible_gpus(4) == ["4", "5", "6", "7"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus(2) == ["0", "1"]
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)
