"""How far do the fitted exponents move when a sweep is trained again with other seeds?

    python benchmarks/rerun_study.py --config configs/tiny.yaml --replicates 14 \
        --parallel 14 --out DIR

The sampling distribution of an estimate is what its bootstrap interval stands in for:
the spread of the estimate over experiments that could have been run instead. This
script runs them. Replicate k trains the config's plan with every run's seed
(initialisation and data order) offset by 1000 k; the design and the data (the synthetic
source, its evaluation set) are the same. Replicates train in parallel processes, one
worker and one thread each, and each is fitted by `chinchilla fit` with its bootstrap
(in the same process, after training; the generated data are then removed).
DIR/study.json lists, per replicate and approach, a and its 80% interval; the spread of
a over replicates is the reference the intervals are judged against (see the README's
demo section). Each replicate's runs.parquet stays in DIR/rep<k>/ for re-analysis.

`--smoke` trains two replicates of a two-budget cut of the config, to test the script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def replicate(config: str, overrides: list[str], k: int, out: Path) -> None:
    """Train replicate k (seed offset 1000 k) into `out`."""
    from chinchilla.config import load_config
    from chinchilla.grid import plan, run_id
    from chinchilla.sweep import run_sweep

    cfg = load_config(config, overrides)
    runs = []
    for r in plan(cfg).runs:
        seed = (cfg.train.seed if r.seed is None else r.seed) + 1000 * k
        rid = run_id(r.shape, r.n_tokens, r.lr, cfg, seed=seed)
        runs.append(dataclasses.replace(r, run_id=rid, seed=seed))
    run_sweep(cfg, out, live=False, workers=1, runs=runs)


def summarise(fit: dict) -> dict:
    row = {}
    for name in ("approach1", "approach2", "approach3"):
        v = fit.get(name)
        if not v:
            row[name] = None
            continue
        ci = (v.get("ci") or {}).get("a", {}).get("80")
        row[name] = {"a": v["a"], "ci80": ci, "failed": v.get("bootstrap_failed")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--first", type=int, default=1, help="seed offset index of the first")
    ap.add_argument("--parallel", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], help="config override")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    overrides = ["tasks.continue_k=0", *a.set]
    if a.smoke:
        overrides += ["grid.budgets=[3e9,1e10]", "grid.repeats=0"]
    if a.one is not None:
        d = out / f"rep{a.one}"
        replicate(a.config, overrides, a.one, d)
        subprocess.run(
            [sys.executable, "-m", "chinchilla", "fit", str(d), "--no-plots"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        shutil.rmtree(d / "data", ignore_errors=True)  # regenerated from the config
        return

    out.mkdir(parents=True, exist_ok=True)
    ks = list(range(a.first, a.first + (2 if a.smoke else a.replicates)))
    t0 = time.time()
    todo, live, done = list(ks), {}, {}
    args = [a.config, *sum((["--set", s] for s in a.set), [])] + (["--smoke"] if a.smoke else [])
    while todo or live:
        while todo and len(live) < a.parallel:
            k = todo.pop(0)
            log = open(out / f"rep{k}.log", "w")
            cmd = [sys.executable, __file__, "--config", *args, "--out", str(out), "--one", str(k)]
            live[k] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1)
        for k, p in list(live.items()):
            if p.poll() is not None:
                done[k] = (p.returncode, time.time() - t0)
                del live[k]
                print(f"replicate {k}: exit {p.returncode} at {time.time() - t0:.0f} s", flush=True)
    train_s = time.time() - t0
    rows = []
    for k in ks:
        d = out / f"rep{k}"
        if done[k][0] != 0:
            rows.append({"replicate": k, "error": (out / f"rep{k}.log").read_text()[-500:]})
            continue
        fit = json.loads((d / "fit.json").read_text())
        rows.append({"replicate": k, **summarise(fit)})
    spread = {}
    for name in ("approach1", "approach2", "approach3"):
        av = np.array([r[name]["a"] for r in rows if r.get(name)])
        widths = np.array(
            [
                r[name]["ci80"][1] - r[name]["ci80"][0]
                for r in rows
                if r.get(name) and r[name]["ci80"]
            ]
        )
        if len(av) >= 2:
            spread[name] = {
                "replicates": int(len(av)),
                "a_mean": float(av.mean()),
                "a_std": float(av.std(ddof=1)),
                "a_p10_p90": [float(np.percentile(av, 10)), float(np.percentile(av, 90))],
                "bootstrap_width_median": float(np.median(widths)) if len(widths) else None,
            }
    result = {
        "config": a.config,
        "overrides": overrides,
        "train_seconds": train_s,
        "replicates": rows,
        "spread": spread,
    }
    (out / "study.json").write_text(json.dumps(result, indent=1))
    print(f"trained {len(ks)} replicates in {train_s:.0f} s")
    for name, s in spread.items():
        print(
            f"{name}: a {s['a_mean']:.3f} std {s['a_std']:.3f} over {s['replicates']} "
            f"replicates; p10-p90 {s['a_p10_p90'][0]:.3f}-{s['a_p10_p90'][1]:.3f}; "
            f"median bootstrap width {s['bootstrap_width_median']}"
        )


if __name__ == "__main__":
    main()
