"""Reading for the every-parameter weight analysis (``analyze weights --all``): blocks read in spans.

The all-mode analysis walks every tensor in blocks of ``chunk`` elements (whole rows) across the T checkpoints.
Reading each block separately costs T positioned reads, T read-ahead hints and T thread-pool tasks per block
(14 x 3 calls per 128 KB per checkpoint for bf16 blocks of 2^16): for a 300M-parameter model that Python work
and its contention for the GIL with the analysing thread took about as long as the analysis itself.

:class:`SpanLoader` reads runs of consecutive blocks of one tensor (a *span*, up to ``span_bytes`` per
checkpoint) with one scatter read (``os.preadv``) per checkpoint, straight into the blocks' own (T, n) arrays
(each block stays C-contiguous, so the analysis and its results do not change), in one reader thread that also
asks the kernel (``POSIX_FADV_WILLNEED``) for the next spans, one hint per checkpoint file and span. Blocks come
out in the order drawn, exactly as from the per-block loader; a span's buffer is reused once all its blocks are
released.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import RlvrLinearError

#: bytes per checkpoint read at once (one span): 1 MiB = 8 bf16 blocks of 2^16 elements
SPAN_BYTES = 1 << 20
#: bytes per checkpoint file hinted ahead of the span being read (``POSIX_FADV_WILLNEED``)
AHEAD_BYTES = 8 << 20
#: IOV_MAX on Linux: at most this many buffers per ``preadv``
_IOV_MAX = 1024


def preadv_full(fd: int, views: Sequence[memoryview], pos: int) -> int:
    """Fill ``views`` (byte memoryviews) from ``fd`` at ``pos`` on, in as few ``os.preadv`` calls as the kernel
    allows; returns the bytes read (less than asked only at the end of the file)."""
    views = [v for v in views if v.nbytes]
    done = 0
    while views:
        got = os.preadv(fd, views[:_IOV_MAX], pos)
        if got <= 0:
            break
        done, pos = done + got, pos + got
        while views and got >= views[0].nbytes:
            got -= views[0].nbytes
            views.pop(0)
        if got:
            views[0] = views[0][got:]
    return done


@dataclass
class _Span:
    jobs: list[int]  #: job indices, consecutive blocks of one tensor
    blocks: list[np.ndarray] = field(default_factory=list)  #: (T, n) arrays, views of ``raw``
    raw: np.ndarray | None = None
    left: int = 0  #: blocks not yet released


class SpanLoader:
    """Loads the all-mode blocks ``jobs`` (drawn lazily from ``order``) in spans; iterating yields ``(j, job, y)``.

    ``sources``: one ``_RowSource`` of safetensors files per checkpoint whose stored dtype is every job's work
    dtype (no conversion). ``ahead``: spans read ahead of the one being analysed. Open files are closed after
    their last block (``last``: job index -> ``[(checkpoint, file), ...]``). ``release(y)`` hands a block back.
    """

    def __init__(
        self,
        sources: list,
        jobs: list,
        order: Iterable[int] | None = None,
        ahead: int = 2,
        span_bytes: int | None = None,
        ahead_bytes: int | None = None,
        last: dict[int, list[tuple[int, str]]] | None = None,
    ):
        self.sources, self.jobs = sources, jobs
        self.order = iter(range(len(jobs)) if order is None else order)
        span_bytes = SPAN_BYTES if span_bytes is None else span_bytes  # (module defaults read at each use)
        ahead_bytes = AHEAD_BYTES if ahead_bytes is None else ahead_bytes
        self.ahead, self.span_bytes, self.ahead_bytes = max(1, ahead), max(1, span_bytes), max(0, ahead_bytes)
        self.last = last or {}
        self._peek: int | None = None
        self._free: list[np.ndarray] = []
        self._owner: dict[int, _Span] = {}
        self._lock = threading.Lock()
        self._hinted: dict[tuple[int, str], int] = {}  # (checkpoint, file) -> file offset hinted up to

    # -- planning -----------------------------------------------------------------------------------
    def _next_span(self) -> _Span | None:
        j = self._peek if self._peek is not None else next(self.order, None)
        self._peek = None
        if j is None:
            return None
        size = self.jobs[j].n * max(self.jobs[j].itemsize)  # bytes per checkpoint
        out = [j]
        while True:
            k = next(self.order, None)
            if k is None:
                break
            job, prev = self.jobs[k], self.jobs[out[-1]]
            more = job.n * max(job.itemsize)
            if k != out[-1] + 1 or job.name != prev.name or job.a != prev.b or size + more > self.span_bytes:
                self._peek = k
                break
            out.append(k)
            size += more
        return _Span(out)

    def _alloc(self, span: _Span) -> None:
        T = len(self.sources)
        sizes = [T * self.jobs[j].n * np.dtype(self.jobs[j].dtype).itemsize for j in span.jobs]
        total = max(1, sum(sizes))
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.size >= total]
            raw = self._free.pop(fits[0]) if fits else np.empty(total, dtype=np.uint8)
        span.raw, off = raw, 0
        for j, nb in zip(span.jobs, sizes):
            job = self.jobs[j]
            span.blocks.append(raw[off : off + nb].view(job.dtype).reshape(T, job.n))
            off += nb
        span.left = len(span.jobs)
        with self._lock:
            for y in span.blocks:
                self._owner[id(y)] = span

    def release(self, y: np.ndarray) -> None:
        """Hand a block back; its span's buffer is reused once all the span's blocks are back."""
        with self._lock:
            span = self._owner.pop(id(y), None)
            if span is None:
                return
            span.left -= 1
            if span.left == 0 and span.raw is not None and len(self._free) < 2 * self.ahead + 2:
                self._free.append(span.raw)
                span.raw = None

    # -- reading (the reader thread) -----------------------------------------------------------------
    def _hint(self, t: int, name: str, a: int, b: int) -> None:
        """WILLNEED for the file bytes from the end of the last hint to ``ahead_bytes`` past rows ``a:b``."""
        src = self.sources[t]
        fd, lo, hi = src.span(name, a, b)
        key = (t, src.reader.file_of(name))
        start = max(self._hinted.get(key, 0), lo)
        stop = hi + self.ahead_bytes
        if stop - start >= self.span_bytes or start < hi:  # in span-sized steps
            os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
            self._hinted[key] = stop

    def _read(self, span: _Span) -> None:
        first, lastj = self.jobs[span.jobs[0]], self.jobs[span.jobs[-1]]
        for t, src in enumerate(self.sources):
            if self.ahead_bytes:
                self._hint(t, first.name, first.a, lastj.b)
            fd, lo, hi = src.span(first.name, first.a, lastj.b)
            views = [memoryview(y[t]).cast("B") for y in span.blocks]
            if preadv_full(fd, views, lo) < hi - lo:
                path = src.reader.path / src.reader.file_of(first.name)
                raise RlvrLinearError(f"{path}: file ends inside tensor {first.name!r}")

    def __iter__(self) -> Iterator[tuple[int, object, np.ndarray]]:
        pool = ThreadPoolExecutor(1)
        pending: deque = deque()

        def submit() -> None:
            span = self._next_span()
            if span is not None:
                self._alloc(span)
                pending.append((span, pool.submit(self._read, span)))

        try:
            for _ in range(self.ahead):
                submit()
            while pending:
                span, fut = pending.popleft()
                submit()
                fut.result()
                for j, y in zip(span.jobs, span.blocks):
                    yield j, self.jobs[j], y
                    for t, fname in self.last.get(j, []):
                        self.sources[t].close(fname)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self._free.clear()
            self._owner.clear()
