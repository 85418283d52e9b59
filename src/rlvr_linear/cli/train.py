"""``rlvr-linear train``: RLVR with TRL's GRPOTrainer, saving a checkpoint trajectory."""

from __future__ import annotations

from dataclasses import fields


def register(sub) -> None:
    from ..train import PRESETS

    p = sub.add_parser("train", help="RLVR (GRPO) training that saves RUN/step_N checkpoints and a manifest")
    p.add_argument("-o", "--out", required=True, help="run directory (a killed run resumes when re-run)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="a named configuration (default tiny)")
    p.add_argument("--config", default=None, help="YAML file with TrainConfig fields")
    p.add_argument("--model", default=None, help="tiny | smollm2-135m | an HF model directory")
    p.add_argument("--task", default=None, help="arithmetic | rg:<dataset> | file.jsonl")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--algorithm", default=None, help="grpo | dapo | dr_grpo | gspo | bnpo")
    p.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None)
    p.add_argument("--optimizer", default=None, help="adamw | sgd")
    p.add_argument("--prompts-per-step", type=int, default=None)
    p.add_argument("--samples-per-prompt", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--reground",
        default=None,
        metavar="M,N",
        help="jump N steps after every M gradient steps; 'M,auto' or 'auto' (M = --monitor-every): jump by the "
        "linearity monitor's current h* (0 when not linear, capped by --reground-max-n)",
    )
    p.add_argument("--reground-max-n", type=int, default=None, help="cap on the automatic N (default 5 M)")
    p.add_argument(
        "--monitor",
        action="store_true",
        default=None,
        help="log drift-to-noise, R² vs its null, forecast error ratio and h* (LinearityMonitor; kept in the manifest)",
    )
    p.add_argument("--monitor-every", type=int, default=None, help="monitor record interval (default: save every)")
    p.add_argument("--reground-optimizer", default=None, choices=["keep", "reset"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import PRESETS, TrainConfig, summarize, train

    names = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    base = dict(PRESETS[args.preset or "tiny"]) if not args.config else {}
    if args.config:
        cfg = TrainConfig.from_yaml(args.config, **overrides)
    else:
        cfg = TrainConfig(**{**base, **overrides})
    manifest = train(cfg, args.out, overwrite=args.overwrite)
    print(summarize(manifest))
    print(f"run written to {args.out}")
    return 0
