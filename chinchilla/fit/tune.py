"""Hyperparameter laws (`chinchilla tune`): each budget's best peak learning rate and
batch, read from a fitted loss surface, and power laws in compute through them.

A tuning grid trains, at a few small budgets, one model size (or a few) under a grid of
peak learning rates x batch sizes. Following DeepSeek-AI 2024 ("DeepSeek LLM", sec. 3.1)
each budget's optimum is then carried up in compute by eta_opt = c C^e and B_opt = c C^e.
Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language
Models", sec. 5) showed why this matters: untuned learning rates and batches move the
compute-optimal exponent.

How each budget's optimum is read (`prepare_budget`, `fit_surfaces`):

1. Runs whose loss is not finite (diverged) never enter a fit; they still count as tried
   when deciding whether the optimum lies at the grid's edge.
2. The surface is fitted near the budget's best run only: the runs within `STEPS` grid
   values of it in each fitted dimension, at its value in another (more steps when that
   leaves too few), less any far above
   the rest of that window (Tukey's far-out fence): a blown-up learning rate or the
   steep wall of the bowl cannot pull the optimum, and the form need only hold near
   the minimum.
3. The form, in x = ln lr and y = ln batch, is an asymmetric quadratic bowl per budget
       L = L0 + A(u) u^2 + B(v) v^2,   v = y - y0,   u = x - x0 - k v,
   with a curvature per side (A(u) = a_lo for u < 0, a_hi above; likewise B): real
   surfaces rise faster above the best learning rate than below it, and a symmetric
   parabola would shift its vertex towards the shallow side. k lets the best learning
   rate move with the batch (fitted when a window holds 3+ values of each). All budgets
   are fitted at once: each has its own L0, optimum (x0, y0) and curvature scales, and
   they share the asymmetries and k (`JointModel`). The optimum is (x0, y0), loss L0.
4. Robustness inside the window: iteratively reweighted least squares with Cauchy
   weights (scale from the residuals' MAD), from several starts at the lowest runs.
5. A dimension is fitted only when the budget tried 3+ values of it. A budget whose
   lowest-loss run lies at the largest or smallest value tried of a dimension, or whose
   fitted optimum sits on the sampled range's bound, is at the grid's edge there: named,
   with the direction to extend, and left out of that dimension's law.

Intervals (`bootstrap_surfaces`): every run's loss perturbed by its budget's own
residuals (resampled, inflated by sqrt(M / (M - p)) for the parameters fitted) and the
whole reading repeated (windows chosen again, the joint fit, the reweighting), then the
law refitted through each resample's optima; 80% percentile intervals, moved so that the
resamples' median sits on the estimate (`recentred`), for each budget's optimum, the
exponent, the coefficient and the law's value at the middle budget.

numpy only (the fit is a small batched Levenberg-Marquardt; no scipy, no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla.errors import UserError
from chinchilla.fit.data import (
    SPELLINGS,
    check_positive,
    find_column,
    float_column,
    group_budgets,
    read_results_table,
)
from chinchilla.hparams import FORMAT, UNITS, VERSION

NEAR_OPTIMAL = 0.0025  # DeepSeek-AI 2024, sec. 3.1: within 0.25% of the minimum loss
STEPS = 2  # the window: runs within this many grid values of the best run, per dimension
MIN_VALUES = 3  # distinct values a dimension needs before its optimum is fitted
FLOOR = 0.1  # the Cauchy scale's floor, a fraction of the window's median loss rise
CAUCHY = 2.385  # Cauchy weight constant (95% efficiency under Gaussian noise)
LEVEL = 80  # the intervals' coverage, percent

# parameter vector of the surface: L0, x0, y0, k, ln a_lo, ln a_hi, ln b_lo, ln b_hi
L0, X0, Y0, K, A_LO, A_HI, B_LO, B_HI = range(8)

TUNE_SPELLINGS = {
    "flops": (*SPELLINGS["c"], "budget"),
    "lr": ("lr", "learning rate", "learning_rate", "peak lr", "peak_lr", "eta", "max_lr"),
    "batch_tokens": (
        "batch_tokens",
        "batch tokens",
        "batch size tokens",
        "tokens per step",
        "tokens_per_batch",
    ),
    "loss": SPELLINGS["loss"],
    "n_params": SPELLINGS["n"],
}


# ----------------------------------------------------------------------------- input


@dataclass
class TuneTable:
    """The runs of a tuning grid, as float arrays (one entry per run)."""

    flops: np.ndarray  # the run's budget in FLOPs (grouping label)
    lr: np.ndarray  # peak learning rate
    batch_tokens: np.ndarray  # tokens per optimizer step
    loss: np.ndarray  # final validation loss; NaN for a diverged run
    n_params: np.ndarray | None
    run_id: list[str]
    source: str
    flops_convention: str | None = None
    n_convention: str | None = None
    excluded: dict[str, int] = field(default_factory=dict)  # statuses left out entirely
    sweep_dir: Path | None = None


def load_tune_table(path: str | Path) -> TuneTable:
    """A tuning sweep's directory (its runs.parquet) or a CSV / parquet table with columns
    flops, lr, batch_tokens, loss (optional n_params, status). Diverged runs (status
    diverged, or a loss that is empty, NaN or infinite) are kept as tried-but-failed;
    runs of other non-ok statuses (failed, stranded) are left out and counted."""
    p = Path(path)
    table_path, table = read_results_table(p)
    columns = list(table)
    found = {k: find_column(columns, spellings) for k, spellings in TUNE_SPELLINGS.items()}
    if found["batch_tokens"] is None and {"batch_size", "seq_len"} <= set(columns):
        seqs = float_column(table, "batch_size", table_path)
        batch = seqs * float_column(table, "seq_len", table_path)
    elif found["batch_tokens"] is not None:
        batch = float_column(table, found["batch_tokens"], table_path)
    else:
        raise UserError(
            f"{table_path}: no batch column: give batch_tokens (tokens per optimizer step), "
            f"or batch_size and seq_len (columns: {', '.join(columns)})"
        )
    for key in ("flops", "lr", "loss"):
        if found[key] is None:
            raise UserError(
                f"{table_path}: no {key} column (needs flops, lr, batch_tokens, loss; "
                f"columns: {', '.join(columns)})"
            )
    if p.is_dir() and "budget" in columns:
        found["flops"] = "budget"  # a sweep's planned budget, not each run's rounded FLOPs
    flops = float_column(table, found["flops"], table_path)
    lr = float_column(table, found["lr"], table_path)
    loss = float_column(table, found["loss"], table_path)
    n = float_column(table, found["n_params"], table_path) if found["n_params"] else None

    keep = np.ones(len(loss), dtype=bool)
    excluded: dict[str, int] = {}
    if "status" in columns:
        status = np.asarray([str(s) for s in table["status"]])
        keep = np.isin(status, ("ok", "diverged"))
        loss = np.where(status == "diverged", np.nan, loss)
        for s in sorted(set(status[~keep])):
            excluded[s] = int((status == s).sum())
    for name, arr in (
        (found["flops"], flops),
        (found["lr"], lr),
        (found["batch_tokens"] or "batch_size x seq_len", batch),
        *([(found["n_params"], n)] if n is not None else []),
    ):
        check_positive(arr, keep, name, table_path)
    loss = np.where(np.isfinite(loss) & (loss > 0), loss, np.nan)
    sel = np.nonzero(keep)[0]
    size = n[sel] if n is not None else np.zeros(len(sel))
    cells = {(f, m) for f, m in zip(flops[sel], size, strict=True)}  # a budget and a size
    tried = {(f, m, a, b) for f, m, a, b in zip(flops[sel], size, lr[sel], batch[sel], strict=True)}
    if len(cells) > len(set(flops[sel])) and len(tried) == len(cells):
        # budgets of several runs, but never two settings for one size: an IsoFLOP sweep
        raise UserError(
            f"{table_path}: one learning rate and one batch per model size and budget: not a "
            "tuning grid "
            "(tune reads budgets trained under several learning rates and batches: "
            "grid.kind: hparams, see docs/tuning.md)"
        )
    ids = [str(v) for v in table.get("run_id", range(len(loss)))]

    def first(col: str) -> str | None:
        return str(table[col][sel[0]]) if col in columns and len(sel) else None

    return TuneTable(
        flops=flops[sel],
        lr=lr[sel],
        batch_tokens=batch[sel],
        loss=loss[sel],
        n_params=None if n is None else n[sel],
        run_id=[ids[i] for i in sel],
        source=str(p),
        flops_convention=first("flops_convention"),
        n_convention=first("n_convention"),
        excluded=excluded,
        sweep_dir=p if p.is_dir() else None,
    )


# ----------------------------------------------------------------------------- surface


def surface(P: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Loss of one budget's asymmetric bowl (module docstring, step 3) for parameter rows
    P (R, 8) = (L0, x0, y0, k, ln a_lo, ln a_hi, ln b_lo, ln b_hi) at x = ln lr and
    y = ln batch, each (m,): returns (R, m)."""
    l0, x0, y0, k = (P[:, [i]] for i in (L0, X0, Y0, K))
    v = y - y0
    u = x - x0 - k * v
    a = np.exp(np.where(u < 0, P[:, [A_LO]], P[:, [A_HI]]))
    b = np.exp(np.where(v < 0, P[:, [B_LO]], P[:, [B_HI]]))
    return l0 + a * u * u + b * v * v


class JointModel:
    """Every budget's bowl at once: per budget g its floor L0_g, optimum (x0_g, y0_g) and
    curvature scales ln a_g, ln b_g; shared by all budgets the asymmetry of each dimension
    (rho: ln of the curvature above the optimum over the one below) and the coupling k.
    Sharing the shape's asymmetry is what pins each optimum: with a curvature per side
    and budget, a shifted vertex and re-balanced sides fit a few noisy runs equally well.

    Parameter vector (5 G + 3): L0[G], x0[G], y0[G], ln a[G], ln b[G], rho_a, rho_b, k."""

    def __init__(self, x, y, group, n_groups: int):
        self.x, self.y, self.g, self.G = x, y, group, n_groups
        self.size = 5 * n_groups + 3
        self.rows = np.arange(len(x))

    def cols(self, block: int) -> np.ndarray:
        """Column of each point's own parameter in `block` (0: L0, 1: x0, ... 4: ln b)."""
        return block * self.G + self.g

    def __call__(self, P: np.ndarray):
        """(prediction (R, M), Jacobian (R, M, 5G + 3)) for parameter rows P."""
        G, g = self.G, self.g
        l0, x0, y0, la, lb = (P[:, b * G + g] for b in range(5))
        ra, rb, k = P[:, [5 * G]], P[:, [5 * G + 1]], P[:, [5 * G + 2]]
        v = self.y - y0
        u = self.x - x0 - k * v
        sa, sb = np.where(u < 0, -0.5, 0.5), np.where(v < 0, -0.5, 0.5)
        a = np.exp(la + sa * ra)
        b = np.exp(lb + sb * rb)
        au2, bv2 = a * u * u, b * v * v
        J = np.zeros((len(P), len(g), self.size))
        r = self.rows
        J[:, r, self.cols(0)] = 1.0
        J[:, r, self.cols(1)] = -2 * a * u
        J[:, r, self.cols(2)] = 2 * a * u * k - 2 * b * v
        J[:, r, self.cols(3)] = au2
        J[:, r, self.cols(4)] = bv2
        J[:, :, 5 * G] = sa * au2
        J[:, :, 5 * G + 1] = sb * bv2
        J[:, :, 5 * G + 2] = -2 * a * u * v
        return l0 + au2 + bv2, J

    def budget_params(self, P: np.ndarray, i: int) -> np.ndarray:
        """Budget i's bowl in `surface`'s 8-parameter layout."""
        G = self.G
        ra, rb = P[5 * G], P[5 * G + 1]
        la, lb = P[3 * G + i], P[4 * G + i]
        return np.array(
            [
                P[i],
                P[G + i],
                P[2 * G + i],
                P[5 * G + 2],
                la - ra / 2,
                la + ra / 2,
                lb - rb / 2,
                lb + rb / 2,
            ]
        )


def levenberg_marquardt(model, P, loss, weights, active, low, high, iters: int = 80):
    """Weighted least squares for many parameter rows at once: P (R, p) against losses
    and weights (R, M) (or one (M,) for all rows). Parameters outside `active` stay
    fixed; each is kept inside [low, high]. A row stops once a step gains less than
    1e-10 of its cost or its damping passes 1e6. Returns (P, cost)."""
    P = np.array(P, dtype=float)
    R = len(P)
    loss = np.broadcast_to(loss, (R, len(model.x)))
    sw = np.sqrt(np.broadcast_to(weights, loss.shape))
    fixed = np.diag(np.where(active, 0.0, 1e12))
    eye = np.eye(P.shape[1])

    def residual(Q, rows):
        pred, J = model(Q)
        return (pred - loss[rows]) * sw[rows], J * sw[rows][..., None]

    todo = np.arange(R)
    r, J = residual(P, todo)
    cost = np.einsum("rm,rm->r", r, r)
    lam = np.full(R, 1e-3)
    for _ in range(iters):
        Jt = np.swapaxes(J, 1, 2)
        H = Jt @ J
        g = (Jt @ r[..., None])[..., 0]
        damp = lam[todo, None, None] * eye * (np.diagonal(H, axis1=1, axis2=2)[:, None] + 1e-12)
        step = np.linalg.solve(H + damp + fixed, -g[..., None])[..., 0]
        trial = np.clip(P[todo] + step * active, low, high)
        r_t, J_t = residual(trial, todo)
        cost_t = np.einsum("rm,rm->r", r_t, r_t)
        better = cost_t < cost[todo]
        gain = np.where(better, (cost[todo] - cost_t) / np.maximum(cost[todo], 1e-300), 1.0)
        won = todo[better]
        P[won], cost[won] = trial[better], cost_t[better]
        r[better], J[better] = r_t[better], J_t[better]
        lam[todo] = np.where(better, lam[todo] / 3, lam[todo] * 4)
        going = (gain >= 1e-10) & (lam[todo] <= 1e6)
        if not going.any():
            break
        todo, r, J = todo[going], r[going], J[going]
    return P, cost


@dataclass
class BudgetFit:
    """One budget's (or one budget and size's) tuning surface and optimum."""

    flops: float
    n_params: float | None
    runs: int
    diverged: int
    lr_values: list[float]  # the learning rates tried (diverged runs included)
    batch_values: list[float]
    best: dict[str, float]  # the lowest-loss run: lr, batch_tokens, loss
    fitted: dict[str, bool]  # which dimensions were fitted
    edge: dict[str, str | None]  # per dimension: None, "larger" or "smaller"
    params: np.ndarray | None = None  # `surface` parameters of this budget's bowl
    window: np.ndarray | None = None  # indices (into this budget's runs) fitted
    weights: np.ndarray | None = None  # final Cauchy weights of the window
    outliers: list[str] = field(default_factory=list)  # run ids down-weighted below 0.5
    far_above: list[str] = field(default_factory=list)  # run ids set aside from the window
    near: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # bootstrap optima (ln)
    at_bound: dict[str, int] = field(default_factory=dict)  # resamples with the optimum on a bound

    @property
    def lr_opt(self) -> float | None:
        if self.fitted["lr"] and self.params is not None:
            return float(math.exp(self.params[X0]))
        return None

    @property
    def batch_opt(self) -> float | None:
        if self.fitted["batch"] and self.params is not None:
            return float(math.exp(self.params[Y0]))
        return None

    @property
    def loss_opt(self) -> float | None:
        return None if self.params is None else float(self.params[L0])

    def usable(self, dim: str) -> bool:
        """Whether this budget's optimum in `dim` enters that dimension's law."""
        return self.params is not None and self.fitted[dim] and self.edge[dim] is None

    def to_json(self) -> dict[str, Any]:
        P = self.params
        return {
            "flops": self.flops,
            "n_params": self.n_params,
            "runs": self.runs,
            "diverged": self.diverged,
            "fitted_runs": 0 if self.window is None else len(self.window),
            "outliers": self.outliers,
            "far_above": self.far_above,
            "best_run": self.best,
            "lr_opt": self.lr_opt,
            "batch_opt": self.batch_opt,
            "loss_opt": self.loss_opt,
            "lr_interval": _interval(self.samples.get("lr"), self.lr_opt),
            "batch_interval": _interval(self.samples.get("batch"), self.batch_opt),
            "surface": None
            if P is None
            else {
                "k": float(P[K]),
                "lr_curvature": [float(np.exp(P[A_LO])), float(np.exp(P[A_HI]))],
                "batch_curvature": [float(np.exp(P[B_LO])), float(np.exp(P[B_HI]))],
                "form": "L0 + a(u) u^2 + b(v) v^2, u = ln lr - ln lr_opt - k v, "
                "v = ln batch - ln batch_opt; curvatures [below, above] the optimum",
            },
            "near_optimal": self.near,
            "edge": self.edge,
            "lr_values": self.lr_values,
            "batch_values": self.batch_values,
            "note": self.note,
        }


def recentred(samples: np.ndarray, estimate: float) -> list[float]:
    """The LEVEL% percentile interval of `samples`, moved so that their median sits on
    the point estimate: the resamples perturb data that already hold noise, which moves
    their centre but (to first order) not their spread."""
    lo, mid, hi = np.percentile(samples, [(100 - LEVEL) / 2, 50, 100 - (100 - LEVEL) / 2])
    return [float(lo - mid + estimate), float(hi - mid + estimate)]


def _interval(ln_samples: np.ndarray | None, estimate: float | None) -> list[float] | None:
    if ln_samples is None or estimate is None:
        return None
    ok = ln_samples[np.isfinite(ln_samples)]
    if len(ok) < 10:
        return None
    return [float(np.exp(v)) for v in recentred(ok, math.log(estimate))]


def _edge(values: np.ndarray, best: float, fitted_at: float, lo: float, hi: float) -> str | None:
    """'larger' / 'smaller' when the best value tried, or the fitted optimum, lies on the
    range's bound (the grid should extend that way), else None."""
    if best >= values.max() or fitted_at >= hi - 1e-6:
        return "larger"
    if best <= values.min() or fitted_at <= lo + 1e-6:
        return "smaller"
    return None


def _neighbourhood(x, y, finite, best: int, steps: int, fitted: dict[str, bool]) -> np.ndarray:
    """Indices of the finite runs whose ln lr and ln batch each lie within `steps`
    distinct values (among the finite runs') of the best run's; in a dimension that is
    not fitted, at the best run's value only (the slice through the best run)."""
    keep = finite.copy()
    for v, dim in ((x, "lr"), (y, "batch")):
        if not fitted[dim]:
            keep &= v == v[best]
            continue
        values = np.unique(v[finite])
        i = int(np.searchsorted(values, v[best]))
        lo, hi = values[max(0, i - steps)], values[min(len(values) - 1, i + steps)]
        keep &= (v >= lo) & (v <= hi)
    return np.nonzero(keep)[0]


@dataclass
class _Group:
    """One budget's runs on their way into the joint fit."""

    fit: BudgetFit
    x: np.ndarray  # ln lr of every run
    y: np.ndarray
    loss: np.ndarray
    ids: list[str]
    need: int = 0  # runs the window needs: the budget's own surface parameters, + 1


def _window(x, y, loss, need: int, fit: BudgetFit) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-2 of the module docstring: (the window's runs, the runs set aside as far
    above the rest), indices into this budget's runs."""
    finite = np.isfinite(loss)
    b = int(np.nanargmin(loss))
    for steps in range(STEPS, max(len(fit.lr_values), len(fit.batch_values)) + 1):
        win = _neighbourhood(x, y, finite, b, steps, fit.fitted)
        if len(win) >= need:
            break
    # runs far above the rest of the window (Tukey's far-out fence on the rise above the
    # best run) are set aside: one blown-up run cannot bend the bowl
    rise = loss[win] - loss[b]
    q1, q3 = np.percentile(rise, [25, 75])
    far = rise > q3 + 3 * (q3 - q1)
    if far.any() and len(win) - int(far.sum()) >= need:
        return win[~far], win[far]
    return win, win[:0]


def prepare_budget(lr, batch, loss, flops, n_params, ids) -> _Group:
    """Steps 1-2 of the module docstring for one budget: what is fitted, the window."""
    x, y = np.log(lr), np.log(batch)
    finite = np.isfinite(loss)
    ids = ids if ids is not None else [str(i) for i in range(len(loss))]
    fit = BudgetFit(
        flops=flops,
        n_params=n_params,
        runs=len(loss),
        diverged=int((~finite).sum()),
        lr_values=sorted(set(map(float, lr))),
        batch_values=sorted(set(map(float, batch))),
        best={},
        fitted={
            "lr": len(np.unique(lr[finite])) >= MIN_VALUES,
            "batch": len(np.unique(batch[finite])) >= MIN_VALUES,
        },
        edge={"lr": None, "batch": None},
    )
    group = _Group(fit, x, y, loss, ids)
    if not finite.any():
        fit.note = "every run diverged"
        return group
    b = int(np.nanargmin(loss))
    fit.best = {"lr": float(lr[b]), "batch_tokens": float(batch[b]), "loss": float(loss[b])}
    if not (fit.fitted["lr"] or fit.fitted["batch"]):
        fit.note = f"fewer than {MIN_VALUES} learning rates and batches with finite losses"
        return group
    group.need = 1 + 3 * fit.fitted["lr"] + 2 * fit.fitted["batch"]  # its parameters, +1
    win, far = _window(x, y, loss, group.need, fit)
    if len(win) < group.need:
        fit.note = f"{len(win)} finite run(s) near its best for {group.need - 1} surface parameters"
        return group
    fit.far_above = [ids[i] for i in far]
    fit.window = win
    return group


def fit_surfaces(groups: list[_Group], near: float) -> JointModel | None:
    """Steps 3-5 of the module docstring: every budget's bowl in one fit."""
    live = [gr for gr in groups if gr.fit.window is not None]
    if not live:
        return None
    G = len(live)
    # every finite run of the live budgets is in the model; a weight of 0 keeps a run
    # outside its budget's window out of the fit (a resample may choose another window)
    members = [np.nonzero(np.isfinite(gr.loss))[0] for gr in live]
    x = np.concatenate([gr.x[f] for gr, f in zip(live, members, strict=True)])
    y = np.concatenate([gr.y[f] for gr, f in zip(live, members, strict=True)])
    loss = np.concatenate([gr.loss[f] for gr, f in zip(live, members, strict=True)])
    gidx = np.concatenate([np.full(len(f), i) for i, f in enumerate(members)])
    mask = np.concatenate([np.isin(f, gr.fit.window) for gr, f in zip(live, members, strict=True)])
    model = JointModel(x, y, gidx, G)
    model.members, model.live = members, live
    fit_lr = np.array([gr.fit.fitted["lr"] for gr in live])
    fit_b = np.array([gr.fit.fitted["batch"] for gr in live])
    # the coupling k needs budgets with 3+ values of both dimensions in their windows
    use_k = any(
        len(np.unique(gr.x[gr.fit.window])) >= MIN_VALUES
        and len(np.unique(gr.y[gr.fit.window])) >= MIN_VALUES
        for gr in live
    )
    active = np.concatenate(
        [np.ones(G, bool), fit_lr, fit_b, fit_lr, fit_b, [fit_lr.any(), fit_b.any(), use_k]]
    )
    xlo = np.array([gr.x[f].min() for gr, f in zip(live, members, strict=True)])
    xhi = np.array([gr.x[f].max() for gr, f in zip(live, members, strict=True)])
    ylo = np.array([gr.y[f].min() for gr, f in zip(live, members, strict=True)])
    yhi = np.array([gr.y[f].max() for gr, f in zip(live, members, strict=True)])
    inf = np.full(G, np.inf)
    low = np.concatenate([-inf, xlo, ylo, np.full(2 * G, -30.0), [-6.0, -6.0, -4.0]])
    high = np.concatenate([inf, xhi, yhi, np.full(2 * G, 30.0), [6.0, 6.0, 4.0]])

    # starts: each budget's s-th lowest window run as its optimum; curvatures from the
    # window's loss spread over half its width
    order = [gr.fit.window[np.argsort(gr.loss[gr.fit.window], kind="stable")] for gr in live]
    n_starts = min(4, min(len(o) for o in order))
    starts = np.zeros((n_starts, model.size))
    for i, (gr, o) in enumerate(zip(live, order, strict=True)):
        lw = gr.loss[o]
        spread = max(float(lw.max() - lw.min()), 1e-9)
        starts[:, i] = lw.min()
        starts[:, G + i] = gr.x[o[:n_starts]]
        starts[:, 2 * G + i] = gr.y[o[:n_starts]]
        starts[:, 3 * G + i] = np.log(spread / max(np.ptp(gr.x[o]) / 2, 1e-3) ** 2)
        starts[:, 4 * G + i] = np.log(spread / max(np.ptp(gr.y[o]) / 2, 1e-3) ** 2)
    P, cost = levenberg_marquardt(model, starts, loss, mask.astype(float), active, low, high)
    model.active, model.low, model.high = active, low, high
    best, weights = _reweight(model, P[[int(np.argmin(cost))]], loss[None, :], mask[None, :])
    P, weights = best[0], weights[0]
    model.params, model.weights, model.loss, model.mask = P, weights, loss, mask
    for i, (gr, own) in enumerate(zip(live, members, strict=True)):
        fit = gr.fit
        fit.params = model.budget_params(P, i)
        in_win = own[mask[gidx == i]]
        fit.weights = weights[gidx == i][mask[gidx == i]]
        fit.outliers = [gr.ids[j] for j, w in zip(in_win, fit.weights, strict=True) if w < 0.5]
        b = int(np.nanargmin(gr.loss))
        if fit.fitted["lr"]:
            fit.edge["lr"] = _edge(gr.x, gr.x[b], P[G + i], xlo[i], xhi[i])
        if fit.fitted["batch"]:
            fit.edge["batch"] = _edge(gr.y, gr.y[b], P[2 * G + i], ylo[i], yhi[i])
        fit.near = _near_optimal(fit, gr.x, gr.y, gr.loss, near)
    return model


def _reweight(model: JointModel, P, loss, mask, rounds: int = 3):
    """Cauchy reweighting of fits P (R, p) to losses (R, M) over their windows (mask):
    the scale is the window residuals' MAD, corrected for the parameters fitted, and at
    least FLOOR of the windows' median rise above their best runs (so that a surface's
    small lack of fit to noise-free losses is not taken for outliers). Returns (P,
    weights (R, M))."""
    p = int(model.active.sum())
    m = mask.sum(-1)
    G, g = model.G, model.g
    lowest = np.full((len(P), G), np.inf)
    for i in range(G):
        own = np.where(mask & (g == i), loss, np.inf)
        lowest[:, i] = own.min(-1)
    rise = np.where(mask, loss - lowest[:, g], np.nan)
    floor = FLOOR * np.nanmedian(rise, -1) + 1e-9 * np.nanmin(np.where(mask, loss, np.nan), -1)
    for _ in range(rounds):
        r = np.where(mask, loss - model(P)[0], np.nan)
        med = np.nanmedian(r, -1, keepdims=True)
        mad = 1.4826 * np.nanmedian(np.abs(r - med), -1) * np.sqrt(m / np.maximum(m - p, 1))
        scale = np.maximum(mad, floor)[:, None]
        weights = np.where(mask, 1.0 / (1.0 + (np.nan_to_num(r) / (CAUCHY * scale)) ** 2), 0.0)
        P, _ = levenberg_marquardt(model, P, loss, weights, model.active, model.low, model.high)
    return P, weights


def _near_optimal(fit: BudgetFit, x, y, loss, tol: float) -> dict[str, Any]:
    """Runs within `tol` of the fitted minimum loss, and the fitted band: the learning
    rates (at the best batch) and batches (at the best learning rate) whose fitted loss
    is within `tol` of the minimum (DeepSeek's 'near-optimal' region)."""
    P = fit.params
    l0 = float(P[L0])
    within = np.isfinite(loss) & (loss <= l0 * (1 + tol))
    doc: dict[str, Any] = {
        "tolerance": tol,
        "runs": int(within.sum()),
        "lr_range": [float(np.exp(x[within].min())), float(np.exp(x[within].max()))]
        if within.any()
        else None,
        "batch_range": [float(np.exp(y[within].min())), float(np.exp(y[within].max()))]
        if within.any()
        else None,
    }
    rise = tol * l0
    if fit.fitted["lr"]:
        doc["lr_band"] = [
            math.exp(P[X0] - math.sqrt(rise / math.exp(P[A_LO]))),
            math.exp(min(P[X0] + math.sqrt(rise / math.exp(P[A_HI])), 700.0)),
        ]
    if fit.fitted["batch"]:
        # at lr = lr_opt: u = -k v, so the rise is (a(-k v) k^2 + b(v)) v^2 on each side
        k = P[K]
        below = math.exp(P[A_HI] if k > 0 else P[A_LO]) * k * k + math.exp(P[B_LO])
        above = math.exp(P[A_LO] if k > 0 else P[A_HI]) * k * k + math.exp(P[B_HI])
        doc["batch_band"] = [
            math.exp(P[Y0] - math.sqrt(rise / below)),
            math.exp(min(P[Y0] + math.sqrt(rise / above), 700.0)),
        ]
    return doc


def bootstrap_surfaces(model: JointModel | None, resamples: int, rng) -> None:
    """The intervals (module docstring): every finite run's loss perturbed by its
    budget's own residuals (those of its window's runs that kept a Cauchy weight of 0.5
    or more, centred, inflated by sqrt(M / (M - p))), and the whole reading repeated:
    each budget's window chosen again around its new best run, the joint fit, one
    reweighting. Fills each budget's samples with ln lr_opt and ln batch_opt (a
    a resample's optimum sits on its sampled range's bound)."""
    if model is None or resamples <= 0:
        return
    P = model.params[None, :]
    resid = model.loss - model(P)[0][0]
    m, p = int(model.mask.sum()), int(model.active.sum())
    inflate = math.sqrt(m / max(m - p, 1))
    draws = np.repeat(model.loss[None, :], resamples, 0)
    mask = np.zeros(draws.shape, dtype=bool)
    for i, gr in enumerate(model.live):
        own = np.nonzero(model.g == i)[0]
        core = own[model.mask[own] & (model.weights[own] >= 0.5)]
        r = resid[core] - resid[core].mean()
        draws[:, own] += rng.choice(r * inflate, size=(resamples, len(own)))
        xg, yg = gr.x[model.members[i]], gr.y[model.members[i]]
        for j in range(resamples):
            win, _ = _window(xg, yg, draws[j, own], gr.need, gr.fit)
            mask[j, own[win]] = True
    Q, _ = levenberg_marquardt(
        model,
        np.repeat(P, resamples, 0),
        draws,
        mask.astype(float),
        model.active,
        model.low,
        model.high,
    )
    Q, _ = _reweight(model, Q, draws, mask, rounds=1)
    G = model.G
    for i, gr in enumerate(model.live):
        for dim, col in (("lr", G + i), ("batch", 2 * G + i)):
            if gr.fit.fitted[dim]:
                v = Q[:, col]
                gr.fit.samples[dim] = v
                gr.fit.at_bound[dim] = int(
                    ((v <= model.low[col] + 1e-6) | (v >= model.high[col] - 1e-6)).sum()
                )


# ----------------------------------------------------------------------------- laws


@dataclass
class Law:
    """value_opt = coefficient * x ** exponent through the usable budgets' optima."""

    name: str  # "lr" or "batch"
    variable: str  # "flops" or "n_params"
    coefficient: float
    exponent: float
    points: list[tuple[float, float]]  # (x, optimum) used
    left_out: list[str]
    interval: dict[str, list[float] | None] = field(default_factory=dict)
    failed_resamples: int = 0
    resamples: int = 0
    samples: np.ndarray | None = None  # (R, 2): each resample's exponent and ln coefficient
    scatter: float | None = None  # tau: the optima's scatter about the line beyond their noise

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The law's 80% interval at each x (recentred percentiles over the resamples)."""
        if self.samples is None:
            return None
        e, c = self.samples[:, :1], self.samples[:, 1:]
        ln = c + e * np.log(np.asarray(x, float))[None, :]
        est = math.log(self.coefficient) + self.exponent * np.log(x)
        q = np.percentile(ln, [(100 - LEVEL) / 2, 50, 100 - (100 - LEVEL) / 2], axis=0)
        return np.exp(q[0] - q[1] + est), np.exp(q[2] - q[1] + est)

    @property
    def middle(self) -> float:
        xs = [p[0] for p in self.points]
        return float(math.exp(np.mean(np.log(xs))))

    def __call__(self, x: float) -> float:
        return self.coefficient * x**self.exponent

    def to_json(self) -> dict[str, Any]:
        xs = [p[0] for p in self.points]
        return {
            "coefficient": self.coefficient,
            "exponent": self.exponent,
            "variable": self.variable,
            "units": UNITS[self.name],
            "interval": self.interval,
            "level": LEVEL,
            "middle": self.middle,
            "at_middle": self(self.middle),
            f"{'flops' if self.variable == 'flops' else 'n_params'}_range": [min(xs), max(xs)],
            "points": [{"x": a, "optimum": b} for a, b in self.points],
            "left_out": self.left_out,
            "scatter": self.scatter,
            "scatter_note": "sd of ln optimum about the line beyond the optima's own bootstrap "
            "spread; added to the intervals",
            "failed_resamples": self.failed_resamples,
            "resamples": self.resamples,
        }


def _line(lx: np.ndarray, ly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of ly (..., g) on lx (g,), batched."""
    mx = lx.mean()
    slope = ((lx - mx) * (ly - ly.mean(-1, keepdims=True))).sum(-1) / ((lx - mx) ** 2).sum()
    return slope, ly.mean(-1) - slope * mx


def fit_law(
    name: str, variable: str, fits: list[BudgetFit], xs: list[float], rng=None
) -> Law | None:
    """The power law of `name` over the usable fits (x: their budget or size), with the
    bootstrap's 80% intervals; None when fewer than two budgets are usable.

    With three or more budgets, the optima may scatter about the line by more than their
    own bootstrap spread (the optimum is not exactly a power law in C, or a budget's
    surface misleads): the excess, tau^2 = max(0, RSS / (g - 2) - the optima's mean
    bootstrap variance), is added to every resample's optima as N(0, tau^2) noise, so
    that the intervals also hold what the line does not explain."""
    use = [(f, x) for f, x in zip(fits, xs, strict=True) if f.usable(name)]
    left = [
        f"{variable} {x:.3g}: "
        + (
            f"best {name} at the grid's {f.edge[name]} edge (extend the grid to "
            f"{f.edge[name]} {'learning rates' if name == 'lr' else 'batches'})"
            if f.edge[name]
            else (f.note or f"{name} not fitted (fewer than {MIN_VALUES} values)")
        )
        for f, x in zip(fits, xs, strict=True)
        if not f.usable(name)
    ]
    if len({x for _, x in use}) < 2:
        return None
    opt = np.array([f.lr_opt if name == "lr" else f.batch_opt for f, _ in use])
    lx = np.log([x for _, x in use])
    slope, icpt = _line(lx, np.log(opt))
    law = Law(
        name,
        variable,
        float(np.exp(icpt)),
        float(slope),
        [(float(math.exp(a)), float(b)) for a, b in zip(lx, opt, strict=True)],
        left,
    )
    samples = [f.samples.get(name) for f, _ in use]
    if all(s is not None for s in samples):
        S = np.stack(samples, axis=-1)  # (R, g) of ln optima
        ok = np.all(np.isfinite(S), axis=-1)
        law.resamples, law.failed_resamples = len(S), int((~ok).sum())
        if ok.sum() >= 10:
            S = S[ok]
            if len(use) > 2:
                rss = float(((np.log(opt) - (icpt + slope * lx)) ** 2).sum())
                tau2 = max(0.0, rss / (len(use) - 2) - float(S.var(0).mean()))
                law.scatter = math.sqrt(tau2)
                if tau2 > 0:
                    rng = rng if rng is not None else np.random.default_rng(0)
                    S = S + rng.normal(0.0, law.scatter, S.shape)
            e, c = _line(lx, S)
            law.samples = np.stack([e, c], axis=1)
            mid = c + e * math.log(law.middle)
            law.interval = {
                "exponent": recentred(e, law.exponent),
                "coefficient": [float(np.exp(v)) for v in recentred(c, icpt)],
                "at_middle": [float(np.exp(v)) for v in recentred(mid, math.log(law(law.middle)))],
            }
    return law


# ----------------------------------------------------------------------------- report


@dataclass
class TuneReport:
    table: TuneTable
    budgets: list[BudgetFit]
    lr: Law | None
    batch: Law | None
    lr_in_n: Law | None = None
    batch_in_n: Law | None = None
    near: float = NEAR_OPTIMAL
    bootstrap: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        t = self.table
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "source": t.source,
            "conventions": {
                "flops_convention": t.flops_convention,
                "n_convention": t.n_convention,
                **UNITS,
            },
            "runs": len(t.loss),
            "excluded": t.excluded,
            "bootstrap": {
                "resamples": self.bootstrap,
                "method": "residual bootstrap of each budget's fitted surface (design kept), "
                "law refitted through each resample's optima",
                "level": LEVEL,
            },
            "near_optimal_tolerance": self.near,
            "lr": None if self.lr is None else self.lr.to_json(),
            "batch": None if self.batch is None else self.batch.to_json(),
            "budgets": [b.to_json() for b in self.budgets],
            "notes": self.notes,
        }
        for key in ("lr", "batch"):
            if doc[key] is not None:
                doc[key]["flops_range"] = doc[key].pop("flops_range")
        if self.lr_in_n or self.batch_in_n:
            doc["lr_in_n"] = None if self.lr_in_n is None else self.lr_in_n.to_json()
            doc["batch_in_n"] = None if self.batch_in_n is None else self.batch_in_n.to_json()
        return doc

    def summary(self) -> list[str]:
        """The lines `chinchilla tune` prints under its table."""
        conv = {"6nd": "6ND", "chinchilla": "Chinchilla App. F"}.get(
            self.table.flops_convention or "", "the table's compute column"
        )
        lines = []
        for law, unit in ((self.lr, ""), (self.batch, " tokens")):
            if law is None:
                continue
            iv = law.interval.get("exponent") if law.interval else None
            mid = law.interval.get("at_middle") if law.interval else None
            lines.append(
                f"{'peak lr' if law.name == 'lr' else 'batch'}_opt = {law.coefficient:.4g} "
                f"C^{law.exponent:.4f}"
                + (f" (exponent {LEVEL}% interval [{iv[0]:.4f}, {iv[1]:.4f}])" if iv else "")
                + f"; at C = {law.middle:.3g}: {law(law.middle):.4g}{unit}"
                + (f" [{mid[0]:.4g}, {mid[1]:.4g}]" if mid else "")
                + f"; {len(law.points)} budgets"
                + (
                    f", {law.failed_resamples}/{law.resamples} resamples failed"
                    if law.resamples
                    else ""
                )
                + (
                    f"; the optima scatter about the line by {law.scatter:.3f} in ln beyond "
                    "their own noise (held in the intervals)"
                    if law.scatter
                    else ""
                )
            )
            for why in law.left_out:
                lines.append(f"  left out of the {law.name} law: {why}")
        lines.append(f"C in FLOPs as {conv}; lr: {UNITS['lr']}; batch: {UNITS['batch']}")
        return lines + [f"note: {n}" for n in self.notes]


def tune(
    table: TuneTable, *, bootstrap: int = 200, seed: int = 0, near: float = NEAR_OPTIMAL
) -> TuneReport:
    """Each budget's surface and optimum, then the laws in C (and in N when the grid
    varies the model size within a budget)."""
    finite = np.isfinite(table.loss)
    if not finite.any():
        raise UserError(f"{table.source}: every run diverged (no finite loss): nothing to fit")
    labels = group_budgets(table.flops, None)
    budgets = np.unique(labels)
    if len(budgets) < 2:
        raise UserError(
            f"{table.source}: one budget (C = {budgets[0]:.3g}): a law in C needs tuning "
            "grids at two or more budgets"
        )
    if not near > 0:
        raise UserError(f"--near must be > 0, got {near}")
    rng = np.random.default_rng(seed)
    sizes_vary = table.n_params is not None and any(
        len(np.unique(table.n_params[labels == c])) > 1 for c in budgets
    )
    groups: list[_Group] = []
    for c in budgets:
        in_c = labels == c
        sizes = np.unique(table.n_params[in_c]) if sizes_vary else [None]
        for n in sizes:
            sel = np.nonzero(in_c & (table.n_params == n if n is not None else True))[0]
            groups.append(
                prepare_budget(
                    table.lr[sel],
                    table.batch_tokens[sel],
                    table.loss[sel],
                    float(c),
                    None if n is None else float(n),
                    [table.run_id[i] for i in sel],
                )
            )
    model = fit_surfaces(groups, near)
    bootstrap_surfaces(model, bootstrap, rng)
    fits = [gr.fit for gr in groups]
    # the law in C: per budget, the size with the lowest fitted loss (its compute optimum)
    per_c: dict[float, BudgetFit] = {}
    for f in fits:
        cur = per_c.get(f.flops)
        if cur is None or (f.loss_opt or math.inf) < (cur.loss_opt or math.inf):
            per_c[f.flops] = f
    chosen = list(per_c.values())
    rep = TuneReport(
        table=table,
        budgets=fits,
        lr=fit_law("lr", "flops", chosen, [f.flops for f in chosen], rng),
        batch=fit_law("batch", "flops", chosen, [f.flops for f in chosen], rng),
        near=near,
        bootstrap=bootstrap,
    )
    if sizes_vary:
        rep.lr_in_n = fit_law("lr", "n_params", fits, [f.n_params for f in fits], rng)
        rep.batch_in_n = fit_law("batch", "n_params", fits, [f.n_params for f in fits], rng)
    if rep.lr is None and rep.batch is None:
        why = "; ".join(
            f"C {f.flops:.3g}: " + (f.note or f"edge {f.edge}")
            for f in chosen
            if f.note or any(f.edge.values())
        )
        raise UserError(
            f"{table.source}: fewer than two budgets with an optimum inside their grid, for "
            f"both the learning rate and the batch ({why or 'no dimension had 3+ values'})"
        )
    for dim, law in (("learning rate", rep.lr), ("batch", rep.batch)):
        if law is None:
            rep.notes.append(
                f"no {dim} law: fewer than two budgets with a fitted optimum inside the grid"
            )
    return rep
