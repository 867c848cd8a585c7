"""`chinchilla verify`: a sweep's fit predicts a new budget's optimum; three runs there
are trained with the sweep's recipe and compared."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import dump_yaml, load_config
from chinchilla.fit.parametric import parametric_loss

from .conftest import kill_when

LAW = {"E": 1.6, "A": 15.0, "B": 60.0, "alpha": 0.3, "beta": 0.3}


def _sweep_from_a_law(micro_config, out):
    """A sweep directory whose runs.parquet holds losses from LAW (3 budgets x 5 sizes
    around the law's optimum), with the micro config: verify then trains real runs."""
    cfg = load_config(micro_config, ["model.head_dim=4", "model.aspect_ratio=8"])
    out.mkdir()
    (out / "config.yaml").write_text(dump_yaml(cfg))
    rows = []
    for c in (1e8, 3e8, 1e9):
        n_opt = 0.1 * (c / 6) ** 0.5
        for n in n_opt * np.logspace(-0.6, 0.6, 5):
            d = c / (6 * n)
            rows.append(
                {
                    "run_id": f"{c:.0e}-{n:.0f}",
                    "budget": c,
                    "n_params": n,
                    "n_tokens": d,
                    "flops": c,
                    "loss": float(parametric_loss(n, d, **LAW)),
                    "status": "ok",
                }
            )
    pd.DataFrame(rows).to_parquet(out / "runs.parquet")


def test_verify_trains_the_predicted_optimum_and_compares(micro_config, tmp_path):
    out = tmp_path / "sweep"
    _sweep_from_a_law(micro_config, out)
    args = ["verify", str(out), "--budget", "2e9", "--bootstrap", "20", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["extrapolation"] == 2.0 and len(doc["runs"]) == 3
    ns = [x["n_params"] for x in doc["runs"]]
    assert ns == sorted(ns) and ns[-1] / ns[0] > 2  # N/2, N, 2N (nearest shapes)
    assert {a["approach"] for a in doc["approaches"]} >= {2, 3}
    for a in doc["approaches"]:  # each approach predicts the minimum loss its own way
        assert a["loss_predicted"] is not None and np.isfinite(a["loss_predicted"])
    for a in doc["approaches"]:
        assert a["n_opt_ratio"] > 0 and a["n_opt_ci"] is not None
    vdir = out / "verify-2e+09"
    assert (vdir / "verify.json").exists() and (vdir / "fit_verify.png").stat().st_size > 0
    runs = pd.read_parquet(vdir / "runs.parquet")
    assert (runs["planned_by"] == "verify").all() and (runs["status"] == "ok").all()
    # rerun: the runs are recorded, nothing is trained again, the same answer
    again = json.loads(CliRunner().invoke(app, args).stdout)
    assert again["measured"] == doc["measured"]
    assert len(pd.read_parquet(vdir / "runs.parquet")) == 3


def test_verify_needs_a_sweep_directory(tmp_path):
    r = CliRunner().invoke(app, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "not a sweep directory" in r.output


def test_the_minimum_loss_law_and_its_interval():
    """L(C) = E + k C^-gamma through minimum losses: recovered from exact points, an
    interval that holds the truth from noisy ones, none from three points."""
    from chinchilla.fit.backtest import loss_law_at, loss_law_interval

    c = np.logspace(10, 12, 6)

    def truth(x):
        return 1.5 + 40 * x**-0.15

    assert loss_law_at(c, truth(c), 4e12) == __import__("pytest").approx(truth(4e12), rel=1e-6)
    noisy = truth(c) * np.exp(np.random.default_rng(0).normal(0, 0.004, len(c)))
    lo, hi = loss_law_interval(c, noisy, 4e12, n_resamples=200)
    assert lo < truth(4e12) < hi and hi - lo < 0.2
    assert loss_law_interval(c[:3], truth(c[:3]), 4e12) is None


def test_verify_resumes_after_sigkill(micro_config, tmp_path):
    """Killed (with its workers) once a verification run has a checkpoint, then rerun:
    the three runs are each recorded once, and the answer is the uninterrupted one's."""
    import sys

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for out in (clean, killed):
        _sweep_from_a_law(micro_config, out)
        cfg = (
            (out / "config.yaml")
            .read_text()
            .replace("checkpoint_every_s: 60.0", "checkpoint_every_s: 0.05")
        )
        (out / "config.yaml").write_text(cfg)
    args = ["verify", "--budget", "4e9", "--bootstrap", "20", "--json"]
    ref = json.loads(CliRunner().invoke(app, [args[0], str(clean), *args[1:]]).stdout)
    cmd = [sys.executable, "-m", "chinchilla", args[0], str(killed), *args[1:]]
    vdir = killed / "verify-4e+09"
    kill_when(
        cmd,
        lambda: (vdir / "checkpoints").exists() and any((vdir / "checkpoints").glob("*.pt")),
        "a verification run wrote a checkpoint",
    )
    again = json.loads(CliRunner().invoke(app, [args[0], str(killed), *args[1:]]).stdout)
    runs = pd.read_parquet(vdir / "runs.parquet")
    curves = pd.read_parquet(vdir / "curves.parquet")
    assert len(runs) == 3 and runs["run_id"].is_unique and (runs["status"] == "ok").all()
    assert not curves.duplicated(["run_id", "step"]).any()
    assert runs["resumed_from"].notna().any()  # the killed run continued, not restarted
    np.testing.assert_allclose(
        [r["loss"] for r in again["runs"]], [r["loss"] for r in ref["runs"]], rtol=1e-5
    )
    # float32 sums in another order after a resume: the vertex moves by about 1e-6
    assert again["measured"]["n_opt"] == __import__("pytest").approx(
        ref["measured"]["n_opt"], rel=1e-4
    )
