"""The default study (the README's results): runs ``rlvr-linear study`` and copies its results into the repository.

    python experiments/study.py                 # run / resume the default study in out/study, then copy
    python experiments/study.py --copy-only     # only copy out/study's results (after `make demo`, for example)
    python experiments/study.py --report-only   # only re-render the committed report (after the map grows)

The committed report leads with the committed regime map (``experiments/results/regime_map.json`` and figures).

Copies ``results.json``, the self-contained ``report.html`` and every figure the results name into
experiments/results/study/; then ``python experiments/render_readme.py`` renders the README's tables from them.
Only calls ``rlvr_linear.study`` (one implementation per experiment; protocol in docs/study.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import copy_file, read_json
from rlvr_linear.reporting.report import write_report
from rlvr_linear.study import StudyConfig, run_study

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DEST = RESULTS / "study"


def copy_results(out: Path, dest: Path = DEST) -> list[Path]:
    """Copy ``results.json``, ``report.html`` and the figures ``results.json`` names (keeping their sub-folders), then
    re-render the copied report with the committed regime map (:func:`render_report`)."""
    res_path = out / "results.json"
    if not res_path.exists():
        raise RlvrLinearError(f"{out}: no results.json (run the study first)")
    res = read_json(res_path)
    names = ["results.json", "report.html"]
    names += [f for sec in res.values() if isinstance(sec, dict) for f in sec.get("figures", [])]
    copied = []
    for rel in dict.fromkeys(names):
        if (out / rel).exists():
            copied.append(copy_file(out / rel, dest / rel))
    render_report(dest)
    return copied


def render_report(dest: Path = DEST) -> Path:
    """Re-render ``dest/report.html`` from ``dest/results.json``, led by the committed regime map."""
    return write_report(read_json(dest / "results.json"), dest, regime_dir=RESULTS)["html"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT.parent / "out" / "study"), help="the study's output folder")
    ap.add_argument("--copy-only", action="store_true", help="copy an existing study's results, run nothing")
    ap.add_argument("--report-only", action="store_true", help="re-render the committed report, copy nothing")
    args = ap.parse_args()
    if args.report_only:
        print(render_report())
        return
    out = Path(args.out)
    if not args.copy_only:
        run_study(StudyConfig.for_mode("default"), out)
    files = copy_results(out)
    print(f"copied {len(files)} files into {DEST}")


if __name__ == "__main__":
    main()
