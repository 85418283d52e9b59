"""Render the result tables of README.md and docs/*.md from the committed results files (one source of truth).

    python experiments/render_readme.py           # rewrite the generated blocks of every page
    python experiments/render_readme.py --check   # exit 1, naming the page, when a page is not what the files give

Blocks (``<!-- BEGIN name -->`` ... ``<!-- END name -->``) may live in any page (README.md or docs/*.md); each block
this script renders must appear in exactly one page. Blocks it does not know (e.g. ``headline``) are left untouched.
Blocks and their files:
``regime``, ``regime-effects``, ``regime-best``, ``regime-progress``: experiments/results/regime_map.json
(``python experiments/regime.py --render-only``);
``study``, ``study-linearity``, ``study-robustness``, ``study-wx``, ``study-regrounding``:
experiments/results/study/results.json (``python experiments/study.py``);
``smollm2``: experiments/results/smollm2/summary.json (``python experiments/smollm2.py summary``).
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
    smollm2_table,
    study_table,
    update_blocks,
    wx_table,
)

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
RESULTS = ROOT / "results"


def pages(repo: Path | None = None) -> list[Path]:
    """Every page a generated block may live in: README.md, then docs/*.md in name order."""
    repo = REPO if repo is None else repo
    return [p for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))] if p.is_file()]


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
    smol = RESULTS / "smollm2" / "summary.json"
    if smol.exists():  # python experiments/smollm2.py summary
        out["smollm2"] = smollm2_table(read_json(smol))
    return out


def _rel(page: Path, repo: Path) -> str:
    try:
        return str(page.relative_to(repo))
    except ValueError:
        return str(page)


def render(texts: dict[Path, str], rendered: dict[str, str], repo: Path) -> dict[Path, str]:
    """Each page's text with the blocks it holds re-rendered; a block in no page or in several is an error."""
    where: dict[Path, dict[str, str]] = {p: {} for p in texts}
    for name, body in rendered.items():
        found = [p for p, t in texts.items() if f"<!-- BEGIN {name} -->" in t]
        if len(found) != 1:
            names = ", ".join(_rel(p, repo) for p in found) or "none of them"
            raise RlvrLinearError(
                f"expected block '<!-- BEGIN {name} -->' ... '<!-- END {name} -->' in exactly one page "
                f"(README.md, docs/*.md), found in {names}"
            )
        if texts[found[0]].count(f"<!-- BEGIN {name} -->") != 1:
            raise RlvrLinearError(f"{_rel(found[0], repo)}: block '<!-- BEGIN {name} -->' appears more than once")
        where[found[0]][name] = body
    out = {}
    for p, t in texts.items():
        try:
            out[p] = update_blocks(t, where[p]) if where[p] else t
        except RlvrLinearError as e:  # e.g. a BEGIN marker without its END marker
            raise RlvrLinearError(f"{_rel(p, repo)}: {e}") from None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a page is out of date")
    args = ap.parse_args()
    texts = {p: p.read_text() for p in pages()}
    try:
        new = render(texts, blocks(), REPO)
    except RlvrLinearError as e:  # a missing or doubled block, a missing results file: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [p for p in texts if new[p] != texts[p]]
    if args.check:
        for p in stale:
            print(f"{_rel(p, REPO)} is out of date: run python experiments/render_readme.py", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        write_text(p, new[p])
    rewritten = ", ".join(_rel(p, REPO) for p in stale)
    print(f"{len(texts)} pages up to date" + (f" (rewritten: {rewritten})" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
