"""The README's commands run as written: every `chinchilla` line names a command and
options that exist and files that ship; the example table fits to the numbers quoted."""

from __future__ import annotations

import re
import shlex

from typer.testing import CliRunner

from chinchilla.cli import app

from .conftest import ROOT

runner = CliRunner()


def _command_lines() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("chinchilla "):
                lines.append(shlex.split(line)[1:])
    return lines


def test_readme_commands_name_real_commands_options_and_files():
    lines = _command_lines()
    assert len(lines) >= 10
    for args in lines:
        if args[0] in {"plan", "prepare", "sweep", "status", "fit", "tune", "verify", "compare"}:
            help_text = runner.invoke(app, [args[0], "--help"], env={"COLUMNS": "200"}).output
            for opt in (a for a in args if a.startswith("--")):
                assert opt in help_text, (args, opt)
            for a in args[1:]:
                if a.startswith(("configs/", "examples/")):
                    assert (ROOT / a).exists(), a


def test_readme_make_targets_exist():
    text = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z]+)\b(?!=)", text)):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target


def test_the_example_table_fits_to_the_quoted_exponents(tmp_path):
    """The README's demo table (each approach's a and 80% interval) is what fitting the
    example table prints, digit for digit."""
    r = runner.invoke(
        app, ["fit", str(ROOT / "examples" / "tiny_sweep.csv"), "--out", str(tmp_path / "f")]
    )
    assert r.exit_code == 0, r.output
    readme = (ROOT / "README.md").read_text()
    quoted = dict(
        re.findall(r"^\| Approach (\d) .*\| a = ([0-9.]+ \[[0-9., ]+\]) \|", readme, re.M)
    )
    assert set(quoted) == {"1", "2", "3"}, quoted
    for k, a in quoted.items():
        assert re.search(rf"Approach {k}: .*N_opt ∝ C\^{re.escape(a)}", r.output), (k, a)


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
