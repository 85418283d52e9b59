"""``rlvr-linear analyze``: how linear is a training trajectory (weights, log-probs, activations, forecast).

Examples::

    rlvr-linear analyze weights runs/grpo -o out/weights            # paper sampling (0.1% per tensor)
    rlvr-linear analyze weights runs/grpo --all -o out/weights_all  # every parameter, streamed in chunks
    rlvr-linear analyze weights 0=base 100=ckpt100 200=ckpt200 -o out/w
    rlvr-linear analyze logprobs runs/grpo --task arithmetic -o out/logprobs
    rlvr-linear analyze logprobs runs/grpo --probes probes.jsonl -o out/logprobs
    rlvr-linear analyze activations runs/grpo --task arithmetic -o out/act
    rlvr-linear analyze forecast runs/grpo --fit-until 200 -o out/forecast [--task arithmetic]
    rlvr-linear analyze weights runs/grpo/sketch -o out/w            # a trajectory sketch: the same numbers
    rlvr-linear analyze logprobs runs/grpo/sketch -o out/lp          # (its own probes)

RUN is a run directory (ours, TRL ``checkpoint-N/``, verl ``global_step_N/actor/huggingface/``), a list of
``STEP=PATH``, or, for weights and logprobs, a trajectory sketch (``rlvr-linear sketch``). Every figure comes with its
null baseline (increments with random signs).
"""

from __future__ import annotations

import argparse
import inspect

import torch

from ..errors import RlvrLinearError
from ..linearity import analyze_activations, analyze_logprobs, analyze_weights, forecast, make_probes

#: the --dtype choices
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _default(func, name: str):
    """The default of ``func``'s parameter ``name``: the flags take their defaults from the API, not a copy."""
    return inspect.signature(func).parameters[name].default


_SEED = _default(analyze_weights, "seed")
_BATCH = _default(analyze_logprobs, "batch_size")
_DTYPE = next(k for k, v in DTYPES.items() if v == _default(analyze_logprobs, "dtype"))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="+", metavar="RUN", help="run directory, or STEP=PATH ...")
    p.add_argument("-o", "--out", required=True, help="output directory (written atomically)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace OUT if an earlier output of this tool (never an input)"
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickled weights: .bin files, verl FSDP shards (weights_only=True)",
    )
    p.add_argument(
        "--seed", type=int, default=_SEED, help=f"sampling / null-baseline seed (default {_SEED}, as the paper)"
    )


def add_probe_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("probes (prompt/response pairs scored by every checkpoint)")
    src = g.add_mutually_exclusive_group(required=required)
    src.add_argument("--task", help="sample probes from the FIRST checkpoint on this task's prompts")
    src.add_argument("--probes", metavar="FILE", help="JSONL with 'prompt' and 'response' fields")
    d = {k: _default(make_probes, k) for k in ("split", "n_prompts", "k", "temperature", "seed")}
    g.add_argument("--split", default=d["split"], help=f"task split for the prompts (default {d['split']})")
    g.add_argument(
        "--n-prompts", type=int, default=d["n_prompts"], help=f"prompts to sample probes for (default {d['n_prompts']})"
    )
    g.add_argument("--k", type=int, default=d["k"], help=f"responses per prompt (default {d['k']})")
    g.add_argument("--max-new-tokens", type=int, help="response length cap (default: the task's)")
    g.add_argument(
        "--temperature", type=float, default=d["temperature"], help=f"sampling temperature (default {d['temperature']})"
    )
    g.add_argument(
        "--probe-seed",
        type=int,
        default=d["seed"],
        help=f"seed for the probe prompts and sampling (default {d['seed']})",
    )
    g.add_argument("--batch-size", type=int, default=_BATCH, help=f"sequences per forward pass (default {_BATCH})")
    g.add_argument("--device", help="cpu / cuda (default: cuda if available)")
    g.add_argument("--dtype", choices=sorted(DTYPES), default=_DTYPE, help=f"compute dtype (default {_DTYPE})")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="trajectory linearity: R² of weights, log-probs, activations; forecasts",
        description="How linear is a training trajectory? R² of weights, teacher-forced log-probs and "
        "activations vs step, each next to its null baseline; forecasts of later checkpoints.",
        epilog="examples:\n" + __doc__.split("Examples::\n\n")[1].split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="analyze_command", metavar="{weights,logprobs,activations,forecast}")

    w = sub.add_parser("weights", help="per-parameter R² of weight vs step (+ null baseline)")
    _common(w)
    w.add_argument("--all", action="store_true", help="every parameter instead of the paper's 0.1%% sample")
    d = {k: _default(analyze_weights, k) for k in ("fraction", "min_samples", "min_unique", "chunk")}
    w.add_argument(
        "--fraction", type=float, default=d["fraction"], help=f"share sampled per tensor (default {d['fraction']})"
    )
    w.add_argument(
        "--min-samples",
        type=int,
        default=d["min_samples"],
        help=f"minimum samples per tensor (default {d['min_samples']})",
    )
    w.add_argument(
        "--min-abs-change", type=float, help="filter 1 threshold (default: 1e-4 for bf16, scaled by eps for others)"
    )
    w.add_argument(
        "--min-unique",
        type=int,
        default=d["min_unique"],
        help=f"filter 2: distinct values needed (default {d['min_unique']})",
    )
    w.add_argument(
        "--chunk", type=int, default=d["chunk"], help=f"elements per chunk with --all (default {d['chunk']})"
    )
    w.add_argument(
        "--workers",
        type=int,
        help="processes sharing the work (default: 2 with --all from 50M parameters on if 2 CPUs, else 1)",
    )
    w.add_argument(
        "--no-check-finite",
        action="store_true",
        help="paper mode: look for NaN / Inf in the sampled values only, not in every element read "
        "(the full check costs about 5-10%%)",
    )
    w.set_defaults(func=cmd_weights)

    lp = sub.add_parser("logprobs", help="per-token R² of teacher-forced log-probs (+ null baseline)")
    _common(lp)
    add_probe_args(lp, required=False)  # (a trajectory sketch carries its probes)
    d = {k: _default(analyze_logprobs, k) for k in ("min_change", "max_positions")}
    lp.add_argument(
        "--min-change",
        type=float,
        default=d["min_change"],
        help=f"eligible if |Δ logp| > this (default {d['min_change']})",
    )
    lp.add_argument(
        "--max-positions",
        type=int,
        default=d["max_positions"],
        help=f"positions sampled (default {d['max_positions']})",
    )
    lp.set_defaults(func=cmd_logprobs)

    act = sub.add_parser("activations", help="R² of residual-stream activations per layer (+ null baseline)")
    _common(act)
    add_probe_args(act, required=True)
    pairs = _default(analyze_activations, "pairs_per_layer")
    act.add_argument("--pairs-per-layer", type=int, default=pairs, help=f"(token, channel) pairs (default {pairs})")
    act.set_defaults(func=cmd_activations)

    fc = sub.add_parser("forecast", help="fit lines up to a step, predict later checkpoints, compare to naive")
    _common(fc)
    fc.add_argument("--fit-until", type=int, required=True, metavar="STEP", help="fit on checkpoints with step <= STEP")
    chunk = _default(forecast, "chunk")
    fc.add_argument("--chunk", type=int, default=chunk, help=f"elements per chunk (default {chunk})")
    add_probe_args(fc, required=False)
    fc.set_defaults(func=cmd_forecast)

    p.set_defaults(func=lambda a: p.print_help() or 1)


def _trajectory(args, sketch_ok: bool = False):
    from ..linearity.sketch import is_sketch, open_run

    if not sketch_ok and is_sketch(args.run):
        raise RlvrLinearError(
            f"{args.run[0]} is a trajectory sketch (a weight sample and log-probs); analyze "
            f"{args.analyze_command} needs the checkpoints"
        )
    return open_run(args.run, allow_pickle=args.allow_pickle)


def _probes(args, traj):
    from ..linearity import read_probes

    if getattr(args, "probes", None):
        return read_probes(args.probes)
    if not getattr(args, "task", None):
        return None
    if args.n_prompts < 1 or args.k < 1:
        raise RlvrLinearError("--n-prompts and --k must be >= 1")
    print(f"sampling {args.n_prompts} x {args.k} probes from step {traj.steps[0]} ({traj.paths[0]})")
    return make_probes(
        traj.paths[0],
        args.task,
        n_prompts=args.n_prompts,
        k=args.k,
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.probe_seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        allow_pickle=args.allow_pickle,
    )


def _inputs(args) -> list[str]:
    """The paths the command reads (RUN or each STEP=PATH, --probes): ``--overwrite`` never replaces them."""
    paths = [r.split("=", 1)[1] if r.split("=", 1)[0].strip().isdigit() else r for r in args.run]
    return paths + ([args.probes] if getattr(args, "probes", None) else [])


def _write(result, args) -> None:
    from ..io import atomic_dir

    with atomic_dir(args.out, overwrite=args.overwrite, kind="analysis", inputs=_inputs(args)) as tmp:
        result.save(tmp)
    print(result.summary_line())
    print(f"wrote {args.out}")


def cmd_weights(args) -> int:
    traj = _trajectory(args, sketch_ok=True)
    res = analyze_weights(
        traj,
        sample="all" if args.all else "paper",
        fraction=args.fraction,
        min_samples=args.min_samples,
        min_abs_change=args.min_abs_change,
        min_unique=args.min_unique,
        seed=args.seed,
        chunk=args.chunk,
        progress=True,
        workers=args.workers,
        check_finite=not args.no_check_finite,
    )
    _write(res, args)
    return 0


def cmd_logprobs(args) -> int:
    from ..linearity.sketch import SketchTrajectory

    traj = _trajectory(args, sketch_ok=True)
    traj.validate(min_checkpoints=3)
    if isinstance(traj, SketchTrajectory):  # its own probes (--probes: must be the same)
        sk = traj.sketch
        if args.task or not sk.has_probes:
            why = "leave out --task" if sk.has_probes else "it was written without probes"
            raise RlvrLinearError(f"{sk.path}: a trajectory sketch holds the log-probs of its own probes; {why}")
        probes = _probes(args, traj) or sk.probes
    else:
        probes = _probes(args, traj)
        if probes is None:
            raise RlvrLinearError("analyze logprobs needs --task or --probes (or a trajectory sketch as RUN)")
    res = analyze_logprobs(
        traj,
        probes,
        batch_size=args.batch_size,
        min_change=args.min_change,
        max_positions=args.max_positions,
        seed=args.seed,
        device=args.device,
        dtype=DTYPES[args.dtype],
        progress=True,
    )
    _write(res, args)
    return 0


def cmd_activations(args) -> int:
    traj = _trajectory(args)
    traj.validate(min_checkpoints=3)
    res = analyze_activations(
        traj,
        _probes(args, traj),
        pairs_per_layer=args.pairs_per_layer,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=DTYPES[args.dtype],
        progress=True,
    )
    _write(res, args)
    return 0


def cmd_forecast(args) -> int:
    from ..linearity import split_fit

    traj = _trajectory(args)
    traj.validate(min_checkpoints=3)
    split_fit(traj.steps, args.fit_until)
    res = forecast(
        traj,
        args.fit_until,
        probes=_probes(args, traj),
        chunk=args.chunk,
        batch_size=args.batch_size,
        device=args.device,
        dtype=DTYPES[args.dtype],
        progress=True,
    )
    _write(res, args)
    return 0
