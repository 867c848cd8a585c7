"""Which loss-curve law predicts our runs better: Tissue et al. 2024 or the multi-power
law of Luo et al. 2025 ("A Multi-Power Law for Loss Curve Prediction Across Learning Rate
Schedules")?

Both as `chinchilla fit SWEEP --curves --curve-law ...` fits them (chinchilla/fit/
curves.py): the shape parameters shared by every size, the linear ones per size, on
every logged point after warm-up. Both are scored by the same hold-out check (each
size's longest horizon hidden and predicted from every other run) and timed.

    python benchmarks/curve_forms.py runs/tiny [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chinchilla.fit import curves as cv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    curves, left, _ = cv.read_sweep(args.sweep)
    rows = {}
    for form in cv.FORMS:
        t0 = time.perf_counter()
        cv.fit_form(curves, form)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        e = np.array([h["error"] for h in cv.holdout(curves, form=form)])
        rows[form] = {
            "mae": float(np.mean(np.abs(e))),
            "bias": float(np.mean(e)),
            "max": float(np.max(np.abs(e))),
            "n": len(e),
            "fit_seconds": fit_s,
            "holdout_seconds": time.perf_counter() - t0,
            "errors": [float(x) for x in e],
        }
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"hold-out on {args.sweep} ({len(curves)} runs; left out: {left or 'none'})")
    for name, r in rows.items():
        print(
            f"{name}: mean abs. error {r['mae']:.4f} nats over {r['n']} runs, bias "
            f"{r['bias']:+.4f}, largest {r['max']:.4f}; fit {r['fit_seconds']:.1f} s, "
            f"hold-out {r['holdout_seconds']:.1f} s; errors "
            + " ".join(f"{x:+.3f}" for x in r["errors"])
        )


if __name__ == "__main__":
    main()
