"""One run inside a sweep: train it (with retries), record it, and tally its time.

Below both `sweep` (the driver) and `executors` (worker processes, Ray tasks): the
arrows point sweep -> executors -> runs -> train.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from chinchilla import __version__, layout
from chinchilla.config import Config
from chinchilla.device import device_name
from chinchilla.errors import is_environment_fault
from chinchilla.files import atomic_text
from chinchilla.grid import PlannedRun
from chinchilla.layout import branch_checkpoint, run_checkpoint
from chinchilla.store import write_part


def code_version() -> str:
    """git commit of the package (with '-dirty' for local changes), else its version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "."],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{__version__}+g{sha}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__


def run_record(run: PlannedRun, result, env: dict[str, Any]) -> dict[str, Any]:
    """The runs.parquet row of one run: planned columns, outcome, provenance."""
    seed = {} if run.seed is None else {"seed": run.seed}
    return (
        run.row()
        | {
            "status": result.status,
            "loss": result.loss,
            "train_loss": result.train_loss,
            "steps_done": result.steps_done,
            "seconds": result.seconds,
            "step_seconds": result.step_seconds,
            "eval_seconds": result.eval_seconds,
            "warmup_seconds": result.warmup_seconds,
            "micro_batch_size": result.micro_batch_size,
            "oom_backoffs": ",".join(map(str, result.oom_backoffs)),
            "compile_graphs": (result.compile or {}).get("graphs"),
            "recompiles": (result.compile or {}).get("recompiles"),
            "tokens_per_second": result.tokens_per_second,
            "mfu": result.mfu,
            "error": result.error,
            "resumed_from": result.resumed_from,
            "task_seconds": result.task_seconds,
            "loss_by_position": (
                None
                if result.loss_by_position is None
                else ",".join(f"{v:.6g}" for v in result.loss_by_position)
            ),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        | env
        | seed
    )


def failed_record(
    run: PlannedRun, message: str, env: dict[str, Any], attempts: int
) -> dict[str, Any]:
    """The row of a run whose process never returned a result (it died, or its Ray
    task was lost): status failed with the message (one line, 500 characters)."""
    from chinchilla.train import RunResult

    error = message.splitlines()[0][:500] if message else message
    return run_record(run, RunResult(run.run_id, "failed", error=error), env) | {
        "attempts": attempts
    }


def sweep_environment(cfg: Config, device: str, irreducible: float | None) -> dict[str, Any]:
    import torch

    return {
        "device": device_name(device),
        "host": socket.gethostname(),
        "seed": cfg.train.seed,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "n_convention": cfg.grid.n_convention,
        "flops_convention": cfg.grid.flops_convention,
        "irreducible_loss": irreducible,
    }


class Tally:
    """Seconds in training steps (warm-up included) and evaluations, and busy seconds per
    worker, of the runs one sweep invocation trains (resumed runs count only their new
    segment)."""

    def __init__(self) -> None:
        self.step_seconds = self.eval_seconds = 0.0
        self.busy: dict[str, float] = {}

    def add(self, worker: str, seconds: tuple[float, float]) -> None:
        step, evals = seconds
        self.step_seconds += step
        self.eval_seconds += evals
        self.busy[worker] = self.busy.get(worker, 0.0) + step + evals

    def result(self) -> tuple[float, float, dict[str, float]]:
        """(step seconds, eval seconds, busy seconds per worker)."""
        return self.step_seconds, self.eval_seconds, dict(sorted(self.busy.items()))


def tokens_needed(runs: list[PlannedRun]) -> int:
    """Training tokens of the longest run: what a generated source must provide."""
    return max((r.n_tokens for r in runs), default=0)


def load_sweep_data(cfg: Config, out: Path, runs: list[PlannedRun]):
    from chinchilla.data import load_data

    need = tokens_needed(runs)
    data = load_data(
        cfg, out / layout.DATA, min_train_tokens=need, min_val_tokens=cfg.train.eval_tokens
    )
    data.check_eval(cfg.train.eval_tokens)
    attach_tasks(cfg, data)
    if data.meta["tasks"]:
        from chinchilla.tasks import describe

        out.mkdir(parents=True, exist_ok=True)
        atomic_text(out / layout.TASKS, json.dumps(describe(data.meta["tasks"]), indent=1))
    print(
        f"data ({cfg.data.kind}): {data.train_tokens:,} training and "
        f"{data.n_val_chunks * data.seq_len:,} validation tokens in chunks of "
        f"{data.chunk}, vocabulary {data.vocab_size:,}",
        file=sys.stderr,
    )
    if need > data.train_tokens and cfg.data.unique_tokens is not None:
        print(
            f"data.unique_tokens: runs repeat {data.train_tokens:,} unique tokens, up to "
            f"{need / data.train_tokens:.1f} epochs (runs.parquet: unique_tokens, epochs; "
            "fit them with --law data-constrained)",
            file=sys.stderr,
        )
    elif need > data.train_tokens:
        print(
            f"warning: the largest run trains on {need:,} tokens, "
            f"{need / data.train_tokens:.1f} epochs of the training split; repeated data "
            "bends scaling laws (Muennighoff et al. 2023; each run records its epochs)",
            file=sys.stderr,
        )
    return data


def attach_tasks(cfg: Config, data) -> None:
    """Build and check the configured tasks (a bad task file stops the sweep here, before
    any training) and hand them to `train_run` through the data's metadata."""
    from chinchilla.tasks import load_tasks

    data.meta["tasks"] = load_tasks(cfg, data)


def attempt_run(
    run: PlannedRun,
    cfg: Config,
    out: Path,
    data,
    *,
    device: str,
    peak: float | None,
    env: dict[str, Any],
    on_progress=None,
    extra: dict[str, Any] | None = None,
):
    """Train one run (resuming its checkpoint, retrying failures as configured).

    Returns the run's row, its tables ({"curve": rows, "metrics": rows}) and the
    (step, eval) seconds this call spent; an exception becomes a failed row with its
    message (the traceback beside it). A fault of the machine (a full or read-only disk,
    a denied permission: `errors.is_environment_fault`) is raised instead."""
    from chinchilla.train import RunResult, train_run

    ckpt = run_checkpoint(out, run.run_id)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    points = None
    if run.is_trunk:  # branch points of branches not yet recorded
        from chinchilla.store import done_ids

        done = done_ids(out)
        points = {
            s: branch_checkpoint(out, run.run_id, s) for s, b in run.branches if b not in done
        }
    start_from = None if run.trunk is None else branch_checkpoint(out, run.trunk, run.branch_step)
    attempts = 1 + cfg.execution.retries
    for attempt in range(attempts):  # noqa: B007 (the count is recorded)
        try:
            result = train_run(
                run,
                cfg,
                data,
                device=device,
                checkpoint=ckpt,
                peak=peak,
                on_progress=on_progress,
                branch_points=points,
                start_from=start_from,
                track_to=out,
            )
            if run.is_trunk and result.status == "ok":
                result.status = "trunk"  # not a point of the scaling law
            break
        except Exception as exc:  # recorded as failed, the sweep goes on
            if is_environment_fault(exc):
                raise  # a full or read-only disk: every run would fail; the sweep stops
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            result = RunResult(run_id=run.run_id, status="failed", error=message)
            trace = layout.part(out, run.run_id, "traceback")
            trace.parent.mkdir(parents=True, exist_ok=True)
            atomic_text(trace, traceback.format_exc())
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()
    row = run_record(run, result, env) | {"attempts": attempt + 1} | (extra or {})
    return row, {"curve": result.curve, "metrics": result.metrics}, result.segment_seconds


def discard_checkpoints(out: Path, run_id: str, trunk: str | None, branch_step) -> None:
    """What a recorded run no longer needs: its own checkpoint and, a branch, its
    trunk's state at its branch point."""
    run_checkpoint(out, run_id).unlink(missing_ok=True)
    if trunk is not None and branch_step is not None:
        branch_checkpoint(out, trunk, int(branch_step)).unlink(missing_ok=True)


def ready(out: Path, run: PlannedRun) -> bool:
    """Whether a run can start: a branch needs its trunk's checkpoint (or its own)."""
    if run.trunk is None:
        return True
    own = run_checkpoint(out, run.run_id)
    return own.exists() or branch_checkpoint(out, run.trunk, run.branch_step).exists()


def job_order(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Shared trunks first (their branches wait on them), then the largest runs first."""
    return sorted(runs, key=lambda r: (not r.is_trunk, -r.flops_chinchilla * r.trained_fraction))


def take_ready(out: Path, todo) -> PlannedRun | None:
    """Remove and return the first run of the deque `todo` that can start, or None."""
    for i, run in enumerate(todo):
        if ready(out, run):
            del todo[i]
            return run
    return None


def stranded(out: Path, waiting, in_flight: bool) -> list[PlannedRun]:
    """The waiting runs that can never start: all of them when nothing is in flight to
    write a checkpoint and none of them is ready; else none (a run that is ready but
    found no free worker, say while a dead worker is replaced, is not stranded)."""
    if in_flight or any(ready(out, r) for r in waiting):
        return []
    return list(waiting)


def stranded_record(run: PlannedRun, env: dict[str, Any]) -> dict[str, Any]:
    """The failed row of a branch whose trunk left no checkpoint for it."""
    return failed_record(
        run,
        f"the checkpoint of trunk {run.trunk} at step {run.branch_step} was never written: "
        "the trunk ended without it (see the trunk's row); rerun the sweep to train the "
        "trunk again",
        env,
        0,
    )


def record(out: Path, row: dict[str, Any], tables: dict[str, list]) -> None:
    """Write a run's part; a run that did not fail no longer needs its checkpoint (nor,
    a branch, its trunk's checkpoint at its branch point)."""
    write_part(out, row, tables.get("curve", []), tables.get("metrics"))
    if row["status"] != "failed":
        discard_checkpoints(out, row["run_id"], row.get("trunk"), row.get("branch_step"))


def train_and_record(run: PlannedRun, cfg: Config, out: Path, data, **kwargs):
    """`attempt_run`, then `record`; returns the row and this call's (step, eval) seconds."""
    row, tables, seconds = attempt_run(run, cfg, out, data, **kwargs)
    record(out, row, tables)
    return row, seconds
