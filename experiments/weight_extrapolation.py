"""Issue 4 (paper Figure 5 in miniature): extrapolate weights from (0, t1) to later targets, for three t1, and
compare validation accuracy with the real RL checkpoints at those targets. 3 seeds, mean and 95% CI.

Methods: the paper's two-point rule from (0, t1) (the main result), and, as a denoising check, a least-squares line
per parameter over every saved checkpoint in [0, t1] (every 20 steps) evaluated at the target.

    python experiments/weight_extrapolation.py   # writes experiments/results/weight_extrapolation.json + .png
    # exploratory variant: the same protocol on SGD runs (lr = 100 x the AdamW lr, the study's fixed factor)
    python experiments/weight_extrapolation.py --optimizer sgd   # writes weight_extrapolation_sgd.json + .png
"""

from __future__ import annotations

import shutil
import time

from common import RESULTS, SEEDS, WORK, baseline_run, save_result

from rlvr_linear.checkpoints import discover
from rlvr_linear.evaluation import evaluate, mean_ci
from rlvr_linear.weight_extrapolation import alpha_from_steps, extrapolate_fit, extrapolate_two_point

# fixed before running: t1 at 10%, 30%, 50% of the 200-step run; targets up to 2x past the run's end for t1 = 100
T1S = (20, 60, 100)
TARGETS = {20: (40, 60, 100, 140, 200), 60: (80, 120, 160, 200, 300), 100: (140, 160, 200, 300, 400)}
N_VAL = 500  # validation problems (greedy)


def main() -> None:
    import argparse

    from rlvr_linear.study import SGD_LR_FACTOR
    from rlvr_linear.tasks import get_task
    from rlvr_linear.train import PRESETS

    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    args = ap.parse_args()
    overrides = {} if args.optimizer == "adamw" else {
        "optimizer": "sgd", "learning_rate": PRESETS["tiny"]["learning_rate"] * SGD_LR_FACTOR}
    name = "weight_extrapolation" + ("" if args.optimizer == "adamw" else f"_{args.optimizer}")
    t0 = time.time()
    val = None
    rows = []
    for seed in SEEDS:
        run = baseline_run(seed, **overrides)

        task = get_task("arithmetic")
        val = val or task.problems("validation", N_VAL)
        real = {}
        for step in sorted({s for ts in TARGETS.values() for s in ts} | set(T1S) | {0}):
            d = run / f"step_{step:06d}"
            if d.exists():
                real[step] = evaluate(d, task, problems=val, k=0).greedy_accuracy
        for t1 in T1S:
            for target in TARGETS[t1]:
                alpha = alpha_from_steps(0, t1, target)
                out = WORK / "wx" / f"{name}-seed{seed}-t1_{t1}-T{target}"
                extrapolate_two_point(run / "step_000000", run / f"step_{t1:06d}", out, alpha=alpha, overwrite=True,
                                      progress=False)
                acc = evaluate(out, task, problems=val, k=0).greedy_accuracy
                extrapolate_fit(discover(run).until(t1), out, target_step=target, fit="all", overwrite=True,
                                force=True, progress=False)
                acc_lsq = evaluate(out, task, problems=val, k=0).greedy_accuracy
                shutil.rmtree(out)
                rows.append({"seed": seed, "t1": t1, "target": target, "alpha": alpha, "extrapolated": acc,
                             "least_squares": acc_lsq,
                             "rl_at_target": real.get(target), "rl_at_t1": real[t1], "rl_at_0": real[0]})
                print(f"seed {seed} t1={t1} -> {target} (alpha {alpha:.2f}): two-point {acc:.3f}, lsq {acc_lsq:.3f}, "
                      f"RL at target {real.get(target)}")
    summary = []
    for t1 in T1S:
        for target in TARGETS[t1]:
            sel = [r for r in rows if r["t1"] == t1 and r["target"] == target]
            ex = mean_ci(r["extrapolated"] for r in sel)
            rl = mean_ci(r["rl_at_target"] for r in sel if r["rl_at_target"] is not None)
            diff = mean_ci(r["extrapolated"] - r["rl_at_target"] for r in sel if r["rl_at_target"] is not None)
            summary.append({"t1": t1, "target": target, "alpha": sel[0]["alpha"], "extrapolated": ex,
                            "least_squares": mean_ci(r["least_squares"] for r in sel),
                            "rl_at_target": rl, "extrapolated_minus_rl": diff,
                            "rl_at_t1": mean_ci(r["rl_at_t1"] for r in sel),
                            "rl_at_0": mean_ci(r["rl_at_0"] for r in sel)})
    _plot(summary, name, args.optimizer)
    save_result(name, {
        "protocol": {"runs": f"tiny preset, 200 RL steps, optimizer {args.optimizer}", "overrides": overrides,
                     "seeds": list(SEEDS), "base_step": 0, "t1": list(T1S),
                     "targets": {str(k): list(v) for k, v in TARGETS.items()}, "metric": f"greedy, {N_VAL} val",
                     "norms": "copied from t1 (paper)"},
        "summary": summary, "rows": rows,
    }, t0)


def _plot(summary, name, optimizer):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for t1, color in zip(T1S, ("tab:blue", "tab:orange", "tab:green")):
        s = [r for r in summary if r["t1"] == t1]
        x = [r["target"] for r in s]
        y = [r["extrapolated"]["mean"] for r in s]
        lo = [r["extrapolated"]["ci_low"] for r in s]
        hi = [r["extrapolated"]["ci_high"] for r in s]
        ax.plot(x, y, "o-", color=color, label=f"two-point from (0, {t1})")
        ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        ax.plot(x, [r["least_squares"]["mean"] for r in s], "s:", color=color, ms=4,
                label=f"least squares on [0, {t1}]")
    rl = {r["target"]: r["rl_at_target"]["mean"] for r in summary if r["rl_at_target"]["mean"] is not None}
    rl.update({r["t1"]: r["rl_at_t1"]["mean"] for r in summary})
    rl[0] = summary[0]["rl_at_0"]["mean"]
    xs = sorted(rl)
    ax.plot(xs, [rl[x] for x in xs], "k--", lw=1.5, label="real RL checkpoints")
    ax.axvline(200, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("target step")
    ax.set_ylabel("validation greedy accuracy")
    ax.set_title(f"Weight-space extrapolation, tiny model, {optimizer} (mean, 95% CI over 3 seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=120)


if __name__ == "__main__":
    main()
