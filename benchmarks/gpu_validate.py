"""GPU validation in one command: what the CUDA paths really do on the card at hand.

    TORCH_LOGS=recompiles,graph_breaks python benchmarks/gpu_validate.py --out DIR

Parts, in order; each writes DIR/<part>.json when it ends, so a command stopped at a
time limit still leaves what it measured:

1. steady: three shapes of configs/gpu_h100.yaml (its smallest, the one nearest 81M
   and its largest) through `train_run`, in one process, with torch.compile, 25 steps
   each on random tokens at the plan's micro-batch. Against the run's own record
   (tokens/s, MFU, warm-up seconds, compile counters): an independent clock (the
   progress callback synchronises and reads the wall clock and a CUDA event at steps 5
   and 20, a window without evaluation or the compile step); peak memory (allocated and
   reserved) against `accounting.training_memory_bytes`; the micro-batch `auto` picks on
   this device; a bf16 matmul's FLOP/s on this card as a measured ceiling.
2. resume: a ~100M run through `chinchilla sweep` (eager): twice straight through (the
   device's run-to-run noise), once SIGKILLed (the whole process group) a few seconds
   after its first checkpoint and rerun. Final loss differences, duplicate curve rows,
   processes left.
3. sweep: a three-budget sweep of small runs (1e14-1e15 FLOPs, 0.3M-7.5M parameters),
   two per GPU (execution.runs_per_gpu: 2), through the CLI, then `chinchilla fit`: a
   test of the executor on CUDA, not a scaling study (its sizes are too small to
   bracket the minima).

`--smoke` runs the same code on CPU at toy sizes (configs/markov.yaml), to test the
script itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEADY_STEPS = 25
WINDOW = (5, 20)  # progress callbacks bounding the independently timed window


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def write(out: Path, name: str, obj) -> None:
    tmp = out / f".{name}.tmp"
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(out / name)


# ----------------------------------------------------------------------------- 1. steady


def matmul_ceiling(device: str) -> float:
    """FLOP/s of a bf16 8192^3 matmul on random data (CUDA events, median of 10)."""
    import torch

    if device != "cuda":
        from chinchilla.device import measure_cpu_peak

        return measure_cpu_peak()
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / float(np.median(times))


def random_data(vocab: int, seq_len: int, batch: int, steps: int, eval_tokens: int):
    from chinchilla.data import TokenData

    rng = np.random.default_rng(0)
    chunk = seq_len + 1
    n_val = -(-eval_tokens // seq_len)
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    train = rng.integers(0, vocab, size=(steps + 1) * batch * chunk).astype(dtype)
    val = rng.integers(0, vocab, size=n_val * chunk).astype(dtype)
    return TokenData(train=train, val=val, vocab_size=vocab, seq_len=seq_len, shuffle=False)


def pick_runs(runs, smoke: bool):
    """The smallest, the one nearest 81M parameters and the largest run of the plan."""
    by_n = sorted(runs, key=lambda r: r.n_params)
    if smoke:
        return [by_n[0], by_n[len(by_n) // 2], by_n[-1]]
    near = min(by_n, key=lambda r: abs(np.log(r.n_params / 81e6)))
    picked = [near, by_n[-1], by_n[0]]  # the >= 80M runs first: they matter most
    return list({r.run_id: r for r in picked}.values())


def part_steady(args, out: Path) -> dict:
    import torch
    from torch._dynamo.utils import counters

    from chinchilla.accounting import chinchilla_flops_per_token, choose_micro_batch
    from chinchilla.config import load_config
    from chinchilla.device import peak_flops, resolve_device
    from chinchilla.grid import plan
    from chinchilla.train import initial_micro_batch, train_run

    cfg_path = ROOT / ("configs/markov.yaml" if args.smoke else "configs/gpu_h100.yaml")
    eval_tokens = 2048 if args.smoke else 131072
    sets = [
        "train.evals=1",
        f"train.eval_tokens={eval_tokens}",
        "train.log_every=5",
        "train.compile=true",
    ]
    if args.smoke:
        sets += ["device.type=cpu"]
    cfg = load_config(cfg_path, sets)
    device = resolve_device(cfg)
    peak = peak_flops(cfg, device)
    ceiling = matmul_ceiling(device)
    log(f"steady: device {device}, datasheet peak {peak:.3g}, matmul ceiling {ceiling:.3g}")
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "datasheet_peak_flops": peak,
        "matmul_ceiling_flops": ceiling,
        "steps": STEADY_STEPS,
        "window": WINDOW,
        "runs": [],
    }
    memory = cfg.device.memory_gb * 2**30
    for run in pick_runs(plan(cfg).runs, args.smoke):
        micro, est, fits = choose_micro_batch(
            run.shape, run.batch_size, memory, mixed_precision=device == "cuda"
        )
        run_cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, micro_batch_size=micro)
        )
        auto_micro = initial_micro_batch(run, cfg, device)
        short = dataclasses.replace(run, steps=STEADY_STEPS)
        data = random_data(
            run.shape.vocab_size, run.shape.seq_len, run.batch_size, STEADY_STEPS, eval_tokens
        )
        marks: dict[int, tuple[float, object]] = {}

        def on_progress(info, marks=marks):
            event = None
            if device == "cuda":
                torch.cuda.synchronize()
                event = torch.cuda.Event(enable_timing=True)
                event.record()
            marks[info["step"]] = (time.perf_counter(), event)

        breaks0 = sum(counters["graph_break"].values())
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        log(
            f"steady: {run.run_id} N={run.n_params / 1e6:.1f}M batch {run.batch_size} "
            f"micro {micro} (auto here: {auto_micro}), est {est / 2**30:.1f} GiB"
        )
        t0 = time.perf_counter()
        res = train_run(short, run_cfg, data, device=device, peak=peak, on_progress=on_progress)
        wall = time.perf_counter() - t0
        tokens_step = run.batch_size * run.shape.seq_len
        a, b = WINDOW
        wall_window = marks[b][0] - marks[a][0]
        event_window = marks[a][1].elapsed_time(marks[b][1]) * 1e-3 if device == "cuda" else None
        fpt = chinchilla_flops_per_token(run.shape)
        tps_wall = (b - a) * tokens_step / wall_window
        row = {
            "run_id": run.run_id,
            "n_params": run.n_params,
            "shape": f"d{run.shape.d_model} L{run.shape.n_layers} h{run.shape.n_heads}",
            "batch_size": run.batch_size,
            "micro_plan": micro,
            "micro_used": res.micro_batch_size,
            "micro_auto_here": auto_micro,
            "oom_backoffs": res.oom_backoffs,
            "est_memory_gib": est / 2**30,
            "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30
            if device == "cuda"
            else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30
            if device == "cuda"
            else None,
            "status": res.status,
            "loss": res.loss,
            "logged_tokens_per_s": res.tokens_per_second,
            "logged_mfu": res.mfu,
            "wall_tokens_per_s": tps_wall,
            "event_tokens_per_s": (b - a) * tokens_step / event_window if event_window else None,
            "wall_mfu": tps_wall * fpt / peak,
            "wall_mfu_of_matmul": tps_wall * fpt / ceiling,
            "mfu_6n": tps_wall * 6 * run.n_params / peak,
            "warmup_seconds": res.warmup_seconds,
            "step_seconds": res.step_seconds,
            "eval_seconds": res.eval_seconds,
            "wall_seconds": wall,
            "compile": res.compile,
            "graph_breaks": sum(counters["graph_break"].values()) - breaks0,
        }
        result["runs"].append(row)
        log("steady: " + json.dumps({k: row[k] for k in list(row)[:3]} | _short(row)))
        write(out, "steady.json", result)
        del data
    return result


def _short(row: dict) -> dict:
    keys = (
        "micro_used",
        "est_memory_gib",
        "peak_allocated_gib",
        "peak_reserved_gib",
        "logged_tokens_per_s",
        "wall_tokens_per_s",
        "event_tokens_per_s",
        "logged_mfu",
        "wall_mfu",
        "warmup_seconds",
        "compile",
        "graph_breaks",
    )
    return {
        k: (round(row[k], 4) if isinstance(row[k], float) else row[k]) for k in keys if k in row
    }


# ----------------------------------------------------------------------------- CLI parts


def cli(args_list: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "chinchilla", *args_list]
    log("$ chinchilla " + " ".join(args_list))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def timed_cli(res: dict, key: str, args_list: list[str], timeout: float, lines: int = 15):
    """Run the CLI, record `<key>_seconds` and `<key>_rc` in `res`, log its last lines."""
    t0 = time.perf_counter()
    p = cli(args_list, timeout=timeout)
    res[f"{key}_seconds"] = time.perf_counter() - t0
    res[f"{key}_rc"] = p.returncode
    log(
        f"{key}: rc {p.returncode} in {res[f'{key}_seconds']:.0f} s\n{_tail(p.stdout + p.stderr, lines)}"
    )
    return p


def resume_sets(smoke: bool) -> tuple[str, list[str]]:
    """A one-run sweep: about 95M parameters and 150 steps of 64 sequences (GPU)."""
    if smoke:
        return "configs/markov.yaml", [
            "grid.budgets=[1e11]",
            "grid.sizes_per_budget=1",
            "train.checkpoint_every_s=1",
            "train.log_every=5",
            "execution.workers=1",
        ]
    return "configs/gpu_h100.yaml", [
        "grid.budgets=[5.9e15]",
        "grid.sizes_per_budget=1",
        "grid.tokens_per_param=0.098",
        "train.batch_rule=fixed",
        "train.batch_size=64",
        "train.min_steps=0",
        "train.warmup_min_steps=10",
        "train.evals=4",
        "train.eval_tokens=262144",
        "train.checkpoint_every_s=5",
        "train.compile=false",
        "data.n_rules=65536",
        "data.val_tokens=262144",
    ]


def _alive(pgid: int) -> list[int]:
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(Path(stat).parent.name))
    return pids


def part_resume(args, out: Path, work: Path) -> dict:
    import pandas as pd

    cfg, sets = resume_sets(args.smoke)
    opts = [x for s in sets for x in ("--set", s)]
    straight, again, killed = (work / f"resume_{k}" for k in ("straight", "again", "killed"))
    res: dict = {"sets": sets}
    # a second uninterrupted run measures the run-to-run noise on this device (atomics in
    # the embedding backward make CUDA training nondeterministic), against which the
    # resumed run's difference is read
    timed_cli(res, "again", ["sweep", cfg, "--out", str(again), *opts], 300)
    timed_cli(res, "straight", ["sweep", cfg, "--out", str(straight), *opts], 300)
    # the killed copy: SIGKILL the whole process group once a checkpoint has been written
    cmd = [sys.executable, "-m", "chinchilla", "sweep", cfg, "--out", str(killed), *opts]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    ckpt_seen = None
    while proc.poll() is None and time.perf_counter() - t0 < 240:
        if ckpt_seen is None and glob.glob(str(killed / "checkpoints" / "*")):
            ckpt_seen = time.perf_counter()
        if ckpt_seen is not None and time.perf_counter() - ckpt_seen > args.kill_after:
            break
        time.sleep(0.2)
    res["killed_at_seconds"] = time.perf_counter() - t0
    res["finished_before_kill"] = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    res["processes_left_after_kill"] = len(_alive(proc.pid))
    log(
        f"resume: killed at {res['killed_at_seconds']:.1f} s (checkpoint seen: {ckpt_seen is not None})"
    )
    timed_cli(res, "rerun", ["sweep", cfg, "--out", str(killed), *opts], 300)
    try:
        a = pd.read_parquet(straight / "runs.parquet")
        b = pd.read_parquet(killed / "runs.parquet")
        ca = pd.read_parquet(straight / "curves.parquet")
        cb = pd.read_parquet(killed / "curves.parquet")
        cc = pd.read_parquet(again / "curves.parquet")
        res["loss_again"] = float(pd.read_parquet(again / "runs.parquet")["loss"].iloc[0])
        res["noise_loss_diff"] = res["loss_again"] - float(a["loss"].iloc[0])
        n = ca.merge(cc, on=["run_id", "step"], suffixes=("_a", "_c"))
        res["noise_max_train_loss_diff"] = float(
            (n["train_loss_a"] - n["train_loss_c"]).abs().max()
        )
        res["n_params"] = int(a["n_params"].iloc[0])
        res["steps"] = int(ca["step"].max())
        res["loss_straight"] = float(a["loss"].iloc[0])
        res["loss_resumed"] = float(b["loss"].iloc[0])
        res["loss_diff"] = res["loss_resumed"] - res["loss_straight"]
        res["resumed_from"] = (
            b["resumed_from"].iloc[0] if "resumed_from" in b.columns else "no column"
        )
        res["curve_rows"] = [len(ca), len(cb)]
        res["duplicate_curve_rows"] = int(cb.duplicated(["run_id", "step"]).sum())
        m = ca.merge(cb, on=["run_id", "step"], suffixes=("_a", "_b"))
        res["max_train_loss_diff"] = float((m["train_loss_a"] - m["train_loss_b"]).abs().max())
        res["checkpoints_left"] = len(glob.glob(str(killed / "checkpoints" / "*")))
    except Exception as exc:  # report, do not stop the next part
        res["error"] = f"{type(exc).__name__}: {exc}"
    return res


def sweep_sets(smoke: bool) -> tuple[str, list[str]]:
    if smoke:
        return "configs/markov.yaml", ["grid.sizes_per_budget=3", "execution.workers=2"]
    return "configs/gpu_h100.yaml", [
        "grid.budgets=[1e14,3e14,1e15]",
        "grid.sizes_per_budget=4",
        "grid.size_span=6",
        "train.batch_rule=fixed",
        "train.batch_size=64",
        "train.min_steps=0",
        "train.warmup_min_steps=10",
        "train.evals=4",
        "train.eval_tokens=131072",
        "train.compile=false",
        "data.n_rules=65536",
        "data.val_tokens=262144",
        "execution.runs_per_gpu=2",
    ]


def part_sweep(args, out: Path, work: Path) -> dict:
    import pandas as pd

    cfg, sets = sweep_sets(args.smoke)
    opts = [x for s in sets for x in ("--set", s)]
    d = work / "sweep"
    res: dict = {"sets": sets}
    timed_cli(res, "sweep", ["sweep", cfg, "--out", str(d), *opts], 400, lines=30)
    try:
        runs = pd.read_parquet(d / "runs.parquet")
        cols = [
            c
            for c in (
                "run_id",
                "budget",
                "n_params",
                "status",
                "loss",
                "tokens_per_second",
                "mfu",
                "worker",
                "micro_batch_size",
                "seconds",
            )
            if c in runs.columns
        ]
        res["runs"] = runs[cols].to_dict("records")
        res["workers"] = sorted(runs["worker"].astype(str).unique()) if "worker" in runs else None
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    p = timed_cli(res, "fit", ["fit", str(d), "--bootstrap", "200"], 200, lines=40)
    res["fit_output"] = _tail(p.stdout + p.stderr, 40)
    if (d / "fit.json").exists():
        (out / "sweep_fit.json").write_text((d / "fit.json").read_text())
    return res


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None, help="sweep folders (default: OUT/work)")
    ap.add_argument("--only", default="steady,resume,sweep")
    ap.add_argument("--smoke", action="store_true", help="CPU, toy sizes: test the script")
    ap.add_argument("--kill-after", type=float, default=4.0, help="seconds after a checkpoint")
    ap.add_argument("--deadline-s", type=float, default=1e9, help="skip parts past this")
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or out / "work"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    wanted = args.only.split(",")
    # seconds a part needs at least (GPU sizes), so a part that cannot finish is skipped
    need = {"steady": 240, "resume": 150, "sweep": 60} if not args.smoke else {}
    for part in ("steady", "resume", "sweep"):
        if part not in wanted:
            continue
        left = args.deadline_s - (time.perf_counter() - start)
        if left < need.get(part, 0):
            log(f"{part}: skipped, {left:.0f} s left")
            continue
        t0 = time.perf_counter()
        try:
            if part == "steady":
                res = part_steady(args, out)
            elif part == "resume":
                res = part_resume(args, out, work)
            else:
                res = part_sweep(args, out, work)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            res = {"error": f"{type(exc).__name__}: {exc}"}
        res["part_seconds"] = time.perf_counter() - t0
        write(out, f"{part}.json", res)
        log(f"{part}: done in {res['part_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
