"""Downstream tasks scored at the end of every run: sharp and smooth metrics of the same
outputs (Schaeffer et al. 2023, "Are Emergent Abilities of Large Language Models a
Mirage?").

Three kinds of task:

- `continue` (built in, synthetic data, `tasks.continue_k: K`): a held-out document of
  the synthetic language (drawn with a seed of its own) is read from its `prompt_len`-th
  token on; at each of the next K positions the answer is the token the source's rules
  make most likely there (its argmax, known exactly), and the model's answer is its own
  argmax at that position, both given the document's true preceding tokens. Scored
  for every k = 1..K on the first k positions: `exact_match@k` (all k argmaxes right:
  an event whose probability is a product of k per-token accuracies, so it falls
  steeply with k), `logprob@k` (mean log-probability the model gives the k answer
  tokens, nats) and `edit_distance@k` (token edit distance between the model's k
  argmaxes and the answer, / k). The Bayes-optimal model scores exact match 1 and the
  log-probability recorded as the task's ceiling. (Greedy generation from the prompt
  instead would follow the source's most likely path, which soon cycles: exact match
  on k tokens would stop depending on k.)
- `answer` (a JSONL line {"prompt", "answer"}): the same three metrics on the whole
  answer.
- `choice` ({"prompt", "choices", "answer"}): each choice scored by its total
  log-likelihood after the prompt; `accuracy` (the correct choice scores highest),
  `logprob` (mean per-token log-probability of the correct choice) and `brier` (Brier
  score of the choices' normalised likelihoods).

Cost is bounded: one teacher-forced pass and k greedy passes (no KV cache; prompts are
short) per batch of prompts; the seconds spent are recorded per run (`task_seconds`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chinchilla.device import autocast
from chinchilla.errors import UserError


@dataclass
class Task:
    name: str
    kind: str  # "continue" | "answer" | "choice"
    prompts: list[np.ndarray]
    answers: list[np.ndarray] = field(default_factory=list)  # continue, answer
    contexts: list[np.ndarray] = field(default_factory=list)  # continue: the true tokens
    choices: list[list[np.ndarray]] = field(default_factory=list)  # choice
    correct: list[int] = field(default_factory=list)  # choice: index of the right one
    ceiling: dict[str, float] = field(default_factory=dict)  # built-in: Bayes-optimal scores

    def __len__(self) -> int:
        return len(self.prompts)


# ----------------------------------------------------------------------------- building


def _continue_key(cfg) -> str:
    payload = {
        "data": cfg.data_identity(),
        "seed": cfg.train.seed,
        "tasks": [cfg.tasks.continue_k, cfg.tasks.prompts, cfg.tasks.prompt_len],
        "version": 2,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_continue(cfg) -> Task:
    """The built-in task: documents of the synthetic language drawn with a seed of their
    own (not in the training or validation splits); answers are the source's argmax at
    each of K positions after the prompt, given the document's true tokens before it."""
    from chinchilla.data.synthetic import synthetic_source

    K, P, n = cfg.tasks.continue_k, cfg.tasks.prompt_len, cfg.tasks.prompts
    src = synthetic_source(cfg)
    toks, _ = src.generate(n, P + K, seed=3)
    answers = np.zeros((n, K), dtype=np.int64)
    best = np.zeros((n, K))
    for i in range(K):
        p = src.next_probs(toks, P + i)
        answers[:, i] = np.argmax(p, axis=1)  # ties: the lowest id
        best[:, i] = np.log(p.max(axis=1))
    ceiling = {}
    for k in range(1, K + 1):
        ceiling[f"exact_match@{k}"] = 1.0
        ceiling[f"logprob@{k}"] = float(best[:, :k].mean())
        ceiling[f"edit_distance@{k}"] = 0.0
    return Task(
        name="continue",
        kind="continue",
        prompts=list(toks[:, :P]),
        answers=list(answers),
        contexts=list(toks[:, P:]),
        ceiling=ceiling,
    )


def _cached_continue(cfg, folder: Path | None) -> Task:
    if folder is None:
        return build_continue(cfg)
    path = Path(folder) / f"task-continue-{_continue_key(cfg)}.npz"
    if path.exists():
        z = np.load(path)
        return Task(
            name="continue",
            kind="continue",
            prompts=list(z["prompts"]),
            answers=list(z["answers"]),
            contexts=list(z["contexts"]),
            ceiling=json.loads(str(z["ceiling"])),
        )
    task = build_continue(cfg)
    from chinchilla.files import atomic_write

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                prompts=np.stack(task.prompts),
                answers=np.stack(task.answers),
                contexts=np.stack(task.contexts),
                ceiling=json.dumps(task.ceiling),
            )

    atomic_write(path, save)
    return task


def _ids(value: Any, where: str, what: str, encode, vocab: int, unk: int | None) -> np.ndarray:
    """Token ids of a prompt, answer or choice: text through the sweep's tokenizer, or
    a list of integer ids."""
    if isinstance(value, str):
        if encode is None:
            raise UserError(
                f"{where}: '{what}' is text, but this data kind has no tokenizer: give token "
                "ids (a list of integers)"
            )
        ids = np.asarray(encode(value), dtype=np.int64)
    elif isinstance(value, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        ids = np.asarray(value, dtype=np.int64)
    else:
        raise UserError(f"{where}: '{what}' must be text or a list of integer token ids")
    if what != "prompt" and ids.size == 0:
        raise UserError(f"{where}: '{what}' is empty")
    bad = ids[(ids < 0) | (ids >= vocab)] if ids.size else ids
    if bad.size:
        raise UserError(
            f"{where}: '{what}' holds token id {int(bad[0])}, unknown to a vocabulary of {vocab}"
        )
    if unk is not None and (ids == unk).any():
        raise UserError(f"{where}: '{what}' holds text the tokenizer maps to its unknown token")
    return ids


def read_task_file(
    path: Path, name: str, *, vocab: int, seq_len: int, encode=None, unk: int | None = None
) -> Task:
    """A JSONL task file, checked line by line (one UserError naming the line)."""
    if not path.is_file():
        raise UserError(f"config: tasks.file: {path} does not exist")
    kind = None
    task = Task(name=name, kind="answer", prompts=[])
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            where = f"{path}:{number}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "prompt" not in obj or "answer" not in obj:
                raise UserError(f"{where}: expected an object with 'prompt' and 'answer'")
            this = "choice" if "choices" in obj else "answer"
            if kind is not None and this != kind:
                raise UserError(f"{where}: mixes {this} items with the file's {kind} items")
            kind = this
            prompt = _ids(obj["prompt"], where, "prompt", encode, vocab, unk)
            if kind == "answer":
                answer = _ids(obj["answer"], where, "answer", encode, vocab, unk)
                pieces = [answer]
            else:
                choices = obj["choices"]
                if not isinstance(choices, list) or len(choices) < 2:
                    raise UserError(f"{where}: 'choices' must be a list of at least 2")
                pieces = [_ids(c, where, "choices", encode, vocab, unk) for c in choices]
                ans = obj["answer"]
                if isinstance(ans, int) and not isinstance(ans, bool):
                    if not 0 <= ans < len(choices):
                        raise UserError(f"{where}: 'answer' {ans} is not a choice's index")
                    index = ans
                elif isinstance(ans, str) and ans in choices:
                    index = choices.index(ans)
                else:
                    raise UserError(
                        f"{where}: 'answer' must be the index of a choice or its exact text"
                    )
            longest = max(len(x) for x in pieces)
            if longest >= seq_len:
                raise UserError(
                    f"{where}: an answer of {longest} tokens does not fit a context of "
                    f"{seq_len} (model.seq_len)"
                )
            prompt = prompt[-(seq_len - longest + 1) :]  # keep the prompt's end if long
            if prompt.size == 0:
                raise UserError(f"{where}: 'prompt' is empty")
            task.prompts.append(prompt)
            if kind == "answer":
                task.answers.append(pieces[0])
            else:
                task.choices.append(pieces)
                task.correct.append(index)
    if not task.prompts:
        raise UserError(f"config: tasks.file: {path} holds no task")
    task.kind = kind
    return task


def load_tasks(cfg, data) -> list[Task]:
    """The configured tasks, tokenized for `data` (checked: raises UserError)."""
    tasks = []
    if cfg.tasks.continue_k:
        tasks.append(_cached_continue(cfg, data.meta.get("cache")))
    if cfg.tasks.file:
        from chinchilla.data.corpus import text_encoder

        path = cfg.resolve_path(cfg.tasks.file)
        encode, unk = text_encoder(cfg)
        name = cfg.tasks.name or path.stem
        if any(t.name == name for t in tasks):
            raise UserError(f"config: tasks.name: '{name}' is the built-in task's name")
        tasks.append(
            read_task_file(
                path, name, vocab=data.vocab_size, seq_len=data.seq_len, encode=encode, unk=unk
            )
        )
    return tasks


# ----------------------------------------------------------------------------- scoring


def edit_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance between two token sequences."""
    prev = np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return int(prev[-1])


def _groups(lengths: list[tuple[int, ...]], batch: int):
    """Indices of items grouped by equal lengths, in batches."""
    by: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(lengths):
        by.setdefault(key, []).append(i)
    for idx in by.values():
        for s in range(0, len(idx), batch):
            yield idx[s : s + batch]


def _log_softmax_after(model, prompt, following):
    """(B, len(following), V) next-token log-probabilities at each position after
    `prompt`, the context being `prompt` then `following` (teacher-forced)."""
    import torch

    x = torch.cat([prompt, following], dim=1)[:, :-1]
    return torch.log_softmax(model(x)[:, prompt.shape[1] - 1 :].float(), dim=-1)


def _logprobs(model, prompt, target):
    """(B, len(target)) log-probabilities of `target` after `prompt` (teacher-forced)."""
    return _log_softmax_after(model, prompt, target).gather(-1, target[..., None])[..., 0]


def _greedy(model, prompt, k: int):
    import torch

    seq = prompt
    for _ in range(k):
        nxt = model(seq)[:, -1].float().argmax(dim=-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1] :]


def score(model, task: Task, device: str, batch: int = 256) -> dict[str, float]:
    """Metric name -> mean over the task's items (model in eval mode, no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device):
            if task.kind == "choice":
                return _score_choice(model, task, device, batch)
            return _score_answers(model, task, device, batch)
    finally:
        model.train(was_training)


def _score_answers(model, task: Task, device: str, batch: int) -> dict[str, float]:
    import torch

    n = len(task)
    ks = range(1, len(task.answers[0]) + 1) if task.kind == "continue" else [None]
    em = {k: np.zeros(n) for k in ks}
    lp = {k: np.zeros(n) for k in ks}
    ed = {k: np.zeros(n) for k in ks}
    lengths = [(len(p), len(a)) for p, a in zip(task.prompts, task.answers, strict=True)]
    for idx in _groups(lengths, batch):
        prompt = torch.as_tensor(np.stack([task.prompts[i] for i in idx]), device=device)
        target = torch.as_tensor(np.stack([task.answers[i] for i in idx]), device=device)
        if task.kind == "continue":  # argmax at each position of the true document
            true = torch.as_tensor(np.stack([task.contexts[i] for i in idx]), device=device)
            logsm = _log_softmax_after(model, prompt, true)
            logp = logsm.gather(-1, target[..., None])[..., 0].double().cpu().numpy()
            gen = logsm.argmax(dim=-1).cpu().numpy()
        else:  # greedy generation from the prompt
            logp = _logprobs(model, prompt, target).double().cpu().numpy()
            gen = _greedy(model, prompt, target.shape[1]).cpu().numpy()
        ans = target.cpu().numpy()
        for k in ks:
            m = ans.shape[1] if k is None else k
            em[k][idx] = (gen[:, :m] == ans[:, :m]).all(axis=1)
            lp[k][idx] = logp[:, :m].mean(axis=1)
            ed[k][idx] = [edit_distance(g[:m], a[:m]) / m for g, a in zip(gen, ans, strict=True)]
    out = {}
    for k in ks:
        at = "" if k is None else f"@{k}"
        out[f"exact_match{at}"] = float(em[k].mean())
        out[f"logprob{at}"] = float(lp[k].mean())
        out[f"edit_distance{at}"] = float(ed[k].mean())
    return out


def _score_choice(model, task: Task, device: str, batch: int) -> dict[str, float]:
    import torch

    n = len(task)
    totals: list[list[float]] = [[0.0] * len(c) for c in task.choices]
    means: list[list[float]] = [[0.0] * len(c) for c in task.choices]
    pairs = [(i, j) for i in range(n) for j in range(len(task.choices[i]))]
    lengths = [(len(task.prompts[i]), len(task.choices[i][j])) for i, j in pairs]
    for group in _groups(lengths, batch):
        sel = [pairs[g] for g in group]
        prompt = torch.as_tensor(np.stack([task.prompts[i] for i, _ in sel]), device=device)
        target = torch.as_tensor(np.stack([task.choices[i][j] for i, j in sel]), device=device)
        logp = _logprobs(model, prompt, target).double().cpu().numpy()
        for (i, j), row in zip(sel, logp, strict=True):
            totals[i][j], means[i][j] = float(row.sum()), float(row.mean())
    acc, lp, brier = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        t = np.asarray(totals[i])
        p = np.exp(t - t.max())
        p /= p.sum()
        c = task.correct[i]
        acc[i] = float(np.argmax(t) == c)
        lp[i] = means[i][c]
        onehot = np.zeros(len(t))
        onehot[c] = 1.0
        brier[i] = float(((p - onehot) ** 2).sum())
    return {
        "accuracy": float(acc.mean()),
        "logprob": float(lp.mean()),
        "brier": float(brier.mean()),
        "chance": float(np.mean([1.0 / len(c) for c in task.choices])),
    }


def describe(tasks: list[Task]) -> list[dict[str, Any]]:
    """What tasks.json records of each task: name, kind, items, ceilings."""
    return [{"name": t.name, "kind": t.kind, "items": len(t), "ceiling": t.ceiling} for t in tasks]


def metric_rows(tasks: list[Task], model, device: str, step: int, tokens: int) -> list[dict]:
    """Long-format rows (step, tokens, task, metric, value) of every task's metrics."""
    rows = []
    for task in tasks:
        for metric, value in score(model, task, device).items():
            rows.append(
                {
                    "step": step,
                    "tokens": tokens,
                    "task": task.name,
                    "metric": metric,
                    "value": value,
                }
            )
    return rows
