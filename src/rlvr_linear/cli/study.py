"""``rlvr-linear study``: reproduce the paper's findings in miniature and write OUT/report.html + OUT/results.json."""

from __future__ import annotations


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
    p.add_argument("--model", default="tiny", help="tiny | smollm2-135m | an HF model directory")
    p.add_argument("--stages", default=None, help="comma-separated subset of: baseline,linearity,robustness,"
                   "mechanism,weight_extrapolation,logit_extrapolation,regrounding,report (default: all); regime: the "
                   "regime map (opt-in, hours; docs/regime.md)")  # fmt: skip
    p.add_argument("--seeds", default=None, help="comma-separated RL seeds (overrides the mode's)")
    p.add_argument("--steps", type=int, default=None, help="gradient steps per run (overrides the mode's)")
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
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
    p.set_defaults(func=run)


def run(args) -> int:
    from ..study import StudyConfig, parse_stages, run_study

    over = {"rl_steps": args.steps, "save_every": args.save_every, "threads": args.threads}
    if args.seeds:
        from ..errors import RlvrLinearError

        try:
            over["seeds"] = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise RlvrLinearError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    stages = parse_stages(args.stages)
    if args.render_only and stages != ["regime"]:
        from ..errors import RlvrLinearError

        raise RlvrLinearError("--render-only goes with --stages regime")
    if stages == ["regime"]:
        from ..regime import run_regime

        reg = run_regime(args.out, quick=args.mode == "quick", render_only=args.render_only,
                         progress=not args.no_progress)  # fmt: skip
        print(f"regime map: {reg.get('summary', 'nothing rendered yet')}")
        return 0
    cfg = StudyConfig.for_mode(args.mode, model=args.model, **over)
    results = run_study(cfg, args.out, stages=stages, progress=not args.no_progress)
    print("summary:")
    for name, sec in results.items():
        if name != "meta":
            print(f"  {name:<21} reproduced: {sec['reproduced']:<7} {sec['verdict']}")
    return 0
