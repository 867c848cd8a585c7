"""Loss-curve laws: a run's loss at every step from its learning-rate schedule.

Tissue et al. 2024 ("Scaling Law with Learning Rate Annealing"):

    L(s) = L0 + A * S1(s)^-alpha - C * S2(s)
    S1(s) = sum of the learning rates of the first s steps         (forward area)
    S2(s) = sum over steps i < s of m_i,  m_i = lam * m_(i-1) + max(eta_(i-1) - eta_i, 0)
                                                                    (annealing area)

fitted per model size (one recipe: size, peak learning rate and batch) on every logged
point of every run of that size after its warm-up: the training losses (each the mean
over its logging interval, so the law is averaged over the same steps) and the
evaluations (the loss after s steps). The two kinds of point are weighted by the inverse
of their own residual variance (two passes). For a given alpha the law is linear in
(L0, A, C): bounded least squares (A, C >= 0) on a grid of alpha, refined by a bounded
scalar search around the best grid point; lam is chosen from LAMBDAS the same way.

Schedules are rebuilt from the sweep's config with the trainer's own `lr_at`, and
checked against the learning rate logged at every logged step: a run whose rebuilt
schedule disagrees is left out, with the reason.

Hold-out check (`holdout`): per size with runs of at least two horizons, the runs of
the longest horizon are hidden, the law fitted on the others, and the hidden runs'
final evaluation losses predicted; the mean absolute error is reported next to the seed
noise that repeated runs measure.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chinchilla import layout
from chinchilla.errors import UserError

LAMBDAS = (0.9, 0.99, 0.999)
ALPHAS = np.geomspace(0.02, 4.0, 121)
FORM = "L(s) = L0 + A S1^-alpha - C S2 (Tissue et al. 2024)"


@dataclass
class RunCurve:
    """One run's schedule and logged losses."""

    run_id: str
    n_params: float
    n_tokens: float
    lr: float  # peak
    batch_size: int
    seed: int
    lrs: np.ndarray  # the learning rate of each step, (steps,)
    warmup: int
    train_end: np.ndarray  # logged steps done (interval ends) with a training loss
    train_start: np.ndarray  # the interval's first step
    train_loss: np.ndarray
    eval_step: np.ndarray
    eval_loss: np.ndarray
    final: float  # the final evaluation loss (runs.parquet `loss`); nan for a trunk
    trunk: bool = False  # a shared trunk: its points fit the law, it is never hidden

    @property
    def steps(self) -> int:
        return len(self.lrs)

    @property
    def group(self) -> tuple:
        return (self.n_params, self.lr, self.batch_size)


def areas(lrs: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """S1[s], S2[s] for s = 0..steps (state after s steps)."""
    from scipy.signal import lfilter

    lrs = np.asarray(lrs, float)
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    drop = np.maximum(np.concatenate([[0.0], lrs[:-1] - lrs[1:]]), 0.0)  # at step i
    m = lfilter([1.0], [1.0, -lam], drop)
    s2 = np.concatenate([[0.0], np.cumsum(m)])
    return s1, s2


class _Law:
    """What both curve laws share: the final loss of a schedule and their JSON."""

    def final(self, lrs: np.ndarray) -> float:
        return float(self.loss_at(lrs)[0])

    def as_dict(self) -> dict:
        names = {"lam": "lambda", "n_points": "points"}
        return {names.get(k, k): v for k, v in dataclasses.asdict(self).items()}


@dataclass
class CurveLaw(_Law):
    L0: float
    A: float
    alpha: float
    C: float
    lam: float
    rmse_train: float
    rmse_eval: float
    n_points: int
    runs: list[str] = field(default_factory=list)

    def loss_at(self, lrs: np.ndarray, steps=None) -> np.ndarray:
        """The law's loss after each of `steps` (default: the last) of schedule `lrs`."""
        s1, s2 = areas(lrs, self.lam)
        s = np.atleast_1d(len(lrs) if steps is None else np.asarray(steps))
        with np.errstate(divide="ignore"):
            return self.L0 + self.A * s1[s] ** -self.alpha - self.C * s2[s]


def _design(curves: list[RunCurve], lam: float):
    """Per point: the kind (0 train, 1 eval), loss, and the intervals' S1 rows and S2."""
    rows_s1, f2, y, kind = [], [], [], []
    for c in curves:
        s1, s2 = areas(c.lrs, lam)
        for a, b, loss in zip(c.train_start, c.train_end, c.train_loss, strict=True):
            rows_s1.append(s1[a:b])
            f2.append(s2[a:b].mean())
            y.append(loss)
            kind.append(0)
        for s, loss in zip(c.eval_step, c.eval_loss, strict=True):
            rows_s1.append(s1[s : s + 1])
            f2.append(s2[s])
            y.append(loss)
            kind.append(1)
    # the S1 rows padded into one array for a vectorised mean of S1^-alpha
    width = max(len(r) for r in rows_s1)
    pad = np.full((len(rows_s1), width), np.nan)
    for i, r in enumerate(rows_s1):
        pad[i, : len(r)] = r
    return pad, np.array(f2), np.array(y), np.array(kind)


def _f1(pad, alphas):
    """Mean of S1^-alpha over each point's steps, for every alpha: (len(alphas), n)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nanmean(pad[None, :, :] ** -np.asarray(alphas)[:, None, None], axis=2)


def _nonneg_lstsq(X, y, w):
    """Weighted least squares of y on the three columns of each X[k] (k, n, 3), every
    coefficient >= 0: (sse per k, coefficients per k). Exact: the bounded optimum is the
    unconstrained optimum on its own support, so every support of the three
    coefficients is solved (normal equations of unit-scaled columns) and the best
    feasible one kept."""
    k = len(X)
    scale = np.abs(X).max(axis=1)  # k,3: columns of unit size
    scale[scale == 0] = 1.0
    Xw = X / scale[:, None, :] * np.sqrt(w)[None, :, None]
    yw = y * np.sqrt(w)
    G = np.einsum("kni,knj->kij", Xw, Xw)
    b = np.einsum("kni,n->ki", Xw, yw)
    yy = float(yw @ yw)
    best_sse = np.full(k, yy)  # the empty support: every coefficient 0
    best = np.zeros((k, 3))
    for support in ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)):
        idx = np.array(support)
        Gs = G[:, idx[:, None], idx[None, :]] + 1e-13 * np.eye(len(idx))
        with np.errstate(all="ignore"):
            c = np.linalg.solve(Gs, b[:, idx, None])[:, :, 0]
        sse = yy - np.einsum("ki,ki->k", c, b[:, idx])
        ok = np.all(np.isfinite(c) & (c >= 0), axis=1) & (sse < best_sse)
        best_sse = np.where(ok, sse, best_sse)
        full = np.zeros((k, 3))
        full[:, idx] = c
        best = np.where(ok[:, None], full, best)
    coef = best / scale
    r = y[None, :] - np.einsum("kni,ki->kn", X, coef)
    return np.sum(w[None, :] * r * r, axis=1), coef


def _solve_many(f1s, f2, y, w):
    """Tissue's (L0, A, C) >= 0 for each row of f1s (one per alpha): y on (1, f1, -f2)."""
    X = np.stack([np.ones_like(f1s), f1s, np.broadcast_to(-f2, f1s.shape)], axis=2)
    return _nonneg_lstsq(X, y, w)


def _set_weights(items, residuals, pooled: bool) -> None:
    """Weights: the inverse residual variance of each kind of point (0: training
    intervals, 1: evaluations), pooled over the items (each with .kind and .w) or per
    item."""
    for kind in (0, 1):
        if pooled:
            r = np.concatenate([r[d.kind == kind] for d, r in zip(items, residuals, strict=True)])
            if len(r) >= 2:
                var = max(float(np.mean(r * r)), 1e-12)
                for d in items:
                    d.w[d.kind == kind] = 1.0 / var
        else:
            for d, r in zip(items, residuals, strict=True):
                sel = d.kind == kind
                if sel.sum() >= 2:
                    d.w[sel] = 1.0 / max(float(np.mean(r[sel] ** 2)), 1e-12)


def by_size(curves: list[RunCurve]) -> dict[tuple, list[RunCurve]]:
    """The runs of each size (N, peak lr, batch), in the order given."""
    groups: dict[tuple, list[RunCurve]] = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    return groups


@dataclass
class _Design:
    key: tuple
    pad: np.ndarray
    f2: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    w: np.ndarray


def _reweight(designs: list[_Design], alpha: float, pooled: bool) -> None:
    """The designs' weights from their residuals at `alpha` (`_set_weights`)."""
    res = []
    for d in designs:
        f1 = _f1(d.pad, [alpha])
        _, coef = _solve_many(f1, d.f2, d.y, d.w)
        res.append(d.y - (coef[0, 0] + coef[0, 1] * f1[0] - coef[0, 2] * d.f2))
    _set_weights(designs, res, pooled)


def _best_alpha(designs: list[_Design]) -> tuple[float, float]:
    """The alpha minimising the summed weighted SSE: grid, then bounded refinement."""
    from scipy.optimize import minimize_scalar

    def total(alphas):
        return sum(_solve_many(_f1(d.pad, alphas), d.f2, d.y, d.w)[0] for d in designs)

    sse = total(ALPHAS)
    k = int(np.argmin(sse))
    best = (float(sse[k]), float(ALPHAS[k]))
    lo, hi = ALPHAS[max(k - 1, 0)], ALPHAS[min(k + 1, len(ALPHAS) - 1)]
    opt = minimize_scalar(
        lambda la: float(total([math.exp(la)])[0]),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    if opt.fun < best[0]:
        best = (float(opt.fun), math.exp(opt.x))
    return best


@dataclass
class CurveFit:
    """Per size (L0, A, C) and, shared by every size (or per size, `shared` False),
    alpha and lam."""

    laws: dict  # group -> CurveLaw
    shared: bool
    form: str = FORM

    def law(self, key: tuple) -> CurveLaw:
        return self.laws[key]


def fit_curves(curves: list[RunCurve], shared: bool = True, lambdas=LAMBDAS) -> CurveFit:
    """The curve law of every size (n_params, peak lr, batch) on the given runs' points.
    `shared`: one alpha and lam for all sizes (each still has its own L0, A, C), which
    pins alpha where a size has only one or two schedules."""
    groups = by_size(curves)
    if not groups:
        raise UserError("no runs to fit a curve law on")
    sets = [sorted(groups)] if shared else [[k] for k in sorted(groups)]
    laws = {}
    for keys in sets:
        best = None
        for lam in lambdas:
            designs = []
            for key in keys:
                pad, f2, y, kind = _design(groups[key], lam)
                if len(y) < 5:
                    raise UserError(
                        f"size N={key[0]:.4g}: {len(y)} logged points after warm-up, too few "
                        "for a curve law"
                    )
                designs.append(_Design(key, pad, f2, y, kind, np.ones_like(y)))
            for _ in range(2):
                _, alpha = _best_alpha(designs)
                _reweight(designs, alpha, pooled=shared)
            sse, alpha = _best_alpha(designs)
            score = sse / sum(float(d.w.sum()) for d in designs)
            if best is None or score < best[0]:
                best = (score, lam, alpha, designs)
        _, lam, alpha, designs = best
        for d in designs:
            f1 = _f1(d.pad, [alpha])
            _, coef = _solve_many(f1, d.f2, d.y, d.w)
            r = d.y - (coef[0, 0] + coef[0, 1] * f1[0] - coef[0, 2] * d.f2)
            rm = [
                float(np.sqrt(np.mean(r[d.kind == k] ** 2))) if (d.kind == k).any() else math.nan
                for k in (0, 1)
            ]
            laws[d.key] = CurveLaw(
                L0=float(coef[0, 0]),
                A=float(coef[0, 1]),
                alpha=float(alpha),
                C=float(coef[0, 2]),
                lam=lam,
                rmse_train=rm[0],
                rmse_eval=rm[1],
                n_points=len(d.y),
                runs=[c.run_id for c in groups[d.key]],
            )
    return CurveFit(laws=laws, shared=shared)


# ------------------------------------------------------------------- multi-power law

MPL_FORM = (
    "L(t) = L0 + A S1^-alpha - B sum_k (eta_(k-1) - eta_k) (1 - (C eta_k^-gamma S_k(t) + 1)"
    "^-beta) (Luo et al. 2025)"
)
MPL_BLOCKS = 100  # each run's decay steps merged into at most this many blocks
MPL_STARTS = ((0.5, 1.0, 0.5, 0.5), (0.5, 100.0, 0.5, 0.5))  # alpha, C, beta, gamma


def _decay_blocks(lrs: np.ndarray, blocks: int = MPL_BLOCKS):
    """The steps where the learning rate drops, merged into at most `blocks` blocks:
    (summed drop, the drop-weighted step of each block, the rate there)."""
    drop = np.concatenate([[0.0], lrs[:-1] - lrs[1:]])  # eta_(k-1) - eta_k at step k
    ks = np.nonzero(drop > 0)[0]
    d = drop[ks]
    if len(ks) > blocks:
        edges = np.linspace(0, len(ks), blocks + 1).round().astype(int)
        sums = np.add.reduceat(d, edges[:-1])
        where = np.add.reduceat(d * ks, edges[:-1]) / sums
        d, ks = sums, np.rint(where).astype(int)
    return d, ks, lrs[ks] if len(ks) else np.zeros(0)


def _loss_drop(s1, blocks, steps, C, beta, gamma) -> np.ndarray:
    """LD(t) / B at each of `steps`: the decay's summed, saturating benefit."""
    d, ks, eta = blocks
    steps = np.asarray(steps)
    if len(ks) == 0:
        return np.zeros(len(steps))
    live = ks[None, :] < steps[:, None]
    sk = np.maximum(s1[steps][:, None] - s1[ks][None, :], 0.0)  # eta summed over k..t-1
    x = eta[None, :] ** -gamma * sk
    return np.sum(np.where(live, d[None, :] * -np.expm1(-beta * np.log1p(C * x)), 0.0), axis=1)


@dataclass
class MultiPowerLaw(_Law):
    """One size's multi-power law (Luo et al. 2025, eqs. 4-6); S1 sums the learning
    rate from the first step, warm-up included (their S1 + S_W)."""

    L0: float
    A: float
    B: float
    alpha: float
    C: float
    beta: float
    gamma: float
    rmse_train: float
    rmse_eval: float
    n_points: int
    runs: list[str] = field(default_factory=list)

    def loss_at(self, lrs: np.ndarray, steps=None) -> np.ndarray:
        lrs = np.asarray(lrs, float)
        s1 = np.concatenate([[0.0], np.cumsum(lrs)])
        s = np.atleast_1d(len(lrs) if steps is None else np.asarray(steps))
        ld = _loss_drop(s1, _decay_blocks(lrs), s, self.C, self.beta, self.gamma)
        with np.errstate(divide="ignore"):
            return self.L0 + self.A * s1[s] ** -self.alpha - self.B * ld


def _solve3(X, y, w):
    """`_nonneg_lstsq` of one design X (n, 3): (sse, coefficients)."""
    sse, coef = _nonneg_lstsq(X[None], y, w)
    return float(sse[0]), coef[0]


@dataclass
class _MplGroup:
    """One size's points, with what the decay term needs precomputed: per point, the
    learning rate summed from each decay block to the point (0 past the point), the
    blocks' drops and log rates (padded to MPL_BLOCKS columns with zero drops)."""

    key: tuple
    s1: np.ndarray  # S1 at each point
    sk: np.ndarray  # (points, blocks)
    run: np.ndarray  # (points,) each point's run: a row of `drop` and `log_eta`
    drop: np.ndarray  # (runs, blocks)
    log_eta: np.ndarray  # (runs, blocks)
    y: np.ndarray
    kind: np.ndarray
    w: np.ndarray

    def columns(self, alpha, C, beta, gamma) -> np.ndarray:
        x = self.sk * np.exp(-gamma * self.log_eta)[self.run]
        ld = np.sum(self.drop[self.run] * -np.expm1(-beta * np.log1p(C * x)), axis=1)
        return np.column_stack([np.ones_like(self.s1), self.s1**-alpha, -ld])


def _mpl_groups(curves: list[RunCurve]) -> list[_MplGroup]:
    by = by_size(curves)
    out = []
    for key in sorted(by):
        parts = {k: [] for k in ("s1", "sk", "run", "drop", "log_eta", "y", "kind")}
        for i, c in enumerate(by[key]):
            s1 = np.concatenate([[0.0], np.cumsum(c.lrs)])
            t = np.concatenate([c.train_end, c.eval_step]).astype(int)
            d, ks, eta = _decay_blocks(c.lrs)
            pad = MPL_BLOCKS - len(ks)
            sk = np.maximum(s1[t][:, None] - s1[ks][None, :], 0.0)
            parts["s1"].append(s1[t])
            parts["sk"].append(np.pad(sk, ((0, 0), (0, pad))))
            parts["run"].append(np.full(len(t), i))
            parts["drop"].append(np.pad(d, (0, pad)))
            parts["log_eta"].append(np.log(np.pad(eta, (0, pad), constant_values=1.0)))
            parts["y"].append(np.concatenate([c.train_loss, c.eval_loss]))
            parts["kind"].append(
                np.concatenate([np.zeros(len(c.train_end)), np.ones(len(c.eval_step))])
            )
        y = np.concatenate(parts["y"])
        if len(y) < 5:
            raise UserError(
                f"size N={key[0]:.4g}: {len(y)} logged points after warm-up, too few for a "
                "curve law"
            )
        out.append(
            _MplGroup(
                key,
                np.concatenate(parts["s1"]),
                np.concatenate(parts["sk"]),
                np.concatenate(parts["run"]),
                np.stack(parts["drop"]),
                np.stack(parts["log_eta"]),
                y,
                np.concatenate(parts["kind"]),
                np.ones_like(y),
            )
        )
    return out


# the search box of (log alpha, log C beta, log beta, gamma)
MPL_BOUNDS = ((-7.0, 3.0), (-35.0, 10.0), (-7.0, 7.0), (-3.0, 5.0))
MPL_METHOD = "L-BFGS-B"  # Nelder-Mead reaches the same optimum on the demo, 2.5x slower


def _search(f, x0):
    """A local search of the shape parameters from x0."""
    from scipy.optimize import minimize

    if MPL_METHOD == "L-BFGS-B":
        x0 = np.clip(x0, [b[0] for b in MPL_BOUNDS], [b[1] for b in MPL_BOUNDS])
        return minimize(f, x0, method="L-BFGS-B", bounds=MPL_BOUNDS,
                        options={"eps": 1e-7, "ftol": 1e-12})  # fmt: skip
    return minimize(f, x0, method="Nelder-Mead",
                    options={"maxiter": 400, "xatol": 1e-4, "fatol": 1e-10})  # fmt: skip


def fit_multipower(curves: list[RunCurve]) -> CurveFit:
    """The multi-power law of every size: (L0, A, B) >= 0 per size, exactly, for each
    (alpha, C, beta, gamma), shared by the sizes and searched by L-BFGS-B from
    MPL_STARTS; the training points are read at their interval's last step. Weights:
    each kind of point's inverse residual variance, pooled over sizes (two passes)."""

    if not curves:
        raise UserError("no runs to fit a curve law on")
    groups = _mpl_groups(curves)

    def unpack(theta):
        """alpha, C, beta, gamma from (log alpha, log (C beta), log beta, gamma): the
        product C beta sets the decay term's initial slope; as beta grows the term tends
        to 1 - exp(-C beta x), so beta is held within [e^-7, e^7]."""
        beta = math.exp(float(np.clip(theta[2], -7.0, 7.0)))
        return math.exp(theta[0]), math.exp(theta[1]) / beta, beta, float(theta[3])

    def total(theta):
        try:
            p = unpack(theta)
        except OverflowError:
            return 1e30
        with np.errstate(all="ignore"):
            sse = sum(_solve3(g.columns(*p), g.y, g.w)[0] for g in groups)
        return sse if np.isfinite(sse) else 1e30  # finite: the gradient is by differences

    starts = [np.array([math.log(a), math.log(c * b), math.log(b), g]) for a, c, b, g in MPL_STARTS]
    best = None
    for _ in range(2):
        tries = [best.x] if best is not None else starts
        best = min((_search(total, s) for s in tries), key=lambda r: r.fun)
        p = unpack(best.x)
        res = []
        for g in groups:
            X = g.columns(*p)
            res.append(g.y - X @ _solve3(X, g.y, g.w)[1])
        _set_weights(groups, res, pooled=True)
    best = _search(total, best.x)
    alpha, C, beta, gamma = unpack(best.x)
    laws = {}
    by = by_size(curves)
    for g in groups:
        X = g.columns(alpha, C, beta, gamma)
        coef = _solve3(X, g.y, g.w)[1]
        r = g.y - X @ coef
        rm = [float(np.sqrt(np.mean(r[g.kind == k] ** 2))) if (g.kind == k).any() else math.nan
              for k in (0, 1)]  # fmt: skip
        laws[g.key] = MultiPowerLaw(
            L0=float(coef[0]), A=float(coef[1]), B=float(coef[2]), alpha=alpha, C=C,
            beta=beta, gamma=gamma, rmse_train=rm[0], rmse_eval=rm[1], n_points=len(g.y),
            runs=[c.run_id for c in by[g.key]],
        )  # fmt: skip
    return CurveFit(laws=laws, shared=True, form=MPL_FORM)


FORMS = ("multi-power", "tissue")


def fit_form(curves: list[RunCurve], form: str = "multi-power") -> CurveFit:
    """The curve law of the named form, alpha (and the form's other shape parameters)
    shared by every size."""
    if form == "multi-power":
        return fit_multipower(curves)
    if form == "tissue":
        return fit_curves(curves)
    raise UserError(f"--curve-law: expected {' or '.join(FORMS)}, got {form!r}")


# ------------------------------------------------------------------- reading sweeps


def lr_schedule(cfg, steps: int, peak: float, warmup: int | None = None, stable: bool = False):
    """The learning rate of every step of a run, by the trainer's own `lr_at`."""
    from chinchilla.train import lr_at

    return np.array(
        [lr_at(i, steps, peak, cfg, warmup=warmup, stable=stable) for i in range(steps)]
    )


def _points(done, train_loss, eval_loss, steps: int, warm: int, first: int) -> dict:
    """A run's usable logged points: training intervals starting after warm-up,
    evaluations after it, both from step `first` on (a branch: past its branch point,
    the steps before being its trunk's) and within the run's steps."""
    done = np.asarray(done, int)
    starts = np.concatenate([[0], done[:-1]])
    tl, el = np.asarray(train_loss, float), np.asarray(eval_loss, float)
    kt = np.isfinite(tl) & (starts >= max(warm, first - 1, 1)) & (done <= steps)
    ke = np.isfinite(el) & (done > warm) & (done >= first) & (done <= steps)
    return {
        "train_end": done[kt],
        "train_start": starts[kt],
        "train_loss": tl[kt],
        "eval_step": done[ke],
        "eval_loss": el[ke],
    }


def read_sweep(sweep: Path) -> tuple[list[RunCurve], dict[str, str], object]:
    """The finished runs of a sweep with their rebuilt schedules and logged losses;
    the runs left out, each with the reason; the sweep's config."""
    from chinchilla.grid import plan as make_plan
    from chinchilla.grid import warmup_steps
    from chinchilla.store import load_table

    cfg_path = sweep / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{sweep}: --curves needs a sweep directory (its config.yaml and curves)")
    from chinchilla.sweep import sweep_config

    cfg = sweep_config(sweep)
    runs = load_table(sweep, layout.RUNS)
    curves = load_table(sweep, layout.CURVES)
    if runs.empty or curves.empty:
        raise UserError(f"{sweep}: no finished runs with logged curves")
    try:
        planned = {r.run_id: r for r in make_plan(cfg).runs}
    except UserError:
        planned = {}
    by_run = {rid: g.sort_values("step") for rid, g in curves.groupby("run_id")}
    out, left = [], {}
    for row in runs.itertuples(index=False):
        rid = row.run_id
        if row.status not in ("ok", "trunk"):
            left[rid] = f"status {row.status}"
            continue
        if rid not in by_run:
            left[rid] = "no logged curve"
            continue
        p = planned.get(rid)
        steps, peak = int(row.steps), float(row.lr)
        fixed = p.warmup if p is not None else None
        stable = bool(p is not None and p.is_trunk)
        lrs = lr_schedule(cfg, steps, peak, fixed, stable)
        g = by_run[rid]
        done = g["step"].to_numpy(int)
        logged = g["lr"].to_numpy(float)
        ok = (done >= 1) & (done <= steps)
        if not np.allclose(lrs[done[ok] - 1], logged[ok], rtol=1e-6, atol=1e-12):
            left[rid] = "its logged learning rates differ from the rebuilt schedule"
            continue
        warm = warmup_steps(steps, cfg, fixed)
        first = int(row.branch_step) + 1 if p is not None and p.trunk is not None else 1
        out.append(
            RunCurve(
                run_id=rid,
                n_params=float(row.n_params),
                n_tokens=float(row.n_tokens),
                lr=peak,
                batch_size=int(row.batch_size),
                seed=int(row.seed) if row.seed == row.seed else 0,
                lrs=lrs,
                warmup=warm,
                **_points(done, g["train_loss"], g["eval_loss"], steps, warm, first),
                final=math.nan if stable else float(row.loss),
                trunk=stable,
            )
        )
    return out, left, cfg


# ------------------------------------------------------------------- the check


def seed_noise(curves: list[RunCurve]) -> dict:
    """Run-to-run noise of the final loss from runs that differ only in seed."""
    groups: dict[tuple, list[float]] = {}
    for c in curves:
        if not c.trunk:
            groups.setdefault((*c.group, c.steps), []).append(c.final)
    diffs, ss, dof = [], 0.0, 0
    for v in groups.values():
        if len(v) >= 2:
            v = np.asarray(v)
            ss += float(np.sum((v - v.mean()) ** 2))
            dof += len(v) - 1
            diffs.append(float(v.max() - v.min()))
    return {
        "sd": math.sqrt(ss / dof) if dof else None,
        "dof": dof,
        "spread_min": min(diffs) if diffs else None,
        "spread_max": max(diffs) if diffs else None,
        "groups": len(diffs),
    }


def holdout(
    curves: list[RunCurve],
    shared: bool = True,
    lambdas=LAMBDAS,
    form: str = "tissue",
    min_horizons: int = 2,
) -> list[dict]:
    """Per size with at least `min_horizons` horizons: hide its longest-horizon runs,
    fit the law on every other run (of every size, when alpha and lam are shared), and
    predict the hidden runs' final losses."""
    groups = by_size(curves)
    out = []
    for key in sorted(groups):
        g = [c for c in groups[key] if not c.trunk]  # points of the law, not of the check
        if len({c.steps for c in g}) < max(2, min_horizons):
            continue
        longest = max(c.steps for c in g)
        hidden = [c for c in g if c.steps == longest]
        seen = [c for c in g if c.steps < longest]
        hidden_ids = {c.run_id for c in hidden}
        pool = [c for c in curves if c.run_id not in hidden_ids] if shared else seen
        try:
            fit = fit_curves(pool, shared, lambdas) if form == "tissue" else fit_form(pool, form)
            law = fit.law(key)
        except UserError:
            continue
        for c in hidden:
            pred = law.final(c.lrs)
            out.append(
                {
                    "run_id": c.run_id,
                    "n_params": c.n_params,
                    "n_tokens": c.n_tokens,
                    "steps": c.steps,
                    "fitted_on": [s.run_id for s in seen],
                    "fitted_steps": sorted({s.steps for s in seen}),
                    "predicted": pred,
                    "measured": c.final,
                    "error": pred - c.final,
                }
            )
    return out


# ------------------------------------------------------------------- the report


def schedule_for(cfg, steps: int, peak: float, schedule: str | None, decay_frac: float | None):
    """The learning rate of every step of a run of `steps` under the sweep's training
    config, its schedule (cosine or wsd) and decay fraction optionally replaced."""
    t = cfg.train
    if schedule is not None or decay_frac is not None:
        t = dataclasses.replace(
            t,
            schedule=schedule or t.schedule,
            decay_frac=t.decay_frac if decay_frac is None else decay_frac,
        )
        cfg = dataclasses.replace(cfg, train=t)
    return lr_schedule(cfg, steps, peak)


def report(
    sweep: Path,
    horizons: list[float] | None = None,
    schedule: str | None = None,
    decay_frac: float | None = None,
    check: bool = True,
    form: str = "multi-power",
) -> tuple[dict, CurveFit, list[RunCurve]]:
    """`chinchilla fit SWEEP --curves`: the laws, the hold-out check, and predictions
    for the named horizons (tokens) under the sweep's (or the named) schedule."""
    curves, left, cfg = read_sweep(sweep)
    if not curves:
        raise UserError(f"{sweep}: no run's curve could be read ({left})")
    fit = fit_form(curves, form)
    held = holdout(curves, form=form) if check else []
    err = np.array([h["error"] for h in held])
    noise = seed_noise(curves)
    rmse = float(np.sqrt(np.mean(err**2))) if len(err) else None
    seq_len = cfg.model.seq_len
    preds = []
    for key, law in sorted(fit.laws.items()):
        n, peak, batch = key
        for tokens in horizons or []:
            steps = max(1, round(tokens / (batch * seq_len)))
            lrs = schedule_for(cfg, steps, peak, schedule, decay_frac)
            p = law.final(lrs)
            preds.append(
                {
                    "n_params": n,
                    "lr": peak,
                    "batch_size": batch,
                    "tokens": steps * batch * seq_len,
                    "steps": steps,
                    "schedule": schedule or cfg.train.schedule,
                    "decay_frac": decay_frac if decay_frac is not None else cfg.train.decay_frac,
                    "predicted": p,
                    "interval": None if rmse is None else [p - rmse, p + rmse],
                }
            )
    one = next(iter(fit.laws.values())).as_dict()
    shape = ("alpha", "lambda") if form == "tissue" else ("alpha", "C", "beta", "gamma")
    doc = {
        "law": form,
        "form": fit.form,
        "source": str(sweep),
        "conventions": {
            "loss": "nats/token; training losses are means over their logging interval, "
            "evaluations the loss after s steps",
            "S1": "sum of the learning rates of the steps taken, warm-up included",
            "S2": "tissue: sum of m_i, m_i = lambda m_(i-1) + max(eta_(i-1) - eta_i, 0)",
            "S_k(t)": "multi-power: sum of the learning rates of steps k..t-1; the decay's "
            f"steps merged into at most {MPL_BLOCKS} blocks per run",
            "points": "tissue: training-loss interval means; multi-power: each interval's "
            "mean read at its last step; both: evaluations, after warm-up",
            "n_params": "total parameters",
            "tokens": "training tokens (steps x batch x seq_len)",
        },
        "shared": {k: one[k] for k in shape},
        "sizes": [
            {
                "n_params": k[0],
                "lr": k[1],
                "batch_size": k[2],
                **{name: v for name, v in law.as_dict().items() if name not in shape},
            }
            for k, law in sorted(fit.laws.items())
        ],
        "holdout": held,
        "mae": float(np.mean(np.abs(err))) if len(err) else None,
        "bias": float(np.mean(err)) if len(err) else None,
        "rmse": rmse,
        "seed_noise": noise,
        "left_out": left,
        "predictions": preds,
        "prediction_interval": "the prediction plus or minus the hold-out check's RMS error "
        "(an empirical band, not a coverage-checked interval)",
    }
    return doc, fit, curves


# ------------------------------------------------------------------- runs in progress


def _partial(run, cfg, state: dict) -> RunCurve | None:
    """A run in progress as a RunCurve: its full schedule, the points of its checkpoint
    (a branch's own, past its branch point)."""
    from chinchilla.grid import warmup_steps

    rows = [r for r in state.get("curve", []) if 1 <= int(r.get("step", 0)) <= run.steps]
    if not rows:
        return None
    warm = warmup_steps(run.steps, cfg, run.warmup)
    first = run.branch_step + 1 if run.trunk is not None else 1
    return RunCurve(
        run_id=run.run_id,
        n_params=float(run.n_params),
        n_tokens=float(run.n_tokens),
        lr=float(run.lr),
        batch_size=int(run.batch_size),
        seed=int(run.seed or cfg.train.seed),
        lrs=lr_schedule(cfg, run.steps, run.lr, run.warmup, run.is_trunk),
        warmup=warm,
        **_points(
            [int(r["step"]) for r in rows],
            [float(r.get("train_loss", math.nan)) for r in rows],
            [float(r.get("eval_loss", math.nan)) for r in rows],
            run.steps,
            warm,
            first,
        ),
        final=math.nan,
        trunk=run.is_trunk,
    )


def _saved_rmse(sweep: Path) -> float | None:
    """The hold-out RMS error of the sweep's `fit --curves`, when written after the
    sweep's last finished run (else None: recomputed)."""
    import json

    saved, tables = sweep / "fit_curves.json", sweep / layout.CURVES
    try:
        if saved.stat().st_mtime < tables.stat().st_mtime:
            return None
        rmse = json.loads(saved.read_text())["curves"]["rmse"]
        return float(rmse) if rmse is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def predict_in_progress(
    sweep: Path, run_ids: list[str], form: str = "multi-power"
) -> dict[str, dict]:
    """For runs not finished that left a checkpoint: the final loss the curve law
    predicts from the finished runs of the same size and the run's own logged points,
    with the sweep's hold-out RMS error as an empirical band (when a size has finished
    runs of two horizons). {run_id: {...}} or {run_id: {"why": ...}}."""
    import torch

    from chinchilla.grid import plan as make_plan
    from chinchilla.sweep import sweep_config

    cfg = sweep_config(sweep)
    planned = {r.run_id: r for r in make_plan(cfg).runs}
    try:
        finished, _, _ = read_sweep(sweep)
    except UserError:
        finished = []
    band = _saved_rmse(sweep)
    if band is None and finished:
        err = [h["error"] for h in holdout(finished, form=form)]
        band = float(np.sqrt(np.mean(np.square(err)))) if err else None
    out: dict[str, dict] = {}
    for rid in run_ids:
        run = planned.get(rid)
        path = sweep / layout.CHECKPOINTS / f"{rid}.pt"
        if run is None or not path.exists():
            out[rid] = {"why": "no checkpoint yet"}
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a checkpoint being replaced, or unreadable
            out[rid] = {"why": f"checkpoint unreadable ({type(exc).__name__})"}
            continue
        part = _partial(run, cfg, state)
        if part is None or len(part.train_end) + len(part.eval_step) < 5:
            out[rid] = {"why": "too few points logged after warm-up"}
            continue
        same = [c for c in finished if c.group == part.group]
        try:
            law = fit_form([*same, part] if same else [part], form).law(part.group)
        except UserError as exc:
            out[rid] = {"why": str(exc)}
            continue
        pred = law.final(part.lrs)
        out[rid] = {
            "step": int(state.get("step", part.train_end.max(initial=0))),
            "steps": run.steps,
            "predicted": pred,
            "band": None if band is None else [pred - band, pred + band],
            "from_runs": len(same),
        }
    return out
