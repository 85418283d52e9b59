"""One weight-analysis pass over a plan's blocks, and the worker processes that share the blocks out."""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import RlvrLinearError
from ..io.checkpoints import Trajectory
from . import kernel as _kernel
from .fullscan import SpanLoader
from .kernel import _analyze_fused, _analyze_tiled, _as_float, _Block, _FusedBlock, null_sample
from .reader import _BlockLoader, _Job, _last_blocks, _RowSource, _span_readable
from .sampling import tensor_seed
from .stats import Dist, _fit_tn

#: all mode: share of each tensor's parameters drawn for the sign-flip null (at least NULL_MIN per tensor)
NULL_FRACTION_ALL = 1 / 256
NULL_MIN = 4096


#: all mode: analyse with 2 worker processes (``workers=None``) from this many parameters on
WORKERS_MIN_PARAMS = 50_000_000
_COUNTS = ("sampled", "kept", "small", "few", "never", "null")


@dataclass
class _WeightsPlan:
    """What a pass of :func:`analyze_weights` over some of its blocks needs (picklable, for worker processes)."""

    checkpoints: list
    allow_pickle: bool
    steps: list[int]
    jobs: list[_Job]
    info: dict[str, dict]  #: per tensor: ki, dtype, numel, blocks, thr, key, null_args (of null_sample)
    paper: bool
    seed: int
    min_unique: int
    threads: int
    io_threads: int
    check_finite: bool = True  #: paper mode: every element of every tensor, not only the sample, must be finite


def _weights_pass(
    plan: _WeightsPlan, order: Iterable[int], done: Callable[[int], Any], trajectory: Trajectory | None = None
) -> dict[str, dict]:
    """Analyse the blocks ``order`` (job indices; lazily drawn) of ``plan``.

    Returns, per tensor met: ``cnt`` (filter counts), ``hist`` (a :class:`Dist` per statistic, whose counts, n and
    share merge in any order) and ``blocks``: per job index, the sums of its values per statistic (and, in paper
    mode, the kept values and flat indices; the example candidates where found) — what the caller needs to
    rebuild, in block order, exactly the result of one pass over every block.
    """
    traj = trajectory if trajectory is not None else Trajectory(plan.checkpoints, allow_pickle=plan.allow_pickle)
    T = len(plan.steps)
    x = np.asarray(plan.steps, dtype=np.float64)
    paper, info = plan.paper, plan.info
    sources = [_RowSource(traj.reader(i)) for i in range(T)]
    if not paper and _span_readable(sources, plan.jobs):
        loader = SpanLoader(sources, plan.jobs, order, ahead=1 + plan.threads, last=_last_blocks(sources, plan.jobs))
    else:
        loader = _BlockLoader(
            sources, plan.jobs, plan.io_threads, ahead=3 if paper else 1 + plan.threads,
            prefetch=2 if paper else 64, order=order, finite_steps=plan.steps if paper and plan.check_finite else None,
        )  # fmt: skip
    works: dict[int, dict] = {}  # per thread: reused work arrays of the block analysis
    nulls: dict[str, np.ndarray | None] = {}  # per tensor met: its null_sample()
    out: dict[str, dict] = {}
    h = math.sqrt(T - 1)
    fused = _kernel.USE_NUMBA and not paper
    have_cands: dict[str, int] = {}  # tensor -> last job index of a run of consumed blocks that found candidates

    def analyze(job: _Job, y: np.ndarray, lines: bool) -> tuple[_Block, list[dict]]:
        it = info[job.name]
        i0 = job.a * job.row_len
        index = job.index if paper else i0
        cols = None
        null = nulls.get(job.name, False)
        if null is False:  # drawn here, not in the plan: each worker process draws those of the tensors it meets
            null = nulls[job.name] = null_sample(*it["null_args"])
        if null is not None:  # the null sample's columns in this block
            lo, hi = np.searchsorted(null, [i0, job.b * job.row_len])
            cols = null[lo:hi] - i0
        work = works.setdefault(threading.get_ident(), {})
        thr, steps = it["thr"], plan.steps
        if fused:  # observed R² and drift-to-noise into this thread's histograms of the tensor
            flush = None
            hist = work.get("hist")
            if hist is None or hist[0] != job.name:  # a new tensor: hand the last one's to consume()
                flush = hist
                hist = work["hist"] = (
                    job.name,
                    {"r2": Dist(), "null": Dist(), "dnr": Dist(hi=h), "null_dnr": Dist(hi=h)},
                )
            blk = _analyze_fused(y, x, i0, it["key"], thr, plan.min_unique, steps, job.name, cols, hist[1], work)
            cands = []
            if lines and blk.kept:  # as below, the lines of the two picked columns fitted on their own
                kcols = np.flatnonzero(blk.keep)
                rng = np.random.default_rng(tensor_seed(job.name, plan.seed))
                picked = kcols[rng.choice(blk.kept, min(2, blk.kept), replace=False)]
                yc = _as_float(y[:, picked]).astype(np.float64)
                fit = _fit_tn(yc, x)
                for i, c in enumerate(picked):
                    cands.append(
                        {
                            "name": job.name,
                            "index": i0 + int(c),
                            "values": yc[:, i].tolist(),
                            "slope": float(fit.slope[i]),
                            "intercept": float(fit.intercept[i]),
                            "r2": float(fit.r2[i]),
                        }
                    )
            loader.release(y)
            return blk, cands, flush
        raw, y = y, _as_float(y)
        blk = _analyze_tiled(y, x, index, it["key"], thr, plan.min_unique, steps, job.name, cols, lines, work)
        cands = []
        n_kept = blk.fit.r2.size
        if lines and n_kept:  # two example trajectories from the tensor's first block with kept parameters
            kcols = np.flatnonzero(blk.keep)
            rng = np.random.default_rng(tensor_seed(job.name, plan.seed))
            for j in rng.choice(n_kept, min(2, n_kept), replace=False):
                c = int(kcols[j])
                cands.append(
                    {
                        "name": job.name,
                        "index": int(job.index[c]) if paper else i0 + c,
                        "values": y[:, c].astype(np.float64).tolist(),
                        "slope": float(blk.fit.slope[j]),
                        "intercept": float(blk.fit.intercept[j]),
                        "r2": float(blk.fit.r2[j]),
                    }
                )
        loader.release(raw)
        return blk, cands, None

    def stats(name: str) -> dict:
        st = out.get(name)
        if st is None:
            hist = {"r2": Dist(), "null": Dist(), "dnr": Dist(hi=h), "null_dnr": Dist(hi=h)}
            st = out[name] = {"cnt": dict.fromkeys(_COUNTS, 0), "hist": hist, "blocks": {}}
        return st

    def merge_hist(flush: tuple[str, dict[str, Dist]] | None) -> None:
        if flush is not None:  # a thread's histograms of a tensor (the fused kernel's): counts, n, share
            dst = stats(flush[0])["hist"]
            for k, d in flush[1].items():
                dst[k].counts += d.counts
                dst[k].n += d.n
                dst[k].n_gt += d.n_gt

    def consume(j: int, job: _Job, blk: _Block | _FusedBlock, cands: list[dict], flush) -> None:
        merge_hist(flush)
        st = stats(job.name)
        fb = isinstance(blk, _FusedBlock)
        n_kept = blk.kept if fb else int(blk.fit.r2.size)
        cnt = st["cnt"]
        cnt["sampled"] += blk.n
        cnt["kept"] += n_kept
        cnt["small"] += blk.small
        cnt["few"] += blk.few
        cnt["never"] += blk.never
        cnt["null"] += blk.null_n
        rec: dict = {"sums": {}, "kept": n_kept}
        if fb:
            if n_kept:  # (the values are in the thread's histograms already)
                rec["sums"]["r2"], rec["sums"]["dnr"] = float(blk.sum_r2), float(blk.sum_dnr)
            if blk.null_n:
                rec["sums"]["null"], rec["sums"]["null_dnr"] = float(blk.sum_null), float(blk.sum_null_dnr)
            pairs = ()
        else:
            pairs = (("r2", blk.fit.r2), ("null", blk.null_r2), ("dnr", blk.dnr), ("null_dnr", blk.null_dnr))
        for k, v in pairs:
            v = np.asarray(v, dtype=np.float64).ravel()
            if v.size:  # as Dist.add: the total gets float(v.sum()); values kept in paper mode
                st["hist"][k].add(v)
                rec["sums"][k] = float(v.sum())
                if paper and k != "null_dnr":
                    rec.setdefault("values", {})[k] = v
        if paper:
            rec["fidx"] = job.index[blk.keep]
        if cands:
            rec["cands"] = cands
            have_cands[job.name] = j
        elif have_cands.get(job.name) == j - 1:
            have_cands[job.name] = j
        st["blocks"][j] = rec
        done(1)

    blocks = iter(loader)
    pool = ThreadPoolExecutor(plan.threads) if plan.threads > 1 else None
    try:
        inflight: deque = deque()
        for j, job, y in blocks:
            # slopes (for the example candidates) until a run of this tensor's blocks before j found some
            lines = have_cands.get(job.name) != j - 1
            if pool is None:
                consume(j, job, *analyze(job, y, lines))
                continue
            inflight.append((j, job, pool.submit(analyze, job, y, lines)))
            while len(inflight) > plan.threads or (inflight and inflight[0][2].done()):
                j0, job0, fut = inflight.popleft()
                consume(j0, job0, *fut.result())
        while inflight:
            j0, job0, fut = inflight.popleft()
            consume(j0, job0, *fut.result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        blocks.close()
        for src in sources:
            src.close()
    for work in works.values():
        merge_hist(work.pop("hist", None))
    return out


def _claim(counter, segments: list[tuple[int, int]]) -> Iterator[int]:
    """Job indices of the segments (job ranges) this process claims, one at a time, from a shared counter."""
    while True:
        with counter.get_lock():
            s = counter.value
            if s >= len(segments):
                return
            counter.value = s + 1
        yield from range(*segments[s])


def _segments(jobs: list[_Job], parts: int) -> list[tuple[int, int]]:
    """Consecutive job ranges of about ``1 / parts`` of the elements each (at least one job each)."""
    target = max(1, sum(j.n for j in jobs) // parts)
    segs, start, acc = [], 0, 0
    for i, job in enumerate(jobs):
        acc += job.n
        if acc >= target:
            segs.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(jobs):
        segs.append((start, len(jobs)))
    return segs


def _worker_main(plan: _WeightsPlan, segments, counter, done, conn) -> None:
    """Entry point of a worker process: claim segments until none are left, send back the pass's result."""
    try:
        torch.set_num_threads(1)  # one core per worker; also keeps OpenMP out of a forked child

        def tick(k: int) -> None:
            with done.get_lock():
                done.value += k

        conn.send(("ok", _weights_pass(plan, _claim(counter, segments), tick)))
    except BaseException as e:  # noqa: BLE001 - re-raised in the parent
        try:
            conn.send(("error", e))
        except Exception:  # an exception that does not pickle
            conn.send(("error", RlvrLinearError(f"weights worker process failed: {e!r}")))
    finally:
        conn.close()


def _parallel_passes(plan: _WeightsPlan, workers: int, bar) -> list[dict[str, dict]]:
    """Run :func:`_weights_pass` in this process and ``workers - 1`` worker processes sharing the blocks.

    The blocks are cut into ``64 x workers`` segments of consecutive blocks, claimed one at a time from a shared
    counter (a late-starting or slower process simply claims fewer). Worker processes are forked on Linux (no
    re-import: they start at once), spawned elsewhere.
    """
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    ctx = multiprocessing.get_context(method)
    segments = _segments(plan.jobs, 64 * workers)
    counter, done = ctx.Value("q", 0), ctx.Value("q", 0)
    procs = []

    def tick(k: int) -> None:
        with done.get_lock():
            done.value += k
            n = done.value
        bar.update(n - bar.n)

    try:
        for _ in range(workers - 1):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_worker_main, args=(plan, segments, counter, done, send), daemon=True)
            p.start()
            send.close()
            procs.append((p, recv))
        results = [_weights_pass(plan, _claim(counter, segments), tick)]
        for p, recv in procs:
            while not recv.poll(0.2):
                bar.update(done.value - bar.n)
            try:
                status, payload = recv.recv()
            except EOFError:
                p.join()
                raise RlvrLinearError(f"a weights worker process exited (code {p.exitcode}) without a result") from None
            if status == "error":
                raise payload
            results.append(payload)
            p.join()
        bar.update(done.value - bar.n)
        return results
    finally:
        with counter.get_lock():  # on error: stop the others claiming
            counter.value = len(segments)
        for p, recv in procs:
            if p.is_alive():
                p.terminate()
            p.join()
            recv.close()
