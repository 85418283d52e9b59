"""``rlvr-linear extrapolate``: weight-space extrapolation (``weights``) and target sweeps (``sweep``).

Examples::

    rlvr-linear extrapolate weights --base run/step_000000 --second run/step_001400 --target-step 2000 -o out/e2000
    rlvr-linear extrapolate weights --base A --second B --alpha 1.5 -o out/a1.5
    rlvr-linear extrapolate weights --run run --fit last-4 --rank 1 --target-step 3000 -o out/relex3000
    rlvr-linear extrapolate sweep --base A --second B --targets 200,300,400 --task arithmetic -o out/sweep
"""

from __future__ import annotations

import argparse

from ..errors import RlvrLinearError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _fit(text: str) -> str:
    if text == "all" or (text.startswith("last-") and text[5:].isdigit()):
        return text
    if text.isdigit():
        return f"last-{text}"
    raise argparse.ArgumentTypeError(f"expected 'all' or 'last-K', got {text!r}")


def _add_common(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("inputs (two checkpoints, or a run to fit)")
    src.add_argument("--base", metavar="A", help="older checkpoint directory (W_a)")
    src.add_argument(
        "--second", metavar="B", help="newer checkpoint directory (W_b); config/tokenizer/norms come from it"
    )
    src.add_argument("--base-step", type=float, help="step of A (default: from its name, e.g. step_100)")
    src.add_argument("--second-step", type=float, help="step of B (default: from its name)")
    src.add_argument("--run", nargs="+", metavar="RUN", help="run directory (or STEP=PATH list) to fit over")
    src.add_argument("--fit", type=_fit, help="checkpoints to fit with --run: all (default) or last-K")
    src.add_argument(
        "--rank", type=int, nargs="?", const=1, help="RELEX-style rank-R trajectory fit (default R=1 if no value)"
    )
    how = p.add_argument_group("output")
    how.add_argument(
        "--norms", choices=["copy", "extrapolate"], default="copy", help="norm parameters (default: copy from B)"
    )
    how.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="output dtype (default: the checkpoint's)")
    how.add_argument("--max-shard-size", default="512MB", help="output shard size, e.g. 512MB, 2GB (default 512MB)")
    how.add_argument("--force", action="store_true", help="allow alpha <= 0 or alpha > 20")
    how.add_argument(
        "--overwrite", action="store_true", help="replace OUT if an earlier output of this tool (never a checkpoint)"
    )
    how.add_argument("--allow-pickle", action="store_true", help="read .bin / verl .pt pickles (weights_only=True)")
    how.add_argument("-o", "--out", required=True, help="output directory")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extrapolate", help="weight-space extrapolation of checkpoints", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="extrapolate_command", metavar="{weights,sweep}")

    w = sub.add_parser(
        "weights",
        help="write W = W_a + alpha (W_b - W_a) (or a least-squares / rank-R fit) as an HF model",
        description="Write one extrapolated model: W = W_a + alpha (W_b - W_a), alpha = (T - a)/(b - a); "
        "or, with --run, a per-parameter least-squares line (--fit) or a rank-R trajectory (--rank).",
    )
    _add_common(w)
    tgt = w.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--target-step", type=float, help="step T to predict")
    tgt.add_argument("--alpha", type=float, help="extrapolation coefficient (1 = B, 0 = A)")
    w.set_defaults(func=cmd_weights)

    s = sub.add_parser(
        "sweep",
        help="extrapolate to several targets, evaluate each, keep the best (paper Fig. 5)",
        description="Extrapolate to several targets (or alphas), evaluate each on the validation split, "
        "print a table, plot accuracy vs target (OUT/sweep.png) and keep the best model as OUT/best/.",
    )
    _add_common(s)
    tg = s.add_mutually_exclusive_group(required=True)
    tg.add_argument("--targets", type=_floats, help="comma-separated target steps, e.g. 200,300,400")
    tg.add_argument("--alphas", type=_floats, help="comma-separated alphas, e.g. 1.5,2,3")
    s.add_argument("--task", required=True, help="task to evaluate on (e.g. arithmetic)")
    s.add_argument("--n-problems", type=int, default=200, help="validation problems per candidate (default 200)")
    s.add_argument(
        "--k", type=int, default=0, help="sampled completions per problem for avg@k (default 0: greedy only)"
    )
    s.add_argument("--keep-all", action="store_true", help="keep every candidate as OUT/target_<T>/")
    s.add_argument("--no-reference", action="store_true", help="do not evaluate B itself as a reference")
    s.set_defaults(func=cmd_sweep)


def _check_inputs(args) -> None:
    if args.run:
        if args.base or args.second:
            raise RlvrLinearError("give either --base/--second or --run, not both")
    else:
        if not (args.base and args.second):
            raise RlvrLinearError("give --base and --second (two checkpoints), or --run RUN to fit a trajectory")
        if args.fit or args.rank is not None:
            raise RlvrLinearError("--fit and --rank need --run (a trajectory of checkpoints)")


def cmd_weights(args) -> int:
    from ..extrapolation.params import parse_size
    from ..extrapolation.rules import alpha_from_steps, target_from_alpha
    from ..extrapolation.weights import extrapolate_fit, extrapolate_two_point, select_checkpoints
    from ..io import read_json
    from ..io.checkpoints import discover, step_of_path

    _check_inputs(args)
    common = dict(
        norms=args.norms,
        dtype=args.dtype,
        overwrite=args.overwrite,
        force=args.force,
        max_shard_bytes=parse_size(args.max_shard_size),
        allow_pickle=args.allow_pickle,
    )
    if args.run:
        traj = discover(args.run, allow_pickle=args.allow_pickle)
        fit = args.fit or "all"
        target = args.target_step
        if target is None:
            sel = select_checkpoints(traj, fit)
            target = target_from_alpha(sel.steps[0], sel.steps[-1], args.alpha)
        out = extrapolate_fit(traj, args.out, target_step=target, fit=fit, rank=args.rank, **common)
    else:
        a = args.base_step if args.base_step is not None else step_of_path(args.base)
        b = args.second_step if args.second_step is not None else step_of_path(args.second)
        alpha = args.alpha
        if alpha is None:
            if a is None or b is None:
                which = " and ".join(n for n, v in (("--base-step", a), ("--second-step", b)) if v is None)
                raise RlvrLinearError(
                    f"cannot infer the step of {'A' if a is None else 'B'} from its directory name "
                    f"(step_N, checkpoint-N, global_step_N); pass {which}, or use --alpha"
                )
            alpha = alpha_from_steps(a, b, args.target_step)
        out = extrapolate_two_point(args.base, args.second, args.out, alpha=alpha, base_step=a, second_step=b, **common)
    meta = read_json(out / "extrapolation.json")  # what was written, as the API recorded it
    if meta["method"] == "two-point":
        desc = f"two-point, alpha={meta['alpha']:.4g}"
        if meta["target_step"] is not None:
            desc += f", target step {meta['target_step']:g}"
    else:
        desc = f"{meta['method']} fit ({meta['fit']}), target step {meta['target_step']:g}"
    counts = ", ".join(f"{v} {k}" for k, v in sorted(meta["counts"].items()))
    print(f"wrote {out} ({desc}): {counts} tensors")
    return 0


def cmd_sweep(args) -> int:
    from ..extrapolation.params import parse_size
    from ..extrapolation.sweep import sweep

    _check_inputs(args)
    result = sweep(
        args.out,
        task=args.task,
        base=args.base,
        second=args.second,
        run=args.run,
        fit=args.fit or "all",
        rank=args.rank,
        targets=args.targets,
        alphas=args.alphas,
        base_step=args.base_step,
        second_step=args.second_step,
        n_problems=args.n_problems,
        k=args.k,
        keep_all=args.keep_all,
        reference=not args.no_reference,
        norms=args.norms,
        dtype=args.dtype,
        overwrite=args.overwrite,
        force=args.force,
        max_shard_bytes=parse_size(args.max_shard_size),
        allow_pickle=args.allow_pickle,
    )
    print(result.table())
    print(f"wrote {args.out}/sweep.json and {args.out}/sweep.png")
    return 0
