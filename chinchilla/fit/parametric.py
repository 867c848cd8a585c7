"""Approach 3: the parametric loss L(N, D) = E + A / N^alpha + B / D^beta.

Hoffmann et al. 2022, section 3.3 and Appendix D.2: minimise over (a, b, e, alpha, beta)

    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),   delta = 1e-3

with L-BFGS from a grid of starts, and take A = e^a, B = e^b, E = e^e. The compute-optimal
frontier under C = 6ND is N_opt = G (C/6)^a', D_opt = G^-1 (C/6)^b' with
G = (alpha A / (beta B))^(1 / (alpha + beta)), a' = beta / (alpha + beta),
b' = alpha / (alpha + beta) (paper eq. 4 and Appendix D.2).

All starts are optimised together: a batched Levenberg-Marquardt (damped Newton) with the
exact gradient and Hessian of every start's objective, in numpy. Each start runs to
its own local minimum, as a per-start L-BFGS would; the best is then the answer. The
same machinery refits many bootstrap resamples at once (one weight vector per resample).
Only numpy is imported here: `chinchilla fit` stays fast and needs no torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

# Parameter order inside this module: theta = (a, b, e, alpha, beta).
PARAMS = ("a", "b", "e", "alpha", "beta")
_LOWER = np.tril_indices(5, -1)


def paper_start_grid() -> np.ndarray:
    """The 4,500 starts of Hoffmann et al. 2022 (Appendix D.2): alpha, beta in
    {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}. (4500, 5)."""
    alphas = np.arange(0, 2.01, 0.5)
    es = np.arange(-1, 1.01, 0.5)
    abs_ = np.arange(0, 25.1, 5)
    grid = [
        (a, b, e, al, be) for al, be, e, a, b in itertools.product(alphas, alphas, es, abs_, abs_)
    ]
    return np.asarray(grid, dtype=np.float64)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r^2 / 2 inside |r| <= delta, linear outside (as scipy.special.huber)."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def predict_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L(N, D) = LSE(a - alpha log N, b - beta log D, e) for one theta (5,)."""
    a, b, e, alpha, beta = theta
    return np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)


def objective(
    theta: np.ndarray, log_n, log_d, log_l, delta: float = 1e-3, weights: np.ndarray | None = None
) -> float:
    """The summed Huber objective of Appendix D.2 at one theta (5,)."""
    r = predict_log_loss(theta, log_n, log_d) - log_l
    h = huber(r, delta)
    return float(h.sum() if weights is None else (weights * h).sum())


@dataclass
class _Batch:
    """Objective pieces for P problems at once; arrays are (P, n)."""

    f: np.ndarray  # (P,)
    g: np.ndarray | None = None  # (P, 5)
    H: np.ndarray | None = None  # (P, 5, 5)


def _evaluate(theta, x, y, z, w, delta, derivatives: bool) -> _Batch:
    """`_evaluate_block` over blocks of rows: small blocks stay in cache and avoid the
    page faults of allocating many (P, n) temporaries (several times faster)."""
    rows = max(1, 8192 // max(1, len(x)))
    if theta.shape[0] <= rows:
        return _evaluate_block(theta, x, y, z, w, delta, derivatives)
    parts = [
        _evaluate_block(theta[i : i + rows], x, y, z, w[i : i + rows], delta, derivatives)
        for i in range(0, theta.shape[0], rows)
    ]
    f = np.concatenate([p.f for p in parts])
    if not derivatives:
        return _Batch(f=f)
    return _Batch(
        f=f, g=np.concatenate([p.g for p in parts]), H=np.concatenate([p.H for p in parts])
    )


def _evaluate_block(theta, x, y, z, w, delta, derivatives: bool) -> _Batch:
    a, b, e, al, be = (theta[:, i : i + 1] for i in range(5))
    # exp(u) directly (2 exps and 1 log per point; transcendentals dominate the cost);
    # u is capped so exp cannot overflow, and an underflow to 0 gives f = inf (rejected).
    e1 = np.exp(np.minimum(a - al * x, 700.0))
    e2 = np.exp(np.minimum(b - be * y, 700.0))
    e3 = np.exp(np.minimum(e, 700.0))  # (P, 1)
    tot = e1 + e2 + e3
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.log(tot) - z
    ar = np.abs(r)
    inside = ar <= delta
    # Huber without np.where: r^2/2 inside, delta (|r| - delta/2) outside
    clipped = np.minimum(ar, delta)
    with np.errstate(invalid="ignore"):  # 0 weight x inf residual
        f = (w * (clipped * (ar - 0.5 * clipped))).sum(axis=1)
    f = np.where(np.isfinite(f), f, np.inf)
    if not derivatives:
        return _Batch(f=f)
    inv = 1.0 / tot
    s1, s2, s3 = e1 * inv, e2 * inv, e3 * inv
    t = w * np.clip(r, -delta, delta)  # w psi(r)
    q = w * inside  # w psi'(r)
    # Gradient sum t J and Hessian. The Gauss-Newton part with the -J J^T of d2r folded
    # in is sum c J J^T, c = q - t; the rest is block-diagonal. Every entry is a row sum
    # of some c s_j s_k times 1, x, y, x^2, y^2 or xy: matrix-vector products (BLAS gemv,
    # much faster here than small gemm or a batched (P, 5, n) @ (P, n, 5)).
    x2, y2, xy = x * x, y * y, x * y
    ts1, ts2, ts3 = t * s1, t * s2, t * s3
    g = np.empty((theta.shape[0], 5))
    g[:, 0], g[:, 1], g[:, 2] = ts1.sum(1), ts2.sum(1), ts3.sum(1)
    g[:, 3], g[:, 4] = -(ts1 @ x), -(ts2 @ y)
    c = q - t
    cs1, cs2 = c * s1, c * s2
    c11, c12, c13 = cs1 * s1, cs1 * s2, cs1 * s3
    c22, c23, c33 = cs2 * s2, cs2 * s3, c * s3 * s3
    H = np.empty((theta.shape[0], 5, 5))
    # order (a, b, e, alpha, beta); J = (s1, s2, s3, -s1 x, -s2 y)
    H[:, 0, 0] = c11.sum(1) + g[:, 0]
    H[:, 0, 1] = c12.sum(1)
    H[:, 0, 2] = c13.sum(1)
    H[:, 0, 3] = -(c11 @ x) + g[:, 3]
    H[:, 0, 4] = -(c12 @ y)
    H[:, 1, 1] = c22.sum(1) + g[:, 1]
    H[:, 1, 2] = c23.sum(1)
    H[:, 1, 3] = -(c12 @ x)
    H[:, 1, 4] = -(c22 @ y) + g[:, 4]
    H[:, 2, 2] = c33.sum(1) + g[:, 2]
    H[:, 2, 3] = -(c13 @ x)
    H[:, 2, 4] = -(c23 @ y)
    H[:, 3, 3] = c11 @ x2 + ts1 @ x2
    H[:, 3, 4] = c12 @ xy
    H[:, 4, 4] = c22 @ y2 + ts2 @ y2
    H[:, _LOWER[0], _LOWER[1]] = H[:, _LOWER[1], _LOWER[0]]
    return _Batch(f=f, g=g, H=H)


@dataclass
class BatchResult:
    theta: np.ndarray  # (P, 5)
    f: np.ndarray  # (P,)
    converged: np.ndarray  # (P,) bool
    iterations: int
    lam: np.ndarray  # (P,) damping, to continue a run


def minimize_batch(
    starts: np.ndarray,
    x,
    y,
    z,
    weights: np.ndarray | None = None,
    delta: float = 1e-3,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    max_iter: int = 200,
    ftol: float = 2.2e-9,
    gtol: float = 1e-5,
    lam: np.ndarray | None = None,
) -> BatchResult:
    """Run every start (P, 5) to its own local minimum, all at once.

    Levenberg-Marquardt on the exact Hessian with Marquardt scaling: a step solves
    (H + lam diag(H)) s = -g; it is taken if the objective falls (lam shrinks), else
    lam grows and the step is retried. Bounds, when given, project each step.
    `weights` is (P, n) or (n,), or None for ones. Converged problems leave the batch,
    so late iterations are cheap. The stopping rule is L-BFGS-B's (scipy defaults):
    (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= ftol, or a largest gradient entry <= gtol.
    """
    theta = np.array(starts, dtype=np.float64, copy=True)
    P = theta.shape[0]
    n = len(x)
    W = np.ones((P, n)) if weights is None else np.broadcast_to(weights, (P, n)).astype(np.float64)
    lo = np.full(5, -np.inf) if lower is None else np.asarray(lower, float)
    hi = np.full(5, np.inf) if upper is None else np.asarray(upper, float)
    theta = np.clip(theta, lo, hi)
    lam = np.full(P, LAM0) if lam is None else np.array(lam, dtype=np.float64, copy=True)
    f = np.full(P, np.inf)
    converged = np.zeros(P, dtype=bool)
    active = np.arange(P)
    it = 0
    eye = np.eye(5)
    for it in range(1, max_iter + 1):  # noqa: B007 (reported)
        if active.size == 0:
            break
        th, w = theta[active], W[active]
        cur = _evaluate(th, x, y, z, w, delta, derivatives=True)
        f[active] = cur.f
        diag = np.maximum(np.abs(np.diagonal(cur.H, axis1=1, axis2=2)), 1e-12)
        # one solve per problem; lam raised until the step lowers the objective (<= 8 tries)
        pending = np.ones(active.size, dtype=bool)
        new_th = th.copy()
        new_f = cur.f.copy()
        for _ in range(RETRIES):
            idx = np.nonzero(pending)[0]
            if idx.size == 0:
                break
            A = cur.H[idx] + (lam[active[idx]][:, None] * diag[idx])[:, :, None] * eye
            try:
                step = np.linalg.solve(A, -cur.g[idx][:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = -cur.g[idx] / diag[idx]
            cand = np.clip(th[idx] + step, lo, hi)
            fc = _evaluate(cand, x, y, z, w[idx], delta, derivatives=False).f
            ok = np.isfinite(fc) & (fc <= cur.f[idx])
            good = idx[ok]
            new_th[good], new_f[good] = cand[ok], fc[ok]
            lam[active[good]] = np.maximum(lam[active[good]] / DOWN, 1e-12)
            lam[active[idx[~ok]]] *= UP
            pending[good] = False
        # 3. convergence: no further decrease worth a step, or a vanishing gradient
        moved = ~pending
        decrease = cur.f - new_f
        gnorm = np.abs(cur.g).max(axis=1)
        scale = np.maximum(np.maximum(np.abs(cur.f), np.abs(new_f)), 1.0)
        done = (moved & (decrease <= ftol * scale)) | (gnorm <= gtol)
        done |= ~moved & (lam[active] > 1e12)  # no step lowers f: a (possibly bounded) minimum
        theta[active] = new_th
        f[active] = new_f
        converged[active[done]] = True
        active = active[~done]
    return BatchResult(theta=theta, f=f, converged=converged, iterations=it, lam=lam)


@dataclass
class ParametricFit:
    """A fitted L(N, D) = E + A / N^alpha + B / D^beta, with how it was found."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float  # summed Huber objective at the optimum
    delta: float
    n_points: int
    n_starts: int
    n_converged: int
    success: bool
    message: str
    theta: np.ndarray = field(repr=False)  # (a, b, e, alpha, beta)
    basins: np.ndarray = field(repr=False)  # distinct local optima, best first (k, 5)

    @property
    def a(self) -> float:
        """Exponent of N_opt in C: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C: alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return g_coefficient(self.A, self.B, self.alpha, self.beta)

    def loss(self, n_params, n_tokens):
        return parametric_loss(n_params, n_tokens, self.E, self.A, self.B, self.alpha, self.beta)

    def as_dict(self) -> dict:
        return {
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "a": self.a,
            "b": self.b,
            "G": self.G,
            "objective": self.objective,
            "delta": self.delta,
            "n_points": self.n_points,
            "n_starts": self.n_starts,
            "n_converged": self.n_converged,
            "success": self.success,
            "message": self.message,
        }


def parametric_loss(N, D, E, A, B, alpha, beta):
    """L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2)."""
    return E + A / np.power(N, alpha) + B / np.power(D, beta)


def g_coefficient(A: float, B: float, alpha: float, beta: float) -> float:
    """G = (alpha A / (beta B))^(1 / (alpha + beta)) (Hoffmann et al. 2022, eq. 4)."""
    return (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))


def optimal_allocation(C, A: float, B: float, alpha: float, beta: float):
    """Compute-optimal (N_opt, D_opt) of L(N, D) under C = 6ND (paper eq. 4):
    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta))."""
    G = g_coefficient(A, B, alpha, beta)
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    C6 = np.asarray(C, dtype=np.float64) / 6.0
    return G * C6**a, C6**b / G


def _distinct(theta: np.ndarray, f: np.ndarray, k: int, tol: float = 1e-3) -> np.ndarray:
    """Up to k distinct optima (by parameters), best objective first."""
    order = np.argsort(f)
    out: list[np.ndarray] = []
    for i in order:
        if not np.all(np.isfinite(theta[i])):
            continue
        if all(np.max(np.abs(theta[i] - o)) > tol * (1 + np.max(np.abs(o))) for o in out):
            out.append(theta[i])
        if len(out) == k:
            break
    return np.asarray(out)


# Successive halving of the starts: (iterations, fraction kept) per round.
_HALVING = ((1, 0.25), (3, 0.25), (4, 0.25))
LAM0, RETRIES, DOWN, UP = 0.1, 1, 5.0, 20.0


def _multistart(grid, x, y, z, *, delta, lower, upper, weights, exhaustive: bool):
    """Every start to its local minimum (exhaustive), or successive halving: all starts
    take a few damped Newton steps, the best quarter go on, and so on, until at most 64
    run to convergence. Returns (theta, f, converged) of the starts that finished."""
    kw = dict(delta=delta, lower=lower, upper=upper)
    W = None if weights is None else np.asarray(weights, dtype=np.float64)
    if exhaustive or len(grid) <= 64:
        res = minimize_batch(grid, x, y, z, weights=W, **kw)
        return res.theta, res.f, res.converged
    theta = np.array(grid, dtype=np.float64)
    P = len(theta)
    f = np.full(P, np.inf)
    lam = np.full(P, LAM0)
    conv = np.zeros(P, dtype=bool)
    alive = np.arange(P)
    for iters, keep in _HALVING:
        run = alive[~conv[alive]]
        if iters == 0:  # screen on the objective at the starts themselves
            Wr = None if W is None else np.broadcast_to(W, (len(run), len(x)))
            f[run] = _evaluate(
                theta[run],
                x,
                y,
                z,
                np.ones((len(run), len(x))) if Wr is None else Wr,
                delta,
                derivatives=False,
            ).f
        else:
            res = minimize_batch(theta[run], x, y, z, weights=W, max_iter=iters, lam=lam[run], **kw)
            theta[run], f[run], lam[run], conv[run] = res.theta, res.f, res.lam, res.converged
        n_keep = max(64, int(np.ceil(len(alive) * keep)))
        alive = alive[np.argsort(f[alive], kind="stable")[:n_keep]]
        if len(alive) <= 64:
            break
    # survivors: 20 more steps each, then the 8 best run on to convergence (the rest
    # are crawling along flat ridges far above the best objective)
    for top, iters in ((None, 20), (8, 500)):
        pool = alive if top is None else alive[np.argsort(f[alive], kind="stable")[:top]]
        run = pool[~conv[pool]]
        if run.size:
            res = minimize_batch(theta[run], x, y, z, weights=W, max_iter=iters, lam=lam[run], **kw)
            theta[run], f[run], lam[run], conv[run] = res.theta, res.f, res.lam, res.converged
    return theta[alive], f[alive], conv[alive]


def fit_parametric(
    n_params,
    n_tokens,
    loss,
    *,
    delta: float = 1e-3,
    starts: np.ndarray | None = None,
    lower=None,
    upper=None,
    weights=None,
    exhaustive: bool = True,
) -> ParametricFit:
    """Fit L(N, D) by the paper's procedure (summed Huber on log loss, grid of starts).

    `exhaustive` (the default) runs every start to its own local minimum, as the paper's
    per-start L-BFGS loop does. `exhaustive=False` screens the starts by successive
    halving: about 20x less work and the same optimum on well-conditioned data (the
    Epoch points, IsoFLOP designs with moderate noise), but on ill-conditioned data
    (tiny sweeps, exponents near 0.15) it can stop in a worse basin; use it for speed.
    `lower` / `upper` bound (a, b, e, alpha, beta); e.g. upper e = log(min loss) keeps E
    at or below the lowest observed loss.
    """
    x, y, z = np.log(n_params), np.log(n_tokens), np.log(loss)
    grid = paper_start_grid() if starts is None else np.asarray(starts, dtype=np.float64)
    thetas, fs, convs = _multistart(
        grid, x, y, z, delta=delta, lower=lower, upper=upper, weights=weights, exhaustive=exhaustive
    )
    finite = np.isfinite(fs)
    if not finite.any():
        raise ValueError("the objective is not finite at any start")
    best = int(np.argmin(np.where(finite, fs, np.inf)))
    theta = thetas[best]
    a, b, e, alpha, beta = theta
    n_conv = int(convs.sum())
    success = bool(convs[best]) and alpha > 0 and beta > 0
    message = "converged" if convs[best] else "iteration limit reached at the best start"
    if not (alpha > 0 and beta > 0):
        message += "; an exponent is not positive: the data do not determine this term"
    return ParametricFit(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=float(alpha),
        beta=float(beta),
        objective=float(fs[best]),
        delta=delta,
        n_points=len(x),
        n_starts=len(grid),
        n_converged=n_conv,
        success=success,
        message=message,
        theta=theta,
        basins=_distinct(thetas[finite & convs], fs[finite & convs], k=6),
    )


def refit_many(
    fit: ParametricFit, n_params, n_tokens, loss, weights: np.ndarray, lower=None, upper=None
) -> np.ndarray:
    """Refit for each row of `weights` (R, n) at once, warm-started from the full fit's
    distinct local optima. Returns (R, 5) best theta per resample."""
    x, y, z = np.log(n_params), np.log(n_tokens), np.log(loss)
    basins = fit.basins if len(fit.basins) else fit.theta[None]
    R, k = weights.shape[0], len(basins)
    starts = np.tile(basins, (R, 1))  # (R*k, 5): resample r uses rows r*k .. r*k + k-1
    W = np.repeat(weights, k, axis=0)
    res = minimize_batch(starts, x, y, z, weights=W, delta=fit.delta, lower=lower, upper=upper)
    f = np.where(np.isfinite(res.f), res.f, np.inf).reshape(R, k)
    pick = np.argmin(f, axis=1)
    return res.theta.reshape(R, k, 5)[np.arange(R), pick]


def scipy_reference_fit(
    n_params, n_tokens, loss, *, delta: float = 1e-3, starts: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """The straightforward method: one scipy L-BFGS-B per start (for benchmarks and tests)."""
    from scipy.optimize import minimize

    x, y, z = np.log(n_params), np.log(n_tokens), np.log(loss)
    grid = paper_start_grid() if starts is None else starts
    w = np.ones((1, len(x)))

    def fun(th):
        out = _evaluate(th[None], x, y, z, w, delta, derivatives=True)
        return float(out.f[0]), out.g[0]

    best_f, best_th = np.inf, None
    for s in grid:
        r = minimize(fun, s, jac=True, method="L-BFGS-B")
        if r.fun < best_f:
            best_f, best_th = float(r.fun), r.x
    return best_th, best_f
