"""Several runs at once on one machine, and on a Ray cluster.

Local: `run_local_parallel` keeps `workers` processes busy, largest runs first (shortest
makespan). Each worker owns a slot: on CUDA the slot picks its GPU through
CUDA_VISIBLE_DEVICES, mapped through any mask already set (Slurm's GPU binding);
`runs_per_gpu` slots share a device; on CPU the usable cores are split between workers.
Workers write their own part files (`store.write_part`); the driver alone merges
runs.parquet / curves.parquet and shows progress, so the tables stay consistent and
the resume guarantees of a serial sweep hold.

Fault isolation: the driver watches every worker process. A worker that dies (SIGKILL,
segfault, the kernel's OOM killer) fails only the run it held, which is retried per
`execution.retries` in a fresh process; a worker whose run failed with a CUDA error
exits after reporting it (the error is sticky in that process) and is replaced. Workers
watch the driver and exit within a second when it dies, whatever killed it.

This module imports torch only inside worker functions: the environment of a worker
is set before torch starts.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from chinchilla.config import Config
from chinchilla.files import atomic_text
from chinchilla.grid import Plan, PlannedRun
from chinchilla.store import Merger

_WORKER: dict[str, Any] = {}  # per worker process: label, events queue, data, env


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (taskset, Slurm, containers) and a
    cgroup v2 quota, not the machine's count."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def visible_gpus(n_gpus: int) -> list[str]:
    """Physical ids (or UUIDs) of the GPUs this process sees, in order: the existing
    CUDA_VISIBLE_DEVICES mask when set, else 0 .. n_gpus - 1."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and mask.strip():
        ids = [d.strip() for d in mask.split(",") if d.strip()]
        return ids[:n_gpus] if n_gpus else ids
    return [str(i) for i in range(n_gpus)]


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


def sticky_device_error(error: str | None) -> bool:
    """Errors after which a CUDA context is unusable in that process."""
    return bool(error) and any(
        s in error for s in ("CUDA error", "AcceleratorError", "device-side assert", "NCCL")
    )


def _worker_main(slot, gpu, threads, parent, tasks, events, cfg, out, need, irreducible):
    """A worker process: train the runs it is handed until told to stop."""
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
        row, seconds, label = _work(run, cfg, out, need, irreducible)
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


def _process_state(cfg: Config, out: str, need: int, irreducible: float | None) -> dict:
    """Device, mapped data, provenance and peak FLOP/s of this worker process, built once
    per sweep (a process, local or Ray, trains many runs; the parent built the cache)."""
    from chinchilla.data import load_data
    from chinchilla.runs import attach_tasks, sweep_environment
    from chinchilla.train import peak_flops, resolve_device

    key = (out, cfg.fingerprint())
    if _WORKER.get("key") != key:
        device = resolve_device(cfg)
        data = load_data(cfg, Path(out) / "data", min_train_tokens=need)
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
    from chinchilla.runs import record

    w = _process_state(cfg, out, need, irreducible)
    row, tables, seconds = _train_here(run, cfg, out, w, w["label"], w["events"].put)
    record(Path(out), row, tables)
    return row, seconds, w["label"]


def _train_here(run: PlannedRun, cfg: Config, out: str, w: dict, label: str, put):
    """Announce, train (with retries) and return (row, tables, seconds) in this process;
    `put` sends start and progress events to the driver."""
    from chinchilla.runs import attempt_run

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


def run_local_parallel(
    cfg: Config, out: Path, p: Plan, pending: list[PlannedRun], *, workers: int, live: bool | None
) -> tuple[float, float, dict]:
    import multiprocessing as mp

    import torch

    from chinchilla.data.synthetic import irreducible_loss
    from chinchilla.progress import SweepProgress
    from chinchilla.runs import (
        Tally,
        failed_record,
        job_order,
        load_sweep_data,
        stranded,
        stranded_record,
        sweep_environment,
        take_ready,
        tokens_needed,
    )
    from chinchilla.store import write_part
    from chinchilla.train import resolve_device

    # 1. the driver builds the data cache once; workers only memory-map it
    data = load_sweep_data(cfg, out, p.runs)
    need = tokens_needed(p.runs)
    irreducible = irreducible_loss(data, cfg.train.eval_tokens)
    device = resolve_device(cfg)
    gpus = visible_gpus(torch.cuda.device_count()) if device == "cuda" else []
    threads = cfg.device.threads or max(1, available_cpus() // workers)
    k = cfg.execution.runs_per_gpu
    slots = [_Slot(i, gpus[(i // k) % len(gpus)] if gpus else None) for i in range(workers)]

    # 2. worker processes, each with its own task queue; one event queue back
    ctx = mp.get_context("spawn")
    events = ctx.Queue()

    def spawn(slot: _Slot) -> None:
        slot.tasks = ctx.Queue()
        slot.proc = ctx.Process(
            target=_worker_main,
            args=(
                slot.index,
                slot.gpu,
                threads,
                os.getpid(),
                slot.tasks,
                events,
                cfg,
                str(out),
                need,
                irreducible,
            ),
            daemon=True,
            name=f"chinchilla-w{slot.index}",
        )
        slot.proc.start()
        slot.run = None

    todo = deque(job_order(pending))  # trunks, then the largest first
    deaths: dict[str, int] = {}
    inflight: dict[str, str] = {}
    tally = Tally()
    merge_soon = Merger(out)
    by_id = {r.run_id: r for r in pending}

    def write_claims() -> None:
        atomic_text(out / "inflight.json", json.dumps(inflight))

    with SweepProgress(
        len(p.runs), len(p.runs) - len(pending), sum(r.flops_chinchilla for r in pending), live=live
    ) as prog:

        def finish(slot: _Slot, run: PlannedRun, row: dict, seconds, label: str) -> None:
            tally.add(label, seconds)
            inflight.pop(run.run_id, None)
            write_claims()
            merge_soon()
            prog.run_finished(run, row)
            slot.run = None

        def handle(ev: dict) -> None:
            slot = next((s for s in slots if s.run and s.run.run_id == ev["run_id"]), None)
            if slot is None:
                return
            if ev["event"] == "start":
                inflight[ev["run_id"]] = ev["worker"]
                write_claims()
                prog.run_started(by_id[ev["run_id"]], label=ev["worker"])
            elif ev["event"] == "finished":
                finish(slot, slot.run, ev["row"], ev["seconds"], ev["worker"])
            else:
                prog.update(ev)

        def drain(timeout: float) -> None:
            try:
                handle(events.get(timeout=timeout))
                while True:
                    handle(events.get_nowait())
            except queue.Empty:
                pass

        try:
            for slot in slots:
                spawn(slot)
            while todo or any(s.run for s in slots):
                for slot in slots:  # hand out work; a slot without a process gets one
                    if slot.run is None and todo:
                        if slot.proc is not None and not slot.proc.is_alive():
                            continue  # died idle: handled below, then replaced
                        run = take_ready(out, todo)  # a branch waits for its trunk
                        if run is None:
                            continue
                        if slot.proc is None:
                            spawn(slot)
                        slot.run = run
                        slot.tasks.put(slot.run)
                lost_cause = stranded(out, todo, any(s.run for s in slots))
                if lost_cause:  # branches whose trunk ended without their checkpoint
                    env = sweep_environment(cfg, device, irreducible)
                    for run in lost_cause:
                        row = stranded_record(run, env)
                        write_part(out, row, [])
                        prog.run_finished(run, row)
                    break
                drain(0.2)
                for slot in slots:  # a dead worker fails (or retries) only its own run
                    if slot.proc is None or slot.proc.is_alive():
                        continue
                    slot.proc.join()
                    drain(0.0)  # it may have reported before it exited
                    run, exitcode = slot.run, slot.proc.exitcode
                    slot.proc = None
                    if run is None:
                        slot.idle_deaths += 1
                        if slot.idle_deaths >= 3:
                            raise RuntimeError(
                                f"worker {slot.label} died 3 times before training anything "
                                f"(last: {death_message(exitcode)})"
                            )
                        continue
                    deaths[run.run_id] = deaths.get(run.run_id, 0) + 1
                    slot.run = None
                    if deaths[run.run_id] <= cfg.execution.retries:
                        todo.appendleft(run)  # resumes from its checkpoint
                        continue
                    message = death_message(exitcode) + f" while training {run.run_id}"
                    env = sweep_environment(cfg, device, irreducible)
                    row = failed_record(run, message, env, deaths[run.run_id])
                    row["worker"] = slot.label
                    write_part(out, row, [])
                    finish(slot, run, row, (0.0, 0.0), slot.label)
        finally:
            for slot in slots:
                if slot.proc is not None and slot.proc.is_alive():
                    slot.tasks.put(None)
            for slot in slots:
                if slot.proc is not None:
                    slot.proc.join(timeout=10)
                    if slot.proc.is_alive():
                        slot.proc.kill()
                        slot.proc.join()
    (out / "inflight.json").unlink(missing_ok=True)
    return tally.result()


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
    w = _process_state(cfg, out, need, irreducible)  # Ray reuses worker processes
    row, tables, seconds = _train_here(run, cfg, out, w, label, lambda ev: _put(events, ev))
    return row, tables, seconds, label


def _put(events, item) -> None:
    try:
        events.put_nowait(item)
    except Exception:  # a full queue drops a progress line, never a result
        pass


def run_ray(
    cfg: Config,
    out: Path,
    p: Plan,
    pending: list[PlannedRun],
    *,
    address: str | None,
    live: bool | None,
) -> tuple[float, float, dict]:
    """One Ray task per run, requesting `gpus_per_run` GPUs (fractional packs small runs)
    and one CPU; the driver writes every result, so the tables have one writer. The
    sweep directory (and a corpus) must be on storage every node sees."""
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        from chinchilla.errors import UserError

        raise UserError(
            "the Ray executor needs Ray: pip install 'chinchilla-scaling[ray]'"
        ) from None
    from chinchilla.data.synthetic import irreducible_loss
    from chinchilla.progress import SweepProgress
    from chinchilla.runs import (
        Tally,
        failed_record,
        job_order,
        load_sweep_data,
        ready,
        record,
        stranded,
        stranded_record,
        sweep_environment,
        tokens_needed,
    )

    data = load_sweep_data(cfg, out, p.runs)  # builds the cache before any task starts
    need = tokens_needed(p.runs)
    irreducible = irreducible_loss(data, cfg.train.eval_tokens)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=True, configure_logging=False
        )
    gpus = cfg.execution.gpus_per_run
    if gpus is None:
        gpus = 1 / cfg.execution.runs_per_gpu if ray.cluster_resources().get("GPU") else 0
    events = Queue(maxsize=10_000)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_work)
    waiting = job_order(pending)  # branches wait for their trunk's checkpoint

    def submit(r: PlannedRun):
        return task.remote(r, cfg, str(out), need, irreducible, 1, events)

    refs: dict = {}
    lost: dict[str, int] = {}
    by_id = {r.run_id: r for r in pending}
    inflight: dict[str, str] = {}
    tally = Tally()
    merge_soon = Merger(out)
    try:
        with SweepProgress(
            len(p.runs),
            len(p.runs) - len(pending),
            sum(r.flops_chinchilla for r in pending),
            live=live,
        ) as prog:
            while refs or waiting:
                for r in [r for r in waiting if ready(out, r)]:
                    waiting.remove(r)
                    refs[submit(r)] = r
                lost_cause = stranded(out, waiting, bool(refs))
                if lost_cause:  # branches whose trunk ended without their checkpoint
                    env = sweep_environment(cfg, "cpu", irreducible) | {"device": None}
                    for r in lost_cause:
                        row = stranded_record(r, env)
                        record(out, row, {})
                        prog.run_finished(r, row)
                    break
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                for ev in events.get_nowait_batch(events.qsize()):
                    if ev["run_id"] not in by_id:
                        continue
                    if ev["event"] == "start":
                        inflight[ev["run_id"]] = ev["worker"]
                        atomic_text(out / "inflight.json", json.dumps(inflight))
                        prog.run_started(by_id[ev["run_id"]], label=ev["worker"])
                    else:
                        prog.update(ev)
                for ref in done:
                    run = refs.pop(ref)
                    try:
                        row, tables, seconds, label = ray.get(ref)
                    except Exception as exc:  # the task was lost: worker or node died
                        lost[run.run_id] = lost.get(run.run_id, 0) + 1
                        if lost[run.run_id] <= cfg.execution.retries:
                            prog.note(
                                f"lost  {run.run_id}: its Ray task died "
                                f"({type(exc).__name__}); retry {lost[run.run_id]} of "
                                f"{cfg.execution.retries}, from its checkpoint"
                            )
                            refs[submit(run)] = run  # resumes from its checkpoint
                            continue
                        message = f"Ray task lost: {type(exc).__name__}: {exc}"
                        no_env = {"device": None, "host": None}  # it never reported
                        row = failed_record(run, message, no_env, lost[run.run_id])
                        tables, seconds = {}, (0.0, 0.0)
                        label = inflight.get(run.run_id, "?")
                    record(out, row, tables)
                    tally.add(label, seconds)
                    by_id.pop(run.run_id, None)
                    inflight.pop(run.run_id, None)
                    atomic_text(out / "inflight.json", json.dumps(inflight))
                    merge_soon()
                    prog.run_finished(run, row)
    finally:
        (out / "inflight.json").unlink(missing_ok=True)
        if started_here:
            ray.shutdown()
    return tally.result()
