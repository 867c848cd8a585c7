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
    r = runner.invoke(
        app, ["fit", str(ROOT / "examples" / "tiny_sweep.csv"), "--out", str(tmp_path / "f")]
    )
    assert r.exit_code == 0, r.output
    readme = (ROOT / "README.md").read_text()
    for k, a in ((1, "0.622 [0.499, 0.688]"), (2, "0.612 [0.589, 0.645]")):
        assert f"Approach {k}: N_opt ∝ C^{a}" in r.output, r.output
        assert f"a = {a}" in readme
    assert "N_opt ∝ C^0.567, D_opt" in r.output and "a = 0.567 [0.526, 0.655]" in readme
    import json

    doc = json.loads((tmp_path / "f" / "fit.json").read_text())
    lo, hi = doc["approach3"]["ci"]["a"]["80"]
    assert f"[{lo:.3f}, {hi:.3f}]" == "[0.526, 0.655]"


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
