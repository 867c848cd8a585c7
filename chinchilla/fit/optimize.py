"""The batched optimiser behind Approach 3: many starts of one objective, all at once.

Objective (Hoffmann et al. 2022, Appendix D.2), per problem p and theta = (a, b, e, alpha, beta):

    f_p(theta) = sum_i w_pi Huber_delta( LSE(a - alpha x_i, b - beta y_i, e) - z_i ),

with x = log N, y = log D, z = log L. Every start is run by a projected
Levenberg-Marquardt method on the exact gradient and Hessian, with Nielsen's damping
update, until one of these ends it:

- CONVERGED: a certified stationary point. The Hessian restricted to the free
  coordinates is positive definite (a Cholesky factorisation succeeds) and the Newton
  decrement g' H^-1 g, twice the decrease the quadratic model still promises, is at most
  2 (rtol f + atol): what remains to be gained is below rtol of the objective (atol,
  residuals of 1e-10 in log loss, certifies an exact fit). A coordinate is
  held fixed (not free) while it sits at a bound with the gradient pushing outward
  (projected Newton, Bertsekas 1982), or while its term has vanished (below).
- VANISHED: certified as above on the remaining coordinates while one term (A / N^alpha,
  B / D^beta or E) contributes less than `VANISH` of the predicted loss at every point:
  the objective is flat in that term's coordinates (its parameters run off to a
  boundary, such as E -> 0), and the reduced law is a stationary point. It is a genuine
  value of the objective and competes with the others for the best.
- DIVERGED: left the box |a|, |b|, |e| <= 100, |alpha|, |beta| <= 10: no finite minimum
  that way (an exponent of 10 means a loss term that changes by e^10 per e-fold of N).
- STALLED: no step lowers f even with very strong damping, and the point is not certified.
- MAX_ITER: still moving after `max_iter` iterations.
- INVALID: the objective is not finite at the start.

numpy only: `chinchilla fit` needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONVERGED, VANISHED, DIVERGED, STALLED, MAX_ITER, INVALID = range(6)
STATUS_NAMES = ("converged", "vanished_term", "diverged", "stalled", "max_iter", "invalid")
BOX = np.array([100.0, 100.0, 100.0, 10.0, 10.0])  # |theta_j| beyond this: diverging
VANISH = 1e-12  # a term below this share of the prediction at every point has vanished
_LOWER = np.tril_indices(5, -1)
# coordinates of each term: A term (a, alpha), B term (b, beta), E term (e)
_TERM_COORDS = ((0, 3), (1, 4), (2,))


@dataclass
class Evaluation:
    """Objective pieces for P problems at once."""

    f: np.ndarray  # (P,)
    g: np.ndarray | None = None  # (P, 5)
    H: np.ndarray | None = None  # (P, 5, 5)
    share: np.ndarray | None = None  # (P, 3) largest share of each term over the points

    def rows(self, idx) -> Evaluation:
        """The pieces of the problems `idx` (an index or mask over P)."""
        return Evaluation(f=self.f[idx], g=self.g[idx], H=self.H[idx], share=self.share[idx])


def evaluate(theta, x, y, z, w, delta, derivatives: bool = True) -> Evaluation:
    """`_evaluate_block` over blocks of about 32k points: blocks stay in cache and avoid
    the page faults of allocating many (P, n) temporaries, and are large enough that
    numpy's per-call overhead does not dominate."""
    rows = max(1, 32768 // max(1, len(x)))
    if theta.shape[0] <= rows:
        return _evaluate_block(theta, x, y, z, w, delta, derivatives)
    parts = [
        _evaluate_block(
            theta[i : i + rows],
            x,
            y,
            z_rows(z, slice(i, i + rows)),
            w[i : i + rows],
            delta,
            derivatives,
        )
        for i in range(0, theta.shape[0], rows)
    ]
    f = np.concatenate([p.f for p in parts])
    if not derivatives:
        return Evaluation(f=f)
    return Evaluation(
        f=f,
        g=np.concatenate([p.g for p in parts]),
        H=np.concatenate([p.H for p in parts]),
        share=np.concatenate([p.share for p in parts]),
    )


def z_rows(z: np.ndarray, rows) -> np.ndarray:
    """The log losses of problems `rows`: `z` is one (n,) vector shared by every problem,
    or (P, n), one per problem (a bootstrap that redraws the losses, the design fixed)."""
    return z if np.ndim(z) == 1 else z[rows]


def _evaluate_block(theta, x, y, z, w, delta, derivatives: bool) -> Evaluation:
    a, b, e, al, be = (theta[:, i : i + 1] for i in range(5))
    # exp(u) directly (2 exps and 1 log per point; transcendentals dominate the cost);
    # u is capped so exp cannot overflow, and an underflow to 0 gives f = inf.
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
        return Evaluation(f=f)
    inv = 1.0 / tot
    s1, s2, s3 = e1 * inv, e2 * inv, e3 * inv
    share = np.empty((theta.shape[0], 3))
    if w.size == 0 or w.min() > 0:  # every point counts (no bootstrap zeros)
        share[:, 0], share[:, 1], share[:, 2] = s1.max(1), s2.max(1), s3.max(1)
    else:
        used = w > 0
        share[:, 0] = np.where(used, s1, 0.0).max(axis=1)
        share[:, 1] = np.where(used, s2, 0.0).max(axis=1)
        share[:, 2] = np.where(used, s3, 0.0).max(axis=1)
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
    return Evaluation(f=f, g=g, H=H, share=share)


def cholesky_solve(A: np.ndarray, b: np.ndarray, pivot_tol: float = 1e-12):
    """Solve A x = b for a batch of small symmetric A (P, k, k) whose diagonal is about 1
    (pre-scaled). Returns (x, pd): pd is False where a pivot falls to `pivot_tol` or
    below (A not safely positive definite); x is meaningless there. One vectorised
    column at a time: no Python loop over problems and no exception for one bad matrix."""
    P, k = b.shape
    L = np.zeros_like(A)
    pd = np.ones(P, dtype=bool)
    for j in range(k):
        piv = A[:, j, j] - np.einsum("pk,pk->p", L[:, j, :j], L[:, j, :j])
        pd &= piv > pivot_tol
        d = np.sqrt(np.where(piv > pivot_tol, piv, 1.0))
        L[:, j, j] = d
        if j + 1 < k:
            rest = A[:, j + 1 :, j] - np.einsum("pik,pk->pi", L[:, j + 1 :, :j], L[:, j, :j])
            L[:, j + 1 :, j] = rest / d[:, None]
    u = np.empty_like(b)  # L u = b
    for j in range(k):
        u[:, j] = (b[:, j] - np.einsum("pk,pk->p", L[:, j, :j], u[:, :j])) / L[:, j, j]
    x = np.empty_like(b)  # L' x = u
    for j in range(k - 1, -1, -1):
        x[:, j] = (u[:, j] - np.einsum("pk,pk->p", L[:, j + 1 :, j], x[:, j + 1 :])) / L[:, j, j]
    return x, pd


@dataclass
class BatchResult:
    theta: np.ndarray  # (P, 5)
    f: np.ndarray  # (P,)
    status: np.ndarray  # (P,) one of CONVERGED ... INVALID
    iterations: np.ndarray  # (P,) iterations each problem took
    decrement: np.ndarray  # (P,) Newton decrement / f at the end (nan if not PD)
    frozen: np.ndarray  # (P, 5) coordinates held at the end (bound or vanished term)

    @property
    def certified(self) -> np.ndarray:
        return (self.status == CONVERGED) | (self.status == VANISHED)

    def counts(self) -> dict[str, int]:
        return {name: int((self.status == k).sum()) for k, name in enumerate(STATUS_NAMES)}


def _frozen(theta, ev: Evaluation, lo, hi) -> np.ndarray:
    """Coordinates held this iteration: at a bound with the gradient pushing out, or
    belonging to a vanished term. (P, 5) bool."""
    out = ((theta >= hi) & (ev.g < 0)) | ((theta <= lo) & (ev.g > 0))
    for k, coords in enumerate(_TERM_COORDS):
        gone = ev.share[:, k] < VANISH
        for j in coords:
            out[:, j] |= gone
    return out


def _scaled_system(ev: Evaluation, frozen):
    """The Hessian and gradient on the free coordinates, scaled to unit diagonal
    (frozen rows and columns become the identity, their gradient 0). Returns
    (A, g, scale) with H_free = diag(1/scale) A diag(1/scale)."""
    g = np.where(frozen, 0.0, ev.g)
    H = np.where(frozen[:, :, None] | frozen[:, None, :], 0.0, ev.H)
    diag = np.abs(np.diagonal(H, axis1=1, axis2=2))
    big = np.maximum(diag.max(axis=1, keepdims=True), 1e-300)
    scale = 1.0 / np.sqrt(np.maximum(diag, 1e-14 * big))
    scale = np.where(frozen, 1.0, scale)
    A = H * scale[:, :, None] * scale[:, None, :]
    idx = np.arange(5)
    A[:, idx, idx] = np.where(frozen, 1.0, A[:, idx, idx])
    return A, g * scale, scale


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Keep freed memory in glibc's heap. The optimiser allocates and frees many
    temporaries of 0.1-10 MB; by default glibc returns the top of the heap to the kernel
    after each free (and maps large blocks anew), and the page faults of getting it back
    cost as much system time as the arithmetic. A 64 MB top pad (glibc's M_TOP_PAD, as
    MALLOC_TOP_PAD_ sets) removes them. Elsewhere (not glibc) this does nothing."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
    except (OSError, AttributeError):
        pass


def minimize_batch(
    starts: np.ndarray,
    x,
    y,
    z,
    weights: np.ndarray | None = None,
    delta: float = 1e-3,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    max_iter: int = 1000,
    rtol: float = 1e-10,
    lam0: float = 1e-3,
) -> BatchResult:
    """Run every start (P, 5) to a certified stationary point or to a boundary.

    `weights` is (P, n) or (n,), or None for ones. `lower` / `upper` bound theta
    (5,), +-inf where free. Finished problems leave the batch, so late iterations
    are cheap. Statuses are listed in the module docstring.
    """
    _tune_malloc()
    with np.errstate(all="ignore"):  # overflowing trial steps are rejected by their f
        return _minimize(starts, x, y, z, weights, delta, lower, upper, max_iter, rtol, lam0)


def _minimize(starts, x, y, z, weights, delta, lower, upper, max_iter, rtol, lam0):
    theta = np.array(starts, dtype=np.float64, copy=True)
    P, n = theta.shape[0], len(x)
    W = np.ones((P, n)) if weights is None else np.broadcast_to(weights, (P, n)).astype(np.float64)
    lo = np.full(5, -np.inf) if lower is None else np.asarray(lower, float)
    hi = np.full(5, np.inf) if upper is None else np.asarray(upper, float)
    theta = np.clip(theta, lo, hi)
    # an exact fit has f -> 0 and a decrement of the same order: an absolute floor
    # equivalent to residuals of 1e-10 in log loss certifies it
    atol = 1e-20 * n
    status = np.full(P, MAX_ITER)
    iters = np.zeros(P, dtype=int)
    decrement = np.full(P, np.nan)
    frozen_out = np.zeros((P, 5), dtype=bool)

    ev = evaluate(theta, x, y, z, W, delta)
    f = ev.f.copy()
    bad = ~np.isfinite(f)
    status[bad] = INVALID
    active = np.nonzero(~bad)[0]
    cache = ev.rows(active)
    lam = np.full(active.size, lam0)
    nu = np.full(active.size, 2.0)

    for _ in range(max_iter):
        if active.size == 0:
            break
        th = theta[active]
        iters[active] += 1
        # 1. the free coordinates' scaled Newton system and the certificate
        frozen = _frozen(th, cache, lo, hi)
        A, gs, scale = _scaled_system(cache, frozen)
        newton, pd = cholesky_solve(A, -gs)
        dec = np.where(pd, -np.einsum("pk,pk->p", gs, newton), np.nan)
        done = pd & (dec <= 2.0 * (rtol * cache.f + atol))
        vanished = (cache.share < VANISH).any(axis=1)
        finish = np.nonzero(done)[0]
        status[active[finish]] = np.where(vanished[finish], VANISHED, CONVERGED)
        decrement[active] = dec / np.maximum(cache.f, 1e-300)
        frozen_out[active] = frozen
        # 2. a damped step for the rest: (A + lam I) u = -g, s = scale * u
        go = ~done
        eye = np.eye(5)
        u, ok = cholesky_solve(A[go] + lam[go, None, None] * eye, -gs[go])
        cand = np.clip(th[go] + scale[go] * np.where(ok[:, None], u, 0.0), lo, hi)
        new = evaluate(cand, x, y, z_rows(z, active[go]), W[active[go]], delta)
        pred = -(np.einsum("pk,pk->p", gs[go], u) + 0.5 * np.einsum("pk,pkl,pl->p", u, A[go], u))
        gain = (cache.f[go] - new.f) / np.where(pred > 0, pred, np.inf)
        accept = ok & np.isfinite(new.f) & (new.f < cache.f[go])
        # 3. Nielsen's damping update
        gi = np.nonzero(go)[0]
        acc, rej = gi[accept], gi[~accept]
        lam[acc] *= np.maximum(1.0 / 3.0, 1.0 - (2.0 * gain[accept] - 1.0) ** 3)
        lam[acc] = np.maximum(lam[acc], 1e-12)
        nu[acc] = 2.0
        lam[rej] *= nu[rej]
        nu[rej] *= 2.0
        th[acc] = cand[accept]
        for name in ("f", "g", "H", "share"):
            getattr(cache, name)[acc] = getattr(new, name)[accept]
        theta[active] = th
        f[active] = cache.f
        # 4. boundaries: left the box, or no step helps any more
        out = np.any(np.abs(th) > BOX, axis=1) & go
        status[active[out]] = DIVERGED
        stalled = go & ~out & (lam > 1e16)
        status[active[stalled]] = STALLED
        keep = go & ~out & ~stalled
        active, lam, nu = active[keep], lam[keep], nu[keep]
        cache = cache.rows(keep)
    return BatchResult(theta, f, status, iters, decrement, frozen_out)


def delta_path(delta: float, start: float = 1e-2) -> list[float]:
    """Huber deltas from `start` down to `delta` by factors of 10, then `delta` itself."""
    path = []
    d = start
    while d > delta * 1.0001:
        path.append(d)
        d /= 10.0
    return path + [delta]


def minimize_continuation(starts, x, y, z, *, delta: float, path_start: float = 1e-2, **kw):
    """`minimize_batch` at each delta of `delta_path`, every stage starting where the
    last ended. At small delta the objective is nearly an L1 fit whose curvature sits in
    a few points, and a direct run crawls along its kinks; each stage of the path starts
    where the quadratic model is good. Only the last stage's statuses count: every start
    ends certified (or otherwise) on the requested objective. Starts that left the box
    or were invalid at a stage keep that status."""
    theta = np.array(starts, dtype=np.float64, copy=True)
    res = None
    iters = np.zeros(len(theta), dtype=int)
    alive = np.ones(len(theta), dtype=bool)
    for d in delta_path(delta, path_start):
        sub = minimize_batch(theta[alive], x, y, z_rows(z, alive), delta=d, **_rows(kw, alive))
        iters[alive] += sub.iterations
        if res is None:
            res = sub
        else:
            for name in ("theta", "f", "status", "decrement", "frozen"):
                getattr(res, name)[alive] = getattr(sub, name)
        theta[alive] = sub.theta
        alive &= ~np.isin(res.status, (DIVERGED, INVALID))
    res.iterations = iters
    return res


def _rows(kw: dict, rows: np.ndarray) -> dict:
    """Keyword arguments with per-problem weights restricted to `rows`."""
    w = kw.get("weights")
    if w is None or np.ndim(w) == 1:
        return kw
    return kw | {"weights": np.asarray(w)[rows]}
