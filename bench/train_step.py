"""Seconds per GRPO step of the tiny preset (16 prompts x 8 samples): TRL GRPOTrainer vs a bare PyTorch GRPO step.

Both run in this process, one after the other, from the same starting model, on the same prompts, with the same
settings (sampling at T = 1, group-normalised advantages, token-level policy-gradient loss, AdamW, grad clip 1.0).
Prints the ratio TRL / bare and writes bench/results/train_step.json.
Targets (issue): TRL overhead <= 20%, <= 1.2 s/step.

    python bench/train_step.py [--steps 20] [--warmup 3] [--threads 2]
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

    from rlvr_linear.tokenizer import load_tokenizer

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
        from rlvr_linear.tasks import Problem

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

    from rlvr_linear.tokenizer import load_tokenizer

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
    import tempfile

    from rlvr_linear.models import ensure_base
    from rlvr_linear.tasks import get_task
    from rlvr_linear.train import PRESETS, TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/train_step.json")
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


if __name__ == "__main__":
    main()
