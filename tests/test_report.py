"""`chinchilla report`: one self-contained HTML page, parsed."""

import base64
from html.parser import HTMLParser

from typer.testing import CliRunner

from chinchilla.cli import app

from .conftest import ROOT

runner = CliRunner()
SECTIONS = {"experiment", "runs", "fit", "verification", "metrics", "curves", "data-constrained"}


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.sections, self.external, self.scripts, self.tags = [], set(), [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "section":
            self.sections.add(a.get("id"))
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            v = a.get(key) or ""
            if v and not v.startswith(("data:", "#")):
                self.external.append(v)


def _parse(path):
    page = Page()
    text = path.read_text()
    page.feed(text)
    return page, text


def _check(page, min_images):
    assert page.sections == SECTIONS
    assert not page.external and page.scripts == 0 and "link" not in page.tags
    assert len(page.images) >= min_images
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_report_is_one_self_contained_page(micro_sweep, tmp_path):
    import shutil

    sweep = tmp_path / "s"
    shutil.copytree(micro_sweep, sweep)
    r = runner.invoke(app, ["fit", str(sweep), "--curves"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "r.html"
    r = runner.invoke(app, ["report", str(sweep), "--out", str(out), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    page, text = _parse(out)
    _check(page, 1)  # 4 runs at 2 budgets: the curve figure; the fit's need more budgets
    assert "Mean absolute error" in text  # the curve law's hold-out, read from the sweep
    assert 'name="viewport"' in text  # reads on a phone
    assert "chinchilla verify RUNS" in text  # sections not yet run say how to run them


def test_a_table_report_and_bad_input(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text((ROOT / "examples" / "tiny_sweep.csv").read_text())
    r = runner.invoke(app, ["report", str(table), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    page, text = _parse(tmp_path / "t_report.html")
    _check(page, 3)
    assert "Approach 3" in text and "e222e109003a" in text  # the laws and the runs
    for args in (["report", str(tmp_path / "missing.csv")],
                 ["report", str(table), "--out", str(tmp_path / "r.txt")]):  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
