"""One run: AdamW, warmup + cosine (or WSD) schedule, evaluations, checkpoints.

`train_run` is the only entry point; the CPU and CUDA paths are the same code with
three switches (bf16 autocast, fused AdamW, optional torch.compile). A run resumes
from its checkpoint (model, optimizer, step, logged curve, RNG, timers): the data
order depends on the step alone, so the resumed loss curve continues the same curve.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chinchilla.accounting import (
    chinchilla_flops_per_token,
    choose_micro_batch,
    divisors_descending,
    flops_per_token,
    largest_divisor_at_most,
)
from chinchilla.config import Config
from chinchilla.data import TokenData
from chinchilla.device import autocast
from chinchilla.files import atomic_write
from chinchilla.grid import PlannedRun, warmup_steps
from chinchilla.grid import decay_start as decay_start_step
from chinchilla.model import build_model
from chinchilla.tasks import metric_rows


@dataclass
class RunResult:
    run_id: str
    status: str  # "ok" | "diverged" | "failed"
    loss: float = math.nan  # final held-out loss, nats/token
    train_loss: float = math.nan  # mean training loss over the last logging interval
    steps_done: int = 0
    seconds: float = 0.0  # wall time of the run, all resumed segments together
    step_seconds: float = 0.0  # synchronised wall time of training steps after the first
    eval_seconds: float = 0.0  # inside evaluations
    warmup_seconds: float = 0.0  # first step of each segment (compilation, allocation)
    micro_batch_size: int | None = None  # sequences per forward/backward at the end
    oom_backoffs: list[int] = field(default_factory=list)  # micro-batches given up
    compile: dict[str, int] | None = None  # graphs compiled, recompilations
    tokens_per_second: float = math.nan
    mfu: float = math.nan  # Appendix F FLOPs per second / device peak
    resumed_from: int | None = None  # step the last segment resumed from
    loss_by_position: list[float] | None = None  # final evaluation, per context position
    metrics: list[dict[str, Any]] = field(default_factory=list)  # task metrics (long rows)
    task_seconds: float = 0.0  # scoring tasks (chinchilla/tasks.py), all segments
    segment_seconds: tuple[float, float] = (0.0, 0.0)  # (steps, evals) of this segment only
    error: str | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- schedule


def lr_at(
    step: int,
    steps: int,
    peak: float,
    cfg: Config,
    warmup: int | None = None,
    stable: bool = False,
) -> float:
    """Learning rate of optimizer step `step` (0-based) of `steps`.

    1. linear warmup over warmup_frac of the steps, at least warmup_min_steps (at most
       half the run);
    2. cosine: decay to final_lr_frac * peak over the remaining steps, so the cosine
       cycle matches the run's tokens (Hoffmann et al. 2022, sec. 3.1 and Fig. A1);
       wsd: hold the peak, then decay linearly over the last decay_frac of the steps.
    `warmup` fixes the warm-up (a shared trunk's); `stable`: a trunk, which never decays.
    """
    t = cfg.train
    warmup = warmup_steps(steps, cfg, warmup)
    if step < warmup:
        return peak * (step + 1) / warmup
    if stable:
        return peak
    floor = t.final_lr_frac * peak
    if t.schedule == "cosine":
        progress = (step - warmup) / max(1, steps - warmup - 1)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = decay_start_step(steps, warmup, cfg)
    if step < decay_start:
        return peak
    progress = (step - decay_start) / max(1, steps - decay_start - 1)
    return peak - (peak - floor) * min(1.0, progress)


def eval_steps(steps: int, evals: int) -> set[int]:
    """Steps (1-based counts of completed steps) after which to evaluate; includes the last."""
    return {max(1, round(steps * (i + 1) / evals)) for i in range(evals)} | {steps}


# ----------------------------------------------------------------------------- one run


def _optimizer(model: torch.nn.Module, lr: float, cfg: Config, device: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases or LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=device == "cuda"
    )


# What an out-of-memory failure raises (torch.OutOfMemoryError on recent versions).
OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def initial_micro_batch(run: PlannedRun, cfg: Config, device: str) -> int:
    """train.micro_batch_size, or for auto the largest divisor of the batch whose
    estimated step memory fits the device (CUDA: its memory not held by others; CPU:
    device.memory_gb)."""
    if cfg.train.micro_batch_size != "auto":
        return largest_divisor_at_most(run.batch_size, int(cfg.train.micro_batch_size))
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        memory = min(total, free + torch.cuda.memory_reserved())
    else:
        memory = cfg.device.memory_gb * 2**30
    micro, _, _ = choose_micro_batch(
        run.shape, run.batch_size, memory, mixed_precision=device == "cuda"
    )
    return micro


class Stepper:
    """One run's optimizer step over micro-batches, with the loss (and its fp32 upcast)
    inside the compiled region when compiling, and out-of-memory back-off: an OOM in a
    forward or backward pass drops the step's partial gradients, halves the micro-batch
    (to the largest divisor of the batch at most half of it) and redoes the same step
    on the same data."""

    def __init__(
        self, model: torch.nn.Module, opt, cfg: Config, device: str, micro: int, batch_size: int
    ):
        self.model, self.opt, self.cfg, self.device = model, opt, cfg, device
        self.micro, self.batch_size = micro, batch_size
        self.backoffs: list[int] = []  # micro-batch sizes given up on OOM
        self.loss_fn = model.loss
        self._counted = {"graphs": 0, "recompiles": 0}
        if cfg.train.compile:
            import torch._dynamo

            torch._dynamo.reset()  # a fresh cache per run: no recompile limit across runs
            self._counted = self._counters()
            self.loss_fn = torch.compile(model.loss, dynamic=False)

    def step(self, batch: torch.Tensor) -> torch.Tensor:
        """Accumulate gradients of the (B, T + 1) batch and take one optimizer step;
        returns the batch's mean loss (a device scalar, not synchronised)."""
        while True:
            try:
                return self._step(batch)
            except OOM_ERRORS:
                self.opt.zero_grad(set_to_none=True)
                smaller = [k for k in divisors_descending(self.batch_size) if k <= self.micro // 2]
                if not smaller:
                    raise
                self.backoffs.append(self.micro)
                self.micro = smaller[0]
                if self.device == "cuda":
                    torch.cuda.empty_cache()

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        parts = batch.split(self.micro)
        total = torch.zeros((), device=batch.device)
        for part in parts:
            with autocast(self.device):
                loss = self.loss_fn(part)
            (loss / len(parts)).backward()
            total += loss.detach()
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total / len(parts)

    @torch.no_grad()
    def evaluate(self, data: TokenData, by_position: bool = False):
        """Mean next-token loss (nats/token) on the sweep's fixed validation tokens, in
        micro-batches; with `by_position`, (mean, the mean at each context position)."""
        self.model.eval()
        total, count = 0.0, 0
        positions = None
        for block in data.val_batches(self.cfg.train.eval_tokens, self.micro):
            batch = _to_device(block, self.device)
            with autocast(self.device):
                loss = self.loss_fn(batch)  # the same mean with or without positions
                if by_position:  # a second forward pass, at the final evaluation only
                    sums = self.model.token_losses(batch).double().sum(dim=0).cpu()
                    positions = sums if positions is None else positions + sums
            n = batch.shape[0] * (batch.shape[1] - 1)
            total += float(loss) * n
            count += n
        self.model.train()
        if not by_position:
            return total / count
        rows = count // (positions.numel())
        return total / count, (positions / rows).tolist()

    @staticmethod
    def _counters() -> dict[str, int]:
        from torch._dynamo.utils import counters

        return {
            "graphs": int(counters["stats"].get("unique_graphs", 0)),
            "recompiles": int(sum(counters["recompiles"].values())),
        }

    def compile_stats(self) -> dict[str, int] | None:
        """Graphs compiled and recompilations during this run (torch._dynamo's process-wide
        counters, less their values when the run started)."""
        if not self.cfg.train.compile:
            return None
        now = self._counters()
        return {k: now[k] - self._counted[k] for k in now}


def measure_cpu_rate(p, budget_s: float = 4.0) -> tuple[float, float, str]:
    """(fixed seconds per step, seconds per FLOP, what was measured) of training steps on
    this CPU: a few real optimizer steps of the plan's smallest and largest model at
    their micro-batches, with device.threads threads; time per step = fixed + per FLOP
    x the step's FLOPs (Appendix F count). A largest model too slow to time within
    `budget_s` is left out and the rate of the smallest model's FLOPs stands for it."""
    cfg = p.config
    if cfg.device.threads:
        torch.set_num_threads(cfg.device.threads)
    by_size = sorted(p.runs, key=lambda r: r.flops_chinchilla / r.steps)
    timed: list[tuple[float, float]] = []
    spent = 0.0
    for run in dict.fromkeys((by_size[0], by_size[-1])):
        step_flops = run.flops_chinchilla / run.steps
        if timed and spent + 4 * step_flops * timed[0][1] / timed[0][0] > budget_s:
            break  # at the smallest model's rate, 4 steps of this one would overrun
        seconds = _time_steps(run, cfg)
        spent += 4 * seconds
        timed.append((step_flops, seconds))
    if len(timed) == 2 and timed[1][0] > timed[0][0] and timed[1][1] > timed[0][1]:
        (f0, s0), (f1, s1) = timed
        per_flop = (s1 - s0) / (f1 - f0)
        fixed = max(s0 - per_flop * f0, 0.0)
    else:
        fixed, per_flop = 0.0, timed[0][1] / timed[0][0]
    what = f"timed on this CPU ({torch.get_num_threads()} thread(s) per run): " + " and ".join(
        f"{s * 1e3:.3g} ms per step at {f:.3g} FLOPs" for f, s in timed
    )
    return fixed, per_flop, what


def _time_steps(run: PlannedRun, cfg: Config, steps: int = 3) -> float:
    """Median seconds of `steps` optimizer steps of `run`'s model on random tokens (after
    one step not timed)."""
    torch.manual_seed(0)
    model = build_model(run.shape)
    opt = _optimizer(model, run.lr, cfg, "cpu")
    micro = initial_micro_batch(run, cfg, "cpu")
    stepper = Stepper(model, opt, cfg, "cpu", micro, run.batch_size)
    batch = torch.randint(0, run.shape.vocab_size, (run.batch_size, run.shape.seq_len + 1))
    stepper.step(batch)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        stepper.step(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _to_device(block: np.ndarray, device: str) -> torch.Tensor:
    """Host array -> device tensor: pinned and asynchronous on CUDA, so the copy of the
    next batch is queued behind the GPU's work instead of waiting for it."""
    t = torch.from_numpy(block)
    if device == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


class Clock:
    """Wall time between synchronised points. On CUDA kernels are queued, so a timer read
    without synchronising measures launches, not work (the wait then lands in a later
    copy, outside the timer). `lap()` synchronises and returns the seconds since the last
    mark; `restart()` begins a new interval after time that belongs to no step."""

    def __init__(self, device: str):
        self.device = device
        self.mark = self._now()

    def _now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        seconds, self.mark = now - self.mark, now
        return seconds

    def restart(self) -> None:
        self.mark = self._now()


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: Path | None, device: str, set_aside: bool = True
) -> dict[str, Any] | None:
    """A run's checkpoint, or None. One that cannot be read (truncated, corrupt, from an
    incompatible version) is set aside as <name>.bad with a warning and the run starts
    over: a bad checkpoint must not fail its run on every rerun (`set_aside` False: left
    where it is, None returned)."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        missing = {"model", "optimizer", "rng", "step", "curve", "timers"} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
        return state
    except Exception as exc:  # torch raises many types for a bad file
        import sys

        if not set_aside:
            return None

        bad = path.with_name(path.name + ".bad")
        path.replace(bad)
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        print(
            f"warning: checkpoint {path} could not be loaded ({type(exc).__name__}: {detail}); "
            f"set aside as {bad.name}, the run starts over",
            file=sys.stderr,
        )
        return None


ProgressFn = Callable[[dict[str, Any]], None]


class RunState:
    """One run in training: model, optimizer, data position, curve and timers, built
    from scratch or restored from a checkpoint (`train_run` drives it)."""

    def __init__(
        self,
        run: PlannedRun,
        cfg: Config,
        data: TokenData,
        device: str,
        checkpoint: Path | None,
        start_from: Path | None,
    ):
        self.t0 = time.perf_counter()
        self.run, self.cfg, self.data, self.device = run, cfg, data, device
        self.checkpoint = checkpoint
        self.tokens_per_step = run.batch_size * run.shape.seq_len
        self.fpt = flops_per_token(run.shape, cfg.grid.n_convention, cfg.grid.flops_convention)
        self.evals = eval_steps(run.steps, cfg.train.evals)
        self.tasks = data.meta.get("tasks") or []
        # 1. model and optimizer, identically initialised for a given seed
        self.seed = cfg.train.seed if run.seed is None else run.seed  # a repeat has its own
        torch.manual_seed(self.seed)
        self.model = build_model(run.shape).to(device)
        self.opt = _optimizer(self.model, run.lr, cfg, device)
        # 2. resume: model, optimizer, step, curve so far, RNG and timers
        self.result = RunResult(run_id=run.run_id, status="ok")
        self.prior = dict.fromkeys(
            ("seconds", "step_seconds", "eval_seconds", "warmup_seconds", "task_seconds"), 0.0
        )
        state = self._restore(start_from)
        r = self.result
        r.step_seconds, r.eval_seconds = self.prior["step_seconds"], self.prior["eval_seconds"]
        r.warmup_seconds, r.task_seconds = self.prior["warmup_seconds"], self.prior["task_seconds"]
        micro = initial_micro_batch(run, cfg, device)
        self.stepper = Stepper(self.model, self.opt, cfg, device, micro, run.batch_size)
        # training losses are summed on the device and read only when logged; a restored
        # state carries those since its last log (a branch point's)
        self.loss_sum = torch.zeros((), device=device)
        self.n_summed = 0
        if state is not None:
            self.loss_sum += state.get("loss_sum", 0.0)
            self.n_summed = state.get("n_summed", 0)
        self.last_ckpt = time.perf_counter()
        self.peak: float | None = None
        self.trackers = None  # chinchilla.tracking.Trackers when tracking is enabled

    def _restore(self, start_from: Path | None) -> dict[str, Any] | None:
        """Load this run's checkpoint, else (a branch) its trunk's state at the branch
        point; sets the start step. Returns the state loaded, or None."""
        run, self.start = self.run, 0
        state = load_checkpoint(self.checkpoint, self.device)
        from_trunk = False
        if state is None and run.trunk is not None:
            state = load_checkpoint(start_from, self.device, set_aside=False)
            if state is None or state["step"] != run.branch_step:
                raise RuntimeError(
                    f"the checkpoint of trunk {run.trunk} at step {run.branch_step} is missing "
                    f"or unreadable ({start_from}); rerun the sweep to train the trunk again"
                )
            from_trunk = True
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"].cpu())  # map_location moved it to the device
            self.start = state["step"]
            self.result.curve = state["curve"]
            self.result.metrics = state.get("metrics", [])
            if not from_trunk:  # the trunk's timers are not the branch's
                self.prior |= state["timers"]
            self.result.resumed_from = self.start
        return state

    def snapshot(self, done: int) -> dict[str, Any]:
        """Everything a resume needs, after `done` steps."""
        r = self.result
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": done,
            "curve": list(r.curve),
            "metrics": list(r.metrics),
            "rng": torch.get_rng_state(),
            "loss_sum": float(self.loss_sum),
            "n_summed": self.n_summed,
            "timers": {
                "seconds": self.prior["seconds"] + time.perf_counter() - self.t0,
                "step_seconds": r.step_seconds,
                "eval_seconds": r.eval_seconds,
                "warmup_seconds": r.warmup_seconds,
                "task_seconds": r.task_seconds,
            },
        }

    def step(self, step: int, batch: torch.Tensor) -> float:
        """One optimizer step at the schedule's rate; returns that rate."""
        run = self.run
        lr = lr_at(step, run.steps, run.lr, self.cfg, warmup=run.warmup, stable=run.is_trunk)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.loss_sum += self.stepper.step(batch)
        self.n_summed += 1
        return lr

    def log(self, done: int, lr: float, on_progress: ProgressFn | None) -> bool:
        """The curve's row after `done` steps: training loss, evaluation and tasks when
        due, progress. False when the run diverged (the row is kept)."""
        r, run, t = self.result, self.run, self.cfg.train
        train_loss = float(self.loss_sum) / self.n_summed
        self.loss_sum.zero_()
        self.n_summed = 0
        tokens = done * self.tokens_per_step
        row = {
            "step": done,
            "tokens": tokens,
            "flops": tokens * self.fpt,
            "train_loss": train_loss,
            "eval_loss": math.nan,
            "lr": lr,
        }
        r.train_loss = train_loss
        r.curve.append(row)
        r.steps_done = done
        if not math.isfinite(train_loss):
            r.status = "diverged"
            return False
        if done in self.evals:
            te = time.perf_counter()
            if t.position_loss and done == run.steps:
                row["eval_loss"], r.loss_by_position = self.stepper.evaluate(
                    self.data, by_position=True
                )
            else:
                row["eval_loss"] = self.stepper.evaluate(self.data)
            r.eval_seconds += time.perf_counter() - te
            r.loss = row["eval_loss"]
            if not math.isfinite(r.loss):
                r.status = "diverged"
                return False
            if self.tasks and not run.is_trunk and (done == run.steps or self.cfg.tasks.every_eval):
                tt = time.perf_counter()
                r.metrics += metric_rows(self.tasks, self.model, self.device, done, tokens)
                r.task_seconds += time.perf_counter() - tt
        if self.trackers:
            self._track(done, row)
        if on_progress is not None:
            on_progress(
                {
                    "run_id": run.run_id,
                    "step": done,
                    "steps": run.steps,
                    "tokens": tokens,
                    "train_loss": train_loss,
                    "eval_loss": row["eval_loss"],
                    "step_seconds": r.step_seconds,
                }
            )
        return True

    def _track(self, done: int, row: dict[str, Any]) -> None:
        """This log's scalars to the trackers: losses, rate, tokens, throughput and MFU
        over this segment's timed steps, and the task metrics scored at this step."""
        r = self.result
        scalars = {
            "loss/train": row["train_loss"],
            "loss/validation": row["eval_loss"],
            "lr": row["lr"],
            "tokens": row["tokens"],
        }
        timed = done - self.start - 1
        seconds = r.step_seconds - self.prior["step_seconds"]
        if timed > 0 and seconds > 0:
            tps = timed * self.tokens_per_step / seconds
            scalars["tokens_per_second"] = tps
            if self.peak:
                scalars["mfu"] = tps * chinchilla_flops_per_token(self.run.shape) / self.peak
        for m in r.metrics:
            if m.get("step") == done:
                scalars[f"tasks/{m['task']}/{m['metric']}"] = m["value"]
        self.trackers.log(done, scalars)

    def checkpoint_if_due(self, done: int) -> None:
        """Save a resumable checkpoint when train.checkpoint_every_s has passed."""
        every = self.cfg.train.checkpoint_every_s
        if self.checkpoint is None or every <= 0 or done >= self.run.steps:
            return
        if time.perf_counter() - self.last_ckpt >= every:
            _save_checkpoint(self.checkpoint, self.snapshot(done))
            self.last_ckpt = time.perf_counter()

    def summary(self, peak: float | None) -> RunResult:
        """Timers of this segment, throughput and MFU (the warm-up step left out)."""
        r, prior = self.result, self.prior
        r.seconds = prior["seconds"] + time.perf_counter() - self.t0
        new_steps = r.step_seconds - prior["step_seconds"]
        new_warmup = r.warmup_seconds - prior["warmup_seconds"]
        r.segment_seconds = (new_steps + new_warmup, r.eval_seconds - prior["eval_seconds"])
        r.micro_batch_size = self.stepper.micro
        r.oom_backoffs = list(self.stepper.backoffs)
        r.compile = self.stepper.compile_stats()
        timed = r.steps_done - self.start - 1  # the warm-up step is not in step_seconds
        if timed > 0 and new_steps > 0:
            r.tokens_per_second = timed * self.tokens_per_step / new_steps
            if peak:
                r.mfu = r.tokens_per_second * chinchilla_flops_per_token(self.run.shape) / peak
        return r


def train_run(
    run: PlannedRun,
    cfg: Config,
    data: TokenData,
    *,
    device: str = "cpu",
    checkpoint: Path | None = None,
    peak: float | None = None,
    on_progress: ProgressFn | None = None,
    branch_points: dict[int, Path] | None = None,
    start_from: Path | None = None,
    track_to: Path | None = None,
) -> RunResult:
    """Train one planned run to its token budget and evaluate it.

    Returns a `RunResult` whose status is "ok", or "diverged" when the training loss
    became NaN/inf (the curve up to there is kept). Exceptions propagate; the sweep
    records them as "failed". Step time is synchronised wall time between logging
    points; the first step of each segment (compilation, allocator warm-up) is timed
    apart as warm-up and left out of tokens/s and MFU.

    Shared trunks: a trunk (`run.branches`) saves its state at each step of
    `branch_points` to the path given there; a branch without a checkpoint of its own
    starts from `start_from`, its trunk's state at its branch point (curve included, so
    the branch's curve continues the trunk's; the trunk's timers are not the branch's).
    """
    # 1-2. model, optimizer, and whatever a checkpoint restores
    s = RunState(run, cfg, data, device, checkpoint, start_from)
    s.peak = peak
    if track_to is not None and cfg.tracking.enabled:
        from chinchilla.tracking import Trackers

        s.trackers = Trackers(cfg, track_to, run, s.start)
    try:
        return _train_loop(s, run, cfg, data, device, on_progress, branch_points)
    finally:
        if s.trackers is not None:
            s.trackers.close()


def _train_loop(s, run, cfg, data, device, on_progress, branch_points) -> RunResult:
    r, bs, seed = s.result, run.batch_size, s.seed
    saves = dict(branch_points or {})
    s.model.train()
    clock = Clock(device)
    batch = _to_device(data.train_batch(s.start, bs, seed), device)
    # 3. the loop
    for step in range(s.start, run.steps):
        lr = s.step(step, batch)
        done = step + 1
        if done < run.steps:  # queue the next batch's copy while the GPU works
            batch = _to_device(data.train_batch(done, bs, seed), device)
        logging = done % cfg.train.log_every == 0 or done in s.evals or done == run.steps
        if step == s.start:  # compilation and allocator warm-up, timed apart
            r.warmup_seconds += clock.lap()
        elif logging:
            r.step_seconds += clock.lap()
        # 4. log, evaluate, detect divergence, checkpoint
        if logging:
            if not s.log(done, lr, on_progress):
                break
            s.checkpoint_if_due(done)
            clock.restart()  # evaluation, logging and checkpoints are not step time
        if done in saves:  # a trunk's branch point: the state its branch starts from
            _save_checkpoint(saves.pop(done), s.snapshot(done))
            clock.restart()
    # 5. summary
    return s.summary(s.peak)


def reference_versions() -> dict[str, str]:
    """Library versions recorded with every run."""
    import sys

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
