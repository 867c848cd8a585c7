"""Real corpora on disk: token files, and text tokenized once into a cached token file.

- `tokens`: flat token files as nanoGPT writes them (`train.bin`, `val.bin`; uint16 or
  uint32), memory-mapped as they are.
- `text` (a file, a folder searched recursively, or a glob of UTF-8 files; one document
  per file), `jsonl` / `parquet` / `dataset` (a column of documents; `dataset` is a
  folder written by `datasets.save_to_disk`, read as Arrow files).

Text is tokenized once, streaming document by document (memory does not grow with the
corpus), into `train.bin` / `val.bin` in a cache folder keyed by the corpus contents and
the tokenizer; every run and every worker of a sweep then memory-maps the same files.
Documents go to validation by a hash of their contents (`val_fraction`), so the split
never depends on file order. Tokens are UTF-8 bytes (0-255) with 256 ending each
document, or a BPE tokenizer (`tokenizers` library) trained on the corpus, or a local
`tokenizer.json`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from chinchilla.data import TokenData, open_tokens, token_dtype, write_json
from chinchilla.errors import UserError
from chinchilla.files import atomic_write

EOD_BYTES = 256  # end-of-document token of the byte tokenizer
_CACHE_VERSION = 1


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


def _documents(cfg) -> Iterator[tuple[str, str]]:
    """(where, text) for every document of the corpus, streamed."""
    kind, column = cfg.data.kind, cfg.data.text_column
    if kind == "text":
        for f in _text_files(cfg):
            yield from _file_documents(f)
    elif kind == "jsonl":
        for f in _text_files(cfg):
            with f.open("rb") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise UserError(
                            f"data: {f} line {i}: not a UTF-8 JSON object ({exc})"
                        ) from None
                    if not isinstance(obj, dict) or not isinstance(obj.get(column), str):
                        raise UserError(f"data: {f} line {i}: no text column {column!r}")
                    yield f"{f}:{i}", obj[column]
    elif kind == "parquet":
        import pyarrow.parquet as pq

        for f in _text_files(cfg):
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

        files = [f for f in _text_files(cfg) if f.suffix == ".arrow"]
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


_BLOCK = 16 << 20  # files above this are read in blocks, one document per blank-line run


def _file_documents(f: Path) -> Iterator[tuple[str, str]]:
    """One document per file; a large file is split at blank lines into documents of
    about `_BLOCK` bytes, so memory stays bounded whatever the file size."""
    offset = 0
    rest = b""
    with f.open("rb") as fh:
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
            if piece:
                try:
                    yield f"{f}@{offset}", piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(
                        f"data: {f} is not UTF-8 text (byte {offset + exc.start}: {exc.reason})"
                    ) from None
            offset += len(piece)
            if not block:
                return


def _is_validation(text: str, fraction: float) -> bool:
    h = int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )
    return h / 2**64 < fraction


# ----------------------------------------------------------------------------- tokenizers


class _Bytes:
    vocab_size = 257

    def encode(self, text: str) -> np.ndarray:
        out = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
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


def _tokenizer(cfg, corpus_key: str, cache: Path):
    d = cfg.data
    if d.tokenizer == "bytes":
        if d.vocab_size not in (None, 257):
            raise UserError(f"config: data.vocab_size: byte tokens need 257, got {d.vocab_size}")
        return _Bytes()
    tk = _require_tokenizers()
    if d.tokenizer == "bpe":
        path = cache / f"bpe-{corpus_key}-{d.vocab_size}.json"
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
            tok.train_from_iterator((text for _, text in _documents(cfg)), trainer=trainer)
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
                "v": _CACHE_VERSION,
            }
        ).encode()
    )
    for f in _text_files(cfg):
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cache_root(cfg) -> Path:
    if cfg.data.cache_dir:
        return cfg.resolve_path(cfg.data.cache_dir)
    path = cfg.resolve_path(cfg.data.path.split("*")[0] or ".")
    return (path if path.is_dir() else path.parent) / ".chinchilla_cache"


def load_text_corpus(cfg) -> TokenData:
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
        folder.mkdir(parents=True, exist_ok=True)
        _tokenize(cfg, tok, folder, token_dtype(vocab))
    meta = json.loads(meta_path.read_text())
    dtype = meta["dtype"]
    return TokenData(
        train=open_tokens(folder / "train.bin", dtype),
        val=open_tokens(folder / "val.bin", dtype),
        vocab_size=vocab,
        seq_len=cfg.model.seq_len,
        meta=meta | {"cache": str(folder)},
    )


def _tokenize(cfg, tok, folder: Path, dtype: np.dtype) -> None:
    tmp = {s: folder / f"{s}.bin.tmp{os.getpid()}" for s in ("train", "val")}
    counts = {"train": 0, "val": 0}
    docs = {"train": 0, "val": 0}
    done_bytes, last = 0, time.perf_counter()
    live = sys.stderr.isatty()
    with tmp["train"].open("wb") as ft, tmp["val"].open("wb") as fv:
        out = {"train": ft, "val": fv}
        for where, text in _documents(cfg):
            split = "val" if _is_validation(text, cfg.data.val_fraction) else "train"
            ids = tok.encode(text)
            out[split].write(ids.astype(dtype).tobytes())
            counts[split] += len(ids)
            docs[split] += 1
            done_bytes += len(text)
            if time.perf_counter() - last > (0.5 if live else 10):
                last = time.perf_counter()
                msg = (
                    f"tokenizing: {done_bytes / 1e6:,.0f} MB of text, "
                    f"{sum(counts.values()) / 1e6:,.1f}M tokens ({where})"
                )
                print(
                    "\r" + msg[:150] if live else msg,
                    end="" if live else "\n",
                    file=sys.stderr,
                    flush=True,
                )
    if live:
        print(file=sys.stderr)
    if counts["train"] == 0:
        for f in tmp.values():
            f.unlink(missing_ok=True)
        raise UserError(f"data: the corpus at {cfg.data.path} is empty (no training tokens)")
    for split, f in tmp.items():
        os.replace(f, folder / f"{split}.bin")
    write_json(
        folder / "meta.json",
        {
            "source": cfg.data.kind,
            "path": str(cfg.resolve_path(cfg.data.path)),
            "tokenizer": tok.identity(),
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"],
            "val_tokens": counts["val"],
            "train_documents": docs["train"],
            "val_documents": docs["val"],
        },
    )
