"""Many runs: train every planned run not yet finished in a directory, and resume.

Guarantees, whatever kills the process (SIGKILL included):
- a finished run is never trained again (its part file exists);
- runs.parquet / curves.parquet are rebuilt from the parts, so no row repeats and
  none goes missing;
- an interrupted run resumes from its last checkpoint and continues the same curve;
- a diverged run (NaN/inf loss) is recorded with its partial curve; an exception in a
  run is recorded as failed with its message, and the sweep goes on. Failed runs are
  tried again by the next invocation.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chinchilla import __version__
from chinchilla.config import Config, dump_yaml, from_dict
from chinchilla.errors import UserError
from chinchilla.files import atomic_text
from chinchilla.grid import Plan, PlannedRun, plan
from chinchilla.store import FINISHED, Merger, finished_ids, merge, write_part

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "sweep.json"
CHECKPOINTS = "checkpoints"


@dataclass
class SweepSummary:
    out: Path
    planned: int
    trained: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    step_seconds: float = 0.0
    eval_seconds: float = 0.0
    utilisation: dict[str, float] = field(default_factory=dict)  # busy / wall per worker

    @property
    def overhead_fraction(self) -> float:
        """Share of wall time outside training steps and evaluations."""
        if self.wall_seconds <= 0:
            return math.nan
        return 1 - (self.step_seconds + self.eval_seconds) / self.wall_seconds


def default_out(cfg: Config) -> Path:
    return Path("runs") / cfg.name


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


def check_directory(cfg: Config, out: Path, force: bool) -> None:
    """Refuse a directory that holds a sweep of a different config (unless forced)."""
    path = out / CONFIG_FILE
    if path.exists() and not force:
        try:
            old = from_dict(yaml.safe_load(path.read_text()) or {}, base_dir=cfg.base_dir)
        except (UserError, yaml.YAMLError) as exc:
            raise UserError(
                f"{path} is not a readable sweep config ({exc}); pass --force to overwrite it"
            ) from None
        if old.fingerprint() != cfg.fingerprint():
            changed = _changed_keys(
                old.to_dict(with_execution=False), cfg.to_dict(with_execution=False)
            )
            raise UserError(
                f"{out} holds a sweep of a different config (changed: {', '.join(changed[:5])}); "
                "use another --out, or pass --force to add these runs to it"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(path, dump_yaml(cfg))


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _changed_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def run_record(run: PlannedRun, result, env: dict[str, Any]) -> dict[str, Any]:
    """The runs.parquet row of one run: planned columns, outcome, provenance."""
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
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        | env
    )


def sweep_environment(cfg: Config, device: str, irreducible: float | None) -> dict[str, Any]:
    import torch

    from chinchilla.train import device_name

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


def prepare(cfg: Config, out: Path, force: bool = False) -> tuple[Plan, list[PlannedRun]]:
    """Plan, claim the directory, recover from a crash, and list runs still to train."""
    p = plan(cfg)
    check_directory(cfg, out, force)
    merge(out)  # a crash between a part and the merge leaves the tables behind
    done = {i for i, s in finished_ids(out).items() if s in FINISHED}
    pending = [r for r in p.runs if r.run_id not in done]
    return p, pending


class Tally:
    """Seconds in training steps and evaluations, and busy time per worker, of the runs
    one sweep invocation trains (resumed runs count only their new segment)."""

    def __init__(self) -> None:
        self.step_seconds = self.eval_seconds = 0.0
        self.busy: dict[str, float] = {}
        self._wall0 = time.perf_counter()

    def add(self, worker: str, seconds: tuple[float, float]) -> None:
        step, evals = seconds
        self.step_seconds += step
        self.eval_seconds += evals
        self.busy[worker] = self.busy.get(worker, 0.0) + step + evals

    def result(self) -> tuple[float, float, dict[str, float]]:
        """(step seconds, eval seconds, busy / wall per worker)."""
        wall = max(time.perf_counter() - self._wall0, 1e-9)
        return (
            self.step_seconds,
            self.eval_seconds,
            {k: v / wall for k, v in sorted(self.busy.items())},
        )


def tokens_needed(runs: list[PlannedRun]) -> int:
    """Training tokens of the longest run: what a generated source must provide."""
    return max((r.n_tokens for r in runs), default=0)


def load_sweep_data(cfg: Config, out: Path, runs: list[PlannedRun]):
    from chinchilla.data import load_data

    need = tokens_needed(runs)
    data = load_data(cfg, out / "data", min_train_tokens=need)
    data.check_eval(cfg.train.eval_tokens)
    import sys

    print(
        f"data ({cfg.data.kind}): {data.train_tokens:,} training and "
        f"{data.n_val_chunks * data.seq_len:,} validation tokens in chunks of "
        f"{data.chunk}, vocabulary {data.vocab_size:,}",
        file=sys.stderr,
    )
    if need > data.train_tokens:
        print(
            f"warning: the largest run trains on {need:,} tokens, "
            f"{need / data.train_tokens:.1f} epochs of the training split; repeated data "
            "bends scaling laws (Muennighoff et al. 2023)",
            file=sys.stderr,
        )
    return data


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

    Returns the run's row, its curve and the (step, eval) seconds this call spent;
    an exception becomes a failed row with its message (the traceback beside it)."""
    from chinchilla.train import RunResult, train_run

    ckpt_dir = out / CHECKPOINTS
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"{run.run_id}.pt"
    attempts = 1 + cfg.execution.retries
    for attempt in range(attempts):  # noqa: B007 (the count is recorded)
        try:
            result = train_run(
                run, cfg, data, device=device, checkpoint=ckpt, peak=peak, on_progress=on_progress
            )
            break
        except Exception as exc:  # recorded as failed, the sweep goes on
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            result = RunResult(run_id=run.run_id, status="failed", error=message)
            (out / "parts").mkdir(parents=True, exist_ok=True)
            atomic_text(out / "parts" / f"{run.run_id}.traceback.txt", traceback.format_exc())
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()
    row = run_record(run, result, env) | {"attempts": attempt + 1} | (extra or {})
    return row, result.curve, result.segment_seconds


def record(out: Path, row: dict[str, Any], curve: list[dict[str, Any]]) -> None:
    """Write a run's part; a run that did not fail no longer needs its checkpoint."""
    write_part(out, row, curve)
    if row["status"] != "failed":
        (out / CHECKPOINTS / f"{row['run_id']}.pt").unlink(missing_ok=True)


def train_and_record(run: PlannedRun, cfg: Config, out: Path, data, **kwargs):
    """`attempt_run`, then `record`; returns the row and this call's (step, eval) seconds."""
    row, curve, seconds = attempt_run(run, cfg, out, data, **kwargs)
    record(out, row, curve)
    return row, seconds


def run_sweep(
    cfg: Config,
    out: Path,
    *,
    force: bool = False,
    live: bool | None = None,
    workers: int | None = None,
    executor: str | None = None,
    address: str | None = None,
) -> SweepSummary:
    """Train every planned run of `cfg` not finished in `out`; return what happened."""
    wall0 = time.perf_counter()
    p, pending = prepare(cfg, out, force)
    summary = SweepSummary(out=out, planned=len(p.runs))
    workers = workers or cfg.execution.workers
    executor = executor or cfg.execution.executor
    if pending:
        if executor == "ray":
            from chinchilla.executors import run_ray

            stats = run_ray(
                cfg, out, p, pending, address=address or cfg.execution.address, live=live
            )
        elif workers > 1:
            from chinchilla.executors import run_local_parallel

            stats = run_local_parallel(cfg, out, p, pending, workers=workers, live=live)
        else:
            stats = _run_serial(cfg, out, p, pending, live=live)
        summary.trained = len(pending)
        summary.step_seconds, summary.eval_seconds, summary.utilisation = stats
    runs = merge(out)
    if len(runs):
        summary.statuses = runs["status"].value_counts().to_dict()
    summary.wall_seconds = time.perf_counter() - wall0
    atomic_text(
        out / SUMMARY_FILE,
        json.dumps(
            {
                "planned": summary.planned,
                "trained_this_invocation": summary.trained,
                "statuses": summary.statuses,
                "wall_seconds": summary.wall_seconds,
                "step_seconds": summary.step_seconds,
                "eval_seconds": summary.eval_seconds,
                "overhead_fraction": summary.overhead_fraction,
                "workers": workers,
                "executor": executor,
                "device_utilisation": summary.utilisation,
                "pid": os.getpid(),
            },
            indent=1,
        ),
    )
    return summary


def _run_serial(
    cfg: Config, out: Path, p: Plan, pending: list[PlannedRun], live: bool | None
) -> tuple[float, float, dict[str, float]]:
    import torch

    from chinchilla.data.synthetic import irreducible_loss
    from chinchilla.progress import SweepProgress
    from chinchilla.train import peak_flops, resolve_device

    if cfg.device.threads:
        torch.set_num_threads(cfg.device.threads)
    device = resolve_device(cfg)
    data = load_sweep_data(cfg, out, p.runs)
    env = sweep_environment(cfg, device, irreducible_loss(data, cfg.train.eval_tokens))
    peak = peak_flops(cfg, device)
    tally = Tally()
    merge_soon = Merger(out)
    with SweepProgress(
        len(p.runs), len(p.runs) - len(pending), sum(r.flops_chinchilla for r in pending), live=live
    ) as prog:
        for run in pending:
            prog.run_started(run)
            row, seconds = train_and_record(
                run,
                cfg,
                out,
                data,
                device=device,
                peak=peak,
                env=env,
                on_progress=prog.update,
                extra={"worker": "main"},
            )
            tally.add("main", seconds)
            merge_soon()
            prog.run_finished(run, row)
    return tally.result()


def status(out: Path) -> dict[str, Any]:
    """What a sweep directory holds: planned runs by status, with who holds which."""
    path = out / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{out} is not a sweep directory (no {CONFIG_FILE})")
    try:
        cfg = from_dict(yaml.safe_load(path.read_text()) or {}, base_dir=".")
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from None
    p = plan(cfg)
    statuses = finished_ids(out)
    ckpts = (
        {c.stem for c in (out / CHECKPOINTS).glob("*.pt")}
        if (out / CHECKPOINTS).is_dir()
        else set()
    )
    claims = _claims(out)
    rows = []
    for r in p.runs:
        s = statuses.get(r.run_id)
        if s is None:
            s = (
                "running"
                if r.run_id in claims
                else ("interrupted" if r.run_id in ckpts else "pending")
            )
        rows.append(
            {
                "run_id": r.run_id,
                "status": s,
                "budget": r.budget,
                "n_params": r.n_params,
                "n_tokens": r.n_tokens,
                "worker": claims.get(r.run_id),
            }
        )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"out": str(out), "name": cfg.name, "planned": len(rows), "counts": counts, "runs": rows}


def _claims(out: Path) -> dict[str, str]:
    """run_id -> worker of runs that a live worker announced it is training."""
    path = out / "inflight.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
