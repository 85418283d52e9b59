"""Per-block analysis: the numpy path (whole or in column tiles) and the fused numba kernel."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RlvrLinearError
from .numba_kernels import (  # noqa: F401 (re-exported: tests and callers use kernel.X)
    _NO_KEY,
    _fused_columns,
    _key,
    _key_value,
    _mix64,
    _no_key,
    _null_columns,
    _value,
    fused_kernel,
    null_kernel,
    tracking_proto,
)
from .reader import _check_finite
from .sampling import draw_indices, tensor_seed
from .stats import (
    PAPER_SEED,
    THRESHOLD,
    Dist,
    LinearFit,
    _buf,
    _check_steps,
    _cumsum_rows,
    _flip_inplace,
    _moments,
    _r,
    _r2,
    _records,
    n_unique,
)

# --------------------------------------------------------------------------------------------------
# Per-tensor statistics and the numpy path (whole blocks or column tiles)


@dataclass
class TensorStats:
    """Per-tensor counts and R² summaries (one CSV row)."""

    name: str
    layer: int | None
    module: str
    dtype: str
    numel: int
    sampled: int
    kept: int
    filtered_small_change: int
    filtered_few_unique: int
    never_moved: int
    r2: dict
    null: dict
    dnr: dict
    null_sample: int = 0  #: kept parameters that got the sign-flip null (all of them in paper mode)

    def row(self) -> dict:
        return {
            "name": self.name,
            "layer": "" if self.layer is None else self.layer,
            "module": self.module,
            "dtype": self.dtype,
            "numel": self.numel,
            "sampled": self.sampled,
            "kept": self.kept,
            "filtered_small_change": self.filtered_small_change,
            "filtered_few_unique": self.filtered_few_unique,
            "never_moved": self.never_moved,
            "null_sample": self.null_sample,
            "mean": _r(self.r2["mean"], 6),
            "median": _r(self.r2["median"], 6),
            "q1": _r(self.r2["q1"], 6),
            "q3": _r(self.r2["q3"], 6),
            "share_gt_0.7": _r(self.r2["share_gt_0.7"], 6),
            "null_median": _r(self.null["median"], 6),
            "null_share_gt_0.7": _r(self.null["share_gt_0.7"], 6),
            "dnr_median": _r(self.dnr["median"], 6),
        }


TENSOR_CSV_COLUMNS = [
    "name", "layer", "module", "dtype", "numel", "sampled", "kept", "filtered_small_change", "filtered_few_unique",
    "never_moved", "null_sample", "mean", "median", "q1", "q3", "share_gt_0.7", "null_median", "null_share_gt_0.7",
    "dnr_median",
]  # fmt: skip


@dataclass
class _Block:
    """Filters, R², drift-to-noise and sign-flip null of one (T, n) block of one tensor."""

    n: int
    never: int
    small: int
    few: int
    keep: np.ndarray  #: (n,) bool, the kept columns
    fit: LinearFit  #: of the kept columns
    dnr: np.ndarray  #: of the kept columns
    null_r2: np.ndarray  #: of the kept columns in the null sample (:func:`null_sample`)
    null_dnr: np.ndarray
    null_n: int


def null_sample(numel: int, fraction: float, min_count: int, name: str, seed: int = PAPER_SEED) -> np.ndarray | None:
    """Sorted flat indices of the parameters of a tensor that get the sign-flip null (None: all of them).

    ``k = min(numel, max(min_count, ceil(fraction * numel)))`` indices drawn by :func:`draw_indices` with
    seed ``tensor_seed("null:" + name, seed)``: deterministic, and the same whatever the chunking.
    """
    if fraction >= 1.0:
        return None
    k = min(numel, max(int(min_count), math.ceil(fraction * numel)))
    return None if k >= numel else draw_indices(numel, k, tensor_seed("null:" + name, seed))


def _analyze_block(
    y: np.ndarray,
    x: np.ndarray,
    index: int | np.ndarray,
    key: int,
    min_abs_change: float,
    min_unique: int,
    steps: Sequence[int] = (),
    name: str = "",
    null_cols: np.ndarray | None = None,
    lines: bool = True,
    work: dict | None = None,
) -> _Block:
    """Filters, R², drift-to-noise and sign-flip null of a (T, n) block of stored values.

    ``y`` is float32 (an exact copy of bf16 / fp16 / fp32 weights) or float64; ``index`` gives the columns'
    flat indices in the tensor: an (n,) array, or an int ``i0`` for ``i0 + arange(n)``. The filters compare
    stored values; everything after them is float64 on ``z_t = y_t - y_1`` (exact): ``Σ z`` and ``S_xz`` in
    one GEMM, ``Σ z²`` in one pass, then the increments ``d`` in place for ``Σ d²`` — about ten vectorised
    passes over the block on every column (cheaper than compacting the few dropped ones), in the reusable
    arrays of ``work``. The null (:func:`sign_flip_null`) is computed for the kept columns among
    ``null_cols`` (sorted column positions; None: every kept column). ``lines=False`` skips slopes and
    intercepts (``fit.slope`` / ``fit.intercept`` are then None). Raises :class:`RlvrLinearError` naming the
    checkpoint step and ``name`` if the block holds NaN or Inf.
    """
    T, n = y.shape
    xc, sxx = _check_steps(x)
    f64 = np.float64
    hi, lo, rec = _records(y, work)
    rng = np.subtract(hi, lo, dtype=f64, out=_buf(work, "rng", (n,), f64))  # exact: both cast first
    if not math.isfinite(float(rng.sum())):  # NaN / Inf anywhere in a column makes its range non-finite
        _check_finite(y, steps, name)
    big = rng > min_abs_change
    small = np.flatnonzero(~big)
    never = int(np.count_nonzero(rng[small] == 0))
    few = np.flatnonzero(big & (rec < min_unique - 1))  # not proven by the records: count exactly
    if few.size:
        few = few[n_unique(np.take(y, few, axis=1)) < min_unique]
    keep = big
    keep[few] = False
    every = small.size == 0 and few.size == 0
    # observed line, float64
    y0 = _buf(work, "y0", (n,), f64)
    np.copyto(y0, y[0])
    z = _buf(work, "z", (T - 1, n), f64)  # z_t = y_t - y_1 for t = 2..T (z_1 = 0 adds nothing to the sums)
    np.copyto(z, y[1:])
    z -= y0
    M = np.matmul(np.stack([np.full(T - 1, 1.0 / T), xc[1:]]), z, out=_buf(work, "M", (2, n), f64))
    zm, sxy = M[0], M[1]
    szz = np.einsum("tn,tn->n", z, z, out=_buf(work, "szz", (n,), f64))

    def kept(a: np.ndarray) -> np.ndarray:
        return a if every else a[keep]

    net = np.abs(kept(z[-1]))
    for t in range(T - 2, 0, -1):  # z -> increments d_t = y_{t+1} - y_t, in place
        z[t] -= z[t - 1]
    d = z
    ss2 = np.einsum("tn,tn->n", d, d, out=_buf(work, "ss2", (n,), f64))
    # R² = S_xz² / (S_xx S_zz), S_zz = Σ z² - T zm²; kept columns moved, so S_zz > 0 and Σ d² > 0
    zm_k, sxy_k = kept(zm), kept(sxy)
    syy = zm_k * zm_k
    syy *= -T
    syy += kept(szz)
    r2 = sxy_k * sxy_k
    r2 /= syy
    r2 *= 1.0 / sxx
    if not (syy > 0).all():
        r2 = _r2(sxy_k, syy, sxx, np.zeros(syy.size, dtype=bool))
    np.clip(r2, 0.0, 1.0, out=r2)
    ss = np.sqrt(kept(ss2))
    with np.errstate(divide="ignore", invalid="ignore"):
        dnr = net / ss
    if not (ss > 0).all():
        dnr[~(ss > 0)] = 0.0
    slope = intercept = None
    if lines:
        slope = sxy_k / sxx
        intercept = kept(y0) + zm_k - slope * x.mean()
    # null: cumulative sums of sign-flipped increments on the kept null sample (R² is shift invariant)
    if null_cols is None:
        js = np.arange(n) if every else np.flatnonzero(keep)
    else:
        js = null_cols[keep[null_cols]]
    flat = index + js if isinstance(index, (int, np.integer)) else np.asarray(index)[js]
    dn = d[:, js]
    _flip_inplace(dn, flat, key)
    c = np.empty((T, js.size))
    _cumsum_rows(dn, c)
    _, nxy, nyy = _moments(c, xc)
    ssn = np.sqrt(ss2[js])
    with np.errstate(divide="ignore", invalid="ignore"):
        null_dnr = np.where(ssn > 0, np.abs(c[-1]) / ssn, 0.0)
    return _Block(
        n=n,
        never=never,
        small=int(small.size),
        few=int(few.size),
        keep=keep,
        fit=LinearFit(r2, slope, intercept, np.zeros(r2.size, dtype=bool)),
        dnr=dnr,
        null_r2=_r2(nxy, nyy, sxx, np.zeros(js.size, dtype=bool)),
        null_dnr=null_dnr,
        null_n=int(js.size),
    )


#: columns per tile in :func:`_analyze_tiled`: smaller work arrays (~13 x 32,768 x 8 bytes) stay in cache between
#: the ~10 passes over a tile, which matters most when two worker processes share the memory bandwidth
_TILE = 1 << 15


def _analyze_tiled(
    y: np.ndarray,
    x: np.ndarray,
    index: int | np.ndarray,
    key: int,
    min_abs_change: float,
    min_unique: int,
    steps: Sequence[int],
    name: str,
    null_cols: np.ndarray | None,
    lines: bool,
    work: dict | None,
    tile: int | None = None,
) -> _Block:
    """:func:`_analyze_block` on column tiles of ``y`` (each column's numbers do not depend on the tiling),
    concatenated into the block's result (a NaN / Inf error names the block's first bad checkpoint)."""
    n = y.shape[1]
    tile = _TILE if tile is None else tile
    args = (key, min_abs_change, min_unique, steps, name)
    if n <= tile:
        return _analyze_block(y, x, index, *args, null_cols, lines, work)
    parts = []
    try:
        for a in range(0, n, tile):
            b = min(n, a + tile)
            idx = index + a if isinstance(index, (int, np.integer)) else np.asarray(index)[a:b]
            cols = None
            if null_cols is not None:
                lo, hi = np.searchsorted(null_cols, [a, b])
                cols = null_cols[lo:hi] - a
            parts.append(_analyze_block(y[:, a:b], x, idx, *args, cols, lines, work))
    except RlvrLinearError:
        _check_finite(y, steps, name)  # the whole block's first bad checkpoint, as without tiles
        raise

    def cat(get) -> np.ndarray | None:
        arrs = [get(p) for p in parts]
        return None if arrs[0] is None else np.concatenate(arrs)

    return _Block(
        n=n,
        never=sum(p.never for p in parts),
        small=sum(p.small for p in parts),
        few=sum(p.few for p in parts),
        keep=cat(lambda p: p.keep),
        fit=LinearFit(
            cat(lambda p: p.fit.r2),
            cat(lambda p: p.fit.slope),
            cat(lambda p: p.fit.intercept),
            cat(lambda p: p.fit.constant),
        ),  # fmt: skip
        dnr=cat(lambda p: p.dnr),
        null_r2=cat(lambda p: p.null_r2),
        null_dnr=cat(lambda p: p.null_dnr),
        null_n=sum(p.null_n for p in parts),
    )


# --------------------------------------------------------------------------------------------------
# The fused all-mode kernel (numba): filters, R², drift-to-noise and histograms in one pass per parameter

#: numba is installed (imported on the first all-mode block only: it costs ~0.4 s and ~50 MB at import)
HAVE_NUMBA = importlib.util.find_spec("numba") is not None
#: use the fused numba kernel for all-mode blocks when numba is importable (False: the numpy path everywhere)
USE_NUMBA = HAVE_NUMBA


@dataclass
class _FusedBlock:
    """All-mode result of one block from :func:`_fused_columns` and :func:`_null_columns`: counts and sums.

    The observed and null R² and drift-to-noise went straight into the calling thread's histograms (``hist``:
    counts, n and the share above the threshold), so only their sums travel.
    """

    n: int
    never: int
    small: int
    few: int
    kept: int
    keep: np.ndarray  #: (n,) bool, the kept columns (a work array: valid until the thread's next block)
    sum_r2: float
    sum_dnr: float
    sum_null: float
    sum_null_dnr: float
    null_n: int


_NO_COLS = np.zeros(0, dtype=np.int64)


def _as_float(y: np.ndarray) -> np.ndarray:
    """A float32 copy of a block of bf16 bits (uint16); other blocks as they are."""
    if y.dtype == np.uint16:
        return torch.from_numpy(y).view(torch.bfloat16).float().numpy()
    return y


def _analyze_fused(
    y: np.ndarray,
    x: np.ndarray,
    i0: int,
    key: int,
    min_abs_change: float,
    min_unique: int,
    steps: Sequence[int],
    name: str,
    null_cols: np.ndarray | None,
    hist: dict[str, Dist],
    work: dict,
) -> _FusedBlock:
    """All mode without slopes: :func:`_analyze_block`'s filters, R² and drift-to-noise by the fused kernel
    (:func:`_fused_columns`, one pass over the block), their histograms accumulated into ``hist["r2"]`` /
    ``hist["dnr"]``; the sign-flip null on the kept columns among ``null_cols`` (:func:`_null_columns`, a small
    sample) into ``hist["null"]`` / ``hist["null_dnr"]``.

    ``y``: (T, n) float32 / float64 values or bf16 bits (uint16); columns ``i0 + arange(n)`` of the tensor.
    """
    T, n = y.shape
    xc, sxx = _check_steps(x)
    keep = _buf(work, "keep", (n,), np.bool_)
    hr, hd = hist["r2"], hist["dnr"]
    out = fused_kernel()(
        y, y.dtype == np.uint16, tracking_proto(y.dtype), xc, 1.0 / sxx, float(min_abs_change), int(min_unique),
        hr.counts, hr.bins / hr.hi, hd.counts, hd.bins / hd.hi, THRESHOLD, keep,
    )  # fmt: skip
    bad, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr = out
    if bad:
        _check_finite(_as_float(y), steps, name)
        raise RlvrLinearError(f"tensor {name!r} contains NaN or Inf values")  # (not reached)
    hr.n += kept
    hr.n_gt += gt_r2
    hd.n += kept
    hd.n_gt += gt_dnr
    nr, nd = hist["null"], hist["null_dnr"]
    cols = _NO_COLS if null_cols is None else null_cols
    m, sum_null, gt_null, sum_null_dnr, gt_null_dnr = null_kernel()(
        y, cols, null_cols is None, keep, i0, np.uint64(key), xc, sxx, nr.counts, nr.bins / nr.hi,
        nd.counts, nd.bins / nd.hi, THRESHOLD, _buf(work, "null", (2 * T,), np.float64),
    )  # fmt: skip
    nr.n += m
    nr.n_gt += gt_null
    nd.n += m
    nd.n_gt += gt_null_dnr
    return _FusedBlock(
        n=n, never=never, small=small, few=few, kept=kept, keep=keep, sum_r2=sum_r2, sum_dnr=sum_dnr,
        sum_null=sum_null, sum_null_dnr=sum_null_dnr, null_n=m,
    )  # fmt: skip
