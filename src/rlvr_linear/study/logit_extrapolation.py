"""Stage ``logit_extrapolation`` (paper Table 1): logit-extrapolated decoding vs the last RL checkpoint (avg@k);
with its verdict rule (the pooled paired-bootstrap CI)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .common import _ci, _Ctx, _num, ckpt, snap
from .paper import PAPER


def _verdict_logit(pooled: dict) -> tuple[str, str]:
    """yes: the pooled paired-bootstrap CI of (extrapolated − last RL checkpoint) avg@k lies above 0; partly: the
    mean difference is > 0 but the CI includes 0; no: otherwise."""
    d, lo = pooled["diff"], pooled["ci_low"]
    rep = "yes" if lo > 0 else "partly" if d > 0 else "no"
    return rep, (
        f"avg@k difference (extrapolated − last RL checkpoint) {d:+.4f}, 95% CI [{lo:+.4f}, {pooled['ci_high']:+.4f}]; "
        "paper: +4.2% relative (0.4479 -> 0.4667)."
    )


def stage_logit_extrapolation(ctx: _Ctx) -> dict:
    from ..evaluation.evaluation import evaluate, paired_bootstrap
    from ..evaluation.tasks import get_task
    from ..extrapolation.logits import ExtrapolatedGenerator

    c = ctx.cfg
    task = get_task(c.task)
    problems = task.problems("test", c.logit_problems)
    T = c.rl_steps
    base = snap(c.logit_base_fraction * T, c.save_every, lo=c.save_every, hi=T - c.save_every)
    target = base + c.logit_alpha * (T - base)
    ev = dict(k=c.logit_k, temperature=0.6, top_p=0.95, greedy=False, seed=0, problems=problems)
    per_seed, ours_all, std_all = [], [], []
    for seed in tqdm(c.seeds, desc="logit extrapolation", disable=None if ctx.progress else True):
        run = ctx.out / "runs" / f"rl_seed{seed}"
        std = evaluate(ckpt(run, T), task, **ev)
        gen = ExtrapolatedGenerator.from_dirs(ckpt(run, base), ckpt(run, T), alpha=c.logit_alpha)
        ours = evaluate(gen, task, **ev)
        a, b = std.per_problem("avg"), ours.per_problem("avg")
        std_all.append(a)
        ours_all.append(b)
        per_seed.append(
            {"seed": seed, "std_rl": std.avg_at_k, "extrapolated": ours.avg_at_k, "bootstrap": paired_bootstrap(a, b)}
        )
    a, b = np.mean(std_all, 0), np.mean(ours_all, 0)
    pooled = paired_bootstrap(a, b)
    rel = (b.mean() - a.mean()) / a.mean() * 100 if a.mean() > 0 else None
    rep, verdict = _verdict_logit(pooled)
    return {
        "title": "Output-space (logit) extrapolation",
        "seeds": c.seeds,
        "numbers": {
            "base_step": base,
            "second_step": T,
            "target_step": target,
            "alpha": c.logit_alpha,
            "k": c.logit_k,
            "problems": len(problems),
            "split": "test",
            "std_rl_avg_at_k": _ci([p["std_rl"] for p in per_seed]),
            "extrapolated_avg_at_k": _ci([p["extrapolated"] for p in per_seed]),
            "diff_over_seeds": _ci([p["extrapolated"] - p["std_rl"] for p in per_seed]),
            "pooled_paired_bootstrap": pooled,
            "relative_improvement_%": _num(rel),
            "per_seed": per_seed,
        },
        "paper": PAPER["logit_extrapolation"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [],
    }
