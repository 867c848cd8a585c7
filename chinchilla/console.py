"""Human-readable numbers and tables for the terminal (the CLI's only printer)."""

from __future__ import annotations

import math
import sys

from rich.console import Console

# Piped output (CI, logs, `| less`) gets a wide table rather than rich's 80 columns.
stdout = Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 220)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def si(x: float | None, digits: int = 3) -> str:
    """1.23e9 -> '1.23G' (no unit; the column header carries it)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, "")):
        if abs(x) >= div:
            # at least the integer digits: 123M, never 1.2e+02M
            v = x / div
            return f"{v:.{max(digits, len(str(int(abs(v)))))}g}{suffix}"
    return f"{x:.{digits}g}"


def interval_text(v, fmt: str = "{:.3g}") -> str:
    """ " [low, high]" of an interval, or "" when there is none."""
    return f" [{fmt.format(v[0])}, {fmt.format(v[1])}]" if v else ""


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def short_duration(seconds: float | None) -> str:
    """Four or five characters: 45s, 12.5m, 3.2h, 4.1d."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for limit, div, unit in ((90, 1, "s"), (5400, 60, "m"), (172800, 3600, "h")):
        if seconds < limit:
            return f"{seconds / div:.0f}{unit}" if unit == "s" else f"{seconds / div:.1f}{unit}"
    return f"{seconds / 86400:.1f}d"


def show_cursor() -> None:
    """Show the terminal's cursor again (the live progress display hides it)."""
    for c in (stdout, stderr):
        if c.is_terminal:
            c.show_cursor(True)


def error(message: str) -> None:
    """One line on stderr, no traceback."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr)
