"""The regime map's driver: train every queue item, analyse it, render the map; resumable and cached.

Layout of ``OUT`` (e.g. ``out/regime``)::

    runs/<point>_s<seed>/            training trajectory (``training.grpo.train``; resumes from its last save)
    runs/<point>_s<seed>_reground/   the re-grounded run of a point (seed 0)
    analysis/<run>/parts.json        cached per-run analysis (each part under its own key, written atomically;
                                     ``complete`` once every part is in)
    cases.jsonl                      every extrapolation case, one JSON object per line (rendered from the cache)
    regime_map.json, regime_*.png    the map (rendered from the cache; ``render_only`` re-renders without training)
    pid, log.txt                     the background process (``pid.<k>`` per worker; see docs/regime.md)

A kill at any moment is safe: checkpoints, manifests and cache files are written atomically, extrapolated models
live under ``OUT/tmp`` (wiped at start), and a rerun of the same command continues where the last one stopped.
With a results folder, finished runs' analyses are copied there (``regime_runs/``, committed) and a run on another
machine starts from them (:mod:`.store`): items with a complete record are neither trained nor analysed again.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

from ..errors import RlvrLinearError
from ..io import read_json, write_text
from .grid import Item, queue
from .store import import_records, is_complete, records_dir


def _log(msg: str) -> None:
    print(f"[regime {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cot_available() -> bool:
    """Whether the long-response task exists and its base ``tiny-cot`` is shipped or cached (never built here: the
    map's one thread would spend hours warming it up)."""
    try:
        from ..evaluation.tasks import get_task
        from ..models.base_model import BASE_PRESETS, TinyBaseConfig, cache_root, recipe_key, shipped_bases

        get_task("arithmetic-cot")
        key = recipe_key(TinyBaseConfig(**BASE_PRESETS["tiny-cot"]))
        shipped = any(e["recipe_key"] == key for e in shipped_bases().values())
        return shipped or (cache_root() / f"tiny-{key}" / "config.json").exists()
    except Exception:  # noqa: BLE001 - any failure means "not available yet"
        return False


class Regime:
    """One regime map in ``out``; ``quick`` = the CI-sized 2 x 2 map on the quick base; ``worker = (k, n)``: this
    process takes queue items ``k, k + n, k + 2n, ..`` (n one-thread processes share the map on n cores)."""

    def __init__(self, out: str | Path, quick: bool = False, progress: bool = False,
                 worker: tuple[int, int] | None = None):  # fmt: skip
        self.out, self.quick, self.progress = Path(out), quick, progress
        if worker is not None and not (worker[1] >= 1 and 0 <= worker[0] < worker[1]):
            raise RlvrLinearError(f"worker must be (k, n) with 0 <= k < n, got {worker}")
        self.worker = worker
        self._bases: dict[str, str] = {}

    # models ----------------------------------------------------------------------------------------
    def base(self, name: str) -> str:
        if name not in self._bases:
            from ..models.base_model import ensure_base

            if self.quick:
                from ..study.config import QUICK_BASE_RECIPE

                self._bases[name] = str(ensure_base("tiny", progress=self.progress, **QUICK_BASE_RECIPE))
            else:
                self._bases[name] = str(ensure_base(name, progress=self.progress))
        return self._bases[name]

    def items(self) -> list[Item]:
        return queue(quick=self.quick, cot_available=self.quick or cot_available())

    def my_items(self) -> list[tuple[int, Item]]:
        """(queue index, item) of the items this process trains: all of them, or its worker's share."""
        items = list(enumerate(self.items()))
        if self.worker is None:
            return items
        k, n = self.worker
        return [(i, it) for i, it in items if i % n == k]

    def clean_tmp(self) -> None:
        """Remove leftovers of a killed run: all of ``OUT/tmp``, or a worker's own items' folders there (another
        worker may be scoring in its own)."""
        if self.worker is None:
            shutil.rmtree(self.out / "tmp", ignore_errors=True)
            return
        for _, item in self.my_items():
            shutil.rmtree(self.out / "tmp" / item.run_name, ignore_errors=True)

    def train_config(self, item: Item):
        p = item.point
        # the full map names its base ("tiny", "tiny-cot": train resolves the shipped/cached model); the quick map
        # trains the quick base by path
        model = self.base(p.model) if self.quick else p.model
        cfg = p.train_config(item.seed, model=model, eval_problems=50 if self.quick else 200)
        if item.reground:
            m = p.save_every
            cfg.steps = p.horizon // 2
            cfg.reground = f"{m},{m}"
            cfg.reground_optimizer = "reset"
        return cfg

    def run_dir(self, item: Item) -> Path:
        return self.out / "runs" / item.run_name

    def manifest(self, item: Item) -> dict | None:
        """``item``'s run manifest (None before its first save); a run of another setting is refused."""
        from ..study.common import same_config

        path = self.run_dir(item) / "manifest.json"
        if not path.exists():
            return None
        man = read_json(path)
        if not same_config(man.get("config"), self.train_config(item)):
            raise RlvrLinearError(f"{path.parent} holds a run with another config; move it away or use a new folder")
        return man

    def complete(self, item: Item) -> bool:
        """Whether ``item``'s analysis is finished (its checkpoints may be gone: see :mod:`.store`)."""
        path = self.out / "analysis" / item.run_name / "parts.json"
        return path.exists() and is_complete(read_json(path), item)

    # training --------------------------------------------------------------------------------------
    def train(self, item: Item) -> dict:
        """Train ``item`` (or reuse its finished run, or resume an unfinished one; an unfinished SFT run, minutes
        long, starts over). Returns the manifest."""
        from ..training.grpo import train
        from ..training.sft import train_sft

        run, cfg = self.run_dir(item), self.train_config(item)
        sft = item.point.method == "sft"
        man = self.manifest(item)
        if man is not None and man.get("finished"):
            return man
        if man is not None and not sft:
            _log(f"resuming {item.run_name} from step {man['checkpoints'][-1]['step'] if man['checkpoints'] else 0}")
        else:
            if run.exists():  # killed before its first manifest (or an unfinished SFT run): nothing worth keeping
                shutil.rmtree(run)
            size = f"batch {cfg.batch_size}" if sft else f"{cfg.prompts_per_step}x{cfg.samples_per_prompt}"
            _log(f"training {item.run_name} ({cfg.steps} steps, {size})")
        t0 = time.time()
        man = train_sft(cfg, run, progress=self.progress) if sft else train(cfg, run, progress=self.progress)
        _log(f"trained {item.run_name} in {time.time() - t0:.0f} s")
        return man

    # the whole map ---------------------------------------------------------------------------------
    def run(self, render_only: bool = False, results_dir: str | Path | None = None, train_only: bool = False) -> dict:
        from .render import render

        self.out.mkdir(parents=True, exist_ok=True)
        if not render_only:
            write_text(self.out / ("pid" if self.worker is None else f"pid.{self.worker[0]}"), f"{os.getpid()}\n")
            self.clean_tmp()
            items = self.items()
            _log(f"{len(items)} queue items in {self.out}")
            if results_dir is not None:
                seeded = import_records(self.out, results_dir, items)
                if seeded:
                    _log(f"{len(seeded)} finished runs taken from {records_dir(results_dir)} (not retrained)")
            for i, item in self.my_items():
                if self.complete(item):
                    self.manifest(item)  # a folder holding another setting is refused even then
                    continue
                if item.reground:  # scored against its standard run's checkpoints (retrained if taken from a record)
                    self.train(Item(item.point, item.seed, full=True))
                self.train(item)
                if not train_only:
                    t0 = time.time()
                    try:
                        changed = analyze_item(self, item)
                    except Exception:  # the full map keeps training; the failed part reruns next time
                        if self.quick:
                            raise
                        _log(f"analysis of {item.run_name} failed:\n{traceback.format_exc()}")
                        continue
                    if changed:
                        _log(f"analysed {item.run_name} in {time.time() - t0:.0f} s")
                        render(self, results_dir=results_dir)
                _log(f"item {i + 1}/{len(items)} done: {item.run_name}")
        return render(self, results_dir=results_dir)


def analyze_item(regime, item: Item) -> bool:
    """Compute every missing part of ``item``'s analysis (:mod:`.analysis`) and its extrapolation cases
    (:mod:`.cases`); returns whether anything was computed.

    It lives here, in the map's driver, rather than in ``analysis``: ``cases`` builds on ``analysis``' cache and
    scorer, so a driver inside ``analysis`` that runs the cases made the two modules import each other.
    """
    from .analysis import RunCache, Scorer, part_forecast, part_logprobs, part_reground, part_train, part_weights
    from .cases import run_cases

    run = regime.run_dir(item)
    man = read_json(run / "manifest.json")
    if not man.get("finished"):
        return False
    cache = RunCache(regime.out / "analysis" / item.run_name)
    changed = False
    meta = {"point": item.point.name, "seed": item.seed, "run": str(run), "full": item.full,
            "reground": item.reground, "trained_wall_time": man.get("wall_time")}  # fmt: skip
    old = cache.parts.get("meta")
    if old is not None and old.get("trained_wall_time") not in (None, meta["trained_wall_time"]):  # retrained
        shutil.rmtree(cache.root, ignore_errors=True)
        cache = RunCache(cache.root)
    if cache.parts.get("meta") != meta:
        cache.parts["meta"] = meta
        cache.save()
    if not cache.has("train"):
        cache.put("train", part_train(man))
        changed = True
    scorer = None
    if item.reground:
        if not cache.has("reground"):
            scorer = Scorer(item.point.task, regime.quick)
            cache.put("reground", part_reground(regime, item, scorer, cache, man))
            changed = True
        return _mark_complete(cache) or changed
    if not cache.has("weights"):
        cache.put("weights", part_weights(run))
        changed = True
    if not cache.has("logprobs"):
        cache.put("logprobs", part_logprobs(regime, item, run))
        changed = True
    if item.point.method == "sft":  # the contrast is measured for linearity only
        return _mark_complete(cache) or changed
    if not cache.has("forecast"):
        cache.put("forecast", part_forecast(item, run))
        changed = True
    scorer = scorer or Scorer(item.point.task, regime.quick)
    changed |= run_cases(regime, item, run, cache, scorer)
    return _mark_complete(cache) or changed


def _mark_complete(cache) -> bool:
    if cache.parts.get("complete"):
        return False
    cache.parts["complete"] = True
    cache.save()
    return True


def run_regime(
    out: str | Path,
    quick: bool = False,
    render_only: bool = False,
    results_dir: str | Path | None = None,
    progress: bool = False,
    train_only: bool = False,
    worker: tuple[int, int] | None = None,
) -> dict:
    """Run (or continue) the regime map into ``out`` and return the rendered map (see ``regime_map.json``);
    ``worker = (k, n)``: only this worker's share of the queue (:class:`Regime`)."""
    import torch

    if not quick:
        torch.set_num_threads(1)
    return Regime(out, quick=quick, progress=progress, worker=worker).run(
        render_only=render_only, results_dir=results_dir, train_only=train_only
    )
