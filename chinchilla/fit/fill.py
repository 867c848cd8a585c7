"""An IsoFLOP grid filled from the loss-curve law (`grid.fill: curves`).

Such a sweep trains every run of its IsoFLOP grid but each model size's longest (a size
with one run trains a shorter probe in its place, `grid.probe_fraction` of its steps).
Here the multi-power curve law (chinchilla/fit/curves.py) is fitted on every trained
curve and the runs not trained are predicted, each under the schedule it would have
followed; the table the three approaches fit is the grid's: measured rows where a run
was trained, predicted rows (`predicted`, `prediction_sd`) where not.

The law's error is measured inside the sweep, at the stretch it is used: per model size
with three or more trained horizons, the runs of its longest trained horizon are hidden,
the law refitted on every other curve, and the hidden runs predicted (the filled runs lie
one horizon further, the same ratio away). The root mean square of those errors is the
prediction's standard deviation, which every bootstrap resample adds to the predicted
losses as independent Gaussian draws (one filled run per size: a size's error is one
draw), so the intervals carry it (chinchilla/fit/results.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from chinchilla import layout
from chinchilla.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

FORM = "multi-power"  # the better predictor on the demo (docs/fitting.md, "Loss curves")
CHECK_MIN_HORIZONS = 3  # trained horizons a size needs to be checked (two stay seen)


def is_filled(sweep: Path) -> bool:
    """Whether a sweep directory's config fills its grid from the curve law."""
    from chinchilla.sweep import sweep_config

    if not (Path(sweep) / "config.yaml").is_file():
        return False
    try:
        return sweep_config(Path(sweep)).grid.fill == "curves"
    except UserError:
        return False


@dataclass
class Fill:
    table: pd.DataFrame  # the grid's runs: measured rows and predicted ones
    sigma: float  # the prediction's standard deviation (nats), from the check
    check: list[dict]  # the in-sweep check: hidden runs, predicted and measured
    law: dict  # the fitted law's shared shape and per-size coefficients
    trained_flops: float
    grid_flops: float
    missing: list[str] = field(default_factory=list)  # planned to train, not finished
    left: dict[str, str] = field(default_factory=dict)  # curves left out, with reasons

    @property
    def predicted(self) -> int:
        return int(self.table["predicted"].sum())

    def as_dict(self) -> dict:
        return {
            "law": FORM,
            "predicted": self.predicted,
            "measured": int((~self.table["predicted"]).sum()),
            "prediction_sd": self.sigma,
            "prediction_sd_from": (
                f"{len(self.check)} in-sweep checks: each size with {CHECK_MIN_HORIZONS}+ "
                "trained horizons, its longest hidden and predicted (root mean square error)"
            ),
            "check": self.check,
            "law_fit": self.law,
            "trained_flops": self.trained_flops,
            "grid_flops": self.grid_flops,
            "flops_share": self.trained_flops / self.grid_flops,
            "missing": self.missing,
            "left_out": self.left,
            "runs": [
                {
                    "run_id": r.run_id,
                    "n_params": float(r.n_params),
                    "n_tokens": float(r.n_tokens),
                    "budget": float(r.budget),
                    "loss": float(r.loss),
                }
                for r in self.table[self.table["predicted"]].itertuples(index=False)
            ],
        }


def fill_sweep(sweep: Path) -> Fill:
    """The grid of a `grid.fill: curves` sweep, its untrained runs predicted."""
    import pandas as pd

    from chinchilla.fit import curves as cv
    from chinchilla.grid import plan as make_plan
    from chinchilla.store import load_table

    sweep = Path(sweep)
    curves, left, cfg = cv.read_sweep(sweep)
    p = make_plan(cfg)
    runs = load_table(sweep, layout.RUNS)
    done = {r["run_id"]: r for r in runs.to_dict("records") if r.get("status") == "ok"}
    curves = [c for c in curves if not c.trunk]
    fit = cv.fit_form(curves, FORM)
    # the check: each size with CHECK_MIN_HORIZONS trained horizons hides its longest,
    # which the law refitted on every other curve predicts
    check = cv.holdout(curves, form=FORM, min_horizons=CHECK_MIN_HORIZONS)
    if not check:
        raise UserError(
            f"{sweep}: no model size has {CHECK_MIN_HORIZONS} trained horizons, so the curve "
            "law's prediction error cannot be measured inside the sweep (grid.fill curves "
            "needs sizes that recur over at least four budgets)"
        )
    sigma = math.sqrt(float(np.mean([c["error"] ** 2 for c in check])))
    trained = {r.run_id for r in p.runs}
    rows, missing, seen = [], [], set()
    for t in p.targets:
        if t.run_id in done:
            rows.append(done[t.run_id] | {"predicted": False, "prediction_sd": 0.0})
            continue
        if t.run_id in trained:
            missing.append(t.run_id)
            continue
        key = (float(t.n_params), float(t.lr), int(t.batch_size))
        if key not in fit.laws:  # no trained curve of this size
            missing.append(t.run_id)
            continue
        if (key, t.steps) in seen:  # a seed repeat: a prediction has no seed, one row
            continue
        seen.add((key, t.steps))
        lrs = cv.lr_schedule(cfg, t.steps, t.lr, t.warmup)
        row = t.row() | {
            "status": "ok",
            "loss": fit.laws[key].final(lrs),
            "n_convention": cfg.grid.n_convention,
            "flops_convention": cfg.grid.flops_convention,
            "predicted": True,
            "prediction_sd": sigma,
        }
        rows.append(row)
    if not rows:
        raise UserError(f"{sweep}: no finished runs to fill the grid from")
    table = pd.DataFrame(rows)
    table["predicted"] = table["predicted"].astype(bool)
    law = {
        "form": fit.form,
        "sizes": {f"{k[0]:.6g}": v.as_dict() for k, v in sorted(fit.laws.items())},
    }
    return Fill(
        table=table,
        sigma=sigma,
        check=check,
        law=law,
        trained_flops=float(runs.loc[runs["status"] == "ok", "flops"].sum()),
        grid_flops=p.unshared_flops,
        missing=missing,
        left=left,
    )
