"""Downstream tasks: the built-in task against the source's own probabilities, scoring
against an oracle model and hand-computed cases, task files refused before training,
and the metric fits against known curves."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from chinchilla.cli import app
from chinchilla.config import load_config
from chinchilla.data.synthetic import SyntheticSource, synthetic_source
from chinchilla.tasks import Task, build_continue, edit_distance, read_task_file, score

from .conftest import MICRO_YAML

runner = CliRunner()


def _cfg(tmp_path: Path, extra: str = "", name: str = "micro.yaml") -> Path:
    path = tmp_path / name
    path.write_text(MICRO_YAML + extra)
    return path


@pytest.mark.parametrize("copy", [0.0, 0.3])
def test_next_probs_are_the_probabilities_the_generator_draws_from(copy):
    src = SyntheticSource(24, (1, 2, 3), (0.3, 0.4, 0.3), 3, 512, 1.1, 0, 4 if copy else 0, copy)
    toks, nll = src.generate(64, 20, seed=1)
    for t in range(1, 20):
        p = src.next_probs(toks, t)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(p[np.arange(64), toks[:, t]], np.exp(-nll[:, t - 1]), rtol=1e-12)


class Oracle(torch.nn.Module):
    """A 'model' whose next-token distribution is the source's exact one."""

    def __init__(self, src: SyntheticSource):
        super().__init__()
        self.src = src

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = ids.numpy()
        out = np.stack([self.src.next_probs(x, t + 1) for t in range(x.shape[1])], axis=1)
        return torch.log(torch.as_tensor(out, dtype=torch.float64).clamp_min(1e-300))


def test_the_bayes_optimal_model_scores_the_ceiling(tmp_path):
    cfg = load_config(_cfg(tmp_path, "tasks: {continue_k: 5, prompts: 40, prompt_len: 6}\n"))
    task = build_continue(cfg)
    scores = score(Oracle(synthetic_source(cfg)), task, "cpu")
    for k in range(1, 6):
        assert scores[f"exact_match@{k}"] == 1.0
        assert scores[f"edit_distance@{k}"] == 0.0
        assert scores[f"logprob@{k}"] == pytest.approx(
            task.ceiling[f"logprob@{k}"], rel=1e-6
        )  # fp32
    # a uniform model: log(1/V) per token, and exact match only by argmax ties (id 0)
    uniform = torch.nn.Module()
    uniform.forward = lambda ids: torch.zeros(*ids.shape, 16)
    flat = score(uniform, task, "cpu")
    assert flat["logprob@5"] == pytest.approx(-np.log(16))
    first = np.stack(task.answers)[:, 0]
    assert flat["exact_match@1"] == pytest.approx(np.mean(first == 0))


def test_exact_match_is_all_k_right_and_falls_with_k(tmp_path):
    """A model right at each position with probability about q: exact match on k
    positions falls like q^k (checked against the answers directly)."""
    cfg = load_config(_cfg(tmp_path, "tasks: {continue_k: 6, prompts: 400, prompt_len: 4}\n"))
    task = build_continue(cfg)
    src = synthetic_source(cfg)
    rng = np.random.default_rng(0)

    class Noisy(Oracle):
        def forward(self, ids):
            logp = super().forward(ids)
            swap = torch.as_tensor(rng.random(ids.shape) < 0.3)  # 30%: another argmax
            noise = torch.as_tensor(rng.random(logp.shape)) * 50
            return torch.where(swap[..., None], noise, logp)

    s = score(Noisy(src), task, "cpu", batch=1000)
    em = [s[f"exact_match@{k}"] for k in range(1, 7)]
    assert all(a >= b for a, b in zip(em, em[1:], strict=False))
    assert em[0] == pytest.approx(0.7, abs=0.07) and em[5] == pytest.approx(0.7**6, abs=0.05)


def test_edit_distance_by_hand():
    a = np.array
    assert edit_distance(a([1, 2, 3]), a([1, 2, 3])) == 0
    assert edit_distance(a([1, 2, 3]), a([1, 3])) == 1
    assert edit_distance(a([1, 2, 3]), a([3, 2, 1])) == 2
    assert edit_distance(a([]), a([4, 5])) == 2


def test_answer_and_choice_tasks_by_hand():
    """A model that always predicts token 1 with probability 1/2 and spreads the rest."""

    class Fixed(torch.nn.Module):
        def forward(self, ids):
            p = torch.full((*ids.shape, 4), 1 / 6)
            p[..., 1] = 0.5
            return torch.log(p)

    answers = Task(
        "a", "answer", [np.array([0, 2])] * 2, answers=[np.array([1, 1]), np.array([2, 1])]
    )
    s = score(Fixed(), answers, "cpu")
    assert s["exact_match"] == 0.5  # greedy generation is [1, 1]
    assert s["edit_distance"] == pytest.approx((0 + 0.5) / 2)
    assert s["logprob"] == pytest.approx((np.log(0.5) + (np.log(1 / 6) + np.log(0.5)) / 2) / 2)
    choices = Task(
        "c",
        "choice",
        [np.array([0])] * 2,
        choices=[[np.array([1]), np.array([2, 3])], [np.array([2]), np.array([1])]],
        correct=[0, 0],
    )
    s = score(Fixed(), choices, "cpu")
    p_right = 0.5 / (0.5 + 1 / 36)  # item 1: [1] against [2, 3]
    assert s["accuracy"] == 0.5 and s["chance"] == 0.5
    assert s["brier"] == pytest.approx((2 * (1 - p_right) ** 2 + 2 * 0.75**2) / 2)
    assert s["logprob"] == pytest.approx((np.log(0.5) + np.log(1 / 6)) / 2)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ('{"prompt": [1, 2], "answer": [3]', "not valid JSON"),
        ('{"prompt": [1, 2], "answer": []}', "'answer' is empty"),
        ('{"prompt": [1, 99], "answer": [3]}', "token id 99, unknown to a vocabulary of 16"),
        ('{"prompt": "hello", "answer": [3]}', "no tokenizer"),
        ('{"prompt": [1], "choices": [[2], [3]], "answer": 5}', "not a choice's index"),
        ('{"question": [1], "answer": [3]}', "'prompt' and 'answer'"),
    ],
)
def test_a_bad_task_file_stops_the_sweep_before_training(tmp_path, line, fragment):
    tasks = tmp_path / "tasks.jsonl"
    good = (
        '{"prompt": [1], "choices": [[2], [3]], "answer": 0}'
        if "choices" in line
        else '{"prompt": [1, 2], "answer": [3]}'
    )
    tasks.write_text(good + "\n" + line + "\n")
    cfg = _cfg(tmp_path, "tasks: {file: tasks.jsonl}\n")
    out = tmp_path / "sweep"
    r = runner.invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("error")]
    assert len(lines) == 1 and fragment in lines[0] and "tasks.jsonl:2" in lines[0], r.output
    assert "Traceback" not in r.output
    assert not list((out / "parts").glob("*")) if (out / "parts").exists() else True
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("*.pt"))
    tasks.write_text('{"prompt": [1, 2], "answer": [3]}\n')  # corrected: not blocked
    r = runner.invoke(app, ["plan", str(cfg)])
    assert r.exit_code == 0


def test_text_tasks_use_the_sweeps_tokenizer(tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(
        json.dumps({"prompt": "ab", "answer": "c"})
        + "\n"
        + json.dumps({"prompt": "x", "choices": ["yes", "no"], "answer": "no"})
        + "\n"
    )
    with pytest.raises(Exception, match="mixes choice items"):
        read_task_file(tasks, "t", vocab=257, seq_len=16, encode=lambda s: list(s.encode()))
    tasks.write_text(json.dumps({"prompt": "héllo", "answer": "wörld"}) + "\n")
    t = read_task_file(tasks, "t", vocab=257, seq_len=8, encode=lambda s: list(s.encode()))
    assert list(t.answers[0]) == list("wörld".encode())  # 6 bytes
    assert len(t.prompts[0]) == 8 - 6 + 1  # the prompt's end kept: the answer fits


def test_metrics_are_recorded_and_leave_training_unchanged(tmp_path):
    from chinchilla.sweep import run_sweep

    tasks = tmp_path / "qa.jsonl"
    tasks.write_text('{"prompt": [0, 3, 4], "answer": [5, 6]}\n{"prompt": [0, 7], "answer": [2]}\n')
    plain = load_config(_cfg(tmp_path))
    with_tasks = load_config(
        _cfg(
            tmp_path,
            "tasks: {continue_k: 4, prompts: 32, prompt_len: 8, file: qa.jsonl, every_eval: true}\n",
            name="tasks.yaml",
        )
    )
    run_sweep(plain, tmp_path / "a", live=False, workers=1)
    run_sweep(with_tasks, tmp_path / "b", live=False, workers=1)
    a = pd.read_parquet(tmp_path / "a" / "runs.parquet").set_index("run_id")
    b = pd.read_parquet(tmp_path / "b" / "runs.parquet").set_index("run_id")
    assert list(a.index) == list(b.index)  # tasks do not change what a run is
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert not (tmp_path / "a" / "metrics.parquet").exists()
    m = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    assert set(m["task"]) == {"continue", "qa"}
    assert {"exact_match@4", "logprob@1", "edit_distance@2"} <= set(m["metric"])
    assert {"exact_match", "logprob", "edit_distance"} <= set(m[m["task"] == "qa"]["metric"])
    per_run = m.groupby("run_id")["step"].nunique()
    assert (per_run == 2).all()  # every_eval: both evaluations
    assert (b["task_seconds"] > 0).all()
    described = json.loads((tmp_path / "b" / "tasks.json").read_text())
    assert [t["name"] for t in described] == ["continue", "qa"]


def test_metric_fit_recovers_known_curves(tmp_path):
    """A sweep table whose metrics are exact functions of loss and compute: the fits
    give back the functions' parameters."""
    from chinchilla.fit.metrics import MetricTable, metric_fit

    rows = []
    rng = np.random.default_rng(1)
    for b in (1e12, 3e12, 1e13, 3e13, 1e14):
        for n in (1e5, 2e5, 4e5):
            loss = 1.5 + 500 * b**-0.25 + rng.uniform(0, 0.05)
            rows.append({"run_id": f"{b}-{n}", "budget": b, "N": n, "D": b / (6 * n), "loss": loss})
    df = pd.DataFrame(rows)
    df["C"] = 6 * df["N"] * df["D"]
    df["t/exact_match@3"] = 1 / (1 + np.exp((df["loss"] - 1.9) / 0.05))
    best = -0.5
    df["t/logprob@3"] = best - 40 * df["C"] ** -0.2
    table = MetricTable(df, ["t/exact_match@3", "t/logprob@3"], "total", {"t/logprob@3": best})
    sharp = metric_fit(table, "t/exact_match@3", bootstrap=50)
    assert sharp["params"]["loss_mid"]["value"] == pytest.approx(1.9, abs=1e-4)
    assert sharp["params"]["loss_width"]["value"] == pytest.approx(0.05, rel=1e-3)
    smooth = metric_fit(table, "logprob@3", bootstrap=50)
    assert smooth["params"]["b"]["value"] == pytest.approx(0.2, rel=1e-9)
    big = smooth["predictions"][-1]
    assert big["value"] == pytest.approx(best - 40 * big["C"] ** -0.2, rel=1e-9)
    assert big["value"] < best  # never beyond the best score


def test_fit_metric_cli_on_a_sweep(tmp_path):
    from chinchilla.sweep import run_sweep

    yaml = MICRO_YAML.replace("budgets: [2e8, 6e8]", "budgets: [1e8, 3e8, 9e8]")
    path = tmp_path / "m.yaml"
    path.write_text(yaml + "tasks: {continue_k: 4, prompts: 64, prompt_len: 8}\n")
    run_sweep(load_config(path), tmp_path / "s", live=False, workers=1)
    r = runner.invoke(app, ["fit", str(tmp_path / "s"), "--metric", "exact_match@4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s" / "fit_emergence_continue.png").exists()
    doc = json.loads((tmp_path / "s" / "metric_continue_exact_match_at_4.json").read_text())
    assert doc["kind"] == "sharp" and len(doc["frontier"]) == 3 and doc["ceiling"] == 1.0
    assert "exact_match@4" in r.output and "two-step" in r.output
    bad = runner.invoke(app, ["fit", str(tmp_path / "s"), "--metric", "nope"])
    assert bad.exit_code == 2 and "no metric 'nope'" in bad.output
