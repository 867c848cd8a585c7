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

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chinchilla import layout
from chinchilla.adaptive import run_adaptive, run_adaptive_tuning
from chinchilla.config import Config, dump_yaml, from_dict
from chinchilla.data.synthetic import irreducible_loss
from chinchilla.device import resolve_device
from chinchilla.driver import drive
from chinchilla.errors import UserError
from chinchilla.executors import backend_for
from chinchilla.files import atomic_text, remove_stale_temps
from chinchilla.grid import Plan, PlannedRun, plan
from chinchilla.lock import SweepLock, in_use
from chinchilla.runs import (
    discard_checkpoints,
    load_sweep_data,
    tokens_needed,
)
from chinchilla.store import done_ids, finished_ids, load_runs, merge, ok_losses

CONFIG_FILE = layout.CONFIG
CONFIG_DIR_KEY = "config_dir"  # in CONFIG_FILE: the folder of the config it copies
SUMMARY_FILE = layout.SUMMARY


@dataclass
class SweepSummary:
    out: Path
    planned: int
    trained: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    step_seconds: float = 0.0
    eval_seconds: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)  # busy seconds per worker

    @property
    def utilisation(self) -> dict[str, float]:
        """Per worker: seconds in training steps and evaluations over the sweep's wall
        time (start-up, data building and merging included)."""
        wall = max(self.wall_seconds, 1e-9)
        return {k: v / wall for k, v in self.busy.items()}

    @property
    def overhead_fraction(self) -> float:
        """Share of wall time the average worker spent outside training steps and
        evaluations (serial: the one process)."""
        if self.wall_seconds <= 0 or not self.busy:
            return math.nan
        return 1 - sum(self.utilisation.values()) / len(self.busy)


def default_out(cfg: Config) -> Path:
    return Path("runs") / cfg.name


def check_directory(cfg: Config, out: Path, force: bool) -> None:
    """Refuse a directory that holds a sweep of a different config (unless forced)."""
    path = out / CONFIG_FILE
    if path.exists() and not force:
        try:
            old = from_dict(_read_saved(path)[0], base_dir=cfg.base_dir)
        except (UserError, yaml.YAMLError) as exc:
            raise UserError(
                f"{path} is not a readable sweep config ({exc}); pass --force to overwrite it"
            ) from None
        if old.fingerprint() != cfg.fingerprint() and _has_trained(out):
            changed = _changed_keys(
                old.to_dict(with_execution=False), cfg.to_dict(with_execution=False)
            )
            raise UserError(
                f"{out} holds a sweep of a different config (changed: {', '.join(changed[:5])}); "
                "use another --out, or pass --force to add these runs to it"
            )
    out.mkdir(parents=True, exist_ok=True)
    # where the config's relative paths (shapes_file, data.path, tasks.file, ...) start:
    # `verify`, `status` and resumes read this copy from any working directory
    base = yaml.safe_dump({CONFIG_DIR_KEY: str(Path(cfg.base_dir).resolve())})
    atomic_text(path, dump_yaml(cfg) + base)


def _read_saved(path: Path) -> tuple[dict, str]:
    """A sweep directory's config.yaml: (the config, the folder its relative paths start
    from; "." for directories written before it was recorded)."""
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a mapping of config sections")
    base = raw.pop(CONFIG_DIR_KEY, ".")
    return raw, str(base)


def _has_trained(out: Path) -> bool:
    """Whether any run of the directory's sweep finished, failed or left a checkpoint: a
    start that stopped before training (bad data, a typo) does not bind the directory."""
    return layout.has_trained(out)


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _changed_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def prepare(cfg: Config, out: Path, p: Plan, force: bool = False) -> list[PlannedRun]:
    """Claim the directory for plan `p`, recover from a crash, and list runs still to
    train."""
    check_directory(cfg, out, force)
    merge(out)  # a crash between a part and the merge leaves the tables behind
    done = done_ids(out)
    remove_finished_checkpoints(out, p.runs, done)
    return [r for r in p.runs if r.run_id not in done]


def remove_finished_checkpoints(out: Path, runs: list[PlannedRun], done: set[str]) -> None:
    """A sweep killed between recording a run and removing its checkpoints leaves them
    behind: the run's own, and a branch's trunk state at its branch point."""
    for r in runs:
        if r.run_id in done:
            discard_checkpoints(out, r.run_id, r.trunk, r.branch_step)


def run_sweep(
    cfg: Config,
    out: Path,
    *,
    force: bool = False,
    live: bool | None = None,
    workers: int | None = None,
    executor: str | None = None,
    address: str | None = None,
    runs: list[PlannedRun] | None = None,
) -> SweepSummary:
    """Train every planned run of `cfg` not finished in `out`; return what happened.
    The directory is locked for the whole sweep: a second sweep on it stops with exit
    code 2 naming the holder."""
    # planned once per sweep; a config error stops here, before the directory is touched
    p = plan(cfg) if runs is None else Plan(config=cfg, runs=list(runs))
    existed = out.exists()
    if existed and not out.is_dir():
        raise UserError(f"--out {out} is a file; sweeps write a folder there")
    before = set(out.rglob("*")) if existed else set()
    lock = SweepLock(out)
    try:
        with lock:
            remove_stale_temps(out)  # no writer of this directory is alive now
            return _run_locked(cfg, out, p, force, live, workers, executor, address, runs)
    except (UserError, OSError) as exc:
        # a failed start (bad input, a full or read-only disk) leaves nothing behind that
        # the corrected command would trip over; what was trained stays for the resume
        try:
            if not _trained_since(out, before):
                _remove_new(out, before, keep=lock.path)
                lock.path.unlink(missing_ok=True)
                if not existed:
                    shutil.rmtree(out, ignore_errors=True)
        except OSError:  # the same fault may stop the clean-up: the first error tells
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # say where it happened
            raise OSError(exc.errno, exc.strerror, str(out)) from None
        raise


def _trained_since(out: Path, before: set[Path]) -> bool:
    """Whether this invocation recorded a run or wrote a checkpoint."""
    made = list((out / layout.PARTS).glob("*.parquet"))
    made += list((out / layout.CHECKPOINTS).glob("*.pt"))
    return any(p not in before for p in made)


def _remove_new(out: Path, before: set[Path], keep: Path) -> None:
    """Remove what this invocation created under `out` (files, then empty folders)."""
    new = [p for p in out.rglob("*") if p not in before and p != keep]
    for p in sorted(new, key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def prepare_data(cfg: Config, out: Path) -> dict[str, Any]:
    """Build the configured data as a sweep would (tokenizer, token files, synthetic
    data; nothing is trained) and say what was built."""
    p = plan(cfg)
    with SweepLock(out):
        t0 = time.perf_counter()
        data = load_sweep_data(cfg, out, p.runs)
        seconds = time.perf_counter() - t0
    meta = {k: v for k, v in data.meta.items() if k != "val_nll"}
    largest = max(r.n_tokens for r in p.runs)
    info = {
        "kind": cfg.data.kind,
        "cache": meta.get("cache"),
        "vocab_size": data.vocab_size,
        "train_tokens": data.train_tokens,
        "val_tokens": data.n_val_chunks * data.seq_len,
        "train_documents": meta.get("train_documents", meta.get("train_docs")),
        "val_documents": meta.get("val_documents", meta.get("val_docs")),
        "largest_run_tokens": largest,
        "largest_run_epochs": largest / max(data.train_tokens, 1),
        "seconds": seconds,
        "notes": meta.get("notes"),
    }
    if meta.get("tokenize_seconds"):
        info["tokenize_mb_per_s"] = meta["text_bytes"] / 1e6 / meta["tokenize_seconds"]
        info["tokenize_workers"] = meta.get("tokenize_workers")
    return info


def resolve_workers(cfg: Config, requested: int | None) -> tuple[int, str]:
    """Worker processes of a local sweep, and why: --workers, else execution.workers,
    else (auto) every visible GPU x runs_per_gpu on CUDA, one on CPU."""
    if requested:
        return requested, "--workers"
    if cfg.execution.workers != "auto":
        return int(cfg.execution.workers), "execution.workers"
    import torch

    if resolve_device(cfg) == "cuda":
        n = torch.cuda.device_count()
        k = cfg.execution.runs_per_gpu
        return max(1, n * k), f"{n} visible GPU(s) x {k} run(s) per GPU"
    return 1, "CPU"


def with_token_pool(q: Plan, todo: list[PlannedRun], available: int):
    """The runs with the unique tokens the loaded training split allows: a corpus smaller
    than a run (or than data.unique_tokens) repeats, and each run records it."""
    if not any(r.n_tokens > available for r in q.runs):
        return q, todo

    def pooled(r: PlannedRun) -> PlannedRun:
        return dataclasses.replace(r, token_pool=min(r.token_pool or available, available))

    return dataclasses.replace(q, runs=[pooled(r) for r in q.runs]), [pooled(r) for r in todo]


def _run_locked(cfg, out, p, force, live, workers, executor, address, runs) -> SweepSummary:
    wall0 = time.perf_counter()
    executor = executor or cfg.execution.executor
    if executor == "local":
        resolve_device(cfg)  # device.type: cuda without a GPU stops here, before any file
    pending = prepare(cfg, out, p, force)
    summary = SweepSummary(out=out, planned=len(p.runs))
    workers, why = resolve_workers(cfg, workers) if executor == "local" else (0, "ray")

    def execute(q: Plan, todo: list[PlannedRun]) -> None:
        """Train `todo` (runs of `q`) with the chosen backend; add up the time."""
        if not todo:
            return
        data = load_sweep_data(cfg, out, q.runs)  # the cache, built once, before any worker
        q, todo = with_token_pool(q, todo, data.train_tokens)
        backend = backend_for(
            cfg,
            out,
            executor=executor,
            workers=workers,
            address=address or cfg.execution.address,
            data=data,
            need=tokens_needed(q.runs),
            irreducible=irreducible_loss(data, cfg.train.eval_tokens),
        )
        stats = drive(cfg, out, q, todo, backend, live)
        summary.trained += len(todo)
        summary.step_seconds += stats[0]
        summary.eval_seconds += stats[1]
        for k, v in stats[2].items():
            summary.busy[k] = summary.busy.get(k, 0.0) + v

    if cfg.grid.adaptive and runs is None:

        def train(runs: list[PlannedRun]) -> None:
            done = done_ids(out)
            execute(Plan(config=cfg, runs=runs), [r for r in runs if r.run_id not in done])

        def losses(runs: list[PlannedRun]) -> dict[str, float]:
            return ok_losses(out, {r.run_id for r in runs})

        adapt = run_adaptive_tuning if cfg.grid.kind == "hparams" else run_adaptive
        summary.planned = len(adapt(cfg, train, losses))
    else:
        execute(p, pending)
    # A trunk resumed from a checkpoint before one of its branch points writes that point
    # again when its branch was not yet recorded as the trunk restarted; if the branch,
    # resumed from its own checkpoint on another worker, is recorded before the trunk
    # gets there, nothing reads or removes that point. Every run has ended here.
    remove_finished_checkpoints(out, p.runs, done_ids(out))
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
                "workers_from": why,
                "executor": executor,
                "device_utilisation": summary.utilisation,
                "pid": os.getpid(),
            },
            indent=1,
        ),
    )
    return summary


def sweep_config(out: Path) -> Config:
    """The config a sweep directory was run with."""
    path = out / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{out} is not a sweep directory (no {CONFIG_FILE})")
    try:
        raw, base = _read_saved(path)
        return from_dict(raw, base_dir=base)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML ({exc})") from None


def status(out: Path) -> dict[str, Any]:
    """What a sweep directory holds: planned runs by status, with who holds which."""
    cfg = sweep_config(out)
    p = plan(cfg)
    statuses = finished_ids(out)
    ckpts = layout.checkpoint_stems(out)
    # claims outlive a sweep killed by a signal: with the lock free, nobody is training,
    # and a run claimed (or checkpointed) but not recorded was interrupted
    live = in_use(out)
    claims = layout.claims(out)
    recorded = _recorded(out)
    rows = []
    for r in p.runs:
        s = statuses.get(r.run_id)
        if s is None:
            held = r.run_id in claims
            s = (
                "running"
                if held and live
                else ("interrupted" if held or r.run_id in ckpts else "pending")
            )
        rows.append(
            {
                "run_id": r.run_id,
                "status": s,
                "budget": r.budget,
                "n_params": r.n_params,
                "n_tokens": r.n_tokens,
                "worker": claims.get(r.run_id) if live else None,
                "planned_by": recorded.get(r.run_id, {}).get("planned_by") or r.planned_by,
            }
        )
    planned = {r.run_id for r in p.runs}
    rows += [row for i, row in recorded.items() if i not in planned]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"out": str(out), "name": cfg.name, "planned": len(rows), "counts": counts, "runs": rows}


def _recorded(out: Path) -> dict[str, dict[str, Any]]:
    """Recorded runs by id, from runs.parquet: their planned_by, and for runs the static
    plan does not list (an adaptive sweep's recentred and extended runs) the rest."""
    if not (out / layout.RUNS).exists():
        return {}
    try:
        table = load_runs(out)  # an unreadable table is read from the parts instead
    except (UserError, OSError) as exc:  # unreadable with no parts to read, or gone
        print(f"warning: {exc}", file=sys.stderr)
        return {}
    return {
        r.run_id: {
            "run_id": r.run_id,
            "status": r.status,
            "budget": float(r.budget),
            "n_params": int(r.n_params),
            "n_tokens": int(r.n_tokens),
            "worker": getattr(r, "worker", None),
            "planned_by": getattr(r, "planned_by", None) or "initial",
        }
        for r in table.itertuples()
    }
