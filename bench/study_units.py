"""Per-unit costs of the study's work on one model, for the plan's time estimate (rlvr_linear.study.plan).

Measures, in this process, on the process CPU clock (the machine is shared: wall time also counts other processes'
turns on the cores) and on the wall clock, at the given thread count:

- ``load_s``: loading a checkpoint (``from_pretrained``, fp32; the second load, after imports are warm);
- ``save_s``: saving one weights-only checkpoint (``save_checkpoint``; an extrapolated model writes the same bytes);
- ``sft_step_s``: one SFT step as ``rlvr_linear.training.sft.train_sft`` takes it (batch of the study's size, AdamW,
  clipping); the first step is dropped;
- ``greedy_s``: greedy evaluation, per problem (``evaluate(k=0)`` on a loaded model, the study's batch size 256);
- ``sample_s``: one sampled reply of avg@k (``evaluate(k, T=0.6, top-p 0.95, greedy=False)``), per reply;
- ``probe_s``: scoring one teacher-forced probe reply on one checkpoint (``score_logprobs``), per probe;
- ``weights_s`` (``--weights``): weight R² of a run of 16 checkpoints (``analyze_weights``, every element below 20 M
  parameters, the paper's 0.1% sample above, as the study): checkpoints saved after each SFT step (16 SFT steps).

The RL step is not measured here: bench/train_step.py measures it (bench/results/train_step_smollm2*.json, and
train_step_threads1.json for the tiny model). Writes bench/results/study_units_<model>.json.

    OMP_NUM_THREADS=1 python bench/study_units.py --model smollm2-135m --threads 1
    OMP_NUM_THREADS=1 python bench/study_units.py --model tiny --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

#: (task, SFT batch, greedy problems, sampled problems x k, probe prompts x samples) per model, as the study uses them
SETTINGS = {
    "smollm2-135m": dict(task="arithmetic-cot-chat", batch=8, greedy=32, sampled=8, k=4, probes=4, probe_k=4, sft=6),
    "tiny": dict(task="arithmetic", batch=16, greedy=200, sampled=50, k=8, probes=16, probe_k=4, sft=16),
}


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def both(c: Clock, n: int = 1) -> dict:
    return {"cpu_s": round(c.cpu / n, 5), "wall_s": round(c.wall / n, 5)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", choices=sorted(SETTINGS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: bench/results/study_units_<model>.json")
    ap.add_argument("--weights", action="store_true", help="also time the weight R² of 16 saved checkpoints")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = SETTINGS[args.model]

    import random

    from transformers import AutoModelForCausalLM

    from rlvr_linear.evaluation.evaluation import evaluate
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.io.checkpoints import step_dir_name
    from rlvr_linear.io.tokenizer import load_tokenizer
    from rlvr_linear.linearity.probes import encode_probes, make_probes, score_logprobs
    from rlvr_linear.models.base_model import ensure_base, sft_batch
    from rlvr_linear.training.grpo import save_checkpoint
    from rlvr_linear.training.sft import weighted_sft_loss

    base = ensure_base(args.model, progress=False)
    task = get_task(s["task"])
    res: dict = {"model": args.model, "base": str(base), "task": task.name, "threads": args.threads, "settings": s}
    AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)  # first load: imports, file cache
    with Clock() as c:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tok = load_tokenizer(base)
    res["n_params"] = sum(p.numel() for p in model.parameters())
    res["load_s"] = both(c)

    with tempfile.TemporaryDirectory() as tmp, Clock() as c:
        save_checkpoint(model, tok, Path(tmp) / "step_000000")
    res["save_s"] = both(c)

    # SFT steps exactly as train_sft takes them (no noise: weights None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pool, rng = task.problems("train", 2000), random.Random(0)
    traj = Path(tempfile.mkdtemp(prefix="study_units_"))
    if args.weights:
        save_checkpoint(model, tok, traj / step_dir_name(0))
    model.train()
    steps = []
    for i in range(s["sft"]):
        batch = [pool[rng.randrange(len(pool))] for _ in range(s["batch"])]
        with Clock() as c:
            x, y, m = sft_batch(tok, [task.render(p, tok) for p in batch], [task.reference(p) for p in batch])
            loss = weighted_sft_loss(model(input_ids=x, attention_mask=m).logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        steps.append((c, int(m.sum())))
        if args.weights:
            save_checkpoint(model, tok, traj / step_dir_name(i + 1))
    timed = steps[1:]
    res["sft_step_s"] = {
        "cpu_s": round(sum(c.cpu for c, _ in timed) / len(timed), 4),
        "wall_s": round(sum(c.wall for c, _ in timed) / len(timed), 4),
        "steps_timed": len(timed),
        "tokens_per_step": round(sum(n for _, n in timed) / len(timed), 1),
        "batch": s["batch"],
    }
    model.eval()
    del opt
    if args.weights:
        from rlvr_linear.io.checkpoints import discover
        from rlvr_linear.linearity import analyze_weights

        with Clock() as c:
            analyze_weights(discover(traj), sample="all" if res["n_params"] < 20_000_000 else "paper")
        res["weights_s"] = {**both(c), "checkpoints": s["sft"] + 1}
    shutil.rmtree(traj, ignore_errors=True)

    val = task.problems("validation", s["greedy"])
    with Clock() as c:
        r = evaluate((model, tok), task, problems=val, k=0, batch_size=256)
    res["greedy_s"] = {**both(c, len(val)), "problems": len(val), "accuracy": r.greedy_accuracy}

    sp = task.problems("test", s["sampled"])
    with Clock() as c:
        evaluate((model, tok), task, problems=sp, k=s["k"], temperature=0.6, top_p=0.95, greedy=False, seed=0)
    res["sample_s"] = {**both(c, len(sp) * s["k"]), "replies": len(sp) * s["k"]}

    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(model, tok, Path(tmp) / "m")
        probes = make_probes(Path(tmp) / "m", task, n_prompts=s["probes"], k=s["probe_k"], seed=0)
    enc = encode_probes(tok, probes)
    with Clock() as c:
        score_logprobs(model, enc, batch_size=8, pad_id=tok.pad_token_id or 0)
    res["probe_s"] = {
        **both(c, len(enc)),
        "probes": len(enc),
        "mean_tokens": round(sum(len(a) + len(b) for a, b in enc) / len(enc), 1),
    }
    res["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    res["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.out or Path(__file__).parent / "results" / f"study_units_{args.model}.json")
    from rlvr_linear.io import write_json

    write_json(out, res)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
