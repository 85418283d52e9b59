"""Adaptive re-grounding (``--reground M,auto``) vs standard RL and a fixed (M, N), 3 seeds, at the
default study's point (lr 3e-5 x 128 responses, 560 steps). Only calls
``rlvr_linear.study.adaptive_regrounding.compare_adaptive``.

    python experiments/adaptive_regrounding.py --study out/study   # after `rlvr-linear study -o out/study`

The standard and fixed (8, 40) runs are the default study's own (``runs/rl_seed*``, ``runs/reground_8_40_seed*``,
copied after checking that their configs are the ones ``compare_adaptive`` would train); only the ``40,auto`` runs
are trained here (M = 40, the save interval; N = the monitor's h*, at most 5 M).
Writes experiments/results/adaptive_regrounding.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_json
from rlvr_linear.study import same_config
from rlvr_linear.study.adaptive_regrounding import compare_adaptive
from rlvr_linear.training.grpo import TrainConfig

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT.parent / "out" / "study"), help="a finished default study")
    ap.add_argument("--out", default=str(ROOT.parent / "out" / "adaptive"), help="working folder (runs)")
    ap.add_argument("--m", type=int, default=40, help="auto: gradient steps between jumps (the study's save interval)")
    ap.add_argument("--fixed", default="8,40", help="the study's fixed M,N to compare with")
    args = ap.parse_args()
    study, out = Path(args.study), Path(args.out)
    cfg0 = read_json(study / "runs" / "rl_seed0" / "manifest.json")["config"]
    base = dataclasses.replace(TrainConfig(**cfg0), reground_optimizer="reset")
    seeds = (0, 1, 2)
    fixed = args.fixed
    tag = fixed.replace(",", "_")
    reuse = {"standard": ("rl_seed{}", None), tag: (f"reground_{tag}_seed{{}}", fixed)}
    for name, (src_name, spec) in reuse.items():
        for s in seeds:
            src, dst = study / "runs" / src_name.format(s), out / "runs" / f"{name}_seed{s}"
            man = read_json(src / "manifest.json")
            want = dataclasses.replace(base, seed=s, reground=spec, reground_max_n=None)
            if spec is None:
                want = dataclasses.replace(want, reground_optimizer=man["config"]["reground_optimizer"])
            if not man.get("finished") or not same_config(man["config"], want):
                raise RlvrLinearError(f"{src}: not a finished run with the comparison's config")
            if not dst.exists():
                shutil.copytree(src, dst)
    res = compare_adaptive(out, base, m=args.m, fixed=(fixed,), seeds=seeds)
    write_json(ROOT / "results" / "adaptive_regrounding.json", res)
    print(res.get("verdict", res.keys()))


if __name__ == "__main__":
    main()
