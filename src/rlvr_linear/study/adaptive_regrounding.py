"""Adaptive re-grounding (``--reground M,auto``) against standard RL and fixed (M, N), over seeds.

The protocol of the study's re-grounding stage (paper Figure 6 / Table 2), reusing its pieces
(:func:`rlvr_linear.study.common.first_reach`, ``snap``, ``_ci``, ``_eval_greedy``,
:func:`rlvr_linear.evaluation.evaluation.paired_bootstrap`):

* **thresholds** are fixed from the standard runs only: their mean validation greedy accuracy at
  ``threshold_fractions`` of training (snapped to the save grid);
* **gradient steps to each threshold**: the first saved gradient step whose validation accuracy reaches it, per
  seed; speed-up = standard steps / config steps, per seed where both reach it (mean and CI over seeds);
* **fixed gradient budgets**: greedy accuracy on ``budget_problems`` test problems of the checkpoint at gradient step
  ``b`` (``budget_fractions`` of training), config minus standard per seed (mean, CI), and a paired bootstrap over
  problems of the seed-averaged scores.

The **best fixed (M, N)** is the fixed configuration with the largest mean speed-up over the thresholds (ties:
larger mean budget gain); the verdict compares ``auto`` with it and with standard RL.
:func:`compare_adaptive` trains what is missing (runs are resumable) and calls :func:`summarize_comparison`; a run
already in its folder is reused only when its saved config is the comparison's (``study.common.same_config``;
a standard run's re-grounding-only fields do not count), else it refuses with one error line.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import RlvrLinearError
from ..io import read_json, write_json

AUTO = "auto"


def _curve(man: dict) -> tuple[list[int], list[float | None]]:
    cps = man["checkpoints"]
    return [c["step"] for c in cps], [c.get("val_accuracy") for c in cps]


def summarize_comparison(
    manifests: dict[str, dict[int, dict]],
    *,
    steps: int,
    save_every: int,
    threshold_fractions=(0.5, 0.75, 0.9),
    budget_scores: dict[tuple[str, int, int], np.ndarray] | None = None,
) -> dict:
    """Numbers of the comparison from run manifests ``{config: {seed: manifest}}`` (``"standard"`` required).

    ``budget_scores[(config, seed, step)]``: per-problem greedy scores of that checkpoint (optional).
    """
    from ..evaluation.evaluation import paired_bootstrap
    from .common import _ci, first_reach, snap

    seeds = sorted(manifests["standard"])
    std_curves = [_curve(manifests["standard"][s]) for s in seeds]
    grid = std_curves[0][0]
    mean_curve = np.nanmean([[np.nan if a is None else a for a in c[1]] for c in std_curves], 0)
    th_steps = [snap(f * steps, save_every, lo=save_every, hi=steps) for f in threshold_fractions]
    thresholds = [float(mean_curve[grid.index(s)]) for s in th_steps]
    reach = {
        name: [[first_reach(*_curve(by_seed[s]), th) for s in seeds] for th in thresholds]
        for name, by_seed in manifests.items()
    }
    speed: dict[str, list[dict]] = {}
    for name in manifests:
        if name == "standard":
            continue
        for ti, th in enumerate(thresholds):
            ratios = [a / b for a, b in zip(reach["standard"][ti], reach[name][ti]) if a is not None and b and b > 0]
            speed.setdefault(name, []).append(
                {"threshold": th, "standard_steps": reach["standard"][ti], "steps": reach[name][ti],
                 "reached": f"{sum(b is not None for b in reach[name][ti])}/{len(seeds)}", "speedup": _ci(ratios)}
            )  # fmt: skip
    budgets: dict[str, list[dict]] = {}
    if budget_scores:
        b_steps = sorted({k[2] for k in budget_scores})
        for name in manifests:
            if name == "standard":
                continue
            for b in b_steps:
                std = [budget_scores[("standard", s, b)] for s in seeds]
                cfg = [budget_scores[(name, s, b)] for s in seeds]
                budgets.setdefault(name, []).append(
                    {
                        "gradient_steps": b,
                        "standard": _ci([x.mean() for x in std]),
                        "config": _ci([x.mean() for x in cfg]),
                        "diff": _ci([c.mean() - s.mean() for c, s in zip(cfg, std)]),
                        "pooled_paired_bootstrap": paired_bootstrap(np.mean(std, 0), np.mean(cfg, 0)),
                    }
                )

    def score(name: str) -> tuple[float, float]:
        sp = [r["speedup"]["mean"] for r in speed.get(name, []) if r["speedup"]["mean"] is not None]
        gain = [r["diff"]["mean"] for r in budgets.get(name, []) if r["diff"]["mean"] is not None]
        return (float(np.mean(sp)) if sp else 0.0, float(np.mean(gain)) if gain else 0.0)

    fixed = [n for n in manifests if n not in ("standard", AUTO)]
    best = max(fixed, key=score) if fixed else None
    jumps = {s: manifests[AUTO][s].get("reground_history", []) for s in seeds} if AUTO in manifests else {}
    verdict = []
    if AUTO in manifests:
        a = score(AUTO)
        verdict.append(f"auto: mean speed-up {a[0]:.2f}x, mean budget gain {a[1]:+.3f}")
        if best is not None:
            b = score(best)
            verdict.append(f"best fixed {best}: {b[0]:.2f}x, {b[1]:+.3f}")
            verdict.append("auto beats the best fixed (M, N)" if a > b else "auto does not beat the best fixed (M, N)")
    return {
        "seeds": seeds,
        "threshold_rule": f"standard RL mean validation greedy accuracy at {list(threshold_fractions)} of training "
        f"(steps {th_steps})",
        "thresholds": thresholds,
        "steps_to_threshold": reach,
        "speedups": speed,
        "fixed_budgets": budgets,
        "best_fixed": best,
        "auto_jumps": jumps,
        "verdict": "; ".join(verdict),
    }


#: fields that only act when a run re-grounds: a standard run's saved values are taken as they are
REGROUND_ONLY = ("reground_norms", "reground_optimizer", "reground_max_n")


def _unused_as_saved(cfg, saved: dict | None):
    """``cfg`` with the re-grounding-only fields taken from ``saved`` when ``cfg`` does not re-ground (a standard
    run trained by the study, with another ``reground_optimizer``, is the same standard run)."""
    if cfg.reground is not None or not isinstance(saved, dict):
        return cfg
    return dataclasses.replace(cfg, **{k: saved[k] for k in REGROUND_ONLY if k in saved})


def check_reusable(run: Path, saved: dict, cfg, what: str) -> None:
    """Refuse (one :class:`~rlvr_linear.errors.RlvrLinearError` line) a run whose saved config is not ``cfg``
    (``study.common.same_config``: fields added since take their defaults)."""
    from .common import same_config

    old = saved.get("config")
    if same_config(old, cfg):
        return
    want = dataclasses.asdict(cfg)
    if isinstance(old, dict):
        try:  # fields added since the run was saved take their defaults, as same_config does
            full = dataclasses.asdict(type(cfg)(**{k: v for k, v in old.items() if k in want}))
        except (TypeError, ValueError, RlvrLinearError):
            full = old
        diff = [f"{k} (saved {full.get(k)!r}, wanted {v!r})" for k, v in want.items() if full.get(k) != v]
        diff += [f"{k} (a field this version does not know)" for k in sorted(set(old) - set(want))]
        why = "differs in " + ", ".join(diff)
    else:
        why = "its manifest has no config"
    raise RlvrLinearError(f"{run}: not the comparison's {what} run ({why}); move it away or use another output folder")


def compare_adaptive(
    out: str | Path,
    base_cfg,
    *,
    m: int,
    fixed: tuple[str, ...] = ("20,20", "20,60"),
    seeds: tuple[int, ...] = (0, 1, 2),
    max_n: int | None = None,
    threshold_fractions=(0.5, 0.75, 0.9),
    budget_fractions=(0.25, 0.5, 1.0),
    budget_problems: int = 200,
    progress: bool = True,
) -> dict:
    """Train standard RL, every fixed ``"M,N"`` and ``"m,auto"`` for each seed (``base_cfg``: a
    :class:`~rlvr_linear.training.grpo.TrainConfig`; runs in ``OUT/runs/<config>_seed<s>``, resumed if present), score
    the budgets and write ``OUT/comparison.json``."""
    from ..evaluation.tasks import get_task
    from ..training.grpo import train
    from .common import _eval_greedy, ckpt, snap

    out = Path(out)
    configs = {"standard": None, **{f"({s})": s for s in fixed}, AUTO: f"{m},auto"}
    manifests: dict[str, dict[int, dict]] = {}
    for name, spec in configs.items():
        for seed in seeds:
            run = out / "runs" / f"{name.strip('()').replace(',', '_')}_seed{seed}"
            man = run / "manifest.json"
            cfg = dataclasses.replace(base_cfg, seed=seed, reground=spec, reground_max_n=max_n)
            saved = read_json(man) if man.exists() else None
            if saved is not None:
                cfg = _unused_as_saved(cfg, saved.get("config"))
                check_reusable(run, saved, cfg, f"{name}, seed {seed}")
            if not (saved and saved.get("finished")):
                train(cfg, run, progress=progress)
            manifests.setdefault(name, {})[seed] = {**read_json(man), "run": str(run)}
    task = get_task(base_cfg.task)
    problems = task.problems("test", budget_problems)
    T, u = base_cfg.steps, base_cfg.save_every
    b_steps = sorted({snap(f * T, u, lo=u, hi=T) for f in budget_fractions})
    scores = {
        (name, seed, b): _eval_greedy(str(ckpt(Path(man["run"]), b)), task, problems)
        for name, by_seed in manifests.items()
        for seed, man in by_seed.items()
        for b in b_steps
    }
    res = summarize_comparison(manifests, steps=T, save_every=u, threshold_fractions=threshold_fractions,
                               budget_scores=scores)  # fmt: skip
    res["configs"] = {k: v for k, v in configs.items()}
    res["budget_problems"] = len(problems)
    write_json(out / "comparison.json", res)
    return res
