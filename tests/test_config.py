from pathlib import Path

import pytest

from chinchilla.config import load_config
from chinchilla.errors import UserError

from .conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert any(p.name == "tiny.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.name


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_numbers_written_as_strings_are_coerced(tmp_path):
    cfg = load_config(write(tmp_path, "grid: {budgets: [1e18, 3e18]}\ntrain: {lr: 3e-4}\n"))
    assert cfg.grid.budgets == (1e18, 3e18)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "text, key",
    [
        ("grid: {budgets: [1e18]}\nmodel: {seq_lenn: 128}\n", "model.seq_lenn"),
        ("grid: {budgets: [-1e18]}\n", "grid.budgets"),
        ("grid: {budgets: []}\n", "grid.budgets"),
        ("grid: {budgets: [1e18]}\ntrain: {batch_size: many}\n", "train.batch_size"),
        ("grid: {budgets: [1e18]}\ntrain: {batch_size: 2.5}\n", "train.batch_size"),
        ("grid: {budgets: [1e18]}\nmodel: {family: explicit}\n", "model.sizes"),
        (
            "grid: {budgets: [1e18]}\nmodel: {family: explicit, sizes: "
            "[{d_model: 100, n_layers: 2, n_heads: 3}]}\n",
            "model.sizes[0].n_heads",
        ),
        ("grid: {budgets: [1e18]}\ndata: {kind: tokens, path: x}\n", "data.vocab_size"),
        ("grid: {budgets: [1e18]}\ntrain: {warmup_frac: 1.5}\n", "train.warmup_frac"),
        ("unknown_section: 1\n", "unknown_section"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, key):
    with pytest.raises(UserError) as exc:
        load_config(write(tmp_path, text))
    assert key in str(exc.value)
    assert "\n" not in str(exc.value)


def test_unknown_key_suggests_the_close_one(tmp_path):
    with pytest.raises(UserError, match="did you mean 'seq_len'"):
        load_config(write(tmp_path, "grid: {budgets: [1e18]}\nmodel: {seq_lenn: 128}\n"))


def test_broken_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="invalid YAML.*line"):
        load_config(write(tmp_path, "grid: {budgets: [1e18\n"))
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_set_overrides_apply_and_validate(tmp_path):
    p = write(tmp_path, "grid: {budgets: [1e18]}\n")
    cfg = load_config(p, ["train.lr=1e-3", "grid.budgets=[1e18, 1e19]", "model.position=rotary"])
    assert cfg.train.lr == 1e-3 and cfg.grid.budgets == (1e18, 1e19)
    assert cfg.model.position == "rotary"
    with pytest.raises(UserError, match="train.lr"):
        load_config(p, ["train.lr=-1"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(p, ["train.lr"])


def test_fingerprint_ignores_execution_only(tmp_path):
    p = write(tmp_path, "grid: {budgets: [1e18]}\n")
    base = load_config(p).fingerprint()
    assert load_config(p, ["execution.workers=4"]).fingerprint() == base
    assert load_config(p, ["train.seed=1"]).fingerprint() != base
