"""Stage ``regrounding`` (paper Fig. 6, Table 2): M RL steps + N-step jumps vs standard RL, steps to thresholds
fixed from the baseline curve and accuracy at fixed gradient budgets; with its verdict rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..io import read_json
from .common import _ci, _Ctx, _eval_greedy, _num, ckpt, first_reach, snap
from .paper import PAPER

#: the stage's title (also of its "not run (budget)" result, study.run.not_run_result)
TITLE = "Periodic re-grounding"


def _verdict_regrounding(speed: list[dict], budgets: list[dict]) -> tuple[str, str]:
    """yes: some (M, N) has a mean speedup > 1 at every threshold it reached (reaching >= 2 thresholds) and a mean
    fixed-budget gain > 0 over the budgets; partly: a speedup > 1 at some threshold or a budget gain > 0;
    no: neither."""
    best_txt, any_fast, full = [], False, False
    for cfg in {r["config"] for r in speed}:
        rs = [r for r in speed if r["config"] == cfg and r["speedup"]["mean"] is not None]
        bs = [r for r in budgets if r["config"] == cfg]
        gain = float(np.mean([r["diff"]["mean"] for r in bs])) if bs else float("nan")
        fast = [r["speedup"]["mean"] > 1 for r in rs]
        any_fast = any_fast or any(fast) or gain > 0
        if len(rs) >= 2 and all(fast) and gain > 0:
            full = True
        sp = ", ".join(f"{r['speedup']['mean']:.2f}x" for r in rs) or "no threshold reached"
        best_txt.append(f"{cfg}: speedups {sp}; mean budget gain {gain:+.3f}")
    rep = "yes" if full else "partly" if any_fast else "no"
    return rep, "; ".join(sorted(best_txt)) + ". Paper: up to 6.1x, +2.3..+6.3% at fixed budgets."


def stage_regrounding(ctx: _Ctx) -> dict:
    from ..evaluation.evaluation import paired_bootstrap
    from ..evaluation.tasks import get_task
    from ..reporting import plots

    c = ctx.cfg
    T = c.rl_steps
    task = get_task(c.task)
    problems = task.problems("test", c.reground_eval_problems)
    base_runs = {seed: ctx.out / "runs" / f"rl_seed{seed}" for seed in c.seeds}
    base_man = {seed: read_json(r / "manifest.json") for seed, r in base_runs.items()}
    steps = [cp["step"] for cp in base_man[c.seeds[0]]["checkpoints"]]
    # thresholds: fixed from the baseline curve only (mean over seeds at fractions of training), before re-grounding
    curve = np.nanmean([[np.nan if cp["val_accuracy"] is None else cp["val_accuracy"] for cp in m["checkpoints"]]
                        for m in base_man.values()], 0)  # fmt: skip
    th_steps = [snap(f * T, c.save_every, lo=c.save_every, hi=T) for f in c.threshold_fractions]
    thresholds = [float(curve[steps.index(s)]) for s in th_steps]
    runs: dict[str, dict[int, tuple[Path, dict]]] = {"standard": {s: (base_runs[s], base_man[s]) for s in c.seeds}}
    n_runs = len(c.reground_specs) * len(c.seeds)
    bar = tqdm(total=n_runs, desc="re-grounded RL runs", disable=None if ctx.progress else True)
    for spec in c.reground_specs:
        m, n = spec.split(",")
        for seed in c.seeds:
            tcfg = ctx.train_config(seed, reground=spec, reground_optimizer=c.reground_optimizer)
            runs.setdefault(f"({m},{n})", {})[seed] = ctx.rl_run(f"reground_{m}_{n}_seed{seed}", tcfg)
            bar.update()
    bar.close()
    # steps to thresholds
    reach: dict[str, list[dict]] = {}
    for name, by_seed in runs.items():
        for th in thresholds:
            per = []
            for _, man in by_seed.values():
                cps = man["checkpoints"]
                per.append(first_reach([cp["step"] for cp in cps], [cp["val_accuracy"] for cp in cps], th))
            reach.setdefault(name, []).append({"threshold": th, "steps": per})
    speed = []
    for name in runs:
        if name == "standard":
            continue
        for th_i, th in enumerate(thresholds):
            std_steps, rg_steps = reach["standard"][th_i]["steps"], reach[name][th_i]["steps"]
            ratios = [a / b for a, b in zip(std_steps, rg_steps) if a is not None and b is not None and b > 0]
            speed.append(
                {
                    "config": name,
                    "threshold": th,
                    "std_steps": std_steps,
                    "reground_steps": rg_steps,
                    "reached": f"{sum(b is not None for b in rg_steps)}/{len(rg_steps)}",
                    "speedup": _ci(ratios),
                }
            )
    # fixed gradient budgets: greedy test accuracy of the checkpoint at that gradient step
    budgets_steps = sorted({snap(f * T, c.save_every, lo=c.save_every, hi=T) for f in c.budget_fractions})
    scores: dict[tuple[str, int, int], np.ndarray] = {}
    n_evals = len(runs) * len(c.seeds) * len(budgets_steps)
    bar = tqdm(total=n_evals, desc="budget evals", disable=None if ctx.progress else True)
    for name, by_seed in runs.items():
        for seed, (run, _) in by_seed.items():
            for b in budgets_steps:
                scores[(name, seed, b)] = _eval_greedy(ckpt(run, b), task, problems)
                bar.update()
    bar.close()
    budgets = []
    for name in runs:
        if name == "standard":
            continue
        for b in budgets_steps:
            std = [scores[("standard", s, b)].mean() for s in c.seeds]
            rg = [scores[(name, s, b)].mean() for s in c.seeds]
            pooled = paired_bootstrap(
                np.mean([scores[("standard", s, b)] for s in c.seeds], 0),
                np.mean([scores[(name, s, b)] for s in c.seeds], 0),
            )
            budgets.append(
                {
                    "config": name,
                    "gradient_steps": b,
                    "standard": _ci(std),
                    "reground": _ci(rg),
                    "diff": _ci(np.subtract(rg, std)),
                    "relative_%": _num((np.mean(rg) - np.mean(std)) / np.mean(std) * 100) if np.mean(std) > 0 else None,
                    "pooled_paired_bootstrap": pooled,
                }
            )
    walls = {
        name: _ci([man.get("wall_time", float("nan")) for _, man in by_seed.values()]) for name, by_seed in runs.items()
    }
    eff = {
        name: [cp.get("effective_step", cp["step"]) for cp in next(iter(by_seed.values()))[1]["checkpoints"]]
        for name, by_seed in runs.items()
    }
    fig = plots.plot_curves(
        ctx.stage_dir("regrounding") / "regrounding_curves.png",
        {
            name: (
                [cp["step"] for cp in next(iter(by_seed.values()))[1]["checkpoints"]],
                np.nanmean([[np.nan if cp["val_accuracy"] is None else cp["val_accuracy"] for cp in man["checkpoints"]]
                            for _, man in by_seed.values()], 0).tolist(),
                None,
            )
            for name, by_seed in runs.items()
        },
        xlabel="gradient step",
        ylabel="validation greedy accuracy",
        title=f"Standard RL vs re-grounding (M,N) ({len(c.seeds)} seed(s)); dashed: thresholds",
        hlines=thresholds,
    )  # fmt: skip
    rep, verdict = _verdict_regrounding(speed, budgets)
    return {
        "title": TITLE,
        "seeds": c.seeds,
        "numbers": {
            "threshold_rule": "baseline mean validation greedy accuracy at "
            + ", ".join(f"{f:.0%}" for f in c.threshold_fractions)
            + " of its training (steps "
            + ", ".join(map(str, th_steps))
            + ")",
            "thresholds": thresholds,
            "steps_to_threshold": reach,
            "speedups": speed,
            "fixed_budgets": budgets,
            "budget_problems": len(problems),
            "wall_time_s": walls,
            "effective_steps": eff,
            "optimizer_after_jump": c.reground_optimizer,
        },
        "paper": PAPER["regrounding"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }
