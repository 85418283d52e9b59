"""The analysis of the SmolLM2-135M GRPO trajectory, or of any finished run of ``rlvr-linear train``.

Prints the budget (greedy evaluations x problems x seconds per problem), runs
``rlvr_linear.regime.trajectory.analyze_trajectory`` (cached in OUT: rerun the same command to resume after a kill)
and copies ``trajectory.json``, the cases (``trajectory_cases.jsonl``) and the figures into the results folder:

    OMP_NUM_THREADS=1 python experiments/smollm2_trajectory.py out/smol-cot -o out/smol-cot-analysis
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> dict:
    from rlvr_linear.regime.trajectory import ALPHAS, analyze_trajectory, copy_results, estimate, estimate_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished run folder of rlvr-linear train (manifest.json, step_* checkpoints)")
    ap.add_argument("-o", "--out", required=True, help="analysis folder (cache; rerun to resume)")
    ap.add_argument("--problems", type=int, default=300, help="test problems each model is scored on (greedy)")
    ap.add_argument("--task", default=None, help="default: the run's task")
    ap.add_argument("--probe-prompts", type=int, default=16, help="validation prompts of the log-prob probes")
    ap.add_argument("--probe-samples", type=int, default=4, help="replies sampled from step 0 per probe prompt")
    ap.add_argument("--activation-probes", type=int, default=8, help="probes whose activations are analysed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the budget is for one)")
    ap.add_argument("--results-dir", default="experiments/results/smollm2", help="where the results are copied")
    ap.add_argument("--no-copy", action="store_true", help="do not copy the results")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    e = estimate(args.run, args.problems, task=args.task, alphas=ALPHAS)
    print(f"estimate: {estimate_line(e)}", flush=True)
    t = time.time()
    res = analyze_trajectory(
        args.run,
        args.out,
        task=args.task,
        problems=args.problems,
        probe_prompts=args.probe_prompts,
        probe_samples=args.probe_samples,
        activation_probes=args.activation_probes,
        threads=args.threads,
    )
    print(f"analysis done in {time.time() - t:.0f} s: {args.out}/trajectory.json")
    if not args.no_copy:
        for p in copy_results(args.out, args.results_dir):
            print(f"  {p}")
    return res


if __name__ == "__main__":
    main()
