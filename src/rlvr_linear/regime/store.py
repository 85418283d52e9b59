"""The map's per-run records, committed with its results, so the map resumes on a machine without its checkpoints.

A run's analysis (``OUT/analysis/<run>/parts.json``) is a few tens of kB; the checkpoints it was measured on are
hundreds of MB and never committed. Once a run's analysis is complete (every part at its current version, marked
``complete`` by the runner), :func:`export_records` copies it to ``RESULTS/regime_runs/<run>.json``. On the next
machine (a fresh clone, a lost ``out/``), :func:`import_records` seeds the missing caches from those files and the
runner skips every item whose record is complete: nothing is trained or scored again, and the map renders the same.

:func:`parts_from_map` rebuilds records from a rendered map (``regime_map.json`` + ``regime_cases.jsonl``) for points
measured with one seed: the recovery of runs whose caches were lost before their records were committed. A rebuilt
record holds exactly what rendering reads (the metric values, the case records, the re-grounding part; the
validation curve only at its two ends), is marked ``meta.recovered``, and renders back to the same points.
"""

from __future__ import annotations

from pathlib import Path

from ..io import read_json, write_json
from .analysis import VERSIONS
from .cases import case_id
from .grid import Item

RUNS_DIR = "regime_runs"
STD_PARTS = ("train", "weights", "logprobs", "forecast")
REGROUND_PARTS = ("train", "reground")
SFT_PARTS = ("train", "weights", "logprobs")


def needed_parts(item: Item) -> tuple[str, ...]:
    if item.reground:
        return REGROUND_PARTS
    return SFT_PARTS if item.point.method == "sft" else STD_PARTS


def is_complete(parts: dict, item: Item) -> bool:
    """Whether ``parts`` is ``item``'s finished analysis at the current part versions."""
    meta = parts.get("meta") or {}
    if not parts.get("complete") or (meta.get("point"), meta.get("seed"), bool(meta.get("reground"))) != (
        item.point.name, item.seed, item.reground,
    ):  # fmt: skip
        return False
    return all(isinstance(parts.get(p), dict) and parts[p].get("version") == VERSIONS[p] for p in needed_parts(item))


def records_dir(results_dir: str | Path) -> Path:
    return Path(results_dir) / RUNS_DIR


def export_records(out: str | Path, results_dir: str | Path, items: list[Item]) -> list[Path]:
    """Copy every complete analysis of ``items`` from ``OUT/analysis`` to ``RESULTS/regime_runs`` (unchanged files
    are not rewritten). Returns the records written."""
    written = []
    for item in items:
        src = Path(out) / "analysis" / item.run_name / "parts.json"
        if not src.exists():
            continue
        parts = read_json(src)
        dst = records_dir(results_dir) / f"{item.run_name}.json"
        if is_complete(parts, item) and (not dst.exists() or read_json(dst) != parts):
            write_json(dst, parts)
            written.append(dst)
    return written


def import_records(out: str | Path, results_dir: str | Path, items: list[Item]) -> list[str]:
    """Seed ``OUT/analysis/<run>/parts.json`` from ``RESULTS/regime_runs/<run>.json`` for every item of ``items``
    whose cache is missing or incomplete and whose record is complete. Returns the runs seeded."""
    seeded = []
    for item in items:
        rec = records_dir(results_dir) / f"{item.run_name}.json"
        if not rec.exists():
            continue
        dst = Path(out) / "analysis" / item.run_name / "parts.json"
        if dst.exists() and is_complete(read_json(dst), item):
            continue
        parts = read_json(rec)
        if is_complete(parts, item):
            write_json(dst, parts)
            seeded.append(item.run_name)
    return seeded


def parts_from_map(regime_map: dict, cases: list[dict], items: list[Item], run_dir) -> dict[str, dict]:
    """Records rebuilt from a rendered map for every item of ``items`` whose point was measured with that item's
    seed alone (``run_dir(item)`` gives the run path kept in ``meta``). Multi-seed points cannot be split back into
    runs and are skipped."""
    out: dict[str, dict] = {}
    for item in items:
        p = regime_map.get("points", {}).get(item.point.name)
        if not p or p.get("seeds") != [item.seed]:
            continue
        meta = {"point": item.point.name, "seed": item.seed, "run": str(run_dir(item)), "full": item.full,
                "reground": item.reground, "trained_wall_time": None, "recovered": "regime_map.json"}  # fmt: skip
        if item.reground:
            if not p.get("reground"):
                continue
            parts = {"meta": meta, "train": {}, "reground": dict(p["reground"])}
        else:

            def vals(d: dict) -> dict:
                return {k: (v or {}).get("mean") for k, v in d.items()}

            mine = [c for c in cases if c["point"] == item.point.name and c["seed"] == item.seed]
            parts = {
                "meta": meta,
                "train": {"val_accuracy": [p["val_accuracy_start"]["mean"], p["val_accuracy_end"]["mean"]]},
                "weights": vals(p["weights"]),
                "logprobs": vals(p["logprobs"]),
                "forecast": {q: {"ratio_at_horizon": (v or {}).get("mean")} for q, v in p["forecast_ratio"].items()},
                "cases": {case_id(c): c for c in mine},
            }
        for k in needed_parts(item):
            parts[k] = {"version": VERSIONS[k], **{kk: vv for kk, vv in parts[k].items() if kk != "version"}}
        parts["complete"] = True
        out[item.run_name] = parts
    return out


__all__ = ["export_records", "import_records", "is_complete", "parts_from_map", "records_dir"]
