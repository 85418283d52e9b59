"""``rlvr-linear train``: RLVR with TRL's GRPOTrainer, saving a checkpoint trajectory.

Every :class:`~rlvr_linear.train.TrainConfig` field is a flag (``--field-name``, its ``#:`` comment as help), generated
by :mod:`._dataclass_args`; ``--lr`` is kept as an alias of ``--learning-rate``. Besides the fields: ``-o/--out``,
``--preset``, ``--config`` and ``--overwrite``.
"""

from __future__ import annotations

from ..training.grpo import PRESETS, TrainConfig
from ._dataclass_args import add_dataclass_arguments, overrides

#: the options of ``train`` that are not TrainConfig fields
EXTRA_OPTIONS = ("out", "preset", "config", "overwrite")

# ``algorithm`` and ``optimizer`` are checked by TrainConfig (one "error: unknown algorithm ..." line), not argparse
_EXTRA = {
    "reground": {
        "metavar": "M,N",
        "help": "jump N steps after every M gradient steps; 'M,auto' or 'auto' (M = --monitor-every): jump by the "
        "linearity monitor's current h* (0 when not linear, capped by --reground-max-n)",
    },
    "reground_norms": {"choices": ["copy", "extrapolate"]},
    "reground_optimizer": {"choices": ["keep", "reset"]},
    "monitor": {
        "help": "log drift-to-noise, R² vs its null, forecast error ratio and h* (LinearityMonitor; kept in the "
        "manifest)"
    },
}


def register(sub) -> None:
    p = sub.add_parser("train", help="RLVR (GRPO) training that saves RUN/step_N checkpoints and a manifest")
    p.add_argument("-o", "--out", required=True, help="run directory (a killed run resumes when re-run)")
    p.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="a named configuration (default tiny; flags replace its values)",
    )
    p.add_argument("--config", default=None, help="YAML file with TrainConfig fields (flags override it)")
    add_dataclass_arguments(
        p, TrainConfig, aliases={"learning_rate": ["--lr"]}, extra=_EXTRA, shown=("preset tiny", PRESETS["tiny"])
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory written by rlvr-linear")
    p.set_defaults(func=run)


def config_from_args(args) -> TrainConfig:
    """The run's config: ``--config`` YAML or the preset (default tiny), then every flag the user set."""
    over = overrides(args, TrainConfig)
    if args.config:
        return TrainConfig.from_yaml(args.config, **over)
    return TrainConfig(**{**PRESETS[args.preset or "tiny"], **over})


def run(args) -> int:
    from ..training.grpo import summarize, train

    cfg = config_from_args(args)
    manifest = train(cfg, args.out, overwrite=args.overwrite)
    print(summarize(manifest))
    print(f"run written to {args.out}")
    return 0
