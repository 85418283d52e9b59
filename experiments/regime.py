"""The regime map. Only calls ``rlvr_linear.regime`` (see docs/regime.md).

    python experiments/regime.py                 # run / continue the map in out/regime (hours), then render
    python experiments/regime.py --render-only   # re-render experiments/results/regime_map.json + regime_*.png
    python experiments/regime.py --recover       # rebuild lost runs' records from the committed map (once)
    python experiments/regime.py --worker 0/2    # with --worker 1/2 in a second process: two one-thread workers

The map's finished runs are recorded under experiments/results/regime_runs/ (committed): a run of this script on a
machine without ``out/regime`` starts from them and trains only what no record holds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_json
from rlvr_linear.regime import Regime, run_regime
from rlvr_linear.regime.store import parts_from_map, records_dir

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def recover(out: str) -> list[Path]:
    """Records of the single-seed points of the committed map that have no record yet."""
    reg = Regime(out)
    cases = [json.loads(line) for line in (RESULTS / "regime_cases.jsonl").read_text().splitlines() if line]
    recs = parts_from_map(read_json(RESULTS / "regime_map.json"), cases, reg.items(), reg.run_dir)
    written = []
    for name, parts in recs.items():
        dst = records_dir(RESULTS) / f"{name}.json"
        if not dst.exists():
            write_json(dst, parts)
            written.append(dst)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT.parent / "out" / "regime"), help="the map's cache folder")
    ap.add_argument("--render-only", action="store_true", help="re-render from the cache, no training")
    ap.add_argument("--recover", action="store_true", help="rebuild missing records from the committed map")
    ap.add_argument("--worker", default=None, help="K/N: take queue items K, K+N, .. (N processes share the map)")
    args = ap.parse_args()
    worker = None
    if args.worker:
        try:
            k, n = (int(x) for x in args.worker.split("/"))
        except ValueError:
            ap.error(f"--worker takes K/N (e.g. 0/2), got {args.worker!r}")
        worker = (k, n)
    if args.recover:
        for p in recover(args.out):
            print(p)
        return
    res = run_regime(args.out, render_only=args.render_only, results_dir=RESULTS, worker=worker)
    print(res["summary"])


if __name__ == "__main__":
    try:
        main()
    except RlvrLinearError as e:  # bad input (a wrong --worker, a folder of another setting): one line, no traceback
        raise SystemExit(f"error: {e}") from None
