"""Data-constrained scaling: repeated tokens and excess parameters (Muennighoff et al.
2023, "Scaling Data-Constrained Language Models", eqs. 5-6).

With U unique tokens and D tokens trained on (D / U epochs), a repeated token is worth
less than a fresh one, and so, past the compute-optimal size for the data, is a parameter:

    L(N, D, U) = E + A / N'^alpha + B / D'^beta
    U_D = min(D, U),  R_D = D / U_D - 1                         (repeated epochs)
    D'  = U_D + U_D R*_D (1 - exp(-R_D / R*_D))
    U_N = min(N, N_opt(U_D)),  R_N = N / U_N - 1                 (excess parameters)
    N'  = U_N + U_N R*_N (1 - exp(-R_N / R*_N))

N_opt(U_D) is the base law's compute-optimal N for U_D tokens: from N_opt = G (C/6)^a and
D_opt = G^-1 (C/6)^b, N_opt(U) = G (G U)^(a/b). The k-th repeat of a token is worth
exp(-k / R*_D) of a fresh one; R*_D ln 2 epochs halve it.

Fitting, as the paper: the base (E, A, B, alpha, beta) by Approach 3's certified
optimiser on the single-epoch rows (D <= U), each parameter held instead with
`fixed`; then R*_N and R*_D with the base held, by the summed Huber loss of log loss over
every row, from a grid of starts in log R* (each run by L-BFGS-B along a path of Huber
deltas, then polished by Nelder-Mead: the objective has kinks at small delta). A start
is certified when no point of a 16-direction stencil around it at radius 1e-4 in log
R* lowers the objective by more than 1e-10 of it. Bootstrap: runs resampled, both stages
refitted (the base from the full fit's optima, R* from the full fit's distinct optima).

numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from chinchilla.errors import UserError
from chinchilla.fit.bootstrap import LEVELS, percentile_interval, resample_counts
from chinchilla.fit.parametric import (
    ParametricFit,
    fit_parametric,
    g_coefficient,
    optimal_allocation,
    parametric_loss,
    refit_many,
    start_set,
)

BASE = ("E", "A", "B", "alpha", "beta")
STARS = ("rn_star", "rd_star")
STAR_BOUNDS = (math.log(1e-2), math.log(1e4))  # log R*: beyond, repetition is free or worthless
SCREEN_RANGE = (math.log(0.05), math.log(5000.0))  # the grid of log R* screened for starts
SCREEN_KEEP = 6  # local minima of the screen refined to certified optima
MIN_SINGLE = 8  # single-epoch rows the base needs, unless every base parameter is fixed
NEAR = 0.002  # other optima within 0.2% of the best objective are reported


def effective_tokens(D, U, rd_star):
    """D' for D tokens drawn from U unique ones (U_D = min(D, U))."""
    D, U = np.asarray(D, float), np.asarray(U, float)
    ud = np.minimum(D, U)
    r = D / ud - 1.0
    return ud + ud * rd_star * -np.expm1(-r / rd_star)


def n_for_tokens(U, base: dict):
    """The base law's compute-optimal N for U training tokens: G (G U)^(a/b)."""
    g = g_coefficient(base["A"], base["B"], base["alpha"], base["beta"])
    return g * (g * np.asarray(U, float)) ** (base["beta"] / base["alpha"])


def effective_params(N, D, U, rn_star, base: dict):
    """N' for N parameters trained on min(D, U) unique tokens."""
    N = np.asarray(N, float)
    un = np.minimum(N, n_for_tokens(np.minimum(D, U), base))
    r = N / un - 1.0
    return un + un * rn_star * -np.expm1(-r / rn_star)


def constrained_loss(N, D, U, base: dict, rn_star: float, rd_star: float):
    """L(N, D, U) of the data-constrained law."""
    return parametric_loss(
        effective_params(N, D, U, rn_star, base),
        effective_tokens(D, U, rd_star),
        base["E"],
        base["A"],
        base["B"],
        base["alpha"],
        base["beta"],
    )


def _huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@dataclass
class ConstrainedFit:
    base: dict
    base_source: dict  # name -> "fitted on N single-epoch rows" | "fixed"
    rn_star: float
    rd_star: float
    objective: float
    delta: float
    n_rows: int
    n_single: int
    certified: bool
    message: str
    starts: dict  # "certified" / "not certified" counts
    optima: list = field(default_factory=list)  # distinct optima within NEAR of the best
    flat: list = field(default_factory=list)  # what the data cannot pin
    base_fit: ParametricFit | None = None
    intervals: dict = field(default_factory=dict)
    bootstrap_failed: int | None = None

    @property
    def half_life_epochs(self) -> float:
        return self.rd_star * math.log(2)

    def loss(self, N, D, U):
        return constrained_loss(N, D, U, self.base, self.rn_star, self.rd_star)

    def words(self) -> str:
        """R*_D in plain words."""
        worth4 = float(effective_tokens(4.0, 1.0, self.rd_star))
        return (
            f"each further epoch of a repeated token is worth exp(-k / {self.rd_star:.3g}) "
            f"of a fresh one after k repeats: half after {self.half_life_epochs:.3g} epochs; "
            f"4 epochs of U unique tokens are worth {worth4:.2f} U fresh ones"
        )

    def as_dict(self) -> dict:
        return {
            **self.base,
            "rn_star": self.rn_star,
            "rd_star": self.rd_star,
            "base_source": self.base_source,
            "objective": self.objective,
            "delta": self.delta,
            "rows": self.n_rows,
            "single_epoch_rows": self.n_single,
            "certified": self.certified,
            "message": self.message,
            "starts": self.starts,
            "other_optima_within_0.2%": self.optima,
            "flat": self.flat,
            "half_life_epochs": self.half_life_epochs,
            "in_words": self.words(),
            "intervals": self.intervals,
            "bootstrap_failed": self.bootstrap_failed,
        }

    def allocate(self, flops: float, unique: float) -> dict:
        """The loss-minimising N and D = C / 6N for compute `flops` and `unique` unique
        tokens, against the base law's optimum with unlimited data."""
        x = np.linspace(0.0, math.log(flops / 6.0), 8001)  # N from 1 to C / 6 (D = 1)
        for _ in range(3):  # grid, then two finer grids around the best
            N = np.exp(x)
            L = self.loss(N, flops / (6 * N), unique)
            k = int(np.nanargmin(L))
            x = np.linspace(x[max(k - 2, 0)], x[min(k + 2, len(x) - 1)], 401)
        N = float(np.exp(x[200]))
        D = flops / (6 * N)
        n_inf, d_inf = optimal_allocation(
            flops, *(self.base[k] for k in ("A", "B", "alpha", "beta"))
        )
        l_inf = float(parametric_loss(n_inf, d_inf, *(self.base[k] for k in BASE)))
        loss = float(self.loss(N, D, unique))
        return {
            "flops": flops,
            "unique_tokens": unique,
            "n_opt": N,
            "d_opt": D,
            "epochs": D / unique,
            "loss": loss,
            "n_opt_unlimited": float(n_inf),
            "d_opt_unlimited": float(d_inf),
            "loss_unlimited": l_inf,
            "loss_given_up": loss - l_inf,
        }


# ---------------------------------------------------------------------- fitting


def parse_fixed(items: list[str] | None) -> dict[str, float]:
    """--fix NAME=VALUE (repeatable) -> {name: value}; one line naming a bad item."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in BASE:
            raise UserError(
                f"--fix {item!r}: expected NAME=VALUE with NAME one of {', '.join(BASE)}"
            )
        try:
            v = float(value)
        except ValueError:
            raise UserError(f"--fix {item!r}: {value!r} is not a number") from None
        if not (math.isfinite(v) and v > 0):
            raise UserError(f"--fix {item!r}: must be positive and finite")
        out[name] = v
    return out


def check_rows(n, d, u, loss, names: list[str]) -> None:
    """Refuse what the law cannot read: unique tokens missing, not positive, or above D."""
    bad = ~(np.isfinite(u) & (u > 0))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise UserError(
            f"unique_tokens must be positive and finite: {names[i]} holds {float(u[i])!r} "
            f"({int(bad.sum())} such rows)"
        )
    over = u > d * (1 + 1e-9)
    if over.any():
        i = int(np.nonzero(over)[0][0])
        raise UserError(
            f"unique_tokens cannot exceed the tokens a run trained on: {names[i]} has "
            f"U = {u[i]:.4g} > D = {d[i]:.4g} ({int(over.sum())} such rows; a run that saw "
            "part of a larger pool used U = D unique tokens)"
        )


def _bounds_for(fixed: dict):
    """(lower, upper) over (log A, log B, log E, alpha, beta) holding the fixed ones."""
    lower, upper = np.full(5, -np.inf), np.full(5, np.inf)
    where = {
        "A": (0, math.log),
        "B": (1, math.log),
        "E": (2, math.log),
        "alpha": (3, float),
        "beta": (4, float),
    }
    for name, v in fixed.items():
        i, f = where[name]
        lower[i] = upper[i] = f(v)
    return lower, upper


def _base_of(theta) -> dict:
    a, b, e, alpha, beta = theta
    return {
        "E": math.exp(e),
        "A": math.exp(a),
        "B": math.exp(b),
        "alpha": float(alpha),
        "beta": float(beta),
    }


def _stage2_objective(n, d, u, z, base, delta, w):
    """The summed Huber loss of log loss as a function of t = (log R*_N, log R*_D), the
    base held: what does not depend on R* is computed once."""
    ud = np.minimum(d, u)
    rd_ = d / ud - 1.0
    un = np.minimum(n, n_for_tokens(ud, base))
    rn_ = n / un - 1.0
    E, A, B, al, be = (base[k] for k in BASE)

    def f(t):
        rn, rd = math.exp(t[0]), math.exp(t[1])
        with np.errstate(all="ignore"):
            n_eff = un + un * rn * -np.expm1(-rn_ / rn)
            d_eff = ud + ud * rd * -np.expm1(-rd_ / rd)
            r = np.log(E + A * n_eff**-al + B * d_eff**-be) - z
        v = float(np.sum(w * _huber(r, delta)))
        return v if math.isfinite(v) else 1e300

    return f


def _run_start(f_at, t0, delta):
    """One start of stage 2: L-BFGS-B along the delta path, Nelder-Mead polish."""
    from scipy.optimize import minimize

    from chinchilla.fit.optimize import delta_path

    t = np.asarray(t0, float)
    bounds = [STAR_BOUNDS, STAR_BOUNDS]
    for dl in delta_path(delta):
        t = minimize(f_at(dl), t, method="L-BFGS-B", bounds=bounds).x
    f = f_at(delta)
    res = minimize(
        f,
        t,
        method="Nelder-Mead",
        bounds=bounds,
        options={"xatol": 1e-9, "fatol": 1e-14, "maxiter": 2000},
    )
    return res.x, float(res.fun)


def _certified(f, t, fval) -> bool:
    """No point of a 16-direction stencil at radius 1e-4 (in log R*) lowers f by more
    than 1e-10 of it (a point on a bound counts only the feasible directions)."""
    for ang in np.linspace(0, 2 * math.pi, 16, endpoint=False):
        p = t + 1e-4 * np.array([math.cos(ang), math.sin(ang)])
        if np.any(p < STAR_BOUNDS[0]) or np.any(p > STAR_BOUNDS[1]):
            continue
        if f(p) < fval - 1e-10 * abs(fval) - 1e-300:
            return False
    return True


def _screen(n, d, u, z, base, delta, w, keep: int):
    """The objective on a 41 x 41 grid of log R* (all at once); the `keep` lowest of its
    local minima (8 neighbours), best first."""
    g = np.linspace(*SCREEN_RANGE, 41)
    rn, rd = np.meshgrid(np.exp(g), np.exp(g), indexing="ij")
    with np.errstate(all="ignore"):
        L = constrained_loss(
            n[None, :], d[None, :], u[None, :], base, rn.reshape(-1, 1), rd.reshape(-1, 1)
        )
        f = np.sum(w * _huber(np.log(L) - z, delta), axis=1).reshape(41, 41)
    f = np.where(np.isfinite(f), f, np.inf)
    pad = np.pad(f, 1, constant_values=np.inf)
    neigh = np.min(
        [pad[1 + i : 42 + i, 1 + j : 42 + j] for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j],
        axis=0,
    )
    i, j = np.nonzero(f <= neigh)
    order = np.argsort(f[i, j])[:keep]
    return np.column_stack([g[i[order]], g[j[order]]])


def _fit_stars(n, d, u, z, base, delta, w, starts, quick: bool = False):
    """Every start of stage 2; returns (thetas, objectives, certified flags). `quick`
    (bootstrap resamples, starting at the full fit's optima): L-BFGS-B at the requested
    delta, and the delta path and Nelder-Mead polish only for a start the stencil does
    not certify."""
    from scipy.optimize import minimize

    f_at = lambda dl: _stage2_objective(n, d, u, z, base, dl, w)  # noqa: E731
    f = f_at(delta)
    out = []
    for s in starts:
        if quick:
            t = minimize(f, s, method="L-BFGS-B", bounds=[STAR_BOUNDS, STAR_BOUNDS]).x
            v = f(t)
            if _certified(f, t, v):
                out.append((t, v, True))
                continue
        t, v = _run_start(f_at, s, delta)
        out.append((t, v, _certified(f, t, v)))
    th = np.array([o[0] for o in out])
    fv = np.array([o[1] for o in out])
    cert = np.array([o[2] for o in out])
    return th, fv, cert


def _distinct(th, fv, best):
    """Optima other than the best within NEAR of its objective, 1% apart in R*."""
    keep = []
    for i in np.argsort(fv):
        if fv[i] > fv[best] * (1 + NEAR) + 1e-300:
            break
        if all(np.max(np.abs(th[i] - th[j])) > 0.01 for j in [best, *keep]):
            keep.append(int(i))
    return keep


def _fit_base(n, d, loss, single, fixed, lower, upper, delta):
    """Stage 1: (the base parameters, their ParametricFit or None when all are held, the
    rows fitted). The base is fitted where the law reduces to it: single epoch, and no
    excess parameters (N <= N_opt(D) under the base itself, found by refitting until the
    rows stop changing, or cycle; at most 6 fits)."""
    free = [k for k in BASE if k not in fixed]
    if not free:
        return dict(fixed), None, np.zeros(len(n), dtype=bool)
    if single.sum() < MIN_SINGLE:
        raise UserError(
            f"{int(single.sum())} single-epoch rows (D <= unique tokens): the base law "
            f"needs at least {MIN_SINGLE}, or hold it with --fix NAME=VALUE for each of "
            f"{', '.join(free)}"
        )
    rows, seen, base_fit = single.copy(), [], None
    for _ in range(6):
        if rows.sum() < MIN_SINGLE:
            raise UserError(
                f"{int(rows.sum())} single-epoch rows at or below the compute-optimal "
                f"size for their tokens: the base law needs at least {MIN_SINGLE}, or "
                f"hold it with --fix NAME=VALUE for each of {', '.join(free)}"
            )
        ns, ds, ls = n[rows], d[rows], loss[rows]
        starts = start_set("profile", ns, ds, ls, delta=delta, lower=lower, upper=upper)
        if base_fit is not None:  # the last set's optima, and a few of the grid's
            starts = np.vstack([base_fit.theta[None], base_fit.basins, starts[::10]])
        base_fit = fit_parametric(ns, ds, ls, delta=delta, starts=starts, lower=lower, upper=upper)
        seen.append(rows)
        trial = _base_of(base_fit.theta) | fixed
        rows = single & (n <= n_for_tokens(d, trial) * (1 + 1e-9))
        if any(np.array_equal(rows, r) for r in seen):
            break
    return _base_of(base_fit.theta) | fixed, base_fit, seen[-1]


def fit_constrained(
    n,
    d,
    u,
    loss,
    *,
    names: list[str] | None = None,
    fixed: dict[str, float] | None = None,
    delta: float = 1e-3,
    bootstrap: int = 200,
    seed: int = 0,
) -> ConstrainedFit:
    """Fit the data-constrained law (module docstring) to runs (N, D, U, loss)."""
    n, d, u, loss = (np.asarray(v, float) for v in (n, d, u, loss))
    names = names or [f"row {i + 2}" for i in range(len(n))]
    check_rows(n, d, u, loss, names)
    fixed = dict(fixed or {})
    single = d <= u * (1 + 1e-9)
    lower, upper = _bounds_for(fixed)
    base, base_fit, base_rows = _fit_base(n, d, loss, single, fixed, lower, upper, delta)
    source = {
        k: "fixed" if k in fixed else f"fitted on {int(base_rows.sum())} single-epoch rows"
        for k in BASE
    }
    z = np.log(loss)
    w = np.ones(len(n))
    grid = _screen(n, d, u, z, base, delta, w, SCREEN_KEEP)
    th, fv, cert = _fit_stars(n, d, u, z, base, delta, w, grid)
    pool = np.nonzero(cert)[0] if cert.any() else np.arange(len(fv))
    best = int(pool[np.argmin(fv[pool])])
    rn, rd = (float(math.exp(v)) for v in th[best])
    others = _distinct(th, fv, best)
    message = "certified local minimum (best of the grid)" if cert[best] else "no start certified"
    if base_fit is not None and not base_fit.success:
        message += f"; base: {base_fit.message}"
    fit = ConstrainedFit(
        base=base,
        base_source=source,
        rn_star=rn,
        rd_star=rd,
        objective=float(fv[best]),
        delta=delta,
        n_rows=len(n),
        n_single=int(base_rows.sum()),
        certified=bool(cert[best]) and (base_fit is None or base_fit.success),
        message=message,
        starts={
            "screened": 41 * 41,
            "refined": len(grid),
            "certified": int(cert.sum()),
            "not certified": int((~cert).sum()),
        },
        optima=[
            {
                "rn_star": math.exp(th[i][0]),
                "rd_star": math.exp(th[i][1]),
                "objective": float(fv[i]),
            }
            for i in others
        ],
        base_fit=base_fit,
    )
    fit.flat = _flat(fit, n, d, u, z, th[best])
    if bootstrap:
        _bootstrap(
            fit, n, d, u, loss, base_rows, fixed, lower, upper, th, others, best, bootstrap, seed
        )
    return fit


def _flat(fit: ConstrainedFit, n, d, u, z, t) -> list[str]:
    """R* the objective hardly tells from half or twice its value, or held at a bound."""
    f = _stage2_objective(n, d, u, z, fit.base, fit.delta, np.ones(len(n)))
    out = []
    for i, name in enumerate(("R*_N", "R*_D")):
        if t[i] <= STAR_BOUNDS[0] + 1e-6 or t[i] >= STAR_BOUNDS[1] - 1e-6:
            out.append(f"{name} ended at the bound {math.exp(t[i]):.3g}: the rows do not pin it")
            continue
        rise = []
        for k in (-1, 1):
            p = t.copy()
            p[i] = np.clip(p[i] + k * math.log(2), *STAR_BOUNDS)
            rise.append(f(p) - fit.objective)
        if min(rise) < 0.005 * fit.objective:
            out.append(
                f"{name}: the objective changes by under 0.5% at half or twice "
                f"{math.exp(t[i]):.3g}: the rows hardly pin it (repeated epochs for R*_D, "
                "models past the compute-optimal size for their data for R*_N)"
            )
    return out


def _bootstrap(fit, n, d, u, loss, single, fixed, lower, upper, th, others, best, R, seed):
    counts = resample_counts(len(n), R, seed)
    bases = None
    if fit.base_fit is not None:
        idx = np.nonzero(single)[0]
        thetas = refit_many(
            fit.base_fit, n[idx], d[idx], loss[idx], counts[:, idx], lower=lower, upper=upper
        )
        bases = thetas
    z = np.log(loss)
    full = th[[best, *others]]
    vals = {k: np.full(R, np.nan) for k in (*BASE, *STARS)}
    for r in range(R):
        if bases is not None:
            if not np.all(np.isfinite(bases[r])):
                continue
            base = _base_of(bases[r]) | fixed
        else:
            base = dict(fit.base)
        t, fv, cert = _fit_stars(n, d, u, z, base, fit.delta, counts[r], full, quick=True)
        if not cert.any():
            continue
        k = int(np.argmin(np.where(cert, fv, np.inf)))
        for name in BASE:
            vals[name][r] = base[name]
        vals["rn_star"][r], vals["rd_star"][r] = np.exp(t[k])
    failed = int(np.sum(~np.isfinite(vals["rd_star"])))
    fit.bootstrap_failed = failed
    if failed > 0.1 * R:
        fit.intervals = {"withheld": f"{failed} of {R} resamples could not be fitted (over 10%)"}
        return
    fit.intervals = {
        k: {lv: percentile_interval(v, lv) for lv in LEVELS}
        for k, v in vals.items()
        if k not in fixed
    }
