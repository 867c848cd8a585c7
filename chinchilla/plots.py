"""Figures of the fit. Each function only draws on an Axes and returns it; the CLI
decides where files go. `matplotlib.figure.Figure` is used (no pyplot state).

- `plot_envelope`: training curves and their envelope (paper Fig. 2, left)
- `plot_isoflop`: IsoFLOP parabolas (Fig. 3, left)
- `plot_contours`: contours of the fitted L(N, D) with the efficient frontier (Fig. 4)
- `plot_frontier`: N_opt and D_opt against C for every approach, with intervals (Fig. 1)
- `plot_residuals`: residuals of the parametric fit
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from chinchilla.fit.results import FitReport
from chinchilla.predict import allocate, approach_params

COLORS = {1: "#1f77b4", 2: "#d62728", 3: "#2ca02c"}
NAMES = {1: "Approach 1 (envelope)", 2: "Approach 2 (IsoFLOP)", 3: "Approach 3 (parametric)"}


def _axes(ax: Axes | None, size=(5.2, 4.0)) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=size, layout="constrained").add_subplot()


def _n_label(rep: FitReport) -> str:
    conv = rep.results.n_convention
    return {"total": "parameters N (total)", "nonembedding": "parameters N (non-embedding)"}.get(
        conv, "parameters N"
    )


def _c_label(rep: FitReport) -> str:
    """The fit's one compute convention (`chinchilla.fit.data.fit_compute`)."""
    n = {"total": "N total", "nonembedding": "N non-embedding"}.get(rep.results.n_convention, "N")
    return f"training compute C = 6ND ({n}), FLOPs"


def _log_x(ax: Axes) -> None:
    """Log x axis ticked at 1, 2 and 5 per decade with compact labels (2k, 5k, 10k): a
    profile spans about one decade, where decade-only labels would leave one tick."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from chinchilla.console import si

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v, 2)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_c_axis(ax: Axes, values) -> None:
    """The compute axis of every figure: log scale, labels 10^k at decades (and, over
    less than two decades, at 2 and 5 times them), minor ticks unlabelled, so labels
    never collide and read alike across figures."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    span = np.log10(v.max() / v.min()) if len(v) else 3.0
    ax.set_xscale("log")
    subs = (1.0, 2.0, 5.0) if span < 2 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(LogFormatterSciNotation(base=10, labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _loss_limits(ax: Axes, losses: np.ndarray) -> None:
    """Show the bulk of the losses (the 1st to the 90th percentile, a margin below); a
    note in the lower left corner (where a falling envelope leaves room) counts the
    points left above the top: none is hidden silently."""
    lo, hi = np.percentile(losses, 1), np.percentile(losses, 90)
    top = hi + 0.15 * (hi - lo)
    ax.set_ylim(lo - 0.05 * (hi - lo), top)
    above = int(np.sum(losses > top))
    if above:
        ax.text(
            0.01,
            0.01,
            f"{above} point(s) above the top, not shown",
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=7,
            color="0.35",
        )


def _norm_logn(values):
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=float(np.min(values)), vmax=float(np.max(values)) * 1.0001)


def plot_envelope(rep: FitReport, ax: Axes | None = None) -> Axes:
    from chinchilla.fit.envelope import FINISHED

    ax = _axes(ax)
    res, env, cv = rep.results, rep.approach1, rep.results.curves
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    norm = _norm_logn(res.n_params)
    if env.source == FINISHED:  # one line per size through its finished horizons
        runs, flops, losses = np.arange(len(res)), res.flops, res.loss
        groups = [np.nonzero(res.n_params == s)[0] for s in np.unique(res.n_params)]
    else:
        runs, flops, losses = cv.run, cv.flops, cv.loss
        groups = [np.nonzero(cv.run == r)[0] for r in np.unique(cv.run)]
    for sel in groups:
        order = sel[np.argsort(flops[sel])]
        ax.plot(
            flops[order],
            losses[order],
            lw=0.8,
            alpha=0.7,
            marker="o" if env.source == FINISHED else None,
            ms=3,
            color=cmap(norm(res.n_params[runs[order[0]]])),
        )
    ax.plot(env.flops, env.loss, color="k", lw=1.8, label="envelope (min over sizes)")
    _log_c_axis(ax, flops)
    ax.set_xlabel(_c_label(rep))
    what = res.loss_name if env.source == FINISHED else "training loss (training curves)"
    ax.set_ylabel(f"{what}, nats/token")
    _loss_limits(ax, np.asarray(losses, float))
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    ax.figure.colorbar(sm, ax=ax, label=_n_label(rep))
    ax.set_title(
        "Envelope of "
        + ("finished runs" if env.source == FINISHED else "training curves")
        + " (cf. Fig. 2)"
    )
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_isoflop(rep: FitReport, ax: Axes | None = None) -> Axes:
    import matplotlib

    ax = _axes(ax)
    res, fit = rep.results, rep.approach2
    budgets = np.unique(rep.budgets)
    cmap = matplotlib.colormaps["plasma"]
    norm = _norm_logn(budgets)
    psd = res.prediction_sd if res.prediction_sd is not None else np.zeros(len(res))
    for p in fit.parabolas:
        sel = rep.budgets == p.budget
        color = cmap(norm(p.budget) * 0.85)
        meas, pred = sel & (psd == 0), sel & (psd > 0)
        ax.scatter(res.n_params[meas], res.loss[meas], s=16, color=color, zorder=3)
        if pred.any():  # predicted, not trained: open, with ± their prediction sd
            ax.errorbar(res.n_params[pred], res.loss[pred], yerr=psd[pred], fmt="o", ms=4.5,
                        mfc="white", mec=color, ecolor=color, elinewidth=0.8, zorder=3)  # fmt: skip
        xs = np.linspace(np.log10(p.n_range[0]) - 0.1, np.log10(p.n_range[1]) + 0.1, 100)
        c2, c1, c0 = p.coef
        ax.plot(10**xs, c2 * xs**2 + c1 * xs + c0, color=color, lw=1.2, label=f"{p.budget:.2g}")
        if p.convex:
            ax.scatter(
                [p.n_opt],
                [p.loss_opt],
                marker="*" if p.usable else "X",
                s=70,
                color=color,
                edgecolor="k",
                linewidths=0.5,
                zorder=4,
            )
    _log_x(ax)
    ax.set_xlabel(_n_label(rep))
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title(
        "IsoFLOP profiles (cf. Fig. 3): ★ minimum used, X dropped (see fit.json)"
        + ("\nopen: predicted by the curve law, ± its prediction sd" if (psd > 0).any() else ""),
        fontsize=9,
    )
    ax.legend(title="budget C (FLOPs)", fontsize=7, title_fontsize=8, loc="upper right")
    return ax


def plot_contours(rep: FitReport, ax: Axes | None = None) -> Axes:
    ax = _axes(ax)
    res, f = rep.results, rep.approach3
    c_lo, c_hi = np.log10(res.flops.min()) - 1, np.log10(res.flops.max()) + 2
    n_lo, n_hi = np.log10(res.n_params.min()) - 0.7, np.log10(res.n_params.max()) + 1.2
    C, N = np.meshgrid(np.logspace(c_lo, c_hi, 200), np.logspace(n_lo, n_hi, 200))
    L = f.loss(N, C / (6 * N))
    # the colours span the fitted surface where the runs are (a margin around them), not
    # the extrapolated corners, whose reducible loss runs to orders of magnitude more
    at_runs = np.log(np.maximum(f.loss(res.n_params, res.n_tokens) - f.E, 1e-12))
    lo, hi = at_runs.min(), at_runs.max()
    lo, hi = lo - 0.5 * (hi - lo) - 0.1, hi + 0.25 * (hi - lo) + 0.1
    cs = ax.contourf(
        C,
        N,
        np.log(np.maximum(L - f.E, 1e-12)),
        levels=np.linspace(lo, hi, 31),
        cmap="YlGnBu_r",
        alpha=0.9,
        extend="both",
    )
    levels = np.exp(np.linspace(lo, hi, 12)) + f.E
    ax.contour(C, N, L, levels=levels, colors="k", linewidths=0.4, alpha=0.5)
    from matplotlib.ticker import MaxNLocator

    bar = ax.figure.colorbar(cs, ax=ax, label="log(L − E) of the fit (arrows: beyond)")
    ticks = MaxNLocator(7).tick_values(lo, hi)
    bar.set_ticks(ticks[(ticks >= lo) & (ticks <= hi)])
    cc = np.logspace(c_lo, c_hi, 50)
    _, n_opt, _ = allocate(
        3, {"E": f.E, "A": f.A, "B": f.B, "alpha": f.alpha, "beta": f.beta}, flops=cc
    )
    ax.plot(cc, n_opt, color="#2ca02c", lw=2, label="efficient frontier")
    ax.scatter(res.flops, res.n_params, s=8, color="k", label="runs")
    _log_c_axis(ax, cc)
    ax.set_yscale("log")
    ax.set_xlim(cc[0], cc[-1])
    ax.set_ylim(10**n_lo, 10**n_hi)
    ax.set_xlabel(_c_label(rep))
    ax.set_ylabel(_n_label(rep))
    ax.set_title(
        f"Parametric fit L(N, D) (cf. Fig. 4): E={f.E:.3g}, α={f.alpha:.3f}, β={f.beta:.3f}",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_frontier(rep: FitReport, ax: Axes | None = None, which: str = "n") -> Axes:
    """N_opt (which='n') or D_opt ('d') against C, every approach, extrapolated 1000x,
    with the 80% bootstrap band."""
    ax = _axes(ax)
    res = rep.results
    cc = np.logspace(np.log10(res.flops.min()) - 0.5, np.log10(res.flops.max()) + 3, 80)
    col = 1 if which == "n" else 2
    for k, fit in ((1, rep.approach1), (2, rep.approach2), (3, rep.approach3)):
        if fit is None:
            continue
        point, reps = approach_params(rep, k)
        with np.errstate(all="ignore"):
            y = allocate(k, point, flops=cc)[col]
        expo = fit.a if which == "n" else fit.b
        ax.plot(cc, y, color=COLORS[k], lw=1.8, label=f"{NAMES[k]}: exponent {expo:.3f}")
        if reps:
            with np.errstate(all="ignore"):
                ys = np.stack(
                    [
                        allocate(k, {n: v[i] for n, v in reps.items()}, flops=cc)[col]
                        for i in range(len(next(iter(reps.values()))))
                    ]
                )
            ok = np.all(np.isfinite(ys), axis=1)
            if ok.sum() > 2:
                lo, hi = np.percentile(ys[ok], [10, 90], axis=0)
                ax.fill_between(cc, lo, hi, color=COLORS[k], alpha=0.15, lw=0)
    if rep.approach2 is not None and which == "n":
        pts = [(p.flops, p.n_opt) for p in rep.approach2.parabolas if p.usable]
        if pts:
            ax.scatter(
                *zip(*pts, strict=True), color=COLORS[2], s=18, zorder=3, label="IsoFLOP minima"
            )
    if rep.approach2 is not None and which == "d":
        pts = [(p.flops, p.d_opt) for p in rep.approach2.parabolas if p.usable]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=COLORS[2], s=18, zorder=3)
    ax.axvspan(res.flops.max(), cc[-1], color="0.9", zorder=0, label="extrapolation")
    _log_c_axis(ax, cc)
    ax.set_yscale("log")
    ax.set_xlabel(_c_label(rep))
    ax.set_ylabel("optimal " + (_n_label(rep) if which == "n" else "training tokens D"))
    ax.set_title(
        ("N_opt" if which == "n" else "D_opt") + " against compute (cf. Fig. 1); "
        "bands: 80% bootstrap",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_residuals(rep: FitReport, ax: Axes | None = None) -> Axes:
    ax = _axes(ax)
    res, f = rep.results, rep.approach3
    resid = np.log(f.loss(res.n_params, res.n_tokens)) - np.log(res.loss)
    sc = ax.scatter(res.flops, resid, c=np.log10(res.n_params), cmap="viridis", s=14)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhspan(-f.delta, f.delta, color="0.85", label=f"Huber δ = {f.delta:g}")
    _log_c_axis(ax, res.flops)
    ax.set_xlabel(_c_label(rep))
    ax.set_ylabel(f"log L_fit − log L_observed ({res.loss_name})")
    ax.figure.colorbar(sc, ax=ax, label="log10 " + _n_label(rep))
    ax.set_title(f"Parametric fit residuals (RMS {np.sqrt(np.mean(resid**2)):.4f})", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def save_figures(rep: FitReport, out: Path) -> list[Path]:
    """Write every figure the report supports as PNG (150 dpi); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    if rep.approach1 is not None:
        jobs.append(("fit_envelope.png", lambda ax: plot_envelope(rep, ax), (5.6, 4.2)))
    if rep.approach2 is not None:
        jobs.append(("fit_isoflop.png", lambda ax: plot_isoflop(rep, ax), (5.6, 4.2)))
    if rep.approach3 is not None:
        jobs.append(("fit_contours.png", lambda ax: plot_contours(rep, ax), (5.8, 4.4)))
        jobs.append(("fit_residuals.png", lambda ax: plot_residuals(rep, ax), (5.6, 4.0)))
    written = []
    for name, draw, size in jobs:
        fig = Figure(figsize=size, layout="constrained")
        draw(fig.add_subplot())
        written.append(_save(fig, out / name))
    if any(f is not None for f in (rep.approach1, rep.approach2, rep.approach3)):
        fig = Figure(figsize=(11, 4.4), layout="constrained")
        ax_n, ax_d = fig.subplots(1, 2)
        plot_frontier(rep, ax_n, "n")
        plot_frontier(rep, ax_d, "d")
        written.append(_save(fig, out / "fit_frontier.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    from chinchilla.files import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))


def plot_backtest(rep: FitReport, bt: dict, ax: Axes | None = None) -> Axes:
    """N_opt against C of each approach fitted without the held-out budgets, and the
    held-out budgets' observed optima."""
    ax = _axes(ax)
    res = rep.results
    top = max(r["flops"] for r in bt["rows"])
    cc = np.logspace(np.log10(res.flops.min()) - 0.3, np.log10(top) + 0.3, 60)
    for k, fit in ((1, rep.approach1), (2, rep.approach2), (3, rep.approach3)):
        if fit is None:
            continue
        point, _ = approach_params(rep, k)
        with np.errstate(all="ignore"):
            ax.plot(cc, allocate(k, point, flops=cc)[1], color=COLORS[k], lw=1.6, label=NAMES[k])
    if rep.approach2 is not None:
        pts = [(p.flops, p.n_opt) for p in rep.approach2.parabolas if p.usable]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color="0.4", s=16, label="fitted budgets' minima")
    seen = {(r["flops"], r["n_opt_observed"]) for r in bt["rows"]}
    ax.scatter(*zip(*seen, strict=True), marker="*", s=120, color="k", label="held out (observed)")
    ax.axvspan(float(np.max(res.flops)), cc[-1], color="0.92", zorder=0)
    _log_c_axis(ax, cc)
    ax.set_yscale("log")
    ax.set_xlabel(_c_label(rep))
    ax.set_ylabel("optimal " + _n_label(rep))
    ax.set_title("Backtest: fitted without the largest budget(s)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def save_backtest(rep: FitReport, bt: dict, path: Path) -> Path:
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    plot_backtest(rep, bt, fig.add_subplot())
    return _save(fig, path)


def plot_verify(doc: dict, ax: Axes | None = None) -> Axes:
    """The new budget's IsoFLOP profile (the runs `chinchilla verify` trained) with each
    approach's predicted N_opt (80% band) and predicted minimum loss."""
    ax = _axes(ax)
    n = np.array([r["n_params"] for r in doc["runs"]])
    loss = np.array([r["loss"] for r in doc["runs"]])
    ax.scatter(n, loss, color="k", zorder=4, label="trained at the new budget")
    if len(n) >= 3:
        c2, c1, c0 = np.polyfit(np.log10(n), loss, 2)
        xs = np.linspace(np.log10(n.min()) - 0.15, np.log10(n.max()) + 0.15, 100)
        ax.plot(10**xs, c2 * xs**2 + c1 * xs + c0, color="k", lw=1, alpha=0.6)
    for a in doc["approaches"]:
        k = a["approach"]
        ax.axvline(a["n_opt_predicted"], color=COLORS[k], lw=1.5, label=f"{NAMES[k]}: N_opt")
        if a["n_opt_ci"]:
            ax.axvspan(*a["n_opt_ci"], color=COLORS[k], alpha=0.12, lw=0)
        if a["loss_predicted"] is not None:
            ax.axhline(a["loss_predicted"], color=COLORS[k], lw=0.8, ls="--")
    m = doc["measured"]
    ax.scatter(
        [m["n_opt"]],
        [m["loss_min"]],
        marker="*",
        s=120,
        color="gold",
        edgecolor="k",
        zorder=5,
        label="measured optimum",
    )
    _log_x(ax)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title(
        f"Verification at C = {doc['budget']:.3g} ({doc['extrapolation']:.3g}x the grid); "
        "dashed: predicted loss",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper right")
    return ax


def save_verify(doc: dict, path: Path) -> Path:
    fig = Figure(figsize=(5.8, 4.3), layout="constrained")
    plot_verify(doc, fig.add_subplot())
    return _save(fig, path)


def save_compare(doc: dict, path: Path) -> Path:
    """Kaplan et al. 2020, Figure 7 in form: loss against N per sweep (each size's lowest
    final loss), and loss against context position at a matched N."""
    from chinchilla.console import si

    fig = Figure(figsize=(10.5, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    n_name = "non-embedding" if doc["n_convention"] == "nonembedding" else "total"
    for i, s in enumerate(doc["sweeps"]):
        color = f"C{i}"
        n, loss = np.array(s["frontier"]).T
        a = s["laws"][3]["a"]
        label = s["label"] + (f", a = {a:.2f} (App. 3)" if a is not None else "")
        left.plot(n, loss, "o-", color=color, label=label)
        if s["irreducible_loss"] is not None:
            left.axhline(s["irreducible_loss"], color=color, ls=":", lw=0.8)
        pos = s["position_loss"]
        if pos is not None:
            t = np.arange(1, len(pos["by_position"]) + 1)
            right.plot(
                t, pos["by_position"], color=color, label=f"{s['label']}, N = {si(pos['n'])}"
            )
    _log_x(left)
    left.set_xlabel(f"parameters N ({n_name})")
    left.set_ylabel("lowest final loss of each size, nats/token")
    left.set_title("loss against N (dotted: the data's irreducible loss)")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("token position in the context")
    right.set_ylabel("loss at that position, nats/token")
    right.set_title("loss against position, at a matched N")
    if any(s["position_loss"] for s in doc["sweeps"]):
        right.legend(fontsize=8)
    else:
        right.text(
            0.5, 0.5, "no run recorded train.position_loss", ha="center", transform=right.transAxes
        )
    return _save(fig, path)


def save_emergence(table, doc: dict, path: Path) -> Path:
    """Schaeffer et al. 2023 in form: the same runs under a sharp metric (exact match or
    accuracy, every k) and a smooth one (per-token log-probability) against compute,
    frontier runs joined, every run a faint dot; and the requested metric against loss
    with its fit."""
    from matplotlib.cm import viridis

    from chinchilla.fit.metrics import frontier, is_sharp, related, sigmoid_curve

    name = doc["metric"]
    sharp, smooth = related(table, name)
    fig = Figure(figsize=(14.5, 4.3), layout="constrained")
    axes = fig.subplots(1, 3)
    df = table.runs
    front = frontier(df)
    c_label = f"training compute C = 6ND (N {table.n_convention}), FLOPs"
    for ax, names, ylabel in (
        (axes[0], sharp, "sharp: exact match / accuracy"),
        (axes[1], smooth, "smooth: mean log-probability per answer token, nats"),
    ):
        for i, m in enumerate(names):
            color = viridis(i / max(1, len(names) - 1))
            label = m.split("/", 1)[1]
            ax.plot(df["C"], df[m], ".", color=color, alpha=0.25)
            ax.plot(front["C"], front[m], "o-", color=color, label=label)
            ceiling = table.ceilings.get(m)
            if ceiling is not None and ax is axes[1]:
                ax.axhline(ceiling, color=color, ls=":", lw=0.7)
        _log_c_axis(ax, df["C"])
        ax.set_xlabel(c_label)
        ax.set_ylabel(ylabel)
        if names:
            ax.legend(fontsize=7, ncol=2)
    axes[0].set_title("sharp metric (lines: lowest-loss run per budget)", fontsize=10)
    axes[1].set_title("smooth metric, same runs (dotted: Bayes-optimal)", fontsize=10)
    ax = axes[2]
    ax.plot(df["loss"], df[name], "o", color="#555555", label="every run")
    grid = np.linspace(df["loss"].min(), df["loss"].max(), 200)
    p = {k: v["value"] for k, v in doc["params"].items()}
    if is_sharp(name):
        ax.plot(
            grid, sigmoid_curve(grid, p["loss_mid"], p["loss_width"], doc["chance"]), "-", c="C3"
        )
        fit = "sigmoid of loss"
    else:
        ax.plot(grid, p["loss_intercept"] + p["loss_slope"] * grid, "-", c="C3")
        fit = "straight line in loss"
    ax.set_xlabel("final validation loss, nats/token")
    ax.set_ylabel(name)
    ax.set_title(f"{name.split('/', 1)[1]} against loss ({fit})", fontsize=10)
    ax.invert_xaxis()
    return _save(fig, path)


# ----------------------------------------------------------------------------- tuning


def plot_tune_lr(rep, ax: Axes | None = None) -> Axes:
    """Final loss against peak learning rate, one colour per budget: the runs at the
    batch nearest each budget's fitted optimum (filled; other batches faint), the fitted
    surface along lr at the optimal batch over the learning rates it was fitted to, the
    optimum (star) and the near-optimal lr band (shaded); diverged runs as x at the top,
    runs above the axes as ^."""
    from chinchilla.fit.tune import surface

    ax = _axes(ax, (6.4, 4.6))
    t = rep.table
    cmap = _budget_colours(rep)
    tops = []
    for f in rep.budgets:
        if not f.best:
            continue
        sel = _same_group(t.flops, f.flops)
        if f.n_params is not None:
            sel &= np.isclose(t.n_params, f.n_params)
        lr, batch, loss = t.lr[sel], t.batch_tokens[sel], t.loss[sel]
        b_star = f.batch_opt or f.best["batch_tokens"]
        near_b = batch == batch[np.argmin(np.abs(np.log(batch / b_star)))]
        c = cmap(f.flops)
        ok = np.isfinite(loss)
        ax.plot(lr[ok & ~near_b], loss[ok & ~near_b], ".", color=c, alpha=0.25, ms=4)
        ax.plot(lr[ok & near_b], loss[ok & near_b], "o", color=c, ms=4)
        tops.append(loss[ok & near_b])
        if f.params is not None and f.fitted["lr"]:
            fitted = np.log(lr[f.window])  # drawn over the runs it was fitted to
            xs = np.linspace(fitted.min(), fitted.max(), 200)
            P = f.params.copy()
            ys = surface(P[None, :], xs, np.full_like(xs, P[2]))[0]
            ax.plot(np.exp(xs), ys, "-", color=c, lw=1)
            band = f.near.get("lr_band")
            if band:
                ax.axvspan(band[0], band[1], color=c, alpha=0.08, lw=0)
            ax.plot([f.lr_opt], [f.loss_opt], "*", color=c, ms=11, mec="k", mew=0.5)
        label = f"C = {f.flops:.2g}" + ("" if f.n_params is None else f", N = {f.n_params:.3g}")
        if f.edge.get("lr"):
            label += f" (lr at grid edge: {f.edge['lr']})"
        ax.plot([], [], "o-", color=c, ms=4, label=label)
    low = min(float(np.min(v)) for v in tops if len(v)) if tops else 0.0
    # the axes hold every budget's basin: the 60% lowest plotted runs of each budget set
    # the top, so that a blown-up learning rate does not flatten the others
    high = max(float(np.percentile(v, 60)) for v in tops if len(v)) if tops else 1.0
    span = max(high - low, 1e-6)
    top = high + 0.6 * span
    ax.set_ylim(low - 0.08 * span, top)
    for f in rep.budgets:
        sel = _same_group(t.flops, f.flops)
        c = cmap(f.flops)
        above = sel & np.isfinite(t.loss) & (t.loss > top)
        ax.plot(t.lr[above], np.full(above.sum(), top), "^", color=c, ms=5, clip_on=False)
        dead = sel & ~np.isfinite(t.loss)
        ax.plot(t.lr[dead], np.full(dead.sum(), top), "x", color=c, ms=6, clip_on=False)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (AdamW)")
    ax.set_ylabel("final validation loss, nats/token")
    ax.set_title(
        f"loss against lr at each budget's best batch (band: within {rep.near:.2%})", fontsize=9
    )
    ax.legend(fontsize=7)
    return ax


def _same_group(flops: np.ndarray, value: float) -> np.ndarray:
    """Runs whose budget is within 10% (in log, the tune's grouping gap) of `value`."""
    return np.abs(np.log10(flops / value)) < 0.1


def _budget_colours(rep):
    from matplotlib import colormaps

    logs = np.log([f.flops for f in rep.budgets])
    lo, hi = logs.min(), max(logs.max(), logs.min() + 1e-9)
    cmap = colormaps["viridis"]
    return lambda c: cmap(0.85 * (np.log(c) - lo) / (hi - lo))


def plot_tune_law(rep, which: str, ax: Axes | None = None) -> Axes:
    """One law (which: "lr" or "batch") against C: each budget's optimum with its 80%
    bootstrap interval (open markers: left out, at the grid's edge), the fitted power
    law and its 80% band."""
    ax = _axes(ax)
    law = rep.lr if which == "lr" else rep.batch
    for f in rep.budgets:
        v = f.lr_opt if which == "lr" else f.batch_opt
        if v is None:
            continue
        iv = f.to_json()[f"{which}_interval"]
        yerr = None if iv is None else [[v - iv[0]], [iv[1] - v]]
        used = f.usable(which)
        ax.errorbar(
            [f.flops],
            [v],
            yerr=yerr,
            fmt="o",
            mfc="C0" if used else "white",
            color="C0",
            capsize=3,
        )
    if law is not None:
        xs = np.array([p[0] for p in law.points])
        grid = np.geomspace(xs.min() / 2, xs.max() * 2, 50)
        ax.plot(
            grid, law(grid), "-", color="C3", label=f"{law.coefficient:.3g} C^{law.exponent:.3f}"
        )
        band = law.band(grid)
        if band is not None:
            ax.fill_between(grid, *band, color="C3", alpha=0.15, lw=0, label="80% band")
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no law: fewer than two budgets\nwith an optimum inside the grid",
            ha="center",
            transform=ax.transAxes,
            fontsize=9,
        )
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    conv = {"6nd": "6ND", "chinchilla": "Chinchilla App. F"}.get(
        rep.table.flops_convention or "", "as given"
    )
    ax.set_xlabel(f"training compute C, FLOPs ({conv})")
    ax.set_ylabel("optimal peak learning rate" if which == "lr" else "optimal batch, tokens")
    ax.set_title(
        ("learning-rate" if which == "lr" else "batch")
        + " law (open: left out, at the grid's edge)",
        fontsize=9,
    )
    return ax


def save_tune(rep, out: Path) -> list[Path]:
    """tune_lr.png and tune_laws.png (150 dpi); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.6, 4.8), layout="constrained")
    plot_tune_lr(rep, fig.add_subplot())
    written = [_save(fig, out / "tune_lr.png")]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_tune_law(rep, "lr", left)
    plot_tune_law(rep, "batch", right)
    written.append(_save(fig, out / "tune_laws.png"))
    return written


def epoch_caps(d, u, most: int = 3) -> list[float]:
    """The caps of unique tokens with repeated runs, the `most` most populated, ascending."""
    d, u = np.asarray(d, float), np.asarray(u, float)
    reps = d > u * (1 + 1e-9)
    caps, counts = np.unique(u[reps] if reps.any() else u, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:most]
    return sorted(float(caps[i]) for i in order)


def plot_epochs(fit, n, d, u, loss, pool: float | None = None, ax: Axes | None = None) -> Axes:
    """Loss against epochs D / U for each model size of the runs repeating one cap of U
    unique tokens (default: the cap with the most repeated runs): the measured runs
    (filled), the same N and D on fresh tokens where the table has them (open), the
    fitted data-constrained law through them, and (dashed) the law with as many fresh
    tokens (Muennighoff et al. 2023, Fig. 3)."""
    from chinchilla.console import si

    ax = _axes(ax)
    n, d, u, loss = (np.asarray(v, float) for v in (n, d, u, loss))
    reps = d > u * (1 + 1e-9)
    pool = epoch_caps(d, u, 1)[0] if pool is None else pool
    at = np.isclose(u, pool, rtol=1e-9)
    fresh = ~reps & (d > pool * (1 + 1e-9))  # single-epoch runs longer than the cap
    sizes = np.unique(n[at & reps] if (at & reps).any() else n[at])
    cmap = __import__("matplotlib").colormaps["viridis"]
    base = [fit.base[k] for k in ("E", "A", "B", "alpha", "beta")]
    from chinchilla.fit.parametric import parametric_loss

    for i, size in enumerate(sizes):
        c = cmap(i / max(1, len(sizes) - 1))
        sel = at & (n == size)
        ep = d[sel] / u[sel]
        ax.scatter(ep, loss[sel], color=c, s=18, zorder=3, label=f"N = {si(size, 3)}")
        tw = fresh & (n == size) & (d <= d[sel].max() * (1 + 1e-9))
        if tw.any():
            ax.scatter(d[tw] / pool, loss[tw], facecolors="none", edgecolors=c, s=22, zorder=3)
        grid = np.geomspace(min(1.0, ep.min()), max(ep.max(), 2.0), 100)
        ax.plot(grid, fit.loss(size, grid * pool, pool), color=c, lw=1.2)
        ax.plot(grid, parametric_loss(size, grid * pool, *base), color=c, lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("epochs D / U (tokens trained on / unique tokens)")
    ax.set_ylabel("loss [nats/token]")
    ax.set_title(
        f"U = {si(pool, 3)} unique tokens, R*_D = {fit.rd_star:.3g}\n"
        "fitted law (solid), as many fresh tokens (dashed);\nruns: repeated (filled), "
        "fresh where measured (open)",
        fontsize=8,
    )
    ax.legend(fontsize=7, frameon=False)
    return ax


def epochs_figure(fit, n, d, u, loss) -> Figure:
    """One panel of `plot_epochs` per cap of unique tokens (at most three)."""
    caps = epoch_caps(d, u)
    fig = Figure(figsize=(5.2 * len(caps), 4.4), layout="constrained")
    axes = fig.subplots(1, len(caps), sharey=True, squeeze=False)[0]
    for ax, cap in zip(axes, caps, strict=True):
        plot_epochs(fit, n, d, u, loss, pool=cap, ax=ax)
    return fig


def plot_allocation(fit, unique: float, flops, ax: Axes | None = None) -> Axes:
    """The loss-minimising N against C, with and without the cap of `unique` tokens,
    and the loss each reaches."""
    ax = _axes(ax)
    flops = np.geomspace(min(flops), max(flops), 40)
    rows = [fit.allocate(float(c), unique) for c in flops]
    n_cap = np.array([r["n_opt"] for r in rows])
    n_inf = np.array([r["n_opt_unlimited"] for r in rows])
    ax.plot(flops, n_cap, color="#d62728", label=f"N_opt, U = {unique:.3g} unique tokens")
    ax.plot(flops, n_inf, color="#1f77b4", ls="--", label="N_opt, unlimited data")
    ax.set_yscale("log")
    _log_c_axis(ax, flops)
    ax.set_xlabel("training compute C = 6ND, FLOPs")
    ax.set_ylabel("parameters N")
    twin = ax.twinx()
    twin.plot(flops, [r["loss"] for r in rows], color="#d62728", lw=0.8, alpha=0.6)
    twin.plot(flops, [r["loss_unlimited"] for r in rows], color="#1f77b4", lw=0.8, ls=":")
    twin.set_ylabel("loss [nats/token] (thin lines)")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.set_title("allocation with and without the data cap", fontsize=9)
    return ax


def save_constrained(fit, n, d, u, loss, unique: float, flops, out: Path) -> list[Path]:
    """fit_epochs.png and fit_allocation.png of a data-constrained fit."""
    out.mkdir(parents=True, exist_ok=True)
    a = epochs_figure(fit, n, d, u, loss)
    b = plot_allocation(fit, unique, flops)
    return [_save(a, out / "fit_epochs.png"), _save(b.figure, out / "fit_allocation.png")]


def save_curves(fit, curves, doc: dict, path: Path) -> Path:
    """fit_curves.png: one panel per model size, each run's logged training loss (thin)
    and evaluations (dots), the fitted curve law along its schedule (dashed), and the
    hold-out prediction of the size's longest run (a cross)."""
    from chinchilla.console import si
    from chinchilla.fit.curves import by_size

    groups = by_size(curves)
    keys = sorted(groups)
    ncol = min(4, len(keys))
    nrow = -(-len(keys) // ncol)
    fig = Figure(figsize=(3.6 * ncol, 3.0 * nrow + 0.6), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    held = {h["run_id"]: h for h in doc["holdout"]}
    cmap = __import__("matplotlib").colormaps["plasma"]
    for ax, key in zip(axes.flat, keys, strict=False):
        runs = sorted(groups[key], key=lambda c: c.steps)
        law = fit.laws[key]
        top = max(c.steps for c in runs)
        for c in runs:
            col = cmap(0.85 * math.log(c.steps) / math.log(max(top, 2)))
            tok = c.n_tokens / c.steps  # tokens per step
            ax.plot(c.train_end * tok, c.train_loss, color=col, lw=0.6, alpha=0.45)
            ax.scatter(c.eval_step * tok, c.eval_loss, color=col, s=10, zorder=3)
            s = np.unique(np.geomspace(c.warmup + 1, c.steps, 120).astype(int))
            ax.plot(s * tok, law.loss_at(c.lrs, s), color=col, lw=1.1, ls="--")
            if c.run_id in held:
                ax.scatter(
                    [c.n_tokens], [held[c.run_id]["predicted"]], marker="x", color="k", s=36,
                    zorder=4,
                )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(__import__("matplotlib").ticker.NullFormatter())
        many = "runs" if len(runs) > 1 else "run"
        ax.set_title(f"N = {si(key[0], 3)}, lr {key[1]:.3g}, {len(runs)} {many}", fontsize=8)
        ax.tick_params(labelsize=7)
        lows = [float(np.min(c.eval_loss)) for c in runs if len(c.eval_loss)]
        lows += [held[c.run_id]["predicted"] for c in runs if c.run_id in held]
        highs = [float(np.percentile(c.train_loss, 90)) for c in runs if len(c.train_loss)]
        if lows and highs:
            lo, hi = min(lows), max(highs)
            ax.set_ylim(lo - 0.05 * (hi - lo) - 0.01, hi + 0.05 * (hi - lo))
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    fig.supxlabel("training tokens", fontsize=9)
    fig.supylabel("loss [nats/token]", fontsize=9)
    mae = doc.get("mae")
    shared = ", ".join(f"{k} {v:.3g}" for k, v in doc["shared"].items())
    fig.suptitle(
        f"{doc['law']} loss-curve law (dashed; {shared}) over logged "
        "training loss (lines) and evaluations (dots); x: the hold-out prediction of each "
        "size's longest run" + (f", mean abs. error {mae:.3f} nats" if mae is not None else ""),
        fontsize=9,
    )
    return _save(fig, path)
