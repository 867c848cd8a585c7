"""A decoder-only Transformer (GPT-2 style), readable in one sitting; and the recurrent
families (LSTM, RNN) beside it, `Recurrent`.

Token embedding + position information (learned absolute, or rotary) -> n_layers
pre-LayerNorm blocks of causal self-attention (`scaled_dot_product_attention`, flash
kernels on GPU) and a GELU MLP, residual connections -> final LayerNorm -> output
head, tied to the token embedding or not. GPT-2 initialisation. Its parameter count
is exactly `chinchilla.accounting.count_params(shape)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from chinchilla.accounting import ModelShape


def _rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0):
    """cos/sin tables of RoFormer (Su et al. 2021, eq. 34), each (T, head_dim / 2)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, h, T, kv); rotate each (even, odd) pair of features by its position's angle
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class LanguageModel(nn.Module):
    """What training and evaluation ask of every family: logits from ids (`forward`),
    and the next-token losses of a (B, T + 1) batch of ids."""

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, then the output head (the token embedding when tied): (B, T, V)."""
        weight = self.wte.weight if self.head is None else self.head.weight
        return F.linear(self.ln_f(x), weight)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats/token) of a (B, T + 1) batch of ids."""
        logits = self(batch[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())

    def token_losses(self, batch: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy (nats) of every position of a (B, T + 1) batch, (B, T)."""
        logits = self(batch[:, :-1])
        flat = F.cross_entropy(
            logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none"
        )
        return flat.view(batch.shape[0], -1)


class CausalSelfAttention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.n_heads, self.head_dim = shape.n_heads, shape.head_dim
        self.qkv = nn.Linear(shape.d_model, 3 * shape.attn_dim)
        self.proj = nn.Linear(shape.attn_dim, shape.d_model)
        self.proj.residual = True  # scaled at init (GPT-2)

    def forward(self, x: torch.Tensor, rotary=None) -> torch.Tensor:
        B, T, _ = x.shape
        # (B, T, 3a) -> 3 x (B, h, T, kv)
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            cos, sin = rotary[0][:T], rotary[1][:T]
            q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, T, kv)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.fc = nn.Linear(shape.d_model, shape.d_ff)
        self.proj = nn.Linear(shape.d_ff, shape.d_model)
        self.proj.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.ln1 = nn.LayerNorm(shape.d_model)
        self.attn = CausalSelfAttention(shape)
        self.ln2 = nn.LayerNorm(shape.d_model)
        self.mlp = MLP(shape)

    def forward(self, x: torch.Tensor, rotary=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rotary)
        return x + self.mlp(self.ln2(x))


class GPT(LanguageModel):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.wte = nn.Embedding(shape.vocab_size, shape.d_model)
        self.wpe = (
            nn.Embedding(shape.seq_len, shape.d_model) if shape.position == "learned" else None
        )
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.ln_f = nn.LayerNorm(shape.d_model)
        self.head = (
            None
            if shape.tied_embeddings
            else nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        )
        if shape.position == "rotary":
            cos, sin = _rotary_tables(shape.seq_len, shape.head_dim)
            self.register_buffer("rot_cos", cos, persistent=False)
            self.register_buffer("rot_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2: N(0, 0.02) weights, zero biases, residual projections scaled by
        1 / sqrt(2 * n_layers) (Radford et al. 2019, section 2.3)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual", False):
                std /= math.sqrt(2 * self.shape.n_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Total parameters, or Kaplan's non-embedding N (no token, position or
        untied output embeddings)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            n -= self.wpe.weight.numel() if self.wpe is not None else 0
            n -= self.head.weight.numel() if self.head is not None else 0
        return n

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V)."""
        B, T = idx.shape
        x = self.wte(idx)  # (B, T, d)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        rotary = (self.rot_cos, self.rot_sin) if self.shape.position == "rotary" else None
        for block in self.blocks:
            x = block(x, rotary)
        return self._logits(x)


class Recurrent(LanguageModel):
    """A recurrent language model (`shape.arch` lstm, gru or rnn): token embedding ->
    `n_layers` stacked PyTorch `nn.LSTM` / `nn.GRU` / `nn.RNN` (tanh) layers of width d_model
    (fused kernels, cuDNN on GPU) -> final LayerNorm -> output head, tied to the
    embedding or not. Every sequence starts from a zero state (no state is carried
    between batches). Its parameter count is exactly `count_params(shape)`."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        d = shape.d_model
        self.wte = nn.Embedding(shape.vocab_size, d)
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[shape.arch]
        self.rnn = cell(d, d, num_layers=shape.n_layers, batch_first=True)
        self.ln_f = nn.LayerNorm(d)
        self.head = None if shape.tied_embeddings else nn.Linear(d, shape.vocab_size, bias=False)
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02)
        if self.head is not None:
            nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        # the recurrent weights keep PyTorch's U(-1/sqrt(d), 1/sqrt(d))

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
            n -= self.head.weight.numel() if self.head is not None else 0
        return n

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V)."""
        x, _ = self.rnn(self.wte(idx))
        return self._logits(x)


def build_model(shape: ModelShape) -> LanguageModel:
    """The model a shape describes: `GPT` for arch transformer, `Recurrent` otherwise."""
    return Recurrent(shape) if shape.recurrent else GPT(shape)
