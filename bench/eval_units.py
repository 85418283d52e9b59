"""Greedy and sampled evaluation cost per problem / per reply of one checkpoint, on the process CPU clock (one thread:
the work a free core would spend, whatever else runs), as the trajectory stage evaluates (batch 64, the run's reply
cap and sampling). The unit costs of the study's real-model plan (``study.plan.UNIT_COSTS["smollm2-arith"]``).

    OMP_NUM_THREADS=1 python bench/eval_units.py out/smol-seed0/runs/rl_seed0/step_000070
    # -> bench/results/eval_units_smollm2-arith.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--task", default="arithmetic:system=")
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/results/eval_units_smollm2-arith.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from rlvr_linear.evaluation.evaluation import as_generator, evaluate

    gen = as_generator(str(args.checkpoint))
    common = dict(split="test", n_problems=args.problems, max_new_tokens=args.max_new_tokens, batch_size=64, seed=0)
    t, w = time.process_time(), time.perf_counter()
    g = evaluate(gen, args.task, k=0, **common)
    greedy = (time.process_time() - t) / args.problems, (time.perf_counter() - w) / args.problems
    t, w = time.process_time(), time.perf_counter()
    s = evaluate(gen, args.task, k=args.k, greedy=False, temperature=args.temperature, top_p=args.top_p, **common)
    n = args.problems * args.k
    sample = (time.process_time() - t) / n, (time.perf_counter() - w) / n
    res = {"what": "evaluation cost on the process CPU clock (wall beside it), one thread", "checkpoint":
           str(args.checkpoint), "task": args.task, "problems": args.problems, "k": args.k,
           "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
           "greedy_cpu_s_per_problem": round(greedy[0], 4), "greedy_wall_s_per_problem": round(greedy[1], 4),
           "sample_cpu_s_per_reply": round(sample[0], 4), "sample_wall_s_per_reply": round(sample[1], 4),
           "greedy_accuracy": g.greedy_accuracy, "avg_k": float(s.correct.mean())}  # fmt: skip
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
