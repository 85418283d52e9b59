"""Benchmark: overhead of ``LinearityMonitor`` (``rlvr-linear train --monitor``) on a real GRPO run.

Two measurements in one invocation, side by side:

* **in-run**: a run with the monitor times its own work (sampling the parameters, the statistics and the backtest;
  ``linearity/seconds`` in its history) and we divide by the run's training wall time (step 0 save excluded);
* **A/B**: the same configuration without the monitor, alternated with the monitored one (off, on, off, on, ...;
  ``--repeats`` pairs), median wall time per step of each. On a shared machine this is noisier than the in-run
  number; both are reported.

Target: overhead <= 2% of step time. Results go to ``bench/results/monitor_overhead.json`` (``--out`` to change).

    OMP_NUM_THREADS=1 python bench/monitor_overhead.py --steps 20 --save-every 5            # a quick check
    OMP_NUM_THREADS=1 python bench/monitor_overhead.py                                      # tiny preset, 200 steps
    python bench/monitor_overhead.py --model smollm2-135m --steps 30 --save-every 5 --threads 2   # SmolLM2 preset
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed_train(preset: str, inspect=None, **fields) -> tuple[float, dict, object]:
    """One ``train`` of ``preset`` with TrainConfig ``fields`` in a temporary folder: (wall seconds, its manifest,
    ``inspect(run folder)`` before the folder goes, or None)."""
    from rlvr_linear.io import read_json
    from rlvr_linear.training.grpo import PRESETS, TrainConfig, train

    cfg = TrainConfig(**{**PRESETS[preset], **fields})
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(cfg, Path(d) / "run", progress=False)
        wall = time.perf_counter() - t0
        run = Path(d) / "run"
        return wall, read_json(run / "manifest.json"), inspect(run) if inspect else None


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__}


def one_run(preset: str, steps: int, save_every: int, every: int | None, monitor: bool, threads: int) -> dict:
    wall, man, _ = timed_train(preset, steps=steps, save_every=save_every, threads=threads, monitor=monitor,
                            monitor_every=every)  # fmt: skip
    hist = man.get("monitor", [])
    mon_s = hist[-1]["linearity/seconds"] if hist else 0.0
    return {
        "monitor": monitor,
        "wall_s": wall,
        "train_wall_s": man["wall_time"],  # from the end of the step-0 save to the last save
        "per_step_s": man["wall_time"] / steps,
        "monitor_s": mon_s,
        "measurements": len(hist),
        "last": {k: v for k, v in (hist[-1] if hist else {}).items() if k.startswith("linearity/")},
    }


def alternate(repeats: int, run) -> list[dict]:
    """``repeats`` off/on pairs of ``run(flag)``, alternating the order (off, on, on, off, ...), each printed."""
    runs = []
    for r in range(repeats):
        for flag in (False, True) if r % 2 == 0 else (True, False):
            runs.append(run(flag))
            print(json.dumps(runs[-1]), flush=True)
    return runs


def overhead(runs: list[dict], flag: str, seconds: str) -> tuple[float, float, float]:
    """Median s/step without and with ``flag``, and the median in-run share (``seconds`` / training wall time)."""
    on = [x for x in runs if x[flag]]
    off = [x for x in runs if not x[flag]]
    med_on = statistics.median(x["per_step_s"] for x in on)
    med_off = statistics.median(x["per_step_s"] for x in off)
    return med_off, med_on, statistics.median(x[seconds] / x["train_wall_s"] for x in on)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"], help="preset (tiny | smollm2)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--save-every", type=int, default=20)
    ap.add_argument("--every", type=int, default=None, help="monitor interval (default: save every)")
    ap.add_argument("--repeats", type=int, default=1, help="off/on pairs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "monitor_overhead.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    preset = "tiny" if args.model == "tiny" else "smollm2"
    runs = alternate(args.repeats, lambda on: one_run(preset, args.steps, args.save_every, args.every, on,
                                                      args.threads))  # fmt: skip
    med_off, med_on, in_run = overhead(runs, "monitor", "monitor_s")
    res = {
        "benchmark": "monitor_overhead",
        "command": "python bench/monitor_overhead.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
        "preset": preset,
        "steps": args.steps,
        "save_every": args.save_every,
        "monitor_every": args.every or args.save_every,
        "threads": args.threads,
        "machine": machine(),
        "runs": runs,
        "per_step_s": {"without": med_off, "with": med_on},
        "overhead_in_run": in_run,
        "overhead_ab": (med_on - med_off) / med_off,
        "target": 0.02,
        "meets_target_in_run": in_run <= 0.02,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"per step: {med_off:.3f} s without, {med_on:.3f} s with the monitor; overhead in-run {in_run:.2%}, "
          f"A/B {res['overhead_ab']:+.2%} -> {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
