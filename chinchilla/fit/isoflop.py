"""Approach 2: IsoFLOP profiles (Hoffmann et al. 2022, section 3.2, Figure 3).

For each budget, a parabola of loss in log10 N; its vertex is that budget's optimal
N. Power laws N_opt = k_N C^a and D_opt = k_D C^b are then fitted through the minima.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np


class NotEnoughData(ValueError):
    """The data cannot support this approach; the message says why."""


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * C^exponent, fitted by least squares in log10-log10."""

    exponent: float
    coefficient: float

    def __call__(self, flops):
        return self.coefficient * np.power(flops, self.exponent)

    def inverse(self, y):
        """The C at which this law gives y."""
        return np.power(np.asarray(y, float) / self.coefficient, 1.0 / self.exponent)


def fit_power_law(flops: np.ndarray, y: np.ndarray) -> PowerLaw:
    slope, intercept = np.polyfit(np.log10(flops), np.log10(y), 1)
    if not -300 < intercept < 300:
        raise NotEnoughData(f"degenerate power law (exponent {slope:.3g})")
    return PowerLaw(exponent=float(slope), coefficient=float(10**intercept))


@dataclass
class Parabola:
    budget: float
    coef: tuple[float, float, float]  # loss = c2 x^2 + c1 x + c0, x = log10 N
    n_range: tuple[float, float]  # N sampled at this budget
    n_points: int
    n_opt: float  # N at the vertex (nan when the parabola opens downward)
    d_opt: float  # tokens at the vertex, from log D linear in log N at this budget
    loss_opt: float
    convex: bool
    inside: bool  # vertex within the sampled N range
    flops: float = float("nan")  # the fit's C of this budget (geometric mean of its 6ND)
    bracketed: bool = True  # the lowest-loss run is not the smallest or largest size
    index: np.ndarray | None = field(default=None, repr=False)  # rows the parabola used

    @property
    def usable(self) -> bool:
        return self.inside and self.bracketed

    def as_dict(self) -> dict:
        return {
            "budget": self.budget,
            "coef": list(self.coef),
            "n_min": self.n_range[0],
            "n_max": self.n_range[1],
            "n_points": self.n_points,
            "n_opt": self.n_opt,
            "d_opt": self.d_opt,
            "loss_opt": self.loss_opt,
            "convex": self.convex,
            "inside_range": self.inside,
            "flops": self.flops,
            "bracketed": self.bracketed,
        }


class AllocationLaws:
    """Exponents of N_opt = k_N C^a and D_opt = k_D C^b from `n_law` and `d_law`."""

    n_law: PowerLaw
    d_law: PowerLaw

    @property
    def a(self) -> float:
        return self.n_law.exponent

    @property
    def b(self) -> float:
        return self.d_law.exponent

    def allocate(self, flops):
        """(N_opt, D_opt) at compute C = `flops` (arrays broadcast), from the two laws."""
        return self.n_law(flops), self.d_law(flops)


# The rule for which points enter a budget's parabola (stated in README and fit.json).
NEAR_MINIMUM = 7  # the sizes nearest (in log N) to the budget's lowest-loss run
MIN_SIZES = 4  # a parabola through 3 points has no residual degree of freedom
RULE = (
    f"per budget, a parabola of loss in log10 N through the {NEAR_MINIMUM} sizes nearest "
    f"(in log N) to its lowest-loss run (at least {MIN_SIZES} sizes); budgets whose "
    "lowest-loss run is its smallest or largest size (minimum not bracketed), whose vertex "
    "lies outside the sizes used, or whose parabola opens downward, are dropped; power "
    "laws through the remaining vertices at C = geometric mean of the budget's 6ND"
)


@dataclass
class IsoFlopFit(AllocationLaws):
    parabolas: list[Parabola]
    n_law: PowerLaw
    d_law: PowerLaw
    used: list[float]  # budgets whose minima entered the power laws
    notes: list[str] = field(default_factory=list)
    rule: str = RULE


def near_minimum(n: np.ndarray, loss: np.ndarray, k: int = NEAR_MINIMUM) -> np.ndarray:
    """Indices of every point at the k distinct sizes nearest in log N to the lowest-loss
    point (repeats of a size all count, as one size). Points far from the minimum
    (several nats above it) bend a parabola fitted through every size and bias its
    vertex; near the minimum the profile is close to a parabola. Counting sizes, not
    rows, keeps a size's repeats (or a table's duplicated rows) from crowding the
    others out of the parabola."""
    x = np.log(n)
    best = x[int(np.argmin(loss))]
    sizes = np.unique(x)
    nearest = sizes[np.argsort(np.abs(sizes - best), kind="stable")[:k]]
    return np.nonzero(np.isin(x, nearest))[0]


def fit_parabola(budget: float, n: np.ndarray, d: np.ndarray | None, loss: np.ndarray) -> Parabola:
    """Parabola of loss in log10 N; `d` (tokens) only gives d_opt (nan without it)."""
    x = np.log10(n)
    with warnings.catch_warnings():  # resamples repeat sizes; the rank is checked by callers
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        c2, c1, c0 = np.polyfit(x, loss, 2)
        if d is not None:
            slope, icpt = np.polyfit(x, np.log10(d), 1)
    convex = c2 > 0
    lo, hi = float(n.min()), float(n.max())
    if convex:
        xv = -c1 / (2 * c2)
        n_opt = 10**xv
        loss_opt = c0 - c1 * c1 / (4 * c2)
        d_opt = float("nan")
        if d is not None:
            d_opt = 10 ** (icpt + slope * xv)
    else:
        n_opt = d_opt = loss_opt = float("nan")
    return Parabola(
        budget=float(budget),
        coef=(float(c2), float(c1), float(c0)),
        n_range=(lo, hi),
        n_points=len(n),
        n_opt=float(n_opt),
        d_opt=float(d_opt),
        loss_opt=float(loss_opt),
        convex=bool(convex),
        inside=bool(convex and lo <= n_opt <= hi),
    )


def profile_vertex(
    n: np.ndarray, loss: np.ndarray, d: np.ndarray | None = None, min_sizes: int = 3
) -> Parabola | None:
    """One IsoFLOP profile's minimum as Approach 2 reads it: the near-minimum parabola,
    when the profile has `min_sizes` distinct sizes, its lowest loss is at an interior
    size (bracketed) and the vertex lies inside the sizes used; else None."""
    best = int(np.argmin(loss))
    if len(np.unique(n)) < min_sizes or not n.min() < n[best] < n.max():
        return None
    near = near_minimum(n, loss)
    p = fit_parabola(0.0, n[near], None if d is None else d[near], loss[near])
    return p if p.inside else None


def fit_isoflop(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    budgets: np.ndarray,
    flops: np.ndarray | None = None,
    min_budgets: int = 3,
) -> IsoFlopFit:
    """Parabolas near each budget's minimum (`RULE`), then power laws through their
    vertices. `budgets` labels the IsoFLOP groups; `flops` is the fit's C per run (6ND
    when not given), whose geometric mean per group is the C of its minimum. Every
    dropped budget is noted; fewer than `min_budgets` usable ones raise NotEnoughData."""
    flops = 6.0 * n * d if flops is None else flops
    parabolas, notes, c_of = [], [], {}
    for c in np.unique(budgets):
        sel = np.nonzero(budgets == c)[0]
        sizes = len(np.unique(n[sel]))
        if sizes < MIN_SIZES:
            notes.append(f"budget {c:.3g}: {sizes} size(s), a parabola needs {MIN_SIZES}; dropped")
            continue
        near = sel[near_minimum(n[sel], loss[sel])]
        p = fit_parabola(c, n[near], d[near], loss[near])
        p.index = near
        parabolas.append(p)
        p.flops = c_of[p.budget] = float(np.exp(np.log(flops[sel]).mean()))
        lowest = n[sel][np.argmin(loss[sel])]
        p.bracketed = bool(n[sel].min() < lowest < n[sel].max())
        if not p.bracketed:
            edge = "smallest" if lowest == n[sel].min() else "largest"
            notes.append(
                f"budget {c:.3g}: lowest loss at its {edge} size {lowest:.3g}: the minimum "
                "is not bracketed; dropped (extend the grid there)"
            )
        elif not p.convex:
            notes.append(f"budget {c:.3g}: the profile opens downward near its minimum; dropped")
        elif not p.inside:
            notes.append(
                f"budget {c:.3g}: minimum at N = {p.n_opt:.3g}, outside the sampled sizes "
                f"{p.n_range[0]:.3g}-{p.n_range[1]:.3g}; dropped (extend the grid there)"
            )
    use = [p for p in parabolas if p.usable]
    if len(use) < min_budgets:
        raise NotEnoughData(
            f"{len(use)} budget(s) with a bracketed minimum inside their sampled sizes; IsoFLOP "
            f"profiles need {min_budgets}" + (" (" + "; ".join(notes) + ")" if notes else "")
        )
    c = np.array([c_of[p.budget] for p in use])
    return IsoFlopFit(
        parabolas=parabolas,
        n_law=fit_power_law(c, np.array([p.n_opt for p in use])),
        d_law=fit_power_law(c, np.array([p.d_opt for p in use])),
        used=[p.budget for p in use],
        notes=notes,
    )
