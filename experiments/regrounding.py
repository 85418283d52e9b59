"""Issue 6 (paper Figure 6 and Table 2 in miniature): standard RL vs periodic re-grounding over a grid of (M, N)
scaled by 1/10 from the paper's (100,100), (300,300), (300,600), (20,100). 3 seeds.

Protocol, fixed before running:
* every run uses the tiny preset (lr 3e-4, 16 x 8), saves every 10 gradient steps, and every checkpoint is evaluated
  afterwards on the same 500 validation problems (greedy);
* standard RL runs 200 gradient steps, re-grounding runs 120 gradient steps;
* thresholds: the standard-RL mean validation accuracy (over seeds) at steps 70, 160 and 200, i.e. the paper's
  500, 1100 and 1400 of 1400 scaled to our 200 steps (step 70 reads the checkpoint at 70);
* steps to a threshold = the first checkpoint whose validation accuracy reaches it (per seed); the speed-up is the
  ratio of the mean steps of standard RL to those of re-grounding, over seeds that reached it (reach counts reported);
* fixed budgets (Table 2): validation accuracy at 20, 40, 80 and 120 gradient steps;
* wall time: the run's wall clock at the checkpoint (training + jumps + the in-run evaluation, the same for all).

    python experiments/regrounding.py   # writes experiments/results/regrounding.json + regrounding.png
"""

from __future__ import annotations

import json
import time

from common import RESULTS, SEEDS, WORK, save_result

from rlvr_linear.evaluation import evaluate, mean_ci
from rlvr_linear.tasks import get_task
from rlvr_linear.train import PRESETS, TrainConfig, train

GRID = [None, (10, 10), (30, 30), (30, 60), (2, 10)]
STEPS = {None: 200}
REGROUND_STEPS = 120
THRESHOLD_STEPS = (70, 160, 200)
BUDGETS = (20, 40, 80, 120)
N_VAL = 500


def label(mn):
    return "standard" if mn is None else f"M={mn[0]},N={mn[1]}"


def run_dir(mn, seed):
    return WORK / "reground" / f"{label(mn).replace('=', '').replace(',', '_')}-seed{seed}"


def main() -> None:
    t0 = time.time()
    task = get_task("arithmetic")
    val = task.problems("validation", N_VAL)
    curves = {}
    for mn in GRID:
        for seed in SEEDS:
            run = run_dir(mn, seed)
            cfg = TrainConfig(**{**PRESETS["tiny"], "seed": seed, "save_every": 10, "eval_problems": 100,
                                 "steps": STEPS.get(mn, REGROUND_STEPS),
                                 "reground": None if mn is None else f"{mn[0]},{mn[1]}",
                                 "reground_optimizer": "reset"})
            if not (run / "manifest.json").exists() or not json.loads((run / "manifest.json").read_text()).get(
                "finished"
            ):
                train(cfg, run, progress=False)
            man = json.loads((run / "manifest.json").read_text())
            pts = []
            for c in man["checkpoints"]:
                acc = evaluate(run / c["path"], task, problems=val, k=0).greedy_accuracy
                pts.append({"step": c["step"], "effective_step": c.get("effective_step", c["step"]),
                            "val": acc, "wall": c["wall_time"]})
            curves[(label(mn), seed)] = pts
            print(f"{label(mn)} seed {seed}: final val {pts[-1]['val']:.3f} at {pts[-1]['step']} grad steps "
                  f"({pts[-1]['effective_step']} effective), {pts[-1]['wall']:.0f} s")

    def at(lbl, seed, step):
        pts = curves[(lbl, seed)]
        return min(pts, key=lambda p: abs(p["step"] - step))

    thresholds = [mean_ci(at("standard", s, st)["val"] for s in SEEDS)["mean"] for st in THRESHOLD_STEPS]
    reach, budget = [], []
    for mn in GRID:
        lbl = label(mn)
        for th in thresholds:
            steps, walls, n = [], [], 0
            for seed in SEEDS:
                hit = next((p for p in curves[(lbl, seed)] if p["val"] >= th), None)
                if hit:
                    steps.append(hit["step"])
                    walls.append(hit["wall"])
                    n += 1
            reach.append({"config": lbl, "threshold": th, "reached": n, "of": len(SEEDS),
                          "grad_steps": mean_ci(steps), "wall_seconds": mean_ci(walls)})
        for b in BUDGETS:
            budget.append({"config": lbl, "grad_steps": b,
                           "val": mean_ci(at(lbl, s, b)["val"] for s in SEEDS),
                           "effective_steps": at(lbl, SEEDS[0], b)["effective_step"]})
    std = {r["threshold"]: r for r in reach if r["config"] == "standard"}
    for r in reach:
        s = std[r["threshold"]]
        ok = r["grad_steps"]["mean"] and s["grad_steps"]["mean"]
        r["speedup_grad_steps"] = s["grad_steps"]["mean"] / r["grad_steps"]["mean"] if ok else None
        r["speedup_wall"] = s["wall_seconds"]["mean"] / r["wall_seconds"]["mean"] if ok else None
        print(f"{r['config']:>14} >= {r['threshold']:.3f}: reached {r['reached']}/3, "
              f"steps {r['grad_steps']['mean']}, speed-up {r['speedup_grad_steps']}")
    _plot(curves)
    save_result("regrounding", {
        "protocol": {"grid": [label(m) for m in GRID], "seeds": list(SEEDS), "standard_steps": 200,
                     "regrounding_steps": REGROUND_STEPS, "threshold_steps": THRESHOLD_STEPS,
                     "optimizer_state_after_jump": "reset (paper)", "n_val": N_VAL},
        "thresholds": thresholds, "steps_to_threshold": reach, "fixed_budget": budget,
        "curves": {f"{k[0]}|seed{k[1]}": v for k, v in curves.items()},
    }, t0)


def _plot(curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for mn in GRID:
        lbl = label(mn)
        runs = [curves[(lbl, s)] for s in SEEDS]
        steps = [p["step"] for p in runs[0]]
        y = np.mean([[p["val"] for p in r] for r in runs], 0)
        ax.plot(steps, y, "-" if mn else "k-", lw=2 if mn is None else 1.3, label=lbl)
    ax.set_xlabel("gradient steps")
    ax.set_ylabel("validation greedy accuracy (mean of 3 seeds)")
    ax.set_title("Periodic re-grounding vs standard RL, tiny model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "regrounding.png", dpi=120)


if __name__ == "__main__":
    main()
