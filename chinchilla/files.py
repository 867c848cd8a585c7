"""Atomic file writes: every file this project writes goes through `atomic_write`.

The content is written to a hidden temporary file beside the target, then moved into
place with `os.replace`, so a crash leaves either the old file or the new one, never a
partial one. Imports nothing heavy: the fit's CSV path uses it too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` for a temporary path beside `path`, then replace `path` by it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
