"""Atomic file writes: every file this project writes goes through `atomic_write`.

The content is written to a hidden temporary file beside the target, then moved into
place with `os.replace`, so a crash leaves either the old file or the new one, never a
partial one. Imports nothing heavy: the fit's CSV path uses it too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

_TEMP = re.compile(r"^\..+\.tmp\d+$")  # the temporary names `atomic_write` uses


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` for a temporary path beside `path`, flush it to disk, then
    replace `path` by it (and flush the folder entry): after a power loss or a kernel
    crash the file is the old one or the new one, never an empty or partial one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        _fsync(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    try:
        _fsync(path.parent)
    except OSError:  # some filesystems cannot fsync a folder; the rename still holds
        pass
    return path


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temporary files that writers killed mid-write left under `folder` (call
    only while holding the folder's lock, when no writer can be alive)."""
    removed = []
    if not Path(folder).is_dir():
        return removed
    for root, _, names in os.walk(folder):
        for name in names:
            if _TEMP.match(name):
                p = Path(root) / name
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
