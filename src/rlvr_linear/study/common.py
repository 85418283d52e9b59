"""Helpers every stage shares: the save grid (:func:`snap`, :func:`ckpt`, :func:`first_reach`), number formatting
(:func:`_ci`, :func:`_num`), the run cache (:class:`_Ctx`, :func:`same_config`), weight R² summaries and greedy
evaluation.

The regime map (a floor above the study) and the study's advisor experiments (:mod:`.advisor_cases`,
:mod:`.adaptive_regrounding`) reuse these helpers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RlvrLinearError
from ..io import jsonable, read_json
from .config import StudyConfig


def snap(step: float, save_every: int, lo: int | None = None, hi: int | None = None) -> int:
    """The save-grid step nearest to ``step`` (a multiple of ``save_every``), clamped to ``[lo, hi]``."""
    s = int(round(step / save_every)) * save_every
    if lo is not None:
        s = max(s, lo)
    if hi is not None:
        s = min(s, hi)
    return s


def ckpt(run: Path, step: int) -> Path:
    from ..io.checkpoints import step_dir_name

    return Path(run) / step_dir_name(step)


def first_reach(steps: list[int], acc: list[float | None], threshold: float) -> int | None:
    """First gradient step whose accuracy is >= ``threshold`` (None if never)."""
    for s, a in zip(steps, acc):
        if a is not None and a >= threshold:
            return s
    return None


def _ci(values) -> dict:
    from ..evaluation.evaluation import mean_ci

    return mean_ci(values)


def _num(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return round(x, nd) if math.isfinite(x) else None
    return x


#: config fields that say how a run ran, not what it computed (up to float rounding): not compared
HOW_NOT_WHAT = ("threads",)


def same_config(saved: dict | None, cfg) -> bool:
    """Whether a run's saved config (a manifest's ``config``) is ``cfg``. Fields added to the dataclass since the run
    was saved take their defaults, so a new option with a default keeps old runs reusable; the thread count is not
    compared (:data:`HOW_NOT_WHAT`)."""
    if not isinstance(saved, dict):
        return False
    known = {f.name for f in fields(type(cfg))}
    try:
        old = type(cfg)(**{k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError, RlvrLinearError):
        return False
    a, b = jsonable(asdict(old)), jsonable(asdict(cfg))
    for how in HOW_NOT_WHAT:
        a.pop(how, None), b.pop(how, None)
    return set(saved) <= known and a == b


class _Ctx:
    """Shared state of one study: config, output folder, base model, task, baseline runs."""

    def __init__(self, cfg: StudyConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self._base: Path | None = None
        self.baseline: dict | None = None

    @property
    def base(self) -> Path:
        if self._base is None:
            from ..io.checkpoints import find_model_dir
            from ..models.base_model import ensure_base

            c = self.cfg
            if c.model == "tiny":
                self._base = ensure_base("tiny", progress=self.progress, **(c.base_recipe or {}))
            elif c.model in ("smollm2-135m", "smollm2"):
                self._base = ensure_base("smollm2-135m", progress=self.progress)
            else:
                self._base = find_model_dir(c.model)
        return self._base

    def train_config(self, seed: int, **overrides):
        from ..training.grpo import PRESETS, TrainConfig

        c = self.cfg
        d = dict(PRESETS[c.preset or ("tiny" if c.model == "tiny" else "smollm2")])
        # SmolLM2 by its name (what `rlvr-linear train --model smollm2-135m` records), so a run trained by hand with
        # the protocol's settings is the study's run; other bases by their folder
        model = "smollm2-135m" if c.model in ("smollm2-135m", "smollm2") else str(self.base)
        d.update(
            model=model,
            task=c.task,
            steps=c.rl_steps,
            save_every=c.save_every,
            learning_rate=c.learning_rate,
            optimizer=c.optimizer,
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
        from ..training.grpo import train

        run = self.out / "runs" / name
        man_path = run / "manifest.json"
        if man_path.exists():
            man = read_json(man_path)
            if same_config(man.get("config"), tcfg):
                if man.get("finished"):
                    return run, man
                return run, train(tcfg, run, progress=self.progress)  # resumes
            return run, train(tcfg, run, overwrite=True, progress=self.progress)
        return run, train(tcfg, run, overwrite=True, progress=self.progress)

    def sft_run(self, name: str, scfg) -> tuple[Path, dict]:
        from ..training.sft import train_sft

        run = self.out / "runs" / name
        man_path = run / "manifest.json"
        if man_path.exists():
            man = read_json(man_path)
            if man.get("finished") and same_config(man.get("config"), scfg):
                return run, man
        return run, train_sft(scfg, run, overwrite=True, progress=self.progress)

    def sft_config(self, seed: int, **kw):
        from ..training.sft import SFTConfig

        c = self.cfg
        return SFTConfig(
            model=str(self.base),
            task=c.task,
            steps=c.rl_steps,
            save_every=c.save_every,
            learning_rate=c.learning_rate,
            optimizer=c.optimizer,
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
    from ..io.checkpoints import discover
    from ..linearity import analyze_weights

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
    from ..evaluation.evaluation import evaluate

    return evaluate(model, task, problems=problems, k=0, batch_size=256).greedy_correct.astype(float)


def _probes(ctx: _Ctx):
    from ..linearity import make_probes, read_probes, write_probes

    p = ctx.out / "linearity" / "probes.jsonl"
    if p.exists():
        return read_probes(p)
    probes = make_probes(ctx.base, ctx.cfg.task, n_prompts=ctx.cfg.probe_prompts, k=ctx.cfg.probe_samples, seed=0)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_probes(p, probes)
    return probes


def _mean_numbers(rows: list[dict]) -> dict:
    """Field-wise mean over seeds of :func:`_r2_numbers` dicts (None where any seed has none; ``n`` rounded)."""
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = None if any(v is None for v in vals) else _num(float(np.mean(vals)))
    out["n"] = int(round(float(np.mean([r["n"] for r in rows]))))
    return out
