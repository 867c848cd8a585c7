"""Where a sweep's runs train: the backends of `chinchilla.driver`.

- `InProcess`: one run at a time in this process (the serial sweep).
- `WorkerPool`: `workers` processes on this machine. Each worker owns a slot: on CUDA
  the slot picks its GPU through CUDA_VISIBLE_DEVICES, mapped through any mask already
  set (Slurm's GPU binding); `runs_per_gpu` slots share a device; on CPU the usable
  cores are split between workers. Workers write their own part files
  (`store.write_part`); the driver alone merges runs.parquet / curves.parquet and shows
  progress, so the tables stay consistent and the resume guarantees of a serial sweep
  hold. Fault isolation: a worker that dies (SIGKILL, segfault, the kernel's OOM killer)
  loses only the run it held (the driver retries it per `execution.retries` in a fresh
  process); a worker whose run failed with a CUDA error exits after reporting it (the
  error is sticky in that process) and is replaced. Workers watch the driver and exit
  within a second when it dies, whatever killed it.
- `RayTasks`: one Ray task per run.

Worker processes import torch only inside the worker functions: a worker's
environment (its GPU) is set before torch starts.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from chinchilla import layout
from chinchilla.config import Config
from chinchilla.device import (
    available_cpus,
    peak_flops,
    resolve_device,
    sticky_device_error,
    visible_gpus,
)
from chinchilla.errors import UserError, is_environment_fault
from chinchilla.grid import PlannedRun
from chinchilla.runs import (
    attach_tasks,
    attempt_run,
    record,
    sweep_environment,
    train_and_record,
)

_WORKER: dict[str, Any] = {}  # per worker process: label, events queue, data, env


def _watch_parent(parent: int, every: float = 0.5) -> None:
    """Exit this process when its parent (the driver) is gone: a worker then notices
    within `every` seconds, even after a SIGKILL that gave the driver no chance to
    clean up."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(70)
            time.sleep(every)

    threading.Thread(target=watch, daemon=True, name="watch-driver").start()


def _worker_main(slot, gpu, threads, parent, tasks, events, cfg, out, need, irreducible):
    """A worker process: train the runs it is handed until told to stop."""
    # born with SIGINT blocked (`_Slots.start`): ignore it, which also drops a Ctrl-C
    # that came while it started, then unblock; the driver alone answers Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _watch_parent(parent)
    label = f"{socket.gethostname()}/w{slot}"
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        label += f"/cuda:{gpu}"
    label += f"/pid{os.getpid()}"  # which process trained a run (and which to stop)
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(label=label, events=events)
    while True:
        run = tasks.get()
        if run is None:
            return
        try:
            row, seconds, label = _work(run, cfg, out, need, irreducible)
        except OSError as exc:
            if not is_environment_fault(exc):
                raise
            events.put({"event": "fault", "run_id": run.run_id, "fault": _fault(exc)})
            return
        events.put(
            {
                "event": "finished",
                "run_id": run.run_id,
                "row": row,
                "seconds": seconds,
                "worker": label,
            }
        )
        if row["status"] == "failed" and sticky_device_error(row.get("error")):
            return  # the driver starts a fresh process in this slot


def _fault(exc: OSError) -> tuple:
    """An OSError as plain values, to cross a process boundary and be raised again."""
    return (exc.errno, exc.strerror, exc.filename)


def raise_fault(fault: tuple) -> None:
    errno_, strerror, filename = fault
    raise OSError(errno_, strerror, filename)


def _process_state(cfg: Config, out: str, need: int, irreducible: float | None) -> dict:
    """Device, mapped data, provenance and peak FLOP/s of this worker process, built once
    per sweep (a process, local or Ray, trains many runs; the parent built the cache)."""
    from chinchilla.data import load_data  # torch: after the worker's GPU is set

    key = (out, cfg.fingerprint())
    if _WORKER.get("key") != key:
        device = resolve_device(cfg)
        data = load_data(cfg, Path(out) / layout.DATA, min_train_tokens=need)
        attach_tasks(cfg, data)  # the driver checked them; here they are read back
        _WORKER.update(
            key=key,
            device=device,
            data=data,
            env=sweep_environment(cfg, device, irreducible),
            peak=peak_flops(cfg, device),
        )
    return _WORKER


def _work(run: PlannedRun, cfg: Config, out: str, need: int, irreducible: float | None):
    """Train one run in a worker process; returns (row, segment seconds, label)."""
    w = _process_state(cfg, out, need, irreducible)
    row, tables, seconds = _train_here(run, cfg, out, w, w["label"], w["events"].put)
    record(Path(out), row, tables)
    return row, seconds, w["label"]


def _train_here(run: PlannedRun, cfg: Config, out: str, w: dict, label: str, put):
    """Announce, train (with retries) and return (row, tables, seconds) in this process;
    `put` sends start and progress events to the driver."""
    put({"event": "start", "run_id": run.run_id, "worker": label})
    return attempt_run(
        run,
        cfg,
        Path(out),
        w["data"],
        device=w["device"],
        peak=w["peak"],
        env=w["env"],
        on_progress=lambda info: put({"event": "progress"} | info),
        extra={"worker": label},
    )


def death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process died ({name})"
    return f"worker process exited with code {exitcode}"


class _Slot:
    """One worker process and the run it holds."""

    def __init__(self, index: int, gpu: str | None):
        self.index, self.gpu = index, gpu
        self.proc = None
        self.tasks = None
        self.run: PlannedRun | None = None
        self.idle_deaths = 0  # deaths holding no run: a worker that cannot start
        self.label = f"{socket.gethostname()}/w{index}" + (f"/cuda:{gpu}" if gpu else "")


class InProcess:
    """Runs train one at a time in this process: the serial sweep."""

    def __init__(self, cfg: Config, out: Path, data, irreducible: float | None):
        import torch

        if cfg.device.threads:
            torch.set_num_threads(cfg.device.threads)
        self.cfg, self.out, self.data = cfg, out, data
        self.device = resolve_device(cfg)
        self.env = sweep_environment(cfg, self.device, irreducible)
        self.peak = peak_flops(cfg, self.device)
        self.run: PlannedRun | None = None

    def open(self, emit) -> None:
        self.emit = emit

    def free(self) -> int:
        return 0 if self.run else 1

    def submit(self, run: PlannedRun) -> None:
        self.run = run

    def wait(self, timeout: float) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        self.emit({"event": "start", "run_id": run.run_id, "worker": "main", "label": ""})
        row, seconds = train_and_record(
            run,
            self.cfg,
            self.out,
            self.data,
            device=self.device,
            peak=self.peak,
            env=self.env,
            on_progress=lambda info: self.emit({"event": "progress"} | info),
            extra={"worker": "main"},
        )
        self.emit(
            {
                "event": "finished",
                "run_id": run.run_id,
                "row": row,
                "tables": None,  # recorded
                "seconds": seconds,
                "worker": "main",
            }
        )

    def close(self) -> None:
        pass


class WorkerPool:
    """`workers` processes on this machine, each with its own task queue and one event
    queue back (module docstring: slots, GPUs, threads, deaths)."""

    def __init__(self, cfg: Config, out: Path, workers: int, need: int, irreducible):
        import multiprocessing as mp

        import torch

        self.cfg, self.out, self.need, self.irreducible = cfg, out, need, irreducible
        device = resolve_device(cfg)
        gpus = visible_gpus(torch.cuda.device_count()) if device == "cuda" else []
        self.threads = cfg.device.threads or max(1, available_cpus() // workers)
        k = cfg.execution.runs_per_gpu
        self.slots = [
            _Slot(i, gpus[(i // k) % len(gpus)] if gpus else None) for i in range(workers)
        ]
        self.ctx = mp.get_context("spawn")
        self.env = sweep_environment(cfg, device, irreducible)

    def open(self, emit) -> None:
        self.emit = emit
        self.events = self.ctx.Queue()
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.tasks = self.ctx.Queue()
        slot.proc = self.ctx.Process(
            target=_worker_main,
            args=(
                slot.index,
                slot.gpu,
                self.threads,
                os.getpid(),
                slot.tasks,
                self.events,
                self.cfg,
                str(self.out),
                self.need,
                self.irreducible,
            ),
            daemon=True,
            name=f"chinchilla-w{slot.index}",
        )
        slot.run = None
        # Ctrl-C reaches the whole process group: a worker ignores it and the driver alone
        # answers, stopping the workers. The worker is started with SIGINT blocked (a
        # child inherits the starting thread's mask) and ignores it first thing. The
        # driver's own handler stays in place: a Ctrl-C while a worker starts stays
        # pending on this thread, or reaches the driver through another, and is answered
        # (setting SIG_IGN here instead lost a Ctrl-C that came in that window).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            slot.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def _idle(self) -> list[_Slot]:
        """Slots holding no run whose process is alive or not yet started (one that died
        idle is reaped by `wait` first, then replaced)."""
        return [s for s in self.slots if s.run is None and (s.proc is None or s.proc.is_alive())]

    def free(self) -> int:
        return len(self._idle())

    def submit(self, run: PlannedRun) -> None:
        slot = self._idle()[0]
        if slot.proc is None:
            self._spawn(slot)
        slot.run = run
        slot.tasks.put(run)

    def _handle(self, ev: dict) -> None:
        slot = next((s for s in self.slots if s.run and s.run.run_id == ev["run_id"]), None)
        if slot is None:
            return
        if ev["event"] == "fault":  # the machine, not the run: the sweep stops
            raise_fault(ev["fault"])
        if ev["event"] == "finished":
            slot.run = None
            ev = ev | {"tables": None}  # the worker recorded it
        self.emit(ev)

    def _drain(self, timeout: float) -> None:
        try:
            self._handle(self.events.get(timeout=timeout))
            while True:
                self._handle(self.events.get_nowait())
        except queue.Empty:
            pass

    def wait(self, timeout: float) -> None:
        self._drain(timeout)
        for slot in self.slots:  # a dead worker fails (or retries) only its own run
            if slot.proc is None or slot.proc.is_alive():
                continue
            slot.proc.join()
            self._drain(0.0)  # it may have reported before it exited
            run, exitcode = slot.run, slot.proc.exitcode
            slot.proc, slot.run = None, None
            if run is None:
                slot.idle_deaths += 1
                if slot.idle_deaths >= 3:
                    raise RuntimeError(
                        f"worker {slot.label} died 3 times before training anything "
                        f"(last: {death_message(exitcode)})"
                    )
                continue
            self.emit(
                {
                    "event": "lost",
                    "run_id": run.run_id,
                    "message": death_message(exitcode) + f" while training {run.run_id}",
                    "reason": death_message(exitcode),
                    "worker": slot.label,
                }
            )

    def close(self) -> None:
        """Idle workers are told to stop; a worker still holding a run (the sweep is
        ending on an error or a signal) is stopped at once: its run resumes from its
        checkpoint on the next sweep."""
        for slot in self.slots:
            if slot.proc is None or not slot.proc.is_alive():
                continue
            if slot.run is None:
                slot.tasks.put(None)
            else:
                slot.proc.terminate()
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.join(timeout=10)
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join()


# ----------------------------------------------------------------------------- Ray


def _ray_work(run: PlannedRun, cfg: Config, out: str, need: int, irreducible, threads: int, events):
    """One Ray task: train a run where Ray placed it; the driver records the result."""
    import ray
    import torch

    torch.set_num_threads(threads)

    ctx = ray.get_runtime_context()
    gpus = ctx.get_accelerator_ids().get("GPU", [])
    label = f"{socket.gethostname()}/node {ctx.get_node_id()[:8]}" + (
        f"/gpu {','.join(gpus)}" if gpus else ""
    )
    try:
        w = _process_state(cfg, out, need, irreducible)  # Ray reuses worker processes
        row, tables, seconds = _train_here(run, cfg, out, w, label, lambda ev: _put(events, ev))
    except OSError as exc:
        if not is_environment_fault(exc):
            raise
        return "fault", _fault(exc), None, label
    return row, tables, seconds, label


def _put(events, item) -> None:
    try:
        events.put_nowait(item)
    except Exception:  # a full queue drops a progress line, never a result
        pass


class RayTasks:
    """One Ray task per run, requesting `gpus_per_run` GPUs (fractional packs small runs)
    and one CPU; the driver writes every result, so the tables have one writer. The
    sweep directory (and a corpus) must be on storage every node sees."""

    def __init__(self, cfg: Config, out: Path, need: int, irreducible, address: str | None):
        try:
            import ray
        except ImportError:
            raise UserError(
                "the Ray executor needs Ray: pip install 'chinchilla-scaling[ray]'"
            ) from None
        self.ray = ray
        self.cfg, self.out, self.need, self.irreducible = cfg, out, need, irreducible
        self.address = address
        # a lost task never reported its device or host
        self.env = sweep_environment(cfg, "cpu", irreducible) | {"device": None, "host": None}
        self.refs: dict = {}
        self.started_here = False

    def open(self, emit) -> None:
        from ray.util.queue import Queue

        ray = self.ray
        self.emit = emit
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=True,
                configure_logging=False,
            )
        gpus = self.cfg.execution.gpus_per_run
        if gpus is None:
            per = self.cfg.execution.runs_per_gpu
            gpus = 1 / per if ray.cluster_resources().get("GPU") else 0
        self.events = Queue(maxsize=10_000)
        self.task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_work)

    def free(self) -> int:
        return 1 << 30  # Ray queues what its cluster cannot place yet

    def submit(self, run: PlannedRun) -> None:
        ref = self.task.remote(
            run, self.cfg, str(self.out), self.need, self.irreducible, 1, self.events
        )
        self.refs[ref] = run

    def wait(self, timeout: float) -> None:
        if not self.refs:
            return
        done, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=max(timeout, 0.5))
        for ev in self.events.get_nowait_batch(self.events.qsize()):
            self.emit(ev)
        for ref in done:
            run = self.refs.pop(ref)
            try:
                row, tables, seconds, label = self.ray.get(ref)
            except Exception as exc:  # the task was lost: its worker or node died
                name = type(exc).__name__
                self.emit(
                    {
                        "event": "lost",
                        "run_id": run.run_id,
                        "message": f"Ray task lost: {name}: {exc}",
                        "reason": f"its Ray task died ({name})",
                        "worker": None,
                    }
                )
                continue
            if row == "fault":  # the machine, not the run: the sweep stops
                raise_fault(tables)
            self.emit(
                {
                    "event": "finished",
                    "run_id": run.run_id,
                    "row": row,
                    "tables": tables,
                    "seconds": seconds,
                    "worker": label,
                }
            )

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def backend_for(
    cfg: Config,
    out: Path,
    *,
    executor: str,
    workers: int,
    address: str | None,
    data,
    need: int,
    irreducible: float | None,
):
    """The backend a sweep trains on: Ray tasks, worker processes, or this process."""
    if executor == "ray":
        return RayTasks(cfg, out, need, irreducible, address)
    if workers > 1:
        return WorkerPool(cfg, out, workers, need, irreducible)
    return InProcess(cfg, out, data, irreducible)
