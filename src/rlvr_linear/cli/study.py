"""``rlvr-linear study``: reproduce the paper's findings in miniature and write OUT/report.html + OUT/results.json.

Every :class:`~rlvr_linear.study.StudyConfig` field but ``mode`` (``--quick`` / ``--full``) is a flag, generated
from the dataclass (lists as comma-separated values); ``--steps`` is kept as an alias of ``--rl-steps``. A flag
overrides the mode's value; the defaults shown are the quick mode's.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RlvrLinearError
from ..study import StudyConfig
from ._dataclass_args import add_dataclass_arguments, overrides

#: the options of ``study`` that are not StudyConfig fields (``mode`` is set by --quick / --full)
EXTRA_OPTIONS = ("out", "stages", "render_only", "no_progress", "mode")

_EXTRA = {
    "model": {"help": "tiny | smollm2-135m | an HF model directory (default: tiny)"},
    "seeds": {"help": "comma-separated RL seeds (overrides the mode's)"},
    "rl_steps": {"help": "gradient steps per run (overrides the mode's)"},
    "threads": {"help": "torch CPU threads"},
    # each item holds a comma itself: space-separated
    "reground_specs": {
        "type": str,
        "nargs": "+",
        "metavar": "M,N",
        "help": '"M,N" grid, e.g. 5,5 1,5 (default: 5,5 1,5)',
    },
    "reground_optimizer": {"choices": ["keep", "reset"]},
}


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run the whole study (RL/SFT runs, linearity, robustness, mechanism, extrapolation, re-grounding, report)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="<= 5 min on 2 CPU cores")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="more seeds and steps")
    p.set_defaults(mode="default")
    p.add_argument("-o", "--out", required=True, help="output folder (a rerun skips finished stages)")
    p.add_argument("--stages", default=None, help="comma-separated subset of: baseline,trajectory,linearity,"
                   "robustness,mechanism,weight_extrapolation,logit_extrapolation,regrounding,report (default: the "
                   "protocol's: all but trajectory for the tiny model; baseline,trajectory,report and the "
                   "budget-skipped stages for a real model); regime: the regime map (opt-in, hours; "
                   "docs/regime.md)")  # fmt: skip
    p.add_argument(
        "--render-only",
        action="store_true",
        help="with --stages regime: re-render the map and its figures from the cache, without training",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the study's progress bars (the RL trainer's bar stays)",
    )
    g = p.add_argument_group("protocol (StudyConfig fields; each overrides the mode's value)")
    add_dataclass_arguments(g, StudyConfig, aliases={"rl_steps": ["--steps"]}, extra=_EXTRA, skip={"mode"})
    p.set_defaults(func=run)


def config_from_args(args) -> StudyConfig:
    """The mode's protocol with every flag the user set."""
    over = overrides(args, StudyConfig)
    over.pop("mode", None)
    return StudyConfig.for_mode(args.mode, model=over.pop("model", "tiny"), **over)


def run(args) -> int:
    if not args.out:
        return _run(args)
    from ..io.atomic import output_folder

    with output_folder(args.out, "study"):  # locked while written; removed again if the command fails early
        return _run(args)


def _run(args) -> int:
    from ..study import parse_stages, run_study

    stages = parse_stages(args.stages) if args.stages else None
    if args.render_only and stages != ["regime"]:
        raise RlvrLinearError("--render-only goes with --stages regime")
    if stages == ["regime"]:
        from ..regime import run_regime

        reg = run_regime(args.out, quick=args.mode == "quick", render_only=args.render_only,
                         progress=not args.no_progress)  # fmt: skip
        print(f"regime map: {reg.get('summary', 'nothing rendered yet')}")
        return 0
    cfg = config_from_args(args)
    stages = stages or cfg.default_stages()
    if "regime" in stages:  # its own protocol (rlvr_linear.regime.grid), in OUT/regime, before the other stages
        from ..regime import run_regime

        run_regime(Path(args.out) / "regime", quick=cfg.mode == "quick", progress=not args.no_progress)
        stages = [s for s in stages if s != "regime"]
    if "trajectory" in stages:  # sits above the study: after the study's stages that feed it, before the report
        from ..regime import run_trajectory_stage

        if not cfg.trajectory_problems:
            raise RlvrLinearError("the trajectory stage needs test problems: --trajectory-problems N (e.g. 500)")
        before = [s for s in stages if s not in ("trajectory", "report")] or ["baseline"]
        run_study(cfg, args.out, stages=before, progress=not args.no_progress, plan_stages=stages)
        print("[trajectory] running")
        res = run_trajectory_stage(cfg, args.out, progress=not args.no_progress)
        print(f"[trajectory] done in {res['wall_s']:.0f} s: {res['reproduced']} - {res['verdict']}")
        stages = [s for s in stages if s == "report"]
    results = run_study(cfg, args.out, stages=stages, progress=not args.no_progress) if stages else None
    if results is None:
        return 0
    print("summary:")
    for name, sec in results.items():
        if name != "meta":
            print(f"  {name:<21} reproduced: {sec['reproduced']:<7} {sec['verdict']}")
    return 0
