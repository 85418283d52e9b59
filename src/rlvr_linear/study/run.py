"""The study's driver: the stage list and order, ``--stages`` parsing, finished-stage reuse, the protocol check
and :func:`run_study` (stages in order, then ``results.json`` and the report)."""

from __future__ import annotations

import platform
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from ..errors import RlvrLinearError
from ..io import jsonable, read_json, write_json
from ..reporting.report import SECTIONS
from ..runtime.threads import use as threads_use
from .baseline import stage_baseline
from .common import _Ctx, same_config
from .config import StudyConfig
from .linearity import stage_linearity
from .logit_extrapolation import stage_logit_extrapolation
from .mechanism import TITLE as MECHANISM_TITLE
from .mechanism import stage_mechanism
from .plan import print_plan
from .regrounding import TITLE as REGROUNDING_TITLE
from .regrounding import stage_regrounding
from .robustness import TITLE as ROBUSTNESS_TITLE
from .robustness import stage_robustness
from .weight_extrapolation import stage_weight_extrapolation

#: one stage per report section, then the report itself
STAGES = [*SECTIONS, "report"]
#: stages that run only when named (``--stages regime``: the regime map, hours of compute; the command line runs it
#: with :func:`rlvr_linear.regime.run_regime`, :func:`run_study` refuses it)
OPT_IN_STAGES = ["regime"]
#: stages whose inputs are the baseline RL runs
NEEDS_BASELINE = {"linearity", "robustness", "weight_extrapolation", "logit_extrapolation", "regrounding"}


#: titles of the stages a protocol may leave out (StudyConfig.budget_skips), for their "not run (budget)" result
STAGE_TITLES = {"robustness": ROBUSTNESS_TITLE, "mechanism": MECHANISM_TITLE, "regrounding": REGROUNDING_TITLE}

STAGE_FUNCS = {
    "baseline": stage_baseline,
    "linearity": stage_linearity,
    "robustness": stage_robustness,
    "mechanism": stage_mechanism,
    "weight_extrapolation": stage_weight_extrapolation,
    "logit_extrapolation": stage_logit_extrapolation,
    "regrounding": stage_regrounding,
}


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
    """Pin the protocol in ``OUT/study_config.json``; refuse a different one. A field added to StudyConfig since the
    folder was started counts at its default (so a new option keeps old studies resumable, as ``same_config``)."""
    p = out / "study_config.json"
    cur = jsonable(asdict(cfg))
    if p.exists():
        old = read_json(p)
        if not same_config(old, cfg):
            defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(cfg)}
            filled = {**jsonable(defaults), **old}
            diff = sorted(k for k in set(filled) | set(cur) if filled.get(k) != cur.get(k))
            raise RlvrLinearError(
                f"{out} holds a study with a different protocol (fields {diff}); use a new output folder"
            )
    else:
        write_json(p, cur)


def not_run_result(cfg: StudyConfig, stage: str, reason: str) -> dict:
    """The result of a stage the protocol leaves out for its time budget (``StudyConfig.budget_skips``)."""
    from .paper import PAPER
    from .plan import duration, skipped_cost

    cost = skipped_cost(cfg, stage)
    return {
        "title": STAGE_TITLES[stage],
        "seeds": [],
        "numbers": {"not_run": "budget", "reason": reason, "one_run_estimate_s": cost},
        "paper": PAPER[stage],
        "reproduced": "n/a",
        "verdict": f"not run (budget): this protocol has {reason}; one such run costs {duration(cost)} here.",
        "figures": [],
    }


def run_study(cfg: StudyConfig, out: str | Path, stages: list[str] | None = None, progress: bool = True,
              plan_stages: list[str] | None = None) -> dict:  # fmt: skip
    """Run ``stages`` (default: the protocol's, ``cfg.default_stages()``) into ``out``; finished stages are skipped.
    Returns the results object.

    Stages that need the baseline runs trigger the ``baseline`` stage first if it has not finished. ``plan_stages``:
    the stages the printed plan shows (default: those run here; the command line adds the ``trajectory`` stage it
    runs after them). The regime map
    and the ``trajectory`` stage sit above the study (they reuse its helpers): the command line runs them
    (:func:`rlvr_linear.regime.run_regime`, :func:`rlvr_linear.regime.run_trajectory_stage`) and the report reads
    their results.
    """
    out = Path(out)
    stages = list(stages or cfg.default_stages())
    if "regime" in stages:
        raise RlvrLinearError(
            "run_study does not run the regime map: call rlvr_linear.regime.run_regime (what `rlvr-linear study "
            "--stages regime` does; beside other stages it writes OUT/regime)"
        )
    if "trajectory" in stages:
        raise RlvrLinearError(
            "run_study does not run the trajectory stage: call rlvr_linear.regime.run_trajectory_stage after the "
            "baseline (what `rlvr-linear study` does)"
        )
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, cfg)
    skips = cfg.budget_skips()
    needs = [s for s in stages if s in NEEDS_BASELINE and s not in skips]
    if needs and "baseline" not in stages and not stage_done(out, "baseline"):
        stages = ["baseline", *stages]
    stages = [s for s in STAGES if s in stages]
    if cfg.threads:
        threads_use(cfg.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    shown = [s for s in STAGES if s in (plan_stages or stages)]
    print_plan(cfg, shown, {s for s in shown if s != "report" and stage_done(out, s)})
    done = {s for s in stages if s != "report" and stage_done(out, s)}
    ctx = _Ctx(cfg, out, progress)
    timings = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
    for st in stages:
        if st == "report":
            continue
        if st in done:
            print(f"[{st}] finished earlier: reusing {out / st / 'result.json'}")
            continue
        t0 = time.time()
        if st in skips:
            res = not_run_result(cfg, st, skips[st])
        else:
            print(f"[{st}] running")
            res = STAGE_FUNCS[st](ctx)
        res["wall_s"] = round(time.time() - t0, 1)
        write_json(ctx.stage_dir(st) / "result.json", jsonable(res))
        timings[st] = res["wall_s"]
        write_json(out / "timings.json", timings)
        if st in skips:
            print(f"[{st}] {res['verdict']}")
        else:
            print(f"[{st}] done in {res['wall_s']:.0f} s: {res['reproduced']} - {res['verdict']}")
    from ..reporting.report import collect_results, write_report

    results = collect_results(out, cfg, machine=machine_info(), timings=timings)
    if "report" in stages:
        paths = write_report(results, out)
        print(f"[report] {paths['html']} and {paths['json']}")
    return results
