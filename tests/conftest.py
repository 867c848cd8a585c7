"""Shared fixtures: tiny configs, the reference data folder, fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True, scope="session")
def _private_token_cache(tmp_path_factory):
    """Tokenized corpora go to a cache of this test session, not the user's."""
    if "CHINCHILLA_CACHE" not in os.environ:
        os.environ["CHINCHILLA_CACHE"] = str(tmp_path_factory.mktemp("token-cache"))
        yield
        del os.environ["CHINCHILLA_CACHE"]
    else:
        yield


def reference_file(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference data {path} not present")
    return path


MICRO_YAML = """
name: micro
model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}
grid: {budgets: [2e8, 6e8], sizes_per_budget: 2, size_span: 3, tokens_per_param: 20}
train: {batch_size: 8, evals: 2, eval_tokens: 512, log_every: 5, lr: 3e-3}
data: {kind: synthetic, vocab_size: 16, support: 3, val_tokens: 2048, n_rules: 256}
"""


@pytest.fixture
def micro_config(tmp_path: Path) -> Path:
    """A sweep of 4 runs that trains in a few seconds on CPU."""
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_YAML)
    return path


@pytest.fixture(scope="session")
def micro_sweep(tmp_path_factory) -> Path:
    """The micro sweep, trained once per test session (read-only for tests)."""
    from chinchilla.config import load_config
    from chinchilla.sweep import run_sweep

    folder = tmp_path_factory.mktemp("micro")
    cfg_path = folder / "micro.yaml"
    cfg_path.write_text(MICRO_YAML)
    out = folder / "sweep"
    run_sweep(load_config(cfg_path), out, live=False)
    return out


def kill_when(cmd: list[str], reached, what: str, timeout: float = 120) -> None:
    """Start `cmd` in its own process group, SIGKILL the whole group as soon as
    `reached()` is true, and fail if the command ended before that moment."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not reached():
            time.sleep(0.01)
        assert proc.poll() is None, f"the command ended before {what}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
