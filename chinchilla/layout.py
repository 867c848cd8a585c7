"""A sweep directory's layout: the one place that names its files.

    config.yaml         the resolved config the sweep ran (`sweep.check_directory`)
    .lock               held by the sweep that owns the directory (`lock.SweepLock`)
    data/               generated or tokenized data, memory-mapped by every run
    parts/<id>.run.parquet, .curve.parquet, .metrics.parquet, .traceback.txt
                        each finished run's record, written by whoever trained it
    runs.parquet, curves.parquet, metrics.parquet
                        merged from the parts (`store.merge`)
    checkpoints/<id>.pt, checkpoints/<trunk>@<step>.pt
                        resumable states, and shared trunks' branch points
    inflight.json       run id -> worker, while a sweep runs (`driver.Claims`)
    sweep.json          the last invocation's summary (time, utilisation)
    tasks.json          the downstream tasks scored
    fit.json, predictions.csv, hparams.json, figures
                        what `fit` and `tune` write beside the runs

Imports neither torch nor pandas: `fit` reads sweeps through it too.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG = "config.yaml"
LOCK = ".lock"
DATA = "data"
PARTS = "parts"
CORRUPT = "parts/corrupt"  # unreadable parts set aside by `store.merge`; their runs retrain
RUNS = "runs.parquet"
CURVES = "curves.parquet"
METRICS = "metrics.parquet"
CHECKPOINTS = "checkpoints"
INFLIGHT = "inflight.json"
SUMMARY = "sweep.json"
TASKS = "tasks.json"
FIT = "fit.json"
HPARAMS = "hparams.json"


def part(out: Path, run_id: str, kind: str) -> Path:
    """A run's part file: kind run, curve or metrics (parquet), or traceback (text)."""
    suffix = "txt" if kind == "traceback" else "parquet"
    return Path(out) / PARTS / f"{run_id}.{kind}.{suffix}"


def run_checkpoint(out: Path, run_id: str) -> Path:
    """A run's own checkpoint, kept until the run is recorded."""
    return Path(out) / CHECKPOINTS / f"{run_id}.pt"


def branch_checkpoint(out: Path, trunk: str, step: int) -> Path:
    """A shared trunk's state at a branch point, kept until its branch is recorded."""
    return Path(out) / CHECKPOINTS / f"{trunk}@{step}.pt"


def checkpoint_stems(out: Path) -> set[str]:
    """Names of the checkpoints present (run ids, and trunk@step for branch points)."""
    folder = Path(out) / CHECKPOINTS
    return {c.stem for c in folder.glob("*.pt")} if folder.is_dir() else set()


def has_trained(out: Path) -> bool:
    """Whether any run finished, failed or left a checkpoint in the directory."""
    out = Path(out)
    return any((out / PARTS).glob("*.parquet")) or any((out / CHECKPOINTS).glob("*.pt"))


def claims(out: Path) -> dict[str, str]:
    """run_id -> worker of the runs a live sweep announced it is training."""
    return read_json(out, INFLIGHT)


def read_json(out: Path, name: str):
    """A JSON file of the directory (sweep.json, tasks.json), {} when absent or unreadable."""
    path = Path(out) / name
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
