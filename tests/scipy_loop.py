"""An independent reference for Approach 3: one scipy L-BFGS-B per start, on an objective
written plainly from the paper (scipy.special.logsumexp and huber), not on the package's
batched evaluation. Tests and `make bench` compare the package's fit against it."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp


def objective_and_gradient(theta, x, y, z, delta):
    """Summed Huber of LSE(a - alpha x, b - beta y, e) - z and its gradient."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * x, b - beta * y, np.full_like(x, e)])  # (3, n)
    lse = logsumexp(terms, axis=0)
    r = lse - z
    soft = np.exp(terms - lse)  # d lse / d term
    psi = np.clip(r, -delta, delta)  # d huber / d r
    grad = np.array(
        [
            (psi * soft[0]).sum(),
            (psi * soft[1]).sum(),
            (psi * soft[2]).sum(),
            -(psi * soft[0] * x).sum(),
            -(psi * soft[1] * y).sum(),
        ]
    )
    return float(huber(delta, r).sum()), grad


def loop_fit(n_params, n_tokens, loss, starts, delta=1e-3, bounds=None):
    """Best (theta, objective) over per-start L-BFGS-B runs (scipy defaults)."""
    x, y, z = np.log(n_params), np.log(n_tokens), np.log(loss)
    best_f, best_theta = np.inf, None
    for s in starts:
        s = np.asarray(s, float)
        if bounds is not None:
            s = np.clip(
                s,
                [-np.inf if lo is None else lo for lo, _ in bounds],
                [np.inf if hi is None else hi for _, hi in bounds],
            )
        with np.errstate(all="ignore"):
            r = minimize(
                objective_and_gradient,
                s,
                args=(x, y, z, delta),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
            )
        if np.isfinite(r.fun) and r.fun < best_f:
            best_f, best_theta = float(r.fun), r.x
    return best_theta, best_f
