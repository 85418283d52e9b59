"""Issue 5 (paper Table 1 in miniature): decode with two RL checkpoints and logits l_a + alpha (l_b - l_a), against
the RL checkpoints themselves. avg@8 (T = 0.6, top-p 0.95) on test problems, paired bootstrap CI, 3 seeds.

    python experiments/logit_extrapolation.py   # writes experiments/results/logit_extrapolation.json
"""

from __future__ import annotations

import time

import numpy as np
from common import SEEDS, baseline_run, save_result

from rlvr_linear.evaluation import evaluate, mean_ci, paired_bootstrap
from rlvr_linear.logit_extrapolation import ExtrapolatedGenerator, alpha_from_steps
from rlvr_linear.tasks import get_task

# fixed before running. The paper: a = 200, b = 1400, target 2000 (alpha 1.5), compared with standard RL.
# (a, b, target, compare-with step): inside the run the real RL checkpoint at the target exists; past the end
# (target 290) we compare with the last RL checkpoint, as the paper compares with continued RL.
SETTINGS = [(20, 100, 140, 140), (20, 100, 200, 200), (20, 200, 290, 200), (100, 200, 250, 200)]
N_TEST, K = 500, 8


def main() -> None:
    t0 = time.time()
    task = get_task("arithmetic")
    probs = task.problems("test", N_TEST)
    rows = []
    rl_evals: dict = {}
    for seed in SEEDS:
        run = baseline_run(seed)
        for a, b, target, ref in SETTINGS:
            alpha = alpha_from_steps(a, b, target)
            gen = ExtrapolatedGenerator.from_dirs(run / f"step_{a:06d}", run / f"step_{b:06d}", alpha=alpha)
            ex = evaluate(gen, task, problems=probs, k=K, seed=seed)
            if (seed, ref) not in rl_evals:
                rl_evals[seed, ref] = evaluate(run / f"step_{ref:06d}", task, problems=probs, k=K, seed=seed)
            base = rl_evals[seed, ref]
            ci = paired_bootstrap(base.per_problem("avg"), ex.per_problem("avg"), seed=seed)
            rows.append({"seed": seed, "a": a, "b": b, "target": target, "alpha": alpha, "compare_step": ref,
                         "extrapolated_avg8": ex.avg_at_k, "rl_avg8": base.avg_at_k,
                         "extrapolated_greedy": ex.greedy_accuracy, "rl_greedy": base.greedy_accuracy,
                         "extrapolated_pass8": ex.pass_at_k[K], "rl_pass8": base.pass_at_k[K], "diff_ci": ci,
                         "per_problem_diff": (ex.per_problem("avg") - base.per_problem("avg")).tolist()})
            print(f"seed {seed} ({a},{b})->{target} a={alpha:.2f}: avg@8 {ex.avg_at_k:.3f} vs RL@{ref} "
                  f"{base.avg_at_k:.3f}  diff {ci['diff']:+.3f} [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]")
    table = []
    for a, b, target, ref in SETTINGS:
        sel = [r for r in rows if (r["a"], r["b"], r["target"]) == (a, b, target)]
        pooled = np.concatenate([r["per_problem_diff"] for r in sel])
        table.append({
            "a": a, "b": b, "target": target, "alpha": sel[0]["alpha"], "compare_step": ref,
            "extrapolated_avg8": mean_ci(r["extrapolated_avg8"] for r in sel),
            "rl_avg8": mean_ci(r["rl_avg8"] for r in sel),
            "diff_over_seeds": mean_ci(r["extrapolated_avg8"] - r["rl_avg8"] for r in sel),
            "relative_improvement": float(np.mean([r["extrapolated_avg8"] for r in sel]) /
                                          np.mean([r["rl_avg8"] for r in sel]) - 1),
            "pooled_paired_bootstrap": paired_bootstrap(np.zeros_like(pooled), pooled),
        })
    for r in rows:
        r.pop("per_problem_diff")
    save_result("logit_extrapolation", {
        "protocol": {"runs": "tiny preset, 200 RL steps", "seeds": list(SEEDS), "n_test": N_TEST, "k": K,
                     "temperature": 0.6, "top_p": 0.95, "settings": SETTINGS},
        "table": table, "rows": rows,
    }, t0)


if __name__ == "__main__":
    main()
