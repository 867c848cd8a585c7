"""The sweep loop, written once: which run goes next, when a branch may start, what a
lost run costs, who holds what, the time tally, the merged tables and the progress.

Where a run trains is a backend's business (`chinchilla.executors`: in this process,
in worker processes, as Ray tasks). The driver talks to it through five calls:

- `free()`: how many more runs it takes now;
- `submit(run)`: train this run;
- `wait(timeout)`: let time pass, delivering events through the `emit` callback the
  backend was opened with;
- `open(emit)` and `close()`, around the loop (close also runs after an exception).

Events are dicts with `event` and `run_id`: `start` (`worker`: who trains it; `label`:
how the progress line names it), `progress` (the run's latest step), `finished`
(`row`; `tables` when the driver must write the run's part, None when the backend wrote
it; `seconds`, `worker`) and `lost` (the run's process or task died: `message` for its
failed row, `reason` for the retry line, `worker`). A lost run is tried again from its checkpoint up to `execution.retries`
times, then recorded as failed with the backend's `env`.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from chinchilla.config import Config
from chinchilla.files import atomic_text
from chinchilla.grid import Plan, PlannedRun
from chinchilla.layout import INFLIGHT
from chinchilla.progress import SweepProgress
from chinchilla.runs import (
    Tally,
    failed_record,
    job_order,
    record,
    stranded,
    stranded_record,
    take_ready,
)
from chinchilla.store import Merger, write_part

Emit = Callable[[dict[str, Any]], None]


class Backend(Protocol):
    env: dict[str, Any]  # provenance columns of a row the backend could not report

    def open(self, emit: Emit) -> None: ...

    def free(self) -> int: ...

    def submit(self, run: PlannedRun) -> None: ...

    def wait(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Claims:
    """`inflight.json` (`layout.INFLIGHT`): which worker holds which run, rewritten on
    every change; `layout.claims` reads it."""

    def __init__(self, out: Path):
        self.path = out / INFLIGHT
        self.held: dict[str, str] = {}

    def set(self, run_id: str, worker: str) -> None:
        self.held[run_id] = worker
        atomic_text(self.path, json.dumps(self.held))

    def drop(self, run_id: str) -> None:
        if self.held.pop(run_id, None) is not None:
            atomic_text(self.path, json.dumps(self.held))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def drive(
    cfg: Config,
    out: Path,
    p: Plan,
    pending: list[PlannedRun],
    backend: Backend,
    live: bool | None,
) -> tuple[float, float, dict[str, float]]:
    """Train `pending` (runs of `p`) on `backend`; returns the tally (step seconds, eval
    seconds, busy seconds per worker)."""
    todo = deque(job_order(pending))  # shared trunks, then the largest first
    held: dict[str, PlannedRun] = {}
    deaths: dict[str, int] = {}
    claims = Claims(out)
    tally = Tally()
    merge_soon = Merger(out)
    flops = sum(r.flops_chinchilla for r in pending)
    with SweepProgress(len(p.runs), len(p.runs) - len(pending), flops, live=live) as prog:

        def finish(run: PlannedRun, row: dict[str, Any], seconds, worker: str) -> None:
            held.pop(run.run_id, None)
            tally.add(worker, seconds)
            claims.drop(run.run_id)
            merge_soon()
            prog.run_finished(run, row)

        def lost(run: PlannedRun, ev: dict[str, Any]) -> None:
            worker = ev.get("worker") or claims.held.get(run.run_id, "?")
            held.pop(run.run_id, None)
            claims.drop(run.run_id)
            deaths[run.run_id] = deaths.get(run.run_id, 0) + 1
            if deaths[run.run_id] <= cfg.execution.retries:
                prog.note(
                    f"lost  {run.run_id}: {ev.get('reason', ev['message'])}; retry "
                    f"{deaths[run.run_id]} of {cfg.execution.retries}, from its checkpoint"
                )
                todo.appendleft(run)
                return
            row = failed_record(run, ev["message"], backend.env, deaths[run.run_id])
            row["worker"] = worker
            write_part(out, row, [])
            finish(run, row, (0.0, 0.0), worker)

        def emit(ev: dict[str, Any]) -> None:
            run = held.get(ev["run_id"])
            if run is None:
                return
            kind = ev["event"]
            if kind == "start":
                claims.set(run.run_id, ev["worker"])
                prog.run_started(run, label=ev.get("label", ev["worker"]))
            elif kind == "progress":
                prog.update(ev)
            elif kind == "finished":
                if ev.get("tables") is not None:
                    record(out, ev["row"], ev["tables"])
                finish(run, ev["row"], ev["seconds"], ev["worker"])
            elif kind == "lost":
                lost(run, ev)

        backend.open(emit)
        try:
            while todo or held:
                while backend.free() > 0 and todo:  # a branch waits for its trunk
                    run = take_ready(out, todo)
                    if run is None:
                        break
                    held[run.run_id] = run
                    backend.submit(run)
                waiting = stranded(out, todo, bool(held))
                if waiting:  # branches whose trunk ended without their checkpoint
                    for run in waiting:
                        row = stranded_record(run, backend.env)
                        write_part(out, row, [])
                        prog.run_finished(run, row)
                    break
                backend.wait(0.2)
        finally:
            backend.close()
            claims.clear()
    return tally.result()
