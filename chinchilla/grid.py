"""Config -> planned runs with exact accounting and stable ids.

Two designs from Hoffmann et al. 2022:
- isoflop (Approach 2): for each budget C, model sizes spread evenly in log N around
  the expected optimum, each trained on D = C / (FLOPs per token) tokens;
- horizons (Approach 1): for each model size, several cosine cycle lengths spanning
  `horizon_span` in tokens.
Tokens are rounded to whole optimizer steps (batch_size * seq_len tokens each).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from chinchilla.accounting import (
    ModelShape,
    chinchilla_flops_per_token,
    choose_micro_batch,
    count_params,
    flops_per_token,
    flops_per_token_6n,
    largest_divisor_at_most,
    training_memory_bytes,
)
from chinchilla.config import SPEED_ONLY, Config, ShapeSpec
from chinchilla.errors import UserError
from chinchilla.hparams import HparamLaws, load_laws


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    budget: float  # FLOPs under the configured convention (kind horizons: the run's own)
    shape: ModelShape
    n_params: int  # total parameters
    n_params_nonembedding: int  # Kaplan's N: without vocabulary and position embeddings
    n_tokens: int
    steps: int
    batch_size: int
    lr: float
    flops: float  # under the configured convention
    flops_6nd: float  # 6 * N_total * D
    flops_6nd_nonembedding: float  # 6 * N_nonembedding * D
    flops_chinchilla: float  # Appendix F count, attention and embeddings included
    horizon: int | None = None  # kind horizons: index of the cycle length
    # why the run exists: initial (the configured centre), provisional (an adaptive
    # budget not yet re-planned), recentred (around the optimum the trained budgets
    # predict) or extended (added to bracket a budget's minimum)
    planned_by: str = "initial"
    # where lr and batch came from: rule (train.lr_base's size rule or train.lr, and
    # batch_size / batch_rule), grid (a tuning grid's axes) or laws (train.hparams)
    hparams_from: str = "rule"
    seed: int | None = None  # a repeat's seed (init and data order); None: train.seed
    # shared trunks (grid.share_trunks): a branch names its trunk and the step it decays
    # from; a trunk lists (step, branch run id) of its branches; both fix the warm-up
    warmup: int | None = None  # warm-up steps; None: from the run's own steps
    trunk: str | None = None
    branch_step: int | None = None
    branches: tuple[tuple[int, str], ...] = ()
    # the unique training tokens available to the run (data.unique_tokens, or a corpus
    # smaller than the run); None: as many as it trains on
    token_pool: int | None = None

    @property
    def unique_tokens(self) -> int:
        """Distinct training tokens the run sees."""
        return self.n_tokens if self.token_pool is None else min(self.n_tokens, self.token_pool)

    @property
    def epochs(self) -> float:
        return self.n_tokens / self.unique_tokens

    @property
    def is_trunk(self) -> bool:
        return bool(self.branches)

    @property
    def trained_fraction(self) -> float:
        """The part of the run this job trains: a branch only its decay."""
        return 1.0 if self.branch_step is None else (self.steps - self.branch_step) / self.steps

    def row(self) -> dict[str, Any]:
        """Flat record: JSON output and the planned columns of runs.parquet."""
        return {
            "run_id": self.run_id,
            "budget": self.budget,
            "n_params": self.n_params,
            "n_params_nonembedding": self.n_params_nonembedding,
            "n_tokens": self.n_tokens,
            "flops": self.flops,
            "flops_6nd": self.flops_6nd,
            "flops_6nd_nonembedding": self.flops_6nd_nonembedding,
            "flops_chinchilla": self.flops_chinchilla,
            "arch": self.shape.arch,
            "d_model": self.shape.d_model,
            "n_layers": self.shape.n_layers,
            "n_heads": self.shape.n_heads,
            "head_dim": self.shape.head_dim,
            "d_ff": self.shape.d_ff,
            "vocab_size": self.shape.vocab_size,
            "seq_len": self.shape.seq_len,
            "tied_embeddings": self.shape.tied_embeddings,
            "position": self.shape.position,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_size * self.shape.seq_len,
            "steps": self.steps,
            "lr": self.lr,
            "hparams_from": self.hparams_from,
            "horizon": self.horizon,
            "planned_by": self.planned_by,
            "run_seed": self.seed,
            "tokens_per_param": self.n_tokens / self.n_params,
            "trunk": self.trunk,
            "branch_step": self.branch_step,
            "unique_tokens": self.unique_tokens,
            "epochs": self.epochs,
        }


@dataclass
class Plan:
    config: Config
    runs: list[PlannedRun]
    warnings: list[str] = field(default_factory=list)
    # grid.fill curves: every IsoFLOP run of the grid; `runs` then holds those trained
    # (all but each size's longest) and the probes, and the curve law fills the rest
    targets: list[PlannedRun] = field(default_factory=list)
    _memory: dict[str, tuple[int, float, bool]] = field(default_factory=dict, repr=False)
    # (seconds per step fixed, seconds per FLOP of a step) measured on this CPU
    # (`train.measure_cpu_rate`); None: estimates use device.plan_peak_flops
    cpu_rate: tuple[float, float] | None = None

    @property
    def points(self) -> list[PlannedRun]:
        """The runs that are scaling-law points (every run but shared trunks)."""
        return [r for r in self.runs if not r.is_trunk]

    @property
    def total_flops(self) -> float:
        """FLOPs trained (a branch trains only its decay; its trunk the rest)."""
        return sum(r.flops * r.trained_fraction for r in self.runs)

    @property
    def unshared_flops(self) -> float:
        """FLOPs of the same points trained each from scratch (a filled grid: of its
        IsoFLOP runs, each trained)."""
        return sum(r.flops for r in (self.targets or self.points))

    def estimated_seconds(self, run: PlannedRun) -> float:
        """Wall time of one run. With a measured CPU rate: its steps at the time per step
        measured on this machine (a fixed part and a part per FLOP), evaluations
        counted at a third of a training step's cost per token. Otherwise on the
        planner's assumed device: the FLOPs the hardware really does (Appendix F count)
        over device.plan_peak_flops * device.plan_utilization."""
        dev = self.config.device
        work = run.flops_chinchilla * run.trained_fraction
        if self.cpu_rate is None:
            return work / (dev.plan_peak_flops * dev.plan_utilization)
        fixed, per_flop = self.cpu_rate
        steps = run.steps * run.trained_fraction
        step_flops = run.flops_chinchilla / run.steps
        t = self.config.train
        eval_steps = t.evals * t.eval_tokens / (run.batch_size * run.shape.seq_len) / 3
        return (steps + eval_steps) * (fixed + per_flop * step_flops)

    def memory(self, run: PlannedRun) -> tuple[int, float, bool]:
        """(micro-batch, estimated peak bytes, fits) of a run on the configured device:
        train.micro_batch_size when set, else the largest micro-batch whose estimate fits
        device.memory_gb (`accounting.choose_micro_batch`). bf16 autocast is assumed
        unless device.type is cpu. Estimated once per run."""
        if run.run_id not in self._memory:
            self._memory[run.run_id] = self._estimate_memory(run)
        return self._memory[run.run_id]

    def _estimate_memory(self, run: PlannedRun) -> tuple[int, float, bool]:
        dev, t = self.config.device, self.config.train
        mixed = dev.type != "cpu"
        budget = dev.memory_gb * 2**30
        if t.micro_batch_size != "auto":
            micro = largest_divisor_at_most(run.batch_size, t.micro_batch_size)
            need = training_memory_bytes(run.shape, micro, mixed_precision=mixed)
            return micro, need, need <= 0.85 * budget
        return choose_micro_batch(run.shape, run.batch_size, budget, mixed_precision=mixed)

    @property
    def estimated_hours(self) -> float:
        return sum(self.estimated_seconds(r) for r in self.runs) / 3600

    def to_json(self) -> dict[str, Any]:
        g, dev = self.config.grid, self.config.device
        return {
            "name": self.config.name,
            "kind": g.kind,
            "conventions": {
                "n_params": "total parameters, embeddings included",
                "n_params_nonembedding": "without token/position embeddings and untied head",
                "budget_n": g.n_convention,
                "flops": "6*N*D" if g.flops_convention == "6nd" else "Chinchilla Appendix F",
                "flops_units": "FLOPs (forward + backward), whole run",
            },
            "runs": [
                r.row()
                | {
                    "estimated_seconds": self.estimated_seconds(r),
                    "micro_batch_size": self.memory(r)[0],
                    "estimated_peak_memory_gib": self.memory(r)[1] / 2**30,
                }
                for r in self.runs
            ],
            "memory_assumes": {"device_memory_gib": dev.memory_gb, "headroom": 0.85},
            "n_runs": len(self.runs),
            "n_points": len(self.targets or self.points),
            "filled": [r.row() for r in self.targets],
            "total_flops": self.total_flops,
            "unshared_flops": self.unshared_flops,
            "total_flops_chinchilla": sum(
                r.flops_chinchilla * r.trained_fraction for r in self.runs
            ),
            "estimated_hours": self.estimated_hours,
            "estimate_assumes": (
                {"peak_flops": dev.plan_peak_flops, "utilization": dev.plan_utilization}
                if self.cpu_rate is None
                else {
                    "cpu_seconds_per_step": self.cpu_rate[0],
                    "cpu_seconds_per_step_flop": self.cpu_rate[1],
                }
            ),
            "warnings": self.warnings,
        }


# ----------------------------------------------------------------------------- shapes


def _shape(spec: ShapeSpec, cfg: Config) -> ModelShape:
    m = cfg.model
    recurrent = m.arch != "transformer"  # width and depth only: no heads, MLP or positions
    d_ff = spec.d_ff if spec.d_ff is not None else round(m.ffw_ratio * spec.d_model)
    return ModelShape(
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        n_heads=1 if recurrent else spec.n_heads,
        head_dim=spec.d_model if recurrent else spec.kv,
        d_ff=0 if recurrent else d_ff,
        vocab_size=cfg.data.resolved_vocab_size,
        seq_len=m.seq_len,
        tied_embeddings=m.tied_embeddings,
        position="none" if recurrent else m.position,
        arch=m.arch,
    )


def _aspect_candidates(cfg: Config, n_cap: float = float("inf")) -> list[ShapeSpec]:
    """Shapes with d_model a multiple of head_dim and d_model / n_layers near the ratio.

    Widths within a factor `aspect_tolerance` of aspect_ratio * n_layers are all
    candidates, so that sizes can be matched finely; `_pick` prefers the ratio closest
    to the target.
    """
    m = cfg.model
    out = []
    for n_layers in range(1, 257):
        centre = m.aspect_ratio * n_layers
        lo = max(1, math.ceil(centre / m.aspect_tolerance / m.head_dim))
        hi = max(lo, math.floor(centre * m.aspect_tolerance / m.head_dim))
        specs = [
            ShapeSpec(d_model=k * m.head_dim, n_layers=n_layers, n_heads=k, head_dim=m.head_dim)
            for k in range(lo, hi + 1)
        ]
        out += specs
        if count_params(_shape(specs[0], cfg)).nonembedding > n_cap:
            break  # deeper models only grow: no target can use them
    return out


def _table_candidates(cfg: Config) -> list[ShapeSpec]:
    path = cfg.resolve_path(cfg.model.shapes_file or "")
    if not path.is_file():
        raise UserError(f"config: model.shapes_file: file not found: {path}")
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            try:
                d_ff = row.get("d_ff") or row.get("ffw_size")
                head = row.get("head_dim") or row.get("kv_size")
                spec = ShapeSpec(
                    d_model=int(row["d_model"]),
                    n_layers=int(row["n_layers"]),
                    n_heads=int(row["n_heads"]),
                    d_ff=int(d_ff) if d_ff else None,
                    head_dim=int(head) if head else None,
                )
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    f"config: model.shapes_file: row {i + 2} of {path} needs integer "
                    "d_model, n_layers, n_heads"
                ) from None
            spec.check(f"model.shapes_file row {i + 2}")
            out.append(spec)
    if not out:
        raise UserError(f"config: model.shapes_file: no shapes in {path}")
    return out


def candidate_shapes(cfg: Config, n_cap: float = float("inf")) -> list[ModelShape]:
    """Shapes the family rule may choose from; `n_cap` bounds the aspect family's search."""
    if cfg.model.family == "explicit":
        specs = list(cfg.model.sizes)
    elif cfg.model.family == "aspect":
        specs = _aspect_candidates(cfg, n_cap)
    else:
        specs = _table_candidates(cfg)
    return [_shape(s, cfg) for s in specs]


def largest_target(cfg: Config) -> float:
    """The largest N the plan may aim at: what bounds the search for candidate shapes."""
    g = cfg.grid
    if g.kind == "horizons":
        return max(g.model_sizes, default=float("inf"))
    return max(expected_optimal_n(c, cfg) for c in g.budgets) * math.sqrt(g.size_span)


def n_of(shape: ModelShape, n_convention: str) -> int:
    """A shape's N under `n_convention`: total or non-embedding parameters."""
    counts = count_params(shape)
    return counts.total if n_convention == "total" else counts.nonembedding


def _pick(candidates: list[ModelShape], target_n: float, cfg: Config) -> ModelShape:
    """The candidate nearest to `target_n` in log N, ties broken towards the aspect ratio."""
    aspect = cfg.model.aspect_ratio

    def score(s: ModelShape) -> float:
        n = max(n_of(s, cfg.grid.n_convention), 1)
        return abs(math.log(n / target_n)) + 0.05 * abs(math.log(s.d_model / s.n_layers / aspect))

    return min(candidates, key=score)


def expected_optimal_n(budget: float, cfg: Config) -> float:
    """N with D = tokens_per_param * N spending the budget at 6 FLOPs per parameter-token."""
    return math.sqrt(budget / (6.0 * cfg.grid.tokens_per_param))


def sizes_for_target(targets: list[float], cfg: Config, candidates: list[ModelShape]):
    """The candidate nearest each target N (`_pick`), each shape once, in target order."""
    chosen: list[ModelShape] = []
    for t in targets:
        s = _pick(candidates, t, cfg)
        if s not in chosen:
            chosen.append(s)
    return chosen


def _ladder(centre: float, first_budget: float, cfg: Config) -> list[float]:
    """grid.size_ladder: the `sizes_per_budget` rungs nearest `centre` of one geometric
    ladder shared by every budget (rung ratio size_span^(1 / (k - 1)), anchored at the
    smallest budget's centre), so sizes repeat across budgets and can share trunks."""
    g = cfg.grid
    k = g.sizes_per_budget
    if k == 1:
        return [centre]
    ratio = g.size_span ** (1 / (k - 1))
    anchor = expected_optimal_n(first_budget, cfg)
    mid = round(math.log(centre / anchor) / math.log(ratio))
    low = mid - (k - 1) // 2
    return [anchor * ratio ** (low + i) for i in range(k)]


def log_spread(centre: float, span: float, k: int) -> list[float]:
    """k values spread evenly in log over a factor `span`, centred (geometrically) on
    `centre`."""
    if k == 1:
        return [centre]
    return [centre * span ** (i / (k - 1) - 0.5) for i in range(k)]


# ----------------------------------------------------------------------------- runs


def learning_rate(n_params: int, cfg: Config) -> float:
    """Peak LR: the configured value, or the size rule lr_base * (N / 1e6) ** -lr_exponent."""
    t = cfg.train
    if t.lr is not None:
        return t.lr
    lr = t.lr_base * (n_params / 1e6) ** -t.lr_exponent
    return float(min(t.lr_max, max(t.lr_min, lr)))


# The plan warns below these (stated in the warning): a run shorter than FEW_STEPS is
# mostly warm-up and schedule ends; a warm-up of fewer than FEW_WARMUP steps is a jump.
FEW_STEPS = 100
FEW_WARMUP = 10


def warmup_steps(steps: int, cfg: Config, fixed: int | None = None) -> int:
    """Linear warm-up steps of a run (the schedule of `chinchilla.train.lr_at`); `fixed`:
    a shared trunk's warm-up, which its branches keep."""
    if fixed is not None:
        return fixed
    t = cfg.train
    warmup = max(1, round(t.warmup_frac * steps)) if t.warmup_frac > 0 else 0
    return max(warmup, min(t.warmup_min_steps, steps // 2))


def deepseek_batch_tokens(compute: float) -> float:
    """Compute-optimal batch in tokens, B_opt = 0.2920 C^0.3271 (DeepSeek-AI 2024,
    "DeepSeek LLM: Scaling Open-Source Language Models with Longtermism", sec. 3.1,
    eq. 1; C in FLOPs)."""
    return 0.2920 * compute**0.3271


def batch_size_for(
    compute: float, n_tokens: float, seq_len: int, cfg: Config, batch: int | None = None
) -> int:
    """Sequences per step of a run: `batch` when a tuning grid or tuned laws chose it,
    else train.batch_size, or under batch_rule deepseek the power of two nearest
    B_opt(C) / seq_len (at most batch_size); then halved until the run takes
    train.min_steps steps."""
    t = cfg.train
    if batch is None:
        batch = t.batch_size
        if t.batch_rule == "deepseek":
            seqs = max(1.0, deepseek_batch_tokens(compute) / seq_len)
            batch = min(t.batch_size, 2 ** round(math.log2(seqs)))
    while batch > 1 and n_tokens / (batch * seq_len) < t.min_steps:
        batch //= 2
    return batch


def run_id(
    shape: ModelShape,
    n_tokens: int,
    lr: float,
    cfg: Config,
    seed: int | None = None,
    warmup: int | None = None,
    batch: int | None = None,
) -> str:
    """Stable hash of everything that determines a run's result (`seed`: a repeat's
    own seed, when it is not train.seed; `warmup`: a shared trunk's warm-up; `batch`:
    a batch set by a tuning grid or tuned laws rather than the train section)."""
    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in SPEED_ONLY}
    if train.get("hparams") is None:
        train.pop("hparams", None)  # ids of sweeps from before tuned laws stay the same
    payload = {
        "shape": shape.as_dict(),
        "n_tokens": n_tokens,
        "lr": round(lr, 12),
        "train": train,
        "data": cfg.data_identity(),
    }
    if seed is not None:
        payload["seed"] = seed
    if warmup is not None:
        payload["warmup"] = warmup
    if batch is not None:
        payload["batch"] = batch
    blob = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tuned_laws(cfg: Config) -> HparamLaws | None:
    """The laws of train.hparams (read once per file version), checked against the
    grid's FLOP convention; None when unset."""
    if cfg.train.hparams is None:
        return None
    path = cfg.resolve_path(cfg.train.hparams)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    laws = _read_laws(str(path), stamp)
    conv = laws.flops_convention
    if conv is not None and conv != cfg.grid.flops_convention:
        raise UserError(
            f"train.hparams: the laws in {laws.path} are in C as {conv} FLOPs, this grid's "
            f"budgets as {cfg.grid.flops_convention} (grid.flops_convention)"
        )
    return laws


@functools.lru_cache(maxsize=8)
def _read_laws(path: str, stamp: int | None) -> HparamLaws:
    return load_laws(path)


def _make_run(
    shape: ModelShape,
    n_tokens_wanted: float,
    budget: float | None,
    cfg: Config,
    horizon: int | None = None,
    setting: tuple[float, int] | None = None,
) -> PlannedRun:
    """One run; `setting`: a tuning grid's (peak lr, batch in sequences)."""
    g = cfg.grid
    counts = count_params(shape)
    compute = budget if budget is not None else 6.0 * counts.total * n_tokens_wanted
    laws = tuned_laws(cfg)
    lr, batch, source = learning_rate(counts.total, cfg), None, "rule"
    if setting is not None:
        (lr, batch), source = setting, "grid"
    elif laws is not None:
        source = "laws"
        if laws.lr is not None:
            lr = laws.lr(compute)
        if laws.batch is not None:
            batch = max(1, round(laws.batch(compute) / shape.seq_len))
    batch = batch_size_for(compute, n_tokens_wanted, shape.seq_len, cfg, batch)
    tokens_per_step = batch * shape.seq_len
    steps = max(1, round(n_tokens_wanted / tokens_per_step))
    n_tokens = steps * tokens_per_step
    flops = flops_per_token(shape, g.n_convention, g.flops_convention) * n_tokens
    return PlannedRun(
        run_id=run_id(shape, n_tokens, lr, cfg, batch=batch if source != "rule" else None),
        budget=budget if budget is not None else flops,
        shape=shape,
        n_params=counts.total,
        n_params_nonembedding=counts.nonembedding,
        n_tokens=n_tokens,
        steps=steps,
        batch_size=batch,
        lr=lr,
        flops=flops,
        flops_6nd=flops_per_token_6n(counts.total) * n_tokens,
        flops_6nd_nonembedding=flops_per_token_6n(counts.nonembedding) * n_tokens,
        flops_chinchilla=chinchilla_flops_per_token(shape) * n_tokens,
        horizon=horizon,
        hparams_from=source,
        token_pool=None
        if cfg.data.unique_tokens is None
        else cfg.data.unique_tokens // shape.seq_len * shape.seq_len,
    )


def _isoflop_runs(cfg: Config, candidates: list[ModelShape], warnings: list[str]):
    g = cfg.grid
    for i, budget in enumerate(sorted(g.budgets)):
        if cfg.model.family == "explicit":
            shapes = candidates
        else:
            centre = expected_optimal_n(budget, cfg)
            targets = (
                _ladder(centre, min(g.budgets), cfg)
                if g.size_ladder
                else log_spread(centre, g.size_span, g.sizes_per_budget)
            )
            shapes = sizes_for_target(targets, cfg, candidates)
            if len(shapes) < g.sizes_per_budget:
                warnings.append(
                    f"budget {budget:.3g}: only {len(shapes)} distinct shapes of the "
                    f"{g.sizes_per_budget} asked (candidate shapes are too coarse here)"
                )
        why = "provisional" if g.adaptive and i > 0 else "initial"
        yield from with_repeats(list(budget_runs(cfg, shapes, budget, warnings, why)), cfg)


def with_repeats(runs: list[PlannedRun], cfg: Config) -> list[PlannedRun]:
    """A budget's runs and `grid.repeats` copies of its middle size with seeds
    train.seed + 1, + 2, ...: the same run but for initialisation and data order, to
    measure run-to-run noise next to the profile's depth."""
    if not cfg.grid.repeats or not runs:
        return runs
    middle = sorted(runs, key=lambda r: (r.n_params, r.lr, r.batch_size))[len(runs) // 2]
    extra = []
    for j in range(1, cfg.grid.repeats + 1):
        seed = cfg.train.seed + j
        rid = run_id(
            middle.shape, middle.n_tokens, middle.lr, cfg, seed=seed, batch=id_batch(middle)
        )
        extra.append(dataclasses.replace(middle, run_id=rid, seed=seed, planned_by="repeat"))
    return runs + extra


def id_batch(run: PlannedRun) -> int | None:
    """The batch a run's id names: one a tuning grid or tuned laws set (the train
    section's own batch is in the id through the config)."""
    return None if run.hparams_from == "rule" else run.batch_size


def budget_runs(
    cfg: Config,
    shapes: list[ModelShape],
    budget: float,
    warnings: list[str],
    planned_by: str,
    settings: list[tuple[float, int]] | None = None,
):
    """The runs of one IsoFLOP budget for these shapes (D = budget / FLOPs per token),
    smallest first, each under every (peak lr, batch) of `settings` (a tuning grid;
    None: the train section's); a run whose whole steps miss the budget is dropped with
    a warning."""
    g = cfg.grid
    for shape in sorted(shapes, key=lambda s: count_params(s).total):
        fpt = flops_per_token(shape, g.n_convention, g.flops_convention)
        for setting in [None] if settings is None else settings:
            run = _make_run(shape, budget / fpt, budget, cfg, setting=setting)
            miss = abs(run.flops - budget) / budget
            if miss > g.budget_tolerance:
                warnings.append(
                    f"budget {budget:.3g}: dropped d_model={shape.d_model} "
                    f"n_layers={shape.n_layers} (N={run.n_params:,})"
                    + (f" at lr {run.lr:.3g}, batch {run.batch_size}" if setting else "")
                    + f": {run.steps} whole steps miss the budget by {miss:.1%} "
                    f"(> {g.budget_tolerance:.0%})"
                )
                continue
            yield dataclasses.replace(run, planned_by=planned_by)


def tuning_settings(cfg: Config) -> list[tuple[float, int]]:
    """Kind hparams: every (peak lr, batch in sequences) of the grid's axes."""
    batches = cfg.grid.batches or (cfg.train.batch_size,)
    return [(lr, b) for b in sorted(batches) for lr in sorted(cfg.grid.lrs)]


def tuning_shapes(budget: float, cfg: Config, candidates: list[ModelShape]) -> list[ModelShape]:
    """Kind hparams: the expected compute-optimal size at this budget, or
    `grid.tune_sizes` sizes spread over `grid.size_span` around it."""
    g = cfg.grid
    centre = expected_optimal_n(budget, cfg)
    return sizes_for_target(log_spread(centre, g.size_span, g.tune_sizes), cfg, candidates)


def _hparam_runs(cfg: Config, candidates: list[ModelShape], warnings: list[str]):
    g = cfg.grid
    for budget in sorted(g.budgets):
        shapes = (
            candidates if cfg.model.family == "explicit" else tuning_shapes(budget, cfg, candidates)
        )
        runs = list(budget_runs(cfg, shapes, budget, warnings, "initial", tuning_settings(cfg)))
        yield from with_repeats(runs, cfg)


def _horizon_runs(cfg: Config, candidates: list[ModelShape], warnings: list[str]):
    g = cfg.grid
    if cfg.model.family == "explicit":
        shapes = candidates
    else:
        if not g.model_sizes:
            raise UserError("config: grid.model_sizes: kind 'horizons' needs model sizes")
        shapes = sizes_for_target(list(g.model_sizes), cfg, candidates)
    for shape in sorted(shapes, key=lambda s: count_params(s).total):
        n = n_of(shape, g.n_convention)
        for j, tokens in enumerate(log_spread(g.tokens_per_param * n, g.horizon_span, g.horizons)):
            yield _make_run(shape, tokens, None, cfg, horizon=j)


def resized(run: PlannedRun, steps: int, **changes) -> PlannedRun:
    """`run` trained for `steps` optimizer steps instead (its batch, shape and rate):
    tokens, FLOPs under every convention and the budget (its own FLOPs) scaled to match."""
    tokens = steps * run.batch_size * run.shape.seq_len
    scale = tokens / run.n_tokens
    return dataclasses.replace(
        run,
        budget=run.flops * scale,
        n_tokens=tokens,
        steps=steps,
        flops=run.flops * scale,
        flops_6nd=run.flops_6nd * scale,
        flops_6nd_nonembedding=run.flops_6nd_nonembedding * scale,
        flops_chinchilla=run.flops_chinchilla * scale,
        **changes,
    )


def decay_start(steps: int, warmup: int, cfg: Config) -> int:
    """First step of a WSD run's decay (`chinchilla.train.lr_at`): its branch point."""
    return max(warmup, steps - max(1, round(cfg.train.decay_frac * steps)))


def share_trunks(runs: list[PlannedRun], cfg: Config) -> list[PlannedRun]:
    """Group runs of one shape, batch, learning rate and seed; a group of two or more
    gets a trunk (warm-up, then the peak rate, to the latest decay start among them)
    and its runs become branches decaying from the trunk's checkpoints. The group's
    warm-up is the one its shortest run would have, so every branch keeps it."""
    groups: dict[str, list[PlannedRun]] = {}
    for r in runs:
        key = json.dumps([r.shape.as_dict(), r.batch_size, round(r.lr, 12), r.seed], sort_keys=True)
        groups.setdefault(key, []).append(r)
    out: list[PlannedRun] = []
    for members in groups.values():
        if len(members) < 2:
            out += members
            continue
        warmup = warmup_steps(min(r.steps for r in members), cfg)
        starts = [decay_start(r.steps, warmup, cfg) for r in members]
        steps = max(starts)  # the trunk's: the latest branch point
        first = members[0]
        payload = {
            "trunk_of": run_id(
                first.shape, 0, first.lr, cfg, seed=first.seed, batch=id_batch(first)
            ),
            "batch": first.batch_size,
            "warmup": warmup,
            "steps": steps,
        }
        tid = "t" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:11]
        branches = []
        for r, start in zip(members, starts, strict=True):
            rid = run_id(
                r.shape, r.n_tokens, r.lr, cfg, seed=r.seed, warmup=warmup, batch=id_batch(r)
            )
            branches.append(
                dataclasses.replace(r, run_id=rid, warmup=warmup, trunk=tid, branch_step=start)
            )
        trunk = resized(
            first,
            steps,
            run_id=tid,
            horizon=None,
            planned_by="trunk",
            warmup=warmup,
            branches=tuple(sorted((b.branch_step, b.run_id) for b in branches)),
        )
        out += [trunk, *branches]
    return out


def fill_runs(targets: list[PlannedRun], cfg: Config) -> list[PlannedRun]:
    """Grid fill curves: the runs trained. Per model size (shape, batch and learning
    rate) of the IsoFLOP runs: every run but those of its longest horizon (which the
    curve law fills); a size with one horizon trains a probe of grid.probe_fraction of
    its steps instead."""
    groups: dict[str, list[PlannedRun]] = {}
    for r in targets:
        key = json.dumps([r.shape.as_dict(), r.batch_size, round(r.lr, 12)], sort_keys=True)
        groups.setdefault(key, []).append(r)
    out = []
    for members in groups.values():
        longest = max(r.steps for r in members)
        if any(r.steps < longest for r in members):
            out += [r for r in members if r.steps < longest]
            continue
        first = min(members, key=lambda r: r.seed or 0)
        steps = max(1, round(cfg.grid.probe_fraction * longest))
        tokens = steps * first.batch_size * first.shape.seq_len
        rid = run_id(first.shape, tokens, first.lr, cfg, seed=first.seed, batch=id_batch(first))
        out.append(resized(first, steps, run_id=rid, planned_by="probe"))
    return sorted(out, key=lambda r: (r.budget, r.n_params))


def plan(cfg: Config) -> Plan:
    """Lay out every run of the experiment, with exact parameter and FLOP counts."""
    warnings: list[str] = []
    candidates = candidate_shapes(cfg, n_cap=4 * largest_target(cfg))
    make = {"isoflop": _isoflop_runs, "horizons": _horizon_runs, "hparams": _hparam_runs}[
        cfg.grid.kind
    ]
    runs = list(make(cfg, candidates, warnings))
    seen: dict[str, PlannedRun] = {}
    for r in runs:
        if r.run_id in seen:  # two budgets that round to one run: train it once
            warnings.append(
                f"run {r.run_id} planned twice (budgets {seen[r.run_id].budget:.3g}"
                f" and {r.budget:.3g}); kept once"
            )
            continue
        seen[r.run_id] = r
    if not seen:
        raise UserError(
            "config: grid: no run fits the budgets (see warnings: " + "; ".join(warnings[:2]) + ")"
        )
    runs, targets = list(seen.values()), []
    if cfg.grid.share_trunks:
        runs = share_trunks(runs, cfg)
    if cfg.grid.fill == "curves":
        runs, targets = fill_runs(runs, cfg), runs
    p = Plan(config=cfg, runs=runs, warnings=warnings, targets=targets)
    laws = tuned_laws(cfg)
    if laws is not None:
        far = max(
            max(law.extrapolation(r.budget) for r in p.runs)
            for law in (laws.lr, laws.batch)
            if law is not None
        )
        if far > 1.0:
            warnings.append(
                f"train.hparams: some runs' budgets lie outside the budgets the laws were "
                f"tuned at (up to {far:.3g}x beyond): their lr and batch are extrapolated"
            )
    short = [r for r in p.runs if r.steps < cfg.train.min_steps]
    if short:
        warnings.append(
            f"{len(short)} run(s) take fewer than train.min_steps = {cfg.train.min_steps} "
            f"steps even at one sequence per step (fewest: {min(r.steps for r in short)})"
        )
    few = [r for r in p.runs if r.steps < FEW_STEPS]
    if few:
        warnings.append(
            f"{len(few)} run(s) take fewer than {FEW_STEPS} optimizer steps (fewest: "
            f"{min(r.steps for r in few)}): such a run is mostly warm-up and schedule ends, "
            "and its loss says little about its size; set train.min_steps or a smaller "
            "train.batch_size"
        )
    cold = [r for r in p.runs if warmup_steps(r.steps, cfg) < FEW_WARMUP]
    if cold:
        warnings.append(
            f"{len(cold)} run(s) warm up for fewer than {FEW_WARMUP} steps (fewest: "
            f"{min(warmup_steps(r.steps, cfg) for r in cold)}); set train.warmup_min_steps"
        )
    for r in p.runs:
        micro, need, fits = p.memory(r)
        if not fits:
            warnings.append(
                f"run {r.run_id} ({r.n_params / 1e6:.3g}M parameters): micro-batch {micro} "
                f"needs an estimated {need / 2**30:.1f} GiB, over 85% of device.memory_gb "
                f"{cfg.device.memory_gb:g}"
            )
    return p
