"""``rlvr-linear generate``: decode with one model or with logit extrapolation over several checkpoints."""

from __future__ import annotations

import argparse
import json
import os

_DTYPES = ("float32", "bfloat16", "float16")


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="decode with one model, or with extrapolated logits l = l_a + alpha (l_b - l_a) / sum_i w_i l_i",
        description=(
            "Decode prompts (or task problems) with the mixed next-token logits sum_i w_i l_i of K checkpoints. "
            "Two checkpoints: --alpha X gives l_a + X (l_b - l_a); --target-step T uses X = (T - a)/(b - a) with "
            "steps from --steps a,b or from the directory names. One model: plain decoding."
        ),
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="HF model directories (checkpoint a, then b, ...)")
    mix = p.add_mutually_exclusive_group()
    mix.add_argument("--alpha", type=float, help="paper alpha: 0 = model a, 1 = model b, > 1 extrapolates")
    mix.add_argument("--target-step", type=float, help="extrapolate the two checkpoints to this training step")
    mix.add_argument("--weights", type=_floats, help="comma-separated weight per model (any K)")
    p.add_argument("--steps", type=_ints, help="steps a,b of the two checkpoints (default: from the dir names)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--task", help="task name (arithmetic, rg:<dataset>, or a .jsonl/.parquet file)")
    p.add_argument("--n-problems", type=int, default=8, help="problems drawn from --task (default 8)")
    p.add_argument("--split", default="test", help="task split (default test)")
    p.add_argument("--problem-seed", type=int, default=0, help="seed that draws the task problems (default 0)")
    p.add_argument("--n", type=int, default=1, help="completions per prompt (default 1)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores temperature/top-p/top-k)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--stop", action="append", help="stop string (repeatable); completions are cut before it")
    p.add_argument("--dtype", choices=_DTYPES, default="float32", help="model dtype (float32 on CPU)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin / verl .pt pickles (weights_only=True)")
    p.add_argument("-o", "--output", help="write one JSON line per completion here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file of completions")
    p.set_defaults(func=run)


def _completions_file(path) -> bool:
    """Whether ``path`` is a completions file this command wrote (JSON lines with a ``completion``), or empty."""
    try:
        with open(path) as f:
            first = f.readline()
        return not first or "completion" in json.loads(first)
    except (OSError, ValueError, TypeError):
        return False


def run(args: argparse.Namespace) -> int:
    if not args.output:
        return _run(args)
    from ..io.lock import locked
    from ..io.outputs import check_output

    with locked(args.output):  # one writer; --overwrite replaces only a completions file, never an input
        inputs = [*args.models, *([args.task] if args.task and os.path.isfile(args.task) else [])]
        check_output(args.output, args.overwrite, kind="completions", inputs=inputs, ours=_completions_file)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.evaluation import SAMPLING_RULES
    from ..extrapolation.logit_scoring import generate_records, resolve_weights
    from ..extrapolation.logits import ExtrapolatedGenerator
    from ..io import write_text
    from ..io.validate import check_fields

    check_fields(args, SAMPLING_RULES)
    weights = resolve_weights(
        args.models, alpha=args.alpha, target_step=args.target_step, steps=args.steps, weights=args.weights
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = ExtrapolatedGenerator.load(
        args.models, weights, dtype=getattr(torch, args.dtype), device=device, allow_pickle=args.allow_pickle
    )
    gen.progress = True
    alpha = f" (alpha = {gen.alpha:g})" if gen.alpha is not None else ""
    print(f"weights: {', '.join(f'{w:g}' for w in weights)}{alpha}")
    recs = generate_records(
        gen,
        prompts=args.prompt,
        task=args.task,
        n_problems=args.n_problems,
        split=args.split,
        problem_seed=args.problem_seed,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        seed=args.seed,
        batch_size=args.batch_size,
        stop=args.stop,
    )
    last = None
    for r in recs:
        if r["prompt_index"] != last:
            print(f"### prompt {r['prompt_index']}: {r['prompt']!r}")
            last = r["prompt_index"]
        mark = f" [{'correct' if r['correct'] else 'wrong'}]" if "correct" in r else ""
        print(f"[{r['sample']}]{mark} {r['completion']!r}")
    if recs and "correct" in recs[0]:
        acc = sum(r["correct"] for r in recs) / len(recs)
        print(f"accuracy: {acc:.4f} ({len(recs)} completions)")
    if args.output:
        write_text(args.output, "".join(json.dumps(r) + "\n" for r in recs))
        print(f"wrote {len(recs)} completions to {args.output}")
    return 0
