"""Probes (prompt + response), their sampling, and teacher-forced log-prob scoring."""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_text
from ..io.checkpoints import Trajectory

# --------------------------------------------------------------------------------------------------
# Probes and teacher-forced log-probs


@dataclass
class Probe:
    """A fixed prompt/response pair scored by every checkpoint (the response is appended verbatim)."""

    prompt: str
    response: str
    problem_id: str = ""


def read_probes(path: str | Path) -> list[Probe]:
    """Probes from a JSONL file with ``prompt`` and ``response`` fields (``problem_id`` optional)."""
    p = Path(path)
    if not p.is_file():
        raise RlvrLinearError(f"{p}: probe file not found")
    out = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlvrLinearError(f"{p}: line {i + 1} is not JSON ({e})") from None
        if not isinstance(r, dict) or "prompt" not in r or "response" not in r:
            raise RlvrLinearError(f"{p}: line {i + 1} lacks a 'prompt' or 'response' field")
        out.append(Probe(str(r["prompt"]), str(r["response"]), str(r.get("problem_id", ""))))
    if not out:
        raise RlvrLinearError(f"{p}: no probes in the file")
    return out


def write_probes(path: str | Path, probes: Sequence[Probe]) -> None:
    lines = [json.dumps({"prompt": p.prompt, "response": p.response, "problem_id": p.problem_id}) for p in probes]
    write_text(path, "\n".join(lines) + "\n")


def _as_probes(probes: Sequence[Probe] | str | Path) -> list[Probe]:
    if isinstance(probes, (str, Path)):
        return read_probes(probes)
    out = list(probes)
    if not out:
        raise RlvrLinearError("no probes given")
    return out


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def make_probes(
    model_dir: str | Path,
    task,
    n_prompts: int = 32,
    k: int = 4,
    split: str = "validation",
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> list[Probe]:
    """Sample ``k`` responses per prompt from one model (the trajectory's first checkpoint) as probes.

    Prompts are ``task.render(problem, tokenizer)`` for ``n_prompts`` problems of ``split``, tokenized without
    special tokens (the rendered text is what the model sees), left padded; sampling is plain
    ``model.generate(do_sample=True, temperature, top_k=0, top_p=1)`` after ``torch.manual_seed(seed)``.
    Responses are decoded with special tokens skipped; empty ones are dropped.
    """
    from ..evaluation.tasks import get_task
    from ..io.loading import load_model

    task = get_task(task)
    dev = _device(device)
    model, tok = load_model(model_dir, dtype=dtype, device=dev, allow_pickle=allow_pickle)
    problems = task.problems(split, n_prompts, seed=seed)
    if max_new_tokens is None:
        chat = bool(getattr(tok, "chat_template", None))
        max_new_tokens = task.max_new_tokens(chat) if hasattr(task, "max_new_tokens") else 64
    torch.manual_seed(seed)
    probes: list[Probe] = []
    tok.padding_side = "left"
    for s in range(0, len(problems), batch_size):
        chunk = problems[s : s + batch_size]
        prompts = [task.render(p, tok) for p in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for j, text in enumerate(texts):
            if text:
                p = chunk[j // k]
                probes.append(Probe(prompts[j // k], text, p.id))
    if not probes:
        raise RlvrLinearError(f"{model_dir}: every sampled response was empty; no probes")
    return probes


def encode_probes(tokenizer, probes: Sequence[Probe]) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, response_ids)`` per probe; both without special tokens (prompt text is pre-rendered)."""
    out = []
    for i, p in enumerate(probes):
        pi = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        ri = tokenizer(p.response, add_special_tokens=False)["input_ids"]
        if not pi:
            raise RlvrLinearError(f"probe {i}: the prompt is empty, so the first response token has no context")
        out.append((list(pi), list(ri)))
    return out


def _batches(encoded: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _left_pad(encoded, batch: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = encoded[i][0] + encoded[i][1]
        ids[row, L - len(seq) :] = torch.tensor(seq)
        mask[row, L - len(seq) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.no_grad()
def score_logprobs(
    model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8, pad_id: int = 0,
    share_prompts: bool = True,
) -> list[np.ndarray]:  # fmt: skip
    """Teacher-forced ``log p(y_i | prompt, y_<i) = log_softmax(logits[i-1])[y_i]`` for every response token.

    Probes that share a prompt (``make_probes`` samples k replies per prompt) run the prompt once: its key/value cache
    is repeated for each reply (:func:`_score_shared`, ``batch_size`` replies per forward; equal to the unshared
    scoring to float rounding). Otherwise batches are left padded (sorted by length) with
    ``position_ids = cumsum(mask) - 1``; only the logits of the last ``max_response + 1`` positions are materialised
    (``logits_to_keep``). Returns one float32 array per probe, in input order.
    """
    if share_prompts and len({tuple(p) for p, _ in encoded}) < len(encoded):
        return _score_shared(model, encoded, batch_size, pad_id)
    dev = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(encoded)
    for batch in _batches(encoded, batch_size):
        ids, mask, pos = _left_pad(encoded, batch, pad_id, dev)
        K = max(len(encoded[i][1]) for i in batch) + 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=K).logits[:, -K:]
        logits = logits[:, :-1].float()  # position j predicts token j+1 (kept window is L-K .. L-1)
        tgt = ids[:, -(K - 1) :] if K > 1 else ids[:, :0]
        lp = (logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).cpu().numpy()
        for row, i in enumerate(batch):
            R = len(encoded[i][1])
            out[i] = lp[row, K - 1 - R :].astype(np.float32) if R else np.zeros(0, np.float32)
    return out  # type: ignore[return-value]


def _token_logprobs(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    return logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


@torch.no_grad()
def _score_shared(model, encoded, batch_size: int, pad_id: int) -> list[np.ndarray]:
    """:func:`score_logprobs` with one prompt pass per distinct prompt: the prompts of a chunk of ``batch_size``
    groups (all their replies: k x ``batch_size`` sequences, fewer and larger products, 1.4x faster on a CPU than
    ``batch_size`` replies) run left padded with a cache, whose rows are then repeated per reply; the replies (right
    padded, positions continuing their prompt's) run on it. The prompt's last logits score each first reply
    token."""
    dev = next(model.parameters()).device
    groups: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(encoded):
        groups.setdefault(tuple(p), []).append(i)
    items = sorted(groups.items(), key=lambda kv: len(kv[0]))
    chunks = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
    out: list[np.ndarray | None] = [None] * len(encoded)
    for chunk in chunks:
        prompts = [list(p) for p, _ in chunk]
        P = max(len(p) for p in prompts)
        ids = torch.full((len(chunk), P), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), P), dtype=torch.long)
        for g, p in enumerate(prompts):
            ids[g, P - len(p) :], mask[g, P - len(p) :] = torch.tensor(p), 1
        ids, mask = ids.to(dev), mask.to(dev)
        res = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        members = [i for _, m in chunk for i in m]
        rows = torch.tensor([g for g, (_, m) in enumerate(chunk) for _ in m], device=dev)
        first = res.logits[:, -1]  # predicts each group's first reply token
        firsts = [encoded[i][1][0] if encoded[i][1] else 0 for i in members]
        lp0 = _token_logprobs(first[rows], torch.tensor(firsts, device=dev)).cpu().numpy()
        R = max(len(encoded[i][1]) for i in members)
        rest = None
        if R > 1:
            # transformers >= 5.2x names the cache ``cache`` (in and out), earlier releases ``past_key_values``
            # (an FSDP1 root forwards ``*args, **kwargs``: the wrapped model's signature tells)
            inner = getattr(model, "_fsdp_wrapped_module", model)
            name = "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"
            cache = getattr(res, name)
            cache.reorder_cache(rows)  # one cache row per reply
            rid = torch.full((len(members), R - 1), pad_id, dtype=torch.long)
            rmask = torch.zeros((len(members), R - 1), dtype=torch.long)
            tgt = torch.full((len(members), R - 1), pad_id, dtype=torch.long)
            for row, i in enumerate(members):
                r = encoded[i][1]
                if len(r) > 1:
                    rid[row, : len(r) - 1], rmask[row, : len(r) - 1] = torch.tensor(r[:-1]), 1
                    tgt[row, : len(r) - 1] = torch.tensor(r[1:])
            rid, rmask, tgt = rid.to(dev), rmask.to(dev), tgt.to(dev)
            pos = mask.sum(-1)[rows].unsqueeze(-1) + torch.arange(R - 1, device=dev)
            logits = model(input_ids=rid, attention_mask=torch.cat([mask[rows], rmask], -1), position_ids=pos,
                           use_cache=False, **{name: cache}).logits  # fmt: skip
            rest = _token_logprobs(logits, tgt).cpu().numpy()
        for row, i in enumerate(members):
            n = len(encoded[i][1])
            out[i] = np.zeros(0, np.float32) if n == 0 else np.concatenate(
                [lp0[row : row + 1], rest[row, : n - 1] if n > 1 else np.zeros(0)]).astype(np.float32)  # fmt: skip
    return out  # type: ignore[return-value]


def load_for_scoring(path, device=None, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """The model at ``path`` as :func:`score_checkpoint` scores it (``device`` None: CUDA if available)."""
    from ..io.loading import load_model

    model, _ = load_model(path, dtype=dtype, device=_device(device), allow_pickle=allow_pickle)
    return model


def _trajectory_tokenizer(trajectory: Trajectory):
    """The tokenizer of the first checkpoint (verl FSDP shards: the one in ``huggingface/`` next to them)."""
    from ..io.tokenizer import load_tokenizer
    from ..io.verl_shards import config_dir

    return load_tokenizer(config_dir(trajectory.paths[0]))


def score_trajectory(
    trajectory: Trajectory,
    probes: Sequence[Probe],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[np.ndarray, list[tuple[list[int], list[int]]], Any]:
    """(T, N) float32 log-probs of every response token under every checkpoint, the encodings, the tokenizer.

    A trajectory sketch (:class:`~.sketch.SketchTrajectory`) returns the log-probs it stored when it was written,
    for its own probes and scoring settings.
    """
    stored = getattr(trajectory, "stored_logprobs", None)
    if stored is not None:
        return stored(probes, batch_size, dtype)
    dev = _device(device)
    tok = _trajectory_tokenizer(trajectory)
    enc = encode_probes(tok, probes)
    rows = []
    for path in tqdm(trajectory.paths, desc="scoring checkpoints", disable=None if progress else True):
        rows.append(score_checkpoint(path, enc, batch_size, tok.pad_token_id or 0, dev, dtype, trajectory.allow_pickle))
    return np.stack(rows), enc, tok


def score_checkpoint(
    path: str | Path,
    encoded: list[tuple[list[int], list[int]]],
    batch_size: int = 8,
    pad_id: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> np.ndarray:
    """The (N,) float32 log-probs of every response token of ``encoded`` under the checkpoint at ``path``."""
    model = load_for_scoring(path, device, dtype, allow_pickle)
    lp = score_logprobs(model, encoded, batch_size=batch_size, pad_id=pad_id)
    del model
    return np.concatenate(lp) if lp else np.zeros(0, np.float32)
