"""The study's weight-extrapolation stage as labelled cases for :mod:`rlvr_linear.advisor.validate` (the regime map's
case format).

The stage (:mod:`rlvr_linear.study.weight_extrapolation`) stores only seed means, not per-problem scores, so each
of its (seed, t0, t1, target) extrapolations is rebuilt (``extrapolate_two_point`` with α = (target − t0) /
(t1 − t0), as the stage does) and scored again with the stage's own greedy evaluation (``study.common._eval_greedy``)
on the same validation problems (``task.problems("validation", wx_eval_problems)``), next to the t1 checkpoint and
the real checkpoint at the target. Gains are paired bootstrap 95% CIs over those problems
(``evaluation.paired_bootstrap``), the regime map's ``gain_vs_t1`` / ``gain_vs_real`` fields; ``avg_k`` is None
(the stage scores greedy only). :func:`check_against_study` compares the re-scored seed means with the stage's
``result.json``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import read_json, write_text

Scorer = Callable[[str, object, list], np.ndarray]


def _read(study: Path) -> tuple[dict, dict]:
    cfg_p, res_p = study / "study_config.json", study / "weight_extrapolation" / "result.json"
    for p in (cfg_p, res_p):
        if not p.is_file():
            raise RlvrLinearError(f"{p}: not found; is {study} a study folder with its weight_extrapolation stage?")
    return read_json(cfg_p), read_json(res_p)


def study_cases(study: str | Path, *, scorer: Scorer | None = None, progress: bool = True) -> list[dict]:
    """One case per (seed, row) of ``STUDY/weight_extrapolation/result.json``, runs in ``STUDY/runs/rl_seed<s>``.

    ``scorer(model_dir, task, problems) -> per-problem 0/1 scores`` (default: the stage's greedy evaluation).
    """
    from ..evaluation.evaluation import gain_ci
    from ..evaluation.tasks import get_task
    from ..extrapolation.weights import extrapolate_two_point
    from .common import _eval_greedy, ckpt

    study = Path(study)
    cfg, res = _read(study)
    rows, seeds = res["numbers"]["rows"], res["seeds"]
    task = get_task(cfg["task"])
    problems = task.problems("validation", cfg["wx_eval_problems"])
    if len(problems) != res["numbers"]["problems"]:
        raise RlvrLinearError(
            f"{study}: the stage scored {res['numbers']['problems']} problems, the config gives {len(problems)}"
        )
    scorer = scorer or _eval_greedy
    cache: dict[str, np.ndarray] = {}

    def score(path: Path) -> np.ndarray:
        if str(path) not in cache:
            if not path.is_dir():
                raise RlvrLinearError(f"{path}: checkpoint not found (the study's runs are needed to re-score)")
            cache[str(path)] = np.asarray(scorer(str(path), task, problems), dtype=np.float64)
        return cache[str(path)]

    responses = cfg["prompts_per_step"] * cfg["samples_per_prompt"]
    cases = []
    bar = tqdm(total=len(seeds) * len(rows), desc="study cases", disable=None if progress else True)
    with tempfile.TemporaryDirectory(prefix="study_cases_") as tmp:
        for seed in seeds:
            run = study / "runs" / f"rl_seed{seed}"
            for r in rows:
                t0, t1, target = int(r["t0"]), int(r["t1"]), int(r["target"])
                alpha = (target - t0) / (t1 - t0)
                out = Path(tmp) / f"seed{seed}_t{t0}-{t1}_to{target}"
                extrapolate_two_point(ckpt(run, t0), ckpt(run, t1), out, alpha=alpha, overwrite=True, progress=False,
                                      metadata={"study": "weight_extrapolation", "seed": seed})  # fmt: skip
                x = np.asarray(scorer(str(out), task, problems), dtype=np.float64)
                a1, real = score(ckpt(run, t1)), score(ckpt(run, target))
                cases.append(
                    {
                        "point": f"study lr{cfg['learning_rate']:g}_r{responses}",
                        "run": str(run),
                        "seed": seed,
                        "kind": "study",
                        "lr": cfg["learning_rate"],
                        "responses": responses,
                        "horizon": cfg["rl_steps"],
                        "t0": t0,
                        "t1": t1,
                        "target": float(target),
                        "alpha": round(alpha, 4),
                        "predictor": "two_point",
                        "space": "weight",
                        "n_problems": len(problems),
                        "acc_t1": round(float(a1.mean()), 4),
                        "acc_x": round(float(x.mean()), 4),
                        "acc_real_target": round(float(real.mean()), 4),
                        "real_step": target,
                        "real_exact": True,
                        "gain_vs_t1": {"greedy": gain_ci(a1, x), "avg_k": None},
                        "gain_vs_real": {"greedy": gain_ci(real, x), "avg_k": None},
                    }
                )
                bar.update()
    bar.close()
    return cases


def check_against_study(cases: list[dict], study: str | Path) -> dict:
    """Largest |re-scored seed mean − the stage's| over the rows, for the extrapolated models, the t1 checkpoints
    and the real checkpoints at the targets (0 when the re-scoring reproduces the stage)."""
    _, res = _read(Path(study))
    worst = {"extrapolated": 0.0, "t1_checkpoint": 0.0, "real_rl": 0.0}
    fields = {"extrapolated": "acc_x", "t1_checkpoint": "acc_t1", "real_rl": "acc_real_target"}
    for r in res["numbers"]["rows"]:
        mine = [c for c in cases if (c["t0"], c["t1"], c["target"]) == (r["t0"], r["t1"], float(r["target"]))]
        if not mine:
            raise RlvrLinearError(f"no case for the study's row t0={r['t0']} t1={r['t1']} target={r['target']}")
        for k, f in fields.items():
            worst[k] = max(worst[k], abs(float(np.mean([c[f] for c in mine])) - r[k]["mean"]))
    return worst


def write_cases(cases: list[dict], path: str | Path) -> Path:
    return write_text(path, "".join(json.dumps(c) + "\n" for c in cases))
