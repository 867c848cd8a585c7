"""Token sources behind one interface: `TokenData`.

Every source ends as two flat arrays of token ids on disk (train and validation,
memory-mapped, never read whole into RAM), a vocabulary size and a little metadata.
Training reads fixed-length chunks of seq_len + 1 tokens: chunk i is
tokens[i * (T + 1) : (i + 1) * (T + 1)]. The order of chunks is a seeded permutation
per epoch, so a run's batch at step s depends on (seed, s) alone: resuming needs
nothing but the step, and every run of a sweep sees the same data in the same order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla.errors import UserError
from chinchilla.files import atomic_text, atomic_write


@dataclass
class TokenData:
    train: np.ndarray  # (n_train,) token ids, memory-mapped
    val: np.ndarray  # (n_val,) token ids, memory-mapped
    vocab_size: int
    seq_len: int
    meta: dict[str, Any] = field(default_factory=dict)
    shuffle: bool = True  # permute chunks per epoch (corpora); synthetic data is i.i.d.
    cap_chunks: int | None = None  # data.unique_tokens: train on the first chunks only
    _perm_cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    _fd: int | None = field(default=None, repr=False)

    @property
    def chunk(self) -> int:
        return self.seq_len + 1

    @property
    def n_train_chunks(self) -> int:
        n = len(self.train) // self.chunk
        return n if self.cap_chunks is None else min(n, self.cap_chunks)

    @property
    def n_val_chunks(self) -> int:
        return len(self.val) // self.chunk

    @property
    def train_tokens(self) -> int:
        """Predicted tokens available for training (T per chunk)."""
        return self.n_train_chunks * self.seq_len

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        key = (seed, epoch)
        if key not in self._perm_cache:
            self._perm_cache.clear()  # keep one epoch's permutation in memory
            rng = np.random.default_rng([seed, epoch, 0x5EED])
            index = np.int32 if self.n_train_chunks < 2**31 else np.int64
            self._perm_cache[key] = rng.permutation(np.arange(self.n_train_chunks, dtype=index))
        return self._perm_cache[key]

    def train_batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """(batch_size, T + 1) int64 ids of optimizer step `step` (0-based)."""
        n = self.n_train_chunks
        samples = np.arange(step * batch_size, (step + 1) * batch_size)
        if not self.shuffle:
            return self._read_chunks(samples % n).astype(np.int64)
        epochs = samples // n
        chunks = np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):  # a batch straddles at most two epochs
            sel = epochs == e
            chunks[sel] = self._epoch_order(seed, int(e))[samples[sel] % n]
        return self._read_chunks(chunks).astype(np.int64)

    def _read_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """Rows `chunks` of the training tokens. A file-backed array is read with pread:
        random reads through a memory map make the kernel read ahead and keep most of
        the file resident in this process (1 GB corpus: +1 GB RSS); pread keeps the
        memory of a sweep independent of the corpus size."""
        arr = self.train
        path = getattr(arr, "filename", None)
        if path is None:  # an in-memory array
            n = self.n_train_chunks
            return arr[: n * self.chunk].reshape(n, self.chunk)[chunks]
        if self._fd is None:
            self._fd = os.open(path, os.O_RDONLY)
        item = arr.dtype.itemsize
        width = self.chunk * item
        base = getattr(arr, "offset", 0)
        first = int(chunks[0])
        if np.array_equal(chunks, np.arange(first, first + len(chunks))):  # one range
            raw = os.pread(self._fd, width * len(chunks), base + first * width)
            return np.frombuffer(raw, arr.dtype).reshape(len(chunks), self.chunk)
        out = np.empty((len(chunks), self.chunk), dtype=arr.dtype)
        for i, c in enumerate(chunks):
            out[i] = np.frombuffer(os.pread(self._fd, width, base + int(c) * width), arr.dtype)
        return out

    def val_batches(self, n_tokens: int, batch_size: int):
        """The first ceil(n_tokens / T) validation chunks, in batches; the same every call."""
        n_chunks = min(self.n_val_chunks, -(-n_tokens // self.seq_len))
        for start in range(0, n_chunks, batch_size):
            stop = min(n_chunks, start + batch_size)
            block = self.val[start * self.chunk : stop * self.chunk]
            yield np.asarray(block, dtype=np.int64).reshape(stop - start, self.chunk)

    def check_eval(self, n_tokens: int) -> None:
        if self.n_val_chunks * self.seq_len < n_tokens:
            raise UserError(
                f"data: validation set holds {self.n_val_chunks * self.seq_len:,} predicted "
                f"tokens, fewer than one evaluation (train.eval_tokens = {n_tokens:,})"
            )


# ----------------------------------------------------------------------------- token files


def write_tokens(path: Path, tokens: np.ndarray) -> None:
    """Atomic write of a flat token file."""
    atomic_write(path, tokens.tofile)


def write_json(path: Path, obj: Any) -> None:
    atomic_text(path, json.dumps(obj, indent=1, sort_keys=True))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def open_tokens(path: Path, dtype: np.dtype | str) -> np.ndarray:
    """Memory-map a flat token file (an empty file is an empty array: mmap refuses it)."""
    if Path(path).stat().st_size == 0:
        return np.zeros(0, dtype=np.dtype(dtype))
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def load_data(
    cfg, cache_root: Path, min_train_tokens: int = 0, min_val_tokens: int = 0
) -> TokenData:
    """The configured source as `TokenData`, building its cache on first use. A text
    corpus whose validation split holds fewer than `min_val_tokens` predicted tokens is
    refused before its training split is tokenized."""
    kind = cfg.data.kind
    cap = cfg.data.unique_tokens
    if kind == "synthetic":
        from chinchilla.data.synthetic import load_synthetic

        need = min_train_tokens if cap is None else min(min_train_tokens, cap)
        return capped(load_synthetic(cfg, cache_root, need), cap)
    if kind == "tokens":
        from chinchilla.data.corpus import load_token_files

        return capped(load_token_files(cfg), cap)
    from chinchilla.data.corpus import load_text_corpus

    return capped(load_text_corpus(cfg, min_val_tokens), cap)


def capped(data: TokenData, unique_tokens: int | None) -> TokenData:
    """`data` trained on its first `unique_tokens` predicted tokens only (whole chunks),
    repeated: a split holding fewer is refused, since the cap would not hold."""
    if unique_tokens is None:
        return data
    chunks = unique_tokens // data.seq_len
    if chunks > data.n_train_chunks:
        raise UserError(
            f"data.unique_tokens = {unique_tokens:,}: the training split holds only "
            f"{data.train_tokens:,} predicted tokens"
        )
    data.cap_chunks = chunks
    return data
