"""Shared helpers of the experiment scripts: baseline runs (cached), evaluation sets, result files."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rlvr_linear import __version__  # noqa: E402
from rlvr_linear.io import write_json  # noqa: E402
from rlvr_linear.train import PRESETS, TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
WORK = Path(os.environ.get("RLVR_EXPERIMENTS_WORK", ROOT.parent / "out" / "experiments"))
SEEDS = (0, 1, 2)


def baseline_run(seed: int, **overrides) -> Path:
    """The tiny-preset RL run for ``seed`` (trained once, then reused by every experiment)."""
    cfg = TrainConfig(**{**PRESETS["tiny"], "seed": seed, **overrides})
    tag = "baseline" if not overrides else "baseline-" + "-".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    run = WORK / f"{tag}-seed{seed}"
    if not (run / "manifest.json").exists() or not _finished(run):
        train(cfg, run, progress=False)
    return run


def _finished(run: Path) -> bool:
    import json

    return bool(json.loads((run / "manifest.json").read_text()).get("finished"))


def save_result(name: str, obj: dict, t0: float) -> Path:
    obj = {
        **obj,
        "meta": {
            "rlvr_linear": __version__,
            "wall_seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    return write_json(RESULTS / f"{name}.json", obj)
