"""Trackers: TensorBoard event files read back with TensorBoard's own reader, W&B offline
run folders, resumes without duplicate steps, failures that never stop a run, and
nothing imported when tracking is off."""

import subprocess
import sys

import pandas as pd
import pytest

from chinchilla.config import load_config
from chinchilla.sweep import run_sweep

from .conftest import MICRO_YAML, kill_when

pytest.importorskip("tensorboard")


def _config(tmp_path, tracking: str):
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_YAML + f"tracking: {tracking}\n")
    return path


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _raw_steps(folder, tag):
    """Every event of a tag in the folder's files, as written (no purge applied)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for f in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                if v.tag == tag:
                    steps.append(event.step)
    return steps


def test_tensorboard_events_hold_every_logged_point(tmp_path):
    out = tmp_path / "s"
    run_sweep(load_config(_config(tmp_path, "{tensorboard: true}")), out, live=False)
    curves = pd.read_parquet(out / "curves.parquet")
    for rid, c in curves.groupby("run_id"):
        train = _scalars(out / "tensorboard" / rid, "loss/train")
        assert [s for s, _ in train] == c["step"].tolist()
        assert [v for _, v in train] == pytest.approx(c["train_loss"].tolist(), rel=1e-6)
        ev = c.dropna(subset=["eval_loss"])
        val = _scalars(out / "tensorboard" / rid, "loss/validation")
        assert [s for s, _ in val] == ev["step"].tolist()
        assert [s for s, _ in _scalars(out / "tensorboard" / rid, "lr")] == c["step"].tolist()


def test_a_killed_and_resumed_run_logs_no_step_twice(tmp_path):
    cfg = _config(tmp_path, "{tensorboard: true}")
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(cfg), "--out", str(out),
           "--set", "train.checkpoint_every_s=0.5", "--workers", "1",
           "--set", "grid.budgets=[1.5e9]"]  # fmt: skip

    def reached():  # a run's events on disk reach past its last checkpoint
        import torch

        for ckpt in (out / "checkpoints").glob("*.pt"):
            try:
                step = torch.load(ckpt, map_location="cpu", weights_only=False)["step"]
                logged = _raw_steps(out / "tensorboard" / ckpt.stem, "loss/train")
            except Exception:  # a file being written
                continue
            if logged and max(logged) > step:
                return True
        return False

    kill_when(cmd, reached, "a run logged past its checkpoint")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = pd.read_parquet(out / "runs.parquet")
    curves = pd.read_parquet(out / "curves.parquet")
    resumed = runs[runs["resumed_from"].notna()]
    assert len(resumed) >= 1
    relogged = 0
    for rid in resumed["run_id"]:
        folder = out / "tensorboard" / rid
        steps = [s for s, _ in _scalars(folder, "loss/train")]
        assert steps == sorted(set(steps))  # no step twice, in order
        assert steps == curves[curves.run_id == rid]["step"].tolist()  # and none missing
        assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # two processes wrote
        # what the killed process logged past its checkpoint is still in its file, logged
        # again by the resumed one, and TensorBoard's reader keeps one of each
        relogged += len(_raw_steps(folder, "loss/train")) - len(steps)
    assert relogged > 0


def test_wandb_offline_writes_a_run_folder_per_run(tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "s"
    cfg = load_config(_config(tmp_path, "{wandb: {project: chinchilla-test}}"))
    run_sweep(cfg, out, live=False)
    ids = set(pd.read_parquet(out / "runs.parquet")["run_id"])
    folders = [p.name for p in (out / "wandb" / "wandb").glob("offline-run-*")]
    assert {f.rsplit("-", 1)[-1] for f in folders} == ids
    for f in (out / "wandb" / "wandb").glob("offline-run-*"):
        assert list(f.glob("*.wandb"))  # the run's log, for `wandb sync`
    curves = pd.read_parquet(out / "curves.parquet")
    for rid in ids:  # the last step sent, which a resumed run does not send again
        last = int((out / "wandb" / f"{rid}.last_step").read_text())
        assert last == curves[curves.run_id == rid]["step"].max()
    # a resumed run sends only steps past the last one sent
    from chinchilla.grid import plan
    from chinchilla.tracking import Trackers

    run = plan(cfg).runs[0]
    (out / "wandb" / f"{run.run_id}.last_step").write_text("30")
    tr = Trackers(cfg, out, run, start=20)
    sent = []
    tr.items[0].run.log = lambda scalars, step: sent.append(step)
    for step in (25, 30, 35):
        tr.log(step, {"loss/train": 1.0})
    tr.close()
    assert sent == [35]


def test_a_failing_tracker_warns_and_the_run_goes_on(tmp_path, capfd):
    out = tmp_path / "s"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the tracker's folder belongs")
    run_sweep(load_config(_config(tmp_path, "{tensorboard: true}")), out, live=False)
    runs = pd.read_parquet(out / "runs.parquet")
    assert (runs["status"] == "ok").all() and len(runs) == 4
    err = capfd.readouterr().err
    assert "warning: tensorboard tracking failed" in err and "trains on without it" in err


def test_with_tracking_off_neither_package_is_imported(tmp_path):
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO_YAML)
    code = (
        "import sys; from pathlib import Path; from chinchilla.config import load_config; "
        "from chinchilla.sweep import run_sweep; "
        f"run_sweep(load_config({str(cfg)!r}), Path({str(tmp_path / 's')!r}), live=False, "
        "workers=1); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'wandb') "
        "or m.startswith('torch.utils.tensorboard')]; print('IMPORTED', bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout
