"""Several runs at once on one machine: one process per run slot, each pinned to a GPU.

`run_local_parallel` keeps `workers` processes busy, largest runs first (shortest
makespan). Each worker takes a slot when it starts: on CUDA the slot picks its GPU
through CUDA_VISIBLE_DEVICES (`runs_per_gpu` slots share a device); on CPU the cores
are split between workers. Workers write their own part files (`store.write_part`);
the parent alone merges runs.parquet / curves.parquet and shows progress, so the
tables stay consistent and the resume guarantees of a serial sweep hold.

This module imports torch only inside worker functions: the environment of a worker
is set before torch starts.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from pathlib import Path
from typing import Any

from chinchilla.config import Config
from chinchilla.files import atomic_text
from chinchilla.grid import Plan, PlannedRun
from chinchilla.store import Merger

_WORKER: dict[str, Any] = {}  # per worker process: slot, label, events queue, data, env


def _init_worker(slots, events, n_gpus: int, runs_per_gpu: int, threads: int) -> None:
    slot = slots.get()
    label = f"{socket.gethostname()}/w{slot}"
    if n_gpus:
        gpu = (slot // runs_per_gpu) % n_gpus
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        label += f"/cuda:{gpu}"
    import torch

    torch.set_num_threads(threads)
    _WORKER.update(slot=slot, label=label, events=events)


def _process_state(cfg: Config, out: str, need: int, irreducible: float | None) -> dict:
    """Device, mapped data, provenance and peak FLOP/s of this worker process, built once
    per sweep (a process, local or Ray, trains many runs; the parent built the cache)."""
    from chinchilla.data import load_data
    from chinchilla.sweep import sweep_environment
    from chinchilla.train import peak_flops, resolve_device

    key = (out, cfg.fingerprint())
    if _WORKER.get("key") != key:
        device = resolve_device(cfg)
        _WORKER.update(
            key=key,
            device=device,
            data=load_data(cfg, Path(out) / "data", min_train_tokens=need),
            env=sweep_environment(cfg, device, irreducible),
            peak=peak_flops(cfg, device),
        )
    return _WORKER


def _work(run: PlannedRun, cfg: Config, out: str, need: int, irreducible: float | None):
    """Train one run in a worker process; returns (row, segment seconds, label)."""
    from chinchilla.sweep import record

    w = _process_state(cfg, out, need, irreducible)
    row, curve, seconds = _train_here(run, cfg, out, w, w["label"], w["events"].put)
    record(Path(out), row, curve)
    return row, seconds, w["label"]


def _train_here(run: PlannedRun, cfg: Config, out: str, w: dict, label: str, put):
    """Announce, train (with retries) and return (row, curve, seconds) in this process;
    `put` sends start and progress events to the driver."""
    from chinchilla.sweep import attempt_run

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


def run_local_parallel(
    cfg: Config, out: Path, p: Plan, pending: list[PlannedRun], *, workers: int, live: bool | None
) -> tuple[float, float, dict]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    from chinchilla.data.synthetic import irreducible_loss
    from chinchilla.progress import SweepProgress
    from chinchilla.store import write_part
    from chinchilla.sweep import (
        Tally,
        load_sweep_data,
        run_record,
        sweep_environment,
        tokens_needed,
    )
    from chinchilla.train import RunResult, resolve_device

    # 1. the parent builds the data cache once; workers only memory-map it
    data = load_sweep_data(cfg, out, p.runs)
    need = tokens_needed(p.runs)
    irreducible = irreducible_loss(data, cfg.train.eval_tokens)
    device = resolve_device(cfg)
    n_gpus = torch.cuda.device_count() if device == "cuda" else 0
    threads = cfg.device.threads or max(1, (os.cpu_count() or 1) // workers)

    # 2. slots and an event queue shared with the workers
    ctx = mp.get_context("spawn")
    slots, events = ctx.Queue(), ctx.Queue()
    for i in range(workers):
        slots.put(i)
    order = sorted(pending, key=lambda r: -r.flops_chinchilla)  # largest first
    inflight: dict[str, str] = {}
    finished: set[str] = set()
    lock = threading.Lock()
    tally = Tally()
    merge_soon = Merger(out)
    stop = threading.Event()

    def write_claims() -> None:
        atomic_text(out / "inflight.json", json.dumps(inflight))

    with SweepProgress(
        len(p.runs), len(p.runs) - len(pending), sum(r.flops_chinchilla for r in pending), live=live
    ) as prog:
        by_id = {r.run_id: r for r in pending}

        def pump() -> None:  # worker events -> progress display and claims
            while not stop.is_set():
                try:
                    ev = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                with lock:
                    if ev["run_id"] in finished:
                        continue
                    if ev["event"] == "start":
                        inflight[ev["run_id"]] = ev["worker"]
                        write_claims()
                        prog.run_started(by_id[ev["run_id"]], label=ev["worker"])
                    else:
                        prog.update(ev)

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        with ProcessPoolExecutor(
            workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(slots, events, n_gpus, cfg.execution.runs_per_gpu, threads),
        ) as pool:
            futures = {pool.submit(_work, r, cfg, str(out), need, irreducible): r for r in order}
            for fut in as_completed(futures):
                run = futures[fut]
                try:
                    row, seconds, label = fut.result()
                except Exception as exc:  # the worker process itself died (killed, OOM)
                    message = f"worker died: {type(exc).__name__}: {exc}".splitlines()[0][:500]
                    row = run_record(
                        run,
                        RunResult(run.run_id, "failed", error=message),
                        sweep_environment(cfg, device, irreducible),
                    )
                    write_part(out, row, [])
                    seconds, label = (0.0, 0.0), inflight.get(run.run_id, "?")
                tally.add(label, seconds)
                with lock:
                    finished.add(run.run_id)
                    inflight.pop(run.run_id, None)
                    write_claims()
                    merge_soon()
                    prog.run_finished(run, row)
        stop.set()
        pumper.join()
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
    row, curve, seconds = _train_here(run, cfg, out, w, label, lambda ev: _put(events, ev))
    return row, curve, seconds, label


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
    from chinchilla.sweep import Tally, load_sweep_data, record, tokens_needed

    data = load_sweep_data(cfg, out, p.runs)  # builds the cache before any task starts
    need = tokens_needed(p.runs)
    irreducible = irreducible_loss(data, cfg.train.eval_tokens)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    gpus = cfg.execution.gpus_per_run
    if gpus is None:
        gpus = 1 / cfg.execution.runs_per_gpu if ray.cluster_resources().get("GPU") else 0
    events = Queue(maxsize=10_000)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_work)
    order = sorted(pending, key=lambda r: -r.flops_chinchilla)
    refs = {task.remote(r, cfg, str(out), need, irreducible, 1, events): r for r in order}
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
            while refs:
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
                    row, curve, seconds, label = ray.get(ref)
                    record(out, row, curve)
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
