"""A synthetic language of Zipf-distributed facts, after the quanta model of scaling.

Michaud et al. 2023 ("The Quantization Model of Neural Scaling") explain power-law
scaling by many discrete pieces of knowledge ("quanta") used with Zipf frequencies: a
model learns the most frequent ones first, as many as its parameters can hold and as
its tokens have shown often enough, and the loss falls by each learnt piece's share.
This source makes that literal, so the demo's loss has a power-law shape in N and in D
by construction and an exactly known irreducible part:

- there are `n_facts` facts; fact k (k = 1..K in rank order) is used with probability
  p_k ~ k ** -zipf_exponent;
- a fact is a key of `key_len` tokens (distinct for every fact) and a value of
  `value_len` tokens (drawn uniformly from tokens 1..V-1 once, when the source is built);
- a document is BOS and then facts drawn independently from p, each written as key then
  value, to the document's end (the last one may be cut).

Only the keys are random: a key token's -log p is its conditional probability given
the key tokens before it in the same fact (a sum over the facts that share that
prefix); value tokens are determined by their key (-log p = 0). The recorded -log p of
every validation token is therefore the Bayes-optimal loss on exactly those tokens.

What a model has to learn. The keys' distribution (a table over prefixes, learnt early
by every size) and each fact's value. A fact that is not learnt costs about
log(V - 1) nats per value token; one that is learnt costs nothing. If a model of N
parameters can hold the values of its n(N) ~ N most frequent facts and D tokens show
fact k about D p_k times, the reducible loss is about sum over unlearnt k of p_k,
~ n^(1 - s) with s = zipf_exponent: a power law in N with exponent s - 1 and, when
learning needs a fixed number of sightings, in D with exponent (s - 1) / s. What SGD
on small Transformers makes of it is measured, not assumed: the README reports the fit.
"""

from __future__ import annotations

import numpy as np

from chinchilla.errors import UserError


def check_keys(vocab_size: int, n_facts: int, key_len: int) -> None:
    """Every fact needs its own key of `key_len` tokens from 1..V-1: one line naming
    data.n_facts when there are fewer keys than facts."""
    keys = (vocab_size - 1) ** key_len
    if n_facts > keys:
        raise UserError(
            f"config: data.n_facts: {n_facts} facts need distinct keys, but "
            f"{vocab_size - 1} tokens make only {keys} keys of {key_len} tokens"
        )


class QuantaSource:
    """The generating process; same interface as `SyntheticSource`: `generate` returns
    tokens and their exact -log p, `next_probs` the exact next-token distribution."""

    def __init__(
        self,
        vocab_size: int,
        n_facts: int,
        key_len: int,
        value_len: int,
        zipf_exponent: float,
        seed: int,
    ):
        V = vocab_size - 1  # tokens 1..V-1 (0 is BOS)
        if vocab_size < 3:
            raise UserError("config: data.vocab_size: the quanta source needs >= 3 tokens")
        if min(n_facts, key_len, value_len) < 1:
            raise UserError("config: data.n_facts, key_len and value_len must be >= 1")
        check_keys(vocab_size, n_facts, key_len)
        self.vocab_size = vocab_size
        self.key_len, self.value_len = int(key_len), int(value_len)
        self.seg = self.key_len + self.value_len
        rng = np.random.default_rng([seed, 0x9A7A])
        p = np.arange(1, n_facts + 1, dtype=np.float64) ** -float(zipf_exponent)
        self.p = p / p.sum()
        self.cdf = np.cumsum(self.p)
        self.cdf[-1] = 1.0
        codes = rng.choice(V**key_len, size=n_facts, replace=False)
        self.keys = np.stack(
            [(codes // V**i) % V + 1 for i in range(key_len - 1, -1, -1)], axis=1
        ).astype(np.int64)  # (K, key_len), first key token first
        self.values = rng.integers(1, vocab_size, size=(n_facts, value_len), dtype=np.int64)
        # -log p of each key token of each fact given the key tokens before it:
        # prefix mass P(first j tokens) summed over the facts sharing them
        self.key_nll = np.zeros((n_facts, key_len))
        prev = np.ones(n_facts)
        for j in range(key_len):
            pref = self._prefix_codes(self.keys[:, : j + 1])
            _, inv = np.unique(pref, return_inverse=True)
            mass = np.bincount(inv, weights=self.p)[inv]
            self.key_nll[:, j] = -np.log(mass / prev)
            prev = mass
        self.lookup = np.full(V**key_len, -1, dtype=np.int64)  # key code -> fact
        self.lookup[self._prefix_codes(self.keys)] = np.arange(n_facts)

    def _prefix_codes(self, toks: np.ndarray) -> np.ndarray:
        """Integer code of each row of key tokens (1..V-1 each)."""
        V = self.vocab_size - 1
        code = np.zeros(toks.shape[0], dtype=np.int64)
        for i in range(toks.shape[1]):
            code = code * V + (toks[:, i] - 1)
        return code

    def generate(self, n_docs: int, doc_len: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n_docs, doc_len) ids starting with BOS, and (n_docs, doc_len - 1) exact
        -log p(x_t | x_<t) in nats of every token after BOS."""
        rng = np.random.default_rng([seed, 0xDA7A])
        n_seg = -(-(doc_len - 1) // self.seg)
        facts = np.minimum(
            np.searchsorted(self.cdf, rng.random((n_docs, n_seg)), side="right"),
            len(self.p) - 1,
        )
        body = np.concatenate([self.keys[facts], self.values[facts]], axis=2)
        nll = np.concatenate(
            [self.key_nll[facts], np.zeros((n_docs, n_seg, self.value_len))], axis=2
        )
        toks = np.zeros((n_docs, doc_len), dtype=np.int64)
        toks[:, 1:] = body.reshape(n_docs, -1)[:, : doc_len - 1]
        return toks, nll.reshape(n_docs, -1)[:, : doc_len - 1].copy()

    def next_probs(self, toks: np.ndarray, t: int) -> np.ndarray:
        """(B, V) exact distribution of the token at position t >= 1 given toks[:, :t]."""
        B = toks.shape[0]
        j = (t - 1) % self.seg  # position within the current fact
        begin = t - j  # the fact's first token
        out = np.zeros((B, self.vocab_size))
        if j < self.key_len:
            prefix = toks[:, begin:t]  # (B, j)
            match = np.ones((B, len(self.p)), dtype=bool)
            for i in range(j):
                match &= self.keys[None, :, i] == prefix[:, i : i + 1]
            mass = match * self.p  # (B, K)
            rows = np.repeat(np.arange(B), len(self.p))
            np.add.at(out, (rows, np.tile(self.keys[:, j], B)), mass.ravel())
            return out / out.sum(axis=1, keepdims=True)
        fact = self.lookup[self._prefix_codes(toks[:, begin : begin + self.key_len])]
        if (fact < 0).any():
            raise ValueError("a key that belongs to no fact: not a document of this source")
        out[np.arange(B), self.values[fact, j - self.key_len]] = 1.0
        return out
