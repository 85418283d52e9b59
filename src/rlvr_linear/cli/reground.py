"""``rlvr-linear reground``: periodic re-grounding around any trainer command (paper §6)."""

from __future__ import annotations

import argparse

EPILOG = """\
The command is split into words once (quotes group words) and run once per cycle, without a shell, with
{model} = the current model directory, {steps} = M and {out} = a fresh output directory ({cycle} = the 1-based
cycle number is also available) substituted inside the words: a path reaches the trainer as one argument, exactly
as it is. No shell means no $VAR expansion, pipes or redirections; for those, run a shell yourself and pass the
placeholders as its arguments ("$1", "$2", ... in the script):
  --cmd 'bash -c "cd src && python t.py --model \\"$1\\" --out \\"$2\\" > log" _ {model} {out}'
The final checkpoint (step_N/ with manifest.json, checkpoint-N/, global_step_N/actor/huggingface/, or weights
in {out} itself) is extrapolated with alpha = (M+N)/M into WORKDIR/cycle_XX/extrapolated, the next cycle's {model}.
Rerun the same command after a kill to resume; WORKDIR/reground_state.json tracks the progress.

example:
  rlvr-linear reground --model base/ --m 20 --n 100 --cycles 9 -w runs/reground \\
      --cmd 'python my_grpo.py --model_name_or_path {model} --max_steps {steps} --output_dir {out}'
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "reground",
        help="alternate M real training steps (any trainer) with a gradient-free jump of N steps",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cmd", required=True, help="trainer command line using {model}, {steps} and {out}")
    p.add_argument("--model", required=True, help="start model directory (HF weights)")
    p.add_argument("--m", type=int, required=True, help="gradient steps per cycle (M)")
    p.add_argument("--n", type=int, required=True, help="extrapolated steps per cycle (N); alpha = (M+N)/M")
    p.add_argument("--cycles", type=int, required=True, help="number of cycles")
    p.add_argument("-w", "--workdir", required=True, help="working directory (cycle_XX/, state and summary files)")
    p.add_argument("--start-step", type=int, default=0, help="effective step of the start model (default 0)")
    p.add_argument(
        "--norms",
        choices=["copy", "extrapolate"],
        default="copy",
        help="norm layers: take the trained value (copy, default) or extrapolate them too",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan (cycles, commands, steps); run nothing")
    p.add_argument("--restart", action="store_true", help="ignore any saved state, start over")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read trained checkpoints saved as pickles only: .bin, verl FSDP shards (weights_only=True)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.reground_driver import SUMMARY_FILE, reground_driver

    res = reground_driver(
        args.cmd,
        args.model,
        args.m,
        args.n,
        args.cycles,
        args.workdir,
        start_step=args.start_step,
        norms=args.norms,
        dry_run=args.dry_run,
        restart=args.restart,
        allow_pickle=args.allow_pickle,
    )
    if args.dry_run:
        return 0
    print(
        f"re-grounding done: {res['cycles']} cycles, {res['gradient_steps']} gradient steps, "
        f"effective step {res['effective_step']}\nfinal model: {res['final_model']}\n"
        f"summary: {args.workdir.rstrip('/')}/{SUMMARY_FILE}"
    )
    return 0
