"""A small labelled set of weight-extrapolation cases for ``rlvr-linear advise --validate``.

Used when the regime map's ``cases.jsonl`` is not there yet. For each run: windows ``t0`` in {0, 2u} and ``t1`` in
{3u, 5u, 7u} (``u`` = the save interval), α in {1.5, 2}, predictors two-point (t0, t1) and least squares over every
checkpoint in [t0, t1] (the regime map's conventions); each extrapolated model and the ``t1`` checkpoint are scored
greedily on the same ``--problems`` test problems and the gain is a paired bootstrap 95% CI. Records have the
fields ``advisor.validate`` reads (``cases.jsonl`` in ``--out``).

    OMP_NUM_THREADS=1 python experiments/advisor_cases.py RUN [RUN ...] -o out/advisor_cases --problems 200
    rlvr-linear advise --validate out/advisor_cases/cases.jsonl -o out/advisor_validation
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch


def main() -> None:
    from rlvr_linear.evaluation.evaluation import evaluate, paired_bootstrap
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.extrapolation.weights import extrapolate_fit, extrapolate_two_point
    from rlvr_linear.io import read_json, write_text
    from rlvr_linear.io.checkpoints import discover
    from rlvr_linear.study import ckpt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--problems", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for run in map(Path, args.runs):
        man = read_json(run / "manifest.json")
        task = man["task"]
        steps = [c["step"] for c in man["checkpoints"]]
        u = steps[1] - steps[0]
        problems = get_task(task).problems("test", args.problems)
        scores: dict = {}

        def score(key, model, problems=problems, task=task, scores=scores):
            if key not in scores:
                res = evaluate(str(model), task, k=0, problems=problems, batch_size=256)
                scores[key] = res.greedy_correct.astype(float)
            return scores[key]

        traj = discover(run)
        for t1 in (3 * u, 5 * u, 7 * u):
            for t0 in (0, 2 * u):
                if t1 not in steps or t1 - t0 < 2 * u:
                    continue
                for alpha in (1.5, 2.0):
                    target = t0 + alpha * (t1 - t0)
                    for pred in ("two_point", "lsq"):
                        tmp = out / "tmp"
                        shutil.rmtree(tmp, ignore_errors=True)
                        if pred == "two_point":
                            extrapolate_two_point(ckpt(run, t0), ckpt(run, t1), tmp, alpha=alpha, base_step=t0,
                                                  second_step=t1, progress=False)  # fmt: skip
                        else:
                            sub = traj.subset([i for i, s in enumerate(traj.steps) if t0 <= s <= t1])
                            extrapolate_fit(sub, tmp, target_step=target, progress=False)
                        a = score(t1, ckpt(run, t1))
                        b = score(("x", t0, t1, alpha, pred), tmp)
                        pb = paired_bootstrap(a, b)
                        rec = {"run": str(run), "seed": man["config"].get("seed"), "t0": t0, "t1": t1,
                               "target": target, "alpha": alpha, "predictor": pred, "space": "weight",
                               "n_problems": len(a), "acc_t1": float(a.mean()), "acc_x": float(b.mean()),
                               "gain_vs_t1": {"greedy": {"mean": pb["diff"], "lo": pb["ci_low"], "hi": pb["ci_high"]},
                                              "avg_k": None},
                               "gain_vs_real": None}  # fmt: skip
                        records.append(rec)
                        print(json.dumps(rec), flush=True)
        shutil.rmtree(out / "tmp", ignore_errors=True)
    write_text(out / "cases.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} cases -> {out / 'cases.jsonl'}")


if __name__ == "__main__":
    main()
