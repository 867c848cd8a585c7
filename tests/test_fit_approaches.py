import json

import numpy as np
import pytest
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.fit.bootstrap import resample_counts
from chinchilla.fit.data import group_budgets, load_results
from chinchilla.fit.envelope import fit_envelope
from chinchilla.fit.isoflop import NotEnoughData, fit_isoflop
from chinchilla.fit.parametric import parametric_loss

from .conftest import reference_file
from .test_fit_parametric import TRUE, synthetic_points

runner = CliRunner()


def test_isoflop_recovers_the_parametric_frontier_exponent():
    n, d, loss = synthetic_points(noise=0.0, outliers=0)
    fit = fit_isoflop(n, d, loss, group_budgets(6 * n * d, None))
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert fit.a == pytest.approx(a_true, abs=0.03)
    assert fit.a + fit.b == pytest.approx(1.0, abs=1e-6)
    assert all(p.inside for p in fit.parabolas)


def test_isoflop_needs_three_budgets():
    n, d, loss = synthetic_points(noise=0.0, outliers=0)
    c = 6 * n * d
    two = c <= np.unique(group_budgets(c, None))[1] * 1.01
    with pytest.raises(NotEnoughData, match="need 3"):
        fit_isoflop(n[two], d[two], loss[two], group_budgets(c[two], None))


def test_budget_grouping_clusters_digitised_values():
    c = np.array([9.9e18, 1.02e19, 9.7e18, 3.1e19, 2.9e19, 1e20])
    labels = group_budgets(c, None)
    assert len(np.unique(labels)) == 3


def test_envelope_of_curves_from_a_known_law():
    # curves: each size trained to several horizons, loss follows L(N, D) along the way
    runs, flops, tokens, loss, sizes = [], [], [], [], []
    for i, n in enumerate(np.logspace(7, 9, 9)):
        d = np.logspace(8, np.log10(n * 200), 60)
        runs += [i] * len(d)
        tokens += list(d)
        flops += list(6 * n * d)
        loss += list(parametric_loss(n, d, **TRUE))
        sizes.append(n)
    env = fit_envelope(
        np.array(runs), np.array(flops), np.array(tokens), np.array(loss), np.array(sizes)
    )
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert env.a == pytest.approx(a_true, abs=0.06)
    # larger runs take over the envelope as compute grows
    assert np.corrcoef(np.log(env.flops), np.log(env.n_opt))[0, 1] > 0.9


def test_resample_counts_are_seeded():
    a, b = resample_counts(10, 5, 3), resample_counts(10, 5, 3)
    assert np.array_equal(a, b) and (a.sum(1) == 10).all()


def _csv(tmp_path, header, rows):
    p = tmp_path / "r.csv"
    p.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return p


def test_fit_cli_on_a_csv_with_common_spellings(tmp_path):
    n, d, loss = synthetic_points()
    p = _csv(tmp_path, "Model Size,Training FLOP,loss", zip(n, 6 * n * d, loss, strict=True))
    r = runner.invoke(
        app, ["fit", str(p), "--json", "--bootstrap", "20", "--predict", "1e21,5.76e23"]
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n_points"] == len(n)
    assert doc["approach1"] is None and "curves" in doc["skipped"]["approach1"]
    a3 = doc["approach3"]
    assert abs(a3["alpha"] - TRUE["alpha"]) < 0.03 and abs(a3["beta"] - TRUE["beta"]) < 0.03
    assert {"E", "A", "B", "alpha", "beta", "a", "b", "G", "objective", "ci"} <= set(a3)
    assert a3["ci"]["alpha"]["80"][0] <= a3["alpha"] <= a3["ci"]["alpha"]["80"][1]
    a2 = doc["approach2"]
    assert {"a", "b", "a_ci", "b_ci", "minima"} <= set(a2)
    preds = doc["predictions"]
    assert {p["approach"] for p in preds} == {2, 3}
    for pr in preds:
        assert pr["tokens_per_param"] == pytest.approx(pr["d_opt"] / pr["n_opt"])
        assert pr["n_opt_ci"] is not None
    assert not list(tmp_path.glob("*.png"))  # a table writes nothing without --out


def test_fit_cli_bad_input_is_one_line_exit_2(tmp_path):
    missing = _csv(tmp_path, "params,something", [(1e6, 2)])
    r = runner.invoke(app, ["fit", str(missing)])
    assert r.exit_code == 2 and "loss" in r.output and len(r.output.strip().splitlines()) == 1
    neg = _csv(tmp_path, "N,D,loss", [(1e6, 1e9, 3.0), (-1, 1e9, 3.0)])
    r = runner.invoke(app, ["fit", str(neg)])
    assert r.exit_code == 2 and "row 3" in r.output
    nan = _csv(tmp_path, "N,D,loss", [(1e6, 1e9, "nan")])
    assert runner.invoke(app, ["fit", str(nan)]).exit_code == 2
    assert runner.invoke(app, ["fit", str(tmp_path / "none.csv")]).exit_code == 2


def test_column_overrides_and_derived_tokens(tmp_path):
    n, d, loss = synthetic_points(noise=0.0, outliers=0)
    p = _csv(tmp_path, "size,compute,final", zip(n, 6 * n * d, loss, strict=True))
    res = load_results(p, n_col="size", c_col="compute", loss_col="final")
    assert res.tokens_derived and np.allclose(res.n_tokens, d)


def test_fit_of_a_small_sweep_reports_what_it_skips(tmp_path, micro_sweep):
    out = tmp_path / "fit"
    r = runner.invoke(app, ["fit", str(micro_sweep), "--out", str(out), "--json"])
    # no approach gave an answer: exit 1, the reasons on one line, the results written
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: no certified answer: Approach 1: skipped")
    assert len(r.stderr.strip().splitlines()) == 1
    doc = json.loads(r.stdout)
    assert set(doc["skipped"]) == {"approach1", "approach2", "approach3"}
    assert "need 3" in doc["skipped"]["approach2"]
    assert doc["irreducible_loss"] is not None and (out / "fit.json").exists()


def test_fit_writes_figures_with_out(tmp_path):
    n, d, loss = synthetic_points()
    p = _csv(tmp_path, "N,D,loss", zip(n, d, loss, strict=True))
    out = tmp_path / "figs"
    r = runner.invoke(app, ["fit", str(p), "--out", str(out), "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    for name in (
        "fit.json",
        "predictions.csv",
        "fit_isoflop.png",
        "fit_contours.png",
        "fit_residuals.png",
        "fit_frontier.png",
    ):
        assert (out / name).stat().st_size > 0, name


def test_fitting_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys, chinchilla.fit.results, chinchilla.fit.data, chinchilla.predict; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_asymptote_below_the_irreducible_loss_is_flagged(tmp_path):
    n, d, loss = synthetic_points()
    p = _csv(
        tmp_path,
        "N,D,loss,irreducible_loss",
        ((a, b, c, 2.5) for a, b, c in zip(n, d, loss, strict=True)),
    )
    r = runner.invoke(app, ["fit", str(p), "--approach", "3", "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    warnings = json.loads(r.stdout)["approach3"]["warnings"]
    assert warnings and "below the data's irreducible loss" in warnings[0]
    r = runner.invoke(app, ["fit", str(p), "--approach", "3", "--bootstrap", "0"])
    assert "warning: E =" in r.output


def test_one_compute_convention_under_nonembedding_n(micro_sweep):
    total = load_results(micro_sweep)
    nonemb = load_results(micro_sweep, n_convention="nonembedding")
    assert np.allclose(total.flops, 6 * total.n_params * total.n_tokens)
    assert np.allclose(nonemb.flops, 6 * nonemb.n_params * nonemb.n_tokens)
    assert (nonemb.flops < total.flops).all()
    cv = nonemb.curves
    assert np.allclose(cv.flops, 6 * nonemb.n_params[cv.run] * cv.tokens)


def test_predictions_carry_their_extrapolation(tmp_path):
    n, d, loss = synthetic_points()
    p = _csv(tmp_path, "N,D,loss", zip(n, d, loss, strict=True))
    r = runner.invoke(app, ["fit", str(p), "--json", "--bootstrap", "0", "--approach", "3"])
    doc = json.loads(r.stdout)
    top = (6 * n * d).max()
    rows = doc["predictions"]
    assert [round(x["extrapolation"]) for x in rows] == [1, 10, 100, 1000]
    assert rows[0]["flops"] == pytest.approx(top)
    assert rows[-1]["warning"] and "largest sampled N" in rows[-1]["warning"]
    assert doc["conventions"]["compute"].startswith("C = 6 N D")


def test_backtest_on_a_csv_scores_every_approach(tmp_path):
    n, d, loss = synthetic_points(noise=0.002, outliers=0)
    p = _csv(tmp_path, "N,D,loss", zip(n, d, loss, strict=True))
    out = tmp_path / "bt"
    r = runner.invoke(app, ["fit", str(p), "--backtest", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = {x["approach"]: x for x in doc["rows"]}
    assert set(rows) == {2, 3} and len(doc["held_out_budgets"]) == 1
    for x in rows.values():  # a clean law extrapolated 2.7x in C
        assert x["n_opt_ratio"] == pytest.approx(1.0, abs=0.15)
        assert abs(x["loss_error"]) < 0.02
        assert x["truth"] == "IsoFLOP parabola vertex"
    assert (out / "backtest.json").exists() and (out / "fit_backtest.png").stat().st_size > 0


def test_backtest_needs_budgets_to_spare(micro_sweep):
    r = runner.invoke(app, ["fit", str(micro_sweep), "--backtest", "1", "--no-plots"])
    assert r.exit_code == 2 and "--backtest" in r.output


def test_minima_at_the_grid_edge_give_no_approach_2_law(tmp_path):
    # every budget sampled only below its optimum: the lowest loss is each largest size
    rows = []
    for c in np.logspace(18, 20, 3):
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.logspace(-1.6, -0.4, 5):
            rows.append((n, c / (6 * n), float(parametric_loss(n, c / (6 * n), **TRUE))))
    p = _csv(tmp_path, "N,D,loss", rows)
    r = runner.invoke(app, ["fit", str(p), "--json", "--bootstrap", "0"])
    doc = json.loads(r.stdout)
    assert doc["approach2"] is None
    assert "not bracketed" in doc["skipped"]["approach2"]
    assert not [x for x in doc["predictions"] if x["approach"] == 2]


@pytest.mark.parametrize("scatter, warned", [(0.01, False), (0.4, True)])
def test_run_to_run_noise_is_reported_next_to_the_depth(tmp_path, scatter, warned):
    n, d, loss = synthetic_points(noise=0.0, outliers=0)
    rng = np.random.default_rng(0)
    rows = list(zip(n, d, loss, strict=True))
    middle = np.argsort(n)[len(n) // 2]  # one size of one budget, repeated 4 times
    rows += [
        (n[middle], d[middle], loss[middle] * np.exp(rng.normal(0, scatter))) for _ in range(4)
    ]
    p = _csv(tmp_path, "N,D,loss", rows)
    r = runner.invoke(app, ["fit", str(p), "--json", "--bootstrap", "0", "--approach", "2"])
    noise = json.loads(r.stdout)["noise"]
    budgets = [k for k in noise if k != "warnings"]
    assert len(budgets) == 1 and noise[budgets[0]]["runs"] == 5
    assert noise[budgets[0]]["std"] > 0 and noise[budgets[0]]["depth"] > 0
    assert bool(noise["warnings"]) == warned
    text = runner.invoke(app, ["fit", str(p), "--bootstrap", "0", "--approach", "2"]).output
    assert "run-to-run noise" in text and ("poorly determined" in text) == warned


def test_each_approach_allocates_as_the_predictions_do():
    """FitReport.allocate(C) (each approach's own result) against predict's rows, and
    Approach 3's against the paper's closed form computed here in float64."""
    from chinchilla.fit.results import FitOptions, fit_all
    from chinchilla.predict import predictions

    res = load_results(reference_file("epoch_chinchilla_fig4_points.csv"))
    rep = fit_all(res, FitOptions(bootstrap=0))
    c = 5.76e23
    got = rep.allocate(c)
    rows = {r["approach"]: r for r in predictions(rep, [c])}
    assert set(got) == set(rows) and 3 in got
    for k, (n, d) in got.items():
        assert float(n) == pytest.approx(rows[k]["n_opt"], rel=1e-12)
        assert float(d) == pytest.approx(rows[k]["d_opt"], rel=1e-12)
    f = rep.approach3
    g = (f.alpha * f.A / (f.beta * f.B)) ** (1 / (f.alpha + f.beta))
    n3 = g * (c / 6) ** (f.beta / (f.alpha + f.beta))
    assert float(got[3][0]) == pytest.approx(n3, rel=1e-12)
    assert float(got[3][0]) * float(got[3][1]) * 6 == pytest.approx(c, rel=1e-12)
    lines = rep.summary()
    assert any(line.startswith("Approach 3: L(N, D) = E + A/N^α") for line in lines)


def test_a_table_pasted_twice_fits_as_the_original(tmp_path):
    """Exact duplicate rows are one experiment: Epoch's points with every row repeated
    give the original's estimates and intervals to the digit, with a warning."""
    src = reference_file("epoch_chinchilla_fig4_points.csv")
    lines = src.read_text().splitlines()
    twice = tmp_path / "twice.csv"
    twice.write_text("\n".join([lines[0], *lines[1:], *lines[1:]]) + "\n")
    # Approach 2 has no answer on these points (not IsoFLOP profiles): exit 1 for both
    args = ["--json", "--bootstrap", "40", "--approach", "2", "--approach", "3"]
    one = runner.invoke(app, ["fit", str(src), *args])
    two = runner.invoke(app, ["fit", str(twice), *args])
    assert one.exit_code == 1 and two.exit_code == 1, two.output
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["duplicates_collapsed"] == len(lines) - 1 and a["duplicates_collapsed"] == 0
    assert b["n_points"] == a["n_points"]
    for k in ("approach2", "approach3"):
        if a[k] is None:
            assert b[k] is None
            continue
        assert b[k]["a"] == a[k]["a"]
        assert b[k].get("a_ci") == a[k].get("a_ci") and b[k].get("ci") == a[k].get("ci")
    text = runner.invoke(app, ["fit", str(twice), "--bootstrap", "0", "--approach", "3"])
    assert "rows repeat an earlier row in every column" in text.output


def test_rows_of_other_unique_token_counts_are_not_seed_repeats(tmp_path):
    """At each budget's middle size, a true repeat (same unique tokens, +0.002 nats) and
    a row trained on fewer unique tokens (repeated data, +0.6): only the first pair
    measures run-to-run noise (std 0.002 / sqrt 2), whatever the rows' order."""
    n, d, loss = synthetic_points(noise=0.0, outliers=0)
    u = d.copy()  # every token fresh
    rows = list(zip(n, d, loss, u, strict=True))
    for c in np.unique(np.round(np.log10(6 * n * d), 6)):
        mid = [j for j in range(len(n)) if abs(np.log10(6 * n[j] * d[j]) - c) < 1e-6]
        i = mid[len(mid) // 2]
        rows.append((n[i], d[i], loss[i] + 0.6, d[i] / 8))
        rows.append((n[i], d[i], loss[i] + 0.002, d[i]))
    p = _csv(tmp_path, "n_params,n_tokens,loss,unique_tokens", rows)
    r = runner.invoke(app, ["fit", str(p), "--json", "--bootstrap", "0", "--approach", "2"])
    assert r.exit_code == 0, r.output
    noise = {k: v for k, v in json.loads(r.stdout)["noise"].items() if k != "warnings"}
    assert len(noise) == 8
    for v in noise.values():
        assert v["std"] == pytest.approx(0.002 / np.sqrt(2), rel=1e-6)
        assert v["runs"] == 2


def test_figures_say_which_loss_keep_every_point_and_read_alike(tmp_path):
    """The y label names the loss (a sweep's validation loss, a table's column as given),
    points above the shown range are counted on the figure, the compute axes share one
    tick format with no minor labels, and the contour colours span the runs' region."""
    from chinchilla.fit.results import FitOptions, fit_all
    from chinchilla.plots import plot_contours, plot_envelope, plot_residuals

    path = reference_file("epoch_chinchilla_fig4_points.csv")
    rep = fit_all(load_results(path), FitOptions(bootstrap=0))
    ax = plot_envelope(rep)
    assert ax.get_ylabel().startswith("loss (as given)")
    top = ax.get_ylim()[1]
    hidden = int(np.sum(rep.results.loss > top))
    notes = [t.get_text() for t in ax.texts]
    assert hidden > 0 and f"{hidden} point(s) above the top, not shown" in notes
    from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

    for axis in (ax, plot_residuals(rep)):  # unlabelled minor ticks: nothing collides
        assert isinstance(axis.xaxis.get_minor_formatter(), NullFormatter)
        assert isinstance(axis.xaxis.get_major_formatter(), LogFormatterSciNotation)
    c = plot_contours(rep)
    fill = c.collections[0] if c.collections else None
    assert fill is not None
    f = rep.approach3
    at_runs = np.log(f.loss(rep.results.n_params, rep.results.n_tokens) - f.E)
    lo, hi = fill.levels[0], fill.levels[-1]
    span = at_runs.max() - at_runs.min()
    assert lo <= at_runs.min() and hi >= at_runs.max()
    assert hi - lo < 2.5 * span  # not spent on the extrapolated corner


def test_approach2_parabola_takes_distinct_sizes_not_rows():
    """Repeats of one size count once: a budget with ten seeds of its best size still
    fits its parabola through the 7 sizes nearest the minimum, and a table whose rows
    all come twice gives the same Approach 2 answer as the table once."""
    from chinchilla.fit.isoflop import near_minimum

    n = np.array([1e6, 2e6, 4e6, 8e6, 16e6, 32e6, 64e6, 128e6, 256e6] + [8e6] * 10)
    loss = np.abs(np.log(n / 8e6)) * 0.1 + 2.0
    idx = near_minimum(n, loss)
    assert len(np.unique(n[idx])) == 7 and np.sum(n[idx] == 8e6) == 11

    n, d, loss = synthetic_points()
    budgets = group_budgets(6 * n * d, None)
    once = fit_isoflop(n, d, loss, budgets)
    twice = fit_isoflop(np.tile(n, 2), np.tile(d, 2), np.tile(loss, 2), np.tile(budgets, 2))
    assert twice.n_law.exponent == pytest.approx(once.n_law.exponent, abs=1e-9)


def test_exit_status_1_only_when_a_requested_fit_has_no_answer(tmp_path):
    n, d, loss = synthetic_points()
    p = _csv(tmp_path, "N,D,loss", zip(n, d, loss, strict=True))
    # by default, Approach 1 (no curves) is skipped but 2 and 3 answer: exit 0
    r = runner.invoke(app, ["fit", str(p), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    assert "approach1 skipped" in r.stdout
    # named, it has no answer: exit 1, the fit still printed
    r = runner.invoke(app, ["fit", str(p), "--bootstrap", "0", "--approach", "1", "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["skipped"]["approach1"]
    assert "Approach 1: skipped" in r.stderr
    r = runner.invoke(app, ["fit", str(p), "--bootstrap", "0", "--approach", "3"])
    assert r.exit_code == 0, r.output
