import math

import numpy as np
import pandas as pd
import pytest

from chinchilla.config import load_config
from chinchilla.data import load_data
from chinchilla.grid import plan
from chinchilla.train import eval_steps, lr_at, train_run


def test_cosine_schedule_warms_up_and_ends_at_a_tenth(micro_config):
    cfg = load_config(micro_config, ["train.warmup_frac=0.1"])
    lrs = [lr_at(s, 100, 1.0, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_wsd_schedule_holds_then_decays(micro_config):
    cfg = load_config(
        micro_config, ["train.schedule=wsd", "train.decay_frac=0.2", "train.warmup_frac=0.05"]
    )
    lrs = [lr_at(s, 100, 1.0, cfg) for s in range(100)]
    assert lrs[50] == lrs[79] == 1.0
    assert lrs[-1] == pytest.approx(0.1)


def test_eval_steps_end_at_the_last_step():
    assert max(eval_steps(37, 4)) == 37 and len(eval_steps(37, 4)) == 4


@pytest.fixture
def micro(micro_config, tmp_path):
    cfg = load_config(micro_config, ["train.checkpoint_every_s=0"])
    p = plan(cfg)
    data = load_data(cfg, tmp_path / "data", max(r.n_tokens for r in p.runs))
    return cfg, p.runs[0], data


def test_a_run_learns_and_is_reproducible(micro):
    cfg, run, data = micro
    a = train_run(run, cfg, data)
    b = train_run(run, cfg, data)
    assert a.status == "ok" and a.steps_done == run.steps
    assert a.curve[-1]["train_loss"] < a.curve[0]["train_loss"]
    assert math.isfinite(a.loss) and a.loss == b.loss
    assert [r["train_loss"] for r in a.curve] == [r["train_loss"] for r in b.curve]


def test_resume_continues_the_same_curve(micro, tmp_path, monkeypatch):
    cfg, run, data = micro
    full = train_run(run, cfg, data)
    ckpt = tmp_path / "run.pt"

    class Stop(Exception):
        pass

    def stop_midway(info):
        if info["step"] >= run.steps // 2:
            raise Stop

    import dataclasses

    every_step = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, checkpoint_every_s=1e-9)
    )
    with pytest.raises(Stop):
        train_run(run, every_step, data, checkpoint=ckpt, on_progress=stop_midway)
    assert ckpt.exists()
    resumed = train_run(run, every_step, data, checkpoint=ckpt)
    assert resumed.resumed_from is not None and 0 < resumed.resumed_from < run.steps
    steps = [r["step"] for r in resumed.curve]
    assert steps == sorted(set(steps)) == [r["step"] for r in full.curve]
    np.testing.assert_allclose(
        [r["train_loss"] for r in resumed.curve], [r["train_loss"] for r in full.curve], rtol=1e-5
    )
    assert resumed.loss == pytest.approx(full.loss, rel=1e-5)


def test_resume_takes_the_rng_state_back_from_the_device(micro, tmp_path, monkeypatch):
    """On CUDA the checkpoint is loaded with map_location='cuda', which moves the CPU RNG
    state onto the GPU too; torch.set_rng_state refuses it there (found on an H200: every
    resumed run failed with 'RNG state must be a torch.ByteTensor'). Emulated here: the
    loaded RNG state is an object that only `.cpu()` turns back into the ByteTensor."""
    import dataclasses

    import chinchilla.train as train_mod

    class OnDevice:
        def __init__(self, tensor):
            self.tensor = tensor

        def cpu(self):
            return self.tensor

    loader = train_mod.load_checkpoint

    def load_to_device(path, device):
        state = loader(path, device)
        if state is not None:
            state["rng"] = OnDevice(state["rng"])
        return state

    cfg, run, data = micro
    full = train_run(run, cfg, data)
    every_step = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, checkpoint_every_s=1e-9)
    )
    ckpt = tmp_path / "run.pt"

    def stop_midway(info):
        if info["step"] >= run.steps // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(run, every_step, data, checkpoint=ckpt, on_progress=stop_midway)
    monkeypatch.setattr(train_mod, "load_checkpoint", load_to_device)
    resumed = train_run(run, every_step, data, checkpoint=ckpt)
    assert resumed.resumed_from is not None and resumed.status == "ok"
    assert resumed.loss == pytest.approx(full.loss, rel=1e-5)


def test_divergence_is_reported_with_the_partial_curve(micro):
    cfg, run, data = micro
    import dataclasses

    hot = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e9, grad_clip=0.0))
    res = train_run(dataclasses.replace(run, lr=1e9), hot, data)
    assert res.status == "diverged"
    assert (
        res.curve and res.steps_done < run.steps or not math.isfinite(res.curve[-1]["train_loss"])
    )


def _with_train(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))


def test_micro_batches_give_the_curve_of_one_full_batch(micro):
    cfg, run, data = micro  # batch of 8 sequences
    full = train_run(run, _with_train(cfg, micro_batch_size=8), data)
    split = train_run(run, _with_train(cfg, micro_batch_size=2), data)
    assert full.micro_batch_size == 8 and split.micro_batch_size == 2
    np.testing.assert_allclose(
        [r["train_loss"] for r in split.curve], [r["train_loss"] for r in full.curve], rtol=2e-5
    )
    assert split.loss == pytest.approx(full.loss, rel=2e-5)


def test_out_of_memory_backs_off_and_continues(micro, monkeypatch):
    import torch

    from chinchilla.model import GPT

    cfg, run, data = micro
    reference = train_run(run, _with_train(cfg, micro_batch_size=2), data)
    real_loss = GPT.loss

    def small_memory(self, batch):  # a device that holds 2 sequences at a time
        if batch.shape[0] > 2 and torch.is_grad_enabled():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_loss(self, batch)

    monkeypatch.setattr(GPT, "loss", small_memory)
    res = train_run(run, _with_train(cfg, micro_batch_size=8), data)
    assert res.status == "ok" and res.micro_batch_size == 2 and res.oom_backoffs == [8, 4]
    np.testing.assert_allclose(
        [r["train_loss"] for r in res.curve], [r["train_loss"] for r in reference.curve], rtol=1e-6
    )


def test_out_of_memory_at_one_sequence_fails_the_run(micro, monkeypatch):
    import torch

    from chinchilla.model import GPT

    def no_memory(self, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(GPT, "loss", no_memory)
    cfg, run, data = micro
    with pytest.raises(torch.cuda.OutOfMemoryError):
        train_run(run, cfg, data)


def test_a_corrupt_checkpoint_is_set_aside_and_the_run_starts_over(micro, tmp_path, capsys):
    cfg, run, data = micro
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes(b"not a checkpoint")
    res = train_run(run, cfg, data, checkpoint=ckpt)
    assert res.status == "ok" and res.resumed_from is None
    assert (tmp_path / "run.pt.bad").exists() and not ckpt.exists()
    assert "set aside" in capsys.readouterr().err


def test_warm_up_is_timed_apart_from_steps(micro):
    cfg, run, data = micro
    res = train_run(run, cfg, data)
    assert res.warmup_seconds > 0 and res.step_seconds > 0
    tokens = (run.steps - 1) * run.batch_size * run.shape.seq_len
    assert res.tokens_per_second == pytest.approx(tokens / res.step_seconds)


def test_compiled_runs_in_one_process_compile_afresh_and_match_eager(micro):
    cfg, run, data = micro
    eager = train_run(run, cfg, data)
    compiled_cfg = _with_train(cfg, compile=True)
    first = train_run(run, compiled_cfg, data)
    second = train_run(run, compiled_cfg, data)
    for res in (first, second):  # one graph for training, one for evaluation, per run
        assert res.compile == {"graphs": 2, "recompiles": 0}
        assert res.loss == pytest.approx(eager.loss, rel=1e-3)
    assert eager.compile is None


def test_a_repeat_trains_with_its_own_seed(micro):
    import dataclasses

    cfg, run, data = micro
    base = train_run(run, cfg, data)
    repeat = dataclasses.replace(run, seed=cfg.train.seed + 1)
    a, b = train_run(repeat, cfg, data), train_run(repeat, cfg, data)
    assert a.loss == b.loss and a.loss != base.loss


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_loss_by_position_is_recorded_and_averages_to_the_loss(micro_config, tmp_path, arch):
    from chinchilla.sweep import run_sweep

    over = ["grid.budgets=[2e8]", f"model.arch={arch}"]
    plain = run_sweep(load_config(micro_config, over), tmp_path / "plain", live=False)
    cfg = load_config(micro_config, [*over, "train.position_loss=true"])
    run_sweep(cfg, tmp_path / "pos", live=False)
    a = pd.read_parquet(tmp_path / "plain" / "runs.parquet").set_index("run_id")
    b = pd.read_parquet(tmp_path / "pos" / "runs.parquet").set_index("run_id")
    assert plain.statuses == {"ok": 2}
    assert sorted(a.index) == sorted(b.index)  # logging only: the same run ids
    assert a["loss_by_position"].isna().all()
    for rid, row in b.iterrows():
        per = np.array([float(v) for v in row["loss_by_position"].split(",")])
        assert len(per) == cfg.model.seq_len
        assert row["loss"] == a.loc[rid, "loss"]  # the recorded loss does not change
        assert per.mean() == pytest.approx(row["loss"], rel=1e-5)
