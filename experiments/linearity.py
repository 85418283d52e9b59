"""Issue 3: linearity of the tiny baseline runs (weights, token log-probs, activations) next to the null, and the
forecast error of a line fitted on the first half. 3 seeds (the runs of experiments/baseline.py).

    python experiments/linearity.py   # writes experiments/results/linearity.json (+ per-seed outputs in out/)
"""

from __future__ import annotations

import time

from common import RESULTS, SEEDS, WORK, baseline_run, save_result

from rlvr_linear.checkpoints import discover
from rlvr_linear.evaluation import mean_ci
from rlvr_linear.linearity import analyze_activations, analyze_logprobs, analyze_weights, forecast, make_probes
from rlvr_linear.tasks import get_task

FIT_UNTIL = 100  # of 200 steps


def _pick(js: dict) -> dict:
    return {"median": js["r2"]["median"], "q1": js["r2"]["q1"], "q3": js["r2"]["q3"],
            "share_gt_0.7": js["r2"]["share_gt_0.7"], "null_median": js["null"]["median"],
            "null_share_gt_0.7": js["null"]["share_gt_0.7"], "n": js["r2"]["n"]}


def main() -> None:
    t0 = time.time()
    task = get_task("arithmetic")
    per_seed = []
    for seed in SEEDS:
        run = baseline_run(seed)
        traj = discover(run)
        out = WORK / "linearity" / f"seed{seed}"
        w = analyze_weights(traj)
        w.save(out / "weights")
        w_all = analyze_weights(traj, sample="all")
        probes = make_probes(traj.paths[0], task, n_prompts=32, k=4, seed=seed)
        lp = analyze_logprobs(traj, probes)
        lp.save(out / "logprobs")
        act = analyze_activations(traj, probes)
        act.save(out / "activations")
        fc = forecast(traj, FIT_UNTIL, probes=probes)
        fc.save(out / "forecast")
        wj, lj, fj = w.to_json(), lp.to_json(), fc.to_json()
        rec = {
            "seed": seed,
            "n_checkpoints": len(traj),
            "weights_paper_sampling": _pick(wj),
            "weights_all": _pick(w_all.to_json()),
            "drift_to_noise_median": wj["drift_to_noise"]["median"],
            "share_never_moved": wj["share_never_moved"],
            "logprobs": _pick(lj),
            "activations": [{"layer": x["label"], "median": x["r2"]["median"], "null_median": x["null"]["median"]}
                            for x in act.to_json()["layers"]],
            "forecast": fj["overall"],
        }
        per_seed.append(rec)
        if seed == SEEDS[0]:  # figures quoted in the README
            import shutil

            shutil.copy(out / "weights" / "weights_r2_hist.png", RESULTS / "linearity_weights_hist.png")
            shutil.copy(out / "logprobs" / "logprobs_r2_hist.png", RESULTS / "linearity_logprobs_hist.png")
        print(f"seed {seed}: {w.summary_line()}\n        {lp.summary_line()}")
    agg = {}
    for key in ("weights_paper_sampling", "weights_all", "logprobs"):
        agg[key] = {m: mean_ci(r[key][m] for r in per_seed)
                    for m in ("median", "share_gt_0.7", "null_median", "null_share_gt_0.7")}
    save_result("linearity", {
        "protocol": {"runs": "tiny preset, 200 RL steps, checkpoints every 20 (11)", "seeds": list(SEEDS),
                     "probes": "32 validation prompts x 4 samples from step 0 (T = 1)", "fit_until": FIT_UNTIL,
                     "null": "sign-flipped increments (drift removed, step sizes kept)"},
        "aggregate": agg, "per_seed": per_seed,
    }, t0)


if __name__ == "__main__":
    main()
