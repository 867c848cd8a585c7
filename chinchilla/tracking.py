"""Experiment trackers: TensorBoard and Weights & Biases, both optional (`tracking:`).

Each run logs its scalars to the trackers the config enables: training and validation
loss, learning rate, tokens, throughput, MFU (with a known peak) and task metrics. A
tracker's package is imported only when it is enabled. A tracker that fails (not
installed, a full disk, a bad project) never stops a run: one warning, then the run
trains on without it.

Resumed runs continue their own tracker run without duplicate steps:
- TensorBoard: the writer reopens the run's folder with `purge_step` at the resumed
  step, so readers drop what the killed process logged past its last checkpoint;
- W&B: the run keeps its id (the run id) and resumes; the last step sent is kept beside
  the run folders (wandb/<run_id>.last_step), and steps at or below it are not sent
  again (W&B keeps the first values; a resumed run retrains them from the same state).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


class _Tracker:
    name = "tracker"

    def log(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TensorBoard(_Tracker):
    name = "tensorboard"

    def __init__(self, folder: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        folder.mkdir(parents=True, exist_ok=True)
        # a resumed run: events at or past its first new step, from the process that was
        # killed, are dropped by TensorBoard's readers
        self.writer = SummaryWriter(str(folder), purge_step=start + 1 if start > 0 else None)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb(_Tracker):
    name = "wandb"

    def __init__(self, cfg, out: Path, run, start: int):
        import wandb

        w = cfg.tracking.wandb
        (out / WANDB_DIR).mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(
            project=w.project,
            entity=w.entity,
            mode=w.mode,
            dir=str(out / WANDB_DIR),
            group=cfg.name,
            name=run.run_id,
            id=run.run_id,
            resume="allow",
            config={"run": run.row(), "config": cfg.to_dict(with_execution=False)},
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        # the last step this run sent, in any earlier process (offline runs cannot ask W&B)
        self.mark = out / WANDB_DIR / f"{run.run_id}.last_step"
        try:
            sent = int(self.mark.read_text())
        except (OSError, ValueError):
            sent = 0
        self.last = max(start, sent)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if step <= self.last:
            return
        self.run.log(scalars, step=step)
        self.last = step
        self.mark.write_text(str(step))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The enabled trackers of one run (none: every call returns at once)."""

    def __init__(self, cfg, out: Path | None, run, start: int):
        self.items: list[_Tracker] = []
        t = cfg.tracking
        if out is None or not t.enabled:
            return
        self.run_id = run.run_id
        if t.tensorboard:
            self._open(
                "tensorboard", lambda: _TensorBoard(out / TENSORBOARD_DIR / run.run_id, start)
            )
        if t.wandb is not None:
            self._open("wandb", lambda: _Wandb(cfg, out, run, start))

    def __bool__(self) -> bool:
        return bool(self.items)

    def _warn(self, name: str, exc: BaseException) -> None:
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        print(
            f"warning: {name} tracking failed for run {self.run_id} ({detail}); "
            "the run trains on without it",
            file=sys.stderr,
        )

    def _open(self, name: str, make) -> None:
        try:
            self.items.append(make())
        except Exception as exc:  # ImportError, a bad project, a full disk: never fatal
            self._warn(name, exc)

    def log(self, step: int, scalars: dict[str, Any]) -> None:
        clean = {
            k: float(v)
            for k, v in scalars.items()
            if v is not None and isinstance(v, int | float) and v == v
        }
        for tr in list(self.items):
            try:
                tr.log(step, clean)
            except Exception as exc:
                self._warn(tr.name, exc)
                self.items.remove(tr)

    def close(self) -> None:
        for tr in self.items:
            try:
                tr.close()
            except Exception as exc:
                self._warn(tr.name, exc)
        self.items = []
