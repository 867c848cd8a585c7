"""Coverage of `chinchilla tune`'s 80% intervals on planted truth.

Tuning grids (5 budgets 1e17-1e19, 7 peak lrs x 6 batches, factors of 2) whose losses
come from DeepSeek LLM's two laws (eta_opt = 0.3118 C^-0.125, B_opt = 0.292 C^0.3271)
under two bowls (tests/tune_truth.py): `quad`, the fitted form (3x steeper above the
best lr); `linex`, not the fitted form (linear far below the best lr, exponential
above). Noise 0.002 nats, most runs above 6x the best lr diverged, three runs 1 nat
above the rest. For each: the exponents' bias and spread over grids, how often each 80%
interval holds the truth, and the median width.

    python benchmarks/tune_coverage.py [--grids 100]      (about 1 minute)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chinchilla.fit.tune import tune  # noqa: E402
from tests.tune_truth import DEEPSEEK_BATCH, DEEPSEEK_LR, batch_opt, lr_opt, planted  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grids", type=int, default=100)
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args()
    print(
        f"{args.grids} planted grids per bowl, {args.bootstrap} resamples; truth: lr exponent "
        f"{DEEPSEEK_LR[1]}, batch exponent {DEEPSEEK_BATCH[1]}"
    )
    print(
        f"{'bowl':<6}{'quantity':<22}{'bias':>8}{'sd':>8}{'|err|<0.025':>12}"
        f"{'80% covers':>12}{'median width':>14}"
    )
    for shape in ("quad", "linex"):
        t0 = time.perf_counter()
        rows = {
            k: [] for k in ("lr exponent", "batch exponent", "lr at middle C", "batch at middle C")
        }
        for g in range(args.grids):
            rep = tune(planted(seed=1000 + g, shape=shape), bootstrap=args.bootstrap, seed=g)
            mid = rep.lr.middle
            for key, law, truth, log in (
                ("lr exponent", rep.lr, DEEPSEEK_LR[1], False),
                ("batch exponent", rep.batch, DEEPSEEK_BATCH[1], False),
                ("lr at middle C", rep.lr, float(lr_opt(mid)), True),
                ("batch at middle C", rep.batch, float(batch_opt(mid)), True),
            ):
                if log:
                    est, iv = law(mid), law.interval["at_middle"]
                    err = np.log(est / truth)
                    width = np.log(iv[1] / iv[0])
                else:
                    est, iv = law.exponent, law.interval["exponent"]
                    err, width = est - truth, iv[1] - iv[0]
                rows[key].append((err, iv[0] <= truth <= iv[1], width))
        for key, vals in rows.items():
            err, cov, width = (np.array(v, float) for v in zip(*vals, strict=True))
            unit = " (ln)" if "middle" in key else ""
            print(
                f"{shape:<6}{key + unit:<22}{err.mean():>8.4f}{err.std():>8.4f}"
                f"{np.mean(np.abs(err) < 0.025) if not unit else float('nan'):>12.2f}"
                f"{cov.mean():>12.2f}{np.median(width):>14.4f}"
            )
        print(f"      ({(time.perf_counter() - t0) / args.grids:.2f} s per grid)")


if __name__ == "__main__":
    main()
