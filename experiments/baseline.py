"""Issue 2: does the tiny preset learn? Base vs RL (200 steps) greedy test accuracy over 3 seeds, learning curves.

    python experiments/baseline.py        # writes experiments/results/baseline.json
"""

from __future__ import annotations

import json
import time

from common import SEEDS, baseline_run, save_result

from rlvr_linear.evaluation import evaluate, mean_ci
from rlvr_linear.models import ensure_base

N_TEST = 500  # of the ~1000 test problems of 2-digit addition


def main() -> None:
    t0 = time.time()
    base = ensure_base("tiny")
    base_rec = json.loads((base / "rlvr_linear_base.json").read_text())
    base_acc = evaluate(base, "arithmetic", split="test", n_problems=N_TEST, k=0).greedy_accuracy
    per_seed = []
    for seed in SEEDS:
        run = baseline_run(seed)
        man = json.loads((run / "manifest.json").read_text())
        last = run / f"step_{man['checkpoints'][-1]['step']:06d}"
        acc = evaluate(last, "arithmetic", split="test", n_problems=N_TEST, k=0).greedy_accuracy
        per_seed.append({
            "seed": seed,
            "test_greedy_final": acc,
            "gain": acc - base_acc,
            "wall_seconds": man["wall_time"],
            "curve": [(c["step"], c["val_accuracy"], c["mean_reward"]) for c in man["checkpoints"]],
        })
        print(f"seed {seed}: test greedy {base_acc:.3f} -> {acc:.3f} ({man['wall_time']:.0f} s)")
    gains = mean_ci(r["gain"] for r in per_seed)
    finals = mean_ci(r["test_greedy_final"] for r in per_seed)
    print(f"gain over base: {gains['mean'] * 100:+.1f} points (std {gains['std'] * 100:.1f}, 3 seeds)")
    save_result("baseline", {
        "protocol": {"preset": "tiny", "steps": 200, "seeds": list(SEEDS), "n_test": N_TEST, "metric": "greedy"},
        "base": {"test_greedy": base_acc, "warmup_steps": base_rec["steps"], "warmup_seconds": base_rec["seconds"],
                 "params": base_rec["params"]},
        "final_test_greedy": finals,
        "gain": gains,
        "per_seed": per_seed,
    }, t0)


if __name__ == "__main__":
    main()
