"""`chinchilla verify`: a sweep's fit predicts a new budget's optimum; three runs there
are trained with the sweep's recipe and compared."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import dump_yaml, load_config
from chinchilla.fit.parametric import parametric_loss

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
