"""Coverage of a filled grid's intervals (`grid.fill: curves`) on planted truth.

Each design is configs/tiny_fill.yaml's plan with its trained runs' curves drawn from a
known multi-power law per size (tests/fill_truth.py) plus noise: per logged training
interval, per evaluation, and one offset per run (run-to-run noise). The fill predicts
the untrained runs and measures its own error inside the sweep; Approaches 2 and 3 fit
the filled table with that error drawn into their bootstraps (200 resamples). The
reference each interval should hold is the approach's estimate on the whole grid's true
final losses, noise-free: what the full sweep would give without noise. Reported per
approach: how often the 80% interval holds it, how often it was withheld, the median
width; and the prediction sd the check measured against the real error of the
predictions.

    python benchmarks/fill_coverage.py [--designs 20] [--sd-run 0.005] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chinchilla.config import load_config  # noqa: E402
from chinchilla.fit.curves import lr_schedule  # noqa: E402
from chinchilla.fit.data import Results, load_results  # noqa: E402
from chinchilla.fit.results import FitOptions, fit_all  # noqa: E402
from chinchilla.grid import plan  # noqa: E402
from tests.fill_truth import FILL, size_law, truth, write_planted  # noqa: E402


def exponents(res: Results, bootstrap: int) -> dict:
    rep = fit_all(res, FitOptions(approaches=(2, 3), bootstrap=bootstrap))
    out = {}
    for k, fit in ((2, rep.approach2), (3, rep.approach3)):
        s = rep.samples.get(k)
        out[k] = (
            None if fit is None else fit.a,
            None if s is None or s.withheld else s.interval("a", "80"),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--designs", type=int, default=20)
    ap.add_argument("--sd-run", type=float, default=0.005)
    ap.add_argument("--sd-train", type=float, default=0.01)
    ap.add_argument("--sd-eval", type=float, default=0.004)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_config(FILL)
    p = plan(cfg)
    points = {}
    for t in p.targets:  # the whole grid, once per point, its true final loss
        lrs = lr_schedule(cfg, t.steps, t.lr)
        points[(t.n_params, t.n_tokens)] = truth(lrs, size_law(t.n_params), t.steps)[0]
    n, d = np.array(list(points)).T
    ref = exponents(Results.from_arrays(n, d, list(points.values())), bootstrap=0)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.designs):
            out = Path(tmp) / f"s{seed}"
            write_planted(cfg, p, out, args.sd_train, args.sd_eval, seed + 1, args.sd_run)
            res = load_results(out)
            pred = res.prediction_sd > 0
            real = res.loss[pred] - np.array(
                [
                    points[(a, b)]
                    for a, b in zip(res.n_params[pred], res.n_tokens[pred], strict=True)
                ]
            )
            got = exponents(res, 200)
            rows.append(
                {
                    "seed": seed + 1,
                    "prediction_sd": float(res.fill["prediction_sd"]),
                    "real_rmse": float(np.sqrt(np.mean(real**2))),
                    **{f"a{k}": got[k][0] for k in (2, 3)},
                    **{f"ci{k}": got[k][1] for k in (2, 3)},
                }
            )
    summary = {"designs": args.designs, "seconds": time.perf_counter() - t0, "approaches": {}}
    for k in (2, 3):
        truth_a = ref[k][0]
        cis = [r[f"ci{k}"] for r in rows]
        given = [c for c in cis if c is not None]
        summary["approaches"][k] = {
            "reference_a": truth_a,
            "withheld": len(cis) - len(given),
            "coverage80": float(np.mean([c[0] <= truth_a <= c[1] for c in given]))
            if given
            else None,
            "median_width": float(np.median([c[1] - c[0] for c in given])) if given else None,
            "mean_a": float(np.nanmean([r[f"a{k}"] for r in rows if r[f"a{k}"] is not None])),
        }
    summary["prediction_sd_mean"] = float(np.mean([r["prediction_sd"] for r in rows]))
    summary["real_rmse_mean"] = float(np.mean([r["real_rmse"] for r in rows]))
    if args.json:
        print(json.dumps({"summary": summary, "designs": rows}, indent=1))
        return
    print(
        f"{args.designs} planted designs of {FILL.name} (noise: {args.sd_train} per training "
        f"interval, {args.sd_eval} per evaluation, {args.sd_run} per run), "
        f"{summary['seconds']:.0f} s; prediction sd from the in-sweep check "
        f"{summary['prediction_sd_mean']:.4f} on average, real error of the predictions "
        f"{summary['real_rmse_mean']:.4f} (RMS)"
    )
    for k, a in summary["approaches"].items():
        cov = "-" if a["coverage80"] is None else f"{a['coverage80']:.0%}"
        wid = "-" if a["median_width"] is None else f"{a['median_width']:.3f}"
        print(
            f"Approach {k}: reference a = {a['reference_a']:.4f} (noise-free full grid); 80% "
            f"intervals hold it in {cov} of {args.designs - a['withheld']} given ({a['withheld']} "
            f"withheld), median width {wid}; mean estimate {a['mean_a']:.4f}"
        )


if __name__ == "__main__":
    main()
