"""``rlvr-linear advise``: backtest linear predictors on a run and say how far a jump is safe."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  rlvr-linear advise runs/tiny -o out/advice                    # weights + the run's validation curve
  rlvr-linear advise runs/tiny --task arithmetic -o out/advice  # + teacher-forced log-probs
  rlvr-linear advise runs/tiny --until 100                      # as if only steps <= 100 existed
  rlvr-linear advise --validate out/regime/cases.jsonl -o out/advisor-validation
  rlvr-linear advise --validate experiments/results/regime_cases.jsonl \
      experiments/results/advisor/study_cases.jsonl --rule calibrated -o out/advisor-calibrated
"""


def register(sub) -> None:
    p = sub.add_parser(
        "advise",
        help="is the run in the linear regime, and how far can it jump? (backtested h*, a recommendation)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", nargs="*", help="run directory (ours, TRL, verl) or STEP=PATH pairs")
    p.add_argument("--task", default=None, help="also backtest teacher-forced log-probs of probes sampled for TASK")
    p.add_argument("--probes", default=None, help="probe file (JSONL prompt/response) instead of --task")
    p.add_argument("--until", type=int, default=None, help="use only checkpoints with step <= UNTIL")
    p.add_argument("--base-step", type=int, default=None, help="two-point / rank-1 base (default the first)")
    p.add_argument("--predictors", default="two_point,lsq_last_k,rank1", help="comma-separated (two_point, lsq, rank1)")
    p.add_argument("-k", type=int, default=4, help="checkpoints of the least-squares fit (default 4)")
    p.add_argument(
        "--validate", nargs="+", default=None, metavar="CASES.jsonl", help="score the advisor on labelled cases"
    )
    p.add_argument(
        "--rule",
        default="h_star",
        choices=["h_star", "calibrated"],
        help="--validate: safe when the jump <= h* (bound < 1) | <= h*_c, c fitted leaving one run out (held out)",
    )
    p.add_argument(
        "--label", default="mean", choices=["mean", "ci"], help="--validate: safe = gain mean >= 0 | CI hi >= 0"
    )
    p.add_argument("--metric", default="greedy", help="--validate: gain metric in the cases (greedy, avg_k)")
    p.add_argument("-o", "--out", default=None, help="output directory (advice.json/.png/.txt)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.out:
        return _run(args)
    from ..io.atomic import output_folder

    with output_folder(args.out, "advice"):  # locked while written; removed again if the command fails early
        return _run(args)


def _run(args) -> int:
    from ..errors import RlvrLinearError

    if args.validate:
        from ..advisor.validate import validate

        res = validate(args.validate, args.out, metric=args.metric, label=args.label, rule=args.rule)
        s = res["scores"]

        def two(x):
            return "n/a" if x is None else f"{x:.2f}"

        def pr(x):
            return f"precision {two(x['precision'])}, recall {two(x['recall'])}"

        held = " (held out: leave one run out)" if args.rule == "calibrated" else ""
        right = f"{s['correct_calls']}/{s['cases']} calls right"
        print(f"{s['cases']} cases, {s['labelled_safe']} labelled safe ({args.label}), {s['called_safe']} called safe"
              f"{held}: {pr(s)} (base rate {s['base_rate']:.2f}); {right}")  # fmt: skip
        other = "ci" if args.label == "mean" else "mean"
        print(f"  same calls on label {other}: {pr(res['scores_other_label'])}")
        if any(res["skipped"].values()):
            print(f"  skipped: {res['skipped']['logit']} logit-space cases, {res['skipped']['no_gain']} without a gain")
        for p, ps in res["per_predictor"].items():
            print(f"  {p}: {ps['cases']} cases, {pr(ps)}")
        if len(res["per_source"]) > 1:
            for src, ps in res["per_source"].items():
                print(f"  {src}: {ps['cases']} cases, {pr(ps)}")
        if args.rule == "calibrated":
            cal = res["calibration"]
            bounds = ", ".join(f"{f['bound']:.3g}" for f in cal["folds"])
            print(f"  thresholds fitted per held-out run: {bounds}; on all cases: {cal['fit_all']['bound']:.3g} "
                  f"(in sample: {pr(cal['fit_all_in_sample']['scores'])})")  # fmt: skip
            bp = cal["by_predictor"]["scores"]
            print(f"  one threshold per predictor (held out): {pr(bp)}")
            h = res["h_star_rule"]["scores"]
            print(f"  h* rule (bound < 1) on the same cases: {pr(h)}")
        if args.out:
            print(f"written to {args.out}")
        return 0
    if not args.run:
        raise RlvrLinearError("give a run directory (or STEP=PATH pairs), or --validate CASES.jsonl")
    from ..advisor import advise

    adv = advise(
        args.run if len(args.run) > 1 else args.run[0],
        task=args.task,
        probes=args.probes,
        predictors=[p.strip() for p in args.predictors.split(",") if p.strip()],
        until=args.until,
        base_step=args.base_step,
        k=args.k,
        progress=True,
    )
    print(adv.summary_text())
    if args.out:
        adv.save(args.out)
        print(f"written to {args.out}")
    return 0
