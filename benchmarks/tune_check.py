"""Is the tuned learning rate right beyond the budgets it was tuned at?

Trains, at one budget above the tuning grid (default 3e11 FLOPs, 3x the largest of
configs/tune.yaml), the expected compute-optimal size under 9 peak learning rates
spaced by sqrt(2) around the law's eta_opt(C) (4x either way), at the law's batch (or
train.batch_size when the laws hold no batch law), plus two more seeds of the run at
the law's own learning rate; then prints each learning rate's final loss, the best, the
loss at the law's learning rate, and the seed noise measured by the three seeds.

    python benchmarks/tune_check.py HPARAMS_JSON [--budget 3e11] [--out runs/tune_check]

About 5 minutes on 2 CPU cores at 3e11.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chinchilla.hparams import load_laws  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hparams", type=Path)
    ap.add_argument("--budget", type=float, default=3e11)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tune_check")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "tune.yaml")
    args = ap.parse_args()
    laws = load_laws(args.hparams)
    if laws.lr is None:
        sys.exit("error: the laws hold no learning-rate law")
    c = args.budget
    eta = laws.lr(c)
    lrs = [eta * 2 ** (k / 2) for k in range(-4, 5)]
    seq_len = 32
    batch = max(1, round(laws.batch(c) / seq_len)) if laws.batch else None
    sets = [
        f"grid.budgets=[{c:g}]",
        "grid.lrs=[" + ", ".join(f"{v:.6g}" for v in lrs) + "]",
        "grid.adaptive=false",
        "grid.repeats=2",
        "name=tune_check",
    ]
    sets.append(f"grid.batches=[{batch}]" if batch else "grid.batches=[]")
    cmd = [sys.executable, "-m", "chinchilla", "sweep", str(args.config), "--out", str(args.out)]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True)
    t = pq.read_table(args.out / "runs.parquet").to_pydict()
    law_lr = float(f"{eta:.6g}")  # as written into the config
    base: dict[float, float] = {}  # lr -> final loss at the base seed
    seeds = []  # the law's run at every seed
    for lr, loss, status, seed in zip(t["lr"], t["loss"], t["status"], t["run_seed"], strict=True):
        if status != "ok":
            continue
        if math.isclose(lr, law_lr, rel_tol=1e-9):
            seeds.append(loss)
        if seed is None or seed != seed:  # NaN: the base seed
            base[lr] = loss
    print(
        f"budget {c:.3g} FLOPs; law: eta_opt = {eta:.4g}; batch "
        + (f"{batch} sequences" if batch else "train.batch_size")
    )
    for lr in sorted(base):
        mark = "  <- the law's" if math.isclose(lr, law_lr, rel_tol=1e-9) else ""
        print(f"  lr {lr:.4g} ({lr / eta:.3g}x): loss {base[lr]:.4f}{mark}")
    best_lr = min(base, key=base.get)
    doc = {
        "budget": c,
        "law_lr": eta,
        "best_lr": best_lr,
        "best_loss": base[best_lr],
        "law_loss": base.get(law_lr),
        "gap_to_best": None if law_lr not in base else base[law_lr] - base[best_lr],
        "seed_losses_at_law_lr": seeds,
        "seed_std": float(np.std(seeds, ddof=1)) if len(seeds) > 1 else None,
    }
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
