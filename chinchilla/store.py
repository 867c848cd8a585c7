"""The only parquet I/O: schema, atomic writes, loading.

A sweep directory holds:
- `parts/<run_id>.curve.parquet`, then `parts/<run_id>.run.parquet`: each finished
  run's record, written by whichever process trained it; the run file is written
  last, so its presence means the run is complete;
- `parts/<run_id>.metrics.parquet`, when tasks are configured: the run's task metrics;
- `runs.parquet` (one row per run), `curves.parquet` (one row per logged step) and
  `metrics.parquet` (one row per task metric and scored step), merged from the parts;
  rebuilt at most every 30 s during a sweep (`Merger`), at its end and at the start of
  every sweep, so a crash between the two leaves nothing missing or duplicated.
Every file is written through `chinchilla.files.atomic_write` (temporary file, then
`os.replace`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from chinchilla.errors import UserError
from chinchilla.files import atomic_write
from chinchilla.layout import CORRUPT, CURVES, METRICS, PARTS, RUNS

FINISHED = ("ok", "diverged", "trunk")  # statuses a rerun does not train again

CURVE_COLUMNS = {
    "run_id": "string",
    "step": "int64",
    "tokens": "int64",
    "flops": "float64",
    "train_loss": "float64",
    "eval_loss": "float64",
    "lr": "float64",
}
METRIC_COLUMNS = {
    "run_id": "string",
    "step": "int64",
    "tokens": "int64",
    "task": "string",
    "metric": "string",
    "value": "float64",
}


def atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def _frame(run_id: str, rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[c for c in columns if c != "run_id"])
    df.insert(0, "run_id", run_id)
    return df.astype(columns)


def curve_frame(run_id: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    return _frame(run_id, rows, CURVE_COLUMNS)


def write_part(
    out: Path,
    row: dict[str, Any],
    curve: list[dict[str, Any]],
    metrics: list[dict[str, Any]] | None = None,
) -> None:
    """Record one finished (or failed) run: its curve and task metrics first, then its
    row (whose presence marks the run complete)."""
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    run_id = row["run_id"]
    atomic_parquet(curve_frame(run_id, curve), parts / f"{run_id}.curve.parquet")
    if metrics:
        atomic_parquet(_frame(run_id, metrics, METRIC_COLUMNS), parts / f"{run_id}.metrics.parquet")
    atomic_parquet(pd.DataFrame([row]), parts / f"{run_id}.run.parquet")


def _part_ids(out: Path) -> list[str]:
    parts = out / PARTS
    if not parts.is_dir():
        return []
    return sorted(p.name[: -len(".run.parquet")] for p in parts.glob("*.run.parquet"))


def _read_run_parts(out: Path, run_id: str, set_aside: bool) -> dict[str, pd.DataFrame] | None:
    """A recorded run's run, curve and metrics frames; None when any is unreadable (its
    parts are then set aside when `set_aside`, else passed over with a warning)."""
    parts = out / PARTS
    frames = {}
    try:
        for kind in ("run", "curve", "metrics"):
            path = parts / f"{run_id}.{kind}.parquet"
            if kind == "run" or path.exists():
                frames[kind] = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        what = f"{parts / run_id}.*.parquet is not readable ({type(exc).__name__})"
        if set_aside:
            _set_aside(what, out, run_id)
        else:
            print(f"warning: {what}; run {run_id} left out", file=sys.stderr)
        return None
    return frames


def _set_aside(what: str, out: Path, run_id: str) -> None:
    """Move a run's parts to parts/corrupt/, saying so."""
    print(
        f"warning: {what}; set aside in {out / CORRUPT}, run {run_id} trains again at the "
        "next sweep",
        file=sys.stderr,
    )
    aside = out / CORRUPT
    aside.mkdir(parents=True, exist_ok=True)
    for path in (out / PARTS).glob(f"{run_id}.*"):
        path.replace(aside / path.name)


def tables_from_parts(out: Path, set_aside: bool = False) -> dict[str, pd.DataFrame]:
    """The runs, curves and metrics tables of every readable recorded run, built from the
    parts in memory (keys: RUNS, CURVES, METRICS)."""
    read = [f for f in (_read_run_parts(out, i, set_aside) for i in _part_ids(out)) if f]
    runs = [f["run"] for f in read]
    runs_df = pd.concat(runs, ignore_index=True) if runs else pd.DataFrame()

    def gather(kind: str, columns: dict[str, str]) -> pd.DataFrame:
        frames = [f[kind] for f in read if kind in f]
        return pd.concat(frames, ignore_index=True) if frames else _frame("", [], columns)

    if len(runs_df):
        runs_df = runs_df.sort_values(["budget", "n_params", "n_tokens"], kind="stable")
        runs_df = runs_df.reset_index(drop=True)
    return {
        RUNS: runs_df,
        CURVES: gather("curve", CURVE_COLUMNS),
        METRICS: gather("metrics", METRIC_COLUMNS),
    }


def merge(out: Path) -> pd.DataFrame:
    """Rebuild runs.parquet, curves.parquet and (with tasks) metrics.parquet from the
    parts; return the runs. A run whose parts cannot be read (a disk fault, a copy cut
    short) has them set aside in parts/corrupt/ with a warning naming it, so that the
    next sweep trains it again; the tables hold every readable run."""
    tables = tables_from_parts(out, set_aside=True)
    atomic_parquet(tables[RUNS], out / RUNS)
    atomic_parquet(tables[CURVES], out / CURVES)
    if len(tables[METRICS]) or (out / METRICS).exists():
        atomic_parquet(tables[METRICS], out / METRICS)
    return tables[RUNS]


def load_table(out: Path, name: str) -> pd.DataFrame:
    """A merged table of a sweep directory (RUNS, CURVES or METRICS). An unreadable one
    (a disk fault, a copy cut short) is rebuilt in memory from the parts, with a warning
    (the next sweep rewrites it); reading commands never write to the directory."""
    out = Path(out)
    try:
        return pd.read_parquet(out / name)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises several types for a broken file
        if not _part_ids(out):
            raise UserError(
                f"{out / name} is not readable ({type(exc).__name__}) and {out} has no "
                "parts to rebuild it from; rerun the sweep, or restore the file"
            ) from None
        print(
            f"warning: {out / name} is not readable ({type(exc).__name__}); read from "
            f"the runs' parts instead (the next sweep rewrites it)",
            file=sys.stderr,
        )
        return tables_from_parts(out)[name]


def ok_losses(out: Path, run_ids: set[str]) -> dict[str, float]:
    """Final losses of the runs among `run_ids` recorded ok (tables rebuilt first)."""
    table = merge(out)
    if not len(table):
        return {}
    ok = table[(table["status"] == "ok") & table["run_id"].isin(run_ids)]
    return dict(zip(ok["run_id"], ok["loss"].astype(float), strict=True))


class Merger:
    """Rebuild the tables at most every `interval_s` while a sweep runs (the parts are
    the record; the sweep merges once more at its end), so that sweeps of many short
    runs do not spend their time re-reading parquet files."""

    def __init__(self, out: Path, interval_s: float = 30.0):
        self.out, self.interval_s, self._last = out, interval_s, time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._last >= self.interval_s:
            merge(self.out)
            self._last = time.perf_counter()


def finished_ids(out: Path) -> dict[str, str]:
    """run_id -> status of every recorded run (failed ones included); an unreadable
    part is passed over with a warning (the next sweep's merge sets it aside)."""
    parts = out / PARTS
    statuses = {}
    for i in _part_ids(out):
        try:
            df = pd.read_parquet(parts / f"{i}.run.parquet", columns=["status"])
        except Exception as exc:  # pyarrow raises several types for a broken file
            print(
                f"warning: {parts / i}.run.parquet is not readable ({type(exc).__name__}); "
                f"run {i} counts as not recorded",
                file=sys.stderr,
            )
            continue
        statuses[i] = str(df["status"].iloc[0])
    return statuses


def done_ids(out: Path) -> set[str]:
    """Ids of the runs recorded with a finished status (FINISHED: not to be trained again)."""
    return {i for i, s in finished_ids(out).items() if s in FINISHED}


def load_runs(out: Path) -> pd.DataFrame:
    return load_table(out, RUNS)


def load_curves(out: Path) -> pd.DataFrame:
    return load_table(out, CURVES)


def load_metrics(out: Path) -> pd.DataFrame:
    return load_table(out, METRICS)
