"""The paper's numbers, shown next to ours in every stage's result and in the report.

Kept apart from the protocol (:mod:`.config`): these are data read off the paper, not choices of ours, and a stage
only quotes them (its ``paper`` field); no verdict reads them.
"""

#: paper numbers shown next to ours (see /work/shared/reference/paper.md; [MEASURED] = read off a figure)
PAPER = {
    "linearity": {
        "rl_weight_r2_median": 0.84, "rl_weight_r2_iqr": [0.74, 0.91],
        "rl_logprob_r2_median": 0.81, "rl_logprob_r2_iqr": [0.66, 0.87],
        "sft_weight_r2_median": 0.42, "sft_weight_r2_iqr": [0.18, 0.71],
        "sft_logprob_r2_median": 0.37,
        "share_weights_r2_gt_0.7": "> 70% (README), ≈ 85% (v1 Fig. 1, measured)",
        "source": "Fig. 2 row (a) [MEASURED, ±0.02]; threshold R² > 0.7",
    },
    "robustness": {
        "GRPO": {"weight": 0.84, "weight_iqr": [0.74, 0.91], "logprob": 0.81},
        "GSPO": {"weight": 0.73, "weight_iqr": [0.57, 0.85], "logprob": 0.76},
        "REINFORCE++": {"weight": 0.72, "weight_iqr": [0.59, 0.83], "logprob": 0.75},
        "SGD": {"weight": 0.81, "weight_iqr": [0.70, 0.89], "logprob": 0.76},
        "LR x3 (3e-6)": {"weight": 0.80, "weight_iqr": [0.73, 0.87], "logprob": 0.81},
        "Rollouts 16": {"weight": 0.83, "weight_iqr": [0.68, 0.89], "logprob": 0.77},
        "source": "Fig. 2 (f)-(h) [MEASURED, ±0.02]; Dr.GRPO is not in the paper",
    },
    "mechanism": {
        "snr_db": [10, 5, 0, -3, -5, -10, -15, -20, "zero-signal"],
        "weighted_median_r2": [0.50, 0.45, 0.43, 0.51, 0.56, 0.582, 0.52, 0.41, 0.40],
        "weighted_mean_r2": [0.47, 0.46, 0.44, 0.47, 0.51, 0.52, 0.48, 0.44, 0.42],
        "sft_baseline_median": 0.426,
        "sft_baseline_mean": 0.443,
        "peak": "-10 dB, weighted median 0.582 (printed)",
        "source": "Fig. 3 [MEASURED ±0.01 except the printed peak]",
    },
    "weight_extrapolation": {
        "t1=300": {"targets": [400, 600, 900, 1200], "avg@64_%": [32.4, 35.25, 35.7, 34.4], "peak_alpha": 3.0},
        "t1=600": {"targets": [800, 1000, 1100, 1200], "avg@64_%": [36.5, 37.1, 37.3, 36.3], "peak_alpha": 1.83},
        "t1=1400": {"targets": [1600, 1700, 1800, 1900], "avg@64_%": [39.5, 40.55, 41.5, 40.9], "peak_alpha": 1.29},
        "std_rl_reference": "AIME24 0.349 at step 800, 0.383 at step 1200 (Table 2)",
        "source": "Fig. 5, AIME24 avg@64 [MEASURED ±0.3 points], base t0 = 0",
    },
    "logit_extrapolation": {
        "std_rl_avg": 0.4479, "ours_avg": 0.4667, "relative_improvement_%": 4.2,
        "per_benchmark_%": {"AIME24": 6.3, "AIME25": 6.3, "MATH500": 1.1, "LCB": 10.6},
        "setting": "base 200, second 1400, target 2000 (alpha 1.5), T = 0.6, top-p 0.95",
        "source": "Table 1 (exact)",
    },
    "regrounding": {
        "speedup_at_thresholds": {"AIME24>=0.35": {"(100,100)": 1.7, "(20,100)": 5.0},
                                  "AIME24>=0.38": {"(100,100)": 1.6, "(300,600)": 1.8, "(20,100)": 6.1},
                                  "AIME24>=0.40": {"(100,100)": 1.6, "(300,300)": 1.3}},
        "fixed_budget_improvement_%": {"200": 5.2, "400": 6.3, "800": 5.7, "1200": 2.3},
        "counted": "gradient steps only (wall time not reported)",
        "source": "Fig. 6 and Table 2 (exact)",
    },
}  # fmt: skip
