"""`make bench`: speed and memory, as ratios measured in this one run.

1. training step FLOP/s (Appendix F count) / torch.matmul FLOP/s of a similar size, CPU;
2. Approach 3 fit: a per-start scipy L-BFGS-B loop vs the batched multistart (the paper's
   grid and the default profile starts) at three Huber deltas, and whole processes;
3. 1,000 bootstrap refits;
4. sweep overhead (each worker's time outside training steps and evaluations, serially
   and with 2 workers) and memory per run;
5. peak memory of a sweep over a 10 MB and a 1 GB corpus, and of `prepare` over 100 MB
   and 1 GB; 6. `chinchilla prepare` tokenizing MB/s
   on one process and on every usable one; 7. `chinchilla tune` on a 300-row tuning table:
   whole processes against the 2 s goal, and the batched bootstrap refits against a
   plain scipy least_squares loop over the same resamples.
Set BENCH_QUICK=1 to skip the slowest parts.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EPOCH = ROOT.parent / "shared" / "reference" / "epoch_chinchilla_fig4_points.csv"
QUICK = os.environ.get("BENCH_QUICK") == "1"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_training() -> None:
    import torch

    from chinchilla.accounting import ModelShape, chinchilla_flops_per_token, count_params
    from chinchilla.model import GPT

    print("1. training step vs torch.matmul (CPU, fp32, same process)")
    print(f"   {'shape':<28}{'N total':>10}{'step GFLOP/s':>14}{'matmul GFLOP/s':>16}{'ratio':>8}")
    for d, layers, T, B in (
        (128, 4, 128, 32),
        (256, 4, 128, 16),
        (256, 8, 128, 16),
        (384, 6, 128, 16),
    ):
        shape = ModelShape(d, layers, d // 64, 64, 4 * d, 256, T)
        torch.manual_seed(0)
        model = GPT(shape)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, 256, (B, T + 1))

        def step(model=model, opt=opt, x=x):
            loss = model.loss(x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        k = 10
        t = time.perf_counter()
        for _ in range(k):
            step()
        step_rate = chinchilla_flops_per_token(shape) * B * T * k / (time.perf_counter() - t)
        # the model's largest matmul: (B*T, d) @ (d, 4d)
        a, b = torch.randn(B * T, d), torch.randn(d, 4 * d)
        for _ in range(3):
            a @ b
        reps = 50
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        mm_rate = 2 * B * T * d * 4 * d * reps / (time.perf_counter() - t)
        n = count_params(shape).total
        print(
            f"   d={d} L={layers} T={T} B={B:<10}{n / 1e6:>9.2f}M{step_rate / 1e9:>14.1f}"
            f"{mm_rate / 1e9:>16.1f}{step_rate / mm_rate:>8.2f}"
        )


def epoch_points():
    if EPOCH.exists():
        rows = list(csv.DictReader(EPOCH.open()))
        n = np.array([float(r["Model Size"]) for r in rows])
        c = np.array([float(r["Training FLOP"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        keep = np.argsort(loss)[:240]
        return n[keep], (c / (6 * n))[keep], loss[keep], "Epoch's 240 points"
    from chinchilla.fit.parametric import parametric_loss

    rng = np.random.default_rng(0)
    n = np.exp(rng.uniform(np.log(4e7), np.log(1.6e10), 245))
    d = np.exp(rng.uniform(np.log(5e9), np.log(5e11), 245))
    loss = parametric_loss(n, d, 1.8, 480, 2100, 0.35, 0.37) * np.exp(rng.normal(0, 0.01, 245))
    return n, d, loss, "245 synthetic points"


def _fit_seconds(path: Path, *args: str) -> float:
    """Median wall time of 3 whole `chinchilla fit PATH ARGS...` processes."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "chinchilla", "fit", str(path), *args],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _fit_process(path: Path, *flags: str) -> float:
    """Median wall time of 3 whole `chinchilla fit --approach 3 --bootstrap 0` processes."""
    return _fit_seconds(path, "--approach", "3", "--json", "--bootstrap", "0", *flags)


def _write_points(path: Path, n, d, loss) -> Path:
    """A CSV of (N, D, loss) rows, full float precision."""
    with path.open("w") as fh:
        fh.write("N,D,loss\n")
        for row in zip(n, d, loss, strict=True):
            fh.write(",".join(repr(float(v)) for v in row) + "\n")
    return path


def _loop_imports() -> float:
    """Median wall time of 3 processes that only import what the loop needs."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        code = "import numpy, scipy.optimize, scipy.special"
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_fit() -> None:
    sys.path.insert(0, str(ROOT))
    from chinchilla.fit.bootstrap import resample_counts
    from chinchilla.fit.parametric import (
        fit_parametric,
        paper_start_grid,
        profile_starts,
        refit_many,
    )
    from tests.scipy_loop import loop_fit

    n, d, loss, label = epoch_points()
    print(f"\n2. Approach 3 on {label} against a per-start loop over the paper's 4,500 starts")
    print("   (loop: scipy L-BFGS-B per start on an independent scipy.special objective;")
    print("   paper: the same 4,500 starts batched; profile: the default data-scaled starts)")
    grid = paper_start_grid()
    stride = 10 if QUICK else 1
    full = None
    for delta in (1e-2, 1e-3, 1e-4):
        t = time.perf_counter()
        _, f_loop = loop_fit(n, d, loss, grid[::stride], delta=delta)
        loop_s = (time.perf_counter() - t) * stride
        t = time.perf_counter()
        fit = fit_parametric(n, d, loss, delta=delta)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        starts = profile_starts(n, d, loss, delta=delta)
        prof = fit_parametric(n, d, loss, delta=delta, starts=starts)
        prof_s = time.perf_counter() - t
        if delta == 1e-3:
            full, loop_3 = fit, loop_s
        note = f" (every {stride}th start, time x{stride})" if stride > 1 else ""
        print(f"   delta {delta:g}: loop {loop_s:6.1f} s{note}, objective {f_loop:.10g}")
        for name, res, sec in (("paper", fit, fit_s), (f"profile ({len(starts)})", prof, prof_s)):
            print(
                f"      {name:<14}{sec:5.2f} s ({loop_s / sec:4.0f}x), objective "
                f"{res.objective:.10g} (relative gap to the loop "
                f"{(res.objective - f_loop) / f_loop:+.1e}); starts {res.starts}"
            )
    imports = _loop_imports()
    loop_process = loop_3 + imports
    print(
        f"   the loop as a process at delta 1e-3: {loop_3:.1f} s + {imports:.2f} s of imports "
        f"(numpy, scipy) = {loop_process:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_points(Path(tmp) / "points.csv", n, d, loss)
        for flags in ((), ("--starts", "paper")):
            proc = _fit_process(path, *flags)
            print(
                f"   whole `chinchilla fit --approach 3 --bootstrap 0 {' '.join(flags)}` process: "
                f"median {proc:.2f} s of 3; loop process / this process: {loop_process / proc:.0f}x"
            )
    print("\n3. bootstrap refits (from the full fit's best and distinct optima, all at once)")
    t = time.perf_counter()
    counts = resample_counts(len(n), 1000, seed=0)
    thetas = refit_many(full, n, d, loss, counts)
    alpha = thetas[:, 3][np.isfinite(thetas[:, 3])]
    print(
        f"   1,000 refits: {time.perf_counter() - t:.1f} s, {len(thetas) - len(alpha)} failed; "
        f"alpha 80% interval [{np.percentile(alpha, 10):.4f}, {np.percentile(alpha, 90):.4f}], "
        f"95% [{np.percentile(alpha, 2.5):.4f}, {np.percentile(alpha, 97.5):.4f}]"
    )


def bench_small_bootstrap() -> None:
    """Approach 3's bootstrap on small designs, as it ships (log losses redrawn around the
    fit, the design fixed, each resample refitted from the full fit's best optimum)
    against refitting every resample from the full fit's optima and every 20th start of
    the paper's grid, and the whole `chinchilla fit` of a 12-row table."""

    from chinchilla.fit.data import Results
    from chinchilla.fit.optimize import minimize_continuation
    from chinchilla.fit.parametric import paper_start_grid, parametric_loss, refit_many
    from chinchilla.fit.results import FitOptions, fit_all

    print("\n3b. Approach 3 bootstrap on small designs (200 resamples; 3 budgets x k sizes)")
    rng = np.random.default_rng(0)
    truth = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    for k in (4, 5, 7):
        rows = []
        for c in (1e18, 3e18, 1e19):
            n_opt = (c / 6) ** 0.5 / 4
            for n in n_opt * np.geomspace(0.25, 4, k):
                d = c / (6 * n)
                rows.append((n, d, parametric_loss(n, d, **truth) * np.exp(rng.normal(0, 0.01))))
        n, d, loss = (np.array(v) for v in zip(*rows, strict=True))
        res = Results.from_arrays(n, d, loss, source="b")
        rep = fit_all(res, FitOptions(bootstrap=0))
        f3, sd = rep.approach3, rep.outliers.residual_sd
        fitted = np.log(parametric_loss(n, d, E=f3.E, A=f3.A, B=f3.B, alpha=f3.alpha, beta=f3.beta))
        z = fitted + sd * np.random.default_rng(3).standard_normal((200, len(n)))
        ones = np.ones_like(z)
        t = time.perf_counter()
        fast = refit_many(f3, n, d, np.exp(z), ones, screen=False)
        t_fast = time.perf_counter() - t
        x, y = np.log(n), np.log(d)
        starts = np.vstack([f3.theta[None], f3.basins, paper_start_grid()[::20]])
        t = time.perf_counter()
        r = minimize_continuation(
            np.tile(starts, (200, 1)),
            x,
            y,
            np.repeat(z, len(starts), axis=0),
            delta=f3.delta,
        )
        t_full = time.perf_counter() - t
        th = r.theta.reshape(200, len(starts), 5)
        f = np.where(r.certified, r.f, np.inf).reshape(200, len(starts))
        full = th[np.arange(200), f.argmin(axis=1)]
        a_fast = fast[:, 4] / (fast[:, 3] + fast[:, 4])
        a_full = full[:, 4] / (full[:, 3] + full[:, 4])
        print(
            f"   {len(n)} points: from the optimum {t_fast:.2f} s, every coarse start {t_full:.2f} s: "
            f"{t_full / t_fast:.1f}x; a 80% interval {np.nanpercentile(a_fast, [10, 90]).round(3)} "
            f"vs {np.nanpercentile(a_full, [10, 90]).round(3)}"
        )
    twelve = np.arange(12) * 7 // 4  # 12 of the last design's 21 points, spread over it
    with tempfile.TemporaryDirectory() as tmp:
        csv = _write_points(Path(tmp) / "t12.csv", n[twelve], d[twelve], loss[twelve])
        seconds = _fit_seconds(csv, "--out", tmp, "--no-plots")
    print(
        f"   whole `chinchilla fit` of a 12-row table, 200 resamples: median {seconds:.2f} s of 3"
    )


def bench_sweep() -> None:
    from chinchilla.config import load_config
    from chinchilla.progress import SweepProgress
    from chinchilla.sweep import run_sweep

    budgets = "[3e10]" if QUICK else "[3e10, 1e11]"
    print(f"\n4. sweep of configs/markov.yaml with grid.budgets={budgets}: overhead and memory")
    for workers in (1, 2):
        cfg = load_config(
            ROOT / "configs" / "markov.yaml",
            [f"grid.budgets={budgets}", f"execution.workers={workers}"],
        )
        rss = []
        original = SweepProgress.run_finished

        def record(self, run, row, original=original, rss=rss):
            rss.append(rss_mb())
            original(self, run, row)

        SweepProgress.run_finished = record
        with tempfile.TemporaryDirectory() as tmp:
            s = run_sweep(cfg, Path(tmp) / "sweep", live=False)
        SweepProgress.run_finished = original
        print(
            f"   {workers} worker(s): wall {s.wall_seconds:.1f} s, training steps "
            f"{s.step_seconds:.1f} s, evaluations {s.eval_seconds:.1f} s; in steps and "
            "evaluations / wall: "
            + ", ".join(f"{k.split('/')[-1]} {v:.1%}" for k, v in s.utilisation.items())
            + f"; outside both, per worker on average: {s.overhead_fraction:.1%}"
        )
        if workers == 1:  # the runs train in this process: its memory is theirs
            print("   resident memory after each run (MB): " + ", ".join(f"{v:.0f}" for v in rss))
            print(
                f"   growth from the first run to the last: {rss[-1] - rss[0]:+.0f} MB over "
                f"{len(rss) - 1} runs"
            )


_MEMORY_PROBE = """
import sys
from pathlib import Path
from chinchilla.config import load_config
from chinchilla.sweep import run_sweep
cfg = load_config(sys.argv[1], ["data.path=" + sys.argv[2], "data.cache_dir=" + sys.argv[3],
                               "grid.budgets=[3e9]", "grid.sizes_per_budget=3"])
run_sweep(cfg, Path(sys.argv[4]), live=False)
# VmHWM, not ru_maxrss: the latter keeps the forking parent's size across exec
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024)
"""


def _write_corpus(folder: Path, total_bytes: int) -> None:
    """Documents of 1 MB of word-like text, written until `total_bytes`."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = np.array(
        [
            w.encode()
            for w in (
                "the of and to in a is that for it as was with be by on not he this are or his "
                "from at which but have an they you were her she there their one all we can has "
                "compute scaling optimal tokens parameters loss model data training budget"
            ).split()
        ]
    )
    block = b" ".join(rng.choice(words, 200_000))[: 1 << 20] + b"\n"
    i = 0
    while i * len(block) < total_bytes:
        (folder / f"doc{i:05d}.txt").write_bytes(block[i % 97 :] + str(i).encode())
        i += 1


_PREPARE_PROBE = (
    "import resource, sys\n"
    "from chinchilla.cli import main\n"
    "sys.argv = ['chinchilla', 'prepare'] + sys.argv[1:]\n"
    "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
)


def _peaks(sizes, command, what: str) -> None:
    """For each (label, bytes): write a corpus that large, run `command(corpus, tmp,
    label)` -> (argv, env) in a process that prints its peak RSS (MB) last; print the
    peaks and their difference."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in sizes:
            corpus = Path(tmp) / label.replace(" ", "")
            _write_corpus(corpus, size)
            argv, env = command(corpus, Path(tmp), label)
            t = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-c", *argv],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ | env,
            )
            peaks[label] = float(r.stdout.strip().splitlines()[-1])
            print(
                f"   {label}: peak RSS {peaks[label]:.0f} MB "
                f"({what}: {time.perf_counter() - t:.0f} s)"
            )
            shutil.rmtree(corpus)
    (small, _), (large, _) = sizes
    print(f"   difference: {peaks[large] - peaks[small]:+.0f} MB")


def bench_corpus_memory() -> None:
    print("\n5. peak memory of the same sweep over a 10 MB and a 1 GB text corpus")
    cfg = ROOT / "configs" / "text_bytes.yaml"

    def sweep(corpus: Path, tmp: Path, label: str):
        argv = [_MEMORY_PROBE, str(cfg), str(corpus)]
        argv += [str(tmp / f"cache{label[:2]}"), str(tmp / f"out{label[:2]}")]
        return argv, {"CHINCHILLA_BENCH": "1"}

    def prepare(corpus: Path, tmp: Path, label: str):
        argv = [_PREPARE_PROBE, str(cfg), "--out", str(tmp / "out")]
        for setting in (f"data.path={corpus}", "data.val_fraction=null", "data.workers=1"):
            argv += ["--set", setting]
        return argv, {"CHINCHILLA_CACHE": str(tmp / f"cache{label[:3]}")}

    _peaks((("10 MB", 10 << 20), ("1 GB", 1 << 30)), sweep, "sweep incl. tokenizing")
    print(
        "   `chinchilla prepare` alone, one process, validation sized in tokens (data.val_tokens)"
    )
    _peaks((("100 MB", 100 << 20), ("1 GB", 1 << 30)), prepare, "prepare")


def bench_tokenize() -> None:
    """`chinchilla prepare` on a ~40 MB text corpus with a fixed tokenizer file, on one
    process and on every usable one; the token files must be the same bytes."""
    import tokenizers as tk

    from chinchilla.device import available_cpus

    size = 8 << 20 if QUICK else 40 << 20
    print(f"\n6. tokenizing a {size >> 20} MB text corpus (BPE tokenizer file, 4,096 tokens)")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        _write_corpus(corpus, size)
        tok = tk.Tokenizer(tk.models.BPE(unk_token=None))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = tk.trainers.BpeTrainer(
            vocab_size=4096,
            special_tokens=["<|endoftext|>"],
            show_progress=False,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train([str(next(corpus.iterdir()))], trainer=trainer)
        tok.save(str(Path(tmp) / "tokenizer.json"))
        seconds, files = {}, {}
        for workers in sorted({1, available_cpus()}):
            cache = Path(tmp) / f"cache{workers}"
            t = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "chinchilla",
                    "prepare",
                    str(ROOT / "configs" / "markov.yaml"),
                    "--out",
                    str(Path(tmp) / f"out{workers}"),
                    "--set",
                    "data.kind=text",
                    "--set",
                    f"data.path={corpus}",
                    "--set",
                    f"data.tokenizer={Path(tmp) / 'tokenizer.json'}",
                    "--set",
                    "data.vocab_size=4096",
                    "--set",
                    f"data.workers={workers}",
                    "--set",
                    "data.val_fraction=0.1",
                    "--set",
                    "train.eval_tokens=4096",
                ],
                check=True,
                capture_output=True,
                env=os.environ | {"CHINCHILLA_CACHE": str(cache)},
            )
            seconds[workers] = time.perf_counter() - t
            files[workers] = next(cache.glob("*/train.bin")).read_bytes()
            print(
                f"   {workers} process(es): {seconds[workers]:.1f} s for the whole `prepare`, "
                f"{size / 1e6 / seconds[workers]:.1f} MB/s"
            )
        if len(seconds) > 1:
            w = max(seconds)
            same = files[1] == files[w]
            print(
                f"   {w} / 1 process wall time: {seconds[w] / seconds[1]:.2f}; token files "
                + ("byte-identical" if same else "DIFFER")
            )


def bench_tune() -> None:
    """7. `chinchilla tune` on a 300-row planted table (5 budgets x 10 lrs x 6 batches)."""
    sys.path.insert(0, str(ROOT))
    from scipy.optimize import least_squares

    from chinchilla.fit.tune import fit_surfaces, levenberg_marquardt, prepare_budget
    from tests.tune_truth import planted, write_csv

    lrs = tuple(0.0018 * 2.0 ** np.arange(-4.5, 5, 1.0))
    table = planted(seed=0, lrs=lrs)
    print(f"7. chinchilla tune on a {len(table.loss)}-row table (5 budgets x 10 lrs x 6 batches)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.csv"
        write_csv(table, path)
        for label, flags in (
            ("print only (200 resamples)", []),
            ("--out: hparams.json and 2 figures", ["--out", str(Path(tmp) / "out")]),
        ):
            times = []
            for _ in range(3):
                t = time.perf_counter()
                cmd = [sys.executable, "-m", "chinchilla", "tune", str(path), *flags]
                subprocess.run(cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - t)
            med = float(np.median(times))
            print(f"   whole process, {label}: {med:.2f} s (goal 2 s: {med / 2:.2f} of it)")
    # the bootstrap's refits: one batched solve against scipy's least_squares per resample
    groups = [
        prepare_budget(table.lr[s], table.batch_tokens[s], table.loss[s], c, None, None)
        for c in np.unique(table.flops)
        for s in [np.nonzero(table.flops == c)[0]]
    ]
    model = fit_surfaces(groups, 0.0025)
    rng = np.random.default_rng(0)
    R = 50
    draws = model.loss + rng.normal(0, 0.002, (R, len(model.loss)))
    w, free = model.weights, model.active
    start = np.repeat(model.params[None, :], R, 0)
    t = time.perf_counter()
    _, ours = levenberg_marquardt(model, start, draws, w, free, model.low, model.high)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = []
    for r in range(R):

        def resid(q, r=r):
            p = model.params.copy()
            p[free] = q
            return np.sqrt(w) * (model(p[None, :])[0][0] - draws[r])

        ref.append(
            2
            * least_squares(
                resid, model.params[free], bounds=(model.low[free], model.high[free])
            ).cost
        )
    t_ref = time.perf_counter() - t
    worse = int(np.sum(ours > np.array(ref) * (1 + 1e-6)))
    print(
        f"   {R} refits of the joint surface ({int(free.sum())} parameters, {len(model.loss)} runs): "
        f"batched {t_ours:.3f} s, scipy least_squares loop {t_ref:.3f} s: {t_ref / t_ours:.1f}x; "
        f"objective worse than scipy's in {worse} of {R}"
    )


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    bench_training()
    bench_fit()
    bench_small_bootstrap()
    bench_sweep()
    if not QUICK:
        bench_corpus_memory()
    bench_tokenize()
    bench_tune()
