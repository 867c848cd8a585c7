import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.data import load_data
from chinchilla.data.synthetic import irreducible_loss
from chinchilla.errors import UserError

runner = CliRunner()


def test_synthetic_data_is_deterministic_and_knows_its_entropy(micro_config, tmp_path):
    cfg = load_config(micro_config)
    a = load_data(cfg, tmp_path / "a", 5000)
    b = load_data(cfg, tmp_path / "b", 5000)
    assert np.array_equal(a.train_batch(3, 4, 0), b.train_batch(3, 4, 0))
    assert a.train_batch(0, 4, 0)[:, 0].tolist() == [0, 0, 0, 0]  # documents start at BOS
    h = irreducible_loss(a, 512)
    assert 0.5 < h < np.log(16)
    with pytest.raises(UserError, match="fewer than one evaluation"):
        a.check_eval(10**9)


def _text_config(tmp_path, corpus, extra="", split="val_fraction: 0.3"):
    p = tmp_path / "text.yaml"
    p.write_text(f"""
model: {{family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}}
grid: {{budgets: [2e8], sizes_per_budget: 2, size_span: 2}}
train: {{batch_size: 4, evals: 1, eval_tokens: 64, lr: 3e-3}}
data: {{kind: text, path: '{corpus}', {split}{extra}}}
""")
    return p


def _corpus(tmp_path, n_docs=40):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["scaling", "laws", "compute", "tokens", "parameters", "loss", "optimal", "data"]
    for i in range(n_docs):
        text = " ".join(rng.choice(words, 200)) + f" ünïcode {i}\n"
        (folder / ("sub" if i % 2 else ".") / f"doc{i}.txt").write_text(text, encoding="utf-8")
    return folder


def test_text_corpus_is_tokenized_once_and_split_by_document(tmp_path):
    corpus = _corpus(tmp_path)
    cfg = load_config(_text_config(tmp_path, corpus))
    data = load_data(cfg, tmp_path / "cache")
    assert data.vocab_size == 257 and data.meta["train_documents"] > data.meta["val_documents"] > 0
    assert int(data.train.max()) <= 256
    cache = data.meta["cache"]
    again = load_data(cfg, tmp_path / "cache")
    assert again.meta["cache"] == cache
    (corpus / "doc0.txt").write_text("changed\n")
    changed = load_data(cfg, tmp_path / "cache")
    assert changed.meta["cache"] != cache


def test_jsonl_and_parquet_text_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"document number {i} " * 30 for i in range(30)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    pq.write_table(pa.table({"body": docs}), tmp_path / "c.parquet")
    for kind, name, col in (("jsonl", "c.jsonl", "text"), ("parquet", "c.parquet", "body")):
        cfg = load_config(
            _text_config(tmp_path, tmp_path / name, f", text_column: {col}"), [f"data.kind={kind}"]
        )
        data = load_data(cfg, tmp_path)
        assert data.meta["train_documents"] + data.meta["val_documents"] == 30


def test_token_files(tmp_path):
    rng = np.random.default_rng(0)
    rng.integers(0, 500, 5000).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 500, 2000).astype(np.uint16).tofile(tmp_path / "val.bin")
    cfg = load_config(_text_config(tmp_path, tmp_path), ["data.kind=tokens", "data.vocab_size=500"])
    data = load_data(cfg, tmp_path)
    assert data.train_tokens == (5000 // 17) * 16
    bad = load_config(_text_config(tmp_path, tmp_path), ["data.kind=tokens", "data.vocab_size=100"])
    with pytest.raises(UserError, match="beyond the vocabulary"):
        load_data(bad, tmp_path)


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("undecodable", "not UTF-8"),
        ("small_val", "fewer than one evaluation"),
    ],
)
def test_bad_corpora_exit_2_before_training(tmp_path, case, fragment):
    corpus = tmp_path / "c"
    corpus.mkdir()
    extra = ""
    if case == "missing":
        corpus = tmp_path / "nowhere"
    elif case == "empty":
        (corpus / "a.txt").write_text("")
    elif case == "undecodable":  # a text tokenizer under encoding_errors: strict
        (corpus / "a.txt").write_text("fine text\n" * 50)
        (corpus / "b.txt").write_bytes(b"ok \xff\xfe broken")
        extra = ", tokenizer: bpe, vocab_size: 300, encoding_errors: strict"
    else:
        (corpus / "a.txt").write_text("x" * 5000)
        extra = ", val_fraction: 0.000001"
    cfg = _text_config(tmp_path, corpus, extra)
    r = runner.invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.output
    assert fragment in r.output
    if case == "undecodable":
        assert "b.txt" in r.output and "byte 3" in r.output
    assert not (tmp_path / "out").exists()  # a failed start leaves nothing behind


def test_a_runs_synthetic_data_does_not_depend_on_the_rest_of_the_sweep(micro_config, tmp_path):
    cfg = load_config(micro_config)
    small = load_data(cfg, tmp_path / "s", 3_000)
    large = load_data(cfg, tmp_path / "l", 300_000)
    assert np.array_equal(small.train_batch(5, 8, 0), large.train_batch(5, 8, 0))
    assert np.array_equal(np.asarray(small.val), np.asarray(large.val))


def test_bpe_tokenizer_is_trained_on_the_corpus_and_cached(tmp_path):
    pytest.importorskip("tokenizers")
    corpus = _corpus(tmp_path)
    cfg = load_config(_text_config(tmp_path, corpus, ", tokenizer: bpe, vocab_size: 300"))
    data = load_data(cfg, tmp_path / "cache")
    assert data.vocab_size == 300
    assert int(np.asarray(data.train).max()) < 300
    assert data.meta["tokenizer"].startswith("bpe-")
    assert data.train_tokens < 40 * 200 * 6  # fewer tokens than bytes: merges were learnt
    again = load_data(cfg, tmp_path / "cache")
    assert again.meta["cache"] == data.meta["cache"]


def test_synthetic_training_data_is_the_same_on_any_number_of_processes(tmp_path, monkeypatch):
    from chinchilla.config import load_config as load
    from chinchilla.data import synthetic

    from .conftest import ROOT

    cfg = load(ROOT / "configs" / "markov.yaml")
    files = []
    for workers in (1, 2):
        monkeypatch.setattr(synthetic, "generation_workers", lambda w=workers: w)
        d = synthetic.load_synthetic(cfg, tmp_path / f"w{workers}", 5 * 4096 * cfg.model.seq_len)
        files.append(np.asarray(d.train).copy())
    assert len(files[0]) > 4 * 4096 and np.array_equal(files[0], files[1])


def test_large_rule_tables_are_drawn_in_blocks_without_replacement(monkeypatch):
    from chinchilla.data import synthetic

    monkeypatch.setattr(synthetic, "_GUMBEL_LIMIT", 0)  # force the blocked path
    monkeypatch.setattr(synthetic, "_BLOCK_RULES", 1000)
    rng = np.random.default_rng(0)
    zipf = np.arange(1, 64) ** -1.1
    zipf /= zipf.sum()
    sup = synthetic._draw_supports(rng, zipf, 5000, 6)
    assert sup.shape == (5000, 6) and sup.min() >= 1 and sup.max() <= 63
    assert all(len(set(row)) == 6 for row in sup)  # without replacement
    # the first draw of a row follows the Zipf weights
    first = np.bincount(sup[:, 0] - 1, minlength=63) / 5000
    assert np.abs(first - zipf).max() < 0.02


def _messy_corpus(tmp_path):
    """Good documents, one file that is not UTF-8, one binary file."""
    corpus = _corpus(tmp_path, n_docs=30)
    (corpus / "legacy.h").write_bytes(b"/* caf\xe9 */ int x;\n" * 20)  # Latin-1
    (corpus / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return corpus


def _load(tmp_path, corpus, extra=""):
    return load_data(load_config(_text_config(tmp_path, corpus, extra)), tmp_path / "unused")


def test_byte_tokens_read_raw_bytes_and_binary_files_are_skipped(tmp_path):
    corpus = _messy_corpus(tmp_path)
    data = _load(tmp_path, corpus)
    tokens = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    assert 0xE9 in tokens  # the Latin-1 byte, as it is
    assert data.meta["files_not_utf8"] == [] and data.meta["invalid_bytes"] == 0
    assert [p.endswith("logo.png") for p in data.meta["binary_files_skipped"]] == [True]
    assert "skipped 1 binary file(s) (logo.png)" in data.meta["notes"]
    assert data.meta["train_documents"] + data.meta["val_documents"] == 31


@pytest.mark.parametrize("policy", ["replace", "skip", "strict"])
def test_text_tokenizers_decode_under_the_encoding_policy(tmp_path, policy):
    corpus = _messy_corpus(tmp_path)
    extra = f", tokenizer: bpe, vocab_size: 300, encoding_errors: {policy}"
    if policy == "strict":
        with pytest.raises(UserError, match=r"legacy.h is not UTF-8 text \(byte 6"):
            _load(tmp_path, corpus, extra)
        return
    data = _load(tmp_path, corpus, extra)
    assert [p.endswith("legacy.h") for p in data.meta["files_not_utf8"]] == [True]
    assert data.meta["invalid_bytes"] == 20  # one invalid byte per line
    docs = data.meta["train_documents"] + data.meta["val_documents"]
    assert docs == (31 if policy == "replace" else 30)
    assert f"data.encoding_errors: {policy}" in data.meta["notes"]


def test_the_token_cache_stays_out_of_the_corpus(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path)
    listing = sorted(p.relative_to(corpus) for p in corpus.rglob("*"))
    monkeypatch.setenv("CHINCHILLA_CACHE", str(tmp_path / "user-cache"))
    for p in [corpus, *corpus.rglob("*")]:  # read-only (root may still write: checked below)
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        data = _load(tmp_path, corpus)
    finally:
        for p in [corpus, *corpus.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert sorted(p.relative_to(corpus) for p in corpus.rglob("*")) == listing
    assert data.meta["cache"].startswith(str(tmp_path / "user-cache"))


_TOKENIZE = """
import sys
from chinchilla.config import load_config
from chinchilla.data import load_data
d = load_data(load_config(sys.argv[1]), sys.argv[2])
print(d.meta["cache"])
"""


def test_two_processes_tokenizing_one_corpus_publish_one_entry(tmp_path):
    import os
    import subprocess
    import sys

    corpus = _corpus(tmp_path, n_docs=400)
    cfg = _text_config(tmp_path, corpus)
    env = os.environ | {"CHINCHILLA_CACHE": str(tmp_path / "shared-cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TOKENIZE, str(cfg), str(tmp_path / "x")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    folders = {o.strip().splitlines()[-1] for o, _ in outs}
    assert len(folders) == 1  # one entry, used by both
    entries = sorted(p.name for p in (tmp_path / "shared-cache").iterdir())
    assert not [e for e in entries if ".tmp" in e]  # no half-built leftovers


def test_the_corrected_command_runs_after_a_failed_start(tmp_path):
    corpus = _corpus(tmp_path)
    cfg = _text_config(tmp_path, corpus)
    out = tmp_path / "out"
    bad = runner.invoke(app, ["sweep", str(cfg), "--out", str(out), "--set", "data.vocab_size=99"])
    assert bad.exit_code == 2 and not out.exists()
    out.mkdir()  # an existing, empty directory stays, and stays empty
    bad = runner.invoke(app, ["sweep", str(cfg), "--out", str(out), "--set", "data.vocab_size=99"])
    assert bad.exit_code == 2 and list(out.iterdir()) == []
    good = runner.invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert good.exit_code == 0, good.output


def test_token_files_are_the_same_bytes_on_any_number_of_workers(tmp_path, monkeypatch):
    from chinchilla.data import corpus

    monkeypatch.setattr(corpus, "_SHARD_BYTES", 3000)  # many shards from a small corpus
    src = _corpus(tmp_path, n_docs=60)
    files = {}
    for workers in (1, 2):
        monkeypatch.setenv("CHINCHILLA_CACHE", str(tmp_path / f"cache{workers}"))
        data = _load(tmp_path, src, f", workers: {workers}")
        assert data.meta["tokenize_workers"] == workers
        files[workers] = (np.asarray(data.train).tobytes(), np.asarray(data.val).tobytes())
    assert len(corpus._shards(corpus._text_files(load_config(_text_config(tmp_path, src))))) > 4
    assert files[1] == files[2]


def test_a_too_small_validation_split_stops_before_the_training_split(tmp_path, monkeypatch):
    from chinchilla.data import corpus

    seen = []
    real = corpus._tokenize_shard

    def spy(job):
        seen.append(job[1])
        return real(job)

    monkeypatch.setattr(corpus, "_tokenize_shard", spy)
    cfg = load_config(_text_config(tmp_path, _corpus(tmp_path), ", workers: 1"))
    with pytest.raises(UserError, match="before tokenizing the training split"):
        load_data(cfg, tmp_path / "unused", min_val_tokens=10**7)
    assert seen and set(seen) == {"val"}


def test_prepare_builds_the_data_and_the_sweep_reuses_it(tmp_path):
    cfg = _text_config(tmp_path, _corpus(tmp_path))
    out = tmp_path / "out"
    r = runner.invoke(app, ["prepare", str(cfg), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["train_tokens"] > 0 and info["val_tokens"] > 0 and info["tokenize_mb_per_s"] > 0
    assert info["largest_run_epochs"] > 0
    again = runner.invoke(app, ["prepare", str(cfg), "--out", str(out), "--json"])
    assert json.loads(again.stdout)["cache"] == info["cache"]


def test_bpe_is_trained_on_a_bounded_sample_of_the_corpus(tmp_path):
    import shutil

    from chinchilla.data.corpus import _text_files, tokenizer_sample

    corpus = _corpus(tmp_path, n_docs=40)
    cfg = load_config(_text_config(tmp_path, corpus))
    files = _text_files(cfg)
    budget = 5 * files[0].stat().st_size
    sample = tokenizer_sample(files, budget)
    assert sum(f.stat().st_size for f in sample[:-1]) < budget <= sum(
        f.stat().st_size for f in sample
    ) or len(sample) == len(files)
    assert 3 <= len(sample) < len(files) and sample == tokenizer_sample(files, budget)
    # the same corpus elsewhere gives the same sample (hashes of paths within it)
    moved = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(corpus, moved)
    again = tokenizer_sample(_text_files(load_config(_text_config(tmp_path, moved))), budget)
    assert [f.relative_to(moved) for f in again] == [f.relative_to(corpus) for f in sample]
    assert tokenizer_sample(files, 10**12) == files
    extra = f", tokenizer: bpe, vocab_size: 300, tokenizer_sample_bytes: {budget}"
    small = _load(tmp_path, corpus, extra)
    assert f"-300-{budget}.json" in small.meta["tokenizer"]


def _doc_tokens(corpus_docs):
    """(hash, byte tokens) of each document, recomputed here from the files."""
    from chinchilla.data.corpus import _doc_hash

    return sorted((_doc_hash(d), len(d) + 1) for d in corpus_docs)


@pytest.mark.parametrize("cap_factor", [32.0, 0.05])  # 0.05: the hash cap must grow
def test_validation_is_sized_in_tokens_by_the_smallest_hashes(tmp_path, monkeypatch, cap_factor):
    from chinchilla.data import corpus

    monkeypatch.setattr(corpus, "_SHARD_BYTES", 3000)
    monkeypatch.setattr(corpus, "_VAL_CAP_FACTOR", cap_factor)
    src = _corpus(tmp_path, n_docs=60)
    docs = [f.read_bytes() for f in sorted(src.rglob("*.txt"))]
    got = {}
    for workers in (1, 2):
        monkeypatch.setenv("CHINCHILLA_CACHE", str(tmp_path / f"cache{workers}"))
        cfg = load_config(
            _text_config(tmp_path, src, f", workers: {workers}", split="val_tokens: 3000")
        )
        data = load_data(cfg, tmp_path / "unused", min_val_tokens=cfg.train.eval_tokens)
        got[workers] = (np.asarray(data.train).tobytes(), np.asarray(data.val).tobytes())
    assert got[1] == got[2]
    # seq_len 16: 3000 predicted tokens need 188 chunks of 17 = 3196 tokens; the
    # validation documents are those of smallest hash, and no fewer of them would do
    need = -(-3000 // 16) * 17
    ranked = _doc_tokens(docs)
    counts = np.cumsum([t for _, t in ranked])
    k = int(np.searchsorted(counts, need)) + 1  # documents in the split
    assert len(np.asarray(data.val)) == counts[k - 1] >= need > counts[k - 2]
    assert data.meta["val_documents"] == k and data.meta["val_rule"] == "data.val_tokens 3,000"
    assert data.meta["train_documents"] == len(docs) - k
    assert len(np.asarray(data.val)) // 17 * 16 >= 3000


def test_validation_larger_than_the_corpus_or_an_evaluation_larger_than_it(tmp_path):
    src = _corpus(tmp_path, n_docs=4)
    cfg = load_config(_text_config(tmp_path, src, split="val_tokens: 100000"))
    with pytest.raises(UserError, match="whole corpus holds .* fewer than the validation"):
        load_data(cfg, tmp_path / "unused")
    bad = _text_config(tmp_path, src, split="val_tokens: 32")  # eval_tokens is 64
    r = runner.invoke(app, ["plan", str(bad)])
    assert r.exit_code == 2
    assert "train.eval_tokens: 64 tokens per evaluation, more than the validation" in r.output


def test_one_large_jsonl_file_is_cut_into_byte_ranges_without_losing_a_line(tmp_path, monkeypatch):
    from chinchilla.data import corpus

    rng = np.random.default_rng(1)
    words = ["scaling", "laws", "compute", "tokens", "ünïcode", "data"]
    lines = [
        json.dumps({"text": " ".join(rng.choice(words, rng.integers(1, 60)))}) for _ in range(300)
    ]
    src = tmp_path / "one.jsonl"
    src.write_text("\n".join(lines[:150]) + "\n\n" + "\n".join(lines[150:]) + "\n")

    def load(shard_bytes, workers):
        monkeypatch.setattr(corpus, "_SHARD_BYTES", shard_bytes)
        monkeypatch.setenv("CHINCHILLA_CACHE", str(tmp_path / f"cache-{shard_bytes}-{workers}"))
        cfg = load_config(_write_jsonl_config(tmp_path, src, workers))
        shards = corpus._shards(corpus._text_files(cfg), "jsonl")
        data = load_data(cfg, tmp_path / "unused")
        docs = data.meta["train_documents"] + data.meta["val_documents"]
        return len(shards), docs, np.asarray(data.train).tobytes() + np.asarray(data.val).tobytes()

    whole = load(1 << 30, 1)
    assert whole[0] == 1 and whole[1] == 300
    for workers in (1, 2):
        ranged = load(997, workers)  # ranges end mid-line and mid-character
        assert ranged[0] > 20 and ranged[1] == 300 and ranged[2] == whole[2]


def _write_jsonl_config(tmp_path, src, workers):
    p = tmp_path / "jsonl.yaml"
    p.write_text(f"""
model: {{family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}}
grid: {{budgets: [2e8], sizes_per_budget: 2, size_span: 2}}
train: {{batch_size: 4, evals: 1, eval_tokens: 64, lr: 3e-3}}
data: {{kind: jsonl, path: '{src}', val_tokens: 512, workers: {workers}}}
""")
    return p


def test_a_bad_line_in_a_byte_range_is_named_by_its_byte(tmp_path, monkeypatch):
    from chinchilla.data import corpus

    monkeypatch.setattr(corpus, "_SHARD_BYTES", 500)
    good = [json.dumps({"text": f"document number {i} " * 3}) for i in range(40)]
    src = tmp_path / "bad.jsonl"
    text = "\n".join(good[:30]) + "\n{not json\n" + "\n".join(good[30:]) + "\n"
    src.write_text(text)
    cfg = load_config(_write_jsonl_config(tmp_path, src, 1))
    with pytest.raises(UserError, match=rf"bad.jsonl byte {text.index('{not json')}: not a JSON"):
        load_data(cfg, tmp_path / "unused")


def test_the_long_range_copy_is_drawn_and_scored_exactly():
    from chinchilla.data.synthetic import SyntheticSource

    args = (16, (1, 2), (0.5, 0.5), 3, 64, 1.1)
    lag, c = 5, 0.4
    plain = SyntheticSource(*args, seed=0)
    src = SyntheticSource(*args, seed=0, copy_lag=lag, copy_weight=c)
    toks, nll = src.generate(4000, 17, seed=1)
    same, _ = plain.generate(4000, 17, seed=1)
    assert np.array_equal(toks[:, : lag + 1], same[:, : lag + 1])  # no copy before L + 1
    for t in range(1, 17):  # -log p of each drawn token, recomputed from the tables
        x = toks[:, t]
        p = np.zeros(len(x))
        for j in range(2):
            r = src._rule(j, toks, t)
            p += 0.5 * (src.prob[j][r] * (src.support[j][r] == x[:, None])).sum(axis=1)
        if t > lag:
            p = (1 - c) * p + c * (x == toks[:, t - lag])
        np.testing.assert_allclose(np.exp(-nll[:, t - 1]), p, rtol=1e-12)
    late = (toks[:, lag + 1 :] == toks[:, 1 : 17 - lag]).mean()
    assert late > c  # copies, plus chance agreement
    assert nll[:, lag:].mean() < nll[:, :lag].mean()  # context pays from L + 1 on


def test_a_copy_lag_beyond_the_context_is_refused(micro_config):
    r = runner.invoke(
        app,
        ["plan", str(micro_config), "--set", "data.copy_weight=0.3", "--set", "data.copy_lag=16"],
    )
    assert r.exit_code == 2 and "data.copy_lag: 16 is not below model.seq_len 16" in r.output
