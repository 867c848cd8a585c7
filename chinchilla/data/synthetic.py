"""A synthetic language with an exactly known entropy rate.

Why this source. A scaling-law demo needs data on which small models keep improving
with both parameters and tokens, and whose irreducible loss is known, so the fitted E
can be checked. Natural text has Zipf-distributed words, sparse continuations (most
tokens never follow a given context) and dependencies at several ranges. This source
has all three, at a size a CPU can learn from:

- tokens 1..V-1 have Zipf weights w_i ~ rank_i ** -zipf_exponent; token 0 starts
  every document (BOS);
- for each order k in `orders` there is a table of sparse rules: a rule is `support`
  candidate next tokens drawn from the Zipf weights without replacement, with
  probabilities drawn from a flat Dirichlet. The last k tokens pick the rule: order 1
  has one rule per token; higher orders hash the k-token context onto `n_rules` rules;
- the next token is drawn from the mixture p(x | history) = sum_k weight_k p_k(x | last k);
- optionally (`data.copy_weight` c > 0, `data.copy_lag` L), a long-range component:
  from position L + 1 on, with probability c the next token is a copy of the token L
  positions back, p = (1 - c) p_mix(x) + c [x = x_{t-L}]. A model that keeps L tokens
  of context gains; one that cannot (a small recurrent state) does not.

Low orders are learnt by tiny models from few tokens; the hashed high-order contexts
are many and Zipf-distributed (contexts made of frequent tokens recur often, the tail
rarely), so capacity and data both keep paying off, as on text. Because every
conditional is explicit, the exact negative log-likelihood of each generated token is
recorded: the mean over the evaluated validation tokens is the Bayes-optimal loss on
exactly those tokens, the `irreducible_loss` reported next to the fitted E.

Documents are seq_len + 1 tokens long and align with training chunks, so a model
always sees a token's whole history; the Bayes loss is then attainable in principle.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from chinchilla.data import TokenData, open_tokens, token_dtype, write_json, write_tokens
from chinchilla.device import available_cpus
from chinchilla.errors import UserError
from chinchilla.files import atomic_write

BOS = 0
_HASH_MULTIPLIERS = np.array(
    [0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1], dtype=np.uint64
)


class SyntheticSource:
    """The generating process; `generate` returns tokens and their exact -log p."""

    def __init__(
        self,
        vocab_size: int,
        orders,
        order_weights,
        support: int,
        n_rules: int,
        zipf_exponent: float,
        seed: int,
        copy_lag: int = 0,
        copy_weight: float = 0.0,
    ):
        if vocab_size < 3:
            raise UserError("config: data.vocab_size: the synthetic source needs >= 3 tokens")
        if support > vocab_size - 1:
            raise UserError(
                f"config: data.support: {support} exceeds the {vocab_size - 1} non-BOS tokens"
            )
        if max(orders) > len(_HASH_MULTIPLIERS):
            raise UserError(f"config: data.orders: at most order {len(_HASH_MULTIPLIERS)}")
        self.vocab_size = vocab_size
        self.copy_lag, self.copy_weight = int(copy_lag), float(copy_weight)
        self.orders = tuple(int(k) for k in orders)
        self.weights = np.asarray(order_weights, dtype=np.float64)
        rng = np.random.default_rng([seed, 0xC41])
        ranks = rng.permutation(vocab_size - 1) + 1.0
        zipf = ranks**-zipf_exponent
        self.zipf = zipf / zipf.sum()  # over tokens 1..V-1
        self.support: list[np.ndarray] = []  # per order: (R, support) token ids
        self.cdf: list[np.ndarray] = []  # per order: (R, support) cumulative probabilities
        self.prob: list[np.ndarray] = []  # per order: (R, support) probabilities
        for k in self.orders:
            n = vocab_size if k == 1 else n_rules
            sup = _draw_supports(rng, self.zipf, n, support)
            p = rng.dirichlet(np.ones(support), size=n)
            self.support.append(sup)
            self.prob.append(p)
            self.cdf.append(np.cumsum(p, axis=1))

    def _rule(self, j: int, history: np.ndarray, t: int) -> np.ndarray:
        """Rule index of order j for each document at position t; history (B, t)."""
        k = self.orders[j]
        n_rules = len(self.support[j])
        if k == 1:
            return history[:, t - 1]
        h = np.zeros(history.shape[0], dtype=np.uint64)
        for i in range(k):  # BOS stands in before the document start
            tok = history[:, t - 1 - i] if t - 1 - i >= 0 else np.zeros(len(h), np.int64)
            h = (h + tok.astype(np.uint64) + np.uint64(1)) * _HASH_MULTIPLIERS[i]
            h ^= h >> np.uint64(15)
        return (h % np.uint64(n_rules)).astype(np.int64)

    def next_probs(self, toks: np.ndarray, t: int) -> np.ndarray:
        """(B, V) exact distribution of the token at position t >= 1 given toks[:, :t]."""
        B = toks.shape[0]
        rows = np.arange(B)[:, None]
        p = np.zeros((B, self.vocab_size))
        for j in range(len(self.orders)):
            r = self._rule(j, toks, t)
            np.add.at(p, (rows, self.support[j][r]), self.weights[j] * self.prob[j][r])
        if self.copy_weight > 0 and t - self.copy_lag >= 1:
            p *= 1.0 - self.copy_weight
            p[np.arange(B), toks[:, t - self.copy_lag]] += self.copy_weight
        return p

    def generate(self, n_docs: int, doc_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n_docs, doc_len) ids starting with BOS, and (n_docs, doc_len - 1) exact
        -log p(x_t | x_<t) in nats of every token after BOS."""
        rng = np.random.default_rng([seed, 0xDA7A])
        toks = np.zeros((n_docs, doc_len), dtype=np.int64)
        nll = np.zeros((n_docs, doc_len - 1), dtype=np.float64)
        for t in range(1, doc_len):
            rules = [self._rule(j, toks, t) for j in range(len(self.orders))]
            comp = rng.choice(len(self.orders), size=n_docs, p=self.weights)
            u = rng.random(n_docs)
            x = np.zeros(n_docs, dtype=np.int64)
            for j, r in enumerate(rules):
                sel = comp == j
                cdf = self.cdf[j][r[sel]]
                pos = np.minimum((cdf < u[sel, None]).sum(axis=1), cdf.shape[1] - 1)
                x[sel] = self.support[j][r[sel], pos]
            copy = self.copy_weight > 0 and t - self.copy_lag >= 1
            if copy:  # extra draws only when copying: other data stay bit for bit
                back = toks[:, t - self.copy_lag]
                x = np.where(rng.random(n_docs) < self.copy_weight, back, x)
            p = np.zeros(n_docs)
            for j, r in enumerate(rules):  # exact mixture probability of the drawn token
                match = self.support[j][r] == x[:, None]
                p += self.weights[j] * (self.prob[j][r] * match).sum(axis=1)
            if copy:
                p = (1.0 - self.copy_weight) * p + self.copy_weight * (x == back)
            toks[:, t] = x
            nll[:, t - 1] = -np.log(p)
        return toks, nll


# Up to this many Gumbel keys (rules x vocabulary) per order, supports are drawn by
# Gumbel top-k in one array; beyond it (the GPU config: 1M rules x 4k tokens would be a
# 34 GB array) by successive sampling in blocks. Both draw `support` tokens without
# replacement with probabilities proportional to the Zipf weights (the first distinct
# values of draws with replacement follow that law), so the language is the same; the
# random streams differ, and small configs keep their data bit for bit.
_GUMBEL_LIMIT = 2**26
_BLOCK_RULES = 65536


def _draw_supports(rng, zipf: np.ndarray, n: int, support: int) -> np.ndarray:
    """(n, support) token ids (1..V-1), each row drawn without replacement from `zipf`."""
    if n * len(zipf) <= _GUMBEL_LIMIT:
        keys = np.log(zipf) + rng.gumbel(size=(n, len(zipf)))
        return np.argpartition(-keys, support - 1, axis=1)[:, :support] + 1
    cdf = np.cumsum(zipf)
    cdf /= cdf[-1]
    out = np.empty((n, support), dtype=np.int64)
    for start in range(0, n, _BLOCK_RULES):
        stop = min(n, start + _BLOCK_RULES)
        rows = np.arange(start, stop)
        while len(rows):  # rows whose draws held fewer than `support` distinct tokens
            width = 4 * support
            draws = np.searchsorted(cdf, rng.random((len(rows), width)), side="right")
            draws = np.minimum(draws, len(zipf) - 1)
            earlier = np.tril(np.ones((width, width), dtype=bool), -1)
            dup = ((draws[:, :, None] == draws[:, None, :]) & earlier).any(axis=2)
            rank = np.cumsum(~dup, axis=1)
            ok = rank[:, -1] >= support
            pick = ~dup & (rank <= support)
            out[rows[ok]] = draws[ok][pick[ok]].reshape(-1, support) + 1
            rows = rows[~ok]
    return out


def synthetic_source(cfg):
    """The configured process: `SyntheticSource` (markov) or `QuantaSource` (quanta)."""
    d = cfg.data
    if d.process == "quanta":
        from chinchilla.data.quanta import QuantaSource

        return QuantaSource(
            d.resolved_vocab_size,
            d.n_facts,
            d.key_len,
            d.value_len,
            d.zipf_exponent,
            seed=cfg.train.seed,
        )
    return SyntheticSource(
        d.resolved_vocab_size,
        d.orders,
        d.order_weights,
        d.support,
        d.n_rules,
        d.zipf_exponent,
        seed=cfg.train.seed,
        copy_lag=d.copy_lag,
        copy_weight=d.copy_weight,
    )


def _cache_key(cfg, n_train_docs: int, n_val_docs: int) -> str:
    payload = {
        "data": cfg.data_identity(),
        "seed": cfg.train.seed,
        "seq_len": cfg.model.seq_len,
        "train_docs": n_train_docs,
        "val_docs": n_val_docs,
        "version": 2,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _generate_in_blocks(
    src: SyntheticSource, n_docs: int, doc_len: int, seed: int, block: int = 4096
):
    """Whole blocks with their own seeds, the last one truncated: document i is the same
    whatever the total, so a run's data does not depend on the rest of the sweep."""
    for start in range(0, n_docs, block):
        toks, nll = src.generate(block, doc_len, seed=seed * 1_000_003 + start)
        keep = min(block, n_docs - start)
        yield toks[:keep], nll[:keep]


_SOURCE: SyntheticSource | None = None  # shared with forked generator processes


def _fill_block(args) -> int:
    """Generate one block of documents into its place in the token file (a forked
    process; the source's tables are shared with the parent, not copied)."""
    path, start, n_docs, doc_len, seed, block, dtype = args
    toks, _ = _SOURCE.generate(block, doc_len, seed=seed * 1_000_003 + start)
    keep = min(block, n_docs - start)
    data = np.ascontiguousarray(toks[:keep].astype(dtype))
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data.tobytes(), start * doc_len * np.dtype(dtype).itemsize)
    finally:
        os.close(fd)
    return keep


def _write_split(
    src: SyntheticSource, path: Path, n_docs: int, doc_len: int, seed: int, dtype, workers: int
) -> None:
    """Generate `n_docs` documents straight into `path`, block by block, on `workers`
    processes. Block i has its own seed, so the file is the same for any number of
    workers and memory holds a few blocks, not the split."""
    global _SOURCE
    block = 4096
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.truncate(n_docs * doc_len * np.dtype(dtype).itemsize)
    jobs = [(str(tmp), s, n_docs, doc_len, seed, block, dtype) for s in range(0, n_docs, block)]
    _SOURCE = src
    try:
        if workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(_fill_block, jobs):
                    pass
        else:
            for job in jobs:
                _fill_block(job)
        os.replace(tmp, path)
    finally:
        _SOURCE = None
        tmp.unlink(missing_ok=True)


def generation_workers() -> int:
    return available_cpus()


def load_synthetic(cfg, cache_root: Path, min_train_tokens: int) -> TokenData:
    """Generate (once) and memory-map enough documents for `min_train_tokens` training
    tokens plus `data.val_tokens` validation tokens. Training documents are generated in
    parallel on every usable core and streamed to disk; validation documents (few) keep
    their exact -log p for the irreducible loss."""
    T = cfg.model.seq_len
    n_train_docs = max(1, -(-max(min_train_tokens, T) // T))
    n_val_docs = max(1, -(-cfg.data.val_tokens // T))
    folder = Path(cache_root) / f"synthetic-{_cache_key(cfg, n_train_docs, n_val_docs)}"
    meta_path = folder / "meta.json"
    dtype = token_dtype(cfg.data.resolved_vocab_size)
    if not meta_path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        src = synthetic_source(cfg)
        _write_split(src, folder / "train.bin", n_train_docs, T + 1, 1, dtype, generation_workers())
        toks, val_nll = [], []
        for t, nll in _generate_in_blocks(src, n_val_docs, T + 1, 2):
            toks.append(t.astype(dtype).ravel())
            val_nll.append(nll)
        write_tokens(folder / "val.bin", np.concatenate(toks))
        nll = np.concatenate(val_nll).astype(np.float64)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, nll)

        atomic_write(folder / "val_nll.npy", save)
        write_json(
            meta_path,
            {
                "source": "synthetic",
                "vocab_size": cfg.data.resolved_vocab_size,
                "dtype": dtype.name,
                "train_docs": n_train_docs,
                "val_docs": n_val_docs,
                "entropy_rate_estimate": float(np.concatenate(val_nll).mean()),
            },
        )
    meta = json.loads(meta_path.read_text())
    val_nll = np.load(folder / "val_nll.npy", mmap_mode="r")
    return TokenData(
        train=open_tokens(folder / "train.bin", dtype),
        val=open_tokens(folder / "val.bin", dtype),
        vocab_size=cfg.data.resolved_vocab_size,
        seq_len=T,
        meta=meta | {"val_nll": val_nll, "cache": str(folder)},
        shuffle=False,  # documents are i.i.d. draws: their order needs no shuffling
    )


def irreducible_loss(data: TokenData, n_tokens: int) -> float | None:
    """Bayes-optimal loss (nats/token) on the validation tokens an evaluation uses."""
    val_nll = data.meta.get("val_nll")
    if val_nll is None:
        return None
    n_chunks = min(data.n_val_chunks, -(-n_tokens // data.seq_len))
    return float(np.asarray(val_nll[:n_chunks]).mean())
