"""The in-run sketch's cost per save on SmolLM2-135M: one ``SketchCallback.record`` (weight sample + probe log-probs +
write) with the former probe settings against the current ones, alternated in one process, priced against the
measured RL step (``bench/results/train_step_smollm2_S4.json``: the 100-minute experiment's setting, one thread).

    before: 32 prompts x 4 replies at the task's reply length (48 tokens for a chat model), every probe scored alone
    after:  12 prompts x 4 replies capped at the run's 16 tokens (``train --sketch`` now), prompts scored once

Overhead = record CPU seconds / (save_every x step CPU seconds): one thread, so process CPU time is the work a
free core would spend, whatever else runs (wall seconds are kept beside it). Both settings record the same
checkpoint (the callback's work does not depend on the weights' values), in turns.

    OMP_NUM_THREADS=1 python bench/sketch_record.py out/smol-timed/runs/rl_seed0 --rounds 3
    # -> bench/results/sketch_record_smollm2.json
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a SmolLM2 run of `rlvr-linear train` (step_000000 and a later checkpoint)")
    ap.add_argument("--step", type=int, default=70, help="the checkpoint recorded")
    ap.add_argument("--task", default="arithmetic:system=")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("-o", "--out", type=Path, default=Path("bench/results/sketch_record_smollm2.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import rlvr_linear.training.sketch_callback as scb
    from rlvr_linear.io.checkpoints import step_dir_name
    from rlvr_linear.io.loading import load_model
    from rlvr_linear.linearity.sketch_writer import sample_task_probes
    from rlvr_linear.training.sketch_callback import TRAIN_PROBE_PROMPTS, SketchCallback

    step_s = json.loads(Path("bench/results/train_step_smollm2_S4.json").read_text())["trl"]["cpu_s_per_step"]
    first = args.run / step_dir_name(0)
    model, tok = load_model(args.run / step_dir_name(args.step))
    model.eval()
    settings = {
        "before": dict(n_prompts=32, max_new_tokens=None, share=False),
        "after": dict(n_prompts=TRAIN_PROBE_PROMPTS, max_new_tokens=16, share=True),
    }
    probes, cbs, tokens = {}, {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="sketch_record_"))
    for name, s in settings.items():
        probes[name] = sample_task_probes(first, args.task, n_prompts=s["n_prompts"],
                                          max_new_tokens=s["max_new_tokens"], batch_size=16)[0]  # fmt: skip
        cbs[name] = SketchCallback(tmp / name, probes[name])
        cbs[name].record(model, 0, tok)  # creates the sketch (probes encoded once), as at step 0 of a run
        enc = cbs[name].sketch.encoded()
        tokens[name] = {"probes": len(enc), "prompt_tokens": sum(len(p) for p, _ in enc),
                        "reply_tokens": sum(len(r) for _, r in enc),
                        "distinct_prompts": len({tuple(p) for p, _ in enc})}  # fmt: skip
    real = scb.score_logprobs
    times: dict[str, list[float]] = {n: [] for n in settings}
    walls: dict[str, list[float]] = {n: [] for n in settings}
    step = 1
    for _ in range(args.rounds):
        for name, s in settings.items():
            scb.score_logprobs = functools.partial(real, share_prompts=s["share"])
            t, w = time.process_time(), time.perf_counter()
            cbs[name].record(model, step, tok)
            times[name].append(time.process_time() - t)
            walls[name].append(time.perf_counter() - w)
            step += 1
    scb.score_logprobs = real
    res = {
        "what": "CPU seconds per in-run sketch record of SmolLM2-135M (weights + probe log-probs + write), former vs "
                "current probe settings, alternated; overhead vs the measured RL step (CPU seconds)",  # fmt: skip
        "run": str(args.run), "checkpoint_step": args.step, "task": args.task, "threads": 1,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s)",
        "step_cpu_s": step_s, "save_every": args.save_every,
        "settings": {n: {k: v for k, v in s.items()} | tokens[n] for n, s in settings.items()},
        "record_cpu_s": {n: [round(x, 2) for x in v] for n, v in times.items()},
        "record_wall_s": {n: [round(x, 2) for x in v] for n, v in walls.items()},
        "record_cpu_s_median": {n: round(statistics.median(v), 2) for n, v in times.items()},
        "overhead_pct": {n: round(100 * statistics.median(v) / (args.save_every * step_s), 2)
                         for n, v in times.items()},
        "speedup": round(statistics.median(times["before"]) / statistics.median(times["after"]), 2),
    }  # fmt: skip
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("record_cpu_s_median", "overhead_pct", "speedup")}))
    return res


if __name__ == "__main__":
    main()
