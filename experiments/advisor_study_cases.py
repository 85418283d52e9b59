"""The default study's weight-extrapolation cases, labelled for ``rlvr-linear advise --validate``.

Re-scores every (seed, t0, t1, target) extrapolation of ``STUDY/weight_extrapolation/result.json`` with per-problem
greedy scores (``rlvr_linear.study.advisor_cases``; one thread), checks the seed means against the stage's, and
writes the cases (run paths as given, relative to the repository root by default):

    OMP_NUM_THREADS=1 python experiments/advisor_study_cases.py --study out/study-default \\
        -o experiments/results/advisor/study_cases.jsonl
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from rlvr_linear.study.advisor_cases import check_against_study, study_cases, write_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="out/study-default", help="a finished study folder (its runs are needed)")
    ap.add_argument("-o", "--out", default="experiments/results/advisor/study_cases.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = study_cases(args.study)
    worst = check_against_study(cases, args.study)
    print(f"{len(cases)} cases; largest |re-scored seed mean - the stage's|: "
          + ", ".join(f"{k} {v:.4f}" for k, v in worst.items()))  # fmt: skip
    print(f"written to {write_cases(cases, args.out)}")


if __name__ == "__main__":
    main()
