"""Stage ``baseline``: the RL runs with checkpoints, one per seed, that every later stage reads (trajectories)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from ..io import jsonable
from .common import _ci, _Ctx


def stage_baseline(ctx: _Ctx) -> dict:
    c = ctx.cfg
    runs = {}
    for seed in tqdm(c.seeds, desc="baseline RL runs", disable=None if ctx.progress else True):
        run, man = ctx.rl_run(f"rl_seed{seed}", ctx.train_config(seed))
        runs[str(seed)] = {
            "run": ctx.rel(run),
            "steps": [cp["step"] for cp in man["checkpoints"]],
            "val_accuracy": [cp["val_accuracy"] for cp in man["checkpoints"]],
            "mean_reward": [cp["mean_reward"] for cp in man["checkpoints"]],
            "wall_time_s": man.get("wall_time"),
        }
    steps = runs[str(c.seeds[0])]["steps"]
    acc = np.array([[np.nan if v is None else v for v in r["val_accuracy"]] for r in runs.values()], float)
    first, last = acc[:, 0], acc[:, -1]
    gain = _ci(last - first)
    from ..reporting import plots

    fig = plots.plot_curves(
        ctx.stage_dir("baseline") / "baseline_val_accuracy.png",
        {"RL (mean over seeds)": (steps, np.nanmean(acc, 0).tolist(), None)}
        | {f"seed {s}": (steps, r["val_accuracy"], None) for s, r in runs.items()},
        xlabel="gradient step",
        ylabel="validation greedy accuracy",
        title=f"Baseline RL runs ({len(runs)} seed(s), {c.eval_problems} validation problems)",
    )
    improved = gain["mean"] is not None and gain["mean"] > 0
    return {
        "title": "Baseline RL runs",
        "seeds": c.seeds,
        "numbers": {
            "runs": runs,
            "val_accuracy_start": _ci(first),
            "val_accuracy_end": _ci(last),
            "val_accuracy_gain": gain,
            "eval_problems": c.eval_problems,
            "config": jsonable(asdict(ctx.train_config(c.seeds[0]))),
        },
        "paper": {"note": "paper baseline: R1-Distill-Qwen-1.5B, GRPO, lr 1e-6, 128 prompts x 16 rollouts, 14 ckpts"},
        "reproduced": "n/a",
        "verdict": (
            f"RL {'raised' if improved else 'did not raise'} validation greedy accuracy from "
            f"{np.mean(first):.3f} to {np.mean(last):.3f} (mean over {len(runs)} seed(s)); these runs feed every "
            "later stage."
        ),
        "figures": [ctx.rel(fig)],
    }
