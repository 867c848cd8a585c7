"""The quanta source: exact -log p, exact next-token distributions, config identity."""

import itertools

import numpy as np
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.data import load_data
from chinchilla.data.quanta import QuantaSource
from chinchilla.data.synthetic import irreducible_loss, synthetic_source
from chinchilla.errors import UserError

runner = CliRunner()


def test_every_token_is_scored_by_its_exact_probability():
    """-log p of each generated token, recomputed independently: a key token's
    probability is the mass of the facts whose key starts with the tokens so far (in this
    fact) divided by the mass of those matching one token less; a value token is certain."""
    src = QuantaSource(9, 40, key_len=2, value_len=3, zipf_exponent=1.3, seed=4)
    toks, nll = src.generate(3000, 19, seed=7)
    assert (toks[:, 0] == 0).all() and toks[:, 1:].min() >= 1
    p = np.arange(1, 41) ** -1.3
    p /= p.sum()
    keys = {tuple(k): i for i, k in enumerate(src.keys.tolist())}
    assert len(keys) == 40  # distinct keys
    for doc, lp in zip(toks[:200], nll[:200], strict=True):
        body = doc[1:]
        for start in range(0, len(body), 5):
            seg = body[start : start + 5]
            for j, tok in enumerate(seg):
                if j < 2:
                    prefix = tuple(seg[:j])
                    match = [i for k, i in keys.items() if k[:j] == prefix]
                    num = sum(p[i] for i in match if src.keys[i][j] == tok)
                    want = -np.log(num / sum(p[i] for i in match))
                else:
                    assert tok == src.values[keys[tuple(seg[:2])]][j - 2]
                    want = 0.0
                assert lp[start + j] == pytest.approx(want, abs=1e-12)
    # facts are used with the Zipf probabilities
    first = [keys[tuple(d[1:3])] for d in toks]
    freq = np.bincount(first, minlength=40) / len(first)
    assert np.abs(freq - p).max() < 4 * np.sqrt(p[0] / len(first))


def test_next_probs_is_the_distribution_the_tokens_are_drawn_from():
    src = QuantaSource(7, 30, key_len=3, value_len=2, zipf_exponent=1.5, seed=1)
    toks, nll = src.generate(500, 23, seed=2)
    for t in range(1, 23):
        q = src.next_probs(toks, t)
        np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(
            -np.log(q[np.arange(len(toks)), toks[:, t]]), nll[:, t - 1], atol=1e-12
        )
    # an empirical check of one position's whole distribution
    big, _ = src.generate(40000, 3, seed=5)
    emp = np.bincount(big[:, 1], minlength=7) / len(big)
    np.testing.assert_allclose(emp, src.next_probs(big[:1], 1)[0], atol=0.01)


def test_too_many_facts_for_the_keys_is_refused():
    with pytest.raises(UserError, match="distinct keys"):
        QuantaSource(5, 17, key_len=2, value_len=1, zipf_exponent=1.2, seed=0)  # 4^2 keys


QUANTA = """
model: {family: aspect, aspect_ratio: 16, head_dim: 4, seq_len: 16}
grid: {budgets: [2e8], sizes_per_budget: 2, size_span: 2}
train: {batch_size: 4, evals: 1, eval_tokens: 256, lr: 3e-3}
data: {kind: synthetic, vocab_size: 16, process: quanta, n_facts: 200, key_len: 2,
       value_len: 2, zipf_exponent: 1.5, val_tokens: 1024}
"""


def test_a_quanta_sweep_knows_its_bayes_loss(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text(QUANTA)
    cfg = load_config(path)
    src = synthetic_source(cfg)
    assert isinstance(src, QuantaSource)
    data = load_data(cfg, tmp_path / "cache", 5000)
    again = load_data(cfg, tmp_path / "cache2", 5000)
    assert np.array_equal(data.train_batch(0, 4, 0), again.train_batch(0, 4, 0))
    h = irreducible_loss(data, 256)
    # documents of 16 tokens hold 4 facts: half the tokens (the keys) are random
    assert 0.1 < h < np.log(15) / 2
    r = runner.invoke(app, ["plan", str(path), "--set", "data.n_facts=1000"])
    assert r.exit_code == 2 and "data.n_facts" in r.output and "225 keys" in r.output


def test_markov_identities_do_not_change_and_quanta_keys_count_only_for_quanta(micro_config):
    cfg = load_config(micro_config)
    ident = cfg.data_identity()
    assert "process" not in ident and "n_facts" not in ident and "orders" in ident
    q = load_config(micro_config, overrides=["data.process=quanta", "data.vocab_size=32"])
    other = load_config(
        micro_config, overrides=["data.process=quanta", "data.vocab_size=32", "data.n_facts=99"]
    )
    assert "orders" not in q.data_identity() and q.data_identity()["process"] == "quanta"
    assert q.fingerprint() != other.fingerprint()
    for a, b in itertools.combinations([cfg, q, other], 2):
        assert a.data_identity() != b.data_identity()
