"""Seconds per GRPO step of the tiny preset (16 prompts x 8 samples): TRL GRPOTrainer vs a bare PyTorch GRPO step.

Both run in this process, one after the other, from the same starting model, on the same prompts, with the same
settings (sampling at T = 1, group-normalised advantages, token-level policy-gradient loss, AdamW, grad clip 1.0).
Prints the ratio TRL / bare and writes bench/results/train_step.json.
Targets: TRL overhead <= 20%, <= 1.2 s/step.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads 2]

``--model smollm2-135m`` runs the real model instead, at 8 prompts x 8 samples and ~48 new tokens of a
chat task, and puts three numbers side by side: the physical limit (the step's model FLOPs over the fp32 matmul
throughput measured in the same run), the bare PyTorch GRPO step of ``rlvr_linear.training.grpo_step`` and TRL's step as
``rlvr-linear train`` configures it, each split into phases, with peak RSS. Writes
bench/results/train_step_smollm2.json (see docs/smollm2.md):

    python bench/train_step.py --model smollm2-135m [--steps 2] [--warmup 1] [--threads 1] [--micro-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def bare_steps(model_dir, rows, task, cfg, n_steps):
    from transformers import AutoModelForCausalLM

    from rlvr_linear.io.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    P, G = cfg.prompts_per_step, cfg.samples_per_prompt
    eos = tok.eos_token_id
    times = []
    torch.manual_seed(0)
    for s in range(n_steps):
        t0 = time.perf_counter()
        batch = rows[s * P : (s + 1) * P]
        prompts = [r["prompt"] for r in batch for _ in range(G)]
        answers = [r["answer"] for r in batch for _ in range(G)]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        L = enc["input_ids"].shape[1]
        model.eval()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=None, top_p=1.0,
                                 max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        comp = out[:, L:]
        is_eos = comp == eos
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((comp.shape[0],), comp.shape[1]))
        cmask = (torch.arange(comp.shape[1])[None, :] <= first[:, None]).float()
        texts = tok.batch_decode(comp, skip_special_tokens=True)
        from rlvr_linear.evaluation.tasks import Problem

        r = torch.tensor([task.score(t, Problem("", "", a)) for t, a in zip(texts, answers)])
        rg = r.view(P, G)
        adv = ((rg - rg.mean(1, keepdim=True)) / (rg.std(1, keepdim=True) + 1e-4)).view(-1)
        model.train()
        full_mask = torch.cat([enc["attention_mask"], cmask.long()], 1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=out, attention_mask=full_mask, position_ids=pos).logits[:, L - 1 : -1]
        logp = logits.gather(-1, comp.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        loss = -(adv[:, None] * logp * cmask).sum() / cmask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def trl_steps(model_dir, rows, task, cfg, n_steps, tmp):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr_linear.io.tokenizer import load_tokenizer

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    P, G = cfg.prompts_per_step, cfg.samples_per_prompt
    gcfg = GRPOConfig(output_dir=str(tmp), per_device_train_batch_size=P * G, num_generations=G,
                      max_completion_length=cfg.max_new_tokens, learning_rate=cfg.learning_rate, max_steps=n_steps,
                      lr_scheduler_type="constant", weight_decay=0.0, temperature=1.0, top_p=1.0, beta=0.0,
                      loss_type="grpo", max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none",
                      bf16=False, use_cpu=True, shuffle_dataset=False, disable_tqdm=True, seed=0,
                      activation_checkpointing=False)
    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[task.reward_function()], args=gcfg,
                          train_dataset=Dataset.from_list(rows[: n_steps * P]), processing_class=tok,
                          callbacks=[timer])
    trainer.train()
    return timer.times


def main():
    import sys

    argv = sys.argv[1:]
    model = next((a.split("=", 1)[1] for a in argv if a.startswith("--model=")), None)
    if "--model" in argv and argv.index("--model") + 1 < len(argv):
        model = argv[argv.index("--model") + 1]
    if model in (None, "tiny"):
        return tiny_main()
    return real_model_main(model)


def tiny_main():
    import tempfile

    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.models.base_model import ensure_base
    from rlvr_linear.training.grpo import PRESETS, TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/train_step.json")
    ap.add_argument("--model", default="tiny", help="tiny (this mode) or smollm2-135m (the real-model mode)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**PRESETS["tiny"])
    task = get_task(cfg.task)
    cfg.max_new_tokens = task.max_new_tokens(False)
    model_dir = ensure_base("tiny")
    n = args.steps + args.warmup
    probs = task.problems("train", n * cfg.prompts_per_step)
    rows = [{"prompt": task.render(p), "answer": p.answer} for p in probs]
    with tempfile.TemporaryDirectory() as tmp:
        trl = trl_steps(model_dir, rows, task, cfg, n, tmp)[args.warmup :]
    bare = bare_steps(model_dir, rows, task, cfg, n)[args.warmup :]
    res = {
        "what": "seconds per GRPO step, tiny preset (16 prompts x 8 samples), TRL GRPOTrainer vs bare PyTorch",
        "trl_s_per_step": sum(trl) / len(trl),
        "bare_s_per_step": sum(bare) / len(bare),
        "steps_timed": args.steps,
        "warmup_steps_dropped": args.warmup,
        "threads": args.threads,
        "max_new_tokens": cfg.max_new_tokens,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    res["ratio_trl_over_bare"] = res["trl_s_per_step"] / res["bare_s_per_step"]
    res["targets"] = {"ratio_max": 1.2, "trl_s_per_step_max": 1.2}
    res["meets_targets"] = res["ratio_trl_over_bare"] <= 1.2 and res["trl_s_per_step"] <= 1.2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"TRL  {res['trl_s_per_step']:.3f} s/step")
    print(f"bare {res['bare_s_per_step']:.3f} s/step")
    print(f"ratio TRL/bare = {res['ratio_trl_over_bare']:.2f}  (target <= 1.20; TRL target <= 1.2 s/step)")


# --------------------------------------------------------------------------------------------------
# The real-model mode: physical limit, bare step and TRL step side by side


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _real_bare(model_dir, task_name, probs, a) -> dict:
    """Child process: ``a.warmup + a.steps`` bare GRPO steps; phases and token counts per step, own peak RSS."""
    from transformers import AutoModelForCausalLM

    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.io.tokenizer import load_tokenizer
    from rlvr_linear.training.grpo_step import grpo_step

    torch.set_num_threads(a["threads"])
    task = get_task(task_name)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=a["lr"], weight_decay=0.0)
    torch.manual_seed(0)
    P, G = a["prompts"], a["samples"]
    steps = []
    for s in range(a["warmup"] + a["steps"]):
        st = grpo_step(model, opt, tok, task, probs[s * P : (s + 1) * P], G, a["max_new_tokens"],
                       micro_batch=a["micro_batch"], max_grad_norm=1.0)  # fmt: skip
        steps.append(st.to_json())
        print("bare", json.dumps(steps[-1]), flush=True)
    return {"steps": steps, "n_params": sum(p.numel() for p in model.parameters()), "peak_rss_mb": _peak_rss_mb()}


def _real_trl(model_dir, task_name, probs, a) -> dict:
    """Child process: TRL's GRPOTrainer configured as ``rlvr-linear train`` does, with timers around its phases."""
    import tempfile

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.io.tokenizer import load_tokenizer
    from rlvr_linear.runtime.trl_cpu import compact_fused_lm_head

    torch.set_num_threads(a["threads"])
    task = get_task(task_name)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    P, G = a["prompts"], a["samples"]
    total = P * G
    mb = a["trl_micro_batch"] or total
    n = a["warmup"] + a["steps"]
    rows = [{"prompt": task.messages(p), "answer": p.answer,
             "problem_id": p.id} for p in probs[: n * P]]  # fmt: skip
    phases = ("gen", "logps_fwd", "backward", "reward", "opt")
    acc = {f"{p}_{c}": 0.0 for p in phases for c in ("s", "cpu_s")}
    acc.update(trained_positions=0, real_tokens=0, completion_tokens=0)
    steps: list[dict] = []

    def clocks():
        return time.perf_counter(), time.process_time()

    class Phases(TrainerCallback):
        def on_step_begin(self, *args, **kw):
            self.t, self.start = clocks(), dict(acc)

        def on_pre_optimizer_step(self, *args, **kw):
            self.t_opt = clocks()

        def on_optimizer_step(self, *args, **kw):
            w, c = clocks()
            acc["opt_s"] += w - self.t_opt[0]
            acc["opt_cpu_s"] += c - self.t_opt[1]

        def on_step_end(self, *args, **kw):
            w, c = clocks()
            rec = {k: round(acc[k] - self.start[k], 4) for k in acc}
            rec["step_s"], rec["step_cpu_s"] = round(w - self.t[0], 4), round(c - self.t[1], 4)
            rec["other_s"] = round(rec["step_s"] - sum(rec[f"{p}_s"] for p in phases), 4)
            steps.append(rec)
            print("trl", json.dumps(rec), flush=True)

    def timed(key, fn):
        def wrapper(*args, **kw):
            w, c = clocks()
            try:
                return fn(*args, **kw)
            finally:
                w2, c2 = clocks()
                acc[f"{key}_s"] += w2 - w
                acc[f"{key}_cpu_s"] += c2 - c

        return wrapper

    with tempfile.TemporaryDirectory() as tmp:
        gcfg = GRPOConfig(output_dir=tmp, per_device_train_batch_size=mb, gradient_accumulation_steps=total // mb,
                          steps_per_generation=total // mb, num_generations=G,
                          max_completion_length=a["max_new_tokens"], learning_rate=a["lr"], max_steps=n,
                          lr_scheduler_type="constant", weight_decay=0.0, temperature=a["temperature"],
                          top_p=a["top_p"], beta=0.0, epsilon=0.2, epsilon_high=0.28, loss_type="grpo",
                          max_grad_norm=1.0, logging_steps=1,
                          save_strategy="no", report_to="none", bf16=False, use_cpu=True, shuffle_dataset=False,
                          disable_tqdm=True, seed=0, dataloader_num_workers=0,
                          gradient_checkpointing=a["trl_gradient_checkpointing"],
                          activation_checkpointing=False)  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=[task.reward_function()], args=gcfg,
                              train_dataset=Dataset.from_list(rows), processing_class=tok,
                              callbacks=[Phases()])  # fmt: skip
        model.generate = timed("gen", model.generate)  # TRL's unwrap_model_for_generation yields this object
        logps = trainer._get_per_token_logps_and_entropies

        def counted(mdl, input_ids, attention_mask, logits_to_keep, *args, **kw):
            acc["trained_positions"] += input_ids.numel()
            acc["real_tokens"] += int(attention_mask.sum())
            acc["completion_tokens"] += int(attention_mask[:, -logits_to_keep:].sum())
            return logps(mdl, input_ids, attention_mask, logits_to_keep, *args, **kw)

        trainer._get_per_token_logps_and_entropies = timed("logps_fwd", counted)
        trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
        trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
        with compact_fused_lm_head(not a["trl_full_lm_head"]):  # as rlvr-linear train does for large models
            trainer.train()
    return {"steps": steps, "peak_rss_mb": _peak_rss_mb()}


def _in_child(fn, *args):
    """Run ``fn`` in a fresh process, so that each implementation's peak RSS is its own."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def _mean(recs: list[dict], key: str) -> float:
    return sum(r[key] for r in recs) / len(recs)


def real_model_main(model_name: str) -> None:
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.models.base_model import ensure_base
    from rlvr_linear.training.grpo_step import matmul_gflops, step_flops

    ap = argparse.ArgumentParser(description="GRPO step of a real model: physical limit, bare PyTorch, TRL")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="arithmetic-cot-chat")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per implementation")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--micro-batch", type=int, default=16, help="bare step: sequences per forward/backward")
    ap.add_argument("--trl-micro-batch", type=int, default=16, help="TRL: per_device_train_batch_size (64 = no GA)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="TRL's own default (rlvr-linear train turns it off for models above 20M parameters)")
    ap.add_argument("--trl-full-lm-head", action="store_true",
                    help="TRL's own CPU choice: the fused LM head scores every position, prompt included")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--temperature", type=float, default=1.0, help="TRL's sampling temperature")
    ap.add_argument("--top-p", type=float, default=1.0, help="TRL's nucleus sampling")
    ap.add_argument("--skip", choices=["bare", "trl"], default=None, help="leave one implementation out")
    ap.add_argument("--out", default="bench/results/train_step_smollm2.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = str(ensure_base(model_name))
    task = get_task(args.task)
    n = args.steps + args.warmup
    probs = task.problems("train", n * args.prompts)
    a = {k: getattr(args, k) for k in ("threads", "prompts", "samples", "max_new_tokens", "micro_batch",
                                        "trl_micro_batch", "trl_gradient_checkpointing", "trl_full_lm_head", "lr",
                                        "steps", "warmup", "temperature", "top_p")}  # fmt: skip
    mm_before = (matmul_gflops(), matmul_gflops(clock="cpu"))
    bare = None if args.skip == "bare" else _in_child(_real_bare, model_dir, args.task, probs, a)
    trl = None if args.skip == "trl" else _in_child(_real_trl, model_dir, args.task, probs, a)
    mm_after = (matmul_gflops(), matmul_gflops(clock="cpu"))
    gflops, gflops_cpu = max(mm_before[0], mm_after[0]), max(mm_before[1], mm_after[1]) / args.threads
    if bare is not None:
        n_params = bare["n_params"]
    else:
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            meta_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
        n_params = sum(p.numel() for p in meta_model.parameters())
    res = {
        "what": f"seconds per GRPO step of {model_name}: physical limit vs bare PyTorch vs TRL GRPOTrainer",
        "model": model_name, "task": args.task, "n_params": n_params, "prompts": args.prompts,
        "samples": args.samples, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "temperature": args.temperature, "top_p": args.top_p,
        "micro_batch": args.micro_batch, "trl_micro_batch": args.trl_micro_batch or args.prompts * args.samples,
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing, "trl_full_lm_head": args.trl_full_lm_head,
        "steps_timed": args.steps, "warmup_steps_dropped": args.warmup,
        "matmul_gflops_wall": gflops, "matmul_gflops_per_cpu_s": gflops_cpu,
        "matmul_gflops_wall_before_after": [mm_before[0], mm_after[0]],
        "matmul_gflops_cpu_before_after": [mm_before[1], mm_after[1]],
        "flop_model": "2*N per prefilled or generated token + 6*N per trained (prompt + completion) token; "
        "real tokens only (padding is overhead, not model work)",
        "clocks": "s_per_step: wall; cpu_s_per_step: process CPU time (the machine is shared: wall time also counts "
        "other processes' turns on the cores). ratio_to_limit = cpu_s_per_step / limit_cpu_s with the matmul rate "
        "per CPU second; ratio_to_limit_wall = s_per_step / limit_wall_s with the best wall-clock matmul rate",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "load_average_at_end": os.getloadavg(),
    }  # fmt: skip

    def summarise(recs: list[dict], flops: list[float], phases: tuple[str, ...], tokens: dict, peak: float) -> dict:
        f = sum(flops) / len(flops)
        out = {
            "s_per_step": _mean(recs, "step_s"),
            "cpu_s_per_step": _mean(recs, "step_cpu_s"),
            "phases_s": {p: _mean(recs, f"{p}_s") for p in phases},
            "phases_cpu_s": {p: _mean(recs, f"{p}_cpu_s") for p in phases if f"{p}_cpu_s" in recs[0]},
            "tokens_per_step": tokens,
            "model_gflop_per_step": f / 1e9,
            "limit_cpu_s": f / (gflops_cpu * 1e9),
            "limit_wall_s": f / (gflops * 1e9),
            "peak_rss_mb": peak,
        }
        out["ratio_to_limit"] = out["cpu_s_per_step"] / out["limit_cpu_s"]
        out["ratio_to_limit_wall"] = out["s_per_step"] / out["limit_wall_s"]
        return out

    if bare is not None:
        t = bare["steps"][args.warmup :]
        flops = [step_flops(n_params, r["prompt_tokens"], r["generated_tokens"],
                            r["prompt_tokens"] + r["generated_tokens"]) for r in t]  # fmt: skip
        tokens = {k: _mean(t, k) for k in ("prompt_tokens", "generated_tokens", "trained_positions")}
        res["bare"] = summarise(t, flops, ("gen", "score", "train", "opt"), tokens, bare["peak_rss_mb"])
        res["bare"]["mean_completion_len"] = _mean(t, "mean_completion_len")
        res["bare"]["steps"] = bare["steps"]
    if trl is not None:
        t = trl["steps"][args.warmup :]
        flops = [step_flops(n_params, r["real_tokens"] - r["completion_tokens"], r["completion_tokens"],
                            r["real_tokens"]) for r in t]  # fmt: skip
        tokens = {"prompt_tokens": _mean(t, "real_tokens") - _mean(t, "completion_tokens"),
                  "generated_tokens": _mean(t, "completion_tokens"),
                  "trained_positions": _mean(t, "trained_positions")}  # fmt: skip
        res["trl"] = summarise(t, flops, ("gen", "reward", "logps_fwd", "backward", "opt", "other"), tokens,
                               trl["peak_rss_mb"])  # fmt: skip
        res["trl"]["steps"] = trl["steps"]
    targets = {"ratio_to_limit_max": 2.0, "peak_rss_mb_max": 8192, "ratio_trl_over_bare_max": 1.3}
    res["targets"] = targets
    met = {}
    for name in ("bare", "trl"):
        if name in res:
            met[f"{name}_step_within_2x_limit"] = res[name]["ratio_to_limit"] <= targets["ratio_to_limit_max"]
            met[f"{name}_peak_rss_within_8gb"] = res[name]["peak_rss_mb"] <= targets["peak_rss_mb_max"]
    if bare is not None and trl is not None:
        res["ratio_trl_over_bare"] = res["trl"]["cpu_s_per_step"] / res["bare"]["cpu_s_per_step"]
        res["ratio_trl_over_bare_wall"] = res["trl"]["s_per_step"] / res["bare"]["s_per_step"]
        met["trl_within_1_3x_bare"] = res["ratio_trl_over_bare"] <= targets["ratio_trl_over_bare_max"]
    res["meets_targets"] = met
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"fp32 matmul {gflops:.1f} GFLOP/s (wall, best), {gflops_cpu:.1f} GFLOP per CPU s; {args.threads} thread(s)")
    for name in ("bare", "trl"):
        if name in res:
            r = res[name]
            phases = json.dumps({k: round(v, 1) for k, v in r["phases_s"].items()})
            print(
                f"{name:5s} {r['s_per_step']:.1f} s/step wall, {r['cpu_s_per_step']:.1f} CPU s = "
                f"{r['ratio_to_limit']:.2f} x limit {r['limit_cpu_s']:.1f} CPU s "
                f"({r['model_gflop_per_step']:.0f} GFLOP); "
                f"phases {phases}; peak RSS {r['peak_rss_mb']:.0f} MB"
            )
    if "ratio_trl_over_bare" in res:
        print(f"TRL / bare = {res['ratio_trl_over_bare']:.2f} CPU s, {res['ratio_trl_over_bare_wall']:.2f} wall "
              f"(target <= 1.3); targets met: {met}")  # fmt: skip

if __name__ == "__main__":
    main()
