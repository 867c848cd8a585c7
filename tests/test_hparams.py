"""Tuning grids (grid.kind hparams) and tuned laws (train.hparams): planning, run
identity, what a run records, and adaptive extension past an edge."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from chinchilla.adaptive import edge_side, run_adaptive_tuning
from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.errors import UserError
from chinchilla.grid import plan
from chinchilla.hparams import load_laws

runner = CliRunner()

TUNE_YAML = """
name: tunemicro
model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}
grid:
  kind: hparams
  budgets: [2e8, 6e8]
  tokens_per_param: 20
  lrs: [1e-3, 3e-3, 1e-2]
  batches: [4, 8]
train: {batch_size: 8, evals: 2, eval_tokens: 512, log_every: 5}
data: {kind: synthetic, vocab_size: 16, support: 3, val_tokens: 2048, n_rules: 256}
"""

ISO_YAML = """
name: isomicro
model: {family: aspect, aspect_ratio: 16, head_dim: 8, seq_len: 16}
grid: {budgets: [2e8, 6e8, 2e9], sizes_per_budget: 2, size_span: 3, tokens_per_param: 20}
train: {batch_size: 8, evals: 2, eval_tokens: 512, log_every: 5, hparams: laws.json}
data: {kind: synthetic, vocab_size: 16, support: 3, val_tokens: 2048, n_rules: 256}
"""


def _laws(path, lr=(0.05, -0.1), batch=(0.3, 0.33), conv="6nd", low=1e8, high=1e9):
    doc = {
        "format": "chinchilla-hparams",
        "version": 1,
        "conventions": {"flops_convention": conv, "n_convention": "total"},
        "lr": None
        if lr is None
        else {"coefficient": lr[0], "exponent": lr[1], "flops_range": [low, high]},
        "batch": None
        if batch is None
        else {"coefficient": batch[0], "exponent": batch[1], "flops_range": [low, high]},
    }
    path.write_text(json.dumps(doc))
    return path


def test_tuning_grid_plans_every_lr_and_batch_at_each_budget(tmp_path):
    (tmp_path / "t.yaml").write_text(TUNE_YAML)
    p = plan(load_config(tmp_path / "t.yaml"))
    assert len(p.runs) == 2 * 3 * 2
    assert len({r.run_id for r in p.runs}) == len(p.runs)
    for budget in (2e8, 6e8):
        runs = [r for r in p.runs if r.budget == budget]
        assert {(r.lr, r.batch_size) for r in runs} == {
            (lr, b) for lr in (1e-3, 3e-3, 1e-2) for b in (4, 8)
        }
        assert len({r.n_params for r in runs}) == 1  # one size: the expected optimum
        for r in runs:
            assert abs(r.flops - budget) / budget <= 0.02
            assert r.row()["batch_tokens"] == r.batch_size * 16
            assert r.row()["hparams_from"] == "grid"


def test_tuning_grid_with_several_sizes(tmp_path):
    (tmp_path / "t.yaml").write_text(TUNE_YAML + "\n")
    cfg = load_config(tmp_path / "t.yaml", ["grid.tune_sizes=3", "grid.size_span=4"])
    p = plan(cfg)
    for b in (2e8, 6e8):
        sizes = {r.n_params for r in p.runs if r.budget == b}
        assert len(sizes) >= 2
        assert len([r for r in p.runs if r.budget == b]) == len(sizes) * 6


def test_tuned_laws_set_each_runs_lr_and_batch(tmp_path):
    _laws(tmp_path / "laws.json")
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    p = plan(load_config(tmp_path / "iso.yaml"))
    for r in p.runs:
        assert r.hparams_from == "laws"
        assert r.lr == pytest.approx(0.05 * r.budget**-0.1)
        assert r.batch_size == max(1, round(0.3 * r.budget**0.33 / 16))
    # outside the laws' range (1e8-1e9): a warning says the values are extrapolated
    assert any("extrapolated" in w and "2x" in w for w in p.warnings)
    # the ids name the batch: other laws, other runs
    _laws(tmp_path / "laws.json", batch=(0.6, 0.33))
    other = plan(load_config(tmp_path / "iso.yaml"))
    assert not {r.run_id for r in p.runs} & {r.run_id for r in other.runs}


def test_a_missing_law_falls_back_to_the_train_section(tmp_path):
    _laws(tmp_path / "laws.json", batch=None)
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    for r in plan(load_config(tmp_path / "iso.yaml")).runs:
        assert r.batch_size == 8 and r.lr == pytest.approx(0.05 * r.budget**-0.1)


def test_runs_of_the_hand_rule_keep_their_ids(tmp_path):
    """Adding tuned laws changed no id of a sweep that does not use them."""
    from .conftest import MICRO_YAML

    (tmp_path / "m.yaml").write_text(MICRO_YAML)
    ids = sorted(r.run_id for r in plan(load_config(tmp_path / "m.yaml")).runs)
    # the ids the code before tuned laws (commit 6dd825d) gave this config
    assert ids == ["6c856ab26593", "8ffbc4fea294", "a9ce82d88c61", "ab3ae0726614"]
    assert all(r.hparams_from == "rule" for r in plan(load_config(tmp_path / "m.yaml")).runs)


@pytest.mark.parametrize(
    "override, needle",
    [
        (["train.lr=1e-3"], "drop train.lr"),
        (["train.batch_rule=deepseek"], "drop train.batch_rule"),
        (["grid.kind=hparams", "grid.lrs=[1e-3]"], "tuning grid sets its own"),
    ],
)
def test_conflicting_settings_are_refused(tmp_path, override, needle):
    _laws(tmp_path / "laws.json")
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    with pytest.raises(UserError, match=needle):
        plan(load_config(tmp_path / "iso.yaml", override))


@pytest.mark.parametrize(
    "text, needle",
    [
        (None, "not found"),
        ("{", "not a readable"),
        ('{"format": "other"}', "not a chinchilla tune result"),
        ('{"format": "chinchilla-hparams", "lr": null, "batch": null}', "no fitted law"),
        (
            '{"format": "chinchilla-hparams", "lr": {"coefficient": -1, "exponent": 0, "flops_range": [1, 2]}}',
            "not a positive",
        ),
    ],
)
def test_bad_laws_file_is_one_line_exit_2(tmp_path, text, needle):
    if text is not None:
        (tmp_path / "laws.json").write_text(text)
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    r = runner.invoke(app, ["plan", str(tmp_path / "iso.yaml")])
    assert r.exit_code == 2 and needle in r.output, r.output


def test_laws_in_another_flop_convention_are_refused(tmp_path):
    _laws(tmp_path / "laws.json", conv="chinchilla")
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    with pytest.raises(UserError, match="chinchilla FLOPs"):
        plan(load_config(tmp_path / "iso.yaml"))


@pytest.mark.parametrize(
    "override, needle",
    [
        (["grid.lrs=[]"], "needs the peak learning rates"),
        (["grid.lrs=[0.01, -1]"], "must be > 0"),
        (["grid.batches=[0]"], ">= 1 sequence"),
        (["grid.kind=isoflop"], "axes of a tuning grid"),
        (["grid.lrs=[0.01, 0.01]"], "must not repeat"),
    ],
)
def test_bad_tuning_grid_is_refused(tmp_path, override, needle):
    (tmp_path / "t.yaml").write_text(TUNE_YAML)
    with pytest.raises(UserError, match=needle):
        load_config(tmp_path / "t.yaml", override)


def test_plan_cli_prints_the_laws_in_use(tmp_path):
    _laws(tmp_path / "laws.json")
    (tmp_path / "iso.yaml").write_text(ISO_YAML)
    r = runner.invoke(app, ["plan", str(tmp_path / "iso.yaml")])
    assert r.exit_code == 0, r.output
    assert "from tuned laws: lr = 0.05 C^-0.1000; batch = 0.3 C^0.3300 tokens" in r.output


def test_edge_side():
    assert edge_side([1, 2, 4], 4) == "larger"
    assert edge_side([1, 2, 4], 1) == "smaller"
    assert edge_side([1, 2, 4], 2) is None
    assert edge_side([3], 3) is None


def test_adaptive_tuning_extends_past_the_edge_until_bracketed(tmp_path):
    """Losses from a bowl whose best lr (0.03) lies above the grid's largest (0.01): the
    sweep adds lrs past the edge at the best batch and its neighbour (and a batch past
    the best batch, also at its edge) until the best run is inside, within
    grid.adaptive_extra runs a budget; a rerun (everything recorded) decides the same."""
    (tmp_path / "t.yaml").write_text(TUNE_YAML)
    cfg = load_config(tmp_path / "t.yaml", ["grid.adaptive=true", "grid.adaptive_extra=6"])
    recorded: dict[str, float] = {}

    def loss(r):
        return 2 + 0.05 * math.log(r.lr / 0.03) ** 2 + 0.01 * math.log(r.batch_size / 6) ** 2

    def train(runs):
        for r in runs:
            recorded.setdefault(r.run_id, loss(r))

    def losses(runs):
        return {r.run_id: recorded[r.run_id] for r in runs if r.run_id in recorded}

    runs = run_adaptive_tuning(cfg, train, losses)
    extended = [r for r in runs if r.planned_by == "extended"]
    # one step past 0.01 at the grid's outer spacing (x 3.33), then another
    assert {round(r.lr, 5) for r in extended} >= {0.03333, 0.11111}
    assert 16 in {r.batch_size for r in extended}  # the best batch (8) was the largest too
    assert all(r.hparams_from == "grid" for r in runs)  # once bracketed, nothing more
    for budget in (2e8, 6e8):
        mine = [r for r in runs if r.budget == budget]
        assert sum(r.planned_by == "extended" for r in mine) <= 6
        best = min(mine, key=loss)
        assert best.lr == pytest.approx(1 / 30)
        assert edge_side(sorted({r.lr for r in mine}), best.lr) is None
        assert edge_side(sorted({r.batch_size for r in mine}), best.batch_size) is None
    again = run_adaptive_tuning(cfg, train, losses)
    assert [r.run_id for r in again] == [r.run_id for r in runs]


def test_tuning_sweep_then_tune_then_a_sweep_with_the_laws(tmp_path):
    """End to end on CPU: a tiny tuning sweep, `chinchilla tune` on it (hparams.json),
    and an IsoFLOP plan whose runs take their lr and batch from it."""
    (tmp_path / "t.yaml").write_text(
        TUNE_YAML.replace("budgets: [2e8, 6e8]", "budgets: [1e8, 2e8]").replace(
            "lrs: [1e-3, 3e-3, 1e-2]", "lrs: [3e-3, 1e-2, 3e-2, 1e-1]"
        )
    )
    out = tmp_path / "tune"
    r = runner.invoke(app, ["sweep", str(tmp_path / "t.yaml"), "--out", str(out), "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["tune", str(out), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    # two batches tried: no batch law; the best lr (0.03) inside 0.003-0.1 at both budgets
    assert "no batch law" in r.output
    laws = load_laws(out)
    assert laws.batch is None and laws.lr is not None
    assert (out / "tune_lr.png").exists() and (out / "tune_laws.png").exists()
    (tmp_path / "iso.yaml").write_text(ISO_YAML.replace("laws.json", str(out / "hparams.json")))
    p = plan(load_config(tmp_path / "iso.yaml"))
    assert all(r.lr == pytest.approx(laws.lr(r.budget)) for r in p.runs)
    assert all(r.batch_size == 8 for r in p.runs)  # no batch law: train.batch_size
