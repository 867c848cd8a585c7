"""Outlier screening of a results table, by one stated robust rule.

A row is flagged when its log-loss residual against the robust parametric fit of the whole
table (Approach 3: summed Huber on log loss, the same starts as the fit) lies, from the
median residual,
- more than `THRESHOLD` robust standard deviations (1.4826 times the median absolute
  deviation of the residuals, floored at `MIN_SCALE`), and
- more than `CONFIRM` residual standard deviations of the rows within that (their root
  mean square on n - 5 degrees of freedom).
The first alone is not enough: the near-L1 Huber fit draws residuals toward zero, so on
small designs the median absolute deviation is about half the noise, and on the coverage
study's 15- and 18-point designs with Gaussian noise alone it flagged 9 of 3,300 rows.
One pass, no iteration: refitting without the flagged rows and screening again creeps
into the design's corners (on Epoch AI's 245 points a second pass flags 2 more, a third
1 more).

What is flagged is a diverged, mislabelled or mis-digitised run, or a run the law does
not describe. On Epoch's digitised Chinchilla points the rule flags the four rows of
highest loss (log residuals 0.08-0.26 against a median absolute residual of 0.004), four
of the five that Epoch's replication dropped by hand.

Flagged rows are reported by name; `chinchilla fit --drop-outliers` refits without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chinchilla.fit.parametric import ParametricFit, parametric_loss

THRESHOLD = 8.0  # robust standard deviations
CONFIRM = 5.0  # residual standard deviations of the rows within THRESHOLD
MIN_SCALE = 1e-3  # log loss: the floor of the robust standard deviation
RULE = (
    f"log-loss residual against the robust Approach 3 fit of every row more than "
    f"{THRESHOLD:g} robust standard deviations (1.4826 x median absolute deviation, at "
    f"least {MIN_SCALE:g}) and more than {CONFIRM:g} residual standard deviations (root "
    f"mean square of the other rows on n - 5 degrees of freedom) from the median "
    f"residual; one pass"
)


@dataclass
class Screen:
    """What the screening found: the flagged rows (indices into the table as read) and
    whether they were left out of every fit."""

    rule: str = RULE
    screened: bool = False
    why_not: str | None = None  # when not screened
    scale: float | None = None  # robust standard deviation of the log residuals
    median: float | None = None
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    excluded: bool = False
    rows: list[dict] = field(default_factory=list)
    # the noise the parametric fit leaves: root mean square log residual of the rows not
    # flagged, on n - 5 degrees of freedom (the bootstraps' noise without repeats)
    residual_sd: float | None = None
    residual_dof: int | None = None

    def as_dict(self) -> dict:
        out = {"rule": self.rule, "screened": self.screened, "excluded": self.excluded}
        if not self.screened:
            return out | {"why_not": self.why_not}
        return out | {
            "threshold": THRESHOLD,
            "robust_sd": self.scale,
            "median_residual": self.median,
            "residual_sd": self.residual_sd,
            "residual_dof": self.residual_dof,
            "rows": self.rows,
        }

    def summary(self) -> str | None:
        """One line for the fit's summary, or None when nothing was flagged."""
        if not self.screened or not self.rows:
            return None
        names = ", ".join(
            f"{r['run']} (log residual {r['log_residual']:+.3f}, {r['residual_sds']:+.0f} sd)"
            for r in self.rows
        )
        what = (
            "left out of every fit (--drop-outliers)"
            if self.excluded
            else "kept; --drop-outliers refits without them"
        )
        return (
            f"{len(self.rows)} outlier row{'s' if len(self.rows) > 1 else ''} by the robust rule "
            f"(more than {THRESHOLD:g} robust sd of {self.scale:.3g} and {CONFIRM:g} sd of "
            f"{self.residual_sd:.3g} in log loss): {names}; {what}"
        )


def screen(fit: ParametricFit, n, d, loss, names: list[str]) -> Screen:
    """Flag the rows of (n, d, loss) that `fit` (a robust fit of all of them) leaves
    more than THRESHOLD robust standard deviations out. `names` label the rows."""
    pred = parametric_loss(n, d, E=fit.E, A=fit.A, B=fit.B, alpha=fit.alpha, beta=fit.beta)
    r = np.log(loss) - np.log(pred)
    med = float(np.median(r))
    scale = max(1.4826 * float(np.median(np.abs(r - med))), MIN_SCALE)
    z = (r - med) / scale
    candidate = np.abs(z) > THRESHOLD
    dof = int((~candidate).sum()) - 5
    residual_sd = float(np.sqrt((r[~candidate] ** 2).sum() / dof)) if dof > 0 else None
    flagged = candidate & (
        np.abs(r - med) > CONFIRM * residual_sd if residual_sd is not None else candidate
    )
    idx = np.nonzero(flagged)[0]
    idx = idx[np.argsort(-np.abs(z[idx]))]
    rows = [
        {
            "run": names[i],
            "n_params": float(n[i]),
            "n_tokens": float(d[i]),
            "loss": float(loss[i]),
            "log_residual": float(r[i]),
            "robust_z": float(z[i]),
            "residual_sds": float((r[i] - med) / residual_sd) if residual_sd else None,
        }
        for i in idx
    ]
    return Screen(
        screened=True,
        scale=scale,
        median=med,
        index=idx,
        residual=r[idx],
        rows=rows,
        residual_sd=residual_sd,
        residual_dof=dof if dof > 0 else None,
    )
