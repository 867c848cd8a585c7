import csv
import itertools

import pytest
import torch

from chinchilla.accounting import (
    ModelShape,
    chinchilla_flops_per_sequence,
    count_params,
    flops_per_token_6n,
)
from chinchilla.model import GPT

from .conftest import reference_file

SHAPES = [
    ModelShape(d, L, h, d // h if hd is None else hd, ff, V, T, tied, pos)
    for (d, h, hd), L, ff, V, T, tied, pos in itertools.product(
        [(32, 4, None), (48, 3, 16), (64, 2, 24)],
        [1, 3],
        [64, 100],
        [17, 256],
        [8, 33],
        [True, False],
        ["learned", "rotary"],
    )
]


@pytest.mark.parametrize("shape", SHAPES[::3])
def test_count_params_equals_numel(shape):
    model = GPT(shape)
    counts = count_params(shape)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.nonembedding == model.num_params(non_embedding=True)


def test_nonembedding_drops_every_vocabulary_and_position_matrix():
    s = ModelShape(64, 2, 4, 16, 256, 1000, 128, tied_embeddings=False, position="learned")
    c = count_params(s)
    assert c.total - c.nonembedding == 1000 * 64 * 2 + 128 * 64


def _a9_params(d, ffw, kv, h, L, vocab=32000):
    """Table A9's count: N = L (4 d kv h + 2 d ffw + d^2) + 32000 d (reference README)."""
    return L * (4 * d * kv * h + 2 * d * ffw + d * d) + vocab * d


@pytest.mark.parametrize("params_million, ratio", [(74, 1.03), (306, 1.10)])
def test_appendix_f_over_6nd_matches_table_a4(params_million, ratio):
    # Table A4 lists 73M and 305M: the d=640 / d=1024 rows of Table A9. Its FLOP count
    # leaves out the two vocabulary terms; its N is Table A9's (one vocabulary matrix).
    rows = list(csv.DictReader(reference_file("chinchilla_table_a9_shapes.csv").open()))
    row = next(r for r in rows if int(r["params_million"]) == params_million)
    d, ffw, kv, h, L = (
        int(row[k]) for k in ("d_model", "ffw_size", "kv_size", "n_heads", "n_layers")
    )
    shape = ModelShape(d, L, h, kv, ffw, 32000, 2048)
    n = _a9_params(d, ffw, kv, h, L)
    assert n / 1e6 == pytest.approx(params_million, rel=0.01)
    got = chinchilla_flops_per_sequence(shape, include_embeddings=False) / (
        flops_per_token_6n(n) * 2048
    )
    assert got == pytest.approx(ratio, abs=0.006)


def test_appendix_f_forward_is_a_third_of_training():
    s = ModelShape(128, 2, 4, 32, 512, 100, 64)
    with_emb = chinchilla_flops_per_sequence(s)
    without = chinchilla_flops_per_sequence(s, include_embeddings=False)
    assert with_emb - without == pytest.approx(3 * (2 * 64 * 100 * 128) * 2)


def test_model_forward_shapes_and_seeded_init():
    s = ModelShape(32, 2, 4, 8, 64, 50, 16, tied_embeddings=False, position="rotary")
    torch.manual_seed(0)
    a = GPT(s)
    torch.manual_seed(0)
    b = GPT(s)
    x = torch.randint(0, 50, (3, 17))
    assert a(x[:, :-1]).shape == (3, 16, 50)
    assert torch.equal(a.loss(x), b.loss(x))


# Peak memory measured on one H100 (shared/measurements/h100-2026-11-25.md, sections 1
# and 3; runs of configs/gpu_h100.yaml as it was then: vocabulary 4096, sequence 1024,
# head width 64, d_ff 4d, tied, rotary): d_model, n_layers, micro-batch, GiB.
H100_PEAKS = [
    (384, 5, 256, 32.5),
    (384, 8, 256, 44.4),
    (384, 9, 256, 48.4),
    (448, 9, 256, 54.5),
    (512, 8, 256, 55.3),
    (640, 6, 256, 52.9),
    (448, 9, 64, 14.3),
    (832, 13, 32, 17.3),
    (1216, 25, 16, 26.4),
]


def test_memory_estimate_matches_peaks_measured_on_an_h100():
    from chinchilla.accounting import training_memory_bytes

    for d, layers, micro, gib in H100_PEAKS:
        shape = ModelShape(d, layers, d // 64, 64, 4 * d, 4096, 1024, True, "rotary")
        est = training_memory_bytes(shape, micro) / 2**30
        assert est == pytest.approx(gib, rel=0.1), (d, layers, micro)


def test_gpu_plan_gives_every_run_a_micro_batch_that_fits():
    import json

    from typer.testing import CliRunner

    from chinchilla.cli import app

    from .conftest import ROOT

    r = CliRunner().invoke(app, ["plan", str(ROOT / "configs" / "gpu_h100.yaml"), "--json"])
    doc = json.loads(r.stdout)
    for run in doc["runs"]:
        assert run["batch_size"] % run["micro_batch_size"] == 0
        assert run["estimated_peak_memory_gib"] < 0.85 * 80
        assert run["steps"] >= 1000  # the recipe's floor
    assert not [w for w in doc["warnings"] if "micro-batch" in w]


RECURRENT = [
    ModelShape(d, L, 1, d, 0, V, T, tied, "none", arch)
    for arch, d, L, V, T, tied in itertools.product(
        ["lstm", "gru", "rnn"], [8, 24, 40], [1, 2, 3], [17, 256], [8, 33], [True, False]
    )
]


@pytest.mark.parametrize("shape", RECURRENT, ids=lambda s: f"{s.arch}-{s.d_model}x{s.n_layers}")
def test_recurrent_parameter_counts_equal_numel(shape):
    from chinchilla.model import build_model

    model = build_model(shape)
    counts = count_params(shape)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.nonembedding == model.num_params(non_embedding=True)
    assert counts.nonembedding == sum(p.numel() for p in model.rnn.parameters()) + 2 * shape.d_model


def _unrolled_gru(rnn, x):
    """nn.GRU written out step by step from its own weights (gate order r, z, n)."""
    B, T, _ = x.shape
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        h = x.new_zeros(B, rnn.hidden_size)
        outs = []
        for t in range(T):
            xr, xz, xn = (x[:, t] @ w_ih.T + b_ih).chunk(3, dim=1)
            hr, hz, hn = (h @ w_hh.T + b_hh).chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        x = torch.stack(outs, dim=1)
    return x


def _unrolled_lstm(rnn, x):
    """nn.LSTM written out step by step from its own weights (PyTorch's gate order i, f,
    g, o), so that a FLOP counter sees every matmul."""
    B, T, _ = x.shape
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
        h = x.new_zeros(B, rnn.hidden_size)
        c = x.new_zeros(B, rnn.hidden_size)
        outs = []
        for t in range(T):
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs, dim=1)
    return x


@pytest.mark.parametrize("arch", ["lstm", "gru", "rnn"])
def test_recurrent_matmul_flops_match_a_flop_counter(arch):
    """The matmul part of `recurrent_flops_per_token` (gate matmuls 4 g d^2 per layer,
    logits 2 V d) against torch's FlopCounterMode on the forward pass; the LSTM through an
    unrolled copy that gives the same outputs (the fused kernel hides its matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    from chinchilla.accounting import RECURRENT_GATES, recurrent_flops_per_token
    from chinchilla.model import Recurrent

    d, L, V, B, T = 24, 2, 50, 3, 16
    shape = ModelShape(d, L, 1, d, 0, V, T, True, "none", arch)
    model = Recurrent(shape)
    idx = torch.randint(0, V, (B, T))
    emb = model.wte(idx)
    recurrence = model.rnn
    unrolled = {"lstm": _unrolled_lstm, "gru": _unrolled_gru}.get(arch)
    if unrolled is not None:
        torch.testing.assert_close(
            unrolled(model.rnn, emb), model.rnn(emb)[0], rtol=1e-5, atol=1e-6
        )

        def recurrence(x):
            return (unrolled(model.rnn, x),)

    with FlopCounterMode(display=False) as fc:
        h = recurrence(emb)[0]
        torch.nn.functional.linear(model.ln_f(h), model.wte.weight)
    counted = fc.get_total_flops()
    g = RECURRENT_GATES[arch]
    matmuls_per_token = L * 4 * g * d * d + 2 * V * d
    assert counted == B * T * matmuls_per_token
    gates = {"lstm": 9, "gru": 7, "rnn": 1}[arch] * d
    forward = L * (4 * g * d * d + 2 * g * d + gates) + 2 * V * d + 2 * d * V
    assert recurrent_flops_per_token(shape) == 3 * forward
