"""Faults a user or the machine causes: each ends in one line and exit code 2 (128 + the
signal for a signal), leaves nothing that blocks the corrected command, and loses no run.

Faults this machine cannot produce on demand (a full disk, a denied permission, a
CPU-only torch where a GPU build is installed) are injected where the code meets them."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from chinchilla import files, store
from chinchilla.cli import app
from chinchilla.errors import describe_os_error, is_environment_fault

from .conftest import MICRO_YAML, ROOT

runner = CliRunner()


def one_line(r, *fragments: str, code: int = 2) -> str:
    """The command ended with `code` and one line naming the fault, no traceback."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.output
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def _failing_writes(monkeypatch, err: int, after: int = 0, where=files) -> list[int]:
    """Make `atomic_write` fail with `err` after `after` successful writes."""
    real = files.atomic_write
    calls = [0]

    def fake(path, write):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(err, os.strerror(err), str(path))
        return real(path, write)

    monkeypatch.setattr(where, "atomic_write", fake)
    return calls


def test_os_errors_read_as_one_line_with_the_path_and_what_to_do():
    full = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/x/runs"))
    assert full.startswith("/x/runs: no space left") and "rerun the same command" in full
    assert "pass --out" in describe_os_error(PermissionError(errno.EACCES, "denied", "/y"))
    assert "read-only" in describe_os_error(OSError(errno.EROFS, "Read-only file system"))
    assert is_environment_fault(OSError(errno.ENOSPC, "x"))
    assert not is_environment_fault(OSError(errno.ENOENT, "x"))
    assert not is_environment_fault(ValueError("x"))


def test_a_full_disk_stops_the_sweep_and_the_rerun_resumes(micro_config, tmp_path, monkeypatch):
    """ENOSPC while a run records its part: one line, exit 2, nothing recorded as failed;
    the same command then finishes every run."""
    out = tmp_path / "sweep"
    _failing_writes(monkeypatch, errno.ENOSPC, after=6, where=store)
    r = runner.invoke(app, ["sweep", str(micro_config), "--out", str(out), "--workers", "1"])
    one_line(r, "no space left", "rerun the same command")
    failed = [
        p
        for p in (out / "parts").glob("*.run.parquet")
        if pd.read_parquet(p)["status"].iloc[0] != "ok"
    ]
    assert failed == []  # the machine's fault is not the runs'
    monkeypatch.undo()
    r = runner.invoke(app, ["sweep", str(micro_config), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}


def test_a_fault_at_the_start_leaves_no_folder_behind(micro_config, tmp_path, monkeypatch):
    out = tmp_path / "new"
    _failing_writes(monkeypatch, errno.EACCES)
    r = runner.invoke(app, ["sweep", str(micro_config), "--out", str(out), "--workers", "1"])
    one_line(r, "permission denied")
    assert not out.exists()


def test_a_workers_disk_fault_stops_the_sweep():
    """A worker reports the fault as an event (its run is not recorded failed); the pool
    raises it in the driver."""
    from chinchilla.executors import WorkerPool, _Slot

    pool = WorkerPool.__new__(WorkerPool)
    slot = _Slot(0, None)
    slot.run = type("R", (), {"run_id": "abc"})()
    pool.slots, pool.emit = [slot], lambda ev: None
    with pytest.raises(OSError) as info:
        pool._handle({"event": "fault", "run_id": "abc", "fault": (errno.EROFS, "ro", "/d")})
    assert info.value.errno == errno.EROFS and info.value.filename == "/d"


def test_a_run_meeting_a_disk_fault_raises_instead_of_failing(micro_config, tmp_path, monkeypatch):
    from chinchilla import train
    from chinchilla.config import load_config
    from chinchilla.grid import plan
    from chinchilla.runs import attempt_run

    cfg = load_config(micro_config)
    run = plan(cfg).runs[0]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "ckpt.pt")

    monkeypatch.setattr(train, "train_run", full)
    with pytest.raises(OSError):
        attempt_run(run, cfg, tmp_path, None, device="cpu", peak=None, env={})

    def bug(*a, **k):
        raise RuntimeError("a bug of this run")

    monkeypatch.setattr(train, "train_run", bug)
    row, _, _ = attempt_run(run, cfg, tmp_path, None, device="cpu", peak=None, env={})
    assert row["status"] == "failed"  # a run's own error is still a failed row


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_fit_prints_its_results_before_a_write_fails(micro_sweep, tmp_path, monkeypatch, err):
    _failing_writes(monkeypatch, err)
    r = runner.invoke(app, ["fit", str(micro_sweep), "--out", str(tmp_path / "f")])
    one_line(r, "could not write", "printed above")
    assert "approach" in r.output.lower()  # the results came first


def test_every_writing_command_turns_a_write_fault_into_one_line(
    micro_sweep, micro_config, tmp_path, monkeypatch
):
    _failing_writes(monkeypatch, errno.EROFS)
    for args in (
        ["prepare", str(micro_config), "--out", str(tmp_path / "p")],
        ["sweep", str(micro_config), "--out", str(tmp_path / "s")],
        ["compare", str(micro_sweep), "--out", str(tmp_path / "c"), "--bootstrap", "0"],
        ["verify", str(micro_sweep), "--budget", "1e9"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output, (args, r.output)
        assert sum(ln.startswith("error:") for ln in r.output.splitlines()) == 1, r.output


def test_a_file_where_a_folder_belongs(micro_config, micro_sweep, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    one_line(runner.invoke(app, ["sweep", str(micro_config), "--out", str(f)]), "is a file")
    one_line(runner.invoke(app, ["prepare", str(micro_config), "--out", str(f)]), str(f))
    one_line(runner.invoke(app, ["fit", str(micro_sweep), "--out", str(f / "sub")]), str(f))
    assert f.read_text() == "x"


def test_cuda_on_a_cpu_only_torch_is_refused_before_any_file(micro_config, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    out = tmp_path / "s"
    r = runner.invoke(
        app, ["sweep", str(micro_config), "--out", str(out), "--set", "device.type=cuda"]
    )
    one_line(r, "CPU-only build", "device.type: cpu")
    assert not out.exists()
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(
        app, ["sweep", str(micro_config), "--out", str(out), "--set", "device.type=cuda"]
    )
    one_line(r, "sees no GPU")
    assert not out.exists()


@pytest.mark.parametrize("table", ["runs.parquet", "curves.parquet", "metrics.parquet"])
def test_a_corrupt_merged_table_is_read_from_the_parts(micro_config, tmp_path, table):
    """status, fit and fit --metric never stop on an unreadable merged table: they read the
    runs' parts in memory, say so, and write nothing into the sweep directory."""
    cfg = tmp_path / "m.yaml"
    cfg.write_text(MICRO_YAML + "tasks: {continue_k: 4, prompt_len: 8}\n")
    out = tmp_path / "s"
    assert runner.invoke(app, ["sweep", str(cfg), "--out", str(out)]).exit_code == 0
    good = pd.read_parquet(out / table)
    (out / table).write_bytes(b"not parquet")
    for args in (
        ["status", str(out)],
        ["fit", str(out), "--out", str(tmp_path / "f"), "--bootstrap", "0"],
        ["fit", str(out), "--metric", "continue/exact_match@4", "--out", str(tmp_path / "g")],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code in (0, 1, 2), (args, r.output)  # 1: no approach answers; 2: too few
        assert "Traceback" not in r.output
    assert (out / table).read_bytes() == b"not parquet"  # readers never write
    rebuilt = store.tables_from_parts(out)[table]
    key = ["run_id", "step"] if "step" in good else ["run_id"]
    pd.testing.assert_frame_equal(
        rebuilt.sort_values(key).reset_index(drop=True),
        good.sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    r = runner.invoke(app, ["sweep", str(cfg), "--out", str(out)])  # the next sweep rewrites it
    assert r.exit_code == 0 and len(pd.read_parquet(out / table)) == len(good)


def test_a_one_file_corpus_is_cut_into_documents(tmp_path):
    from chinchilla.config import load_config
    from chinchilla.data import load_data
    from chinchilla.data.corpus import _DOC_BYTES, split_document

    rng = np.random.default_rng(0)
    words = ["scaling", "laws", "compute", "tokens", "ünïcode", "loss"]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(30000)]
    text = "\n".join(ln if i % 9 else "" for i, ln in enumerate(lines)) + "\n"
    pieces = split_document(text.encode())
    assert b"".join(pieces) == text.encode()  # nothing lost, nothing added
    assert all(len(p) <= _DOC_BYTES for p in pieces)
    assert all(p.endswith(b"\n\n") for p in pieces[:-1])  # cut after blank lines
    pieces[0].decode(), pieces[1].decode()
    no_breaks = ("é" * 70000).encode()  # no line end at all: cut between characters
    assert all(p.decode() for p in split_document(no_breaks))

    book = tmp_path / "book.txt"
    book.write_text(text, encoding="utf-8")
    y = tmp_path / "b.yaml"
    y.write_text(
        "model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}\n"
        "grid: {budgets: [2e8], sizes_per_budget: 2, size_span: 2}\n"
        "train: {batch_size: 4, evals: 1, eval_tokens: 512, lr: 3e-3}\n"
        f"data: {{kind: text, path: '{book}', val_tokens: 100000}}\n"
    )
    data = load_data(load_config(y), tmp_path / "cache")
    m = data.meta
    assert m["train_documents"] > 10 * m["val_documents"] > 0
    assert 100_000 <= m["val_tokens"] < 0.2 * m["train_tokens"]


def test_a_validation_split_that_leaves_a_sliver_is_refused(tmp_path):
    from chinchilla.config import load_config
    from chinchilla.data import load_data
    from chinchilla.errors import UserError

    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(4):
        (folder / f"d{i}.txt").write_text(f"document {i} " * 400)
    y = tmp_path / "b.yaml"
    y.write_text(
        "model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}\n"
        "grid: {budgets: [2e8], sizes_per_budget: 2, size_span: 2}\n"
        "train: {batch_size: 4, evals: 1, eval_tokens: 64, lr: 3e-3}\n"
        f"data: {{kind: text, path: '{folder}', val_tokens: 9000}}\n"
    )
    with pytest.raises(UserError, match="leaving .* to train on"):
        load_data(load_config(y), tmp_path / "cache")


SLOW_YAML = MICRO_YAML.replace("[2e8, 6e8]", "[1e10, 2e10]").replace(
    "lr: 3e-3", "lr: 3e-3, seed: 1"
)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie left to a container's init that does not reap is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return str(pid)


def _sigint_default() -> None:
    """The sweep starts with Ctrl-C live, as from a terminal. A suite started in the
    background of a non-interactive shell inherits SIGINT ignored (POSIX: so are its
    asynchronous commands'), and a sweep started from it would rightly ignore Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_worker_sweep_in_one_line(tmp_path, sig):
    """Ctrl-C reaches the whole process group: the workers stay silent, the driver says
    one line and exits 130; SIGTERM to the driver alone: 143. No worker outlives it.
    (That the rerun resumes after any kill is tested in test_sweep.)"""
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(SLOW_YAML)
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(cfg), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        preexec_fn=_sigint_default,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "inflight.json").exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # the workers are training
        workers = _children(proc.pid)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        err.strip().splitlines()[-1]
    ]
    deadline = time.time() + 5  # the resource tracker notices its parent's exit
    while time.time() < deadline and [w for w in workers if _alive(w)]:
        time.sleep(0.1)
    alive = [_cmdline(w) for w in workers if _alive(w)]
    assert alive == [], f"{alive} outlived the sweep"
    status = subprocess.run(
        [sys.executable, "-m", "chinchilla", "status", str(out)], capture_output=True, text=True
    )
    assert status.returncode == 0 and " running " not in status.stdout, status.stdout


CTRL_C_AT_START = """
import os, signal, sys
import multiprocessing.context as ctx

real = ctx.SpawnProcess.start

def start(self):  # a Ctrl-C that comes while the driver starts a worker
    os.kill(os.getpid(), signal.SIGINT)
    real(self)

if __name__ == "__main__":  # a spawned worker imports this file too
    ctx.SpawnProcess.start = start
    from chinchilla.cli import main

    sys.argv = ["chinchilla", *sys.argv[1:]]
    main()
"""


def test_a_ctrl_c_while_a_worker_starts_is_not_lost(tmp_path):
    """The driver starts each worker with SIGINT blocked, not ignored: a Ctrl-C in that
    window waits and is answered (exit 130, one line), where ignoring it for the window
    lost it and the sweep ran on to its end."""
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(SLOW_YAML)
    out = tmp_path / "s"
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_AT_START)
    proc = subprocess.run(
        [sys.executable, str(script), "sweep", str(cfg), "--out", str(out), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        start_new_session=True,
        preexec_fn=_sigint_default,
    )
    err = proc.stderr
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("error:"), err
    runs = pd.read_parquet(out / "runs.parquet") if (out / "runs.parquet").exists() else None
    assert runs is None or "status" not in runs or (runs["status"] == "ok").sum() < 4


def test_sigterm_in_a_terminal_gives_the_cursor_back(tmp_path):
    """The live progress hides the cursor; SIGTERM unwinds it like Ctrl-C, so the
    terminal gets its cursor back before the one-line message."""
    import pty
    import select

    cfg = tmp_path / "slow.yaml"
    cfg.write_text(SLOW_YAML)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chinchilla", "sweep", str(cfg), "--out", str(tmp_path / "s")],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""

    def read(until: float) -> None:
        nonlocal seen
        while time.time() < until:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    return
                if not chunk:
                    return
                seen += chunk

    try:
        deadline = time.time() + 120
        while time.time() < deadline and b"\x1b[?25l" not in seen:
            assert proc.poll() is None, seen[-2000:]
            read(time.time() + 0.2)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        read(time.time() + 1.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    assert proc.returncode == 143
    assert seen.rfind(b"\x1b[?25h") > seen.rfind(b"\x1b[?25l") >= 0, seen[-500:]
    assert b"Traceback" not in seen and b"error: SIGTERM" in seen
