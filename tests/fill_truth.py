"""A planted truth for grid.fill curves: a sweep directory of configs/tiny_fill.yaml
whose trained runs' curves come from a known multi-power law per size, plus noise
(nothing trained). Used by tests/test_fill.py and benchmarks/fill_coverage.py."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

from chinchilla.config import load_config
from chinchilla.grid import plan

ROOT = Path(__file__).resolve().parents[1]
FILL = ROOT / "configs" / "tiny_fill.yaml"

# the planted truth: one multi-power law per size (Luo et al. 2025), shape shared
SHAPE = {"alpha": 0.6, "C": 0.5, "beta": 0.6, "gamma": 0.5}


def size_law(n):
    return {**SHAPE, "L0": 0.7 + 30.0 / math.sqrt(n), "A": 0.8, "B": 2.0}


def truth(lrs, law, steps):
    """The law after each of `steps`, from its sums over every step (numpy, exact: no
    blocks), written out here rather than taken from chinchilla.fit.curves."""
    lrs = np.asarray(lrs, float)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    drop = np.concatenate([[0.0], lrs[:-1] - lrs[1:]])  # eta_(k-1) - eta_k, at step k
    ks = np.nonzero(drop > 0)[0]
    out = []
    for t in np.atleast_1d(steps):
        k = ks[ks < t]
        x = lrs[k] ** -law["gamma"] * (s1[t] - s1[k])
        ld = np.sum(drop[k] * (1 - (law["C"] * x + 1) ** -law["beta"]))
        out.append(law["L0"] + law["A"] * s1[t] ** -law["alpha"] - law["B"] * ld)
    return np.array(out)


def planted_sweep(out: Path):
    cfg = load_config(FILL)
    p = plan(cfg)
    write_planted(cfg, p, out)
    return cfg, p


def write_planted(cfg, p, out: Path, sd_train=0.004, sd_eval=0.002, seed=0, sd_run=0.0):
    """A sweep directory of plan `p` whose trained runs' curves are the planted law plus
    noise (nothing trained): the config, runs.parquet, curves.parquet. Noise: per logged
    training interval `sd_train`, per evaluation `sd_eval`, and with `sd_run` one offset
    per run, its whole curve (run-to-run noise)."""
    from chinchilla.fit.curves import lr_schedule
    from chinchilla.sweep import check_directory

    check_directory(cfg, out, force=False)
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    every, evals = cfg.train.log_every, cfg.train.evals
    for r in p.runs:
        lrs = lr_schedule(cfg, r.steps, r.lr)
        law = size_law(r.n_params)
        ends = np.unique(np.append(np.arange(every, r.steps + 1, every), r.steps))
        starts = np.concatenate([[0], ends[:-1]])
        at = truth(lrs, law, np.arange(1, r.steps + 1))  # after 1..steps steps
        if sd_run:
            at = at + rng.normal(0, sd_run)
        train = np.array([at[a:b].mean() for a, b in zip(starts, ends, strict=True)])
        train += rng.normal(0, sd_train, len(ends))
        ev = {max(1, round(r.steps * (i + 1) / evals)) for i in range(evals)} | {r.steps}
        eval_loss = np.array([at[s - 1] + rng.normal(0, sd_eval) if s in ev else np.nan
                              for s in ends])  # fmt: skip
        tokens = ends * r.batch_size * r.shape.seq_len
        curves.append(
            pd.DataFrame(
                {
                    "run_id": r.run_id,
                    "step": ends,
                    "tokens": tokens,
                    "flops": 6.0 * r.n_params * tokens,
                    "train_loss": train,
                    "eval_loss": eval_loss,
                    "lr": lrs[ends - 1],
                }
            )
        )
        runs.append(r.row() | {"status": "ok", "loss": float(eval_loss[-1]), "seed": 0})
    pd.DataFrame(runs).to_parquet(out / "runs.parquet")
    pd.concat(curves).to_parquet(out / "curves.parquet")
