"""GPU confirmation: a long linear-regime RL trajectory of a tens-of-millions-parameter model of the tiny family, its
analysis and its extrapolation, within 10 minutes on one GPU, into one results JSON.

Why: every trajectory measured here ran on 2 CPU cores, so they are short and small. One GPU runs the same pipeline
(`rlvr_linear` unchanged) on a ~40x larger model for ~1,000 steps in minutes. The machine it is written for has no
network and receives at most 64 MiB of files, so nothing is downloaded: the base model is built there (char
tokenizer, Qwen2 of the tiny family, warmed up on 2-digit addition until greedy accuracy reaches 0.25), and packages
the machine lacks come from wheels next to the script (see gpu_confirm.sh).

The RL engine: TRL's GRPOTrainer through ``rlvr_linear.training.grpo`` when ``trl`` and ``datasets`` import, else the
bare GRPO step of ``rlvr_linear.training.grpo_step`` (same objective: group-normalised advantages, token-level on-policy
policy gradient, AdamW, clipping 1.0) with the same trajectory layout (``step_N/`` + ``manifest.json``). Why the
fallback: TRL needs ``datasets``, which needs ``pyarrow`` (a 55 MB wheel) and ``pandas`` (12 MB); with ``trl`` and
``scipy`` those wheels are 101 MB (measured, docs/smollm2.md), over the 64 MiB the machine receives. ``scipy`` (35 MB)
is only imported for t-quantiles of confidence intervals, which this script does not compute: when it is missing a stub
module stands in and raises if anything calls it.

Stages, each timed, all written to one JSON (default bench/results/gpu_confirm.json):

1. **base**: build + warm up the base (``ensure_base("tiny", **recipe)``, on the GPU).
2. **calibrate**: 10 GRPO steps to measure seconds per step, then choose the trajectory length that fits the
   remaining time budget (at most ``--max-steps``; 15 checkpoints after step 0).
3. **rl**: ``rlvr_linear.training.grpo.train`` (TRL GRPO, lr in the linear regime) saving the trajectory.
4. **analysis**: weight R² against step (paper sampling) next to its null; the line fitted on the first half of the
   checkpoints forecasting the second half (error relative to "no further change").
5. **extrapolation**: two-point (step 0 and the middle checkpoint, alpha = 2, i.e. to the last step) and a
   least-squares line over the first half (to the last step); greedy accuracy of each against the real last
   checkpoint on test problems, with paired bootstrap CIs.

    python bench/gpu_confirm.py                 # on the GPU machine (via gpu_confirm.sh)
    python bench/gpu_confirm.py --dry-run       # CPU, pico sizes, a few steps: checks the pipeline end to end
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a copy of the repo, not installed

import torch  # noqa: E402

#: the GPU run: ~47M parameters (hidden 512, 12 layers, MLP 2048), vs the 0.8M tiny preset
FULL = dict(
    recipe=dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048, lr=1e-3, max_steps=3000,
                eval_every=100, target_accuracy=0.25),
    task="arithmetic", max_steps=1500, checkpoints=15, lr=1e-5, prompts=16, samples=8, eval_problems=200,
    test_problems=1000, budget_s=540.0,
)  # fmt: skip
#: --dry-run: pico sizes on CPU, a few steps (the test runs this); 1-digit addition (80 train, 10 validation, 10 test
#: problems), so that the warm-up reaches some accuracy in seconds and RL has a reward signal to follow
DRY = dict(
    recipe=dict(task="arithmetic:digits=1", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, lr=3e-3,
                max_steps=300, eval_every=50, eval_problems=8, target_accuracy=0.2),
    task="arithmetic:digits=1", max_steps=8, checkpoints=4, lr=1e-3, prompts=4, samples=4, eval_problems=8,
    test_problems=10, budget_s=300.0,
)  # fmt: skip


def _stub_scipy_if_missing() -> bool:
    """``rlvr_linear.evaluation.evaluation`` imports ``scipy.stats`` for ``mean_ci`` only; without scipy, a stub that
    raises."""
    import importlib.util
    import types

    if importlib.util.find_spec("scipy") is not None:
        return False

    class _Missing:
        def __getattr__(self, name):
            raise RuntimeError("scipy is not installed on this machine (stubbed by bench/gpu_confirm.py)")

    scipy, stats = types.ModuleType("scipy"), types.ModuleType("scipy.stats")
    stats.t = stats.norm = _Missing()
    scipy.stats = stats
    sys.modules.update({"scipy": scipy, "scipy.stats": stats})
    return True


def choose_engine(requested: str) -> str:
    import importlib.util

    if requested != "auto":
        return requested
    return "trl" if all(importlib.util.find_spec(m) for m in ("trl", "datasets")) else "bare"


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "trl", "accelerate", "datasets"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def _device_info(dry: bool) -> dict:
    if not dry and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                "cuda": torch.version.cuda}  # fmt: skip
    return {"device": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def build_base(work: Path, recipe: dict, device: str) -> tuple[Path, dict]:
    """The base model, built and warmed up on ``device`` (factory calls default to it inside the block)."""
    from rlvr_linear.io import read_json
    from rlvr_linear.models.base_model import ensure_base

    ctx = torch.device(device) if device == "cuda" else contextlib.nullcontext()
    with ctx:
        d = ensure_base("tiny", cache_dir=work / "cache", progress=False, **recipe)
    rec = read_json(d / "rlvr_linear_base.json")
    return d, {k: rec[k] for k in ("params", "steps", "seconds", "val_greedy")} | {"recipe": rec["recipe"]}


def _train_cfg(base: Path, p: dict, steps: int, save_every: int, seed: int = 0):
    from rlvr_linear.training.grpo import TrainConfig

    return TrainConfig(model=str(base), task=p["task"], steps=steps, save_every=save_every,
                       learning_rate=p["lr"], prompts_per_step=p["prompts"], samples_per_prompt=p["samples"],
                       eval_problems=p["eval_problems"], seed=seed)  # fmt: skip


def run_rl(engine: str, base: Path, p: dict, steps: int, every: int, run: Path, device: str) -> dict:
    """The trajectory, with TRL (``rlvr_linear.training.grpo``) or the bare step; returns the manifest."""
    if engine == "trl":
        from rlvr_linear.training.grpo import train

        return train(_train_cfg(base, p, steps, every), run, overwrite=True, progress=False)
    return train_bare(_train_cfg(base, p, steps, every), run, device)


def train_bare(cfg, run: Path, device: str) -> dict:
    """``rlvr_linear.training.grpo``'s trajectory layout and manifest, from the bare GRPO step (no TRL, no datasets)."""
    import random
    import shutil

    from transformers import AutoModelForCausalLM

    from rlvr_linear.evaluation.evaluation import evaluate
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.io import write_json
    from rlvr_linear.io.tokenizer import load_tokenizer
    from rlvr_linear.training.grpo import save_checkpoint
    from rlvr_linear.training.grpo_step import grpo_step

    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    task = get_task(cfg.task)
    tok = load_tokenizer(cfg.model)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    pool = task.problems("train", None)
    val = task.problems("validation", cfg.eval_problems)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    max_new = cfg.max_new_tokens or task.max_new_tokens(False)
    manifest = {"config": {**vars(cfg), "engine": "bare"}, "base_model": cfg.model, "task": task.name,
                "checkpoints": []}  # fmt: skip
    t0, rewards, order = time.time(), [], []

    def save(step, reward):
        save_checkpoint(model, tok, run / f"step_{step:06d}")
        acc = evaluate((model.eval(), tok), task, problems=val, k=0, batch_size=256).greedy_accuracy
        manifest["checkpoints"].append({"step": step, "path": f"step_{step:06d}", "mean_reward": reward,
                                        "val_accuracy": acc, "wall_time": round(time.time() - t0, 2)})  # fmt: skip
        write_json(run / "manifest.json", manifest)

    save(0, None)
    for step in range(1, cfg.steps + 1):
        if len(order) < cfg.prompts_per_step:
            order += rng.sample(range(len(pool)), len(pool))
        batch, order = [pool[i] for i in order[: cfg.prompts_per_step]], order[cfg.prompts_per_step :]
        st = grpo_step(model, opt, tok, task, batch, cfg.samples_per_prompt, max_new,
                       max_grad_norm=cfg.max_grad_norm, chat=False)  # fmt: skip
        rewards.append(st.mean_reward)
        if step % cfg.save_every == 0 or step == cfg.steps:
            save(step, sum(rewards) / len(rewards))
            rewards = []
    manifest["finished"] = True
    write_json(run / "manifest.json", manifest)
    return manifest


def calibrate(engine: str, work: Path, base: Path, p: dict, n: int, device: str) -> float:
    """Seconds per GRPO step over ``n`` steps (the wall time at step n counts from after step 0's save; it includes
    one save and evaluation, which the real run spreads over more steps: an over-estimate)."""
    m = run_rl(engine, base, p, n, n, work / "calibrate", device)
    w = {c["step"]: c["wall_time"] for c in m["checkpoints"]}
    return max(w[n] - (w[0] if engine == "bare" else 0.0), 1e-3) / n


def choose_steps(s_per_step: float, seconds_left: float, max_steps: int, checkpoints: int) -> tuple[int, int]:
    """Steps (a multiple of ``checkpoints``) and the save interval that fit half the time left (the other half is
    for analysis, extrapolation and evaluation)."""
    fit = int(seconds_left * 0.5 / s_per_step)
    every = max(1, min(max_steps, fit) // checkpoints)
    return every * checkpoints, every


def analysis(run: Path) -> dict:
    from rlvr_linear.io.checkpoints import discover
    from rlvr_linear.linearity import analyze_weights
    from rlvr_linear.linearity.forecast import forecast

    traj = discover(run)
    w = analyze_weights(traj).to_json()
    steps = traj.steps
    fit_until = steps[len(steps) // 2]
    fc = forecast(traj, fit_until_step=fit_until).overall()
    return {
        "n_checkpoints": len(steps),
        "weight_r2": {k: w["r2"].get(k) for k in ("median", "mean", "share_gt_0.7") if k in w["r2"]},
        "weight_r2_null": {k: w["null"].get(k) for k in ("median", "mean", "share_gt_0.7") if k in w["null"]},
        "above_null": w["above_null"],
        "share_kept": w["share_kept"],
        "forecast": {"fit_until_step": fit_until, **fc},
    }


def extrapolation(run: Path, work: Path, task: str, n_test: int) -> dict:
    """Two-point (0 -> middle, alpha 2) and least squares (first half) to the last step, vs the real last step."""
    from rlvr_linear.evaluation.evaluation import evaluate, paired_bootstrap
    from rlvr_linear.extrapolation.weights import extrapolate_fit, extrapolate_two_point
    from rlvr_linear.io.checkpoints import discover

    traj = discover(run)
    steps, paths = traj.steps, [Path(p) for p in traj.paths]
    mid, last = len(steps) // 2, len(steps) - 1
    target = steps[last]
    out = {"target_step": target}
    two = extrapolate_two_point(paths[0], paths[mid], work / "x_two_point", alpha=target / steps[mid],
                                base_step=steps[0], second_step=steps[mid], overwrite=True, progress=False)  # fmt: skip
    fit = [f"{s}={p}" for s, p in zip(steps[: mid + 1], paths[: mid + 1])]
    ls = extrapolate_fit(fit, work / "x_least_squares", target_step=target, overwrite=True, progress=False)
    evals = {}
    for name, d in (("real_target", paths[last]), ("real_mid", paths[mid]), ("two_point", two), ("least_squares", ls)):
        evals[name] = evaluate(str(d), task, split="test", n_problems=n_test, k=0)
    out["greedy_accuracy"] = {k: v.greedy_accuracy for k, v in evals.items()}
    base = evals["real_target"].per_problem("greedy")
    out["vs_real_target"] = {k: paired_bootstrap(base, evals[k].per_problem("greedy"))
                             for k in ("two_point", "least_squares", "real_mid")}  # fmt: skip
    out["two_point"] = {"base_step": steps[0], "second_step": steps[mid], "alpha": target / steps[mid]}
    out["least_squares"] = {"fit_steps": steps[: mid + 1]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, pico sizes, a few steps (also: GPU_CONFIRM_DRY=1)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/gpu_confirm[_dry].json)")
    ap.add_argument("--work", default=None, help="scratch folder for the base and the runs (default: TMPDIR)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the whole script")
    ap.add_argument("--max-steps", type=int, default=None, help="upper bound on RL steps")
    ap.add_argument("--lr", type=float, default=None, help="RL learning rate (default 1e-5: the linear regime)")
    ap.add_argument("--engine", choices=["auto", "trl", "bare"], default="auto",
                    help="RL engine (auto: TRL when trl and datasets import, else the bare GRPO step)")  # fmt: skip
    args = ap.parse_args(argv)
    t_start = time.time()
    dry = args.dry_run or os.environ.get("GPU_CONFIRM_DRY") == "1"
    p = dict(DRY if dry else FULL)
    p.update({k: v for k, v in (("budget_s", args.budget_s), ("max_steps", args.max_steps), ("lr", args.lr)) if v})
    out = Path(args.out or f"bench/results/gpu_confirm{'_dry' if dry else ''}.json")
    work = Path(args.work or Path(tempfile.gettempdir()) / f"rlvr_gpu_confirm{'_dry' if dry else ''}")
    work.mkdir(parents=True, exist_ok=True)
    stubbed = _stub_scipy_if_missing()
    engine = choose_engine(args.engine)
    info = _device_info(dry)
    if not dry and info["device"] != "cuda":
        print("warning: no CUDA device; running the full-size configuration on CPU", file=sys.stderr)
    from rlvr_linear.runtime.threads import usable_cores

    torch.set_num_threads(1 if dry else usable_cores())
    res: dict = {"what": "GPU confirmation: linear-regime RL trajectory, analysis, extrapolation",
                 "dry_run": dry, "machine": info, "versions": _versions(), "engine": engine, "scipy_stubbed": stubbed,
                 "settings": p, "timings_s": {}}  # fmt: skip

    def stage(name, fn, *a):
        t = time.time()
        print(f"[gpu_confirm] {name} ...", flush=True)
        val = fn(*a)
        res["timings_s"][name] = round(time.time() - t, 2)
        print(f"[gpu_confirm] {name}: {res['timings_s'][name]} s", flush=True)
        return val

    base, res["base"] = stage("base", build_base, work, p["recipe"], info["device"])
    n_cal = 2 if dry else 10
    s_step = stage("calibrate", calibrate, engine, work, base, p, n_cal, info["device"])
    left = p["budget_s"] - (time.time() - t_start)
    steps, every = choose_steps(s_step, left, p["max_steps"], p["checkpoints"])
    res["rl"] = {"calibrated_s_per_step": s_step, "steps": steps, "save_every": every, "learning_rate": p["lr"],
                 "prompts_per_step": p["prompts"], "samples_per_prompt": p["samples"]}  # fmt: skip
    run = work / "run"
    manifest = stage("rl", run_rl, engine, base, p, steps, every, run, info["device"])
    res["rl"]["s_per_step"] = res["timings_s"]["rl"] / steps
    res["rl"]["val_accuracy"] = [[c["step"], c["val_accuracy"]] for c in manifest["checkpoints"]]
    res["rl"]["mean_reward"] = [[c["step"], c["mean_reward"]] for c in manifest["checkpoints"] if c["step"]]
    res["analysis"] = stage("analysis", analysis, run)
    res["extrapolation"] = stage("extrapolation", extrapolation, run, work, p["task"], p["test_problems"])
    res["total_s"] = round(time.time() - t_start, 1)
    res["within_10_minutes"] = res["total_s"] <= 600
    from rlvr_linear.io import write_json

    write_json(out, res)
    print(json.dumps({k: res[k] for k in ("total_s", "within_10_minutes")} | {"out": str(out)}))
    return res


if __name__ == "__main__":
    main()
