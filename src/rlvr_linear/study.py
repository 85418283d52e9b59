"""The study: one command that reproduces the paper's findings in miniature (see docs/study.md).

``run_study(cfg, out)`` runs these stages in order; each writes ``OUT/<stage>/result.json`` atomically when it is
done, and a rerun skips finished stages and reuses their results (sub-runs are reused too):

    baseline              RL runs with checkpoints, one per seed                          (trajectories)
    linearity             weight / token log-prob R² with nulls (seed 0), RL vs SFT, forecast   (paper §1, §2a)
    robustness            GRPO / GSPO / Dr.GRPO, AdamW / SGD, two lrs, two group sizes     (paper Fig. 2)
    mechanism             SFT with token-level random-sign noise vs SNR                    (paper Fig. 3)
    weight_extrapolation  W_0 + α (W_t1 − W_0) vs the real RL checkpoint at the target     (paper Fig. 5)
    logit_extrapolation   logit-extrapolated decoding vs the last RL checkpoint (avg@k)    (paper Table 1)
    regrounding           M RL steps + N-step jumps vs standard RL: steps to thresholds, fixed budgets (Fig. 6, Tab. 2)
    report                OUT/report.html and OUT/results.json                             (rlvr_linear.report)

Every protocol choice (thresholds, t1 values, α, (M, N) grid, verdict rules) is fixed here, in code, before any
result is seen; the verdict rules are the ``_verdict_*`` functions and are documented in docs/study.md.
"""

from __future__ import annotations

import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .errors import RlvrLinearError
from .io import jsonable, read_json, write_json
from .report import SECTIONS

#: one stage per report section, then the report itself
STAGES = [*SECTIONS, "report"]
#: stages that run only when named (``--stages regime``: the regime map, hours of compute; rlvr_linear.regime)
OPT_IN_STAGES = ["regime"]
#: stages whose inputs are the baseline RL runs
NEEDS_BASELINE = {"linearity", "robustness", "weight_extrapolation", "logit_extrapolation", "regrounding"}
MODES = ("quick", "default", "full")

#: the quick mode's base model: a smaller tiny Qwen2 (64 wide, 2 layers, ~0.1 M parameters, ~15 s warm-up)
QUICK_BASE_RECIPE = dict(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=192,
    lr=3e-3,
    batch_size=64,
    max_steps=600,
    eval_every=50,
    eval_problems=100,
    target_accuracy=0.2,
)

#: SGD needs a far larger step than AdamW (no per-parameter normalisation): fixed once at 100x the AdamW lr
SGD_LR_FACTOR = 100.0

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


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class StudyConfig:
    """The whole study's protocol. Build it with :meth:`for_mode`; every field can be overridden.

    Steps are optimizer (gradient) steps; fractions are of ``rl_steps`` and are snapped to the save grid.
    """

    mode: str = "quick"  #: quick | default | full (sets the defaults below)
    model: str = "tiny"  #: tiny | smollm2-135m | an HF model directory (the base model, step 0 of every run)
    task: str = "arithmetic"  #: task of every run and evaluation
    seeds: list[int] = field(default_factory=lambda: [0])  #: RL seeds (baseline, extrapolation, re-grounding)
    rl_steps: int = 60  #: gradient steps of every RL / SFT run
    save_every: int = 5  #: checkpoint interval of every run
    learning_rate: float = 3e-4  #: AdamW lr of the RL baseline and of SFT
    prompts_per_step: int = 16  #: prompts per RL step (SFT batch size too)
    samples_per_prompt: int = 8  #: group size G
    eval_problems: int = 100  #: validation problems for the greedy accuracy of every checkpoint
    probe_prompts: int = 16  #: prompts for the token log-prob probes (base-model responses)
    probe_samples: int = 4  #: responses per probe prompt
    robustness: list[str] = field(default_factory=lambda: ["grpo", "gspo", "sgd"])  #: see ROBUSTNESS_SETTINGS
    mechanism_snrs: list[float] = field(default_factory=lambda: [0.0, -10.0, -20.0])  #: SNR grid (dB)
    mechanism_zero_signal: bool = True  #: also run the zero-signal setting
    mechanism_seeds: list[int] = field(default_factory=lambda: [0])  #: SFT seeds per SNR
    wx_base_fractions: list[float] = field(default_factory=lambda: [0.0])  #: t0 / rl_steps (0: from the base)
    wx_t1_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  #: t1 / rl_steps
    wx_max_alpha: float = 4.0  #: largest alpha = target / t1 evaluated
    wx_max_targets: int = 4  #: targets per t1 (evenly spread over the save grid beyond t1)
    wx_eval_problems: int = 200  #: validation problems (greedy) per extrapolated / real checkpoint
    logit_base_fraction: float = 1 / 7  #: base checkpoint = this fraction of rl_steps (paper 200 of 1400)
    logit_alpha: float = 1.5  #: paper: (2000 - 200) / (1400 - 200)
    logit_k: int = 4  #: samples per problem (avg@k)
    logit_problems: int = 100  #: test problems
    reground_specs: list[str] = field(default_factory=lambda: ["5,5", "1,5"])  #: "M,N" grid
    reground_optimizer: str = "reset"  #: Adam moments after a jump (paper: reset, it restarts its trainer)
    reground_eval_problems: int = 200  #: test problems (greedy) at the fixed gradient budgets
    threshold_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])  #: of the baseline run
    budget_fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  #: fixed budgets
    base_recipe: dict | None = None  #: TinyBaseConfig overrides for ``model="tiny"`` (quick: QUICK_BASE_RECIPE)
    threads: int | None = None  #: torch CPU threads (default: torch's)

    def __post_init__(self):
        if self.mode not in MODES:
            raise RlvrLinearError(f"unknown study mode {self.mode!r}; choose quick, default or full")
        if self.rl_steps < 3 * self.save_every:
            raise RlvrLinearError(
                f"rl_steps ({self.rl_steps}) must hold at least 3 save intervals of {self.save_every} steps"
            )
        if not self.seeds:
            raise RlvrLinearError("at least one seed is needed")
        unknown = [r for r in self.robustness if r not in ROBUSTNESS_SETTINGS]
        if unknown:
            raise RlvrLinearError(
                f"unknown robustness settings {unknown}; choose from {', '.join(ROBUSTNESS_SETTINGS)}"
            )
        for spec in self.reground_specs:
            from .regrounding import parse_spec

            parse_spec(spec)

    @classmethod
    def for_mode(cls, mode: str = "quick", model: str = "tiny", **overrides) -> StudyConfig:
        """The protocol of a mode (``quick`` <= 5 min, ``default`` <= 30 min, ``full`` longer; tiny model)."""
        if mode not in MODES:
            raise RlvrLinearError(f"unknown study mode {mode!r}; choose quick, default or full")
        d: dict[str, Any] = {"mode": mode, "model": model}
        if mode == "quick":
            d.update(base_recipe=dict(QUICK_BASE_RECIPE) if model == "tiny" else None)
        elif mode == "default":
            # the map's point lr 3e-5 x 128 responses (docs/regime.md): the most paper-like regime whose 3 seeds fit
            # the 30-minute budget (lr 1e-5 is more linear but needs 1,400 steps per run); 15 checkpoints
            d.update(
                seeds=[0, 1, 2],
                rl_steps=560,
                save_every=40,
                learning_rate=3e-5,
                eval_problems=200,
                probe_prompts=32,
                robustness=["grpo", "dr_grpo", "sgd", "fast"],
                mechanism_snrs=[10.0, 0.0, -5.0, -10.0, -20.0],
                wx_base_fractions=[0.0, 1 / 7],
                logit_k=8,
                logit_problems=200,
                # the paper's (M, N) grid scaled by 560 / 1400
                reground_specs=["40,40", "8,40"],
            )
        else:
            # the map's most linear point: lr 1e-5, 1,400 steps (the paper's horizon), 15 checkpoints; hours
            d.update(
                seeds=[0, 1, 2],
                rl_steps=1400,
                save_every=100,
                learning_rate=1e-5,
                eval_problems=300,
                probe_prompts=64,
                robustness=["grpo", "gspo", "dr_grpo", "sgd", "lr_x3", "group_16", "fast"],
                mechanism_snrs=[10.0, 5.0, 0.0, -3.0, -5.0, -10.0, -15.0, -20.0],
                mechanism_seeds=[0, 1, 2],
                wx_base_fractions=[0.0, 1 / 7],
                wx_eval_problems=500,
                logit_k=16,
                logit_problems=500,
                reground_specs=["100,100", "300,300", "300,600"],
                reground_eval_problems=500,
            )
        if model not in ("tiny",):
            from .train import PRESETS

            sm = PRESETS["smollm2"]
            d.update(
                learning_rate=sm["learning_rate"],
                prompts_per_step=sm["prompts_per_step"],
                samples_per_prompt=sm["samples_per_prompt"],
            )
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise RlvrLinearError(f"unknown study settings {bad}")
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


#: robustness settings: name -> (label, TrainConfig overrides as a function of the baseline lr)
ROBUSTNESS_SETTINGS: dict[str, tuple[str, Any]] = {
    "grpo": ("GRPO / AdamW (baseline)", lambda lr: {}),
    # on-policy (one optimizer step per generation batch) every importance ratio is 1 and GSPO's update equals
    # GRPO's exactly; it differs only with ratios != 1 (several updates per batch), which the study does not use
    "gspo": ("GSPO", lambda lr: {"algorithm": "gspo"}),
    "dr_grpo": ("Dr.GRPO", lambda lr: {"algorithm": "dr_grpo"}),
    "sgd": (f"SGD (lr x{SGD_LR_FACTOR:g})", lambda lr: {"optimizer": "sgd", "learning_rate": lr * SGD_LR_FACTOR}),
    "lr_x3": ("lr x3", lambda lr: {"learning_rate": lr * 3}),
    "group_16": ("group size 16", lambda lr: {"samples_per_prompt": 16}),
    # a contrast, not a robustness claim: v0.1's default rate (3e-4 at 200 steps), where linearity did not appear
    "fast": ("fast regime (lr x10)", lambda lr: {"learning_rate": lr * 10}),
}
#: settings shown for contrast only: not counted by the robustness verdict
CONTRAST_SETTINGS = {"fast"}


# --------------------------------------------------------------------------------------------------
# Plan and time estimate

#: rough seconds per unit on 2 free CPU cores: (RL step, SFT step, greedy eval of 100 problems)
_COSTS = {"tiny-quick": (0.1, 0.03, 0.1), "tiny": (0.4, 0.08, 0.3), "other": (60.0, 6.0, 20.0)}


def _cost_key(cfg: StudyConfig) -> str:
    if cfg.model == "tiny":
        return "tiny-quick" if cfg.base_recipe else "tiny"
    return "other"


def plan(cfg: StudyConfig, stages: list[str]) -> list[dict]:
    """One row per stage: what it runs and a rough time estimate (seconds, 2 free CPU cores)."""
    rl, sft, ev = _COSTS[_cost_key(cfg)]
    T, S = cfg.rl_steps, len(cfg.seeds)
    saves = T // cfg.save_every + 1
    ev_run = saves * ev * cfg.eval_problems / 100
    rows = []
    for st in stages:
        if st == "baseline":
            what, sec = f"{S} RL run(s) x {T} steps (save every {cfg.save_every})", S * (T * rl + ev_run)
        elif st == "linearity":
            what, sec = (
                f"weights + log-prob R² of {S} seed(s), {S} SFT run(s) x {T} steps, forecast",
                S * (T * sft + ev_run + 10),
            )
        elif st == "robustness":
            n = sum(1 for r in cfg.robustness if r != "grpo")
            what, sec = f"{len(cfg.robustness)} settings ({n} new runs x {T} steps)", n * (T * rl + ev_run + 3)
        elif st == "mechanism":
            n = (len(cfg.mechanism_snrs) + int(cfg.mechanism_zero_signal) + 1) * len(cfg.mechanism_seeds)
            what, sec = f"{n} SFT runs x {T} steps (SNRs {cfg.mechanism_snrs} dB)", n * (T * sft + ev_run + 2)
        elif st == "weight_extrapolation":
            n = len(cfg.wx_t1_fractions) * cfg.wx_max_targets * S
            what, sec = (
                f"<= {n} extrapolated models, greedy on {cfg.wx_eval_problems}",
                2 * n * ev * cfg.wx_eval_problems / 100,
            )
        elif st == "logit_extrapolation":
            what = f"{S} seed(s): avg@{cfg.logit_k} on {cfg.logit_problems} test problems, alpha {cfg.logit_alpha}"
            sec = S * 3 * ev * cfg.logit_k * cfg.logit_problems / 100
        elif st == "regrounding":
            n = len(cfg.reground_specs) * S
            what = f"{n} re-grounded RL runs x {T} steps ({', '.join(cfg.reground_specs)})"
            sec = n * (T * rl + ev_run) + (n + S) * len(cfg.budget_fractions) * ev * cfg.reground_eval_problems / 100
        else:
            what, sec = "report.html + results.json", 3
        rows.append({"stage": st, "what": what, "estimate_s": round(sec + 3, 0)})
    return rows


def print_plan(cfg: StudyConfig, stages: list[str], done: set[str]) -> float:
    rows = plan(cfg, stages)
    print(f"study plan: mode {cfg.mode}, model {cfg.model}, seeds {cfg.seeds}, {cfg.rl_steps} steps per run")
    total = 0.0
    for r in rows:
        status = "done, reused" if r["stage"] in done else f"~{r['estimate_s']:.0f} s"
        if r["stage"] not in done:
            total += r["estimate_s"]
        print(f"  {r['stage']:<21} {r['what']:<70} {status}")
    print(f"  estimated total: ~{total / 60:.1f} min (2 free CPU cores; a busy machine is slower)")
    return total


# --------------------------------------------------------------------------------------------------
# Helpers


def snap(step: float, save_every: int, lo: int | None = None, hi: int | None = None) -> int:
    """The save-grid step nearest to ``step`` (a multiple of ``save_every``), clamped to ``[lo, hi]``."""
    s = int(round(step / save_every)) * save_every
    if lo is not None:
        s = max(s, lo)
    if hi is not None:
        s = min(s, hi)
    return s


def ckpt(run: Path, step: int) -> Path:
    return Path(run) / f"step_{step:06d}"


def _ci(values) -> dict:
    from .evaluation import mean_ci

    return mean_ci(values)


def _num(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return round(x, nd) if math.isfinite(x) else None
    return x


class _Ctx:
    """Shared state of one study: config, output folder, base model, task, baseline runs."""

    def __init__(self, cfg: StudyConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self._base: Path | None = None
        self.baseline: dict | None = None

    @property
    def base(self) -> Path:
        if self._base is None:
            from .base_model import ensure_base
            from .checkpoints import find_model_dir

            c = self.cfg
            if c.model == "tiny":
                self._base = ensure_base("tiny", progress=self.progress, **(c.base_recipe or {}))
            elif c.model in ("smollm2-135m", "smollm2"):
                self._base = ensure_base("smollm2-135m", progress=self.progress)
            else:
                self._base = find_model_dir(c.model)
        return self._base

    def train_config(self, seed: int, **overrides):
        from .train import PRESETS, TrainConfig

        c = self.cfg
        d = dict(PRESETS["tiny"] if c.model == "tiny" else PRESETS["smollm2"])
        d.update(
            model=str(self.base),
            task=c.task,
            steps=c.rl_steps,
            save_every=c.save_every,
            learning_rate=c.learning_rate,
            prompts_per_step=c.prompts_per_step,
            samples_per_prompt=c.samples_per_prompt,
            eval_problems=c.eval_problems,
            seed=seed,
            threads=c.threads,
        )
        d.update(overrides)
        return TrainConfig(**d)

    def rl_run(self, name: str, tcfg) -> tuple[Path, dict]:
        """Train (or reuse a finished identical run) into ``OUT/runs/<name>``; returns (run dir, manifest)."""
        from .train import train

        run = self.out / "runs" / name
        man_path = run / "manifest.json"
        if man_path.exists():
            man = read_json(man_path)
            if man.get("config") == jsonable(asdict(tcfg)):
                if man.get("finished"):
                    return run, man
                return run, train(tcfg, run, progress=self.progress)  # resumes
            return run, train(tcfg, run, overwrite=True, progress=self.progress)
        return run, train(tcfg, run, overwrite=True, progress=self.progress)

    def sft_run(self, name: str, scfg) -> tuple[Path, dict]:
        from .sft import train_sft

        run = self.out / "runs" / name
        man_path = run / "manifest.json"
        if man_path.exists():
            man = read_json(man_path)
            if man.get("finished") and man.get("config") == jsonable(asdict(scfg)):
                return run, man
        return run, train_sft(scfg, run, overwrite=True, progress=self.progress)

    def sft_config(self, seed: int, **kw):
        from .sft import SFTConfig

        c = self.cfg
        return SFTConfig(
            model=str(self.base),
            task=c.task,
            steps=c.rl_steps,
            save_every=c.save_every,
            learning_rate=c.learning_rate,
            batch_size=c.prompts_per_step,
            seed=seed,
            eval_problems=c.eval_problems,
            threads=c.threads,
            **kw,
        )

    def stage_dir(self, stage: str) -> Path:
        d = self.out / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def rel(self, p: Path) -> str:
        return str(Path(p).relative_to(self.out))


def _weight_analysis(run: Path, out_dir: Path | None = None):
    """Weight R² of a run: every element for small models (< 20 M parameters), the paper's 0.1% sample otherwise."""
    from .checkpoints import discover
    from .linearity import analyze_weights

    traj = discover(run)
    r0 = traj.reader(0)
    total = sum(r0.numel(k) for k in r0.keys())
    res = analyze_weights(traj, sample="all" if total < 20_000_000 else "paper")
    if out_dir is not None:
        res.save(out_dir)
    return res


def active_weighted(res) -> dict:
    """Active-parameter weighted median / mean R²: ``Σ_i kept_i · stat_i / Σ_i kept_i`` over tensors i.

    ``kept_i`` is the number of parameters of tensor i that passed the filters (moved by more than the dtype's
    threshold and took >= 4 distinct values); ``stat_i`` is that tensor's median (or mean) R².
    """
    kept = np.array([t.kept for t in res.tensors], dtype=np.float64)
    ok = kept > 0
    if not ok.any():
        return {"weighted_median": None, "weighted_mean": None, "kept": 0}
    med = np.array([t.r2["median"] if t.kept else 0.0 for t in res.tensors], dtype=np.float64)
    mean = np.array([t.r2["mean"] if t.kept else 0.0 for t in res.tensors], dtype=np.float64)
    w = kept[ok] / kept[ok].sum()
    return {
        "weighted_median": float((w * med[ok]).sum()),
        "weighted_mean": float((w * mean[ok]).sum()),
        "kept": int(kept.sum()),
    }


def _r2_numbers(summary: dict) -> dict:
    r, n = summary["r2"], summary["null"]
    return {
        "median": _num(r["median"]),
        "q1": _num(r["q1"]),
        "q3": _num(r["q3"]),
        "mean": _num(r["mean"]),
        "share_gt_0.7": _num(r["share_gt_0.7"]),
        "n": r["n"],
        "null_median": _num(n["median"]),
        "null_share_gt_0.7": _num(n["share_gt_0.7"]),
    }


def _eval_greedy(model, task, problems) -> np.ndarray:
    from .evaluation import evaluate

    return evaluate(model, task, problems=problems, k=0, batch_size=256).greedy_correct.astype(float)


# --------------------------------------------------------------------------------------------------
# Stages


def stage_baseline(ctx: _Ctx) -> dict:
    c = ctx.cfg
    runs = {}
    for seed in tqdm(c.seeds, desc="baseline RL runs", disable=not ctx.progress):
        run, man = ctx.rl_run(f"rl_seed{seed}", ctx.train_config(seed))
        runs[str(seed)] = {
            "run": ctx.rel(run),
            "steps": [cp["step"] for cp in man["checkpoints"]],
            "val_accuracy": [cp["val_accuracy"] for cp in man["checkpoints"]],
            "mean_reward": [cp["mean_reward"] for cp in man["checkpoints"]],
            "wall_time_s": man.get("wall_time"),
        }
    steps = runs[str(c.seeds[0])]["steps"]
    acc = np.array([[np.nan if v is None else v for v in r["val_accuracy"]] for r in runs.values()], float)
    first, last = acc[:, 0], acc[:, -1]
    gain = _ci(last - first)
    from . import plots

    fig = plots.plot_curves(
        ctx.stage_dir("baseline") / "baseline_val_accuracy.png",
        {"RL (mean over seeds)": (steps, np.nanmean(acc, 0).tolist(), None)}
        | {f"seed {s}": (steps, r["val_accuracy"], None) for s, r in runs.items()},
        xlabel="gradient step",
        ylabel="validation greedy accuracy",
        title=f"Baseline RL runs ({len(runs)} seed(s), {c.eval_problems} validation problems)",
    )
    improved = gain["mean"] is not None and gain["mean"] > 0
    return {
        "title": "Baseline RL runs",
        "seeds": c.seeds,
        "numbers": {
            "runs": runs,
            "val_accuracy_start": _ci(first),
            "val_accuracy_end": _ci(last),
            "val_accuracy_gain": gain,
            "eval_problems": c.eval_problems,
            "config": jsonable(asdict(ctx.train_config(c.seeds[0]))),
        },
        "paper": {"note": "paper baseline: R1-Distill-Qwen-1.5B, GRPO, lr 1e-6, 128 prompts x 16 rollouts, 14 ckpts"},
        "reproduced": "n/a",
        "verdict": (
            f"RL {'raised' if improved else 'did not raise'} validation greedy accuracy from "
            f"{np.mean(first):.3f} to {np.mean(last):.3f} (mean over {len(runs)} seed(s)); these runs feed every "
            "later stage."
        ),
        "figures": [ctx.rel(fig)],
    }


def _probes(ctx: _Ctx):
    from .linearity import make_probes, read_probes, write_probes

    p = ctx.out / "linearity" / "probes.jsonl"
    if p.exists():
        return read_probes(p)
    probes = make_probes(ctx.base, ctx.cfg.task, n_prompts=ctx.cfg.probe_prompts, k=ctx.cfg.probe_samples, seed=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_probes(p, probes)
    return probes


def _verdict_linearity(rl_w: dict, sft_w: dict) -> tuple[str, str]:
    """yes: RL weight median R² >= 0.7, > its null median + 0.05, and > SFT median + 0.1; partly: RL above its
    null and above SFT (any margin); no: otherwise."""
    m, nm, sm = rl_w["median"], rl_w["null_median"], sft_w["median"]
    if None in (m, nm, sm):
        return "no", "the R² medians could not be computed"
    if m >= 0.7 and m > nm + 0.05 and m > sm + 0.1:
        rep = "yes"
    elif m > nm and m > sm:
        rep = "partly"
    else:
        rep = "no"
    return rep, (f"RL weights: median R² {m:.3f} (null {nm:.3f}) vs SFT {sm:.3f}; paper RL 0.84 vs SFT 0.42.")


def _mean_numbers(rows: list[dict]) -> dict:
    """Field-wise mean over seeds of :func:`_r2_numbers` dicts (None where any seed has none; ``n`` rounded)."""
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = None if any(v is None for v in vals) else _num(float(np.mean(vals)))
    out["n"] = int(round(float(np.mean([r["n"] for r in rows]))))
    return out


#: issue 10's bar for "the paper's regime": weight and log-prob R² medians >= these, each >= its null + PAPER_MARGIN,
#: on every seed
PAPER_REGIME = {"weights": 0.8, "logprobs": 0.75}
PAPER_MARGIN = 0.3


def paper_regime(per_seed: list[dict]) -> bool:
    """True when every seed's RL weight and log-prob R² medians clear :data:`PAPER_REGIME` and their nulls by 0.3."""
    for r in per_seed:
        for kind, bar in PAPER_REGIME.items():
            x = r[f"rl_{kind}"]
            if x["median"] is None or x["null_median"] is None:
                return False
            if x["median"] < bar or x["median"] < x["null_median"] + PAPER_MARGIN:
                return False
    return True


def stage_linearity(ctx: _Ctx) -> dict:
    from . import plots
    from .checkpoints import discover
    from .linearity import analyze_logprobs, forecast

    c = ctx.cfg
    d = ctx.stage_dir("linearity")
    seed = c.seeds[0]
    rl_run = ctx.out / "runs" / f"rl_seed{seed}"
    probes = _probes(ctx)
    bar = tqdm(total=5 * len(c.seeds) + 1, desc="linearity", disable=not ctx.progress)
    per_seed, sft_ends = [], []
    for sd in c.seeds:
        # the first seed keeps its full results and figures; the others only their numbers
        sub = d if sd == seed else d / f"seed{sd}"
        run = ctx.out / "runs" / f"rl_seed{sd}"
        w = _weight_analysis(run, sub / "rl_weights")
        bar.update()
        lp = analyze_logprobs(discover(run), probes)
        lp.save(sub / "rl_logprobs")
        bar.update()
        s_run, s_man = ctx.sft_run(f"sft_seed{sd}", ctx.sft_config(sd))
        bar.update()
        sw_ = _weight_analysis(s_run, sub / "sft_weights")
        bar.update()
        slp = analyze_logprobs(discover(s_run), probes)
        slp.save(sub / "sft_logprobs")
        bar.update()
        sft_ends.append(s_man["checkpoints"][-1]["val_accuracy"])
        per_seed.append(
            {
                "seed": sd,
                "rl_weights": _r2_numbers(w.to_json()),
                "rl_logprobs": _r2_numbers(lp.to_json()),
                "sft_weights": _r2_numbers(sw_.to_json()),
                "sft_logprobs": _r2_numbers(slp.to_json()),
            }
        )
        if sd == seed:
            rl_w, sft_w = w, sw_
    traj = discover(rl_run)
    fit_until = traj.steps[(len(traj.steps) - 1) // 2]
    fc = forecast(traj, fit_until, probes=probes)
    fc.save(d / "forecast")
    bar.update()
    bar.close()
    rw, rl_l = (_mean_numbers([r[k] for r in per_seed]) for k in ("rl_weights", "rl_logprobs"))
    sw, sl = (_mean_numbers([r[k] for r in per_seed]) for k in ("sft_weights", "sft_logprobs"))
    in_regime = paper_regime(per_seed)
    ov = fc.overall()
    fc_num = {
        "fit_steps": fc.fit_steps,
        "later_steps": fc.later_steps,
        "weights_rel_err_last": _num(ov["rel_err"][-1], 6),
        "weights_naive_rel_err_last": _num(ov["naive_rel_err"][-1], 6),
        "weights_ratio_to_naive": [_num(v) for v in ov["ratio_to_naive"]],
    }
    if fc.logprobs:
        fc_num["logprob_mae"] = [_num(v) for v in fc.logprobs["mae"]]
        fc_num["logprob_naive_mae"] = [_num(v) for v in fc.logprobs["naive_mae"]]
    rl_arr = rl_w.r2.array() if rl_w.r2.values is not None else None
    sft_arr = sft_w.r2.array() if sft_w.r2.values is not None else None
    figs = []
    if rl_arr is not None and sft_arr is not None:
        figs.append(
            plots.plot_r2_compare(
                d / "rl_vs_sft_weights.png",
                {f"RL (median {rw['median']:.2f})": rl_arr, f"SFT (median {sw['median']:.2f})": sft_arr},
                title="Weight R²: RL vs SFT (same base, steps, checkpoints)",
            )
        )
    for f in [
        "rl_weights/weights_r2_hist.png",
        "rl_weights/weights_heatmap.png",
        "rl_weights/weights_examples.png",
        "rl_logprobs/logprobs_r2_hist.png",
        "rl_logprobs/logprobs_examples.png",
        "forecast/forecast.png",
    ]:
        if (d / f).exists():
            figs.append(d / f)
    rep, verdict = _verdict_linearity(rw, sw)
    verdict += (
        f" Log-probs: median R² {rl_l['median']:.3f} (null {rl_l['null_median']:.3f}). Mean over {len(c.seeds)} "
        f"seed(s); the paper's regime (weights >= 0.8, log-probs >= 0.75, each >= null + 0.3, every seed): "
        f"{'reached' if in_regime else 'not reached'}."
        if rl_l["median"] is not None and rl_l["null_median"] is not None
        else ""
    )
    return {
        "title": "Linearity of weights and token log-probs; RL vs SFT",
        "seeds": list(c.seeds),
        "numbers": {
            "checkpoints": traj.steps,
            "rl_weights": rw,
            "rl_logprobs": rl_l,
            "sft_weights": sw,
            "sft_logprobs": sl,
            "per_seed": per_seed,
            "paper_regime": in_regime,
            "forecast_seed": seed,
            "sft_val_accuracy_end": _num(float(np.mean(sft_ends))),
            "probes": len(probes),
            "forecast": fc_num,
            "weight_sampling": rl_w.config.get("sample"),
        },
        "paper": PAPER["linearity"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(f) for f in figs],
    }


def _verdict_robustness(rows: list[dict]) -> tuple[str, str]:
    """yes: every setting's weight median R² >= 0.7 and above its null median; partly: every setting above its null
    median; no: otherwise. Contrast rows (``CONTRAST_SETTINGS``) are shown but not counted."""
    rows = [r for r in rows if r.get("setting") not in CONTRAST_SETTINGS]
    above = [r["weights"]["median"] is not None and r["weights"]["median"] > r["weights"]["null_median"] for r in rows]
    strong = [r["weights"]["median"] is not None and r["weights"]["median"] >= 0.7 for r in rows]
    meds = ", ".join(f"{r['label']} {r['weights']['median']:.2f}" for r in rows if r["weights"]["median"] is not None)
    rep = "yes" if all(above) and all(strong) else "partly" if all(above) else "no"
    return rep, f"weight median R² per setting: {meds}; paper: 0.72-0.84 across its settings."


def stage_robustness(ctx: _Ctx) -> dict:
    from . import plots
    from .checkpoints import discover
    from .linearity import analyze_logprobs

    c = ctx.cfg
    d = ctx.stage_dir("robustness")
    seed = c.seeds[0]
    probes = _probes(ctx)
    rows = []
    for name in tqdm(c.robustness, desc="robustness settings", disable=not ctx.progress):
        label, over = ROBUSTNESS_SETTINGS[name]
        ov = over(c.learning_rate)
        run = (
            ctx.out / "runs" / f"rl_seed{seed}"
            if not ov
            else ctx.rl_run(f"robust_{name}", ctx.train_config(seed, **ov))[0]
        )
        w = _weight_analysis(run)
        lp = analyze_logprobs(discover(run), probes)
        man = read_json(run / "manifest.json")
        rows.append(
            {
                "setting": name,
                "label": label,
                "overrides": ov,
                "weights": _r2_numbers(w.to_json()),
                "logprobs": _r2_numbers(lp.to_json()),
                "val_accuracy_end": man["checkpoints"][-1]["val_accuracy"],
                "run": ctx.rel(run),
            }
        )
    fig = plots.plot_r2_settings(
        d / "robustness.png",
        [r["label"] for r in rows],
        {
            "weights": [(r["weights"]["q1"], r["weights"]["median"], r["weights"]["q3"], r["weights"]["null_median"])
                        for r in rows],
            "token log-probs": [(r["logprobs"]["q1"], r["logprobs"]["median"], r["logprobs"]["q3"],
                                 r["logprobs"]["null_median"]) for r in rows],
        },
        title=f"R² median and IQR per setting (seed {seed}, {c.rl_steps} steps); squares: null median",
    )  # fmt: skip
    rep, verdict = _verdict_robustness(rows)
    return {
        "title": "Robustness across algorithms, optimizers, learning rates and group sizes",
        "seeds": [seed],
        "numbers": {"settings": rows, "sgd_lr_factor": SGD_LR_FACTOR},
        "paper": PAPER["robustness"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }


def _verdict_mechanism(curve: list[dict], sft: float | None) -> tuple[str, str]:
    """On the weighted median R² (mean over seeds) of the SNR grid ordered from high to low SNR, zero signal last:
    yes: the maximum is at an interior SNR (not the highest SNR, not zero signal) and exceeds vanilla SFT by > 0.02;
    partly: some noisy setting exceeds vanilla SFT by > 0.02 but the shape is not an inverted U; no: otherwise."""
    vals = [p["weighted_median"]["mean"] for p in curve]
    if sft is None or any(v is None for v in vals) or len(vals) < 3:
        return "no", "not enough points to judge the shape"
    i = int(np.argmax(vals))
    peak = vals[i]
    interior = 0 < i < len(vals) - 1
    txt = (
        f"peak weighted median R² {peak:.3f} at {curve[i]['label']} vs vanilla SFT {sft:.3f}; "
        "paper: inverted U peaking at -10 dB (0.582) vs SFT 0.426."
    )
    if interior and peak > sft + 0.02:
        return "yes", txt
    if peak > sft + 0.02:
        return "partly", txt
    return "no", txt


def stage_mechanism(ctx: _Ctx) -> dict:
    from . import plots

    c = ctx.cfg
    d = ctx.stage_dir("mechanism")
    settings: list[tuple[str, dict]] = [
        (f"{s:g} dB", {"noise_snr_db": float(s)}) for s in sorted(c.mechanism_snrs, reverse=True)
    ]
    if c.mechanism_zero_signal:
        settings.append(("zero-signal", {"zero_signal": True}))
    jobs = [("vanilla SFT", {})] + settings
    results: dict[str, list[dict]] = {lab: [] for lab, _ in jobs}
    bar = tqdm(total=len(jobs) * len(c.mechanism_seeds), desc="mechanism SFT runs", disable=not ctx.progress)
    for seed in c.mechanism_seeds:
        for lab, kw in jobs:
            tag = lab.replace(" ", "").replace("-", "m").replace(".", "p")
            run, man = ctx.sft_run(f"mech_{tag}_seed{seed}", ctx.sft_config(seed, **kw))
            w = _weight_analysis(run)
            aw = active_weighted(w)
            results[lab].append({"seed": seed, **aw, "median": w.to_json()["r2"]["median"],
                                 "val_accuracy_end": man["checkpoints"][-1]["val_accuracy"]})  # fmt: skip
            bar.update()
    bar.close()
    curve = []
    for lab, _ in jobs:
        rs = results[lab]
        curve.append(
            {
                "label": lab,
                "weighted_median": _ci([r["weighted_median"] for r in rs]),
                "weighted_mean": _ci([r["weighted_mean"] for r in rs]),
                "val_accuracy_end": _ci([r["val_accuracy_end"] for r in rs]),
                "per_seed": rs,
            }
        )
    sft_pt, noisy = curve[0], curve[1:]
    fig = plots.plot_snr_curve(
        d / "mechanism.png",
        [p["label"] for p in noisy],
        [p["weighted_median"]["mean"] for p in noisy],
        [p["weighted_mean"]["mean"] for p in noisy],
        sft_median=sft_pt["weighted_median"]["mean"],
        sft_mean=sft_pt["weighted_mean"]["mean"],
        paper=PAPER["mechanism"],
        title=f"Active-parameter weighted R² vs token-level SNR ({len(c.mechanism_seeds)} seed(s), {c.rl_steps} steps)",
    )
    rep, verdict = _verdict_mechanism(noisy, sft_pt["weighted_median"]["mean"])
    return {
        "title": "Mechanism: token-level random-sign noise in SFT",
        "seeds": c.mechanism_seeds,
        "numbers": {"vanilla_sft": sft_pt, "curve": noisy},
        "paper": PAPER["mechanism"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }


def wx_targets(t1: int, steps: list[int], max_alpha: float, max_targets: int, t0: int = 0) -> list[int]:
    """Save-grid steps in ``(t1, min(last, t0 + max_alpha * (t1 - t0))]``, at most ``max_targets`` of them, evenly
    spread."""
    cand = [s for s in steps if t1 < s <= min(steps[-1], t0 + max_alpha * (t1 - t0))]
    if len(cand) <= max_targets:
        return cand
    idx = np.unique(np.round(np.linspace(0, len(cand) - 1, max_targets)).astype(int))
    return [cand[i] for i in idx]


def _verdict_wx(rows: list[dict]) -> tuple[str, str]:
    """On rows with alpha <= 2 ("moderate", where the paper says extrapolation matches RL): A = mean of
    (extrapolated − real RL at the target) >= −0.02; B = mean of (extrapolated − the t1 checkpoint) > 0.
    yes: A and B; partly: one of them; no: neither."""
    mod = [r for r in rows if r["alpha"] <= 2.0]
    if not mod:
        return "no", "no target with alpha <= 2 on the save grid"
    a = float(np.mean([r["diff_vs_real"]["mean"] for r in mod]))
    b = float(np.mean([r["gain_vs_t1"]["mean"] for r in mod]))
    ok_a, ok_b = a >= -0.02, b > 0
    rep = "yes" if ok_a and ok_b else "partly" if ok_a or ok_b else "no"
    return rep, (
        f"at alpha <= 2 the extrapolated models are {a:+.3f} vs the real RL checkpoint at the target and {b:+.3f} "
        "vs their own t1 checkpoint (greedy validation accuracy); paper: matches or beats RL when moderate."
    )


def stage_weight_extrapolation(ctx: _Ctx) -> dict:
    from . import plots
    from .tasks import get_task
    from .weight_extrapolation import extrapolate_two_point

    c = ctx.cfg
    d = ctx.stage_dir("weight_extrapolation")
    task = get_task(c.task)
    problems = task.problems("validation", c.wx_eval_problems)
    T = c.rl_steps
    steps = list(range(0, T + 1, c.save_every))
    t0s = sorted({snap(f * T, c.save_every, lo=0, hi=T - 2 * c.save_every) for f in c.wx_base_fractions})
    t1s = sorted({snap(f * T, c.save_every, lo=c.save_every, hi=T - c.save_every) for f in c.wx_t1_fractions})
    # (t0, t1) windows: t0 = 0 is the paper's (from the base); a later t0 skips the early phase (docs/regime.md)
    plan_ = {
        (t0, t1): wx_targets(t1, steps, c.wx_max_alpha, c.wx_max_targets, t0=t0) for t0 in t0s for t1 in t1s if t1 > t0
    }
    need_real = sorted({s for (_, t1), ts in plan_.items() for s in [t1, *ts]})
    real: dict[int, dict[int, float]] = {}
    extra: dict[tuple[int, int, int], dict[int, float]] = {}
    n_jobs = len(c.seeds) * (len(need_real) + sum(len(v) for v in plan_.values()))
    bar = tqdm(total=n_jobs, desc="weight extrapolation", disable=not ctx.progress)
    tmp_root = d / "models"
    for seed in c.seeds:
        run = ctx.out / "runs" / f"rl_seed{seed}"
        for s in need_real:
            real.setdefault(s, {})[seed] = float(_eval_greedy(ckpt(run, s), task, problems).mean())
            bar.update()
        for (t0, t1), targets in plan_.items():
            for s in targets:
                out = tmp_root / f"seed{seed}_t{t0}-{t1}_to{s}"
                alpha = (s - t0) / (t1 - t0)
                extrapolate_two_point(ckpt(run, t0), ckpt(run, t1), out, alpha=alpha, overwrite=True, progress=False,
                                      metadata={"study": "weight_extrapolation", "seed": seed})  # fmt: skip
                extra.setdefault((t0, t1, s), {})[seed] = float(_eval_greedy(out, task, problems).mean())
                shutil.rmtree(out, ignore_errors=True)
                bar.update()
    bar.close()
    shutil.rmtree(tmp_root, ignore_errors=True)
    rows = []
    for (t0, t1), targets in plan_.items():
        for s in targets:
            e = [extra[(t0, t1, s)][sd] for sd in c.seeds]
            r = [real[s][sd] for sd in c.seeds]
            b = [real[t1][sd] for sd in c.seeds]
            rows.append(
                {
                    "t0": t0,
                    "t1": t1,
                    "target": s,
                    "alpha": round((s - t0) / (t1 - t0), 4),
                    "extrapolated": _ci(e),
                    "real_rl": _ci(r),
                    "t1_checkpoint": _ci(b),
                    "diff_vs_real": _ci(np.subtract(e, r)),
                    "gain_vs_t1": _ci(np.subtract(e, b)),
                }
            )
    peaks = {}
    for t0, t1 in plan_:
        rs = [r for r in rows if (r["t0"], r["t1"]) == (t0, t1)]
        if rs:
            best = max(rs, key=lambda r: r["extrapolated"]["mean"])
            key = str(t1) if t0 == 0 else f"{t0}-{t1}"
            peaks[key] = {"target": best["target"], "alpha": best["alpha"], "accuracy": best["extrapolated"]["mean"]}
    fig = plots.plot_extrapolation(
        d / "weight_extrapolation.png",
        real_curve=(need_real, [float(np.mean(list(real[s].values()))) for s in need_real]),
        curves={
            f"({t0}, {t1})": (
                [r["target"] for r in rows if (r["t0"], r["t1"]) == (t0, t1)],
                [r["extrapolated"]["mean"] for r in rows if (r["t0"], r["t1"]) == (t0, t1)],
                [
                    (r["extrapolated"]["ci_low"], r["extrapolated"]["ci_high"])
                    for r in rows
                    if (r["t0"], r["t1"]) == (t0, t1)
                ],
            )
            for t0, t1 in plan_
        },
        title=f"Weight extrapolation from (t0, t1) vs real RL ({len(c.seeds)} seed(s), {len(problems)} val problems)",
    )
    rep, verdict = _verdict_wx(rows)
    return {
        "title": "Weight-space extrapolation",
        "seeds": c.seeds,
        "numbers": {"rows": rows, "peaks": peaks, "metric": "validation greedy accuracy", "problems": len(problems)},
        "paper": PAPER["weight_extrapolation"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }


def _verdict_logit(pooled: dict) -> tuple[str, str]:
    """yes: the pooled paired-bootstrap CI of (extrapolated − last RL checkpoint) avg@k lies above 0; partly: the
    mean difference is > 0 but the CI includes 0; no: otherwise."""
    d, lo = pooled["diff"], pooled["ci_low"]
    rep = "yes" if lo > 0 else "partly" if d > 0 else "no"
    return rep, (
        f"avg@k difference (extrapolated − last RL checkpoint) {d:+.4f}, 95% CI [{lo:+.4f}, {pooled['ci_high']:+.4f}]; "
        "paper: +4.2% relative (0.4479 -> 0.4667)."
    )


def stage_logit_extrapolation(ctx: _Ctx) -> dict:
    from .evaluation import evaluate, paired_bootstrap
    from .logit_extrapolation import ExtrapolatedGenerator
    from .tasks import get_task

    c = ctx.cfg
    task = get_task(c.task)
    problems = task.problems("test", c.logit_problems)
    T = c.rl_steps
    base = snap(c.logit_base_fraction * T, c.save_every, lo=c.save_every, hi=T - c.save_every)
    target = base + c.logit_alpha * (T - base)
    ev = dict(k=c.logit_k, temperature=0.6, top_p=0.95, greedy=False, seed=0, problems=problems)
    per_seed, ours_all, std_all = [], [], []
    for seed in tqdm(c.seeds, desc="logit extrapolation", disable=not ctx.progress):
        run = ctx.out / "runs" / f"rl_seed{seed}"
        std = evaluate(ckpt(run, T), task, **ev)
        gen = ExtrapolatedGenerator.from_dirs(ckpt(run, base), ckpt(run, T), alpha=c.logit_alpha)
        ours = evaluate(gen, task, **ev)
        a, b = std.per_problem("avg"), ours.per_problem("avg")
        std_all.append(a)
        ours_all.append(b)
        per_seed.append(
            {"seed": seed, "std_rl": std.avg_at_k, "extrapolated": ours.avg_at_k, "bootstrap": paired_bootstrap(a, b)}
        )
    a, b = np.mean(std_all, 0), np.mean(ours_all, 0)
    pooled = paired_bootstrap(a, b)
    rel = (b.mean() - a.mean()) / a.mean() * 100 if a.mean() > 0 else None
    rep, verdict = _verdict_logit(pooled)
    return {
        "title": "Output-space (logit) extrapolation",
        "seeds": c.seeds,
        "numbers": {
            "base_step": base,
            "second_step": T,
            "target_step": target,
            "alpha": c.logit_alpha,
            "k": c.logit_k,
            "problems": len(problems),
            "split": "test",
            "std_rl_avg_at_k": _ci([p["std_rl"] for p in per_seed]),
            "extrapolated_avg_at_k": _ci([p["extrapolated"] for p in per_seed]),
            "diff_over_seeds": _ci([p["extrapolated"] - p["std_rl"] for p in per_seed]),
            "pooled_paired_bootstrap": pooled,
            "relative_improvement_%": _num(rel),
            "per_seed": per_seed,
        },
        "paper": PAPER["logit_extrapolation"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [],
    }


def first_reach(steps: list[int], acc: list[float | None], threshold: float) -> int | None:
    """First gradient step whose accuracy is >= ``threshold`` (None if never)."""
    for s, a in zip(steps, acc):
        if a is not None and a >= threshold:
            return s
    return None


def _verdict_regrounding(speed: list[dict], budgets: list[dict]) -> tuple[str, str]:
    """yes: some (M, N) has a mean speedup > 1 at every threshold it reached (reaching >= 2 thresholds) and a mean
    fixed-budget gain > 0 over the budgets; partly: a speedup > 1 at some threshold or a budget gain > 0;
    no: neither."""
    best_txt, any_fast, full = [], False, False
    for cfg in {r["config"] for r in speed}:
        rs = [r for r in speed if r["config"] == cfg and r["speedup"]["mean"] is not None]
        bs = [r for r in budgets if r["config"] == cfg]
        gain = float(np.mean([r["diff"]["mean"] for r in bs])) if bs else float("nan")
        fast = [r["speedup"]["mean"] > 1 for r in rs]
        any_fast = any_fast or any(fast) or gain > 0
        if len(rs) >= 2 and all(fast) and gain > 0:
            full = True
        sp = ", ".join(f"{r['speedup']['mean']:.2f}x" for r in rs) or "no threshold reached"
        best_txt.append(f"{cfg}: speedups {sp}; mean budget gain {gain:+.3f}")
    rep = "yes" if full else "partly" if any_fast else "no"
    return rep, "; ".join(sorted(best_txt)) + ". Paper: up to 6.1x, +2.3..+6.3% at fixed budgets."


def stage_regrounding(ctx: _Ctx) -> dict:
    from . import plots
    from .evaluation import paired_bootstrap
    from .tasks import get_task

    c = ctx.cfg
    T = c.rl_steps
    task = get_task(c.task)
    problems = task.problems("test", c.reground_eval_problems)
    base_runs = {seed: ctx.out / "runs" / f"rl_seed{seed}" for seed in c.seeds}
    base_man = {seed: read_json(r / "manifest.json") for seed, r in base_runs.items()}
    steps = [cp["step"] for cp in base_man[c.seeds[0]]["checkpoints"]]
    # thresholds: fixed from the baseline curve only (mean over seeds at fractions of training), before re-grounding
    curve = np.nanmean([[np.nan if cp["val_accuracy"] is None else cp["val_accuracy"] for cp in m["checkpoints"]]
                        for m in base_man.values()], 0)  # fmt: skip
    th_steps = [snap(f * T, c.save_every, lo=c.save_every, hi=T) for f in c.threshold_fractions]
    thresholds = [float(curve[steps.index(s)]) for s in th_steps]
    runs: dict[str, dict[int, tuple[Path, dict]]] = {"standard": {s: (base_runs[s], base_man[s]) for s in c.seeds}}
    bar = tqdm(total=len(c.reground_specs) * len(c.seeds), desc="re-grounded RL runs", disable=not ctx.progress)
    for spec in c.reground_specs:
        m, n = spec.split(",")
        for seed in c.seeds:
            tcfg = ctx.train_config(seed, reground=spec, reground_optimizer=c.reground_optimizer)
            runs.setdefault(f"({m},{n})", {})[seed] = ctx.rl_run(f"reground_{m}_{n}_seed{seed}", tcfg)
            bar.update()
    bar.close()
    # steps to thresholds
    reach: dict[str, list[dict]] = {}
    for name, by_seed in runs.items():
        for th in thresholds:
            per = []
            for _, man in by_seed.values():
                cps = man["checkpoints"]
                per.append(first_reach([cp["step"] for cp in cps], [cp["val_accuracy"] for cp in cps], th))
            reach.setdefault(name, []).append({"threshold": th, "steps": per})
    speed = []
    for name in runs:
        if name == "standard":
            continue
        for th_i, th in enumerate(thresholds):
            std_steps, rg_steps = reach["standard"][th_i]["steps"], reach[name][th_i]["steps"]
            ratios = [a / b for a, b in zip(std_steps, rg_steps) if a is not None and b is not None and b > 0]
            speed.append(
                {
                    "config": name,
                    "threshold": th,
                    "std_steps": std_steps,
                    "reground_steps": rg_steps,
                    "reached": f"{sum(b is not None for b in rg_steps)}/{len(rg_steps)}",
                    "speedup": _ci(ratios),
                }
            )
    # fixed gradient budgets: greedy test accuracy of the checkpoint at that gradient step
    budgets_steps = sorted({snap(f * T, c.save_every, lo=c.save_every, hi=T) for f in c.budget_fractions})
    scores: dict[tuple[str, int, int], np.ndarray] = {}
    bar = tqdm(total=len(runs) * len(c.seeds) * len(budgets_steps), desc="budget evals", disable=not ctx.progress)
    for name, by_seed in runs.items():
        for seed, (run, _) in by_seed.items():
            for b in budgets_steps:
                scores[(name, seed, b)] = _eval_greedy(ckpt(run, b), task, problems)
                bar.update()
    bar.close()
    budgets = []
    for name in runs:
        if name == "standard":
            continue
        for b in budgets_steps:
            std = [scores[("standard", s, b)].mean() for s in c.seeds]
            rg = [scores[(name, s, b)].mean() for s in c.seeds]
            pooled = paired_bootstrap(
                np.mean([scores[("standard", s, b)] for s in c.seeds], 0),
                np.mean([scores[(name, s, b)] for s in c.seeds], 0),
            )
            budgets.append(
                {
                    "config": name,
                    "gradient_steps": b,
                    "standard": _ci(std),
                    "reground": _ci(rg),
                    "diff": _ci(np.subtract(rg, std)),
                    "relative_%": _num((np.mean(rg) - np.mean(std)) / np.mean(std) * 100) if np.mean(std) > 0 else None,
                    "pooled_paired_bootstrap": pooled,
                }
            )
    walls = {
        name: _ci([man.get("wall_time", float("nan")) for _, man in by_seed.values()]) for name, by_seed in runs.items()
    }
    eff = {
        name: [cp.get("effective_step", cp["step"]) for cp in next(iter(by_seed.values()))[1]["checkpoints"]]
        for name, by_seed in runs.items()
    }
    fig = plots.plot_curves(
        ctx.stage_dir("regrounding") / "regrounding_curves.png",
        {
            name: (
                [cp["step"] for cp in next(iter(by_seed.values()))[1]["checkpoints"]],
                np.nanmean([[np.nan if cp["val_accuracy"] is None else cp["val_accuracy"] for cp in man["checkpoints"]]
                            for _, man in by_seed.values()], 0).tolist(),
                None,
            )
            for name, by_seed in runs.items()
        },
        xlabel="gradient step",
        ylabel="validation greedy accuracy",
        title=f"Standard RL vs re-grounding (M,N) ({len(c.seeds)} seed(s)); dashed: thresholds",
        hlines=thresholds,
    )  # fmt: skip
    rep, verdict = _verdict_regrounding(speed, budgets)
    return {
        "title": "Periodic re-grounding",
        "seeds": c.seeds,
        "numbers": {
            "threshold_rule": "baseline mean validation greedy accuracy at "
            + ", ".join(f"{f:.0%}" for f in c.threshold_fractions)
            + " of its training (steps "
            + ", ".join(map(str, th_steps))
            + ")",
            "thresholds": thresholds,
            "steps_to_threshold": reach,
            "speedups": speed,
            "fixed_budgets": budgets,
            "budget_problems": len(problems),
            "wall_time_s": walls,
            "effective_steps": eff,
            "optimizer_after_jump": c.reground_optimizer,
        },
        "paper": PAPER["regrounding"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }


STAGE_FUNCS = {
    "baseline": stage_baseline,
    "linearity": stage_linearity,
    "robustness": stage_robustness,
    "mechanism": stage_mechanism,
    "weight_extrapolation": stage_weight_extrapolation,
    "logit_extrapolation": stage_logit_extrapolation,
    "regrounding": stage_regrounding,
}


# --------------------------------------------------------------------------------------------------
# Driver


def parse_stages(spec: str | None) -> list[str]:
    """``"a,b"`` -> stage names in pipeline order; ``None``/``"all"`` -> every stage."""
    if spec is None or spec == "all":
        return list(STAGES)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    known = [*SECTIONS, *OPT_IN_STAGES, "report"]
    bad = [s for s in names if s not in known]
    if bad:
        raise RlvrLinearError(f"unknown stages {bad}; choose from {', '.join(known)}")
    return [s for s in known if s in names]


def stage_done(out: str | Path, stage: str) -> bool:
    return (Path(out) / stage / "result.json").exists()


def machine_info() -> dict:
    import os

    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _check_config(out: Path, cfg: StudyConfig) -> None:
    p = out / "study_config.json"
    cur = jsonable(asdict(cfg))
    if p.exists():
        old = read_json(p)
        if old != cur:
            diff = sorted(k for k in set(old) | set(cur) if old.get(k) != cur.get(k))
            raise RlvrLinearError(
                f"{out} holds a study with a different protocol (fields {diff}); use a new output folder"
            )
    else:
        write_json(p, cur)


def run_study(cfg: StudyConfig, out: str | Path, stages: list[str] | None = None, progress: bool = True) -> dict:
    """Run ``stages`` (default: all) into ``out``; finished stages are skipped. Returns the results object.

    Stages that need the baseline runs trigger the ``baseline`` stage first if it has not finished.
    """
    import torch

    out = Path(out)
    stages = list(stages or STAGES)
    if "regime" in stages:  # its own protocol (rlvr_linear.regime.grid): OUT itself, or OUT/regime with others
        from .regime import run_regime

        rest = [s for s in stages if s != "regime"]
        reg = run_regime(out if not rest else out / "regime", quick=cfg.mode == "quick", progress=progress)
        if not rest:
            return {"regime": reg}
        stages = rest
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    if any(s in NEEDS_BASELINE for s in stages) and "baseline" not in stages and not stage_done(out, "baseline"):
        stages = ["baseline", *stages]
    stages = [s for s in STAGES if s in stages]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    done = {s for s in stages if s != "report" and stage_done(out, s)}
    print_plan(cfg, stages, done)
    ctx = _Ctx(cfg, out, progress)
    timings = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
    for st in stages:
        if st == "report":
            continue
        if st in done:
            print(f"[{st}] finished earlier: reusing {out / st / 'result.json'}")
            continue
        print(f"[{st}] running")
        t0 = time.time()
        res = STAGE_FUNCS[st](ctx)
        res["wall_s"] = round(time.time() - t0, 1)
        write_json(ctx.stage_dir(st) / "result.json", jsonable(res))
        timings[st] = res["wall_s"]
        write_json(out / "timings.json", timings)
        print(f"[{st}] done in {res['wall_s']:.0f} s: {res['reproduced']} - {res['verdict']}")
    from .report import collect_results, write_report

    results = collect_results(out, cfg, machine=machine_info(), timings=timings)
    if "report" in stages:
        paths = write_report(results, out)
        print(f"[report] {paths['html']} and {paths['json']}")
    return results
