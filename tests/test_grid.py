import dataclasses

import pytest

from chinchilla.config import load_config
from chinchilla.grid import plan

from .conftest import ROOT, reference_file


def test_tiny_plan_meets_the_design_card():
    p = plan(load_config(ROOT / "configs" / "markov.yaml"))
    budgets = sorted({r.budget for r in p.runs})
    assert len(budgets) >= 3
    for c in budgets:
        runs = [r for r in p.runs if r.budget == c]
        assert len(runs) >= 5, f"budget {c:g} has {len(runs)} sizes"
        n = [r.n_params for r in runs]
        assert max(n) / min(n) >= 4
    for r in p.runs:
        assert abs(r.flops - r.budget) / r.budget <= 0.02
        assert r.n_tokens == r.steps * r.batch_size * r.shape.seq_len
        assert r.flops == pytest.approx(6 * r.n_params * r.n_tokens)
    assert len({r.run_id for r in p.runs}) == len(p.runs)


def test_run_ids_are_stable_and_ignore_logistics():
    cfg = load_config(ROOT / "configs" / "markov.yaml")
    ids = [r.run_id for r in plan(cfg).runs]
    assert ids == [r.run_id for r in plan(cfg).runs]
    logistic = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every_s=5))
    assert ids == [r.run_id for r in plan(logistic).runs]
    seeded = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=7))
    assert set(ids).isdisjoint(r.run_id for r in plan(seeded).runs)


def test_chinchilla_flops_convention_defines_the_budget(tmp_path):
    cfg = load_config(ROOT / "configs" / "markov.yaml", ["grid.flops_convention=chinchilla"])
    for r in plan(cfg).runs:
        assert r.flops == r.flops_chinchilla
        assert abs(r.flops - r.budget) / r.budget <= 0.02


def test_horizons_grid(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "markov.yaml",
        [
            "grid.kind=horizons",
            "grid.model_sizes=[5e3, 2e4]",
            "grid.horizons=4",
            "grid.horizon_span=16",
        ],
    )
    p = plan(cfg)
    assert len(p.runs) == 8
    first = [r for r in p.runs if r.n_params == p.runs[0].n_params]
    tokens = sorted(r.n_tokens for r in first)
    assert tokens[-1] / tokens[0] == pytest.approx(16, rel=0.05)


def test_table_family_reads_chinchilla_shapes(tmp_path):
    path = reference_file("chinchilla_table_a9_shapes.csv")
    cfg = tmp_path / "a9.yaml"
    cfg.write_text(
        f"model: {{family: table, shapes_file: '{path}', seq_len: 2048}}\n"
        "grid: {budgets: [1e19, 1e20], sizes_per_budget: 5, size_span: 6}\n"
        "train: {batch_size: 256}\ndata: {vocab_size: 32000}\n"
    )
    p = plan(load_config(cfg))
    widths = {r.shape.d_model for r in p.runs}
    assert widths <= {
        512,
        576,
        640,
        768,
        896,
        1024,
        1280,
        1408,
        1536,
        1792,
        2048,
        2176,
        2304,
        2560,
        2688,
        2816,
        2944,
        3072,
        3584,
        4096,
        4352,
        4608,
        4864,
        4992,
        5120,
    }
    assert len(p.runs) >= 8


def test_batch_grows_with_compute_under_the_deepseek_rule(micro_config):
    from chinchilla.grid import batch_size_for, deepseek_batch_tokens

    cfg = load_config(micro_config, ["train.batch_rule=deepseek", "train.batch_size=4096"])
    assert deepseek_batch_tokens(1e17) == pytest.approx(0.292 * 1e17**0.3271)
    small, large = (batch_size_for(c, 1e12, 1024, cfg) for c in (1e17, 3e18))
    assert (small, large) == (128, 256)  # powers of two nearest B_opt / seq_len
    capped = load_config(micro_config, ["train.batch_rule=deepseek", "train.batch_size=64"])
    assert batch_size_for(3e18, 1e12, 1024, capped) == 64


def test_min_steps_halves_the_batch(micro_config):
    from chinchilla.grid import batch_size_for

    cfg = load_config(micro_config, ["train.batch_size=64", "train.min_steps=100"])
    # 100k tokens at 16 tokens per sequence: 64 sequences give 97 steps, 32 give 195
    assert batch_size_for(1e12, 100_000, 16, cfg) == 32
    p = plan(load_config(micro_config, ["train.min_steps=100000"]))
    assert any("min_steps" in w for w in p.warnings)


def test_warmup_has_a_floor(micro_config):
    from chinchilla.train import lr_at

    cfg = load_config(micro_config, ["train.warmup_frac=0.01", "train.warmup_min_steps=20"])
    lrs = [lr_at(s, 1000, 1.0, cfg) for s in range(30)]
    assert lrs[18] < 1.0 and lrs[19] == pytest.approx(1.0)


def test_plan_warns_about_runs_a_fit_cannot_use(micro_config):
    p = plan(load_config(micro_config))  # micro runs: 68-228 steps, warm-up of 5%
    text = " ".join(p.warnings)
    assert "fewer than 100 optimizer steps" in text and "train.min_steps" in text
    assert "warm up for fewer than 10 steps" in text
    fixed = plan(load_config(micro_config, ["train.min_steps=100", "train.warmup_min_steps=10"]))
    assert not [w for w in fixed.warnings if "optimizer steps" in w or "warm up" in w]


def test_repeats_copy_each_budgets_middle_size_with_other_seeds(micro_config):
    cfg = load_config(
        micro_config,
        [
            "grid.repeats=2",
            "grid.sizes_per_budget=3",
            "model.head_dim=4",
            "model.aspect_ratio=8",
            "grid.size_span=8",
        ],
    )
    p = plan(cfg)
    for budget in cfg.grid.budgets:
        runs = [r for r in p.runs if r.budget == budget]
        repeats = [r for r in runs if r.planned_by == "repeat"]
        base = sorted((r for r in runs if r.seed is None), key=lambda r: r.n_params)
        assert [r.seed for r in repeats] == [cfg.train.seed + 1, cfg.train.seed + 2]
        middle = base[len(base) // 2]
        assert all(r.shape == middle.shape and r.n_tokens == middle.n_tokens for r in repeats)
    assert len({r.run_id for r in p.runs}) == len(p.runs)
