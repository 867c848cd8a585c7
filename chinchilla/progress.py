"""Sweep progress: a live Rich display on a terminal, plain periodic lines otherwise.

Shows runs done of total, every in-flight run's tokens, loss and tokens/s, and an ETA
from the FLOPs still to train over the FLOP rate observed so far.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from chinchilla.console import duration, si


class SweepProgress:
    def __init__(
        self,
        total_runs: int,
        done_runs: int,
        pending_flops: float,
        live: bool | None = None,
        interval_s: float = 15.0,
        stream=None,
    ):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.total, self.done = total_runs, done_runs
        self.pending_flops = pending_flops
        self.trained_flops = 0.0
        self.flops_seconds = 0.0
        self.interval_s = interval_s
        self._last_line = 0.0
        self._inflight: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, TaskID] = {}
        self._progress: Progress | None = None
        self._start = time.perf_counter()

    # -- context
    def __enter__(self) -> SweepProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._overall = self._progress.add_task(
                "runs", total=self.total, completed=self.done, info=self._eta_text()
            )
        else:
            self._print(
                f"sweep: {self.done}/{self.total} runs done, {self.total - self.done} to train"
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    # -- events
    def run_started(self, run, label: str = "") -> None:
        self._inflight[run.run_id] = {"run": run, "info": {}, "label": label}
        desc = f"{run.run_id} N={si(run.n_params)} D={si(run.n_tokens)}" + (
            f" [{label}]" if label else ""
        )
        if self._progress is not None:
            self._tasks[run.run_id] = self._progress.add_task(
                desc, total=run.n_tokens, info="starting"
            )
        else:
            self._print(f"start {desc} ({self.done + 1}/{self.total})")

    def update(self, info: dict[str, Any]) -> None:
        state = self._inflight.get(info["run_id"])
        if state is None:
            return
        state["info"] = info
        tok_s = info["tokens"] / max(info["step_seconds"], 1e-9)
        text = f"loss {info['train_loss']:.3f}  {si(tok_s)} tok/s"
        if self._progress is not None:
            self._progress.update(self._tasks[info["run_id"]], completed=info["tokens"], info=text)
        elif time.perf_counter() - self._last_line >= self.interval_s:
            self._print(
                f"  {info['run_id']} step {info['step']}/{info['steps']} "
                f"tokens {si(info['tokens'])}/{si(state['run'].n_tokens)} {text} | "
                f"sweep {self._eta_text()}"
            )

    def run_finished(self, run, row: dict[str, Any]) -> None:
        self._inflight.pop(run.run_id, None)
        self.done += 1
        self.pending_flops = max(0.0, self.pending_flops - run.flops_chinchilla)
        self.trained_flops += run.flops_chinchilla
        self.flops_seconds += row.get("seconds") or 0.0
        loss = row.get("loss", math.nan)
        line = (
            f"done  {run.run_id} {row['status']:<8} loss {loss:.4f} nats/token  "
            f"N={si(run.n_params)} D={si(run.n_tokens)}  {duration(row.get('seconds'))}"
            + (f"  ({row['error']})" if row.get("error") else "")
        )
        if self._progress is not None:
            task = self._tasks.pop(run.run_id, None)
            if task is not None:
                self._progress.remove_task(task)
            self._progress.update(self._overall, completed=self.done, info=self._eta_text())
            self._progress.console.print(line)
        else:
            self._print(f"{line} ({self.done}/{self.total}) {self._eta_text()}")

    def note(self, line: str) -> None:
        """One line about the sweep (not a run's progress), above the bars when live."""
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            self._print(line)

    # -- helpers
    def _eta_text(self) -> str:
        elapsed = time.perf_counter() - self._start
        if self.trained_flops <= 0 or elapsed <= 0:
            return f"{self.done}/{self.total} runs"
        rate = self.trained_flops / elapsed  # App. F FLOP/s over the whole sweep
        return f"{self.done}/{self.total} runs, ETA {duration(self.pending_flops / rate)}"

    def _print(self, text: str) -> None:
        self._last_line = time.perf_counter()
        print(text, file=self.stream, flush=True)
