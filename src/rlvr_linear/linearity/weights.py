"""Weight linearity: :func:`analyze_weights` and its result, :class:`WeightLinearity`."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_npz
from ..io.checkpoints import Trajectory
from . import kernel as _kernel
from .kernel import TENSOR_CSV_COLUMNS, TensorStats
from .passes import (
    _COUNTS,
    NULL_FRACTION_ALL,
    NULL_MIN,
    WORKERS_MIN_PARAMS,
    _parallel_passes,
    _weights_pass,
    _WeightsPlan,
)
from .reader import _Job, _row_chunks, _RowSource
from .sampling import (
    default_min_abs_change,
    paper_sample_size,
    parse_param_name,
    sample_indices,
    tensor_seed,
    weight_keys,
)
from .stats import (
    EXTRA_ROWS,
    MIN_UNIQUE,
    MODULE_COLUMNS,
    PAPER_FRACTION,
    PAPER_MIN_SAMPLES,
    PAPER_SEED,
    Dist,
    JsonResult,
    _above_null,
    _summary_line,
    _summary_text,
    _write_csv,
    stable_key,
)


@dataclass
class WeightLinearity(JsonResult):
    """Result of :func:`analyze_weights`. ``save(out_dir)`` writes JSON, CSV, npz and PNGs."""

    steps: list[int]
    mode: str
    config: dict
    tensors: list[TensorStats]
    r2: Dist
    null: Dist
    dnr: Dist
    null_dnr: Dist
    examples: list[dict] = field(default_factory=list)
    #: paper mode only: per kept parameter, its tensor (index into ``tensors``) and flat index
    tensor_id: np.ndarray | None = None
    flat_index: np.ndarray | None = None

    def counts(self) -> dict:
        c = {k: sum(getattr(t, k) for t in self.tensors) for k in ("numel", "sampled", "kept", "null_sample")}
        for k in ("filtered_small_change", "filtered_few_unique", "never_moved"):
            c[k] = sum(getattr(t, k) for t in self.tensors)
        c["tensors"] = len(self.tensors)
        return c

    def by_module(self) -> dict:
        acc: dict[str, list[float]] = {}
        for t in self.tensors:
            if t.kept:
                s = acc.setdefault(t.module, [0.0, 0])
                s[0] += t.r2["mean"] * t.kept
                s[1] += t.kept
        return {m: {"mean": s / n, "kept": n} for m, (s, n) in acc.items()}

    def summary(self) -> dict:
        c = self.counts()
        r2, null = self.r2.summary(), self.null.summary()
        T = len(self.steps)
        return {
            "kind": "weights",
            "mode": self.mode,
            "steps": self.steps,
            "n_checkpoints": T,
            "config": self.config,
            "quantiles": "exact" if self.r2.values is not None else "histogram (10,000 bins, error < 1e-4)",
            "counts": c,
            "share_kept": c["kept"] / c["sampled"] if c["sampled"] else math.nan,
            "share_never_moved": c["never_moved"] / c["sampled"] if c["sampled"] else math.nan,
            "r2": r2,
            "null": null,
            "above_null": _above_null(r2, null),
            "drift_to_noise": {
                **self.dnr.summary(share=False),
                "null_median": self.null_dnr.quantile(0.5),
                "straight_line": math.sqrt(T - 1),
            },
            "by_module": self.by_module(),
        }

    def heatmap(self) -> tuple[np.ndarray, list[str], list[str]]:
        """Mean R² per (layer, module) cell (kept-weighted), plus rows for embedding / final norm / lm_head."""
        cells: dict[tuple[str, str], list[float]] = {}
        layers = sorted({t.layer for t in self.tensors if t.layer is not None})
        for t in self.tensors:
            if not t.kept:
                continue
            if t.layer is not None and t.module in MODULE_COLUMNS:
                key = (str(t.layer), t.module)
            elif t.layer is None and t.module in EXTRA_ROWS:
                key = (t.module, MODULE_COLUMNS[0])
            else:
                continue
            s = cells.setdefault(key, [0.0, 0])
            s[0] += t.r2["mean"] * t.kept
            s[1] += t.kept
        present = {t.module for t in self.tensors if t.layer is None}
        rows = [str(i) for i in layers] + [m for m in EXTRA_ROWS if m in present]
        mat = np.full((len(rows), len(MODULE_COLUMNS)), np.nan)
        for (r, c), (s, n) in cells.items():
            if r in rows:
                mat[rows.index(r), MODULE_COLUMNS.index(c)] = s / n
        labels = [f"layer {r}" if r.isdigit() else r for r in rows]
        return mat, labels, list(MODULE_COLUMNS)

    def save(self, out_dir: str | Path) -> None:
        from ..reporting import plots

        out, s = self._save_json(out_dir, "weights")
        _write_csv(out / "weights_per_tensor.csv", [t.row() for t in self.tensors], TENSOR_CSV_COLUMNS)
        if self.r2.values is not None:
            write_npz(
                out / "weights_r2.npz",
                steps=np.asarray(self.steps),
                tensor_names=np.asarray([t.name for t in self.tensors]),
                tensor_id=self.tensor_id,
                flat_index=self.flat_index,
                r2=self.r2.array().astype(np.float32),
                null_r2=self.null.array().astype(np.float32),
                drift_to_noise=self.dnr.array().astype(np.float32),
            )
        obs = self.r2.array() if self.r2.values is not None else self.r2.histogram()
        nul = self.null.array() if self.null.values is not None else self.null.histogram()
        plots.plot_r2_histogram(
            out / "weights_r2_hist.png",
            obs,
            nul,
            title=f"Weight R² ({self.mode} mode, {len(self.steps)} checkpoints)",
            summary=_summary_text(s["r2"], s["null"]),
        )
        mat, rows, cols = self.heatmap()
        if mat.size:
            plots.plot_heatmap(out / "weights_heatmap.png", mat, rows, cols, title="Mean weight R² per layer / module")
        if self.examples:
            plots.plot_trajectories(
                out / "weights_examples.png",
                self.steps,
                self.examples,
                title="Sampled parameter trajectories and fitted lines",
                ylabel="weight value",
            )

    def summary_line(self) -> str:
        s = self.to_json()
        return _summary_line("weights", s["r2"], s["null"], s["counts"]["kept"], s["counts"]["sampled"])


def _note_mixed_dtypes(paths: Sequence[Path], stored: Sequence[set[torch.dtype]]) -> None:
    """Say once on stderr which checkpoints are stored in another dtype than the rest (the values are compared in a
    common float dtype, and filter 1 uses the coarsest dtype's threshold)."""
    kinds = [frozenset(s) for s in stored]
    if len(set(kinds)) < 2:
        return
    names = {k: "/".join(sorted(str(d).removeprefix("torch.") for d in k)) for k in kinds}
    common = max(kinds, key=kinds.count)  # the majority (the first checkpoint's on a tie)
    odd = ", ".join(f"{p} is {names[k]}" for p, k in zip(paths, kinds) if k != common)
    cast = "float64" if any(d.itemsize > 4 for k in kinds for d in k) else "float32"
    print(f"note: {odd}, others {names[common]}; values cast to {cast}", file=sys.stderr)


def analyze_weights(
    trajectory: Trajectory,
    sample: str = "paper",
    fraction: float = PAPER_FRACTION,
    min_samples: int = PAPER_MIN_SAMPLES,
    min_abs_change: float | None = None,
    min_unique: int = MIN_UNIQUE,
    seed: int = PAPER_SEED,
    chunk: int = 1 << 16,
    keys: Sequence[str] | None = None,
    n_examples: int = 9,
    progress: bool = False,
    null_fraction: float | None = None,
    null_min: int = NULL_MIN,
    threads: int | None = None,
    io_threads: int | None = None,
    workers: int | None = None,
    check_finite: bool = True,
) -> WeightLinearity:
    """Per-parameter R² of weight vs step, streamed one tensor at a time.

    ``sample="paper"``: per tensor, ``k = min(max(min_samples, floor(fraction * numel)), numel)`` flat indices
    (:func:`sample_indices`, seed ``tensor_seed(name, seed)``), gathered from each checkpoint (what
    ``Trajectory.stack(name, index)`` returns) while reading the tensor in 8 MB pieces. ``sample="all"``:
    every element, read ``chunk`` elements (whole rows) at a time from every checkpoint; about 4 x T x chunk x
    8 bytes of work arrays per thread (the default 2^16 keeps them in cache).

    Reading: positioned reads, not memory maps, so checkpoint pages never pile up in RSS; tensors in on-disk
    order (results come back in ``keys`` order); ``io_threads`` reader threads (default 4 in paper mode, where
    the T copies of a tensor are read concurrently, 1 in all mode) with kernel read-ahead hints; all mode on
    safetensors stored in the blocks' dtype (bf16 with numba, float32, float64) reads runs of blocks with one
    scatter read per checkpoint in one reader thread instead (:class:`.fullscan.SpanLoader`); the next
    blocks loading while the current ones are analysed by ``threads`` threads (default 1: the calling thread;
    more help only as far as numpy releases the GIL, about 1.2x for 2 on 2 cores). Results do not depend on
    ``threads`` or ``io_threads``. ``workers`` processes (default: 2 in all mode from :data:`WORKERS_MIN_PARAMS`
    parameters on, if there are 2 CPUs; else 1) share the blocks, each with its own readers and ``threads``
    analysis threads: about 2x on 2 cores, since all mode is CPU bound. The result is the same whatever
    ``workers`` (per-tensor parts are merged in block order); only which NaN / Inf error comes first may differ.

    Filters (paper, in order): 1. ``max_t w - min_t w > min_abs_change`` — default
    :func:`default_min_abs_change` of the tensor's dtype (1e-4 for bf16; the coarsest dtype where checkpoints are
    stored in different dtypes, said once on stderr: the values are compared as float32, or float64 if any
    checkpoint is); 2. at least ``min(min_unique, T)`` distinct values. Kept parameters get R² and the
    drift-to-noise ratio. The sign-flip null (R² and drift-to-noise) is computed for the kept parameters of
    :func:`null_sample` (``null_fraction`` of each tensor, at least ``null_min``): ``null_fraction`` defaults to 1
    (every kept parameter) in paper mode and to :data:`NULL_FRACTION_ALL` in all mode, where the null would
    otherwise cost as much as the R² itself. ``keys`` defaults to every floating ``*.weight`` tensor. Needs >= 3
    checkpoints.

    NaN / Inf anywhere in an analysed tensor is an error naming the checkpoint and tensor: all mode sees every
    element anyway; paper mode reads whole tensors to gather its sample and checks every element read
    (``check_finite=False`` skips that and checks the sample only).

    A trajectory sketch (:func:`~.sketch.open_run`) is read in paper mode only, from its stored sample (its writer
    checked every element of every tensor it sampled).
    """
    if sample not in ("paper", "all"):
        raise RlvrLinearError(f"sample must be 'paper' or 'all', got {sample!r}")
    if chunk < 1:
        raise RlvrLinearError(f"chunk must be >= 1, got {chunk}")
    paper = sample == "paper"
    if null_fraction is None:
        null_fraction = 1.0 if paper else NULL_FRACTION_ALL
    if not 0 < null_fraction <= 1:
        raise RlvrLinearError(f"null_fraction must be in (0, 1], got {null_fraction}")
    trajectory.validate(min_checkpoints=3)
    steps = trajectory.steps
    T = len(steps)
    eff_unique = min(min_unique, T)
    explicit_keys = keys is not None
    keys = list(keys) if keys is not None else weight_keys(trajectory)
    if not keys:
        raise RlvrLinearError(f"{trajectory.paths[0]}: no floating '*.weight' tensors to analyse")
    r0 = trajectory.reader(0)
    if r0.kind == "sketch":  # a trajectory sketch holds the paper sample only, read in this process
        if not paper:
            r0.get(keys[0])  # (raises, naming the sketch)
        workers = 1  # (worker processes open checkpoints by their paths)
    for k in keys:
        if k not in r0:
            raise RlvrLinearError(f"{r0.path}: tensor {k!r} is missing from this checkpoint")
    sources = [_RowSource(trajectory.reader(i)) for i in range(T)]
    # plan: tensors in the on-disk order of the first checkpoint, one job per (T, n) block
    order = sorted(range(len(keys)), key=lambda i: sources[0].position(keys[i]))
    jobs: list[_Job] = []
    info: dict[str, dict] = {}
    thresholds: dict[str, float] = {}
    stored: list[set[torch.dtype]] = [set() for _ in sources]  # per checkpoint, the dtypes of its analysed tensors
    for ki in order:
        name = keys[ki]
        dtypes = [s.dtype(name) for s in sources]
        dtype = dtypes[0]
        coarsest = max(dtypes, key=lambda d: torch.finfo(d).eps if d.is_floating_point else 0.0)
        thr = default_min_abs_change(coarsest) if min_abs_change is None else float(min_abs_change)
        thresholds[str(coarsest).replace("torch.", "")] = thr
        for seen, d in zip(stored, dtypes):
            seen.add(d)
        numel = r0.numel(name)
        row_len, spans = _row_chunks(r0.shape(name), chunk)
        items = [d.itemsize for d in dtypes]
        work_dtype = np.float64 if max(items) > 4 else np.float32
        if not paper and _kernel.USE_NUMBA and all(d == torch.bfloat16 for d in dtypes):
            work_dtype = np.uint16  # bf16 bits, read straight into the block; the fused kernel converts them
        if paper:
            idx = sample_indices(numel, paper_sample_size(numel, fraction, min_samples), tensor_seed(name, seed))
            new = [_Job(name, 0, spans[-1][1], row_len, work_dtype, idx, items)] if idx.size else []
        else:
            new = [_Job(name, a, b, row_len, work_dtype, None, items) for a, b in spans if b > a and row_len]
        info[name] = {
            "ki": ki, "dtype": dtype, "numel": numel, "blocks": len(new), "thr": thr, "key": stable_key(name, seed),
            "null_args": (numel, null_fraction, null_min, name, seed),  # null_sample(): drawn by the pass that needs it
        }  # fmt: skip
        jobs += new
    for src in sources:  # (the passes open their own)
        src.close()
    _note_mixed_dtypes([s.reader.path for s in sources], stored)
    if io_threads is None:
        io_threads = 4 if paper else 1
    if threads is None:
        threads = 1
    if workers is None:
        total = sum(info[k]["numel"] for k in keys)
        workers = min(2, os.cpu_count() or 1) if not paper and total >= WORKERS_MIN_PARAMS else 1
    if workers < 1:
        raise RlvrLinearError(f"workers must be >= 1, got {workers}")
    plan = _WeightsPlan(
        checkpoints=list(trajectory.checkpoints),
        allow_pickle=trajectory.allow_pickle,
        steps=list(steps),
        jobs=jobs,
        info=info,
        paper=paper,
        seed=seed,
        min_unique=eff_unique,
        threads=threads,
        io_threads=io_threads,
        check_finite=check_finite,
    )
    bar = tqdm(total=len(jobs), desc="weights R²", unit="block", disable=None if progress else True)
    try:
        if workers == 1 or len(jobs) < 2:
            results = [_weights_pass(plan, range(len(jobs)), bar.update, trajectory)]
        else:
            results = _parallel_passes(plan, workers, bar)
    finally:
        bar.close()
    # merge: per tensor, its blocks in order (exactly what one pass over every block in order gives)
    blocks: dict[str, dict[int, dict]] = {name: {} for name in keys}
    hists: dict[str, list[dict]] = {name: [] for name in keys}
    cnts: dict[str, list[dict]] = {name: [] for name in keys}
    for res in results:
        for name, part in res.items():
            blocks[name].update(part["blocks"])
            hists[name].append(part["hist"])
            cnts[name].append(part["cnt"])
    hi = {"r2": 1.0, "null": 1.0, "dnr": math.sqrt(T - 1), "null_dnr": math.sqrt(T - 1)}
    per_tensor: dict[str, dict] = {}
    for name in keys:
        loc = {k: Dist(hi=hi[k], keep=paper and k != "null_dnr") for k in hi}
        cnt = {k: sum(c[k] for c in cnts[name]) for k in _COUNTS}
        for h in hists[name]:  # counts, n, share: order does not matter
            for k in hi:
                loc[k].n += h[k].n
                loc[k].n_gt += h[k].n_gt
                loc[k].counts += h[k].counts
        cands: list[dict] = []
        tids, fidx = [], []
        for j in sorted(blocks[name]):  # sums (and kept values) in block order, as Dist.add does
            b = blocks[name][j]
            for k, v in b["sums"].items():
                loc[k].total += v
            for k, v in b.get("values", {}).items():
                loc[k].values.append(v)
            if paper:
                tids.append(np.full(b["kept"], info[name]["ki"], dtype=np.int32))
                fidx.append(b["fidx"])
            if b.get("cands") and not cands:
                cands = b["cands"]
        layer, module = parse_param_name(name)
        stats = TensorStats(
            name=name,
            layer=layer,
            module=module,
            dtype=str(info[name]["dtype"]).replace("torch.", ""),
            numel=info[name]["numel"],
            sampled=cnt["sampled"],
            kept=cnt["kept"],
            filtered_small_change=cnt["small"],
            filtered_few_unique=cnt["few"],
            never_moved=cnt["never"],
            r2=loc["r2"].summary(),
            null=loc["null"].summary(),
            dnr=loc["dnr"].summary(share=False),
            null_sample=cnt["null"],
        )
        per_tensor[name] = {"stats": stats, "loc": loc, "candidates": cands, "tids": tids, "fidx": fidx}
    glob = {k: Dist(hi=hi[k], keep=paper and k != "null_dnr") for k in hi}
    # all mode merged tensors as they finished (on-disk order), paper mode in keys order
    for name in keys if paper else [keys[ki] for ki in order]:
        for k in glob:
            glob[k].merge(per_tensor[name]["loc"][k])
    tensors: list[TensorStats] = []
    candidates: list[dict] = []
    tids: list[np.ndarray] = []
    fidx: list[np.ndarray] = []
    for name in keys:  # results in keys order, whatever the reading order
        st = per_tensor[name]
        tensors.append(st["stats"])
        candidates += st["candidates"]
        tids += st["tids"]
        fidx += st["fidx"]
    rng = np.random.default_rng(seed)
    examples = [candidates[i] for i in sorted(rng.choice(len(candidates), min(n_examples, len(candidates)), False))]
    for e in examples:
        e["label"] = f"{e['name']}[{e['index']}]  R²={e['r2']:.3f}"
    config = {
        "sample": sample,
        "fraction": fraction if paper else 1.0,
        "min_samples": min_samples if paper else None,
        "min_abs_change": thresholds,
        "min_unique": eff_unique,
        "seed": seed,
        "chunk": None if paper else chunk,
        "keys": f"{len(keys)} tensors" + (" (explicit)" if explicit_keys else " (*.weight)"),
        "null_fraction": null_fraction,
        "null_min": null_min,
    }
    return WeightLinearity(
        steps=steps,
        mode=sample,
        config=config,
        tensors=tensors,
        r2=glob["r2"],
        null=glob["null"],
        dnr=glob["dnr"],
        null_dnr=glob["null_dnr"],
        examples=examples,
        tensor_id=np.concatenate(tids) if paper and tids else None,
        flat_index=np.concatenate(fidx) if paper and fidx else None,
    )
