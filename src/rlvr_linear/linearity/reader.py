"""Row readers for the weight analysis: positioned reads of checkpoint rows, the prefetching block loader."""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import RlvrLinearError
from ..io.checkpoints import SAFETENSORS_DTYPES, read_safetensors_header

# --------------------------------------------------------------------------------------------------
# Reading


def _check_finite(y: np.ndarray, steps: Sequence[int], name: str) -> None:
    ok = np.isfinite(y).all(axis=1)
    if not ok.all():
        i = int(np.argmin(ok))
        raise RlvrLinearError(f"checkpoint step {steps[i]}: tensor {name!r} contains NaN or Inf values")


_ST_DTYPES = {k: v for k, v in SAFETENSORS_DTYPES.items() if v.is_floating_point}

#: per float width: (signed int view, the exponent-all-ones pattern of +Inf, the same with the sign bit set)
_NONFINITE_BITS = {
    2: (np.int16, {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}),
    4: (np.int32, {torch.float32: 0x7F800000}),
    8: (np.int64, {torch.float64: 0x7FF0000000000000}),
}


def has_nonfinite(t: torch.Tensor) -> bool:
    """True if ``t`` holds a NaN or Inf: two max-reductions over its bits (~10x faster than ``torch.isfinite``).

    NaN / Inf have every exponent bit set: as signed integers the positive ones are the largest values
    (>= +Inf's bits), as unsigned integers the negative ones are (>= -Inf's bits).
    """
    width = _NONFINITE_BITS.get(t.element_size())
    inf = width[1].get(t.dtype) if width else None
    if inf is None or t.numel() == 0:
        return t.numel() > 0 and not bool(torch.isfinite(t).all())
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    si = t.contiguous().view(ints).numpy()
    bits = 8 * t.element_size()
    return bool(si.max() >= inf or si.view(np.dtype(f"u{t.element_size()}")).max() >= inf | (1 << (bits - 1)))


class _RowSource:
    """Rows ``[a, b)`` (first dimension) of a tensor from one checkpoint, reading only those bytes.

    safetensors files are read with positioned reads (``os.preadv``) at offsets from the file header, not
    memory mapped: pages of a 40 GB trajectory pass through the page cache but never count as our RSS.
    Pickled weights (memory mapped by ``torch.load(mmap=True)``) are sliced in memory. Safe to use from
    several threads (``preadv`` releases the GIL; opening files and parsing headers hold a lock).
    """

    def __init__(self, reader):
        self.reader = reader
        self._fds: dict[str, int] = {}
        self._headers: dict[str, tuple[int, dict]] = {}  # file -> (data start, header)
        self._lock = threading.Lock()

    def close(self, fname: str | None = None) -> None:
        """Close one file (``fname``) or all of them (headers stay cached)."""
        with self._lock:
            for f in [fname] if fname is not None else list(self._fds):
                fd = self._fds.pop(f, None)
                if fd is not None:
                    os.close(fd)

    def _file(self, fname: str) -> tuple[int, int, dict]:
        with self._lock:
            fd = self._fds.get(fname)
            if fd is None:
                fd = self._fds[fname] = os.open(self.reader.path / fname, os.O_RDONLY)
            if fname not in self._headers:
                try:
                    self._headers[fname] = read_safetensors_header(fd)
                except (ValueError, OSError) as e:
                    msg = f"{self.reader.path / fname}: not a readable safetensors file ({e})"
                    raise RlvrLinearError(msg) from None
            return (fd, *self._headers[fname])

    def _info(self, name: str) -> tuple[int, int, dict]:
        fd, start, header = self._file(self.reader.file_of(name))
        info = header.get(name)
        if info is None:
            raise RlvrLinearError(f"{self.reader.path}: tensor {name!r} is missing from this checkpoint")
        return fd, start, info

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype (from the header; no tensor data is read)."""
        if self.reader.kind != "safetensors":
            with self._lock:
                return self.reader.dtype(name)
        info = self._info(name)[2]
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise RlvrLinearError(f"{self.reader.path}: tensor {name!r} has dtype {info['dtype']}, not a float")
        return dtype

    def position(self, name: str) -> tuple[str, int]:
        """``(file, byte offset)`` of the tensor's data (the on-disk order); offset 0 for pickled weights."""
        fname = self.reader.file_of(name)
        if self.reader.kind != "safetensors":
            return fname, 0
        return fname, self._info(name)[2]["data_offsets"][0]

    def span(self, name: str, a: int, b: int) -> tuple[int, int, int]:
        """``(fd, start, stop)``: the open file and absolute byte range of rows ``a:b`` of ``name`` (safetensors)."""
        fd, start, info = self._info(name)
        lo, hi = info["data_offsets"]
        rows = info["shape"][0] if info["shape"] else 1
        row_bytes = (hi - lo) // rows if rows else 0
        return fd, start + lo + a * row_bytes, start + lo + min(b, rows) * row_bytes

    def prefetch(self, name: str, a: int | None = None, b: int | None = None) -> None:
        """Ask the kernel to start reading rows ``a:b`` of ``name`` in the background (``POSIX_FADV_WILLNEED``)."""
        if self.reader.kind != "safetensors" or not hasattr(os, "posix_fadvise"):
            return
        fd, start, info = self._info(name)
        lo, hi = info["data_offsets"]
        if a is not None:
            rows = info["shape"][0] if info["shape"] else 1
            row_bytes = (hi - lo) // rows if rows else 0
            lo, hi = lo + a * row_bytes, lo + min(b, rows) * row_bytes
        os.posix_fadvise(fd, start + lo, hi - lo, os.POSIX_FADV_WILLNEED)

    def read(
        self, name: str, a: int | None = None, b: int | None = None, buf: np.ndarray | None = None
    ) -> torch.Tensor:
        """Flattened rows ``a:b`` (all rows when ``a`` is None) in the stored dtype.

        safetensors: read into ``buf`` (a uint8 array, reused by the caller; the result is a view of it) when
        it is large enough, else into a fresh buffer.
        """
        r = self.reader
        if r.kind != "safetensors":
            with self._lock:  # the first access of a pickled file loads (maps) it
                t = r.get(name)
            return t.reshape(-1) if t.dim() == 0 or a is None else t[a:b].reshape(-1)
        fd, start, info = self._info(name)
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise RlvrLinearError(f"{r.path}: tensor {name!r} has dtype {info['dtype']}, not a float")
        lo, hi = info["data_offsets"]
        rows = info["shape"][0] if info["shape"] else 1
        row_bytes = (hi - lo) // rows if rows else 0
        a, b = (0, rows) if a is None else (a, b)
        size = (b - a) * row_bytes
        if size == 0:
            return torch.zeros(0, dtype=dtype)
        arr = buf[:size] if buf is not None and buf.size >= size else np.empty(size, dtype=np.uint8)
        view, pos = memoryview(arr), start + lo + a * row_bytes
        while view:
            got = os.preadv(fd, [view], pos)
            if got <= 0:
                raise RlvrLinearError(f"{r.path / r.file_of(name)}: file ends inside tensor {name!r}")
            view, pos = view[got:], pos + got
        return torch.from_numpy(arr).view(dtype)


def _row_chunks(shape: tuple[int, ...], chunk: int) -> tuple[int, list[tuple[int, int]]]:
    rows = shape[0] if shape else 1
    numel = math.prod(shape) if shape else 1
    row_len = numel // rows if rows else 0
    per = max(1, chunk // max(row_len, 1))
    return row_len, [(a, min(rows, a + per)) for a in range(0, rows, per)]


def _read_rows(sources: list[_RowSource], name: str, a: int, b: int, n: int) -> np.ndarray:
    y = torch.empty((len(sources), n), dtype=torch.float64)
    for i, s in enumerate(sources):
        y[i].copy_(s.read(name, a, b))
    return y.numpy()


#: bytes per positioned read when paper mode gathers samples from a whole tensor
_PIECE_BYTES = 8 << 20


@dataclass
class _Job:
    """One (T, n) block to load: rows ``a:b`` of ``name`` (all mode), or its sampled flat ``index`` (paper)."""

    name: str
    a: int
    b: int
    row_len: int
    dtype: type  #: work dtype: np.float32 (<= 32-bit floats), np.float64, or np.uint16 (bf16 bits, fused all mode)
    index: np.ndarray | None = None  #: paper mode: sorted flat indices gathered from rows ``a:b``
    itemsize: list[int] = field(default_factory=list)  #: stored bytes per element, per checkpoint

    @property
    def n(self) -> int:
        return (self.b - self.a) * self.row_len if self.index is None else self.index.size


def _last_blocks(sources: list[_RowSource], jobs: list[_Job]) -> dict[int, list[tuple[int, str]]]:
    """Job index -> the ``(checkpoint, file)`` pairs whose last block it is (to close files as soon as done)."""
    last: dict[tuple[int, str], int] = {}
    for j, job in enumerate(jobs):
        for t, s in enumerate(sources):
            last[(t, s.reader.file_of(job.name))] = j
    out: dict[int, list[tuple[int, str]]] = {}
    for tf, j in last.items():
        out.setdefault(j, []).append(tf)
    return out


#: work dtype of a block -> the stored dtype that is read straight into it
_DIRECT = {np.uint16: torch.bfloat16, np.float32: torch.float32, np.float64: torch.float64}
#: all mode reads runs of blocks with one scatter read per checkpoint (:class:`fullscan.SpanLoader`) where
#: every checkpoint is safetensors in the blocks' dtype (False: block by block, as paper mode)
SPAN_READS = True


def _span_readable(sources: list[_RowSource], jobs: list[_Job]) -> bool:
    if not SPAN_READS or any(s.reader.kind != "safetensors" for s in sources):
        return False
    names = {job.name: job.dtype for job in jobs if job.index is None}
    return len(names) > 0 and all(
        _DIRECT.get(dt) is not None and s.dtype(name) == _DIRECT[dt] for name, dt in names.items() for s in sources
    )


class _BlockLoader:
    """Loads the blocks of ``jobs`` in order with ``threads`` reader threads, ``ahead`` blocks in flight.

    The kernel is asked (``POSIX_FADV_WILLNEED``) to read the blocks ``prefetch`` jobs beyond those in flight.

    The T checkpoints' parts of a block are read in parallel (positioned reads release the GIL), converted to
    the work dtype by torch, and land in one (T, n) array; each thread reuses its own raw buffer (no page
    faults or zeroing per read). Files are closed after their last block, so open files stay bounded.
    ``threads=0`` reads in the calling thread. ``order`` (default: all jobs in turn) is an iterable of job
    indices, drawn lazily (worker processes claim runs of jobs as they go); iterating yields ``(j, job, y)``.
    ``finite_steps`` (paper mode): check every element of the pieces read, not only the sampled ones, for
    NaN / Inf, and name the checkpoint by these steps.
    """

    def __init__(
        self,
        sources: list[_RowSource],
        jobs: list[_Job],
        threads: int,
        ahead: int,
        prefetch: int,
        order: Iterable[int] | None = None,
        finite_steps: Sequence[int] | None = None,
    ):
        self.sources, self.jobs, self.threads = sources, jobs, threads
        self.finite_steps = finite_steps
        self.order = range(len(jobs)) if order is None else order
        self.ahead, self.prefetch = max(1, ahead), max(0, prefetch)
        self._bufs: dict[int, np.ndarray] = {}
        self._free: list[np.ndarray] = []  # released block arrays (flat uint8), reused to avoid page faults
        self._base: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._last = _last_blocks(sources, jobs)

    def _buffer(self, size: int) -> np.ndarray:
        tid = threading.get_ident()
        buf = self._bufs.get(tid)
        if buf is None or buf.size < size:
            buf = self._bufs[tid] = np.empty(size, dtype=np.uint8)
        return buf

    def _load(self, job: _Job, t: int, out: np.ndarray) -> None:
        src = self.sources[t]
        dst = torch.from_numpy(out)
        if out.dtype == np.uint16:  # bf16 bits (all mode with the fused kernel)
            dst = dst.view(torch.bfloat16)
        item = job.itemsize[t]
        if job.index is None:
            # stored as the block's dtype: read straight into the block (no conversion pass), else convert
            same = src.reader.kind == "safetensors" and src.dtype(job.name) == dst.dtype
            raw = src.read(job.name, job.a, job.b, out.view(np.uint8) if same else self._buffer(job.n * item))
            if raw.data_ptr() != dst.data_ptr():
                dst.copy_(raw)
            return
        if src.reader.kind == "sketch":  # a trajectory sketch (.sketch) holds the sampled values themselves
            dst.copy_(src.reader.gather(job.name, job.index))
            return
        rows = max(1, _PIECE_BYTES // max(1, job.row_len * item))
        starts = np.searchsorted(job.index, np.arange(job.a, job.b + rows, rows) * job.row_len)
        for p, a in enumerate(range(job.a, job.b, rows)):
            lo, hi = int(starts[p]), int(starts[p + 1])
            if hi > lo:
                b = min(job.b, a + rows)
                raw = src.read(job.name, a, b, self._buffer((b - a) * job.row_len * item))
                if self.finite_steps is not None and has_nonfinite(raw):
                    raise RlvrLinearError(
                        f"checkpoint step {self.finite_steps[t]}: tensor {job.name!r} contains NaN or Inf values"
                    )
                dst[lo:hi].copy_(raw[torch.from_numpy(job.index[lo:hi] - a * job.row_len)])

    def _block_array(self, shape: tuple[int, int], dtype: type) -> np.ndarray:
        nbytes = max(1, shape[0] * shape[1] * np.dtype(dtype).itemsize)
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.size >= nbytes]
            raw = self._free.pop(fits[0]) if fits else np.empty(nbytes, dtype=np.uint8)
            y = raw[:nbytes].view(dtype)[: shape[0] * shape[1]].reshape(shape)
            self._base[id(y)] = raw
        return y

    def release(self, y: np.ndarray) -> None:
        """Hand a block array back for reuse (after its analysis)."""
        with self._lock:
            raw = self._base.pop(id(y), None)
            if raw is not None and len(self._free) < 8:
                self._free.append(raw)

    def _advise(self, j: int) -> None:
        if j < len(self.jobs):
            job = self.jobs[j]
            for s in self.sources:
                s.prefetch(job.name, job.a, job.b)

    def __iter__(self) -> Iterator[tuple[int, _Job, np.ndarray]]:
        T = len(self.sources)
        pool = ThreadPoolExecutor(self.threads) if self.threads > 0 else None
        pending: deque = deque()
        order = iter(self.order)
        started = False

        def submit() -> None:
            nonlocal started
            j = next(order, None)
            if j is None:
                return
            job = self.jobs[j]
            if not started:  # the first blocks: hint them all
                started = True
                for k in range(j, j + self.prefetch):
                    self._advise(k)
            if self.prefetch:
                self._advise(j + self.prefetch)
            y = self._block_array((T, job.n), job.dtype)
            if pool is None:
                pending.append((j, job, y, []))
            else:
                pending.append((j, job, y, [pool.submit(self._load, job, t, y[t]) for t in range(T)]))

        try:
            for _ in range(self.ahead):
                submit()
            while pending:
                j, job, y, futures = pending.popleft()
                submit()
                if pool is None:
                    for t in range(T):
                        self._load(job, t, y[t])
                for f in futures:
                    f.result()
                yield j, job, y
                for t, fname in self._last.get(j, []):
                    self.sources[t].close(fname)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            self._bufs.clear()
            self._free.clear()
            self._base.clear()
