"""Issue 10: the regime map. Only calls ``rlvr_linear.regime`` (see docs/regime.md).

    python experiments/regime.py --render-only   # re-render experiments/results/regime_map.json + regime_*.png
    python experiments/regime.py                 # run / continue the map in out/regime (hours), then render

The background run is started with ``rlvr-linear study --stages regime -o out/regime`` (docs/regime.md); this
script renders its cache into experiments/results/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlvr_linear.regime import run_regime

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT.parent / "out" / "regime"), help="the map's cache folder")
    ap.add_argument("--render-only", action="store_true", help="re-render from the cache, no training")
    args = ap.parse_args()
    res = run_regime(args.out, render_only=args.render_only, results_dir=ROOT / "results")
    print(res["summary"])


if __name__ == "__main__":
    main()
