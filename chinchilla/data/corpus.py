"""Real corpora on disk: token files, and text tokenized once into a cached token file.

- `tokens`: flat token files as nanoGPT writes them (`train.bin`, `val.bin`; uint16 or
  uint32), memory-mapped as they are.
- `text` (a file, a folder searched recursively, or a glob of text files; one document
  per file), `jsonl` / `parquet` / `dataset` (a column of documents; `dataset` is a
  folder written by `datasets.save_to_disk`, read as Arrow files).

Real corpora as they come: byte tokens read a file's raw bytes (no decoding, so a file
that is not UTF-8 is still text to them); text tokenizers decode UTF-8 under
`data.encoding_errors` (strict: stop naming the file and byte; replace: each invalid
byte becomes U+FFFD; skip: leave the document out), counting the files and bytes
affected. Binary files (a NUL byte or a known binary signature in their first 8 KB) are
skipped and counted. One summary line says what was replaced or skipped.

Text is tokenized once, streaming document by document (memory does not grow with the
corpus), into `train.bin` / `val.bin` in a cache folder keyed by the corpus contents and
the tokenizer, in the user's cache (`data.cache_dir`, else `$CHINCHILLA_CACHE`, else
`$XDG_CACHE_HOME/chinchilla` or `~/.cache/chinchilla`), never inside the corpus, so a
read-only or shared corpus works. A cache entry is built in a temporary folder and
published by one rename: two sweeps tokenizing the same corpus at once both finish and
one entry remains. Every run and every worker of a sweep then memory-maps the same files.
Documents go to validation by a hash of their contents, so the split never depends on
file order or on the number of workers: by default the documents with the smallest
hashes, as few as hold `data.val_tokens` predicted tokens (found in a first pass that
tokenizes only documents below a hash cap, before the training split is touched); with
`data.val_fraction`, those whose hash falls below that fraction. Tokens are UTF-8 bytes (0-255) with 256 ending each
document, or a BPE tokenizer (`tokenizers` library) trained on the corpus, or a local
`tokenizer.json`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla.data import TokenData, open_tokens, token_dtype, write_json
from chinchilla.device import available_cpus
from chinchilla.errors import UserError
from chinchilla.files import atomic_write

EOD_BYTES = 256  # end-of-document token of the byte tokenizer
_CACHE_VERSION = 3  # 2: raw bytes for byte tokens, binary files skipped, encoding policy;
# 3: texts above _DOC_BYTES cut into documents
# Signatures of common binary formats (PNG, GIF, PDF, zip, gzip, ELF, JPEG, bzip2, xz).
_BINARY_MAGIC = (
    b"\x89PNG",
    b"GIF8",
    b"%PDF",
    b"PK\x03\x04",
    b"\x1f\x8b",
    b"\x7fELF",
    b"\xff\xd8\xff",
    b"BZh",
    b"\xfd7zXZ",
)
_ESCAPED = re.compile("[\udc80-\udcff]")  # undecodable bytes under surrogateescape


class Decoding:
    """UTF-8 decoding under `data.encoding_errors`, with counts of what it changed."""

    def __init__(self, policy: str):
        self.policy = policy
        self.files: set[str] = set()  # files with invalid UTF-8
        self.bad_bytes = 0
        self.skipped_documents = 0
        self.binary: list[str] = []  # binary files left out

    def text(self, data: bytes, name: str, offset: int = 0) -> str | None:
        """The document as text, or None when the policy leaves it out."""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if self.policy == "strict":
                raise UserError(
                    f"data: {name} is not UTF-8 text (byte {offset + exc.start}: {exc.reason}); "
                    "set data.encoding_errors: replace or skip, or use byte tokens"
                ) from None
        escaped = data.decode("utf-8", "surrogateescape")
        self.files.add(name)
        self.bad_bytes += len(_ESCAPED.findall(escaped))
        if self.policy == "skip":
            self.skipped_documents += 1
            return None
        return _ESCAPED.sub("\ufffd", escaped)

    def summary(self) -> str | None:
        parts = []
        if self.binary:
            shown = ", ".join(Path(b).name for b in self.binary[:3])
            more = f" and {len(self.binary) - 3} more" if len(self.binary) > 3 else ""
            parts.append(f"skipped {len(self.binary)} binary file(s) ({shown}{more})")
        if self.files:
            what = (
                f"{self.skipped_documents} document(s) left out"
                if self.policy == "skip"
                else "each invalid byte replaced by U+FFFD"
            )
            parts.append(
                f"{len(self.files)} file(s) not valid UTF-8, {self.bad_bytes:,} invalid "
                f"byte(s): {what} (data.encoding_errors: {self.policy})"
            )
        return "; ".join(parts) or None


def is_binary(head: bytes) -> bool:
    """A NUL byte or a known binary signature in a file's first bytes."""
    return b"\0" in head or head.startswith(_BINARY_MAGIC)


# ----------------------------------------------------------------------------- token files


def load_token_files(cfg) -> TokenData:
    """nanoGPT-style `train.bin` / `val.bin` (a folder holding both, or train.bin's path)."""
    d = cfg.data
    path = cfg.resolve_path(d.path)
    folder = path if path.is_dir() else path.parent
    files = {s: folder / f"{s}.bin" for s in ("train", "val")}
    for f in files.values():
        if not f.is_file():
            raise UserError(f"data: {f} not found (kind 'tokens' needs train.bin and val.bin)")
        size = f.stat().st_size
        itemsize = np.dtype(d.dtype).itemsize
        if size == 0:
            raise UserError(f"data: {f} is empty")
        if size % itemsize:
            raise UserError(f"data: {f} holds {size} bytes, not a whole number of {d.dtype}")
    arrays = {s: open_tokens(f, d.dtype) for s, f in files.items()}
    for split, arr in arrays.items():
        top = _max_token(arr)
        if top >= d.vocab_size:
            raise UserError(
                f"data: {files[split]} holds token id {top}, beyond the vocabulary "
                f"(data.vocab_size = {d.vocab_size})"
            )
    return TokenData(
        train=arrays["train"],
        val=arrays["val"],
        vocab_size=d.vocab_size,
        seq_len=cfg.model.seq_len,
        meta={
            "source": "tokens",
            "path": str(folder),
            "train_tokens": int(len(arrays["train"])),
            "val_tokens": int(len(arrays["val"])),
        },
    )


def _max_token(arr: np.ndarray, block: int = 1 << 24) -> int:
    """Largest id, read in blocks (bounded memory)."""
    return int(max(int(arr[i : i + block].max()) for i in range(0, len(arr), block)))


# ----------------------------------------------------------------------------- documents


def _text_files(cfg) -> list[Path]:
    raw = cfg.data.path
    path = cfg.resolve_path(raw)
    if any(ch in raw for ch in "*?["):
        pattern = raw if Path(raw).is_absolute() else str(Path(cfg.base_dir) / raw)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"data: path not found: {path}")
    if not files:
        raise UserError(f"data: no files under {path}")
    return files


def _documents(
    cfg, dec: Decoding, raw: bool = False, files: list[Path] | None = None
) -> Iterator[tuple[str, str | bytes]]:
    """(where, document) for every document of the corpus (or of `files`), streamed: raw
    bytes for files of kind text when `raw` (byte tokens), else text decoded under
    `dec`'s policy."""
    kind, column = cfg.data.kind, cfg.data.text_column
    files = _text_files(cfg) if files is None else files
    if kind == "text":
        for f in files:
            yield from _file_documents(f, dec, raw)
    elif kind == "jsonl":
        for item in files:
            for where, line in _jsonl_lines(item):
                if not line.strip():
                    continue
                text = dec.text(line, where)
                if text is None:
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise UserError(f"data: {where}: not a JSON object ({exc})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(column), str):
                    raise UserError(f"data: {where}: no text column {column!r}")
                yield where, obj[column]
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as exc:
                raise UserError(f"data: {f} is not a parquet file ({exc})") from None
            if column not in pf.schema_arrow.names:
                raise UserError(f"data: {f} has no column {column!r}")
            for batch in pf.iter_batches(columns=[column], batch_size=1024):
                for j, text in enumerate(batch.column(0).to_pylist()):
                    if text:
                        yield f"{f}#{j}", text
    else:  # dataset saved with datasets.save_to_disk: Arrow stream files
        import pyarrow as pa

        files = [f for f in files if f.suffix == ".arrow"]
        if not files:
            raise UserError(
                f"data: no .arrow files under {cfg.data.path} "
                "(expected a folder written by datasets.save_to_disk)"
            )
        for f in files:
            with pa.memory_map(str(f)) as source:
                try:
                    reader = pa.ipc.open_stream(source)
                except pa.ArrowInvalid:
                    reader = pa.ipc.open_file(source)
                table = reader.read_all()
            if column not in table.column_names:
                raise UserError(f"data: {f} has no column {column!r}")
            for j, text in enumerate(table.column(column).to_pylist()):
                if text:
                    yield f"{f}#{j}", text


_BLOCK = 16 << 20  # files above this are read in blocks, cut at blank lines
_DOC_BYTES = 64 << 10  # a longer text is cut into documents of about this size


def split_document(data: bytes) -> list[bytes]:
    """A text longer than `_DOC_BYTES` as consecutive documents of half to all of that
    size, cut after a blank line where the stretch has one, else after a line end, else
    at a UTF-8 character boundary. A one-file corpus (a book, a dump) thus becomes
    thousands of documents, and the validation split draws whole documents from all
    over it instead of taking the file."""
    if len(data) <= _DOC_BYTES:
        return [data]
    docs, start = [], 0
    while len(data) - start > _DOC_BYTES:
        lo, hi = start + _DOC_BYTES // 2, start + _DOC_BYTES
        for sep in (b"\n\n", b"\n"):
            cut = data.rfind(sep, lo, hi)
            if cut >= 0:
                cut += len(sep)
                break
        else:
            cut = hi
            while cut > lo and (data[cut] & 0xC0) == 0x80:  # inside a UTF-8 character
                cut -= 1
        docs.append(data[start:cut])
        start = cut
    docs.append(data[start:])
    return docs


def _file_documents(f: Path, dec: Decoding, raw: bool) -> Iterator[tuple[str, str | bytes]]:
    """The documents of a text file: the file itself, or, above `_DOC_BYTES`, pieces of
    about that size (`split_document`). A large file is read in blocks of about `_BLOCK`
    bytes ending at blank lines, so memory stays bounded whatever the file size. A
    binary file yields nothing (and is counted)."""
    offset = 0
    rest = b""
    with f.open("rb") as fh:
        if is_binary(fh.read(8192)):
            dec.binary.append(str(f))
            return
        fh.seek(0)
        while True:
            block = fh.read(_BLOCK)
            data = rest + block
            if not block:
                cut = len(data)
            else:
                cut = data.rfind(b"\n\n")
                cut = len(data) if cut < 0 and len(data) > 4 * _BLOCK else cut + 2
                if cut <= 1:  # no blank line yet: keep reading
                    rest = data
                    continue
            piece, rest = data[:cut], data[cut:]
            for part in split_document(piece) if piece else []:
                doc = part if raw else dec.text(part, str(f), offset)
                if doc is not None:
                    yield f"{f}@{offset}", doc
                offset += len(part)
            if not block:
                return


def _doc_hash(doc: str | bytes) -> int:
    """64-bit hash of the document's bytes (UTF-8 for text: a clean file lands in the same
    split whether read as bytes or as text). A document is validation when its hash is
    below the split's cut."""
    data = doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


_HASHES = 2**64
# The first validation pass tokenizes documents below a hash cap expected to hold this
# many times the bytes of the tokens needed (tokens are at least a byte each).
_VAL_CAP_FACTOR = 32.0


# ----------------------------------------------------------------------------- tokenizers


class _Bytes:
    vocab_size = 257

    def encode(self, doc: str | bytes) -> np.ndarray:
        data = doc if isinstance(doc, bytes) else doc.encode("utf-8")
        out = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        return np.append(out, EOD_BYTES)

    def identity(self) -> str:
        return "bytes"


class _HF:
    """A `tokenizers` tokenizer; each document ends with its end-of-document id."""

    def __init__(self, tok, eod: int, identity: str):
        self.tok, self.eod, self._identity = tok, eod, identity
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        ids = self.tok.encode(text).ids
        return np.asarray(ids + [self.eod], dtype=np.uint32)

    def identity(self) -> str:
        return self._identity


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError(
            "data: a BPE or tokenizer.json tokenizer needs the `tokenizers` "
            "package (pip install 'chinchilla-scaling[text]')"
        ) from None
    return tokenizers


def tokenizer_sample(files: list[Path], budget: int) -> list[Path]:
    """The files a BPE tokenizer is trained on: in an order fixed by a hash of each
    path within the corpus (not by name, so no directory is favoured), taken until
    `budget` bytes; every file when the corpus is smaller. The same corpus, wherever it
    lies, always gives the same sample."""
    root = os.path.commonpath([str(f.parent) for f in files]) if files else ""

    def key(f: Path) -> bytes:
        rel = os.path.relpath(f, root).encode()
        return hashlib.blake2b(rel, digest_size=8, key=b"bpe-sample").digest()

    out, size = [], 0
    for f in sorted(files, key=key):
        if size >= budget:
            break
        out.append(f)
        size += f.stat().st_size
    return sorted(out)


def _tokenizer(cfg, corpus_key: str, cache: Path):
    d = cfg.data
    if d.tokenizer == "bytes":
        if d.vocab_size not in (None, 257):
            raise UserError(f"config: data.vocab_size: byte tokens need 257, got {d.vocab_size}")
        return _Bytes()
    tk = _require_tokenizers()
    if d.tokenizer == "bpe":
        path = cache / f"bpe-{corpus_key}-{d.vocab_size}-{d.tokenizer_sample_bytes}.json"
        if not path.exists():
            tok = tk.Tokenizer(tk.models.BPE(unk_token=None))
            tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = tk.decoders.ByteLevel()
            trainer = tk.trainers.BpeTrainer(
                vocab_size=d.vocab_size,
                special_tokens=["<|endoftext|>"],
                initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
            sample = tokenizer_sample(_text_files(cfg), d.tokenizer_sample_bytes)
            docs = _documents(cfg, Decoding(d.encoding_errors), files=sample)
            tok.train_from_iterator((text for _, text in docs), trainer=trainer)
            atomic_write(path, lambda tmp: tok.save(str(tmp)))
        tok = tk.Tokenizer.from_file(str(path))
        return _HF(tok, tok.token_to_id("<|endoftext|>"), path.name)
    path = cfg.resolve_path(d.tokenizer)
    if not path.is_file():
        raise UserError(f"config: data.tokenizer: {path} is not 'bytes', 'bpe' or a file")
    tok = tk.Tokenizer.from_file(str(path))
    eod = next(
        (
            tok.token_to_id(t)
            for t in ("<|endoftext|>", "</s>", "<eos>", "[SEP]")
            if tok.token_to_id(t) is not None
        ),
        None,
    )
    if eod is None:
        raise UserError(f"data: {path} has no end-of-document token (<|endoftext|>, </s>)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return _HF(tok, eod, f"file-{digest}")


def text_encoder(cfg):
    """(encode, unknown-token id) of the sweep's tokenizer for task text: encode(str) ->
    ids without the end-of-document token; (None, None) for kinds without a tokenizer
    (token files, the synthetic source). Call after the data are prepared (a BPE
    tokenizer is then read from its cache)."""
    if cfg.data.kind in ("synthetic", "tokens"):
        return None, None
    tok = _tokenizer(cfg, _corpus_key(cfg), _cache_root(cfg))
    if isinstance(tok, _Bytes):
        return (lambda text: tok.encode(text)[:-1]), None
    model = tok.tok.get_vocab()
    unk_token = getattr(tok.tok.model, "unk_token", None)
    unk = model.get(unk_token) if unk_token else None
    return (lambda text: tok.tok.encode(text, add_special_tokens=False).ids), unk


# ----------------------------------------------------------------------------- cache


def _corpus_key(cfg) -> str:
    """Hash of every file's path, size and modification time, and the split settings: a
    changed, added or removed file gets a new cache, without reading the whole corpus
    at every sweep start."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "kind": cfg.data.kind,
                "column": cfg.data.text_column,
                "val_fraction": cfg.data.val_fraction,
                "val_tokens": cfg.data.val_tokens if cfg.data.val_fraction is None else None,
                "seq_len": cfg.model.seq_len if cfg.data.val_fraction is None else None,
                "encoding_errors": cfg.data.encoding_errors,
                "v": _CACHE_VERSION,
            }
        ).encode()
    )
    for f in _text_files(cfg):
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cache_root(cfg) -> Path:
    """data.cache_dir, else $CHINCHILLA_CACHE, else the user's cache folder (never the
    corpus: it may be read-only or shared)."""
    if cfg.data.cache_dir:
        return cfg.resolve_path(cfg.data.cache_dir)
    if os.environ.get("CHINCHILLA_CACHE"):
        return Path(os.environ["CHINCHILLA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chinchilla"


def load_text_corpus(cfg, min_val_tokens: int = 0) -> TokenData:
    """Tokenize the corpus once into a cached token file (reused later), then map it."""
    root = _cache_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    key = _corpus_key(cfg)
    tok = _tokenizer(cfg, key, root)
    if cfg.data.vocab_size is not None and tok.vocab_size > cfg.data.vocab_size:
        raise UserError(
            f"config: data.vocab_size: the tokenizer has {tok.vocab_size} tokens, "
            f"more than {cfg.data.vocab_size}"
        )
    vocab = cfg.data.vocab_size or tok.vocab_size
    folder = root / f"{key}-{tok.identity()}"
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        _publish(folder, lambda tmp: _tokenize(cfg, tok, tmp, token_dtype(vocab), min_val_tokens))
    meta = json.loads(meta_path.read_text())
    if meta.get("notes"):
        print(f"data: {meta['notes']}", file=sys.stderr)
    dtype = meta["dtype"]
    return TokenData(
        train=open_tokens(folder / "train.bin", dtype),
        val=open_tokens(folder / "val.bin", dtype),
        vocab_size=vocab,
        seq_len=cfg.model.seq_len,
        meta=meta | {"cache": str(folder)},
    )


def _publish(folder: Path, build) -> None:
    """Build a cache entry in a private temporary folder, then publish it with one
    rename. When another process published the same entry first, ours is discarded."""
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_SHARD_BYTES = 8 << 20  # files are tokenized in shards of about this much text


def _shards(files: list[Path], kind: str = "text") -> list[list]:
    """Consecutive groups of files of about `_SHARD_BYTES`: the unit of parallel work,
    written back in this order whatever the number of workers. A JSONL file larger than
    that is cut into byte ranges of about `_SHARD_BYTES`, each its own shard (a line
    belongs to the range holding its first byte), so one large file still uses every
    worker."""
    shards, cur, size = [], [], 0
    for f in files:
        n = f.stat().st_size
        if kind == "jsonl" and n > _SHARD_BYTES:
            if cur:
                shards.append(cur)
                cur, size = [], 0
            pieces = -(-n // _SHARD_BYTES)
            cuts = [n * k // pieces for k in range(pieces + 1)]
            shards.extend([(f, lo, hi)] for lo, hi in zip(cuts, cuts[1:], strict=False))
            continue
        cur.append(f)
        size += n
        if size >= _SHARD_BYTES:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    return shards


def _jsonl_lines(item) -> Iterator[tuple[str, bytes]]:
    """(where, line) of a JSONL file, or of the lines starting in a byte range of it
    (`(path, start, end)`). Lines are numbered in a whole file, else placed by byte."""
    f, start, end = (item, 0, None) if isinstance(item, Path) else item
    with f.open("rb") as fh:
        pos = start
        if start > 0:  # the line running through `start` belongs to the range before
            fh.seek(start - 1)
            pos = start - 1 + len(fh.readline())
        i = 0
        while end is None or pos < end:
            line = fh.readline()
            if not line:
                return
            i += 1
            yield (f"{f} line {i}" if start == 0 else f"{f} byte {pos}"), line
            pos += len(line)


_SHARD_STATE: dict[str, Any] = {}  # per tokenizing process: config and tokenizer


def _shard_init(cfg, spec) -> None:
    _SHARD_STATE.update(cfg=cfg, tok=_tokenizer_from_spec(spec))


def _tokenizer_spec(tok):
    return "bytes" if isinstance(tok, _Bytes) else (tok.tok.to_str(), tok.eod, tok.identity())


def _tokenizer_from_spec(spec):
    if spec == "bytes":
        return _Bytes()
    tk = _require_tokenizers()
    text, eod, identity = spec
    return _HF(tk.Tokenizer.from_str(text), eod, identity)


def _tokenize_shard(job) -> dict[str, Any]:
    """Tokens of one shard's documents of one split (validation: hash below `cut`), in
    document order, with what the decoding changed. With `per_doc`, the validation
    documents' (hash, tokens) pairs instead of one array."""
    files, split, dtype, cut, per_doc = job
    cfg, tok = _SHARD_STATE["cfg"], _SHARD_STATE["tok"]
    dec = Decoding(cfg.data.encoding_errors)
    raw = isinstance(tok, _Bytes) and cfg.data.kind == "text"
    parts, hashes, docs, text_bytes = [], [], 0, 0
    for _, doc in _documents(cfg, dec, raw, files=files):
        text_bytes += len(doc)
        h = _doc_hash(doc)
        if (h < cut) != (split == "val"):
            continue
        parts.append(tok.encode(doc).astype(dtype))
        hashes.append(h)
        docs += 1
    if per_doc:
        ids = list(zip(hashes, parts, strict=True))
    else:
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return {
        "ids": ids,
        "docs": docs,
        "bytes": text_bytes,
        "binary": dec.binary,
        "files": sorted(dec.files),
        "bad_bytes": dec.bad_bytes,
        "skipped": dec.skipped_documents,
    }


@contextlib.contextmanager
def _shard_map(cfg, tok, workers: int, n_jobs: int):
    """A map of `_tokenize_shard` over jobs, results in order: on `workers` processes
    (spawned: `tokenizers` and fork do not mix; one pool serves both splits), or in this
    process for one worker or one job."""
    spec = _tokenizer_spec(tok)
    if workers <= 1 or n_jobs <= 1:
        _shard_init(cfg, spec)
        yield lambda jobs: map(_tokenize_shard, jobs)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, n_jobs), _shard_init, (cfg, spec)) as pool:
        yield lambda jobs: pool.imap(_tokenize_shard, jobs)


def tokenize_workers(cfg) -> int:
    if cfg.data.workers:
        return cfg.data.workers
    return available_cpus()


def _validation_split(cfg, shards, dtype, total_bytes: int, shard_map):
    """The validation pass: (each shard's result, the validation token arrays in file
    order, the number of validation documents, the hash cut, the rule in words). With
    `data.val_fraction` the cut is that fraction of hashes. Otherwise only documents
    below a hash cap (expected to hold 32x the tokens needed; raised 8x at a time when
    they do not) are tokenized, and the cut is the smallest hash at which the documents
    below it hold `data.val_tokens` predicted tokens (seq_len + 1 tokens per seq_len
    predicted). An empty corpus stops here."""

    def nonempty(res):
        if not any(r["bytes"] for r in res):
            raise UserError(f"data: the corpus at {cfg.data.path} is empty (no text)")
        return res

    if cfg.data.val_fraction is not None:
        cut = int(cfg.data.val_fraction * _HASHES)
        res = nonempty(list(shard_map([(sh, "val", dtype, cut, False) for sh in shards])))
        arrays = [r["ids"] for r in res]
        n_docs = sum(r["docs"] for r in res)
        return res, arrays, n_docs, cut, f"data.val_fraction {cfg.data.val_fraction}"
    seq = cfg.model.seq_len
    target = -(-cfg.data.val_tokens // seq) * (seq + 1)
    share = _VAL_CAP_FACTOR * target / max(total_bytes, 1)
    while True:
        cap = _HASHES if share >= 1 else int(share * _HASHES)
        res = nonempty(list(shard_map([(sh, "val", dtype, cap, True) for sh in shards])))
        got = sum(len(ids) for r in res for _, ids in r["ids"])
        if got >= target or cap == _HASHES:
            break
        share *= 8
    rule = f"data.val_tokens {cfg.data.val_tokens:,}"
    if got < target:
        raise UserError(
            f"data: the whole corpus holds {got:,} tokens, fewer than the validation split "
            f"needs ({target:,} for {rule} at seq_len {seq}); lower data.val_tokens and "
            "train.eval_tokens, or add text"
        )
    acc, cut = 0, cap
    for h, ids in sorted((p for r in res for p in r["ids"]), key=lambda p: p[0]):
        acc += len(ids)
        if acc >= target:
            cut = h + 1
            break
    arrays = [ids for r in res for h, ids in r["ids"] if h < cut]
    for r in res:
        r["ids"] = None
    return res, arrays, len(arrays), cut, rule


def _tokenize(cfg, tok, folder: Path, dtype: np.dtype, min_val_tokens: int = 0) -> None:
    """Tokenize the corpus into `folder`: first the validation documents (so that a
    validation split too small for one evaluation stops the work before the bulk), then
    the training documents; shards of files on every worker, written in file order, so
    the token files are the same bytes for any number of workers."""
    dtype = np.dtype(dtype)
    files = _text_files(cfg)
    shards = _shards(files, cfg.data.kind)
    total = sum(f.stat().st_size for f in files)
    workers = tokenize_workers(cfg)
    t0 = time.perf_counter()
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    with _shard_map(cfg, tok, workers, len(shards)) as shard_map:
        first, arrays, docs["val"], cut, rule = _validation_split(
            cfg, shards, dtype, total, shard_map
        )
        with (folder / "val.bin").open("wb") as fh:
            for ids in arrays:
                fh.write(ids.tobytes())
                counts["val"] += len(ids)
        del arrays
        chunks = counts["val"] // (cfg.model.seq_len + 1)
        if chunks * cfg.model.seq_len < min_val_tokens:
            raise UserError(
                f"data: the validation split holds {chunks * cfg.model.seq_len:,} "
                f"predicted tokens ({rule}), fewer than one evaluation "
                f"(train.eval_tokens = {min_val_tokens:,}); raise the split or lower "
                "eval_tokens (found before tokenizing the training split)"
            )
        done, last = 0, time.perf_counter()
        started = last
        live = sys.stderr.isatty()
        with (folder / "train.bin").open("wb") as fh:
            for res in shard_map([(s, "train", dtype, cut, False) for s in shards]):
                fh.write(res["ids"].tobytes())
                counts["train"] += len(res["ids"])
                docs["train"] += res["docs"]
                done += res["bytes"]
                if time.perf_counter() - last > (0.5 if live else 10):
                    last = time.perf_counter()
                    rate = done / max(last - started, 1e-9)
                    eta = (total - done) / max(rate, 1e-9)
                    msg = (
                        f"tokenizing on {workers} process(es): {done / 1e6:,.0f} of "
                        f"{total / 1e6:,.0f} MB, {rate / 1e6:.1f} MB/s, ETA {eta:.0f} s"
                    )
                    print(
                        "\r" + msg if live else msg,
                        end="" if live else "\n",
                        file=sys.stderr,
                        flush=True,
                    )
        if live and done:
            print(file=sys.stderr)
    seconds = time.perf_counter() - t0
    if counts["train"] == 0:
        raise UserError(f"data: the corpus at {cfg.data.path} is empty (no training tokens)")
    if counts["val"] > counts["train"]:  # never train on a sliver with exit 0
        raise UserError(
            f"data: the validation split ({rule}) took {counts['val']:,} of the corpus's "
            f"{counts['val'] + counts['train']:,} tokens, leaving {counts['train']:,} to "
            f"train on ({docs['val']} validation and {docs['train']} training documents); "
            "lower data.val_tokens (or data.val_fraction) and train.eval_tokens, or add text"
        )
    dec = Decoding(cfg.data.encoding_errors)
    for res in first:  # decoding counts from the first pass (the second sees the same)
        dec.binary += res["binary"]
        dec.files.update(res["files"])
        dec.bad_bytes += res["bad_bytes"]
        dec.skipped_documents += res["skipped"]
    write_json(
        folder / "meta.json",
        {
            "source": cfg.data.kind,
            "path": str(cfg.resolve_path(cfg.data.path)),
            "tokenizer": tok.identity(),
            "dtype": dtype.name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_documents": docs["train"],
            "val_documents": docs["val"],
            "val_rule": rule,
            "text_bytes": int(sum(r["bytes"] for r in first)),
            "tokenize_seconds": seconds,
            "tokenize_workers": workers,
            "notes": dec.summary(),
            "binary_files_skipped": dec.binary,
            "files_not_utf8": sorted(dec.files),
            "invalid_bytes": dec.bad_bytes,
        },
    )
