"""Results tables in: a sweep directory, or any CSV / parquet table of (N, D, C, loss).

numpy only (no pandas): `chinchilla fit` on a CSV starts in a fraction of a second.
Columns are found under common spellings; D = C / (6N) when no tokens column exists.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from chinchilla import layout
from chinchilla.errors import UserError

SPELLINGS = {
    "n": (
        "n_params",
        "n",
        "model size",
        "params",
        "parameters",
        "model_size",
        "num_params",
        "n_parameters",
        "model params",
    ),
    "d": (
        "n_tokens",
        "d",
        "training tokens",
        "tokens",
        "training_tokens",
        "num_tokens",
        "data",
        "dataset size",
    ),
    "c": (
        "flops",
        "c",
        "training flop",
        "training flops",
        "compute",
        "training_flops",
        "flop",
        "c_flops",
    ),
    "loss": ("loss", "l", "final loss", "final_loss", "eval_loss", "val_loss", "test loss"),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


@dataclass
class Curves:
    """Training curves: one entry per logged step, grouped by run index."""

    run: np.ndarray  # (m,) index into the results' rows
    flops: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray


@dataclass
class Results:
    """What the fit needs, as float arrays over the usable runs."""

    n_params: np.ndarray
    n_tokens: np.ndarray
    flops: np.ndarray  # the fit's compute: C = 6 N D with N in `n_convention`, every approach
    loss: np.ndarray
    budget: np.ndarray | None  # planned budget per run, when known
    run_id: list[str]
    source: str
    n_convention: str  # "total" | "nonembedding" | "as given"
    flops_convention: str  # how the input counted its compute column (for the record)
    input_flops_ratio: float | None = None  # median of the input's C / (6 N D), when given
    tokens_derived: bool = False  # D = C / (6N)
    excluded: dict[str, int] = field(default_factory=dict)  # status -> runs left out
    duplicates: int = 0  # rows left out as exact copies of an earlier row
    # per run, the values of the columns besides N and D that make runs different
    # experiments (VARIANT_COLUMNS present in the input); repeats must agree on them
    variant: list[str] | None = None
    curves: Curves | None = None
    unique_tokens: np.ndarray | None = None  # distinct tokens each run saw, when given
    irreducible_loss: float | None = None
    sweep_dir: Path | None = None
    # what the loss column is, for axis labels: a sweep's final validation loss, or a
    # table's column as given
    loss_name: str = "loss"
    notes: list[str] = field(default_factory=list)  # what reading the table assumed
    # quantity -> the column read for it, with the factor applied ("params x 1e+06")
    columns_read: dict[str, str] = field(default_factory=dict)
    # rows predicted rather than measured (a `prediction_sd` column; a grid filled by the
    # curve law): each row's prediction standard deviation, 0 where measured. Every
    # bootstrap adds draws of it to the losses (`prediction_noise`); None: all measured
    prediction_sd: np.ndarray | None = None
    fill: dict | None = None  # a filled grid's account (chinchilla/fit/fill.py)

    def __len__(self) -> int:
        return len(self.loss)

    @classmethod
    def from_arrays(cls, n_params, n_tokens, loss, budget=None, source="arrays") -> Results:
        """A table of runs given as arrays (simulations, tests): total N, C = 6ND, runs
        named r0, r1, ..."""
        n, d = np.asarray(n_params, float), np.asarray(n_tokens, float)
        return cls(
            n_params=n,
            n_tokens=d,
            flops=6 * n * d,
            loss=np.asarray(loss, float),
            budget=None if budget is None else np.asarray(budget, float),
            run_id=[f"r{i}" for i in range(len(n))],
            source=source,
            n_convention="total",
            flops_convention="6nd",
        )

    def subset(self, keep: np.ndarray) -> Results:
        """The runs where `keep` is True (curves renumbered to match)."""
        from dataclasses import replace

        idx = np.nonzero(keep)[0]
        curves = None
        if self.curves is not None:
            new = np.full(len(self), -1)
            new[idx] = np.arange(len(idx))
            sel = new[self.curves.run] >= 0
            cv = self.curves
            curves = Curves(new[cv.run[sel]], cv.flops[sel], cv.tokens[sel], cv.loss[sel])
        return replace(
            self,
            n_params=self.n_params[idx],
            n_tokens=self.n_tokens[idx],
            flops=self.flops[idx],
            loss=self.loss[idx],
            budget=None if self.budget is None else self.budget[idx],
            run_id=[self.run_id[i] for i in idx],
            variant=None if self.variant is None else [self.variant[i] for i in idx],
            curves=curves,
            unique_tokens=None if self.unique_tokens is None else self.unique_tokens[idx],
            prediction_sd=None if self.prediction_sd is None else self.prediction_sd[idx],
        )

    def prediction_noise(self, rng: np.random.Generator, shape=()) -> np.ndarray:
        """Draws of the predicted rows' error, N(0, prediction_sd^2) per row (0 for
        measured rows), of shape (*shape, len(self))."""
        if self.prediction_sd is None:
            return np.zeros((*shape, len(self)))
        return self.prediction_sd * rng.standard_normal((*shape, len(self)))


def find_column(
    columns: list[str], spellings: tuple[str, ...], override: str | None = None
) -> str | None:
    """The column named `override`, else the first of `spellings` among `columns`
    (case, spaces, underscores and hyphens ignored), else None."""
    if override:
        if override not in columns:
            raise UserError(f"column {override!r} not found (columns: {', '.join(columns)})")
        return override
    normed = {_norm(c): c for c in columns}
    for spelling in spellings:
        if _norm(spelling) in normed:
            return normed[_norm(spelling)]
    return None


def read_table(path: Path) -> dict[str, list]:
    """A CSV, TSV or parquet table as {column: values}; one line on a bad file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pydict()
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = "\t" if sample.count("\t") > sample.count(",") else ","
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise UserError(f"{path}: empty table")
            rows = [r for r in reader if r]
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text table") from None
    table: dict[str, list] = {h: [] for h in header}
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise UserError(f"{path}: row {i + 2} has {len(r)} fields, the header {len(header)}")
        for h, v in zip(header, r, strict=True):
            table[h].append(v)
    return table


def float_column(table: dict[str, list], column: str, path: Path) -> np.ndarray:
    """A column as floats (empty cells NaN); one line naming the row of a non-number."""
    out = np.empty(len(table[column]))
    for i, v in enumerate(table[column]):
        try:
            out[i] = float(v) if v not in (None, "") else math.nan
        except (TypeError, ValueError):
            raise UserError(
                f"{path}: column {column!r}, row {i + 2}: {v!r} is not a number"
            ) from None
    return out


def _columns(columns, table_path, n_col, d_col, c_col, loss_col, n_convention) -> dict:
    """Which column holds N, D, C and the loss (each may be None but N and the loss)."""
    if n_col is None and n_convention == "nonembedding":
        if "n_params_nonembedding" not in columns:
            raise UserError(
                f"{table_path}: no n_params_nonembedding column for --n-convention nonembedding"
            )
        n_col = "n_params_nonembedding"
    cols = {
        "n": find_column(columns, SPELLINGS["n"], n_col),
        "d": find_column(columns, SPELLINGS["d"], d_col),
        "c": find_column(columns, SPELLINGS["c"], c_col),
        "loss": find_column(columns, SPELLINGS["loss"], loss_col),
    }
    for key, label in (("n", "model size N (n_params)"), ("loss", "loss")):
        if cols[key] is None:
            raise UserError(
                f"{table_path}: no {label} column (columns: {', '.join(columns)}); "
                f"name it with --{key if key != 'loss' else 'loss'}-col"
            )
    if cols["d"] is None and cols["c"] is None:
        raise UserError(
            f"{table_path}: needs a tokens (D) or a compute (C) column "
            f"(columns: {', '.join(columns)})"
        )
    return cols


def check_positive(arr: np.ndarray, keep: np.ndarray, name: str, table_path: Path) -> None:
    """One line naming the column and the first kept row that is not positive and finite."""
    bad = keep & ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise UserError(
            f"{table_path}: column {name!r} must be positive and finite; "
            f"row {i + 2} holds {float(arr[i])!r} ({int(bad.sum())} such rows)"
        )


def _sweep_table(sweep: Path, name: str) -> dict[str, list]:
    """A sweep directory's merged table as {column: values}, rebuilt in memory from the
    runs' parts when the merged file is unreadable (`store.load_table`)."""
    from chinchilla.store import load_table  # pandas: only for sweep directories

    df = load_table(sweep, name)
    return {c: df[c].tolist() for c in df.columns}


def read_results_table(path: Path) -> tuple[Path, dict[str, list]]:
    """(the table's path, its columns) of a sweep directory (its runs.parquet) or a table
    file; one line when it is missing or has no rows."""
    if not path.exists():
        raise UserError(f"results not found: {path}")
    table_path = path / layout.RUNS if path.is_dir() else path
    if path.is_dir() and not table_path.exists():
        raise UserError(f"{path} is not a sweep directory (no {layout.RUNS})")
    table = _sweep_table(path, layout.RUNS) if path.is_dir() else read_table(table_path)
    if not table or not len(next(iter(table.values()))):
        raise UserError(f"{table_path}: no rows")
    return table_path, table


# Columns that make two runs of the same N and D different experiments (unique tokens
# and epochs of repeated data, the model family and shape, the recipe): rows that differ
# in any of them are never taken for seed repeats of each other.
VARIANT_COLUMNS = (
    "unique_tokens",
    "epochs",
    "dataset",
    "arch",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "lr",
    "batch_size",
    "batch_tokens",
    "seq_len",
    "vocab_size",
)


def exact_duplicates(table: dict[str, list], keep: np.ndarray) -> np.ndarray:
    """Rows (among `keep`) equal in every column to an earlier kept row: a table pasted
    twice is one experiment, not twice the evidence."""
    seen: set[tuple] = set()
    dup = np.zeros(len(keep), dtype=bool)
    columns = list(table)
    for i in np.nonzero(keep)[0]:
        row = tuple(repr(table[c][i]) for c in columns)
        dup[i] = row in seen
        seen.add(row)
    return dup


def _apply_mapping(table: dict[str, list], mapping: dict, table_path: Path) -> dict[str, str]:
    """`--columns`: scale each mapped column in place (unique_tokens is also copied to
    its own name); returns quantity -> what was read ("params_M x 1e+06")."""
    read: dict[str, str] = {}
    for key, (col, factor) in mapping.items():
        if col not in table:
            raise UserError(
                f"{table_path}: --columns {key}={col}: no such column (columns: {', '.join(table)})"
            )
        if factor != 1.0:
            table[col] = list(float_column(table, col, table_path) * factor)
        read[key] = col if factor == 1.0 else f"{col} x {factor:g}"
        if key == "unique_tokens":
            table["unique_tokens"] = table[col]
    return read


def load_results(
    path: str | Path,
    *,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    n_convention: str = "total",
    curve_loss: str = "train_loss",
    mapping: dict[str, tuple[str, float]] | None = None,
) -> Results:
    """Read a sweep directory or a results table; keep runs with status ok. `mapping`
    (`--columns`): quantity -> (column, factor) for tables that name or scale their
    columns otherwise (a W&B export, a paper's CSV with N in millions)."""
    p = Path(path)
    table_path, table, fill = _read_table_or_fill(p)
    sweep_dir = p if p.is_dir() else None
    read = _apply_mapping(table, mapping or {}, table_path)
    n_col = mapping["n_params"][0] if "n_params" in read else n_col
    d_col = mapping["n_tokens"][0] if "n_tokens" in read else d_col
    c_col = mapping["flops"][0] if "flops" in read else c_col
    loss_col = mapping["loss"][0] if "loss" in read else loss_col
    columns = list(table)

    # 1. which columns; total vs non-embedding N
    cols = _columns(columns, table_path, n_col, d_col, c_col, loss_col, n_convention)

    # 2. statuses: keep ok runs, count the rest
    keep = np.ones(len(table[cols["n"]]), dtype=bool)
    excluded: dict[str, int] = {}
    if "status" in columns:
        status = np.asarray([str(s) for s in table["status"]])
        keep = status == "ok"
        for s in sorted(set(status[~keep])):
            excluded[str(s)] = int((status == s).sum())
    duplicates = exact_duplicates(table, keep)
    keep &= ~duplicates

    n = float_column(table, cols["n"], table_path)
    loss = float_column(table, cols["loss"], table_path)
    c = float_column(table, cols["c"], table_path) if cols["c"] else None
    d = float_column(table, cols["d"], table_path) if cols["d"] else None
    derived = d is None
    if d is None:
        d = c / (6.0 * n)  # C = 6ND (Kaplan et al. 2020, eq. 2.1)
    given_c = c
    c = fit_compute(n, d)

    # 3. bad values: one line naming the column and row
    for name, arr in (
        (cols["n"], n),
        (cols["loss"], loss),
        (cols["d"] or cols["c"], d),
        (cols["c"] or cols["d"], c),
    ):
        check_positive(arr, keep, name, table_path)

    # rows are named by run_id, else as check_positive names them (the header is row 1)
    run_ids = (
        [str(v) for v in table["run_id"]]
        if "run_id" in table
        else [f"row {i + 2}" for i in range(len(n))]
    )
    distinct = [c for c in VARIANT_COLUMNS if c in columns]
    budget = float_column(table, "budget", table_path) if "budget" in columns else None
    unique = (
        float_column(table, "unique_tokens", table_path) if "unique_tokens" in columns else None
    )
    psd = _prediction_sd(table, keep, table_path)
    sel = np.nonzero(keep)[0]
    flops_conv = "none given" if given_c is None else "as given"
    if "flops_convention" in columns and len(sel):
        flops_conv = str(table["flops_convention"][sel[0]])
    ratio = None
    if given_c is not None and not derived and len(sel):
        ratio = float(np.median(given_c[sel] / c[sel]))
    n_conv = n_convention if cols["n"] in ("n_params", "n_params_nonembedding") else "as given"
    irreducible = None
    if "irreducible_loss" in columns and len(sel):
        v = table["irreducible_loss"][sel[0]]
        irreducible = float(v) if v not in (None, "") and math.isfinite(float(v)) else None
    for key, col in (("n_params", cols["n"]), ("n_tokens", cols["d"]), ("flops", cols["c"]),
                     ("loss", cols["loss"])):  # fmt: skip
        if col is not None:
            read.setdefault(key, col)
    res = Results(
        columns_read=read,
        n_params=n[sel],
        n_tokens=d[sel],
        flops=c[sel],
        loss=loss[sel],
        budget=None if budget is None else budget[sel],
        run_id=[run_ids[i] for i in sel],
        source=str(p),
        n_convention=n_conv,
        flops_convention=flops_conv,
        input_flops_ratio=ratio,
        tokens_derived=derived,
        excluded=excluded,
        duplicates=int(duplicates.sum()),
        variant=["|".join(str(table[c][i]) for c in distinct) for i in sel] if distinct else None,
        unique_tokens=None if unique is None else unique[sel],
        irreducible_loss=irreducible,
        prediction_sd=None if psd is None or not psd[sel].any() else psd[sel],
        fill=None if fill is None else fill.as_dict(),
        sweep_dir=sweep_dir,
        loss_name="final validation loss"
        if sweep_dir is not None and cols["loss"] == "loss"
        else f"{cols['loss']} (as given)",
    )
    if sweep_dir is not None and (sweep_dir / layout.CURVES).exists():
        res.curves = _load_curves(sweep_dir, res, curve_loss)
    return res


def _read_table_or_fill(p: Path):
    """(path, columns, fill) of a results table, or of a `grid.fill: curves` sweep: the
    grid's table with its untrained runs predicted (chinchilla/fit/fill.py)."""
    from chinchilla.fit.fill import fill_sweep, is_filled

    if not (p.is_dir() and is_filled(p)):
        return (*read_results_table(p), None)
    fill = fill_sweep(p)
    return p / layout.RUNS, {c: fill.table[c].tolist() for c in fill.table.columns}, fill


def _prediction_sd(table: dict[str, list], keep: np.ndarray, path: Path) -> np.ndarray | None:
    """The `prediction_sd` column (predicted rows' standard deviation; empty: 0, a
    measured row), or None without one; one line for a negative or infinite value."""
    if "prediction_sd" not in table:
        return None
    psd = np.nan_to_num(float_column(table, "prediction_sd", path), nan=0.0)
    bad = keep & ~(np.isfinite(psd) & (psd >= 0))
    if bad.any():
        raise UserError(
            f"{path}: prediction_sd must be >= 0 (row {int(np.nonzero(bad)[0][0]) + 2})"
        )
    return psd


MAPPABLE = ("n_params", "n_tokens", "flops", "loss", "unique_tokens")


def parse_columns(text: str | None) -> dict[str, tuple[str, float]]:
    """`--columns n_params=params*1e6,n_tokens=tokens,loss=val/loss` -> {quantity:
    (column, factor)}; one line naming a bad item."""
    out: dict[str, tuple[str, float]] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, col = item.partition("=")
        key, col = key.strip(), col.strip()
        if not sep or key not in MAPPABLE or not col:
            raise UserError(
                f"--columns {item.strip()!r}: expected QUANTITY=COLUMN[*FACTOR] with QUANTITY "
                f"one of {', '.join(MAPPABLE)}"
            )
        factor = 1.0
        name, star, scale = col.rpartition("*")
        if star:
            try:
                factor = float(scale)
            except ValueError:
                factor = 1.0  # a '*' that is part of the column's name
            else:
                col = name.strip()
                if not (math.isfinite(factor) and factor > 0):
                    raise UserError(f"--columns {item.strip()!r}: the factor must be > 0")
        if key in out:
            raise UserError(f"--columns: {key} given twice")
        out[key] = (col, factor)
    return out


def fresh_unique_tokens(res: Results) -> Results:
    """A sweep of a synthetic source, with no data.unique_tokens, trained every run on
    fresh tokens: where its runs.parquet has no unique_tokens (sweeps recorded before the
    column existed), U = D, said in `notes`. Anything else is left as read."""
    from dataclasses import replace

    if res.sweep_dir is None:
        return res
    u = res.unique_tokens
    missing = np.ones(len(res), bool) if u is None else ~np.isfinite(u)
    if not missing.any():
        return res
    try:
        from chinchilla.sweep import sweep_config

        data = sweep_config(res.sweep_dir).data
    except UserError:
        return res
    if data.kind != "synthetic" or data.unique_tokens is not None:
        return res
    filled = res.n_tokens.copy() if u is None else np.where(missing, res.n_tokens, u)
    note = (
        f"{res.sweep_dir}: U = D for {int(missing.sum())} runs recorded without unique_tokens "
        "(a synthetic source with no data.unique_tokens draws fresh tokens)"
    )
    return replace(res, unique_tokens=filled, notes=[*res.notes, note])


def join_results(tables: list[Results]) -> Results:
    """Several tables as one (the data-constrained fit of a fresh sweep and its
    repeated-data twins). Rows equal in N, D, unique tokens and loss are one run read
    twice (a capped run that never repeated is its fresh twin): kept once, counted."""
    if len(tables) == 1:
        return tables[0]
    if any(t.prediction_sd is not None for t in tables):
        raise UserError(
            "a table with predicted rows (prediction_sd) cannot join others: the joint fit "
            "would count its predictions as measured"
        )
    conv = {t.n_convention for t in tables}
    if len(conv) > 1:
        raise UserError(
            "the tables count N differently (" + ", ".join(sorted(conv)) + "): one fit, one "
            "convention (--n-convention)"
        )
    n = np.concatenate([t.n_params for t in tables])
    d = np.concatenate([t.n_tokens for t in tables])
    u = np.concatenate([t.unique_tokens for t in tables])
    loss = np.concatenate([t.loss for t in tables])
    ids = [r for t in tables for r in t.run_id]
    seen: set = set()
    keep = np.zeros(len(n), bool)
    for i, key in enumerate(zip(n, d, u, loss, strict=True)):
        if key not in seen:
            seen.add(key)
            keep[i] = True
    excluded: dict[str, int] = {}
    for t in tables:
        for k, v in t.excluded.items():
            excluded[k] = excluded.get(k, 0) + v
    return Results(
        n_params=n[keep],
        n_tokens=d[keep],
        flops=fit_compute(n[keep], d[keep]),
        loss=loss[keep],
        budget=None,
        run_id=[r for r, k in zip(ids, keep, strict=True) if k],
        source=" + ".join(t.source for t in tables),
        n_convention=tables[0].n_convention,
        flops_convention="6nd",
        excluded=excluded,
        duplicates=sum(t.duplicates for t in tables) + int((~keep).sum()),
        unique_tokens=u[keep],
        notes=[x for t in tables for x in t.notes],
        loss_name=tables[0].loss_name,
    )


def fit_compute(n_params, n_tokens):
    """The compute every approach of one fit uses: C = 6 N D (Kaplan et al. 2020, eq.
    2.1), with N in the fit's convention. Approach 3's frontier is derived under this C,
    so Approaches 1 and 2 regress on it too, and predictions and figures speak of it."""
    return 6.0 * np.asarray(n_params, float) * np.asarray(n_tokens, float)


def _load_curves(sweep_dir: Path, res: Results, loss_column: str) -> Curves | None:
    t = _sweep_table(sweep_dir, layout.CURVES)
    if not t.get("run_id"):
        return None
    index = {rid: i for i, rid in enumerate(res.run_id)}
    rows = np.array([index.get(r, -1) for r in t["run_id"]])
    loss = np.asarray(t[loss_column], dtype=float)
    ok = (rows >= 0) & np.isfinite(loss) & (loss > 0)
    if not ok.any():
        return None
    tokens = np.asarray(t["tokens"], float)[ok]
    run = rows[ok]
    return Curves(
        run=run, flops=fit_compute(res.n_params[run], tokens), tokens=tokens, loss=loss[ok]
    )


def group_budgets(
    flops: np.ndarray, budget: np.ndarray | None, gap_decades: float = 0.1
) -> np.ndarray:
    """A budget label per run: the planned budget when known, else clusters of C whose
    log10 values lie within `gap_decades` of a neighbour (digitised published points
    scatter around their nominal budget), labelled by their geometric mean."""
    if budget is not None and np.all(np.isfinite(budget)):
        return budget.astype(float)
    logc = np.log10(flops)
    order = np.argsort(logc)
    labels = np.empty(len(flops))
    start = 0
    for k in range(1, len(order) + 1):
        if k == len(order) or logc[order[k]] - logc[order[k - 1]] > gap_decades:
            members = order[start:k]
            labels[members] = 10 ** logc[members].mean()
            start = k
    return labels


def sweep_metadata(sweep_dir: Path | None) -> dict:
    return {} if sweep_dir is None else layout.read_json(sweep_dir, layout.SUMMARY)
