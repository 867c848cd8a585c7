"""Can a loss-curve law stand in for IsoFLOP runs? A side-by-side on a trained sweep.

A curve-law sweep would train only some of an IsoFLOP grid's runs and fill the others
from the law (`chinchilla fit --curves`) fitted on those trained. Runs are deterministic
given their id, so the runs such a sweep trains are the full sweep's own: this script
takes a finished IsoFLOP sweep, keeps a subset of its runs by a rule, fits the curve law
on their curves, replaces every other run's final loss by the law's prediction for its
schedule, and fits Approaches 2 and 3 (`chinchilla fit --json`) on the mixed table.
It prints, per rule: the share of the full sweep's FLOPs the kept runs cost, the
prediction error against the measured losses, and each approach's exponent a
(N_opt ∝ C^a) with its 80% interval beside the full sweep's.

Rules (per model size: N, peak lr, batch):
  all-but-longest  every horizon but the longest (a size with one horizon keeps it)
  all-but-two-longest  every horizon but the two longest, keeping at least two
  longest          the longest horizon only
  middle           the middle horizon only
  shortest         the shortest horizon only
  two-shortest     the two shortest horizons

    python benchmarks/curve_sweep.py runs/tiny [--law multi-power|tissue] [--rules ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chinchilla.fit import curves as cv  # noqa: E402

RULES = ("all-but-longest", "all-but-two-longest", "longest", "middle", "shortest", "two-shortest")


def kept(curves: list[cv.RunCurve], rule: str) -> set[str]:
    groups: dict = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    keep = set()
    for g in groups.values():
        st = sorted({c.steps for c in g})
        want = {
            "all": st,
            "all-but-longest": st[:-1] or st,
            "all-but-two-longest": st[: max(len(st) - 2, 2)] if len(st) > 2 else st[:-1] or st,
            "longest": st[-1:],
            "middle": [st[(len(st) - 1) // 2]],
            "shortest": st[:1],
            "two-shortest": st[:2],
        }[rule]
        keep |= {c.run_id for c in g if c.steps in want}
    return keep


def exponents(table: Path) -> dict:
    cmd = [sys.executable, "-m", "chinchilla", "fit", str(table), "--approach", "2",
           "--approach", "3", "--json", "--no-plots"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        doc = json.loads(run.stdout)
    except json.JSONDecodeError:
        why = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return {"approach2": None, "approach3": None, "error": why}
    out = {}
    for k in ("approach2", "approach3"):
        fit = doc.get(k)
        ci = ((fit or {}).get("ci") or {}).get("a") or {}
        out[k] = None if fit is None else {"a": fit["a"], "ci80": ci.get("80")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--law", choices=cv.FORMS, default="multi-power")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    curves, left, _ = cv.read_sweep(args.sweep)
    runs = pd.read_parquet(args.sweep / "runs.parquet")
    runs = runs[runs["status"] == "ok"]
    by_id = {c.run_id: c for c in curves}
    total = float(runs["flops"].sum())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rule in ["all", *args.rules]:
            keep = kept(curves, rule)
            fit = cv.fit_form([c for c in curves if c.run_id in keep], args.law)
            table = runs.copy()
            errors = []
            for i, r in table.iterrows():
                c = by_id.get(r["run_id"])
                if r["run_id"] in keep or c is None:
                    continue
                p = fit.laws[c.group].final(c.lrs)
                errors.append(p - r["loss"])
                table.at[i, "loss"] = p
            path = Path(tmp) / f"{rule}.csv"
            table.to_csv(path, index=False)
            e = np.array(errors)
            rows.append(
                {
                    "rule": rule,
                    "trained": len(keep),
                    "runs": len(runs),
                    "flops_share": float(runs[runs["run_id"].isin(keep)]["flops"].sum()) / total,
                    "predicted": len(e),
                    "mae": float(np.mean(np.abs(e))) if len(e) else 0.0,
                    "bias": float(np.mean(e)) if len(e) else 0.0,
                    **exponents(path),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        f"{args.sweep}: {len(runs)} runs, {total:.3g} FLOPs; {args.law} law; left out: "
        f"{left or 'none'}"
    )

    def a_text(x):
        if x is None:
            return "no answer"
        ci = x["ci80"]
        return f"{x['a']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else " (no interval)")

    for r in rows:
        print(
            f"{r['rule']:16s} trains {r['trained']:2d}/{r['runs']} runs, {r['flops_share']:.0%} "
            f"of the FLOPs; {r['predicted']} predicted, error {r['mae']:.4f} nats (bias "
            f"{r['bias']:+.4f}); a: Approach 2 {a_text(r['approach2'])}, Approach 3 "
            f"{a_text(r['approach3'])}" + (f" ({r['error']})" if r.get("error") else "")
        )


if __name__ == "__main__":
    main()
