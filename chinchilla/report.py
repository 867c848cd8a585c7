"""`chinchilla report RESULTS`: one self-contained HTML page of a sweep or a table.

Everything a reader needs in one file that opens with no network: the experiment (for a
sweep: its config's grid and model), the runs table, each approach's law with its
intervals, the compute-optimal predictions, and whatever the sweep directory holds from
later commands (verification, task metrics, loss curves, the data-constrained law).
Figures are PNGs inlined as data URIs; the page has no script and no external link
target for any resource. Tables scroll sideways on a narrow screen; figures scale to it.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from chinchilla import console

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:64rem;padding:1rem;line-height:1.45;color:#1b1b1b}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85rem}
th,td{padding:.2rem .5rem;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5rem 0}
table.kv td{text-align:left;white-space:normal}
.note{color:#555;font-size:.9rem}pre{white-space:pre-wrap;font-size:.85rem}
@media (max-width:640px){body{padding:.5rem}table{font-size:.75rem}
.fig img{width:var(--phone-width,640px);max-width:none}}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(columns: list[str], rows: list[list], cls: str = "") -> str:
    head = (
        "" if not any(columns) else "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
    )
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<div class="scroll"><table{attr}>{head}{body}</table></div>'


def _img(path: Path, alt: str) -> str:
    """A figure, inline; on a phone it keeps a legible width and scrolls sideways."""
    raw = Path(path).read_bytes()
    width = int.from_bytes(raw[16:20], "big")  # the PNG header's width, pixels at 150 dpi
    data = base64.b64encode(raw).decode("ascii")
    style = f"--phone-width:{max(width // 2, 320)}px"  # 75 dpi: the figure's text legible
    return (
        f'<div class="scroll fig"><img alt="{_e(alt)}" style="{style}" '
        f'src="data:image/png;base64,{data}"></div>'
    )


def _lines(lines: list[str]) -> str:
    return "<pre>" + _e("\n".join(lines)) + "</pre>"


def _ci(v, fmt="{:.3g}") -> str:
    return console.interval_text(v, fmt).strip()


def _si_ci(v) -> str:
    """An interval of counts, in the page's k/M/B notation."""
    return f"[{console.si(v[0])}, {console.si(v[1])}]" if v else ""


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _absent(what: str, command: str) -> str:
    return f'<p class="note">{_e(what)}: <code>{_e(command)}</code></p>'


def _experiment(sweep: Path | None) -> str:
    if sweep is None:
        return _absent("A table, not a sweep: no config to show", "chinchilla sweep CONFIG")
    from chinchilla.sweep import sweep_config

    cfg = sweep_config(sweep)
    g, m, t = cfg.grid, cfg.model, cfg.train
    rows = [
        ["name", cfg.name],
        ["grid", f"{g.kind}; budgets {', '.join(f'{c:.3g}' for c in g.budgets) or '-'} FLOPs"],
        [
            "conventions",
            f"N = {g.n_convention} parameters; C = "
            + ("6ND" if g.flops_convention == "6nd" else "Chinchilla Appendix F"),
        ],  # fmt: skip
        ["model", f"{m.arch}, family {m.family}, seq_len {m.seq_len}"],
        ["training", f"{t.schedule} schedule, batch {t.batch_size} sequences, seed {t.seed}"],
        [
            "data",
            f"{cfg.data.kind}"
            + (f", {cfg.data.unique_tokens:,} unique tokens" if cfg.data.unique_tokens else ""),
        ],  # fmt: skip
    ]
    return _table(["", ""], rows, cls="kv")


def _runs(res, sweep: Path | None) -> str:
    import numpy as np

    cols = ["run", "N", "D", "C [FLOPs]", "D/N", "loss [nats]"]
    order = np.lexsort((res.n_params, res.flops))
    psd = res.prediction_sd if res.prediction_sd is not None else np.zeros(len(res))
    rows = [
        [
            res.run_id[i],
            console.si(res.n_params[i]),
            console.si(res.n_tokens[i]),
            f"{res.flops[i]:.3g}",
            f"{res.n_tokens[i] / res.n_params[i]:.0f}",
            f"{res.loss[i]:.4f}" + (f" predicted ± {psd[i]:.3f}" if psd[i] > 0 else ""),
        ]
        for i in order
    ]
    note = (
        f'<p class="note">{len(res)} runs with status ok from {_e(res.source)}; N: '
        f"{_e(res.n_convention)} parameters; C = 6ND; loss: {_e(res.loss_name)}"
        + (f"; left out: {_e(res.excluded)}" if res.excluded else "")
        + "</p>"
    )
    return note + _table(cols, rows)


def _fit(rep, doc: dict, preds: list[dict], figures: list[Path]) -> str:
    parts = [_lines(rep.summary())]
    if preds:
        rows = [
            [
                f"Approach {p['approach']}",
                f"{p['flops']:.3g}",
                console.si(p["n_opt"]) + " " + _si_ci(p.get("n_opt_ci")),
                console.si(p["d_opt"]) + " " + _si_ci(p.get("d_opt_ci")),
                f"{p['tokens_per_param']:.1f}",
                "" if p.get("loss") is None else f"{p['loss']:.4f}",
            ]
            for p in preds
        ]
        parts.append("<h3>Compute-optimal allocation (C = 6ND, 80% intervals)</h3>")
        parts.append(_table(["approach", "C [FLOPs]", "N_opt", "D_opt", "D/N", "loss"], rows))
    for f in figures:
        parts.append(_img(f, f.stem.replace("_", " ")))
    return "".join(parts)


def _verification(sweep: Path | None) -> str:
    found = sorted(sweep.glob("verify-*/verify.json")) if sweep is not None else []
    if not found:
        return _absent("No verification yet", "chinchilla verify RUNS")
    parts = []
    for path in found:
        doc = json.loads(path.read_text())
        m = doc["measured"]
        parts.append(
            f"<p>At {doc['budget']:.3g} FLOPs ({_e(doc['convention'])}): measured N_opt "
            f"{console.si(m['n_opt'])} ({_e(m['how'])}), minimum loss {m['loss_min']:.4f}"
            "</p>"
        )
        rows = [
            [
                f"Approach {a['approach']}",
                console.si(a["n_opt_predicted"]) + " " + _si_ci(a.get("n_opt_ci")),
                "yes" if a.get("n_opt_measured_inside_ci") else "no",
                f"{a['loss_predicted']:.4f} " + _ci(a.get("loss_ci"), "{:.4f}"),
                "yes" if a.get("loss_measured_inside_ci") else "no",
            ]
            for a in doc["approaches"]
        ]
        parts.append(_table(["approach", "N_opt predicted", "holds measured", "loss predicted",
                             "holds measured"], rows))  # fmt: skip
        fig = path.parent / "fit_verify.png"
        if fig.exists():
            parts.append(_img(fig, "verification"))
    return "".join(parts)


def _metrics(sweep: Path | None) -> str:
    found = sorted(sweep.glob("metric_*.json")) if sweep is not None else []
    if not found:
        return _absent("No task metric fitted", "chinchilla fit RUNS --metric TASK/METRIC")
    parts = []
    for path in found:
        doc = json.loads(path.read_text())
        parts.append(f"<h3>{_e(doc['metric'])}</h3>")
        parts.append(f'<p class="note">{_e(doc.get("model", ""))}</p>')
        rows = [
            [
                f"{p['C']:.3g}",
                f"{p['x_data']:g}x",
                f"{p['loss']:.4f}",
                f"{p['value']:.4f} " + _ci(p.get("interval"), "{:.4f}"),
                f"{p['value_direct']:.4f} " + _ci(p.get("interval_direct"), "{:.4f}"),
            ]
            for p in doc.get("predictions", [])
        ]
        if rows:
            parts.append(
                _table(["C [FLOPs]", "x data", "loss", "through the loss", "through C"], rows)
            )
        task = doc["metric"].split("/", 1)[0]
        fig = sweep / f"fit_emergence_{task}.png"
        if fig.exists():
            parts.append(_img(fig, f"emergence {task}"))
    return "".join(parts)


def _curves(sweep: Path | None) -> str:
    path = sweep / "fit_curves.json" if sweep is not None else None
    if path is None or not path.exists():
        return _absent("No loss-curve law fitted", "chinchilla fit RUNS --curves")
    doc = json.loads(path.read_text())["curves"]
    parts = [f"<p>{_e(doc['form'])}</p>"]
    if doc.get("holdout"):
        rows = [
            [
                h["run_id"],
                console.si(h["n_params"]),
                str(h["steps"]),
                f"{h['predicted']:.4f}",
                f"{h['measured']:.4f}",
                f"{h['error']:+.4f}",
            ]  # fmt: skip
            for h in doc["holdout"]
        ]
        parts.append(_table(["hidden run", "N", "steps", "predicted", "measured", "error"], rows))
        noise = doc.get("seed_noise", {}).get("sd")
        parts.append(
            f"<p>Mean absolute error {doc['mae']:.4f} nats"
            + (f"; seed noise sd {noise:.4f}" if noise is not None else "")
            + "</p>"
        )
    fig = sweep / "fit_curves.png"
    if fig.exists():
        parts.append(_img(fig, "loss curves"))
    return "".join(parts)


def _constrained(sweep: Path | None) -> str:
    path = sweep / "fit_data_constrained.json" if sweep is not None else None
    if path is None or not path.exists():
        return _absent(
            "No data-constrained law fitted", "chinchilla fit RUNS --law data-constrained"
        )
    law = json.loads(path.read_text())["data_constrained"]
    iv = law.get("intervals", {})
    parts = [
        f"<p>R*_D = {law['rd_star']:.3g} {_ci((iv.get('rd_star') or {}).get('80'))}, "
        f"R*_N = {law['rn_star']:.3g} {_ci((iv.get('rn_star') or {}).get('80'))} "
        f"(80%); {_e(law['in_words'])}</p>"
    ]
    for name in ("fit_epochs.png", "fit_allocation.png"):
        if (sweep / name).exists():
            parts.append(_img(sweep / name, name[:-4].replace("_", " ")))
    return "".join(parts)


def build(results: Path, bootstrap: int = 200, seed: int = 0, n_convention: str = "total"):
    """The page's HTML and the fit it shows."""
    from chinchilla.fit.data import load_results
    from chinchilla.fit.results import FitOptions, fit_all
    from chinchilla.plots import save_figures
    from chinchilla.predict import default_budgets, predictions

    res = load_results(results, n_convention=n_convention)
    if len(res) == 0:
        from chinchilla.errors import UserError

        raise UserError(f"{results}: no runs with status ok ({res.excluded or 'empty'})")
    rep = fit_all(res, FitOptions(bootstrap=bootstrap, seed=seed))
    preds = predictions(rep, default_budgets(res.flops), [])
    doc = rep.to_json()
    sweep = res.sweep_dir
    with tempfile.TemporaryDirectory() as tmp:
        figures = save_figures(rep, Path(tmp))
        fit_html = _fit(rep, doc, preds, figures)
    title = (sweep.name if sweep is not None else Path(results).stem) + ": scaling-law report"
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        _section("experiment", "Experiment", _experiment(sweep)),
        _section("runs", "Runs", _runs(res, sweep)),
        _section("fit", "The three approaches", fit_html),
        _section("verification", "Verification", _verification(sweep)),
        _section("metrics", "Task metrics", _metrics(sweep)),
        _section("curves", "Loss curves", _curves(sweep)),
        _section("data-constrained", "Repeated data", _constrained(sweep)),
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><p class="note">{_e(res.source)}; made {made} by chinchilla '
        f"fit with {bootstrap} resamples (seed {seed})</p>" + "".join(sections) + "</body></html>"
    )
    return page, rep
