"""A bare PyTorch GRPO step for an HF causal LM, its model FLOPs, and the machine's fp32 matmul throughput.

Why it exists: ``rlvr-linear train`` runs TRL's ``GRPOTrainer``. To tell how much of a real-model step is the
model's own arithmetic and how much is overhead (TRL's bookkeeping, padding, Python), ``bench/train_step.py
--model smollm2-135m`` runs this step, TRL's step and the physical limit side by side. The step does the least work
a GRPO step can do on one batch, so its time is what TRL should approach:

1. **Sampling**: every prompt repeated ``group`` times, left-padded, one KV-cached ``model.generate`` call per
   ``gen_batch`` sequences (all of them by default), stopping when every sequence has emitted EOS.
2. **Reward** from the task's verifier, **group-normalised advantages** ``(r - mean_g) / (std_g + 1e-4)`` (TRL's
   ``scale_rewards="group"``).
3. **Policy gradient** on-policy (ratio 1, so the clipped objective's gradient is ``-A grad log p``), TRL's ``grpo``
   normalisation (per-sequence token mean, then the batch mean), in micro-batches of ``micro_batch`` sequences with
   gradient accumulation. Sequences are sorted by length before they are cut into micro-batches and each micro-batch
   drops the columns that are padding in all its rows, so little compute goes to padding; logits are formed only for
   completion positions (``logits_to_keep``) and ``log p = logit[token] - logsumexp(logits)`` never builds a
   log-softmax of the whole vocabulary.
4. Gradient clipping and one optimizer step.

:func:`step_flops` counts the model FLOPs of the tokens actually processed (2·N per generated or prefilled token,
6·N per trained token, N = parameters) and :func:`matmul_gflops` measures a large ``torch.mm`` with the thread count in
force; their ratio is the fastest the step could possibly run on this machine.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from ..evaluation.tasks import Problem, Task


@dataclass
class Rollout:
    """One sampled batch: ``ids`` = left-padded prompts + completions, masks, decoded texts."""

    ids: torch.Tensor  # (B, L + T) prompt (left-padded) then completion tokens
    prompt_mask: torch.Tensor  # (B, L) 1 on real prompt tokens
    completion_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS
    texts: list[str]

    @property
    def prompt_len(self) -> int:
        return self.prompt_mask.shape[1]


@dataclass
class StepStats:
    """Wall times (s) of one step's phases, the same in process CPU time, and the token counts the FLOP model needs.

    CPU time is what the process got from the cores: on a shared machine wall time also counts the time other
    processes held them, so comparisons with the physical limit use CPU time (with one thread, CPU s = core s).
    """

    gen_s: float = 0.0
    score_s: float = 0.0
    train_s: float = 0.0
    opt_s: float = 0.0
    step_s: float = 0.0
    gen_cpu_s: float = 0.0
    train_cpu_s: float = 0.0
    opt_cpu_s: float = 0.0
    step_cpu_s: float = 0.0
    prompt_tokens: int = 0  # real (non-pad) prompt tokens, summed over all sequences
    generated_tokens: int = 0  # completion tokens up to and including EOS
    trained_positions: int = 0  # positions the micro-batched forward/backward computed (padding included)
    mean_reward: float = 0.0
    mean_completion_len: float = 0.0
    loss: float = 0.0

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def completion_mask(comp: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 on every completion token up to and including the first EOS (TRL's rule), 0 after it."""
    is_eos = torch.isin(comp, torch.tensor(eos_ids, device=comp.device))
    none = torch.full((comp.shape[0],), comp.shape[1], dtype=torch.long, device=comp.device)
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), none)
    return (torch.arange(comp.shape[1], device=comp.device)[None, :] <= first[:, None]).long()


def eos_ids(tok, model) -> list[int]:
    """The tokenizer's EOS plus the generation config's (chat models may stop on either)."""
    ids = {tok.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def sample_groups(
    model, tok, prompts: list[str], group: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
    gen_batch: int | None = None,
) -> Rollout:  # fmt: skip
    """``group`` samples per prompt from KV-cached ``generate`` calls of ``gen_batch`` sequences (default: all)."""
    flat = [p for p in prompts for _ in range(group)]
    tok.padding_side = "left"
    enc = tok(flat, return_tensors="pt", padding=True, add_special_tokens=False).to(next(model.parameters()).device)
    stops = eos_ids(tok, model)
    was_training = model.training
    model.eval()
    outs = []
    gb = gen_batch or len(flat)
    for s in range(0, len(flat), gb):
        out = model.generate(
            input_ids=enc["input_ids"][s : s + gb], attention_mask=enc["attention_mask"][s : s + gb],
            do_sample=True, temperature=temperature, top_p=top_p, top_k=None, max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=stops, use_cache=True,
        )  # fmt: skip
        outs.append(out[:, enc["input_ids"].shape[1] :])
    model.train(was_training)
    width = max(o.shape[1] for o in outs)
    comp = torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=tok.pad_token_id) for o in outs])
    cmask = completion_mask(comp, stops)
    texts = tok.batch_decode(comp * cmask + tok.pad_token_id * (1 - cmask), skip_special_tokens=True)
    return Rollout(torch.cat([enc["input_ids"], comp], 1), enc["attention_mask"], cmask, texts)


def group_advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean_g) / (std_g + eps)`` within each group of ``group`` consecutive samples (TRL's group scaling)."""
    rg = rewards.view(-1, group)
    return ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + eps)).view(-1)


def policy_gradient(model, roll: Rollout, adv: torch.Tensor, micro_batch: int | None = None) -> tuple[float, int]:
    """Accumulate the gradient of TRL's on-policy ``grpo`` loss; returns (loss, positions computed).

    loss = mean over sequences of (sum_t -A·log p_t / n_tokens). Micro-batches hold sequences of similar length and
    keep only the columns that are not padding in all their rows.
    """
    B, L = roll.prompt_mask.shape
    full = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
    n_tok = roll.completion_mask.sum(1).clamp(min=1)
    order = torch.argsort(full.sum(1), descending=True)
    mb = micro_batch or B
    total_loss, positions = 0.0, 0
    for s in range(0, B, mb):
        idx = order[s : s + mb]
        m = full[idx]
        cols = m.any(0).nonzero().squeeze(1)
        lo, hi = int(cols[0]), int(cols[-1]) + 1  # left padding of the longest prompt .. last completion token
        ids, m = roll.ids[idx, lo:hi], m[:, lo:hi]
        T = hi - L  # completion columns kept
        pos = (m.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=m, position_ids=pos, logits_to_keep=T + 1).logits[:, :-1]
        target = ids[:, L - lo :]
        logp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        cm = roll.completion_mask[idx, :T].float()
        loss = -((adv[idx, None] * logp * cm).sum(1) / n_tok[idx]).sum() / B
        loss.backward()
        total_loss += loss.detach().item()
        positions += ids.numel()
        del logits, logp
    return total_loss, positions


def grpo_step(
    model, opt, tok, task: Task, problems: list[Problem], group: int, max_new_tokens: int,
    micro_batch: int | None = None, max_grad_norm: float = 1.0, temperature: float = 1.0, top_p: float = 1.0,
    gen_batch: int | None = None, chat: bool | None = None,
) -> StepStats:  # fmt: skip
    """One GRPO step on ``problems`` (rendered with the chat template when the tokenizer has one)."""
    st = StepStats()
    t0, c0 = time.perf_counter(), time.process_time()
    render_tok = tok if (chat if chat is not None else bool(getattr(tok, "chat_template", None))) else None
    prompts = [task.render(p, render_tok) for p in problems]
    roll = sample_groups(model, tok, prompts, group, max_new_tokens, temperature, top_p, gen_batch)
    t1, c1 = time.perf_counter(), time.process_time()
    rewards = torch.tensor([task.score(t, p) for t, p in zip(roll.texts, [p for p in problems for _ in range(group)])])
    adv = group_advantages(rewards.float(), group).to(roll.ids.device)
    t2, c2 = time.perf_counter(), time.process_time()
    model.train()
    opt.zero_grad(set_to_none=True)
    st.loss, st.trained_positions = policy_gradient(model, roll, adv, micro_batch)
    t3, c3 = time.perf_counter(), time.process_time()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    t4, c4 = time.perf_counter(), time.process_time()
    st.gen_s, st.score_s, st.train_s, st.opt_s, st.step_s = t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0
    st.gen_cpu_s, st.train_cpu_s, st.opt_cpu_s, st.step_cpu_s = c1 - c0, c3 - c2, c4 - c3, c4 - c0
    st.prompt_tokens = int(roll.prompt_mask.sum())
    st.generated_tokens = int(roll.completion_mask.sum())
    st.mean_reward = float(rewards.mean())
    st.mean_completion_len = st.generated_tokens / len(roll.texts)
    return st


def step_flops(n_params: int, prefill_tokens: int, generated_tokens: int, trained_tokens: int) -> float:
    """Model FLOPs of a step: 2·N per prefilled or generated token (forward), 6·N per trained token (fwd + bwd).

    Attention's context-length terms are left out: at ~100-token contexts they are < 2% of a 135M model's FLOPs.
    """
    return 2.0 * n_params * (prefill_tokens + generated_tokens) + 6.0 * n_params * trained_tokens


def matmul_gflops(n: int = 2048, seconds: float = 3.0, clock: str = "wall") -> float:
    """fp32 GFLOP/s of an ``n x n`` ``torch.mm`` with the current thread count (best of repeated timings).

    ``clock="cpu"`` times with the process CPU clock: GFLOP per CPU second, the rate a core gives this process
    while it runs, unaffected by other processes' share of the cores (with one thread; with T threads divide by T).
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = now()
        torch.mm(a, b)
        dt = now() - t
        if dt > 0:
            best = min(best, dt)
    return 2.0 * n**3 / best / 1e9
