"""Planted truth for `chinchilla tune`: tuning grids whose losses come from known laws
eta_opt(C) and B_opt(C) (by default DeepSeek-AI 2024's, sec. 3.1, eq. 1), with noise,
diverged runs and runs far above the rest. Used by the tests and the coverage study
(benchmarks/tune_coverage.py)."""

from __future__ import annotations

import numpy as np

from chinchilla.fit.tune import TuneTable

DEEPSEEK_LR = (0.3118, -0.1250)  # eta_opt = 0.3118 C^-0.1250
DEEPSEEK_BATCH = (0.2920, 0.3271)  # B_opt = 0.2920 C^0.3271 tokens
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)
LRS = tuple(0.0018 * 2.0 ** np.arange(-3, 4))  # 7 peak lrs, factors of 2
BATCHES = tuple(32768 * 2.0 ** np.arange(0, 6))  # 32k to 1M tokens


def lr_opt(c, law=DEEPSEEK_LR):
    return law[0] * np.asarray(c, float) ** law[1]


def batch_opt(c, law=DEEPSEEK_BATCH):
    return law[0] * np.asarray(c, float) ** law[1]


def bowl(u, v, shape: str):
    """The loss above the optimum at u = ln(lr / lr_opt), v = ln(B / B_opt).
    quad: an asymmetric quadratic (3x steeper above the best lr, 2x above the best
    batch); linex: a(exp(k u) - 1 - k u), quadratic near the optimum, linear far below it
    and exponential above (not the fitted form)."""
    if shape == "quad":
        return np.where(u < 0, 0.01, 0.03) * u * u + np.where(v < 0, 0.004, 0.008) * v * v
    return 0.02 * (np.exp(u) - 1 - u) + 0.012 * (np.exp(0.8 * v) - 1 - 0.8 * v)


def planted(
    seed: int = 0,
    sigma: float = 0.002,
    shape: str = "quad",
    budgets=BUDGETS,
    lrs=LRS,
    batches=BATCHES,
    diverge: bool = True,
    far_above: int = 3,
) -> TuneTable:
    """Every (budget, lr, batch) run's final loss: 2 + 5 C^-0.05 + bowl + N(0, sigma);
    above 6x the best lr, 70% of runs diverge (NaN); `far_above` random runs get +1 nat."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for lr in lrs:
            for b in batches:
                u, v = np.log(lr / lr_opt(c)), np.log(b / batch_opt(c))
                loss = 2.0 + 5 * c**-0.05 + float(bowl(u, v, shape)) + rng.normal(0, sigma)
                if diverge and u > np.log(6) and rng.random() < 0.7:
                    loss = np.nan
                rows.append((c, lr, b, loss))
    a = np.array(rows)
    if far_above:
        a[rng.choice(len(a), far_above, replace=False), 3] += 1.0
    return TuneTable(
        flops=a[:, 0],
        lr=a[:, 1],
        batch_tokens=a[:, 2],
        loss=a[:, 3],
        n_params=None,
        run_id=[f"r{i}" for i in range(len(a))],
        source="planted",
    )


def write_csv(table: TuneTable, path) -> None:
    lines = ["flops,lr,batch_tokens,loss"]
    for c, lr, b, loss in zip(table.flops, table.lr, table.batch_tokens, table.loss, strict=True):
        lines.append(f"{c:.6g},{lr:.6g},{b:.6g},{'' if np.isnan(loss) else f'{loss:.6f}'}")
    path.write_text("\n".join(lines) + "\n")
