"""YAML -> frozen dataclasses, `--set` overrides and validation.

Every section is a frozen dataclass whose fields are documented where they are
declared; the YAML files in `configs/` mirror them key for key. Loading checks
types field by field (PyYAML reads `3e-4` as a string, so numbers are coerced),
rejects unknown keys, and each section validates its values in `__post_init__`.
Every problem is a `UserError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from chinchilla.errors import UserError


def _at_least(section: str, obj: Any, **minimum: float) -> None:
    """Each named field of `obj` is at least its minimum, else one line naming it."""
    for name, low in minimum.items():
        value = getattr(obj, name)
        if value < low:
            _fail(f"{section}.{name}", f"must be >= {low}, got {value}")


def _fail(key: str, problem: str) -> typing.NoReturn:
    raise UserError(f"config: {key}: {problem}")


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ShapeSpec:
    """One explicit model shape."""

    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None  # MLP hidden width; None = 4 * d_model
    head_dim: int | None = None  # per-head width; None = d_model / n_heads

    def check(self, key: str) -> None:
        """Validate, naming the shape by `key` (e.g. model.sizes[2])."""
        for name in ("d_model", "n_layers", "n_heads"):
            if getattr(self, name) < 1:
                _fail(f"{key}.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.head_dim is None and self.d_model % self.n_heads:
            _fail(f"{key}.n_heads", f"{self.n_heads} heads do not divide d_model {self.d_model}")
        if self.d_ff is not None and self.d_ff < 1:
            _fail(f"{key}.d_ff", f"must be >= 1, got {self.d_ff}")
        if self.head_dim is not None and self.head_dim < 1:
            _fail(f"{key}.head_dim", f"must be >= 1, got {self.head_dim}")

    @property
    def ffw(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def kv(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads


@dataclass(frozen=True)
class ModelConfig:
    """How model shapes are chosen, and what every model shares."""

    arch: Literal["transformer", "lstm", "gru", "rnn"] = "transformer"
    """transformer: the GPT-2-style decoder; lstm / gru / rnn: PyTorch's fused nn.LSTM /
    nn.GRU / nn.RNN (tanh) stacked n_layers deep at width d_model, no heads, MLP or
    position embedding (head_dim is then only the width step of family aspect)."""
    family: Literal["explicit", "aspect", "table"] = "aspect"
    """explicit: the shapes in `sizes`; aspect: shapes generated with a fixed
    d_model / n_layers ratio; table: the nearest rows of `shapes_file`."""
    sizes: tuple[ShapeSpec, ...] = ()
    """The shapes of family `explicit`, used for every budget."""
    aspect_tolerance: float = 2.0
    """Family `aspect`: widths within this factor of aspect_ratio * n_layers are
    candidates (finer size matching, wider spread of ratios)."""
    aspect_ratio: float = 32.0
    """Family `aspect`: d_model / n_layers (Kaplan et al. found a broad optimum near 50-100
    at large scale; small models do well nearer 16-32)."""
    head_dim: int = 64
    """Family `aspect`: per-head width; d_model is a multiple of it."""
    ffw_ratio: float = 4.0
    """Families `aspect` and `table` without d_ff: d_ff = ffw_ratio * d_model."""
    shapes_file: str | None = None
    """Family `table`: CSV with d_model, n_layers, n_heads and optional ffw_size/d_ff and
    kv_size/head_dim columns (Chinchilla's Table A9 has this layout). Relative paths are
    resolved from the config file's folder."""
    seq_len: int = 128
    """Tokens per training sequence (context length)."""
    tied_embeddings: bool = True
    """Share the token embedding with the output head."""
    position: Literal["learned", "rotary"] = "learned"
    """Learned absolute position embeddings (GPT-2) or rotary (RoPE, no parameters)."""

    def __post_init__(self) -> None:
        for i, shape in enumerate(self.sizes):
            shape.check(f"model.sizes[{i}]")
            if self.position == "rotary" and shape.kv % 2:
                _fail(f"model.sizes[{i}].head_dim", "rotary positions need an even head width")
        if self.family == "explicit" and not self.sizes:
            _fail("model.sizes", "family 'explicit' needs at least one size")
        if self.family == "table" and not self.shapes_file:
            _fail("model.shapes_file", "family 'table' needs a shapes_file")
        if not self.aspect_tolerance >= 1:
            _fail("model.aspect_tolerance", f"must be >= 1, got {self.aspect_tolerance}")
        if self.aspect_ratio <= 0:
            _fail("model.aspect_ratio", f"must be > 0, got {self.aspect_ratio}")
        if self.head_dim < 1:
            _fail("model.head_dim", f"must be >= 1, got {self.head_dim}")
        if self.ffw_ratio <= 0:
            _fail("model.ffw_ratio", f"must be > 0, got {self.ffw_ratio}")
        if self.seq_len < 2:
            _fail("model.seq_len", f"must be >= 2, got {self.seq_len}")
        if self.position == "rotary" and self.family == "aspect" and self.head_dim % 2:
            _fail("model.head_dim", "rotary positions need an even head_dim")


@dataclass(frozen=True)
class GridConfig:
    """Which runs to plan."""

    kind: Literal["isoflop", "horizons", "hparams"] = "isoflop"
    """isoflop: budgets x model sizes, D = C / FLOPs per token (Approach 2);
    horizons: model sizes x cosine cycle lengths (Approach 1); hparams: a tuning grid,
    budgets x peak learning rates (`lrs`) x batches (`batches`) at the expected
    compute-optimal size (`tune_sizes` sizes around it), for `chinchilla tune`."""
    budgets: tuple[float, ...] = ()
    """Kinds isoflop and hparams: compute budgets C in FLOPs, under `flops_convention`."""
    lrs: tuple[float, ...] = ()
    """Kind hparams: the peak learning rates tried at every budget (AdamW, the
    schedule's maximum); spread them evenly in log, e.g. factors of 2."""
    batches: tuple[int, ...] = ()
    """Kind hparams: the batches tried at every budget, in sequences per optimizer step
    (tokens = sequences x model.seq_len); empty: train.batch_size alone."""
    tune_sizes: int = 1
    """Kind hparams: model sizes per budget, spread over `size_span` around the expected
    compute-optimal N (1: that size alone); with several, `chinchilla tune` also fits
    the laws in N."""
    sizes_per_budget: int = 5
    """Kind isoflop with a generated family: model sizes per budget."""
    size_span: float = 8.0
    """Kind isoflop with a generated family: largest / smallest N at each budget, spread
    evenly in log N around the expected optimum."""
    tokens_per_param: float = 20.0
    """The expected compute-optimal D / N, used to centre sizes on each budget
    (Chinchilla: about 20) and, for kind horizons, the middle horizon."""
    model_sizes: tuple[float, ...] = ()
    """Kind horizons with a generated family: target parameter counts (`n_convention`)."""
    horizons: int = 4
    """Kind horizons: cosine cycle lengths per model size (Chinchilla: 4)."""
    horizon_span: float = 16.0
    """Kind horizons: longest / shortest token count per size (Chinchilla: 16)."""
    n_convention: Literal["total", "nonembedding"] = "total"
    """Which parameter count N means: all parameters (Chinchilla) or without token,
    position and output embeddings (Kaplan)."""
    flops_convention: Literal["6nd", "chinchilla"] = "6nd"
    """Which FLOP count defines a budget: 6 * N * D with N under `n_convention`, or
    Chinchilla's Appendix F count (attention and embeddings included)."""
    budget_tolerance: float = 0.02
    """A planned run's FLOPs may differ from its budget by at most this fraction
    (tokens round to whole optimizer steps)."""
    repeats: int = 0
    """Kind isoflop: train this many extra copies of each budget's middle size with seeds
    train.seed + 1, + 2, ... (initialisation and data order; the synthetic language
    itself stays), so the fit can report run-to-run noise next to each profile's depth."""
    adaptive: bool = False
    """Kind isoflop, generated family: train budgets in ascending order and place each
    budget's sizes around the optimum predicted by the budgets already trained; extend a
    budget whose minimum is not bracketed (see chinchilla/adaptive.py)."""
    adaptive_extra: int = 6
    """Adaptive: at most this many extra sizes per budget to bracket its minimum (the
    first budget, centred on a guess, may need them all, and is the cheapest; later ones,
    centred on a prediction, rarely need any)."""

    size_ladder: bool = False
    """Kind isoflop, generated family: take each budget's sizes from one geometric ladder
    shared by all budgets (rung ratio size_span^(1 / (sizes_per_budget - 1))) instead of
    a spread centred on each budget, so sizes repeat across budgets (and share trunks)."""
    share_trunks: bool = False
    """With train.schedule wsd: runs of one shape, batch, learning rate and seed share
    one warmup-stable trunk; each run is a branch that decays from the trunk's
    checkpoint at its own decay start (Hägele et al. 2024). An IsoFLOP grid shares
    where sizes repeat across budgets (the generated families reuse their shapes)."""

    fill: Literal["none", "curves"] = "none"
    """Kind isoflop: `curves` trains every run of the grid but each model size's
    longest, and `chinchilla fit` fills those from the loss-curve law fitted on the
    size's shorter runs (chinchilla/fit/fill.py), the law's prediction error, measured
    inside the sweep, carried into the intervals. A size with one run gets one shorter
    probe (`probe_fraction`) in its place. The trained runs are the full grid's own (the
    same ids): a later sweep of the grid with fill none (and --force, the config having
    changed) trains only the rest."""
    probe_fraction: float = 0.5
    """Fill curves: a model size with one run in the grid trains a probe of this share
    of its steps (under the same schedule rule), from which that run is predicted."""

    def __post_init__(self) -> None:
        if self.kind in ("isoflop", "hparams") and not self.budgets:
            _fail("grid.budgets", f"kind '{self.kind}' needs at least one budget")
        if self.kind == "hparams" and not self.lrs:
            _fail("grid.lrs", "kind 'hparams' needs the peak learning rates to try")
        for lr in self.lrs:
            if not lr > 0:
                _fail("grid.lrs", f"learning rates must be > 0, got {lr:g}")
        for b in self.batches:
            if b < 1:
                _fail("grid.batches", f"batches must be >= 1 sequence, got {b}")
        if len(set(self.lrs)) != len(self.lrs) or len(set(self.batches)) != len(self.batches):
            _fail("grid.lrs", "learning rates and batches must not repeat")
        if (self.lrs or self.batches) and self.kind != "hparams":
            _fail("grid.lrs", "lrs and batches are the axes of a tuning grid (grid.kind: hparams)")
        for c in self.budgets:
            if not c > 0:
                _fail("grid.budgets", f"budgets must be > 0 FLOPs, got {c:g}")
        if len(set(self.budgets)) != len(self.budgets):
            _fail("grid.budgets", "budgets repeat")
        for n in self.model_sizes:
            if not n > 0:
                _fail("grid.model_sizes", f"sizes must be > 0 parameters, got {n:g}")
        _at_least(
            "grid",
            self,
            sizes_per_budget=1,
            size_span=1,
            horizons=1,
            horizon_span=1,
            repeats=0,
            adaptive_extra=0,
            tune_sizes=1,
        )
        if self.tokens_per_param <= 0:
            _fail("grid.tokens_per_param", f"must be > 0, got {self.tokens_per_param}")
        if self.adaptive and self.kind == "horizons":
            _fail("grid.adaptive", "adaptive grids are IsoFLOP or tuning grids (grid.kind)")
        if self.size_ladder and self.kind != "isoflop":
            _fail("grid.size_ladder", "a ladder of sizes across budgets is for kind isoflop")
        if self.adaptive and self.share_trunks:
            _fail("grid.share_trunks", "not with grid.adaptive (its budgets are planned late)")
        if not 0 < self.budget_tolerance < 1:
            _fail("grid.budget_tolerance", f"must be in (0, 1), got {self.budget_tolerance}")
        if self.fill == "curves":
            if self.kind != "isoflop":
                _fail("grid.fill", "curves fill the points of an IsoFLOP grid (grid.kind: isoflop)")
            if self.adaptive:
                _fail("grid.fill", "not with grid.adaptive (the probes are planned up front)")
            if self.share_trunks:
                _fail("grid.share_trunks", "not with grid.fill curves (runs train one by one)")
            if not 0 < self.probe_fraction < 1:
                _fail("grid.probe_fraction", f"must be in (0, 1), got {self.probe_fraction}")


# Train settings that change speed, memory or logging but not a run's results (toggling
# them does not retrain anything).
SPEED_ONLY = ("checkpoint_every_s", "compile", "log_every", "micro_batch_size", "position_loss")


@dataclass(frozen=True)
class TrainConfig:
    """How one run trains (every run of a sweep shares these)."""

    batch_size: int = 32
    """Sequences per optimizer step (the global batch, whatever the micro-batch); with
    batch_rule deepseek, the largest batch the rule may choose."""
    batch_rule: Literal["fixed", "deepseek"] = "fixed"
    """fixed: batch_size for every run; deepseek: a batch that grows with the run's
    budget C, B_opt = 0.292 C^0.3271 tokens (DeepSeek-AI 2024, "DeepSeek LLM", sec. 3.1,
    eq. 1), rounded to a power of two in sequences, at most batch_size."""
    min_steps: int = 0
    """Halve a run's batch (down to one sequence) until it takes at least this many
    optimizer steps: a run of a few dozen steps is mostly warm-up and schedule ends."""
    warmup_min_steps: int = 0
    """Warm-up lasts at least this many steps (at most half the run), whatever
    warmup_frac gives."""
    micro_batch_size: int | Literal["auto"] = "auto"
    """Sequences per forward/backward pass; gradients of batch_size / micro_batch_size
    passes are accumulated into one optimizer step (a run whose batch it does not divide
    uses its largest divisor below it). auto: the largest divisor of
    batch_size whose estimated memory fits the device (CUDA: its real memory; CPU:
    device.memory_gb), halved again if the first steps run out of memory."""
    lr: float | None = None
    """Peak learning rate; None = the size rule lr_base * (N / 1e6) ** -lr_exponent,
    clipped to [lr_min, lr_max] (N = total parameters)."""
    lr_base: float = 2e-3
    lr_exponent: float = 0.25
    lr_min: float = 1e-4
    lr_max: float = 3e-3
    hparams: str | None = None
    """The hparams.json of `chinchilla tune` (or the folder holding it): every run's peak
    learning rate and batch then come from the fitted laws at the run's budget,
    eta_opt(C) and B_opt(C) (batch rounded to whole sequences); a law the file lacks
    falls back to the rule above / batch_size. Relative paths start at the config's
    folder."""
    schedule: Literal["cosine", "wsd"] = "cosine"
    """cosine: linear warmup then cosine decay over the run's whole token budget
    (Chinchilla); wsd: warmup, stable, then linear decay over the last `decay_frac`."""
    warmup_frac: float = 0.05
    """Fraction of steps spent in linear warmup."""
    final_lr_frac: float = 0.1
    """Final learning rate / peak (Chinchilla decays 10x)."""
    decay_frac: float = 0.2
    """Schedule wsd: fraction of steps in the final decay."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not biases, norms)."""
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables."""
    evals: int = 8
    """Held-out evaluations per run, evenly spaced; the last one is at the final step."""
    eval_tokens: int = 32768
    """Validation tokens per evaluation (the same tokens for every run of a sweep)."""
    position_loss: bool = False
    """Also record the final evaluation's mean loss at each context position (runs.parquet
    `loss_by_position`: seq_len comma-separated values in nats/token, position 0 first;
    "loss at token t" as in Kaplan et al. 2020, Figure 20). Logging only: not part of a
    run's id."""
    log_every: int = 10
    """Log the training loss every this many steps."""
    checkpoint_every_s: float = 60.0
    """Save a resumable checkpoint at most this often (seconds); 0 disables."""
    compile: bool = False
    """torch.compile the model (CUDA; opt-in)."""
    seed: int = 0
    """Seed for initialisation and data order (the same for every run)."""

    def __post_init__(self) -> None:
        positive = ("batch_size", "lr_base", "lr_min", "lr_max", "evals", "eval_tokens")
        for name in positive:
            if not getattr(self, name) > 0:
                _fail(f"train.{name}", f"must be > 0, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            _fail("train.lr", f"must be > 0, got {self.lr}")
        if self.micro_batch_size != "auto" and not (
            self.micro_batch_size > 0 and self.batch_size % self.micro_batch_size == 0
        ):
            _fail(
                "train.micro_batch_size",
                f"must be auto or a divisor of batch_size {self.batch_size}, "
                f"got {self.micro_batch_size}",
            )
        if self.min_steps < 0 or self.warmup_min_steps < 0:
            _fail("train.min_steps", "min_steps and warmup_min_steps must be >= 0")
        if self.lr_min > self.lr_max:
            _fail("train.lr_min", f"{self.lr_min} exceeds lr_max {self.lr_max}")
        for name in ("warmup_frac", "final_lr_frac", "decay_frac", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1 + (name == "final_lr_frac"):
                _fail(f"train.{name}", f"must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            _fail("train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.grad_clip < 0:
            _fail("train.grad_clip", f"must be >= 0, got {self.grad_clip}")
        if self.log_every < 1:
            _fail("train.log_every", f"must be >= 1, got {self.log_every}")
        if self.checkpoint_every_s < 0:
            _fail("train.checkpoint_every_s", f"must be >= 0, got {self.checkpoint_every_s}")


QUANTA_KEYS = ("n_facts", "key_len", "value_len")
MARKOV_KEYS = ("orders", "order_weights", "support", "n_rules", "copy_lag", "copy_weight")


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from."""

    kind: Literal["synthetic", "text", "tokens", "parquet", "jsonl", "dataset"] = "synthetic"
    """synthetic: generated on the fly with a known entropy rate; text: UTF-8 files;
    tokens: nanoGPT-style train.bin / val.bin; parquet / jsonl / dataset: a text column."""
    vocab_size: int | None = None
    """Vocabulary size; synthetic default 128, text with byte tokens 257 (256 bytes plus an
    end-of-document token), required for kind tokens and for a BPE tokenizer."""
    path: str | None = None
    """Kinds other than synthetic: a file, a folder or a glob. Relative paths are resolved
    from the config file's folder."""
    tokenizer: str = "bytes"
    """Text kinds: 'bytes', 'bpe' (trained on the corpus with `tokenizers`, cached), or the
    path of a tokenizer.json."""
    dtype: Literal["uint16", "uint32"] = "uint16"
    """Kind tokens: the integer type of train.bin / val.bin."""
    text_column: str = "text"
    """Kinds parquet / jsonl / dataset: the column holding documents."""
    val_fraction: float | None = None
    """Text kinds: when set, the fraction of documents held out for validation (those
    whose content hash falls below it). Unset (the default), the split is sized in
    tokens by `val_tokens`."""
    cache_dir: str | None = None
    """Where tokenized corpora are cached; default: $CHINCHILLA_CACHE, else
    $XDG_CACHE_HOME/chinchilla or ~/.cache/chinchilla (never inside the corpus)."""
    tokenizer_sample_bytes: int = 100_000_000
    """Tokenizer bpe: train it on files of about this many bytes, chosen by a hash of
    their paths (the same sample every time); the whole corpus when smaller."""
    workers: int | None = None
    """Text kinds: processes that tokenize (shards of files, large JSONL files cut into
    byte ranges, written in file order: the token files are the same bytes for any
    number); None = the CPUs this process may use."""
    encoding_errors: Literal["strict", "replace", "skip"] = "replace"
    """Text tokenizers (BPE, tokenizer.json) and jsonl: what to do with bytes that are not
    UTF-8: strict stops naming the file and byte; replace makes each invalid byte U+FFFD;
    skip leaves the document out. Counted and summarised in one line. Byte tokens read
    files of kind text as raw bytes and need no decoding."""
    # synthetic source (see chinchilla/data/synthetic.py and chinchilla/data/quanta.py)
    process: Literal["markov", "quanta"] = "markov"
    """Synthetic: markov, a mixture of sparse Markov rules (orders, order_weights,
    support, n_rules, copy_*); quanta, Zipf-distributed facts, each a key and a value
    (n_facts, key_len, value_len), whose loss follows power laws in N and D."""
    n_facts: int = 4096
    """Synthetic quanta: number of facts; fact k is used with probability ~ k^-zipf_exponent."""
    key_len: int = 3
    """Synthetic quanta: tokens of a fact's key (random: the irreducible loss)."""
    value_len: int = 2
    """Synthetic quanta: tokens of a fact's value (determined by the key)."""
    orders: tuple[int, ...] = (1, 2, 3)
    """Synthetic: context lengths of the mixture's Markov components."""
    order_weights: tuple[float, ...] = (0.25, 0.35, 0.4)
    """Synthetic: mixture weight of each order (sums to 1)."""
    support: int = 6
    """Synthetic: next-token candidates per context (sparse rules)."""
    n_rules: int = 4096
    """Synthetic: distinct rules per order above 1 (contexts are hashed onto them)."""
    zipf_exponent: float = 1.1
    """Synthetic: Zipf exponent of how often each token is a candidate (markov) or each
    fact is used (quanta; above 1 for a power law in N)."""
    copy_lag: int = 0
    """Synthetic: with `copy_weight` > 0, the distance L of the long-range component (the
    next token copies the one L positions back); must be below model.seq_len."""
    copy_weight: float = 0.0
    """Synthetic: probability c of the long-range copy from position L + 1 on (0: off)."""
    unique_tokens: int | None = None
    """Cap the training data at this many unique tokens (the first ones of the training
    split, whole chunks of seq_len + 1), repeated for as many epochs as a run needs: a
    repeated-data experiment (Muennighoff et al. 2023). Each run records its
    `unique_tokens` and `epochs`; `chinchilla fit --law data-constrained` fits them.
    Unset: no cap (a corpus smaller than a run still repeats, and says so)."""
    val_tokens: int = 131072
    """Validation tokens. Synthetic: generated for validation. Text kinds (unless
    `val_fraction` is set): the documents with the smallest content hashes, as few as
    hold this many predicted tokens, tokenized before the training split. Either way
    the split never depends on file order or on the number of workers, and
    `train.eval_tokens` above it is refused when the config is read."""

    def __post_init__(self) -> None:
        if self.vocab_size is not None and self.vocab_size < 2:
            _fail("data.vocab_size", f"must be >= 2, got {self.vocab_size}")
        if self.kind != "synthetic" and not self.path:
            _fail("data.path", f"kind '{self.kind}' needs a path")
        if self.kind == "tokens" and self.vocab_size is None:
            _fail("data.vocab_size", "kind 'tokens' needs the vocabulary size")
        if (
            self.kind not in ("synthetic", "tokens")
            and self.tokenizer != "bytes"
            and self.vocab_size is None
        ):
            _fail("data.vocab_size", f"tokenizer '{self.tokenizer}' needs the vocabulary size")
        if len(self.orders) != len(self.order_weights) or not self.orders:
            _fail("data.order_weights", "needs one weight per entry of data.orders")
        if any(k < 1 for k in self.orders):
            _fail("data.orders", "orders must be >= 1")
        if any(w < 0 for w in self.order_weights) or abs(sum(self.order_weights) - 1) > 1e-6:
            _fail("data.order_weights", "weights must be >= 0 and sum to 1")
        if self.support < 1 or self.n_rules < 1 or self.val_tokens < 1:
            _fail("data.support", "support, n_rules and val_tokens must be >= 1")
        if not 0 <= self.copy_weight < 1:
            _fail("data.copy_weight", f"must be in [0, 1), got {self.copy_weight}")
        if self.copy_weight > 0 and self.copy_lag < 1:
            _fail("data.copy_lag", "copy_weight > 0 needs copy_lag >= 1")
        _at_least("data", self, n_facts=1, key_len=1, value_len=1)
        if self.kind == "synthetic" and self.process == "quanta":
            from chinchilla.data.quanta import check_keys

            check_keys(self.resolved_vocab_size, self.n_facts, self.key_len)
        if self.zipf_exponent < 0:
            _fail("data.zipf_exponent", f"must be >= 0, got {self.zipf_exponent}")
        if self.workers is not None and self.workers < 1:
            _fail("data.workers", f"must be >= 1, got {self.workers}")
        if self.unique_tokens is not None and self.unique_tokens < 1:
            _fail("data.unique_tokens", f"must be >= 1, got {self.unique_tokens}")
        if self.tokenizer_sample_bytes < 1:
            _fail("data.tokenizer_sample_bytes", f"must be >= 1, got {self.tokenizer_sample_bytes}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            _fail("data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")

    @property
    def resolved_vocab_size(self) -> int:
        if self.vocab_size is not None:
            return self.vocab_size
        if self.kind == "synthetic":
            return 128
        return 257  # byte tokens plus the end-of-document token


@dataclass(frozen=True)
class DeviceConfig:
    """Where runs train, and what the planner assumes about speed."""

    type: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available, else CPU."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; None = bf16 dense peak from the built-in table
    for known GPUs, or a matmul measured at start-up on CPU."""
    plan_peak_flops: float = 989e12
    """Peak FLOP/s the planner's time estimate assumes (default: H100 SXM bf16 dense)."""
    plan_utilization: float = 0.35
    """Model FLOPs utilisation the planner's time estimate assumes."""
    threads: int | None = None
    """CPU threads per run; None = torch's default."""
    memory_gb: float = 80.0
    """Memory of one device in GiB that `chinchilla plan` sizes micro-batches for
    (default: an 80 GB H100); on CUDA a run uses the device's real memory."""

    def __post_init__(self) -> None:
        if self.peak_flops is not None and not self.peak_flops > 0:
            _fail("device.peak_flops", f"must be > 0, got {self.peak_flops}")
        if not self.plan_peak_flops > 0:
            _fail("device.plan_peak_flops", f"must be > 0, got {self.plan_peak_flops}")
        if not 0 < self.plan_utilization <= 1:
            _fail("device.plan_utilization", f"must be in (0, 1], got {self.plan_utilization}")
        if self.threads is not None and self.threads < 1:
            _fail("device.threads", f"must be >= 1, got {self.threads}")
        if not self.memory_gb > 0:
            _fail("device.memory_gb", f"must be > 0, got {self.memory_gb}")


@dataclass(frozen=True)
class TasksConfig:
    """Downstream tasks scored after training (see chinchilla/tasks.py): the same runs
    under sharp metrics (exact match, accuracy) and smooth ones (per-token
    log-probability, token edit distance, Brier score)."""

    continue_k: int = 0
    """Synthetic data: the built-in task `continue`, with answers of this many tokens
    (0: off). A prompt is the start of a held-out document; its answer is the source's
    most likely next token, k times over (greedy under the true distribution), so exact
    match on k tokens needs k right tokens in a row; scored for every k = 1..K."""
    prompts: int = 256
    """Built-in task: number of prompts."""
    prompt_len: int = 16
    """Built-in task: prompt length in tokens (BOS included)."""
    file: str | None = None
    """A JSONL task file: one object per line, {"prompt", "answer"} (greedy generation)
    or {"prompt", "choices", "answer"} (log-likelihood of each choice; answer = the
    correct choice's index or text). Text is tokenized with the sweep's tokenizer; lists
    of integers are token ids. Checked before any training."""
    name: str | None = None
    """Name of the file's task in metrics.parquet (default: the file's stem)."""
    every_eval: bool = False
    """Score the tasks at every evaluation, not only at the end of each run."""

    def __post_init__(self) -> None:
        _at_least("tasks", self, continue_k=0, prompts=1, prompt_len=1)
        if self.name is not None and (not self.name or "/" in self.name):
            _fail("tasks.name", f"must be a non-empty name without '/', got {self.name!r}")


@dataclass(frozen=True)
class ExecutionConfig:
    """How a sweep spreads runs over processes, GPUs and nodes (no effect on results)."""

    executor: Literal["local", "ray"] = "local"
    """local: this machine (`workers` processes); ray: one Ray task per run."""
    address: str | None = None
    """Executor ray: the cluster to join ('auto': the one this node belongs to); None
    starts a local Ray instance."""
    gpus_per_run: float | None = None
    """Executor ray: GPUs each run requests (fractional packs runs onto a GPU); None =
    1 / runs_per_gpu when the cluster has GPUs, else 0."""
    workers: int | Literal["auto"] = "auto"
    """Runs trained at once on this machine, one process each (CPU: cores are split
    between them; CUDA: each is pinned to a GPU). auto: every visible GPU x
    runs_per_gpu on CUDA, 1 on CPU."""
    runs_per_gpu: int = 1
    """Runs packed onto one GPU at once (small runs leave a GPU idle)."""
    retries: int = 0
    """Extra attempts for a run that failed (an exception, out of memory)."""

    def __post_init__(self) -> None:
        if self.workers != "auto" and self.workers < 1:
            _fail("execution.workers", f"must be auto or >= 1, got {self.workers}")
        if self.runs_per_gpu < 1:
            _fail("execution.runs_per_gpu", f"must be >= 1, got {self.runs_per_gpu}")
        if self.retries < 0:
            _fail("execution.retries", f"must be >= 0, got {self.retries}")
        if self.gpus_per_run is not None and not self.gpus_per_run >= 0:
            _fail("execution.gpus_per_run", f"must be >= 0, got {self.gpus_per_run}")


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases logging (the `wandb` package, imported only when set)."""

    project: str = "chinchilla"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    """offline (default): run folders under the sweep's wandb/, `wandb sync` uploads them
    later; online needs a network and a login."""


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs also log their scalars (no effect on results; nothing is imported
    unless enabled). A tracker that fails warns once; the run goes on."""

    tensorboard: bool = False
    """Write each run's scalars under the sweep's tensorboard/<run_id>/ (needs the
    `tensorboard` package: pip install 'chinchilla-scaling[tracking]')."""
    wandb: WandbConfig | None = None
    """A mapping, e.g. {project: my-scaling, mode: offline} or {} for the defaults:
    each run is a W&B run named and id'd by its run id, grouped by the sweep's name."""

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.wandb is not None


@dataclass(frozen=True)
class Config:
    """One experiment: what to plan, how to train it, on what data and hardware."""

    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    base_dir: str = field(default=".", metadata={"internal": True})
    """Folder of the YAML file, for relative paths (not a YAML key)."""

    def __post_init__(self) -> None:
        sized = self.data.kind == "synthetic" or (
            self.data.kind != "tokens" and self.data.val_fraction is None
        )
        if self.data.copy_weight > 0 and self.data.copy_lag >= self.model.seq_len:
            _fail(
                "data.copy_lag",
                f"{self.data.copy_lag} is not below model.seq_len {self.model.seq_len}: "
                "no document would reach it",
            )
        if self.train.hparams is not None:
            if self.grid.kind == "hparams":
                _fail("train.hparams", "a tuning grid sets its own lrs and batches (grid.kind)")
            if self.train.lr is not None:
                _fail("train.hparams", "the laws set the learning rate: drop train.lr")
            if self.train.batch_rule != "fixed":
                _fail("train.hparams", "the laws set the batch: drop train.batch_rule")
        if self.grid.share_trunks and self.train.schedule != "wsd":
            _fail(
                "grid.share_trunks",
                "a shared trunk is the stable phase of a warmup-stable-decay schedule: set "
                "train.schedule: wsd",
            )
        if self.tasks.continue_k:
            if self.data.kind != "synthetic":
                _fail(
                    "tasks.continue_k",
                    "the built-in task needs the synthetic source's rules (data.kind: "
                    "synthetic); for a corpus give a JSONL file (tasks.file)",
                )
            if self.tasks.prompt_len + self.tasks.continue_k > self.model.seq_len:
                _fail(
                    "tasks.continue_k",
                    f"prompt ({self.tasks.prompt_len}) + answer ({self.tasks.continue_k}) "
                    f"tokens exceed model.seq_len {self.model.seq_len}",
                )
        if self.data.unique_tokens is not None and self.data.unique_tokens < self.model.seq_len:
            _fail(
                "data.unique_tokens",
                f"{self.data.unique_tokens:,} is less than one sequence "
                f"(model.seq_len = {self.model.seq_len})",
            )
        if sized and self.train.eval_tokens > self.data.val_tokens:
            _fail(
                "train.eval_tokens",
                f"{self.train.eval_tokens:,} tokens per evaluation, more than the "
                f"validation split holds (data.val_tokens = {self.data.val_tokens:,})",
            )

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def to_dict(self, *, with_execution: bool = True) -> dict[str, Any]:
        """Plain data (YAML/JSON-able); the internal `base_dir` is left out."""
        d = _to_plain(self)
        d.pop("base_dir")
        if not with_execution:
            d.pop("execution")
        return d

    def data_identity(self) -> dict[str, Any]:
        """The data section less what changes only speed (data.workers): what run ids,
        fingerprints and data caches depend on."""
        d = {k: v for k, v in self.to_dict()["data"].items() if k != "workers"}
        if d.get("unique_tokens") is None:  # identities from before the cap existed
            d.pop("unique_tokens", None)
        if self.data.process == "markov":  # identities from before quanta existed
            for k in ("process", *QUANTA_KEYS):
                d.pop(k)
        else:
            for k in MARKOV_KEYS:
                d.pop(k)
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes results (the execution section and the
        speed-only train settings do not)."""
        d = self.to_dict(with_execution=False)
        d.pop("tracking")  # where runs also log: not what they compute
        d["train"] = {k: v for k, v in d["train"].items() if k not in SPEED_ONLY}
        d["data"] = self.data_identity()
        d["device"] = {k: v for k, v in d["device"].items() if k != "memory_gb"}
        blob = json.dumps(d, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_to_plain(x) for x in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, coercing numbers written as strings."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                continue
        _fail(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        _fail(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # a single budget may be written without brackets
        if not isinstance(value, list | tuple):
            _fail(key, f"expected {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        _fail(key, f"expected true/false, got {value!r}")
    if tp in (int, float):
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip().replace("_", ""))
            except ValueError:
                _fail(key, f"expected {_type_name(tp)}, got {value!r}")
        if isinstance(number, bool) or not isinstance(number, int | float):
            _fail(key, f"expected {_type_name(tp)}, got {value!r}")
        if number != number or number in (float("inf"), float("-inf")):
            _fail(key, f"expected a finite number, got {value!r}")
        if tp is int:
            if float(number) != int(number):
                _fail(key, f"expected an integer, got {value!r}")
            return int(number)
        return float(number)
    if tp is str:
        if isinstance(value, str):
            return value
        _fail(key, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r}")  # a programming error, not user input


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        _fail(where, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        close = _close_match(str(unknown[0]), fields)
        _fail(name, "unknown key" + (f" (did you mean '{close}'?)" if close else ""))
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        _fail(f"{prefix}.{missing[0]}" if prefix else missing[0], "missing")
    return cls(**kwargs)


def _close_match(name: str, options: typing.Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, list(options), n=1, cutoff=0.7)
    return found[0] if found else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    keys = [k.strip() for k in path.split(".") if k.strip()]
    if not keys:
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {text!r}: value is not valid YAML ({_yaml_problem(exc)})") from None
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Set each `section.key=value` into a copy of the raw YAML mapping."""
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {text!r}: '{k}' is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file not found: {p}")
    if p.is_dir():
        raise UserError(f"config path is a folder, not a YAML file: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"config {p}: invalid YAML: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {p}: not UTF-8 text") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"config {p}: expected a mapping at the top level")
    return raw


def from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> Config:
    cfg = build(Config, raw)
    return dataclasses.replace(cfg, base_dir=str(base_dir))


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, apply `--set` overrides and validate everything."""
    raw = apply_overrides(read_yaml(path), overrides)
    return from_dict(raw, base_dir=Path(path).resolve().parent)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
