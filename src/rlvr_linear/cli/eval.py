"""``rlvr-linear eval``: greedy accuracy, avg@k and pass@k of models, runs, or a logit-extrapolated pair."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate model directories or whole runs on a task")
    p.add_argument("models", nargs="*", help="model directories and/or run directories (every checkpoint)")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--n-problems", type=int, default=200)
    p.add_argument("-k", "--k", type=int, default=8, help="samples per problem (avg@k, pass@1..k)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--no-greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--logit-extrapolate", nargs=2, metavar=("A", "B"), help="decode with l_a + alpha (l_b - l_a)")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--target-step", type=int, default=None)
    p.add_argument("--compare", action="store_true", help="paired bootstrap CI of each model vs the first")
    p.add_argument("-o", "--out", default=None, help="directory for <name>.json / <name>.npz results")
    p.add_argument("--allow-pickle", action="store_true", help="load .bin / verl .pt pickles (weights_only=True)")
    p.set_defaults(func=run)


def _targets(paths: list[str], allow_pickle: bool = False) -> list[tuple[str, Path]]:
    from ..errors import RlvrLinearError
    from ..io.checkpoints import discover, find_model_dir, has_weights

    out = []
    for p in paths:
        if str(p).startswith("hf:/"):  # a Hub trajectory (step revisions / folders), else one checkpoint
            try:
                tr = discover(p)
            except RlvrLinearError:
                out.append((p, find_model_dir(p)))
                continue
            labels = [str(c.path) for c in tr.checkpoints]  # hf://ORG/REPO@REV or .../FOLDER, before fetching
            out.extend(zip(labels, tr.paths))
            continue
        pp = Path(p)
        if not pp.exists():
            raise RlvrLinearError(f"{pp}: no such file or directory")
        if has_weights(pp) or (pp / "actor").exists():
            out.append((pp.name, find_model_dir(pp)))
        else:
            tr = discover(pp, allow_pickle=allow_pickle)
            from ..io.checkpoints import step_dir_name

            out.extend((f"{pp.name}/{step_dir_name(s)}", c) for s, c in zip(tr.steps, tr.paths))
    return out


def run(args) -> int:
    if not args.out:
        return _run(args)
    from ..io.atomic import output_folder

    with output_folder(args.out, "eval"):  # locked while written; removed again if the command fails early
        return _run(args)


def _run(args) -> int:
    from ..errors import RlvrLinearError
    from ..evaluation.evaluation import SAMPLING_RULES, evaluate, paired_bootstrap
    from ..io.validate import check_fields

    check_fields(args, SAMPLING_RULES)

    common = dict(
        task=args.task,
        split=args.split,
        n_problems=args.n_problems,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        greedy=not args.no_greedy,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
        allow_pickle=args.allow_pickle,
    )
    jobs = [(name, path) for name, path in _targets(args.models, args.allow_pickle)]
    if args.logit_extrapolate:
        from ..extrapolation.logit_scoring import resolve_weights
        from ..extrapolation.logits import ExtrapolatedGenerator

        a, b = args.logit_extrapolate
        if (args.alpha is None) == (args.target_step is None):
            raise RlvrLinearError("--logit-extrapolate needs exactly one of --alpha or --target-step")
        weights = resolve_weights([a, b], alpha=args.alpha, target_step=args.target_step)
        gen = ExtrapolatedGenerator.load([a, b], weights, allow_pickle=args.allow_pickle)
        alpha = weights[1]
        jobs.append((f"logit-extrapolated(alpha={alpha:g})", gen))
    if not jobs:
        raise RlvrLinearError("nothing to evaluate: give model/run directories or --logit-extrapolate A B")
    results = []
    for name, model in jobs:
        res = evaluate(model, **common)
        results.append((name, res))
        parts = [f"{name}:"]
        if res.greedy_accuracy is not None:
            parts.append(f"greedy {res.greedy_accuracy:.3f}")
        if res.correct is not None:
            pk = res.pass_at_k
            parts.append(f"avg@{args.k} {res.avg_at_k:.3f}  pass@1 {pk[1]:.3f}  pass@{args.k} {pk[args.k]:.3f}")
        print("  ".join(parts))
        if args.out:
            res.save(args.out, name.replace("/", "__"))
    if args.compare and len(results) > 1:
        metric = "avg" if args.k > 0 else "greedy"
        ref_name, ref = results[0]
        for name, res in results[1:]:
            ci = paired_bootstrap(ref.per_problem(metric), res.per_problem(metric))
            print(
                f"{name} - {ref_name} ({metric}): {ci['diff']:+.3f}  95% CI [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]"
            )
    return 0
