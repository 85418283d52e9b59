"""Render the README's result tables from the committed results files (one source of truth with the report).

    python experiments/render_readme.py           # rewrite the generated blocks of README.md
    python experiments/render_readme.py --check   # exit 1 when README.md is not what the files give

Blocks (``<!-- BEGIN name -->`` ... ``<!-- END name -->``) and their files:
``regime``, ``regime-effects``, ``regime-best``, ``regime-progress``: experiments/results/regime_map.json
(``python experiments/regime.py --render-only``);
``study``, ``study-linearity``, ``study-robustness``, ``study-wx``, ``study-regrounding``:
experiments/results/study/results.json (``python experiments/study.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_text
from rlvr_linear.study.tables import (
    best_table,
    effects_table,
    linearity_table,
    progress_line,
    regime_table,
    regrounding_table,
    robustness_table,
    study_table,
    update_blocks,
    wx_table,
)

ROOT = Path(__file__).resolve().parent
README = ROOT.parent / "README.md"
RESULTS = ROOT / "results"


def blocks() -> dict[str, str]:
    regime = read_json(RESULTS / "regime_map.json")
    out = {"regime": regime_table(regime), "regime-effects": effects_table(regime), "regime-best": best_table(regime),
           "regime-progress": progress_line(regime)}  # fmt: skip
    study = RESULTS / "study" / "results.json"
    if study.exists():
        res = read_json(study)
        out |= {
            "study": study_table(res),
            "study-linearity": linearity_table(res),
            "study-robustness": robustness_table(res),
            "study-wx": wx_table(res),
            "study-regrounding": regrounding_table(res),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is out of date")
    args = ap.parse_args()
    text = README.read_text()
    try:
        new = update_blocks(text, blocks())
    except RlvrLinearError as e:  # a missing or doubled block, a missing results file: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print("README.md is out of date: run python experiments/render_readme.py", file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text(README, new)
    print("README.md up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
