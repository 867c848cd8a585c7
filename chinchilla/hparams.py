"""Hyperparameter laws: the one owner of `hparams.json`, what `chinchilla tune` writes
and what `train.hparams` reads.

A law is a power law in the training compute C (FLOPs, under the convention the tuning
grid used), fitted through each budget's optimum:

    eta_opt(C) = c_lr * C^e_lr      peak learning rate of AdamW (the schedule's maximum)
    B_opt(C)   = c_b  * C^e_b       batch, tokens per optimizer step

the form of DeepSeek-AI 2024 ("DeepSeek LLM", sec. 3.1, eq. 1: eta_opt = 0.3118 C^-0.1250,
B_opt = 0.2920 C^0.3271). Either law may be absent (a grid that held the batch fixed fits
no batch law); a sweep then takes that hyperparameter from its own train settings.

Imports nothing heavy (no numpy): `chinchilla plan` reads the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chinchilla import layout
from chinchilla.errors import UserError

FORMAT = "chinchilla-hparams"
VERSION = 1
UNITS = {
    "lr": "peak learning rate of AdamW per optimizer step (the schedule's maximum)",
    "batch": "tokens per optimizer step (sequences x seq_len)",
    "flops": "training FLOPs of the whole run, under flops_convention",
}


@dataclass(frozen=True)
class PowerLaw:
    """value = coefficient * x ** exponent, fitted over x in [low, high]."""

    coefficient: float
    exponent: float
    low: float
    high: float

    def __call__(self, x: float) -> float:
        return self.coefficient * x**self.exponent

    def extrapolation(self, x: float) -> float:
        """How far `x` lies outside the fitted range, as a factor (1: inside)."""
        return max(1.0, x / self.high, self.low / x)


@dataclass(frozen=True)
class HparamLaws:
    """The laws of one `hparams.json`."""

    path: str
    lr: PowerLaw | None
    batch: PowerLaw | None
    flops_convention: str | None  # "6nd" / "chinchilla"; None: a table's own compute column
    n_convention: str | None

    def describe(self) -> str:
        """One line: both laws with units."""
        parts = []
        if self.lr:
            parts.append(f"lr = {self.lr.coefficient:.4g} C^{self.lr.exponent:.4f}")
        if self.batch:
            parts.append(f"batch = {self.batch.coefficient:.4g} C^{self.batch.exponent:.4f} tokens")
        conv = {"6nd": "6ND", "chinchilla": "Chinchilla App. F"}.get(
            self.flops_convention or "", "the table's own compute column"
        )
        return f"{'; '.join(parts)} (C in FLOPs as {conv}; from {self.path})"


def _law(doc: dict[str, Any], key: str, path: Path) -> PowerLaw | None:
    law = doc.get(key)
    if law is None:
        return None
    try:
        c, e = float(law["coefficient"]), float(law["exponent"])
        low, high = (float(v) for v in law["flops_range"])
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{path}: '{key}' needs coefficient, exponent and flops_range (a file written "
            "by chinchilla tune)"
        ) from None
    if not (c > 0 and math.isfinite(c) and math.isfinite(e) and 0 < low <= high):
        raise UserError(f"{path}: '{key}' law is not a positive power law ({c!r} C^{e!r})")
    return PowerLaw(c, e, low, high)


def load_laws(path: str | Path) -> HparamLaws:
    """Read `hparams.json` (or a sweep directory holding one); one line on a bad file."""
    p = Path(path)
    if p.is_dir():
        p = p / layout.HPARAMS
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"train.hparams: {p} not found (run chinchilla tune first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"train.hparams: {p} is not a readable hparams.json ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"train.hparams: {p} is not a chinchilla tune result (format {FORMAT!r})")
    laws = HparamLaws(
        path=str(p),
        lr=_law(doc, "lr", p),
        batch=_law(doc, "batch", p),
        flops_convention=(doc.get("conventions") or {}).get("flops_convention"),
        n_convention=(doc.get("conventions") or {}).get("n_convention"),
    )
    if laws.lr is None and laws.batch is None:
        raise UserError(f"train.hparams: {p} holds no fitted law (see its notes)")
    return laws
