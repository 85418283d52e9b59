"""``rlvr-linear sketch``: a small folder that keeps what the linearity analysis needs after the checkpoints are gone.

Examples::

    rlvr-linear sketch runs/grpo --task arithmetic            # writes runs/grpo/sketch (weights + log-probs)
    rlvr-linear sketch out/trl-run -o sketches/trl-run         # TRL checkpoint-N/ folders, weights only
    rlvr-linear sketch hf://org/run -o sketches/run --probes probes.jsonl
    rlvr-linear sketch runs/grpo                               # later: adds only the new checkpoints
    rlvr-linear analyze weights runs/grpo/sketch -o out/w      # the numbers analyze gives on the checkpoints

Per checkpoint the sketch keeps the paper sample of every floating ``*.weight`` tensor (0.1%, >= 50 per tensor,
seed 42: what ``analyze weights`` reads; in the checkpoint's own dtype) and, with probes, the teacher-forced
log-probs of every probe response token. About ``fraction x parameters x bytes per value`` per checkpoint (SmolLM2-135M
in bf16: 0.3 MB), plus the indices and probes once. ``analyze weights``, ``analyze logprobs`` and ``advise`` read a
sketch like a run; analyses of whole tensors (``--all``, activations, forecasts) need the checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RlvrLinearError
from .analyze import DTYPES, add_probe_args


def register(subparsers) -> None:
    from ..linearity import PAPER_FRACTION, PAPER_MIN_SAMPLES, PAPER_SEED

    p = subparsers.add_parser(
        "sketch",
        help="keep a run's weight sample and probe log-probs in a small folder (analyze it after the checkpoints "
        "are deleted)",
        description="A trajectory sketch: " + __doc__.splitlines()[0].split(": ", 1)[1],
        epilog="examples:\n" + __doc__.split("Examples::\n\n")[1].split("\n\n")[0] + "\n\n"
        + __doc__.split("\n\n", 3)[3],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument(
        "run", nargs="+", metavar="RUN", help="run directory (ours, TRL, verl), hf://ORG/REPO, or STEP=PATH ..."
    )
    p.add_argument(
        "-o", "--out", metavar="SKETCH",
        help="the sketch folder, created or extended (default: RUN/sketch for a local run directory, where "
        "`rlvr-linear train --sketch` writes it; required for hf:// and STEP=PATH)",
    )  # fmt: skip
    p.add_argument("--allow-pickle", action="store_true", help="read pickled weights (.bin, verl FSDP shards)")
    g = p.add_argument_group("sampling (default: the sketch's own when it exists, else the paper's)")
    g.add_argument("--fraction", type=float, help=f"share sampled per tensor (default {PAPER_FRACTION})")
    g.add_argument("--min-samples", type=int, help=f"minimum samples per tensor (default {PAPER_MIN_SAMPLES})")
    g.add_argument("--seed", type=int, help=f"sampling seed (default {PAPER_SEED}, as analyze weights)")
    add_probe_args(p, required=False)
    p.set_defaults(func=cmd_sketch)


def _out(args) -> Path:
    if args.out:
        return Path(args.out)
    run = args.run[0]
    if len(args.run) == 1 and "=" not in run and not run.startswith("hf:/") and Path(run).is_dir():
        return Path(run) / "sketch"
    raise RlvrLinearError("give the sketch folder with -o SKETCH (RUN is not one local run directory)")


def cmd_sketch(args) -> int:
    from ..io.checkpoints import discover
    from ..linearity import read_probes
    from ..linearity.sketch_writer import probe_origin, sample_task_probes, write_sketch

    out = _out(args)
    traj = discover(args.run if len(args.run) > 1 else args.run[0], allow_pickle=args.allow_pickle)
    probes = origin = None
    if args.probes:
        probes = read_probes(args.probes)
    elif args.task:
        if args.n_prompts < 1 or args.k < 1:
            raise RlvrLinearError("--n-prompts and --k must be >= 1")
        settings = dict(n_prompts=args.n_prompts, k=args.k, split=args.split, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, seed=args.probe_seed, batch_size=args.batch_size,
                        device=args.device, dtype=DTYPES[args.dtype])  # fmt: skip
        origin = probe_origin(args.task, **settings)

        def probes():  # only for a new sketch (an existing one keeps its probes)
            print(f"sampling {args.n_prompts} x {args.k} probes from step {traj.steps[0]} ({traj.paths[0]})")
            return sample_task_probes(traj.paths[0], args.task, allow_pickle=args.allow_pickle, **settings)[0]

    scoring = args.task or args.probes  # the scoring flags matter only with probes
    sketch, added = write_sketch(
        traj,
        out,
        probes,
        probe_origin=origin,
        fraction=args.fraction,
        min_samples=args.min_samples,
        seed=args.seed,
        batch_size=args.batch_size if scoring else None,
        dtype=DTYPES[args.dtype] if scoring else None,
        device=args.device,
        progress=True,
    )
    kept = len(sketch.steps) - len(added)
    what = "weights and log-probs" if sketch.has_probes else "weights"
    print(f"sketched {len(added)} new checkpoint(s) ({what}), {kept} already there: {len(sketch.steps)} in {out}")
    return 0
