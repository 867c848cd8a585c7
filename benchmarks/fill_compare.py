"""A filled IsoFLOP sweep (`grid.fill: curves`) side by side with the full sweep of the
same grid: the FLOPs each trained, the filled runs' predictions against the full sweep's
measured losses (the two sweeps' runs share their ids, and runs are deterministic given
their id), and each approach's exponent a (N_opt ∝ C^a) with its 80% interval, from
`chinchilla fit --json` on each.

    python benchmarks/fill_compare.py runs/tiny runs/tiny_fill [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def fit(sweep: Path) -> dict:
    cmd = [sys.executable, "-m", "chinchilla", "fit", str(sweep), "--json", "--no-plots"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(run.stdout)


def exponent(doc: dict, k: int) -> tuple[float | None, list[float] | None]:
    a = doc.get(f"approach{k}")
    if not a:
        return None, None
    ci = a.get("a_ci") if k != 3 else ((a.get("ci") or {}).get("a") or {}).get("80")
    return a["a"], ci


def inside(x, ci) -> bool | None:
    return None if x is None or ci is None else bool(ci[0] <= x <= ci[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("full", type=Path)
    ap.add_argument("filled", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    full_runs = pd.read_parquet(args.full / "runs.parquet")
    fill_runs = pd.read_parquet(args.filled / "runs.parquet")
    f_full, f_fill = fit(args.full), fit(args.filled)
    if not f_fill.get("fill"):
        raise SystemExit(f"{args.filled} is not a grid.fill curves sweep")
    measured = full_runs[full_runs["status"] == "ok"].set_index("run_id")["loss"]
    errors = [
        {
            "run_id": r["run_id"],
            "n_params": r["n_params"],
            "error": r["loss"] - measured[r["run_id"]],
        }
        for r in f_fill["fill"]["runs"]
        if r["run_id"] in measured.index
    ]
    e = np.array([x["error"] for x in errors])
    flops_full = float(full_runs.loc[full_runs["status"] == "ok", "flops"].sum())
    flops_fill = float(fill_runs.loc[fill_runs["status"] == "ok", "flops"].sum())
    out = {
        "full": str(args.full),
        "filled": str(args.filled),
        "flops_full": flops_full,
        "flops_filled": flops_fill,
        "flops_ratio": flops_fill / flops_full,
        "predicted": len(f_fill["fill"]["runs"]),
        "prediction_sd": f_fill["fill"]["prediction_sd"],
        "errors": errors,
        "rmse": float(np.sqrt(np.mean(e**2))) if len(e) else None,
        "mae": float(np.mean(np.abs(e))) if len(e) else None,
        "approaches": {},
    }
    for k in (1, 2, 3):
        a_full, ci_full = exponent(f_full, k)
        a_fill, ci_fill = exponent(f_fill, k)
        out["approaches"][k] = {
            "full": a_full,
            "full_ci80": ci_full,
            "filled": a_fill,
            "filled_ci80": ci_fill,
            "full_in_filled_interval": inside(a_full, ci_fill),
            "filled_in_full_interval": inside(a_fill, ci_full),
        }
    if args.json:
        print(json.dumps(out, indent=1))
        return

    def text(a, ci):
        if a is None:
            return "no answer"
        return f"{a:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (interval withheld)")

    print(
        f"{args.filled} trained {flops_fill:.3g} FLOPs (6ND), {out['flops_ratio']:.1%} of "
        f"{args.full}'s {flops_full:.3g}; {out['predicted']} runs predicted with sd "
        f"{out['prediction_sd']:.3g} nats (in-sweep check); against the full sweep's measured "
        f"losses: RMS error {out['rmse']:.4f}, mean absolute {out['mae']:.4f} nats"
    )
    for x in errors:
        print(f"  {x['run_id']}  N={x['n_params']:>8,.0f}  predicted - measured {x['error']:+.4f}")
    yes = {True: "yes", False: "no", None: "-"}
    for k, r in out["approaches"].items():
        print(
            f"Approach {k}: full {text(r['full'], r['full_ci80'])}; filled "
            f"{text(r['filled'], r['filled_ci80'])}; full in filled's interval: "
            f"{yes[r['full_in_filled_interval']]}, filled in full's: "
            f"{yes[r['filled_in_full_interval']]}"
        )


if __name__ == "__main__":
    main()
