"""Parameter and FLOP counts, each a small pure function citing its source.

Two parameter conventions:
- total: every parameter of the model `chinchilla.model.GPT` builds (Hoffmann et al. 2022
  count N this way, embeddings included); equals `sum(p.numel() for p in model.parameters())`.
- non-embedding: without the token embedding, the position embedding and an untied
  output head (Kaplan et al. 2020, section 2.1: "N excluding all vocabulary and
  positional embeddings").

Two FLOP conventions, per token of training (forward + backward):
- 6N (Kaplan et al. 2020, eq. 2.1; Hoffmann et al. 2022 use C = 6ND throughout);
- Chinchilla's Appendix F count, with attention and embedding matmuls; for the recurrent
  families (`arch` lstm, rnn) the same rules (2 FLOPs per multiply-accumulate, backward
  twice the forward) applied to their matmuls and gates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelShape:
    """Everything that fixes the architecture of one decoder-only Transformer."""

    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int  # per-head width; attention width is n_heads * head_dim
    d_ff: int
    vocab_size: int
    seq_len: int
    tied_embeddings: bool = True
    position: str = "learned"  # "learned" (absolute, GPT-2) or "rotary"
    arch: str = "transformer"  # or "lstm", "gru", "rnn": d_model is the hidden size

    @property
    def attn_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def recurrent(self) -> bool:
        return self.arch in RECURRENT_GATES

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.arch == "transformer":  # run ids of Transformer shapes stay as they were
            d.pop("arch")
        return d


# Gate blocks per recurrent layer: PyTorch's nn.LSTM has 4 (input, forget, cell, output),
# nn.GRU 3 (reset, update, new), nn.RNN (tanh) 1; each block is a d x d input and a d x d
# hidden matrix, two biases.
RECURRENT_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Element-wise FLOPs per unit of width of each layer's gates (one per sigmoid, tanh,
# product or sum): LSTM 3 sigmoids, 2 tanh, 3 products, 1 sum; GRU 2 sigmoids, 1 tanh,
# 1 product inside the new gate, then (1 - z) n + z h: 3 more; RNN 1 tanh.
_GATE_ELEMENTWISE = {"lstm": 9, "gru": 7, "rnn": 1}


@dataclass(frozen=True)
class ParamCount:
    total: int
    nonembedding: int

    @property
    def embedding(self) -> int:
        return self.total - self.nonembedding


def count_params(shape: ModelShape) -> ParamCount:
    """Exact parameter count of `chinchilla.model.GPT(shape)`.

    Per block (pre-LayerNorm GPT-2 block, biases on every linear layer):
    two LayerNorms 2 * 2d, QKV projection d * 3a + 3a, output projection a * d + d,
    MLP d * f + f + f * d + d, where a = n_heads * head_dim and f = d_ff.
    Outside the blocks: token embedding V * d, learned positions T * d, final
    LayerNorm 2d, and an output head V * d (no bias) when embeddings are untied.
    Non-embedding N follows Kaplan et al. 2020 (sec. 2.1): all vocabulary and positional
    embedding matrices are left out.
    """
    if shape.recurrent:
        return _count_recurrent(shape)
    d, a, f, V, T = shape.d_model, shape.attn_dim, shape.d_ff, shape.vocab_size, shape.seq_len
    per_block = 4 * d + (d * 3 * a + 3 * a) + (a * d + d) + (d * f + f + f * d + d)
    embedding = V * d
    embedding += T * d if shape.position == "learned" else 0
    embedding += 0 if shape.tied_embeddings else V * d
    nonembedding = shape.n_layers * per_block + 2 * d
    return ParamCount(total=nonembedding + embedding, nonembedding=nonembedding)


def _count_recurrent(shape: ModelShape) -> ParamCount:
    """Exact parameter count of `chinchilla.model.Recurrent(shape)`: token embedding
    V * d, then per layer g gate blocks of d x d input weights, d x d hidden weights and
    two biases of d (PyTorch's nn.LSTM, g = 4; nn.GRU, 3; nn.RNN, 1), then a final LayerNorm 2d
    and the output head (tied, or V * d without bias). No position embedding: the
    recurrence carries position. Non-embedding N: the layers and the LayerNorm."""
    d, V, g = shape.d_model, shape.vocab_size, RECURRENT_GATES[shape.arch]
    nonembedding = shape.n_layers * g * (2 * d * d + 2 * d) + 2 * d
    embedding = V * d + (0 if shape.tied_embeddings else V * d)
    return ParamCount(total=nonembedding + embedding, nonembedding=nonembedding)


def recurrent_flops_per_token(shape: ModelShape, *, include_embeddings: bool = True) -> float:
    """Training FLOPs per token of the recurrent families, by the rules of Appendix F
    (2 FLOPs per multiply-accumulate, backward = 2 x forward). Forward, per layer and
    token: the g gate blocks' input and hidden matmuls 2 * 2 * g * d^2, their biases
    2 * g * d, and the element-wise gates (`_GATE_ELEMENTWISE`: LSTM 9d, GRU 7d, RNN d);
    the final LayerNorm is left out as Appendix F leaves out the Transformer's.
    Embeddings and logits as Appendix F: 2 V d each."""
    d, V, g = shape.d_model, shape.vocab_size, RECURRENT_GATES[shape.arch]
    gates = _GATE_ELEMENTWISE[shape.arch] * d
    forward = shape.n_layers * (4 * g * d * d + 2 * g * d + gates)
    if include_embeddings:
        forward += 2 * V * d + 2 * d * V
    return 3.0 * forward


def flops_per_token_6n(n_params: int | float) -> float:
    """Training FLOPs per token, C = 6 N D (Kaplan et al. 2020, eq. 2.1).

    2N for the forward pass (one multiply-accumulate per parameter) and 4N backward.
    """
    return 6.0 * n_params


def chinchilla_flops_per_sequence(shape: ModelShape, *, include_embeddings: bool = True) -> float:
    """Training FLOPs of one sequence, Hoffmann et al. 2022, Appendix F.

    A multiply-accumulate is 2 FLOPs and the backward pass costs twice the forward.
    Forward, for sequence length T, vocabulary V, width d, attention width a = kv * h:
    embeddings 2*T*V*d; per layer: QKV 2*3*T*d*a, attention logits 2*T^2*a,
    softmax 3*h*T^2, softmax @ values 2*T^2*a, output projection 2*T*a*d,
    dense 2*T*(2*d*ffw); final logits 2*T*d*V.

    `include_embeddings=False` leaves out the two vocabulary terms, as Table A4 does
    when it reports the ratio of this count to 6ND.
    """
    if shape.recurrent:
        return shape.seq_len * recurrent_flops_per_token(
            shape, include_embeddings=include_embeddings
        )
    T, V, d, a, h = shape.seq_len, shape.vocab_size, shape.d_model, shape.attn_dim, shape.n_heads
    per_layer = (
        2 * 3 * T * d * a  # Q, K, V projections
        + 2 * T * T * a  # attention logits K @ Q
        + 3 * h * T * T  # softmax
        + 2 * T * T * a  # softmax @ V
        + 2 * T * a * d  # output projection
        + 2 * T * (2 * d * shape.d_ff)  # dense block
    )
    forward = shape.n_layers * per_layer
    if include_embeddings:
        forward += 2 * T * V * d + 2 * T * d * V  # embeddings, final logits
    return 3.0 * forward


def chinchilla_flops_per_token(shape: ModelShape, *, include_embeddings: bool = True) -> float:
    """Appendix F training FLOPs per token (see `chinchilla_flops_per_sequence`)."""
    return (
        chinchilla_flops_per_sequence(shape, include_embeddings=include_embeddings) / shape.seq_len
    )


def flops_per_token(shape: ModelShape, n_convention: str, flops_convention: str) -> float:
    """Training FLOPs per token under the configured conventions."""
    if flops_convention == "chinchilla":
        return chinchilla_flops_per_token(shape)
    counts = count_params(shape)
    n = counts.total if n_convention == "total" else counts.nonembedding
    return flops_per_token_6n(n)


# ----------------------------------------------------------------------------- memory

# Bytes per element of what one training step keeps in memory.
_STATE_BYTES = 16  # fp32 weights, fp32 gradients, AdamW's two fp32 moments
# x d_model: Korthikanti et al. 2022 (eq. 1) count 34 in 16-bit for Megatron's layer;
# this model in eager PyTorch under bf16 autocast keeps more (fp32 LayerNorm outputs,
# the tanh-GELU's input and output): 42, fitted to 9 peaks measured on an H100.
_ACT_BYTES_PER_LAYER_TOKEN = 42
# x vocab: bf16 logits, their fp32 upcast for the loss and its gradient, and the
# softmax the loss keeps (13, fitted with the above)
_LOGIT_BYTES = 13


def training_memory_bytes(
    shape: ModelShape, micro_batch: int, *, mixed_precision: bool = True
) -> float:
    """Estimated peak memory of one training step of `chinchilla.model.GPT(shape)` on
    `micro_batch` sequences: optimizer state, saved activations and logits.

    - state: 16 bytes per parameter (fp32 weights and gradients, AdamW m and v);
    - activations saved for the backward pass: 42 d bytes per token and layer under bf16
      autocast (the form of Korthikanti et al. 2022, "Reducing Activation
      Recomputation", eq. 1, without the 5 a s / h attention-score term, which
      scaled_dot_product_attention's fused kernels do not store); twice that in fp32;
    - logits: 13 bytes per token and vocabulary entry.
    The two coefficients were fitted to peaks measured on an H100 (shared measurements
    of 2026-11-25: 6 full-batch and 3 micro-batched runs, 10M-449M parameters); the
    estimate is within 20% of each (tests/test_accounting.py).
    """
    tokens = micro_batch * shape.seq_len
    scale = 1 if mixed_precision else 2
    state = _STATE_BYTES * count_params(shape).total
    per_layer = _ACT_BYTES_PER_LAYER_TOKEN
    if shape.recurrent:  # not measured: the gates, cell and hidden state kept per step,
        per_layer = 4 * (2 * RECURRENT_GATES[shape.arch] + 2)  # in fp32 (an estimate)
    acts = tokens * shape.n_layers * per_layer * shape.d_model * scale
    logits = tokens * shape.vocab_size * _LOGIT_BYTES
    return float(state + acts + logits)


def divisors_descending(n: int) -> list[int]:
    return [k for k in range(n, 0, -1) if n % k == 0]


def largest_divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of n that is at most k (micro-batches must split the batch)."""
    return next(d for d in divisors_descending(n) if d <= max(1, k))


def choose_micro_batch(
    shape: ModelShape,
    batch_size: int,
    memory_bytes: float,
    *,
    mixed_precision: bool = True,
    headroom: float = 0.85,
) -> tuple[int, float, bool]:
    """The largest divisor of `batch_size` whose estimated step memory fits in
    `headroom` of `memory_bytes`. Returns (micro_batch, estimated bytes, fits); when
    nothing fits, (1, its estimate, False)."""
    for m in divisors_descending(batch_size):
        need = training_memory_bytes(shape, m, mixed_precision=mixed_precision)
        if need <= headroom * memory_bytes:
            return m, need, True
    return 1, training_memory_bytes(shape, 1, mixed_precision=mixed_precision), False
