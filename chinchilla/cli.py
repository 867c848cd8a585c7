"""Typer commands: plan, prepare, sweep, status, fit, tune. Each parses, calls one function, prints.

Bad input of any kind (a `UserError`) becomes `error: <one line>` on stderr and exit 2.
Heavy libraries (torch, matplotlib) are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from chinchilla import console, layout
from chinchilla.errors import UserError, describe_os_error

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Plan, train and fit Chinchilla-style compute-optimal scaling laws.",
)

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file.", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead.")]
BootstrapOpt = Annotated[
    int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for intervals (0: none).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Bootstrap seed.")]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, so that every `with` block
    (the progress display and its hidden cursor, the sweep lock, the workers) unwinds
    as it does after Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_MAIN_PID: list[int] = []  # the process `main` installed the handler in


def _raise_terminated(signum, frame) -> None:
    if os.getpid() not in _MAIN_PID:  # a forked child (a data pool's worker): the default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signum)


def _user_errors(fn):
    """Turn `UserError`, an `OSError` of the machine and a signal into one line on stderr:
    exit code 2, or 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:  # `chinchilla ... | head`: the reader left, not an error
            sys.stderr.close()
            raise typer.Exit(0) from None
        except OSError as exc:
            console.error(describe_os_error(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            # a signal landing while the live display starts skips its clean-up: the
            # cursor it hid is shown again here (a no-op where it is shown)
            console.show_cursor()
            signum = getattr(exc, "signum", signal.SIGINT)
            name = "interrupted" if signum == signal.SIGINT else signal.Signals(signum).name
            console.error(f"{name}; rerun the same command (a sweep resumes where it stopped)")
            raise typer.Exit(128 + signum) from None

    return wrapper


def _load(config: Path, overrides: list[str] | None):
    from chinchilla.config import load_config

    return load_config(config, overrides or [])


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Plan, train and fit Chinchilla-style compute-optimal scaling laws."""
    if version:
        from chinchilla import __version__

        print(__version__)
        raise typer.Exit(0)


# ----------------------------------------------------------------------------- plan


@app.command()
@_user_errors
def plan(
    config: ConfigArg,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Every column (non-embedding N, the shape's heads and d_ff, FLOPs in the "
            "config's convention, the Appendix F ratio, who planned the run); the default "
            "table fits 100 columns.",
        ),
    ] = False,
    repetition: Annotated[
        str | None,
        typer.Option(
            "--repetition",
            help="What repeating data (data.unique_tokens) costs each run: R*_D, a number "
            "(e.g. Muennighoff et al.'s C4 fit, 15.39: what the tokens are worth), or a "
            "fit_data_constrained.json from `chinchilla fit --law data-constrained` (also "
            "the cost in nats).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Lay out the grid of runs with exact parameter and FLOP counts, before training."""
    from chinchilla.grid import plan as make_plan

    law = None
    if repetition is not None:
        from chinchilla.repetition import load as load_repetition

        law = load_repetition(repetition)
    p = make_plan(_load(config, set_))
    costs = None
    if law is not None:
        from chinchilla.repetition import for_runs

        costs = for_runs(law, p.runs, p.config.grid.n_convention)
    rate_note = _measure_cpu_rate(p)
    if as_json:
        doc = p.to_json()
        doc["estimate_assumes"]["how"] = rate_note
        if law is not None:
            doc["repetition"] = law.as_dict()
            for row, cost in zip(doc["runs"], costs, strict=True):
                row.update(cost)
        print(json.dumps(doc, indent=1))
        return
    _print_plan(p, wide, rate_note, law, costs)


def _measure_cpu_rate(p) -> str:
    """Where the sweep trains on this machine's CPU, time its steps here (`plan.cpu_rate`);
    say what the time estimates rest on."""
    dev = p.config.device
    if dev.type == "cuda" or (dev.type == "auto" and _cuda_available()):
        return (
            f"at {dev.plan_peak_flops:.3g} FLOP/s peak and "
            f"{dev.plan_utilization:.0%} utilisation (device.plan_peak_flops, device.plan_utilization)"
        )
    from chinchilla.train import measure_cpu_rate

    try:
        fixed, per_flop, what = measure_cpu_rate(p)
    except (RuntimeError, MemoryError) as exc:  # a model too large to step here
        return f"cannot estimate on this CPU ({type(exc).__name__}: {exc})"[:300]
    p.cpu_rate = (fixed, per_flop)
    return what


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_plan(p, wide: bool = False, rate_note: str = "", law=None, costs=None) -> None:
    from rich import box
    from rich.table import Table

    g = p.config.grid
    c_name = "6ND" if g.flops_convention == "6nd" else "Chinchilla App. F"
    t = Table(
        title=f"{p.config.name}: {len(p.runs)} {p.config.model.arch} runs ({g.kind}); "
        f"C = budget in FLOPs ({c_name}), N = {g.n_convention} parameters, D = tokens",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0, 0, 1),  # with the box's blank divider: two spaces between columns
        pad_edge=False,
    )
    columns = [
        ("run_id", True),
        ("C", True),
        ("N", True),
        ("N non-emb", wide),
        ("D", True),
        ("D/N", True),
        ("epochs", p.config.data.unique_tokens is not None),
        ("worth", costs is not None),
        ("cost", costs is not None and law.base is not None),
        ("d_model x layers", wide),
        ("heads", wide),
        ("d_ff", wide),
        ("steps", True),
        ("lr", True),
        ("FLOPs", wide),
        ("App.F/6ND", wide),
        ("batch", True),
        ("memory", True),
        ("time", True),
        ("by", wide or any(r.planned_by not in ("initial", "trunk") for r in p.runs)),
        ("trunk", g.share_trunks),
    ]
    shown = [name for name, on in columns if on]
    for name in shown:
        t.add_column(name, justify="left" if name == "run_id" else "right", no_wrap=True)
    for i, r in enumerate(p.runs):
        micro, need, fits = p.memory(r)
        cost = costs[i] if costs is not None else {}
        cells = {
            "run_id": r.run_id,
            "C": f"{r.budget:.3g}",
            "N": console.si(r.n_params),
            "N non-emb": console.si(r.n_params_nonembedding),
            "D": console.si(r.n_tokens),
            "D/N": f"{r.n_tokens / r.n_params:.{1 if r.n_tokens < 100 * r.n_params else 0}f}",
            "epochs": f"{r.epochs:.3g}",
            "worth": f"{cost['worth']:.0%}" if cost else "",
            "cost": f"{cost['repetition_cost_nats']:.3f}"
            if cost.get("repetition_cost_nats") is not None
            else "",
            "d_model x layers": f"{r.shape.d_model}x{r.shape.n_layers}",
            "heads": str(r.shape.n_heads),
            "d_ff": str(r.shape.d_ff),
            "steps": str(r.steps),
            "lr": f"{r.lr:.3g}",
            "FLOPs": f"{r.flops:.3g}",
            "App.F/6ND": f"{r.flops_chinchilla / r.flops_6nd:.3f}",
            "batch": f"{micro}/{r.batch_size}",
            "memory": console.si(need, 2) + ("" if fits else "!"),
            "time": console.short_duration(p.estimated_seconds(r)),
            "by": r.planned_by,
            "trunk": (
                f"trunk/{len(r.branches)}"
                if r.is_trunk
                else f"{r.trunk[:6]}@{r.branch_step}"
                if r.trunk
                else "-"
            ),
        }
        t.add_row(*(cells[name] for name in shown))
    console.stdout.print(t)
    _print_plan_notes(p, c_name, rate_note, law, costs)


def _print_repetition_note(p, law, costs) -> None:
    """What --repetition assumed and what it says about the plan's most repeated run."""
    if p.config.data.unique_tokens is None:
        console.stdout.print(
            "repetition: no run repeats data (data.unique_tokens is unset; a corpus smaller "
            "than a run is known only when the sweep reads it, and runs.parquet records "
            "each run's epochs)"
        )
        return
    i = max(range(len(p.runs)), key=lambda k: p.runs[k].epochs, default=None)
    if i is None:
        return
    r, c = p.runs[i], costs[i]
    what = (
        f"repetition, from {law.source}: worth = D'/D, the share of a run's tokens worth "
        f"fresh ones (R*_D = {law.rd_star:.3g}: the k-th repeat of a token is worth "
        f"exp(-k / R*_D) of a fresh one)"
    )
    if law.base is not None:
        what += (
            "; cost = the fitted law's loss on the run's unique tokens minus the base law's "
            f"on fresh ones, nats/token (R*_N = {law.rn_star:.3g} for excess parameters)"
        )
    what += (
        f". The most repeated run, {r.run_id}, trains {r.epochs:.3g} epochs of "
        f"{console.si(r.unique_tokens)} tokens, worth {c['worth'] * r.epochs:.3g} fresh epochs"
    )
    console.stdout.print(what)


def _print_plan_notes(p, c_name: str, rate_note: str = "", law=None, costs=None) -> None:
    """The plan's lines under its table: trunks, totals, grid notes, warnings."""
    g = p.config.grid
    dev = p.config.device
    if g.share_trunks:
        trunks = [r for r in p.runs if r.is_trunk]
        ratio = p.total_flops / p.unshared_flops
        console.stdout.print(
            f"shared trunks: {len(p.points)} points from {len(trunks)} trunks; "
            f"{p.total_flops:.3g} FLOPs ({c_name}) trained for points that cost "
            f"{p.unshared_flops:.3g} trained one by one: {ratio:.3f}x, {1 - ratio:.1%} fewer "
            "(a branch trains only its decay, train.decay_frac of its steps)"
        )
    if g.fill == "curves":
        ratio = p.total_flops / p.unshared_flops
        trained = {r.run_id for r in p.runs}
        filled = {(r.n_params, r.lr, r.batch_size, r.steps) for r in p.targets
                  if r.run_id not in trained}  # fmt: skip
        probes = sum(r.planned_by == "probe" for r in p.runs)
        console.stdout.print(
            f"fill curves: the grid's {len(p.targets)} runs cost {p.unshared_flops:.3g} FLOPs "
            f"({c_name}); these {len(p.runs)} ({probes} probes) cost {p.total_flops:.3g}, "
            f"{ratio:.1%} of it; `chinchilla fit` predicts the other {len(filled)} points "
            "(each size's longest run, seed repeats once) from the loss-curve law"
        )
    console.stdout.print(
        f"total: {p.total_flops:.3g} FLOPs ({c_name}), "
        f"{sum(r.flops_chinchilla * r.trained_fraction for r in p.runs):.3g} FLOPs (App. F); "
        f"estimated {console.duration(p.estimated_hours * 3600)} of training, one run at a "
        "time (lr: peak learning rate; N non-emb (--wide): without vocabulary and position "
        "embeddings; batch: micro-batch/batch in sequences; memory: a step's peak in bytes, "
        "! = does not fit); micro-batches sized "
        f"for {dev.memory_gb:g} GiB per device (device.memory_gb), memory estimated for "
        + ("fp32" if dev.type == "cpu" else "bf16 autocast")
    )
    if rate_note:
        console.stdout.print("times: " + rate_note)
    if g.kind == "hparams":
        console.stdout.print(
            f"tuning grid: {len(g.lrs)} peak learning rates x "
            f"{len(g.batches) or 1} batches per size; `chinchilla tune` fits the laws"
            + (
                f"; adaptive: a budget whose best run lies at an edge of its lrs or batches "
                f"gains up to {g.adaptive_extra} runs one step beyond it"
                if g.adaptive
                else ""
            )
        )
    elif p.config.train.hparams:
        from chinchilla.grid import tuned_laws

        console.stdout.print(
            "peak lr and batch ('of B' in micro-batch: B sequences) from tuned laws: "
            + tuned_laws(p.config).describe()
        )
    if p.config.grid.adaptive and g.kind != "hparams":
        console.stdout.print(
            "adaptive grid: runs marked provisional are re-placed around the optimum that "
            "the budgets before them predict, and any budget may gain up to "
            f"{p.config.grid.adaptive_extra} extra sizes to bracket its minimum"
        )
    if law is not None:
        _print_repetition_note(p, law, costs)
    for w in p.warnings:
        console.stderr.print(f"warning: {w}")


# ----------------------------------------------------------------------------- sweep


OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Sweep directory (default: runs/<config name>).")
]


@app.command()
@_user_errors
def sweep(
    config: ConfigArg,
    out: OutOpt = None,
    set_: SetOpt = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Proceed in a directory that holds a sweep of another config."
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Runs trained at once, one process each (default: execution.workers).",
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option("--executor", help="local or ray (default: execution.executor)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster to join, e.g. auto (default: a local one)."),
    ] = None,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="Place each budget's sizes around the optimum the trained budgets predict, "
            "and extend budgets whose minimum is not bracketed (grid.adaptive).",
        ),
    ] = False,
) -> None:
    """Train every planned run not yet finished in the directory; rerun to resume."""
    from chinchilla.sweep import default_out, run_sweep

    cfg = _load(config, (set_ or []) + (["grid.adaptive=true"] if adaptive else []))
    if executor not in (None, "local", "ray"):
        raise UserError(f"--executor: expected local or ray, got {executor!r}")
    target = out or default_out(cfg)
    s = run_sweep(cfg, target, force=force, workers=workers, executor=executor, address=address)
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s.statuses.items())) or "nothing"
    console.stdout.print(
        f"sweep {target}: {s.planned} planned, {s.trained} trained now; recorded: {counts}. "
        f"Wall {console.duration(s.wall_seconds)}, in training steps "
        f"{console.duration(s.step_seconds)}, evaluations {console.duration(s.eval_seconds)}"
        + (f", outside both {s.overhead_fraction:.1%} per worker" if s.trained else "")
        + f". Tables: {target / 'runs.parquet'}, {target / 'curves.parquet'}"
    )
    if s.utilisation and list(s.utilisation) != ["main"]:
        console.stdout.print(
            "worker utilisation (in steps and evaluations / sweep wall time): "
            + ", ".join(f"{k} {v:.0%}" for k, v in s.utilisation.items())
        )


@app.command()
@_user_errors
def prepare(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, as_json: JsonOpt = False):
    """Build the configured data (tokenizer, token files, synthetic data) without
    training; `sweep` then reuses it."""
    from chinchilla.sweep import default_out, prepare_data

    cfg = _load(config, set_)
    info = prepare_data(cfg, out or default_out(cfg))
    if as_json:
        print(json.dumps(info, indent=1))
        return
    rate = (
        f"; tokenized at {info['tokenize_mb_per_s']:.1f} MB/s on "
        f"{info['tokenize_workers']} process(es)"
        if info.get("tokenize_mb_per_s")
        else ""
    )
    console.stdout.print(
        f"data ({info['kind']}, vocabulary {info['vocab_size']:,}): "
        f"{info['train_tokens']:,} training tokens"
        + (f" in {info['train_documents']:,} documents" if info["train_documents"] else "")
        + f", {info['val_tokens']:,} validation tokens"
        + (f" in {info['val_documents']:,} documents" if info["val_documents"] else "")
        + f"; the largest run trains on {info['largest_run_tokens']:,} tokens "
        f"({info['largest_run_epochs']:.2f} epochs){rate}; {info['seconds']:.1f} s. "
        f"Cache: {info['cache']}"
    )


@app.command()
@_user_errors
def status(
    out: Annotated[Path, typer.Argument(help="Sweep directory.", show_default=False)],
    as_json: JsonOpt = False,
    predict: Annotated[
        bool,
        typer.Option(
            "--predict",
            help="For runs in progress or interrupted: the final loss the loss-curve law "
            "predicts from their last checkpoint and the finished runs of their size.",
        ),
    ] = False,
) -> None:
    """Show done, pending, running, interrupted, diverged and failed runs of a sweep."""
    from chinchilla.sweep import status as sweep_status

    st = sweep_status(out)
    if predict:
        from chinchilla.fit.curves import predict_in_progress

        open_ids = [r["run_id"] for r in st["runs"] if r["status"] in ("running", "interrupted")]
        found = predict_in_progress(out, open_ids) if open_ids else {}
        for r in st["runs"]:
            if r["run_id"] in found:
                r["prediction"] = found[r["run_id"]]
    if as_json:
        print(json.dumps(st, indent=1))
        return
    from rich.table import Table

    t = Table(
        title=f"{st['name']} in {st['out']}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(st["counts"].items())),
        title_justify="left",
    )
    for col in (
        "run_id",
        "status",
        "budget [FLOPs]",
        "N total",
        "D [tokens]",
        "planned by",
        "worker",
        *(["predicted final loss [nats]"] if predict else []),
    ):
        t.add_column(col)
    for r in st["runs"]:
        t.add_row(
            r["run_id"],
            r["status"],
            f"{r['budget']:.3g}",
            console.si(r["n_params"]),
            console.si(r["n_tokens"]),
            r["planned_by"],
            r["worker"] or "",
            *([_prediction_cell(r.get("prediction"))] if predict else []),
        )
    console.stdout.print(t)
    if predict:
        console.stdout.print(
            "predicted: the loss-curve law (Tissue et al. 2024) fitted on the run's last "
            "checkpoint and the finished runs of its size, at its last step; the band is "
            "the sweep's hold-out RMS error (chinchilla fit --curves), an empirical band"
        )


def _prediction_cell(p: dict | None) -> str:
    if not p:
        return ""
    if "why" in p:
        return p["why"]
    band = console.interval_text(p["band"], "{:.3f}")
    return f"{p['predicted']:.3f}{band} at step {p['step']}/{p['steps']}"


# ----------------------------------------------------------------------------- fit


def _check_n_convention(value: str) -> None:
    if value not in ("total", "nonembedding"):
        raise UserError(f"--n-convention: expected total or nonembedding, got {value!r}")


def _floats(text: str | None, option: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if any(not v > 0 for v in values):
        raise UserError(f"{option}: values must be > 0")
    return values


@app.command()
@_user_errors
def fit(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="A sweep directory, or a CSV / parquet table of runs (with --law "
            "data-constrained: several, fitted as one table).",
            show_default=False,
        ),
    ],
    as_json: JsonOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where fit.json, predictions.csv and figures go (default: the sweep "
            "directory; nothing is written for a table unless given).",
        ),
    ] = None,
    approach: Annotated[
        list[int] | None,
        typer.Option("--approach", help="Approach 1, 2 or 3 (repeatable; default all)."),
    ] = None,
    predict: Annotated[
        str | None, typer.Option("--predict", help="Target budgets in FLOPs, e.g. 1e21,5.76e23.")
    ] = None,
    predict_n: Annotated[
        str | None,
        typer.Option("--predict-n", help="Target model sizes N, e.g. 1e9,70e9 (Table 3 layout)."),
    ] = None,
    bootstrap: BootstrapOpt = 200,
    seed: SeedOpt = 0,
    delta: Annotated[float, typer.Option("--delta", help="Huber delta of Approach 3.")] = 1e-3,
    starts: Annotated[
        str,
        typer.Option(
            "--starts",
            help="Approach 3 starts: profile (data-scaled, about 270; default), paper "
            "(the paper's 4,500) or coarse (every 4th of those).",
        ),
    ] = "profile",
    bound_e: Annotated[
        bool, typer.Option("--bound-e", help="Constrain E to at most the lowest observed loss.")
    ] = False,
    columns_map: Annotated[
        str | None,
        typer.Option(
            "--columns",
            help="Columns of another naming or unit, QUANTITY=COLUMN[*FACTOR] comma-"
            "separated, QUANTITY one of n_params, n_tokens, flops, loss, unique_tokens; e.g. "
            "n_params=params_M*1e6,n_tokens=tokens (a W&B export, a paper's CSV).",
            show_default=False,
        ),
    ] = None,
    n_col: Annotated[str | None, typer.Option("--n-col", help="Column holding N.")] = None,
    d_col: Annotated[str | None, typer.Option("--d-col", help="Column holding D.")] = None,
    c_col: Annotated[str | None, typer.Option("--c-col", help="Column holding C.")] = None,
    loss_col: Annotated[str | None, typer.Option("--loss-col", help="Column holding loss.")] = None,
    n_convention: Annotated[
        str, typer.Option("--n-convention", help="total or nonembedding, when both are present.")
    ] = "total",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures.")] = True,
    backtest: Annotated[
        int,
        typer.Option(
            "--backtest",
            min=0,
            help="Leave out the K largest budgets, fit on the rest, and score each "
            "approach's N_opt and minimum loss there (0: off).",
        ),
    ] = 0,
    drop_outliers: Annotated[
        bool,
        typer.Option(
            "--drop-outliers",
            help="Leave out of every fit the rows the robust outlier rule flags (they are "
            "flagged, and kept, without it; see docs/fitting.md).",
        ),
    ] = False,
    law: Annotated[
        str,
        typer.Option(
            "--law",
            help="chinchilla (the three approaches) or data-constrained (Muennighoff et al. "
            "2023: repeated epochs and excess parameters; needs a unique_tokens column).",
        ),
    ] = "chinchilla",
    fix: Annotated[
        list[str] | None,
        typer.Option(
            "--fix",
            help="With --law data-constrained: hold a base parameter, NAME=VALUE with NAME "
            "one of E, A, B, alpha, beta (repeatable).",
        ),
    ] = None,
    unique_tokens: Annotated[
        float | None,
        typer.Option(
            "--unique-tokens",
            help="With --law data-constrained: the unique tokens U to allocate compute "
            "under (default: the largest U of the table's repeated-data rows).",
        ),
    ] = None,
    curves: Annotated[
        bool,
        typer.Option(
            "--curves",
            help="Fit a loss-curve law (Tissue et al. 2024) per model size on the sweep's "
            "logged curves and schedules, check it by predicting each size's longest run "
            "from its others, and predict --horizon.",
        ),
    ] = False,
    curve_law: Annotated[
        str,
        typer.Option(
            "--curve-law",
            help="With --curves: multi-power (Luo et al. 2025; the better predictor of "
            "the demo's runs) or tissue (Tissue et al. 2024; faster).",
        ),
    ] = "multi-power",
    horizon: Annotated[
        str | None,
        typer.Option(
            "--horizon",
            help="With --curves: training tokens to predict every size's final loss at, "
            "e.g. 1e6,4e6 (the sweep's schedule unless --schedule).",
        ),
    ] = None,
    schedule: Annotated[
        str | None,
        typer.Option("--schedule", help="With --curves --horizon: cosine or wsd."),
    ] = None,
    decay_frac: Annotated[
        float | None,
        typer.Option("--decay-frac", help="With --schedule wsd: the decay's share of steps."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Instead of the loss: a downstream metric of the sweep's tasks, e.g. "
            "continue/exact_match@8, against compute and loss, with the emergence figure.",
        ),
    ] = None,
) -> None:
    """Fit the three Chinchilla approaches with bootstrap intervals; predict N_opt, D_opt.

    Exit status 1 when an approach named by --approach (or, without it, every approach)
    gave no certified answer; what was fitted is still printed and written."""
    from chinchilla.fit.parametric import START_SETS
    from chinchilla.fit.results import FitOptions

    _check_n_convention(n_convention)
    if starts not in START_SETS:
        raise UserError(f"--starts: expected {', '.join(START_SETS)}, got {starts!r}")
    if not delta > 0:
        raise UserError("--delta must be > 0")
    chosen = tuple(sorted(set(approach or (1, 2, 3))))
    if any(k not in (1, 2, 3) for k in chosen):
        raise UserError("--approach: expected 1, 2 or 3")
    budgets, sizes = _floats(predict, "--predict"), _floats(predict_n, "--predict-n")
    if law not in ("chinchilla", "data-constrained"):
        raise UserError(f"--law: expected chinchilla or data-constrained, got {law!r}")
    if law == "chinchilla" and (fix or unique_tokens is not None):
        raise UserError("--fix and --unique-tokens apply to --law data-constrained")
    if unique_tokens is not None and not unique_tokens > 0:
        raise UserError("--unique-tokens must be > 0")
    from chinchilla.fit.data import parse_columns

    mapping = parse_columns(columns_map)
    for key, given in (("n_params", n_col), ("n_tokens", d_col), ("flops", c_col),
                       ("loss", loss_col)):  # fmt: skip
        if key in mapping and given is not None:
            raise UserError(f"--columns {key}=... and its --*-col option name it twice")
    if len(results) > 1 and law != "data-constrained":
        raise UserError(
            "several tables are fitted together only with --law data-constrained (a fresh "
            "sweep and its repeated-data twins); give one sweep or table"
        )
    if law == "data-constrained":
        columns = {"n_col": n_col, "d_col": d_col, "c_col": c_col, "loss_col": loss_col}
        columns["mapping"] = mapping
        _fit_data_constrained(
            results,
            columns,
            n_convention,
            fix,
            unique_tokens,
            budgets,
            delta,
            bootstrap,
            seed,
            out,
            as_json,
            plots,
        )
        return
    results = results[0]
    if (horizon or schedule or decay_frac is not None) and not curves:
        raise UserError("--horizon, --schedule and --decay-frac apply to --curves")
    if curves:
        if metric is not None:
            raise UserError("--curves and --metric are different fits: one at a time")
        _fit_curves(results, curve_law, horizon, schedule, decay_frac, out, as_json, plots)
        return
    if metric is not None:
        _fit_metric(results, metric, budgets, bootstrap, seed, n_convention, out, as_json, plots)
        return
    opts = FitOptions(
        approaches=chosen,
        bootstrap=bootstrap,
        seed=seed,
        delta=delta,
        start_grid=starts,
        bound_e_by_min_loss=bound_e,
        drop_outliers=drop_outliers,
    )
    columns = {"n_col": n_col, "d_col": d_col, "c_col": c_col, "loss_col": loss_col}
    columns["mapping"] = mapping
    rep = _fit_loss(
        results, opts, columns, n_convention, budgets, sizes, out, as_json, plots, backtest
    )
    unanswered = rep.unanswered(explicit=approach is not None) if rep is not None else []
    if unanswered:
        console.stderr.print(f"error: no certified answer: {'; '.join(unanswered)}")
        raise typer.Exit(1)


def _load_ok(results, n_convention, columns):
    """The table's runs with status ok (one line and exit 2 when there are none)."""
    from chinchilla.fit.data import load_results

    res = load_results(results, n_convention=n_convention, **columns)
    if len(res) == 0:
        raise UserError(f"{results}: no runs with status ok ({res.excluded or 'empty'})")
    return res


def _fit_loss(results, opts, columns, n_convention, budgets, sizes, out, as_json, plots, backtest):
    """`chinchilla fit` on the loss: read, fit, print, then write (a write that fails
    cannot take the printed results with it)."""
    from chinchilla.fit.results import fit_all
    from chinchilla.predict import default_budgets, predictions

    res = _load_ok(results, n_convention, columns)
    target = out if out is not None else res.sweep_dir
    if backtest:
        _run_backtest(res, opts, backtest, target, as_json, plots)
        return None
    rep = fit_all(res, opts)
    preds = predictions(
        rep, budgets or ([] if sizes else default_budgets(rep.results.flops)), sizes
    )
    doc = rep.to_json() | {"predictions": preds}
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
    else:
        _print_fit(rep, doc)
    if target is not None:
        _write(target, lambda: _write_fit(target, doc, preds, rep if plots else None), as_json)
    return rep


def _fit_data_constrained(
    results,
    columns,
    n_convention,
    fix,
    unique,
    budgets,
    delta,
    bootstrap,
    seed,
    out,
    as_json,
    plots,
) -> None:
    """`chinchilla fit --law data-constrained`: the law, its intervals, and the allocation
    of compute under a cap on unique tokens; exit 1 when the fit is not certified."""
    import numpy as np

    from chinchilla.files import atomic_text
    from chinchilla.fit.constrained import fit_constrained, parse_fixed
    from chinchilla.fit.data import fresh_unique_tokens, join_results
    from chinchilla.predict import default_budgets

    fixed = parse_fixed(fix)
    tables = []
    for path in results:
        res = fresh_unique_tokens(_load_ok(path, n_convention, columns))
        if res.unique_tokens is None:
            raise UserError(
                f"{path}: --law data-constrained needs a unique_tokens column (the distinct "
                "tokens each run saw; epochs = D / unique_tokens)"
            )
        tables.append(res)
    res = join_results(tables)
    fit = fit_constrained(
        res.n_params,
        res.n_tokens,
        res.unique_tokens,
        res.loss,
        names=res.run_id,
        fixed=fixed,
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
    )
    u = res.unique_tokens
    repeated = res.n_tokens > u * (1 + 1e-9)
    cap = unique or float(np.max(u[repeated] if repeated.any() else u))
    targets = budgets or default_budgets(res.flops)
    alloc = [fit.allocate(c, cap) for c in targets]
    doc = {
        "n_points": len(res),
        "source": res.source,
        "conventions": {
            "n_params": res.n_convention,
            "compute": "C = 6 N D",
            "unique_tokens": "distinct tokens a run saw; epochs = D / unique_tokens",
            "loss": "nats/token as in the input",
        },
        "excluded": res.excluded,
        "duplicates_collapsed": res.duplicates,
        "notes": res.notes,
        "data_constrained": fit.as_dict(),
        "allocation": alloc,
    }
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
    else:
        for line in _constrained_lines(fit, res):
            console.stdout.print(line)
        console.stdout.print(_allocation_table(alloc))
    target = out if out is not None else res.sweep_dir
    if target is not None:

        def write():
            target.mkdir(parents=True, exist_ok=True)
            text = json.dumps(doc, indent=1, default=_json_default)
            written = [atomic_text(target / "fit_data_constrained.json", text)]
            if plots:
                from chinchilla.plots import save_constrained

                span = [float(np.min(res.flops)), max(targets)]
                args = (res.n_params, res.n_tokens, u, res.loss, cap, span, target)
                written += save_constrained(fit, *args)
            return written

        _write(target, write, as_json)
    if not fit.certified:
        console.stderr.print(f"error: no certified answer: data-constrained law: {fit.message}")
        raise typer.Exit(1)


def _constrained_lines(fit, res) -> list[str]:
    b, iv = fit.base, fit.intervals
    ci = lambda k: console.interval_text((iv.get(k) or {}).get("80"))  # noqa: E731
    held = [k for k, v in fit.base_source.items() if v == "fixed"]
    lines = [
        f"{len(res)} runs from {res.source} (N: {res.n_convention}; D and unique tokens U as "
        "in the input; "
        + (
            "the base held with --fix)"
            if len(held) == 5
            else f"{fit.n_single} single-epoch rows at or below the compute-optimal size "
            "for their tokens fit the base)"
        ),
        f"data-constrained law (Muennighoff et al. 2023): L = E + A/N'^α + B/D'^β with "
        f"E={b['E']:.4g}{ci('E')} A={b['A']:.4g} B={b['B']:.4g} α={b['alpha']:.4f}{ci('alpha')} "
        f"β={b['beta']:.4f}{ci('beta')}" + (f" ({', '.join(held)} held)" if held else ""),
        f"  R*_N = {fit.rn_star:.3g}{ci('rn_star')}, R*_D = {fit.rd_star:.3g}{ci('rd_star')} "
        f"(80% bootstrap intervals, runs resampled); Huber objective {fit.objective:.6g} "
        f"({fit.message})",
        f"  in words: {fit.words()}",
    ]
    if "withheld" in iv:
        lines.append(f"  warning: intervals withheld: {iv['withheld']}")
    for w in fit.flat:
        lines.append(f"  warning: {w}")
    for o in fit.optima:
        lines.append(
            f"  note: another optimum within 0.2% of the objective: R*_N = {o['rn_star']:.3g}, "
            f"R*_D = {o['rd_star']:.3g} (objective {o['objective']:.6g})"
        )
    for note in res.notes:
        lines.append(f"note: {note}")
    if res.duplicates:
        lines.append(
            f"warning: {res.duplicates} row{'s' if res.duplicates > 1 else ''} repeat"
            f"{'' if res.duplicates > 1 else 's'} an earlier row: fitted once"
        )
    return lines


def _allocation_table(rows: list[dict]):

    t = _right_table(
        "compute allocation under a cap of unique tokens (C = 6ND; loss given up: "
        "against the same C with unlimited data)",
        (
            "C [FLOPs]",
            "U [tokens]",
            "N_opt [params]",
            "D_opt [tokens]",
            "epochs",
            "loss [nats/token]",
            "unlimited: N_opt",
            "loss",
            "given up",
        ),
    )
    for r in rows:
        t.add_row(
            f"{r['flops']:.3g}",
            f"{r['unique_tokens']:.3g}",
            f"{r['n_opt']:.3g}",
            f"{r['d_opt']:.3g}",
            f"{r['epochs']:.3g}",
            f"{r['loss']:.4f}",
            f"{r['n_opt_unlimited']:.3g}",
            f"{r['loss_unlimited']:.4f}",
            f"{r['loss_given_up']:.4f}",
        )
    return t


def _right_table(title: str, columns):
    """A rich table with the title on the left and right-aligned columns (numbers)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right")
    return t


def _column_table(title: str, columns: list[tuple[str, list[str]]]):
    """A `_right_table` filled column by column: (name, cells) pairs of equal length."""
    t = _right_table(title, [name for name, _ in columns])
    for row in zip(*(cells for _, cells in columns), strict=True):
        t.add_row(*row)
    return t


def _write(target: Path, write, as_json: bool) -> None:
    """Call `write()` (it returns the paths written) after the results were printed; a
    filesystem fault becomes one line, and the paths are listed."""
    try:
        written = write()
    except OSError as exc:
        raise UserError(
            f"could not write the results to {exc.filename or target}: "
            f"{exc.strerror or exc} (the results are printed above; pass --out to write "
            "them elsewhere)"
        ) from None
    if not as_json:
        console.stdout.print("wrote " + ", ".join(str(w) for w in written))


@app.command()
@_user_errors
def tune(
    results: Annotated[
        Path,
        typer.Argument(
            help="A tuning sweep's directory (grid.kind hparams), or a CSV / parquet table "
            "with columns flops, lr, batch_tokens, loss (optional n_params, status).",
            show_default=False,
        ),
    ],
    as_json: JsonOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where hparams.json and the figures go (default: the sweep directory; "
            "nothing is written for a table unless given).",
        ),
    ] = None,
    bootstrap: BootstrapOpt = 200,
    seed: SeedOpt = 0,
    near: Annotated[
        float,
        typer.Option(
            "--near",
            help="Near-optimal tolerance: runs within this fraction of the minimum loss "
            "(DeepSeek LLM: 0.0025).",
        ),
    ] = 0.0025,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures.")] = True,
) -> None:
    """Fit learning-rate and batch laws, eta_opt = c C^e and B_opt = c C^e, to a tuning
    grid; `train.hparams: PATH` then trains an IsoFLOP sweep with them."""
    from chinchilla.fit.tune import load_tune_table
    from chinchilla.fit.tune import tune as fit_tune

    rep = fit_tune(load_tune_table(results), bootstrap=bootstrap, seed=seed, near=near)
    doc = rep.to_json()
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
    else:
        _print_tune(rep)
    target = out if out is not None else rep.table.sweep_dir
    if target is not None:
        _write(target, lambda: _write_tune(rep, doc, target, plots), as_json)


def _write_tune(rep, doc: dict, target: Path, plots: bool) -> list[Path]:
    from chinchilla.files import atomic_text

    target.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, default=_json_default)
    written = [atomic_text(target / layout.HPARAMS, text)]
    if plots:
        from chinchilla.plots import save_tune

        written += save_tune(rep, target)
    return written


def _print_tune(rep) -> None:
    from rich.table import Table

    sizes = any(f.n_params is not None for f in rep.budgets)
    t = Table(
        title=f"{len(rep.table.loss)} runs from {rep.table.source}: each budget's optimum from its "
        f"fitted loss surface (80% bootstrap intervals; near-optimal: within {rep.near:.2%} "
        "of the fitted minimum)",
        title_justify="left",
    )
    cols = ["C [FLOPs]", *(["N"] if sizes else []), "runs", "diverged", "best run: lr",
            "batch [tok]", "loss", "lr_opt", "batch_opt [tok]", "loss_opt",
            "near-opt. lr", "edge"]  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right")
    for f in rep.budgets:
        j = f.to_json()
        band = f.near.get("lr_band")
        edge = ", ".join(f"{k} {v}" for k, v in f.edge.items() if v) or (f.note or "-")
        t.add_row(
            f"{f.flops:.3g}",
            *([console.si(f.n_params)] if sizes else []),
            str(f.runs),
            str(f.diverged),
            f"{f.best['lr']:.3g}" if f.best else "-",
            console.si(f.best["batch_tokens"]) if f.best else "-",
            f"{f.best['loss']:.4f}" if f.best else "-",
            "-"
            if f.lr_opt is None
            else f"{f.lr_opt:.3g}" + console.interval_text(j["lr_interval"]),
            "-"
            if f.batch_opt is None
            else console.si(f.batch_opt) + console.interval_text(j["batch_interval"], "{:.3g}"),
            "-" if f.loss_opt is None else f"{f.loss_opt:.4f}",
            "-" if not band else f"{band[0]:.3g}-{band[1]:.3g}",
            edge,
        )
    console.stdout.print(t)
    for line in rep.summary():
        console.stdout.print(line)


def _fit_metric(results: Path, name, budgets, bootstrap, seed, n_convention, out, as_json, plots):
    from chinchilla.files import atomic_text
    from chinchilla.fit.metrics import load_metric_table, metric_fit

    if not Path(results).is_dir():
        raise UserError(f"--metric: {results} is not a sweep directory (metrics.parquet)")
    table = load_metric_table(results, n_convention)
    doc = metric_fit(table, name, targets=budgets or None, bootstrap=bootstrap, seed=seed)
    target = out if out is not None else Path(results)
    target.mkdir(parents=True, exist_ok=True)
    stem = doc["metric"].replace("/", "_").replace("@", "_at_")
    written = [target / f"metric_{stem}.json"]
    atomic_text(written[0], json.dumps(doc, indent=1, default=_json_default))
    if plots:
        from chinchilla.plots import save_emergence

        task = doc["metric"].split("/", 1)[0]
        written.append(save_emergence(table, doc, target / f"fit_emergence_{task}.png"))
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
        return
    _print_metric(doc, table, written)


def _fit_curves(
    results: Path, form: str, horizon, schedule, decay_frac, out, as_json, plots
) -> None:
    """`chinchilla fit SWEEP --curves`: print, then write curves.json and the figure."""
    from chinchilla.files import atomic_text
    from chinchilla.fit.curves import FORMS, report

    if not Path(results).is_dir():
        raise UserError(f"--curves: {results} is not a sweep directory (curves.parquet)")
    if form not in FORMS:
        raise UserError(f"--curve-law: expected {' or '.join(FORMS)}, got {form!r}")
    if schedule not in (None, "cosine", "wsd"):
        raise UserError(f"--schedule: expected cosine or wsd, got {schedule!r}")
    if decay_frac is not None and not 0 < decay_frac <= 1:
        raise UserError(f"--decay-frac must be in (0, 1], got {decay_frac}")
    horizons = _floats(horizon, "--horizon")
    doc, fit, curves = report(Path(results), horizons, schedule, decay_frac, form=form)
    text = json.dumps({"curves": doc}, indent=1, default=_json_default)
    if as_json:
        print(text)
    else:
        _print_curves(doc)
    target = out if out is not None else Path(results)

    def write():
        target.mkdir(parents=True, exist_ok=True)
        written = [atomic_text(target / "fit_curves.json", text)]
        if plots:
            from chinchilla.plots import save_curves

            written.append(save_curves(fit, curves, doc, target / "fit_curves.png"))
        return written

    _write(target, write, as_json)


def _print_curves(doc: dict) -> None:
    si = console.si
    out = console.stdout
    n_runs = sum(len(z["runs"]) for z in doc["sizes"])
    shared = ", ".join(f"{k} = {v:.4g}" for k, v in doc["shared"].items())
    out.print(
        f"loss-curve law {doc['form']}, on {n_runs} runs of {len(doc['sizes'])} sizes "
        f"(N: total parameters; S1: summed learning rate); shared by every size: {shared}; "
        "the rest per size (size = N, peak lr, batch)"
    )
    own = [k for k in doc["sizes"][0] if k not in ("n_params", "lr", "batch_size", "runs",
                                                  "points", "rmse_train", "rmse_eval")]  # fmt: skip
    out.print(
        _column_table(
            "per size (rmse: of the training points and of the evaluations, nats)",
            [
                ("N", [si(z["n_params"]) for z in doc["sizes"]]),
                ("lr", [f"{z['lr']:.3g}" for z in doc["sizes"]]),
                ("batch", [str(z["batch_size"]) for z in doc["sizes"]]),
                ("runs", [str(len(z["runs"])) for z in doc["sizes"]]),
                ("points", [str(z["points"]) for z in doc["sizes"]]),
                *((k, [f"{z[k]:.4g}" for z in doc["sizes"]]) for k in own),
                ("rmse train", [f"{z['rmse_train']:.4f}" for z in doc["sizes"]]),
                ("rmse eval", [f"{z['rmse_eval']:.4f}" for z in doc["sizes"]]),
            ],
        )
    )
    h = doc["holdout"]
    if h:
        out.print(
            _column_table(
                "hold-out: each size's longest horizon hidden, its final validation loss "
                "predicted from the other runs (nats)",
                [
                    ("run_id", [x["run_id"] for x in h]),
                    ("N", [si(x["n_params"]) for x in h]),
                    ("D", [si(x["n_tokens"]) for x in h]),
                    ("fitted on (steps)", [",".join(map(str, x["fitted_steps"])) for x in h]),
                    ("steps", [str(x["steps"]) for x in h]),
                    ("predicted", [f"{x['predicted']:.4f}" for x in h]),
                    ("measured", [f"{x['measured']:.4f}" for x in h]),
                    ("error", [f"{x['error']:+.4f}" for x in h]),
                ],
            )
        )
        noise = doc["seed_noise"]
        said = (
            f"seed noise: sd {noise['sd']:.4f} from {noise['groups']} groups of repeats "
            f"(spread {noise['spread_min']:.4f}-{noise['spread_max']:.4f})"
            if noise["sd"] is not None
            else "no repeats measure the seed noise (grid.repeats)"
        )
        out.print(
            f"hold-out: mean absolute error {doc['mae']:.4f} nats over {len(h)} runs "
            f"(bias {doc['bias']:+.4f}, rms {doc['rmse']:.4f}); {said}"
        )
    else:
        out.print("hold-out: no size has runs of two horizons; nothing to check")
    if doc["predictions"]:
        p = doc["predictions"]
        out.print(
            _column_table(
                "predicted final loss (nats; ± the hold-out rms error, an empirical band)",
                [
                    ("N", [si(x["n_params"]) for x in p]),
                    ("D", [si(x["tokens"]) for x in p]),
                    ("steps", [str(x["steps"]) for x in p]),
                    (
                        "schedule",
                        [
                            x["schedule"]
                            + (f" {x['decay_frac']:g}" if x["schedule"] == "wsd" else "")
                            for x in p
                        ],
                    ),
                    ("predicted", [f"{x['predicted']:.4f}" for x in p]),
                    (
                        "band",
                        [console.interval_text(x["interval"], "{:.4f}").strip() for x in p],
                    ),
                ],
            )
        )
    for rid, why in doc["left_out"].items():
        console.stderr.print(f"warning: {rid} left out: {why}")


def _print_metric(doc: dict, table, written) -> None:
    from rich.table import Table

    from chinchilla.fit.metrics import related

    name = doc["metric"]
    sharp, smooth = related(table, name)
    shown = list(dict.fromkeys([name, *sharp[-1:], *smooth[-1:]]))
    t = Table(
        title=f"{name} against compute: per budget, the run with the lowest final loss "
        f"(C = 6ND, N {table.n_convention}; {doc['n_runs']} runs)",
        title_justify="left",
    )
    for col in ("budget", "C [FLOPs]", "N", "D", "loss", *shown):
        t.add_column(col, justify="right")
    by_id = table.runs.set_index("run_id")
    for r in doc["frontier"]:
        row = by_id.loc[r["run_id"]]
        t.add_row(
            f"{r['budget']:.3g}",
            f"{r['C']:.3g}",
            console.si(r["N"]),
            console.si(r["D"]),
            f"{r['loss']:.4f}",
            *(f"{row[m]:.4f}" for m in shown),
        )
    console.stdout.print(t)
    p = doc["params"]
    if doc["kind"] == "sharp":
        console.stdout.print(
            f"fit ({doc['kind']}): over every run, {name} = sigmoid of loss with midpoint "
            f"{p['loss_mid']['value']:.4f}{console.interval_text(p['loss_mid']['interval'], '{:.4f}')} "
            f"nats and width {p['loss_width']['value']:.4f}; on the frontier, a sigmoid of "
            f"log10 C with midpoint {p['log10c_mid']['value']:.3f}"
            f"{console.interval_text(p['log10c_mid']['interval'])}; frontier loss = "
            f"{doc['conventions']['loss_floor']:.4g} + {p['loss_A']['value']:.4g}·C^-"
            f"{p['loss_b']['value']:.4f} (chance level {doc['chance']:.3g})"
        )
    else:
        console.stdout.print(
            f"fit ({doc['kind']}): on the frontier, the error left (|{name} - "
            f"{doc['conventions']['best_score']:.4g}|, the best score) = {p['A']['value']:.4g}·C^-"
            f"{p['b']['value']:.4f}{console.interval_text(p['b']['interval'], '{:.4f}')}; over every run, "
            f"{name} = {p['loss_intercept']['value']:.4f} + {p['loss_slope']['value']:.4f}·loss"
        )
    if doc.get("ceiling") is not None:
        console.stdout.print(f"Bayes-optimal model's {name}: {doc['ceiling']:.4f}")
    t = Table(
        title=f"{name} predicted (80% bootstrap intervals; x data: C over the largest budget's C)",
        title_justify="left",
    )
    two_step = doc["kind"] == "sharp"
    cols = ["C [FLOPs]", "x data", "frontier loss"] if two_step else ["C [FLOPs]", "x data"]
    cols += ["via loss (two-step)", "sigmoid of log C"] if two_step else [name]
    for col in cols:
        t.add_column(col, justify="right")
    for r in doc["predictions"]:
        cells = [f"{r['C']:.3g}", f"{r['x_data']:.3g}"]
        if two_step:
            cells.append(f"{r['loss']:.4f}")
        cells.append(f"{r['value']:.4f}{console.interval_text(r['interval'], '{:.3f}')}")
        if two_step:
            cells.append(
                f"{r['value_direct']:.4f}{console.interval_text(r['interval_direct'], '{:.3f}')}"
            )
        t.add_row(*cells)
    console.stdout.print(t)
    b = doc["bootstrap"]
    if b["failed"]:
        console.stdout.print(f"bootstrap: {b['failed']} of {b['resamples']} resamples failed")
    console.stdout.print("wrote " + ", ".join(str(w) for w in written))


def _run_backtest(res, opts, k: int, target: Path | None, as_json: bool, plots: bool) -> None:
    from chinchilla.files import atomic_text
    from chinchilla.fit.backtest import backtest
    from chinchilla.fit.isoflop import NotEnoughData

    try:
        bt = backtest(res, opts, k)
    except NotEnoughData as exc:
        raise UserError(f"--backtest: {exc}") from None
    rep = bt.pop("report")
    written = []
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        text = json.dumps(bt, indent=1, default=_json_default)
        written.append(atomic_text(target / "backtest.json", text))
        if plots:
            from chinchilla.plots import save_backtest

            written.append(save_backtest(rep, bt, target / "fit_backtest.png"))
    if as_json:
        print(json.dumps(bt, indent=1, default=_json_default))
        return

    t = _right_table(
        f"backtest: fitted on {bt['fitted_on']} runs without the {k} largest budget(s); C = 6ND",
        (
            "approach",
            "held-out C",
            "x fitted C",
            "N_opt obs.",
            "N_opt pred.",
            "ratio",
            "min loss obs.",
            "pred.",
            "error",
            "observed as",
        ),
    )
    for r in bt["rows"]:
        t.add_row(
            str(r["approach"]),
            f"{r['flops']:.3g}",
            f"{r['extrapolation']:.3g}",
            console.si(r["n_opt_observed"]),
            console.si(r["n_opt_predicted"]),
            f"{r['n_opt_ratio']:.3f}",
            f"{r['loss_min_observed']:.4f}",
            "-" if r["loss_min_predicted"] is None else f"{r['loss_min_predicted']:.4f}",
            "-" if r["loss_error"] is None else f"{r['loss_error']:+.4f}",
            r["truth"],
        )
    console.stdout.print(t)
    for name, why in bt["skipped"].items():
        console.stdout.print(f"{name} skipped: {why}")
    if written:
        console.stdout.print("wrote " + ", ".join(str(w) for w in written))


@app.command()
@_user_errors
def verify(
    results: Annotated[Path, typer.Argument(help="A sweep directory.", show_default=False)],
    budget: Annotated[
        float | None,
        typer.Option("--budget", help="Budget to verify at, FLOPs (default: 4x the largest)."),
    ] = None,
    bootstrap: BootstrapOpt = 200,
    seed: SeedOpt = 0,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Runs trained at once.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the predicted optimum at a budget beyond the grid (and N/2, 2N); compare."""
    from chinchilla.files import atomic_text
    from chinchilla.plots import save_verify
    from chinchilla.verify import verify as run_verify

    doc = run_verify(results, budget, bootstrap=bootstrap, seed=seed, workers=workers)
    target = Path(doc["directory"])
    atomic_text(target / "verify.json", json.dumps(doc, indent=1, default=_json_default))
    figure = save_verify(doc, target / "fit_verify.png")
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
        return
    m = doc["measured"]
    p = console.stdout.print
    p(
        f"verification at C = {doc['budget']:.3g} FLOPs ({doc['extrapolation']:.3g}x the "
        f"largest budget; {doc['convention']}): trained N = "
        + ", ".join(console.si(r["n_params"]) for r in doc["runs"])
        + f"; measured optimum N = {console.si(m['n_opt'])} at loss {m['loss_min']:.4f} "
        f"({m['how']})"
    )
    for a in doc["approaches"]:

        def where(flag) -> str:
            if flag is None:
                return "no interval"
            return "measured inside the 80% interval" if flag else "measured OUTSIDE it"

        loss = (
            "-"
            if a["loss_predicted"] is None
            else f"{a['loss_predicted']:.4f}{console.interval_text(a['loss_ci'])} "
            f"({where(a['loss_measured_inside_ci'])})"
        )
        p(
            f"  Approach {a['approach']}: N_opt {console.si(a['n_opt_predicted'])}"
            f"{console.interval_text(a['n_opt_ci'])}, {a['n_opt_ratio']:.2f}x the measured "
            f"({where(a['n_opt_measured_inside_ci'])}); loss {loss}"
        )
    verdict = "is" if doc["best_run_is_the_predicted_optimum"] else "is NOT"
    p(f"  the best of the three runs {verdict} the predicted optimum; {doc['loss_note']}")
    p(f"wrote {target / 'verify.json'}, {figure}")


@app.command()
@_user_errors
def report(
    results: Annotated[
        Path,
        typer.Argument(
            help="A sweep directory, or a CSV / parquet table of runs.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The HTML file (default: report.html in the sweep, or <table>_report.html "
            "beside the table).",
        ),
    ] = None,
    bootstrap: BootstrapOpt = 200,
    seed: SeedOpt = 0,
    n_convention: Annotated[
        str, typer.Option("--n-convention", help="total or nonembedding, when both are present.")
    ] = "total",
) -> None:
    """One self-contained HTML page: the experiment, the runs, each approach's law with its
    intervals, predictions, and the sweep's verification, task metrics, loss curves and
    repeated-data law when present (figures inline; opens with no network)."""
    from chinchilla.files import atomic_text
    from chinchilla.report import build

    _check_n_convention(n_convention)
    page, _ = build(results, bootstrap=bootstrap, seed=seed, n_convention=n_convention)
    if out is None:
        out = (
            results / "report.html"
            if Path(results).is_dir()
            else Path(results).with_name(Path(results).stem + "_report.html")
        )
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: the report is an HTML file (.html)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_text(out, page)
    except OSError as exc:
        raise UserError(
            f"could not write the report to {exc.filename or out}: {exc.strerror or exc}"
        ) from None
    console.stdout.print(f"wrote {out} ({len(page.encode()) / 1024:.0f} KiB, figures inline)")


@app.command()
@_user_errors
def compare(
    results: Annotated[
        list[Path], typer.Argument(help="Two or more sweep directories.", show_default=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for compare.json and compare.png.")
    ] = Path("compare"),
    n_convention: Annotated[
        str, typer.Option("--n-convention", help="nonembedding (Kaplan) or total.")
    ] = "nonembedding",
    bootstrap: BootstrapOpt = 200,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Sweeps side by side (e.g. one per model.arch): frontiers in N, exponents, loss by
    context position at a matched N."""
    from chinchilla.compare import compare as run_compare
    from chinchilla.files import atomic_text
    from chinchilla.plots import save_compare

    _check_n_convention(n_convention)
    doc = run_compare(list(results), n_convention=n_convention, bootstrap=bootstrap, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "compare.json", json.dumps(doc, indent=1, default=_json_default))
    figure = save_compare(doc, out / "compare.png")
    if as_json:
        print(json.dumps(doc, indent=1, default=_json_default))
        return
    from rich.table import Table

    n_name = "non-embedding" if n_convention == "nonembedding" else "total"
    t = Table(
        title=f"{len(doc['sweeps'])} sweeps; N = {n_name} parameters; a: N_opt ∝ C^a with "
        "C = 6ND (80% bootstrap intervals)",
        title_justify="left",
    )
    for col in ("sweep", "runs", "N range", "App. 1 a", "App. 2 a", "App. 3 a", "E", "α", "β"):
        t.add_column(col, justify="left" if col == "sweep" else "right")
    for s in doc["sweeps"]:
        laws = [
            "-"
            if s["laws"][k]["a"] is None
            else f"{s['laws'][k]['a']:.3f}{console.interval_text(s['laws'][k]['a_ci'])}"
            for k in (1, 2, 3)
        ]
        a3 = s["approach3"] or {}
        t.add_row(
            s["label"],
            str(s["runs"]),
            f"{console.si(s['n_range'][0])}-{console.si(s['n_range'][1])}",
            *laws,
            *(f"{a3[k]:.3g}" if k in a3 else "-" for k in ("E", "alpha", "beta")),
        )
    p = console.stdout.print
    p(t)
    for s in doc["sweeps"]:
        tpp = s["tokens_per_param"]
        p(
            f"{s['label']}: lr and batch from {', '.join(s['hparams_from'])}; compute-optimal "
            f"D/N at C = {tpp['flops']:.3g}: "
            + ", ".join(f"App. {k} {v:.1f}" for k, v in sorted(tpp["by_approach"].items()))
        )
    budgets = sorted({c for s in doc["sweeps"] for c in s["best_loss_by_budget"]})
    if budgets:
        bt = Table(title="each budget's lowest final loss [nats/token]", title_justify="left")
        bt.add_column("sweep")
        for c in budgets:
            bt.add_column(f"C = {c:.3g}", justify="right")
        for s in doc["sweeps"]:
            best = s["best_loss_by_budget"]
            bt.add_row(s["label"], *(f"{best[c]:.4f}" if c in best else "-" for c in budgets))
        p(bt)
    for s in doc["sweeps"]:
        for k in (1, 2, 3):
            why = s["laws"][k]["skipped"]
            if why:
                p(f"{s['label']}: approach {k} skipped: {why}")
            elif s["laws"][k].get("interval_withheld"):
                p(
                    f"{s['label']}: approach {k} interval withheld: {s['laws'][k]['interval_withheld']}"
                )
    for s in doc["sweeps"]:
        pos = s["position_loss"]
        if pos is None:
            p(f"{s['label']}: no loss by position (train.position_loss)")
            continue
        per = pos["by_position"]
        p(
            f"{s['label']}: at N = {console.si(pos['n'])} (matched to {console.si(pos['target_n'])}),"
            f" loss {per[0]:.3f} at position 1, {per[min(9, len(per) - 1)]:.3f} at "
            f"{min(10, len(per))}, {per[-1]:.3f} at {len(per)} nats/token"
        )
    p(f"wrote {out / 'compare.json'}, {figure}")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def _write_fit(target: Path, doc: dict, preds: list[dict], rep) -> list[Path]:
    import csv
    import io

    from chinchilla.files import atomic_text

    target.mkdir(parents=True, exist_ok=True)
    written = [atomic_text(target / layout.FIT, json.dumps(doc, indent=1, default=_json_default))]
    buf = io.StringIO()
    cols = [
        "approach",
        "target",
        "flops",
        "n_opt",
        "d_opt",
        "tokens_per_param",
        "loss",
        "n_opt_ci",
        "d_opt_ci",
        "loss_ci",
        "extrapolation",
        "n_extrapolation",
        "warning",
    ]
    w = csv.writer(buf)
    w.writerow(cols)
    for p in preds:
        w.writerow(
            [
                ";".join(f"{x:.6g}" for x in p[c])
                if isinstance(p.get(c), list)
                else ("" if p.get(c) is None else p[c])
                for c in cols
            ]
        )
    written.append(atomic_text(target / "predictions.csv", buf.getvalue()))
    if rep is not None:
        from chinchilla.plots import save_figures

        written += save_figures(rep, target)
    return written


def _print_fit(rep, doc: dict) -> None:
    for line in rep.summary():
        console.stdout.print(line)
    if doc["predictions"]:
        console.stdout.print(_predictions_table(doc["predictions"]))


def _predictions_table(rows: list[dict]):

    t = _right_table(
        "compute-optimal allocation, C = 6ND (80% bootstrap intervals; x data: C over "
        "the largest C fitted, * N_opt beyond the largest sampled N)",
        (
            "approach",
            "C [FLOPs]",
            "x data",
            "N_opt [params]",
            "D_opt [tokens]",
            "D/N",
            "loss [nats/token]",
        ),
    )
    for r in rows:
        t.add_row(
            str(r["approach"]),
            f"{r['flops']:.3g}" + console.interval_text(r.get("flops_ci")),
            f"{r['extrapolation']:.3g}",
            f"{r['n_opt']:.3g}"
            + ("*" if r["warning"] else "")
            + console.interval_text(r.get("n_opt_ci")),
            f"{r['d_opt']:.3g}" + console.interval_text(r.get("d_opt_ci")),
            f"{r['tokens_per_param']:.1f}",
            "-"
            if r["loss"] is None
            else f"{r['loss']:.4f}" + console.interval_text(r.get("loss_ci")),
        )
    return t


def main() -> None:
    _MAIN_PID.append(os.getpid())
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _raise_terminated)
    app(prog_name="chinchilla")


if __name__ == "__main__":
    sys.exit(main())
