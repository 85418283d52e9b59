"""Benchmark: overhead of ``SketchCallback`` (``rlvr-linear train --sketch``) on a real GRPO run.

The structure of :mod:`monitor_overhead` (whose pieces it imports), side by side in one invocation:

* **in-run**: a run with ``--sketch`` times each of its records (the weight sample, the probes' log-probs, the writes;
  ``sketch_seconds`` per step in its manifest); those after step 0 divided by the run's training wall time (which
  starts after the step-0 save); the step-0 record, which also samples the probes, is reported on its own;
* **A/B**: the same configuration without the sketch, alternated with it (off, on, off, on, ...; ``--repeats``
  pairs), median wall time per step of each.

Also the sketch's size: bytes per checkpoint file and in all. Results go to ``bench/results/sketch_overhead.json``
(``--out`` to change; ``sketch_overhead_smollm2.json`` is the name for the SmolLM2 preset).

    OMP_NUM_THREADS=1 python bench/sketch_overhead.py --steps 4 --save-every 2     # a smoke test (~1 min)
    OMP_NUM_THREADS=1 python bench/sketch_overhead.py                              # tiny preset, 200 steps
    python bench/sketch_overhead.py --model smollm2-135m --steps 30 --save-every 5 --threads 2 \\
        --out bench/results/sketch_overhead_smollm2.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from monitor_overhead import HERE, alternate, machine, overhead, timed_train


def sketch_size(run: Path) -> dict:
    steps = sorted((run / "sketch").glob("step_*.safetensors"))
    total = sum(f.stat().st_size for f in (run / "sketch").iterdir() if f.is_file())
    return {"checkpoints": len(steps), "bytes_per_checkpoint": max((f.stat().st_size for f in steps), default=0),
            "bytes_total": total}  # fmt: skip


def one_run(preset: str, steps: int, save_every: int, sketch: bool, threads: int) -> dict:
    wall, man, size = timed_train(preset, inspect=sketch_size if sketch else None, steps=steps,
                                  save_every=save_every, threads=threads, sketch=sketch)  # fmt: skip
    return {
        "sketch": sketch,
        "wall_s": wall,
        "train_wall_s": man["wall_time"],  # from the end of the step-0 save to the last save
        "per_step_s": man["wall_time"] / steps,
        "sketch_s": sum(v for k, v in man.get("sketch_seconds", {}).items() if k != "0"),
        "sketch_step0_s": man.get("sketch_seconds", {}).get("0", 0.0),
        "size": size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"], help="preset (tiny | smollm2)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=1, help="off/on pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "sketch_overhead.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    preset = "tiny" if args.model == "tiny" else "smollm2"
    runs = alternate(args.repeats, lambda on: one_run(preset, args.steps, args.save_every, on, args.threads))
    med_off, med_on, in_run = overhead(runs, "sketch", "sketch_s")
    res = {
        "benchmark": "sketch_overhead",
        "command": "python bench/sketch_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "preset": preset,
        "steps": args.steps,
        "save_every": args.save_every,
        "threads": args.threads,
        "machine": machine(),
        "runs": runs,
        "per_step_s": {"without": med_off, "with": med_on},
        "overhead_in_run": in_run,
        "overhead_ab": (med_on - med_off) / med_off,
        "sketch_size": [x for x in runs if x["sketch"]][-1]["size"],
        "target": 0.02,
        "meets_target_in_run": in_run <= 0.02,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    per_ckpt = res["sketch_size"]["bytes_per_checkpoint"]
    print(f"per step: {med_off:.3f} s without, {med_on:.3f} s with the sketch; overhead in-run {in_run:.2%}, "
          f"A/B {res['overhead_ab']:+.2%}; {per_ckpt} bytes per checkpoint -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
