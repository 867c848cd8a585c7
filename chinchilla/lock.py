"""One sweep per directory: an advisory lock held for the whole sweep.

`flock` on `<out>/.lock`: the kernel releases it when the holding process dies (any
signal, SIGKILL included), so a lock left by a dead sweep never blocks a rerun. The file
records who holds it (host, pid) for the message a second sweep gets. flock works on
local filesystems; on network filesystems it depends on the server.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from chinchilla.errors import UserError
from chinchilla.layout import LOCK


def in_use(out: Path) -> bool:
    """Whether a live sweep holds the directory's lock (probed without taking it for
    longer than the probe; a missing lock file means no sweep ever ran there)."""
    path = Path(out) / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's shared lock
    return False


class SweepLock:
    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.fd: int | None = None

    def acquire(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{self.path.parent} is in use by a running sweep ({holder}); wait for it, "
                "or stop it and rerun"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> SweepLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
