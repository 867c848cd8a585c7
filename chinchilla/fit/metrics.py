"""Downstream metrics against compute and loss: `chinchilla fit RUNS --metric NAME`.

Every run's task metrics at its last scored step (metrics.parquet, see
chinchilla/tasks.py) are read beside its final loss and its compute C = 6·N·D (N under
the fit's convention, as for the three approaches). Two views of the same runs:

- against compute, on the frontier: per budget, the run with the lowest final loss
  (the compute-optimal run as the loss sees it);
- against loss, over every run.

The fit suits the metric (Llama 3, 2024, sec. 7: compute -> loss -> accuracy):

- sharp metrics (exact match, accuracy) are bounded: a sigmoid of the loss over every
  run, y = lo + (1 - lo) / (1 + exp((L - L50) / w)), with lo the chance level (0 for
  exact match, 1 / choices for accuracy); and a sigmoid of log10 C on the frontier. An
  extrapolation goes through the loss: L(C) = E + A·C^-b through the frontier's losses
  (E: the data's irreducible loss when known, the synthetic source; else 0), then the
  sigmoid of loss (the two-step prediction);
- smooth metrics (log-probability, edit distance, Brier score) as the reducible error
  left, which falls with compute: the best score minus the score (the Bayes-optimal
  model's for the built-in task; else perfect: log-probability 0, distance 0, Brier 0),
  a power law err = A·C^-b on the frontier; against loss, a straight line.

Intervals are 80% percentile bootstrap intervals: runs are resampled within each
budget, the frontier and every fit recomputed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chinchilla import layout
from chinchilla.errors import UserError
from chinchilla.store import load_metrics, load_runs

SHARP = ("exact_match", "accuracy")
ERROR_OF = {"logprob": -1.0, "edit_distance": 1.0, "brier": 1.0}  # error = s * (value - best)
PERFECT = {"logprob": 0.0, "edit_distance": 0.0, "brier": 0.0}


@dataclass
class MetricTable:
    runs: pd.DataFrame  # one row per ok run: run_id, budget, N, D, C, loss, + metrics
    metrics: list[str]  # "task/metric" columns
    n_convention: str
    ceilings: dict[str, float]  # "task/metric" -> the Bayes-optimal model's score (built-in)
    irreducible: float | None = None  # the data's Bayes loss, when known

    def best(self, name: str) -> float:
        """The best score a model can reach: the Bayes-optimal one, else perfect."""
        return self.ceilings.get(name, PERFECT.get(_base(name), 1.0))


def load_metric_table(sweep: Path, n_convention: str = "total") -> MetricTable:
    sweep = Path(sweep)
    runs_path, metrics_path = sweep / layout.RUNS, sweep / layout.METRICS
    if not runs_path.exists():
        raise UserError(f"{sweep} is not a sweep directory (no {layout.RUNS})")
    if not metrics_path.exists():
        raise UserError(
            f"{sweep}: no metrics.parquet; configure tasks (tasks.continue_k or tasks.file) "
            "before the sweep"
        )
    runs = load_runs(sweep)
    runs = runs[runs["status"] == "ok"]
    if "planned_by" in runs:  # a filled grid's probes are not points of any budget
        runs = runs[runs["planned_by"] != "probe"]
    m = load_metrics(sweep)
    if not len(m):
        raise UserError(f"{metrics_path}: no task metrics recorded")
    last = m.loc[m.groupby(["run_id", "task", "metric"])["step"].idxmax()]
    last = last.assign(name=last["task"] + "/" + last["metric"])
    wide = last.pivot(index="run_id", columns="name", values="value")
    n_col = "n_params" if n_convention == "total" else "n_params_nonembedding"
    t = runs[["run_id", "budget", n_col, "n_tokens", "loss"]].rename(
        columns={n_col: "N", "n_tokens": "D"}
    )
    t = t.merge(wide, left_on="run_id", right_index=True, how="inner")
    t["C"] = 6.0 * t["N"].astype(float) * t["D"].astype(float)
    ceilings = {}
    for task in layout.read_json(sweep, layout.TASKS) or []:
        ceilings |= {f"{task['name']}/{k}": v for k, v in task.get("ceiling", {}).items()}
    irreducible = None
    if "irreducible_loss" in runs and runs["irreducible_loss"].notna().any():
        irreducible = float(runs["irreducible_loss"].dropna().mean())
    return MetricTable(
        t.reset_index(drop=True), sorted(wide.columns), n_convention, ceilings, irreducible
    )


def resolve_name(table: MetricTable, name: str) -> str:
    if name in table.metrics:
        return name
    matches = [m for m in table.metrics if m.split("/", 1)[1] == name]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(table.metrics[:12]) + (" ..." if len(table.metrics) > 12 else "")
    raise UserError(f"--metric: no metric {name!r} (recorded: {shown})")


def _base(name: str) -> str:
    return name.split("/", 1)[1].split("@", 1)[0]


def is_sharp(name: str) -> bool:
    return _base(name) in SHARP


def chance(table: MetricTable, name: str) -> float:
    """Chance level of a sharp metric: 1 / choices for accuracy (recorded), else 0."""
    if _base(name) == "accuracy":
        col = name.split("/", 1)[0] + "/chance"
        if col in table.runs:
            return float(table.runs[col].mean())
    return 0.0


# ----------------------------------------------------------------------------- fits


def frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per budget, the run with the lowest final loss, ordered by compute."""
    best = df.loc[df.groupby("budget")["loss"].idxmin()]
    return best.sort_values("C").reset_index(drop=True)


def sigmoid_curve(x, mid, width, lo):
    """A falling logistic from 1 to `lo`, centred at `mid` with scale `width`."""
    return lo + (1.0 - lo) / (1.0 + np.exp(np.clip((x - mid) / width, -50, 50)))


def fit_sigmoid(x: np.ndarray, y: np.ndarray, lo: float, rising: bool) -> tuple[float, float]:
    """(mid, width) of y = lo + (1 - lo) sigma(-(x - mid) / width) (rising in x: width
    < 0), least squares."""
    from scipy.optimize import least_squares

    sign = -1.0 if rising else 1.0
    span = max(float(np.ptp(x)), 1e-6)

    def resid(p):
        return sigmoid_curve(x, p[0], sign * math.exp(p[1]), lo) - y

    starts = [(float(np.median(x)), math.log(span / 4)), (float(x.mean()), math.log(span))]
    best = None
    for s in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = least_squares(resid, s, method="lm" if len(x) > 2 else "trf")
        if best is None or r.cost < best.cost:
            best = r
    return float(best.x[0]), sign * math.exp(float(best.x[1]))


def fit_power(c: np.ndarray, err: np.ndarray) -> tuple[float, float]:
    """(A, b) of err = A·C^-b, least squares in log-log."""
    if (err <= 0).any():
        raise ValueError("a power law needs positive errors")
    slope, icpt = np.polyfit(np.log(c), np.log(err), 1)
    return float(math.exp(icpt)), float(-slope)


def _fit_once(
    df: pd.DataFrame, name: str, lo: float, targets: np.ndarray, best: float, floor: float
) -> dict[str, Any]:
    front = frontier(df)
    out: dict[str, Any] = {}
    x_c = np.log10(front["C"].to_numpy(float))
    if is_sharp(name):
        y_all = df[name].to_numpy(float)
        mid, width = fit_sigmoid(df["loss"].to_numpy(float), y_all, lo, rising=False)
        out["loss_mid"], out["loss_width"] = mid, width
        cm, cw = fit_sigmoid(x_c, front[name].to_numpy(float), lo, rising=True)
        out["log10c_mid"], out["log10c_width"] = cm, cw
        A, b = fit_power(front["C"].to_numpy(float), front["loss"].to_numpy(float) - floor)
        out["loss_A"], out["loss_b"] = A, b
        loss_at = floor + A * targets**-b
        out["predicted_loss"] = loss_at
        out["predicted"] = sigmoid_curve(loss_at, mid, width, lo)  # two-step
        out["predicted_direct"] = sigmoid_curve(np.log10(targets), cm, cw, lo)
    else:
        s = ERROR_OF[_base(name)]
        err = s * (front[name].to_numpy(float) - best)
        A, b = fit_power(front["C"].to_numpy(float), err)
        out["A"], out["b"] = A, b
        out["predicted"] = best + s * A * targets**-b
        slope, icpt = np.polyfit(df["loss"].to_numpy(float), df[name].to_numpy(float), 1)
        out["loss_slope"], out["loss_intercept"] = float(slope), float(icpt)
    return out


def metric_fit(
    table: MetricTable,
    name: str,
    *,
    targets: list[float] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    name = resolve_name(table, name)
    df = table.runs.dropna(subset=[name, "loss"])
    if df["budget"].nunique() < 3:
        raise UserError(
            f"--metric: {df['budget'].nunique()} budget(s) with this metric; a trend in "
            "compute needs 3"
        )
    lo = chance(table, name)
    front = frontier(df)
    c_max = float(front["C"].max())
    targets = list(targets or [c_max * f for f in (1.0, 10.0, 100.0)])
    t = np.asarray(targets, float)
    best = table.best(name)
    floor = table.irreducible or 0.0
    try:
        point = _fit_once(df, name, lo, t, best, floor)
    except ValueError as exc:
        raise UserError(f"--metric {name}: {exc}") from None
    rng = np.random.default_rng(seed)
    draws: list[dict[str, Any]] = []
    failed = 0
    groups = [g.index.to_numpy() for _, g in df.groupby("budget")]
    for _ in range(bootstrap):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        try:
            draws.append(_fit_once(df.loc[idx].reset_index(drop=True), name, lo, t, best, floor))
        except (ValueError, np.linalg.LinAlgError):
            failed += 1

    def interval(key, i=None):
        vals = [d[key] if i is None else d[key][i] for d in draws]
        vals = np.asarray([v for v in vals if np.isfinite(v)])
        if len(vals) < max(10, 0.9 * bootstrap):
            return None
        return [float(np.percentile(vals, 10)), float(np.percentile(vals, 90))]

    params = {
        k: {"value": float(v), "interval": interval(k)}
        for k, v in point.items()
        if not isinstance(v, np.ndarray)
    }
    preds = []
    for i, c in enumerate(targets):
        row = {
            "C": c,
            "x_data": c / c_max,
            "value": float(point["predicted"][i]),
            "interval": interval("predicted", i),
        }
        if "predicted_direct" in point:
            row["value_direct"] = float(point["predicted_direct"][i])
            row["interval_direct"] = interval("predicted_direct", i)
            row["loss"] = float(point["predicted_loss"][i])
        preds.append(row)
    return {
        "metric": name,
        "kind": "sharp" if is_sharp(name) else "smooth",
        "chance": lo,
        "n_runs": len(df),
        "conventions": {
            "C": f"6·N·D with N {table.n_convention}",
            "frontier": "per budget, the run with the lowest final loss",
            "best_score": best,
            "loss_floor": floor,
        },
        "model": (
            "y = lo + (1 - lo) / (1 + exp((L - loss_mid) / loss_width)) over every run; "
            "y = lo + (1 - lo) / (1 + exp(-(log10 C - log10c_mid) / |log10c_width|)) on the "
            "frontier; frontier loss = loss_floor + loss_A * C^-loss_b; prediction: the "
            "sigmoid of loss at that loss (value), and the sigmoid of log10 C (value_direct)"
            if is_sharp(name)
            else "error = |value - best_score| = A * C^-b on the frontier; value = "
            "loss_intercept + loss_slope * L over every run"
        ),
        "frontier": front[["run_id", "budget", "C", "N", "D", "loss", name]]
        .rename(columns={name: "value"})
        .to_dict("records"),
        "params": params,
        "predictions": preds,
        "bootstrap": {"resamples": bootstrap, "failed": failed},
        "ceiling": table.ceilings.get(name),
    }


def related(table: MetricTable, name: str) -> tuple[list[str], list[str]]:
    """The task's sharp and smooth metrics at every k (for the emergence figure)."""
    task = name.split("/", 1)[0]
    mine = [m for m in table.metrics if m.startswith(task + "/")]
    sharp = [m for m in mine if _base(m) in SHARP]
    smooth = [m for m in mine if _base(m) == "logprob"]

    def k_of(m):
        return int(m.split("@", 1)[1]) if "@" in m else 0

    return sorted(sharp, key=k_of), sorted(smooth, key=k_of)
