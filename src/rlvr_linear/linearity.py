"""Trajectory linearity: how straight do weights, token log-probs and activations move across checkpoints?

One *row* is the trajectory ``y_1 .. y_T`` of one scalar (a weight, the log-prob of one response token, one
activation) at training steps ``x_1 .. x_T``. With ``x̄, ȳ`` the means,

    S_xx = Σ (x_t - x̄)²,   S_yy = Σ (y_t - ȳ)²,   S_xy = Σ (x_t - x̄)(y_t - ȳ)
    slope b = S_xy / S_xx,  intercept a = ȳ - b x̄
    R² = S_xy² / (S_xx S_yy)      (squared Pearson r = coefficient of determination of the OLS line)

computed in float64 and clamped to [0, 1]. A constant row (max == min) has no defined R²; it gets R² = 0 and
is flagged. Rescaling the steps does not change R².

**Null baseline.** A high R² is only meaningful next to what noise alone gives: a driftless random walk of
T = 14 points has median R² ≈ 0.45 and ≈ 27% of its rows above 0.7. For every kept row we build a null
trajectory with the same start and the same step sizes but random signs (drift removed):

    y⁰_1 = y_1,   y⁰_t = y_1 + Σ_{s<t} ε_s (y_{s+1} - y_s),   ε_s = ±1 fair coin flips

and report its R² next to the observed one. The coin flips come from a counter-based hash of
``(seed, tensor name, flat index)``, so a row gets the same null whatever the chunking or sampling. The
per-row drift-to-noise ratio ``|y_T - y_1| / sqrt(Σ (y_{t+1} - y_t)²)`` is ``sqrt(T - 1)`` for a straight line
with equal steps and ≈ 0.7 (median) for a random walk.

Analyses (each streams tensors, never whole checkpoints, and returns a result object with ``to_json()`` and
``save(out_dir)``): :func:`analyze_weights`, :func:`analyze_logprobs`, :func:`analyze_activations`,
:func:`forecast`. Paper reference: arXiv 2601.04537 §1 (sampling 0.1% per tensor, ≥ 50 per tensor, seed 42,
filters ``range > 1e-4`` in bf16 and ``≥ 4 distinct values``; log-prob positions with ``|Δ| > 0.2``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoints import SAFETENSORS_DTYPES, Trajectory
from .errors import RlvrLinearError
from .fullscan import SpanLoader
from .io import write_json, write_text

#: "strong linearity" threshold used throughout the paper
THRESHOLD = 0.7
#: paper sampling: fraction of each tensor, minimum per tensor, seed
PAPER_FRACTION = 0.001
PAPER_MIN_SAMPLES = 50
PAPER_SEED = 42
#: paper filter 1 for bf16 weights (range over the trajectory must exceed it)
MIN_ABS_CHANGE_BF16 = 1e-4
#: paper filter 2: distinct values along the trajectory
MIN_UNIQUE = 4
#: paper filter for token log-probs: |logp_last - logp_first| must exceed it
MIN_LOGPROB_CHANGE = 0.2
MAX_POSITIONS = 100_000
#: heatmap columns (module short names)
MODULE_COLUMNS = ["Q", "K", "V", "O", "gate", "up", "down", "input_layernorm", "post_attention_layernorm"]
EXTRA_ROWS = ["embedding", "final_norm", "lm_head"]
_HIST_BINS = 10_000

# --------------------------------------------------------------------------------------------------
# Math


@dataclass
class LinearFit:
    """Per-row least-squares line of value vs step: ``value ≈ intercept + slope * step``."""

    r2: np.ndarray  #: (n,) squared Pearson r, in [0, 1]; 0 for constant rows
    slope: np.ndarray  #: (n,) per unit step
    intercept: np.ndarray  #: (n,) value at step 0
    constant: np.ndarray  #: (n,) bool, rows with max == min (R² undefined, reported as 0)


def _check_steps(x: np.ndarray) -> tuple[np.ndarray, float]:
    if x.shape[0] < 2:
        raise RlvrLinearError(f"a line needs at least 2 checkpoints, got {x.shape[0]}")
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if sxx == 0:
        raise RlvrLinearError("all checkpoints have the same step; cannot fit a line")
    return xc, sxx


def _moments(z: np.ndarray, xc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean_z, S_xz, S_zz)`` of a (T, n) array in two passes (one GEMM, one dot per column).

    ``S_zz = Σ z² - T mean_z²``: callers pass trajectories shifted to start at 0 (``z = y - y_1``), so the
    subtraction works on the size of the changes, not of the weights, and keeps ~14 significant digits.
    """
    T = z.shape[0]
    S = np.stack([np.full(T, 1.0 / T), xc]) @ z
    szz = np.einsum("tn,tn->n", z, z) - T * S[0] * S[0]
    return S[0], S[1], szz


def _r2(sxy: np.ndarray, syy: np.ndarray, sxx: float, constant: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = sxy * sxy / (sxx * syy)
    return np.where(constant | ~(syy > 0) | ~np.isfinite(r2), 0.0, np.clip(r2, 0.0, 1.0))


def _fit_tn(y: np.ndarray, x: np.ndarray, constant: np.ndarray | None = None) -> LinearFit:
    """:func:`linear_fit` on a (T, n) array (time along axis 0, the layout of ``Trajectory.stack``)."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"values of shape {y.shape} do not match {x.shape[0]} steps")
    xc, sxx = _check_steps(x)
    z = y - y[0]
    zm, sxy, syy = _moments(z, xc)
    if constant is None:
        constant = y.max(axis=0) == y.min(axis=0)
    slope = np.where(constant, 0.0, sxy / sxx)
    intercept = y[0] + zm - slope * x.mean()
    return LinearFit(r2=_r2(sxy, syy, sxx, constant), slope=slope, intercept=intercept, constant=constant)


def linear_fit(values: np.ndarray, steps: Sequence[float] | np.ndarray) -> LinearFit:
    """Vectorised per-row OLS line and R² (see the module docstring for the formulas).

    ``values`` is (n, T): one row per scalar, one column per checkpoint (a 1-D array is one row).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    return _fit_tn(v.T, np.asarray(steps, dtype=np.float64))


def r2_score(values: np.ndarray, steps: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-row R² of value vs step, (n, T) -> (n,)."""
    return linear_fit(values, steps).r2


def _dnr_tn(y: np.ndarray) -> np.ndarray:
    d = np.diff(y, axis=0)
    ss = np.sqrt(np.einsum("tn,tn->n", d, d))
    net = np.abs(y[-1] - y[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss > 0, net / ss, 0.0)


def drift_to_noise(values: np.ndarray) -> np.ndarray:
    """Per-row ``|y_T - y_1| / sqrt(Σ_t (y_{t+1} - y_t)²)`` for (n, T) values; in [0, sqrt(T-1)], 0 if constant."""
    v = np.asarray(values, dtype=np.float64)
    return _dnr_tn((v[None, :] if v.ndim == 1 else v).T)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def stable_key(name: str, seed: int = PAPER_SEED) -> int:
    """A 64-bit key from ``(seed, name)`` that does not depend on the Python hash seed."""
    return (int(seed) * 0x1_0000_0001 + zlib.crc32(name.encode())) & 0xFFFF_FFFF_FFFF_FFFF


def _sign_hashes(index: np.ndarray, n_increments: int, key: int) -> list[np.ndarray]:
    """One 64-bit hash per row and block of 64 increments (SplitMix64 of key, block and index)."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    out = []
    for block in range(0, n_increments, 64):
        base = _splitmix64(np.array([key + block // 64], dtype=np.uint64))[0]
        out.append(_splitmix64(idx ^ base))
    return out


def null_signs(index: np.ndarray, n_increments: int, key: int) -> np.ndarray:
    """±1.0 coin flips of shape (n_increments, n): flip ``t`` of row ``index[j]`` is bit ``t % 64`` of a hash.

    Counter-based (SplitMix64 of ``key``, block ``t // 64`` and index), so it depends only on the row's
    index, never on how rows are chunked or ordered.
    """
    out = np.empty((n_increments, np.asarray(index).shape[0]), dtype=np.float64)
    for b, h in enumerate(_sign_hashes(index, n_increments, key)):
        m = min(64, n_increments - 64 * b)
        bits = (h[None, :] >> np.arange(m, dtype=np.uint64)[:, None]) & np.uint64(1)
        out[64 * b : 64 * b + m] = 1.0 - 2.0 * bits.astype(np.float64)
    return out


def _flip_inplace(d: np.ndarray, index: np.ndarray, key: int) -> None:
    """``d *= null_signs(index, len(d), key)`` by XOR-ing the float64 sign bits (fewer passes)."""
    dv = d.view(np.uint64)
    for b, h in enumerate(_sign_hashes(index, d.shape[0], key)):
        m = min(64, d.shape[0] - 64 * b)
        sh = np.arange(m, dtype=np.uint64)[:, None]
        dv[64 * b : 64 * b + m] ^= (h[None, :] >> sh) << np.uint64(63)


def _null_tn(y: np.ndarray, index: np.ndarray, key: int) -> np.ndarray:
    d = np.ascontiguousarray(np.diff(y, axis=0))
    _flip_inplace(d, index, key)
    out = np.empty_like(y)
    _cumsum_rows(d, out)
    out += y[0]
    return out


def sign_flip_null(values: np.ndarray, index: np.ndarray | None = None, key: int = 0) -> np.ndarray:
    """Null trajectories for (n, T) values: same start and step sizes, random signs (see the module docstring).

    ``index`` (n,) identifies each row for the coin flips (default ``arange(n)``).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[None, :] if v.ndim == 1 else v
    idx = np.arange(v.shape[0]) if index is None else np.asarray(index)
    return _null_tn(v.T, idx, key).T


def _cumsum_rows(d: np.ndarray, out: np.ndarray) -> None:
    """``out[0] = 0, out[t] = d[0] + ... + d[t-1]`` (a row loop: numpy's axis-0 cumsum is ~30x slower here)."""
    out[0] = 0.0
    if d.shape[0]:
        out[1] = d[0]
    for t in range(1, d.shape[0]):
        np.add(out[t], d[t], out=out[t + 1])


def _buf(work: dict | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised array from the reusable workspace ``work`` (fresh when None).

    Reusing the work arrays of a block analysis avoids a page fault per 4 KB of every large temporary,
    which otherwise costs as much as the arithmetic.
    """
    if work is None:
        return np.empty(shape, dtype=dtype)
    size = math.prod(shape)
    b = work.get(name)
    if b is None or b.size < size or b.dtype != dtype:
        b = work[name] = np.empty(max(size, 1), dtype=dtype)
    return b[:size].reshape(shape)


def _records(y: np.ndarray, work: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(max, min, records)`` per column of (T, n) ``y`` in one pass over time.

    ``records`` counts strict new running maxima or minima after the first value; each differs from every
    earlier value, so a column has at least ``1 + records`` distinct values. NaN propagates to max and min.
    """
    T, n = y.shape
    hi, lo = _buf(work, "hi", (n,), y.dtype), _buf(work, "lo", (n,), y.dtype)
    np.copyto(hi, y[0])
    np.copyto(lo, y[0])
    rec = _buf(work, "rec", (n,), np.uint8 if T < 256 else np.int32)
    rec[:] = 0
    up, down = _buf(work, "up", (n,), np.bool_), _buf(work, "down", (n,), np.bool_)
    for t in range(1, T):
        np.greater(y[t], hi, out=up)
        np.less(y[t], lo, out=down)
        up |= down
        rec += up.view(np.uint8) if rec.dtype == np.uint8 else up
        np.maximum(hi, y[t], out=hi)
        np.minimum(lo, y[t], out=lo)
    return hi, lo, rec


def has_unique(values_tn: np.ndarray, k: int) -> np.ndarray:
    """Exact per-column test "at least ``k`` distinct values" for a (T, n) array.

    Cheap screen first: a strict new running maximum or minimum differs from every earlier value, so
    ``1 + #records >= k`` proves it (:func:`_records`); only the other columns are sorted (:func:`n_unique`).
    """
    n = values_tn.shape[1]
    if k <= 1 or n == 0:
        return np.ones(n, dtype=bool)
    ok = _records(values_tn)[2] >= k - 1
    amb = np.flatnonzero(~ok)
    if amb.size:
        ok[amb] = n_unique(values_tn[:, amb]) >= k
    return ok


def n_unique(values_tn: np.ndarray) -> np.ndarray:
    """Distinct values per column of a (T, n) array."""
    if values_tn.shape[1] == 0:
        return np.zeros(0, dtype=np.int64)
    s = np.sort(values_tn, axis=0)
    return 1 + (np.diff(s, axis=0) != 0).sum(axis=0)


# --------------------------------------------------------------------------------------------------
# A streaming summary of a distribution


class Dist:
    """Running summary of values in ``[0, hi]``.

    Count, mean and the share above :data:`THRESHOLD` are exact. Quantiles are exact when ``keep=True``
    (values are kept), otherwise read from a 10,000-bin histogram (error below ``hi / 10,000``).
    """

    def __init__(self, hi: float = 1.0, keep: bool = False, bins: int = _HIST_BINS):
        self.hi, self.bins = float(hi), bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.n, self.total, self.n_gt = 0, 0.0, 0
        self.values: list[np.ndarray] | None = [] if keep else None

    def add(self, v: np.ndarray) -> None:
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.size == 0:
            return
        self.n += v.size
        self.total += float(v.sum())
        self.n_gt += int((v > THRESHOLD).sum())
        b = np.clip((v * (self.bins / self.hi)).astype(np.int64), 0, self.bins - 1)
        self.counts += np.bincount(b, minlength=self.bins)
        if self.values is not None:
            self.values.append(v)

    def merge(self, other: Dist) -> None:
        self.n += other.n
        self.total += other.total
        self.n_gt += other.n_gt
        self.counts += other.counts
        if self.values is not None:
            if other.values is None:
                self.values = None
            else:
                self.values.extend(other.values)

    def __getstate__(self) -> dict:
        # sent between processes by analyze_weights(workers > 1): sparse counts when most bins are empty
        state = dict(self.__dict__)
        nz = np.flatnonzero(self.counts)
        if 3 * nz.size < self.counts.size:
            state["counts"] = (nz.astype(np.int32), self.counts[nz])
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["counts"], tuple):
            idx, c = state["counts"]
            state["counts"] = np.zeros(state["bins"], dtype=np.int64)
            state["counts"][idx] = c
        self.__dict__.update(state)

    def array(self) -> np.ndarray | None:
        if self.values is None:
            return None
        return np.concatenate(self.values) if self.values else np.zeros(0)

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return math.nan
        vals = self.array()
        if vals is not None:
            return float(np.quantile(vals, q))
        # numpy's "linear" quantile on order statistics, each placed evenly inside its histogram bin
        cum = np.cumsum(self.counts)

        def order_stat(k: int) -> float:
            i = int(np.searchsorted(cum, k + 1, side="left"))
            prev = cum[i - 1] if i > 0 else 0
            return (i + (k - prev + 0.5) / self.counts[i]) * self.hi / self.bins

        h = q * (self.n - 1)
        lo = int(math.floor(h))
        v = order_stat(lo)
        if lo + 1 < self.n and h > lo:
            v += (h - lo) * (order_stat(lo + 1) - v)
        return float(v)

    def histogram(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` over ``[0, hi]`` with ``bins`` bins (must divide 10,000)."""
        if self.bins % bins:
            raise ValueError(f"bins must divide {self.bins}")
        return self.counts.reshape(bins, -1).sum(axis=1), np.linspace(0.0, self.hi, bins + 1)

    def summary(self, share: bool = True) -> dict:
        q1, med, q3 = (self.quantile(q) for q in (0.25, 0.5, 0.75))
        out = {
            "n": self.n,
            "mean": self.total / self.n if self.n else math.nan,
            "median": med,
            "q1": q1,
            "q3": q3,
            "iqr": q3 - q1,
        }
        if share:
            out["share_gt_0.7"] = self.n_gt / self.n if self.n else math.nan
        return out


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _r(x: float, nd: int = 4) -> float:
    return round(x, nd) if isinstance(x, float) and math.isfinite(x) else x


def _above_null(obs: dict, null: dict) -> dict:
    return {k: obs[k] - null[k] for k in ("median", "mean", "share_gt_0.7")}


def _save_npz(path: Path, **arrays) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for k, v in r.items()})
    write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Sampling, filters, names


def paper_sample_size(numel: int, fraction: float = PAPER_FRACTION, min_samples: int = PAPER_MIN_SAMPLES) -> int:
    """``k = min(max(min_samples, floor(fraction * numel)), numel)`` (the paper's per-tensor sample size)."""
    return min(max(min_samples, int(math.floor(fraction * numel))), numel)


def tensor_seed(name: str, seed: int = PAPER_SEED) -> int:
    """``seed`` plus a stable per-tensor offset (CRC-32 of the name)."""
    return int(seed) + zlib.crc32(name.encode())


def sample_indices(numel: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct flat indices in ``[0, numel)``, sorted; deterministic in ``seed``.

    ``torch.randperm(numel)[:k]`` with a generator seeded ``seed`` (the paper's draw) when ``numel <= 2**20``
    or ``k > numel / 4``; otherwise a seeded rejection draw (``torch.randint``, first occurrences kept), which
    avoids randperm's time and 8 bytes per element on large matrices (65 MB for an 8M embedding).
    """
    if k < 0 or k > numel:
        raise ValueError(f"cannot draw {k} of {numel} indices")
    g = torch.Generator().manual_seed(int(seed))
    if numel <= 2**20 or 4 * k > numel:
        idx = torch.randperm(numel, generator=g)[:k].numpy()
    else:
        idx = np.zeros(0, dtype=np.int64)
        while idx.size < k:
            cand = torch.randint(0, numel, (2 * (k - idx.size) + 16,), generator=g).numpy()
            allv = np.concatenate([idx, cand])
            _, first = np.unique(allv, return_index=True)
            idx = allv[np.sort(first)][:k]
    return np.sort(idx.astype(np.int64))


def default_min_abs_change(dtype: torch.dtype) -> float:
    """Filter-1 threshold for a storage dtype.

    The paper's 1e-4 is for bf16, where it is about one ULP at typical weight magnitudes (|w| ≈ 0.02: ULP
    2^-6 · 2^-7 ≈ 1.2e-4), i.e. it drops parameters that moved by rounding only. Other float dtypes keep that
    meaning by scaling with the machine epsilon: ``1e-4 · eps(dtype) / eps(bf16)`` = 1.25e-5 for fp16
    (2^-3), 1e-4 · 2^-16 ≈ 1.5e-9 for fp32, ≈ 2.8e-18 for fp64.
    """
    if not dtype.is_floating_point:
        return 0.0
    return MIN_ABS_CHANGE_BF16 * torch.finfo(dtype).eps / torch.finfo(torch.bfloat16).eps


_MODULE_PARTS = {
    "q_proj": "Q",
    "k_proj": "K",
    "v_proj": "V",
    "o_proj": "O",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
}
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def parse_param_name(name: str) -> tuple[int | None, str]:
    """``(layer, module)`` for Llama/Qwen2-style names.

    ``model.layers.3.self_attn.q_proj.weight`` -> ``(3, "Q")``; ``model.embed_tokens.weight`` -> ``(None,
    "embedding")``; ``model.norm.weight`` -> ``(None, "final_norm")``; ``lm_head.weight`` -> ``(None, "lm_head")``;
    anything else -> the name without its last part (``other`` outside layers).
    """
    m = _LAYER_RE.search(name)
    if m:
        parts = m.group(2).split(".")
        for p in parts:
            if p in _MODULE_PARTS:
                return int(m.group(1)), _MODULE_PARTS[p]
        return int(m.group(1)), ".".join(parts[:-1]) or parts[0]
    parts = name.split(".")
    if "embed_tokens" in parts or "wte" in parts:
        return None, "embedding"
    if "lm_head" in parts:
        return None, "lm_head"
    if len(parts) >= 2 and parts[-2] in ("norm", "final_layernorm", "ln_f"):
        return None, "final_norm"
    return None, "other"


def weight_keys(traj: Trajectory) -> list[str]:
    """Floating tensors whose name ends in ``.weight`` (the paper's selection; biases excluded)."""
    r = traj.reader(0)
    return [k for k in r.keys() if k.endswith(".weight") and r.dtype(k).is_floating_point]


def float_keys(traj: Trajectory) -> list[str]:
    r = traj.reader(0)
    return [k for k in r.keys() if r.dtype(k).is_floating_point]


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
                    n = int.from_bytes(os.pread(fd, 8, 0), "little")
                    self._headers[fname] = (8 + n, json.loads(os.pread(fd, n, 8)))
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


# --------------------------------------------------------------------------------------------------
# Weights


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

    ``k = min(numel, max(min_count, ceil(fraction * numel)))`` indices drawn by :func:`sample_indices` with
    seed ``tensor_seed("null:" + name, seed)``: deterministic, and the same whatever the chunking.
    """
    if fraction >= 1.0:
        return None
    k = min(numel, max(int(min_count), math.ceil(fraction * numel)))
    return None if k >= numel else sample_indices(numel, k, tensor_seed("null:" + name, seed))


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
            cat(lambda p: p.fit.r2), cat(lambda p: p.fit.slope), cat(lambda p: p.fit.intercept),
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
_KERNEL = None


#: columns per tile of :func:`_fused_columns` (its per-column accumulators stay in L1)
_FUSED_TILE = 512


def _fused_columns(y, bf16, tproto, xc, inv_sxx, thr, k, r2_counts, r2_scale, dnr_counts, dnr_scale, thresh, keep):
    """One pass over the columns of a (T, n) block ``y`` (float32 / float64 values, or bf16 bits as uint16 when
    ``bf16``); per column, the inner loop over T:

    * range filter ``max - min > thr`` (``never``: max == min), then at least ``k`` distinct values (a small
      insertion check, stopped as soon as ``k`` are found);
    * on ``z_t = y_t - y_1`` in float64: ``z̄ = Σ z / T``, ``S_xz = Σ xc_t z_t``, ``S_zz = Σ z² - T z̄²``,
      ``R² = clip(S_xz² / S_zz / S_xx, 0, 1)`` (0 when ``S_zz <= 0``), drift-to-noise ``|z_T| / sqrt(Σ d²)``
      with ``d_t = z_{t+1} - z_t`` (the formulas of :func:`_analyze_block`);
    * kept columns add to the histograms ``r2_counts`` / ``dnr_counts`` (bin ``int(v * scale)``, clipped, as
      :meth:`Dist.add`) and to the returned sums and counts above ``thresh``; ``keep[j]`` is set.

    The range and distinct-value tracking runs in the dtype of ``tproto`` (float32 for bf16 / fp16 / fp32
    checkpoints, whose values float32 holds exactly: twice the vector width of float64), the sums in float64.

    Returns ``(bad, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr)``; ``bad`` = 1 when a value is NaN
    or Inf (the caller then raises with the checkpoint's step; the other outputs are then incomplete).
    """
    T, n = y.shape
    W = _FUSED_TILE
    # per-column accumulators of a tile: local arrays, so that the compiler vectorises the loops over columns
    u = np.zeros(W, np.uint32)
    f = u.view(np.float32)
    v = np.empty(W)
    vv = np.empty(W, tproto.dtype)  # the values again, in the tracking dtype
    hi = np.empty(W, tproto.dtype)
    lo = np.empty(W, tproto.dtype)
    rec = np.empty(W, tproto.dtype)
    y0 = np.empty(W)
    sz = np.empty(W)
    sxz = np.empty(W)
    szz = np.empty(W)
    ss2 = np.empty(W)
    zt = np.empty(W)
    s1 = np.empty(W, tproto.dtype)  # the first 3 distinct values (NaN: none yet): counts up to k <= 4 exactly
    s2 = np.empty(W, tproto.dtype)
    s3 = np.empty(W, tproto.dtype)
    n_seen = np.empty(W, tproto.dtype)
    state = np.empty(W, np.int64)  # 0: filtered by the range, 1: to count distinct values, 2: kept
    b_r2 = np.empty(W, np.int64)
    b_dnr = np.empty(W, np.int64)
    seen = np.empty(T)
    small = few = never = kept = gt_r2 = gt_dnr = 0
    sum_r2 = sum_dnr = 0.0
    for a in range(0, n, W):
        m = min(W, n - a)
        for t in range(T):
            r = y[t, a : a + m]
            if bf16:  # bf16 -> float32: the 16 bits are the top half of the float32's
                for j in range(m):
                    u[j] = np.uint32(r[j]) << 16
                for j in range(m):
                    vv[j] = f[j]
            else:
                for j in range(m):
                    vv[j] = r[j]
            if t == 0:
                for j in range(m):
                    hi[j] = vv[j]
                    lo[j] = vv[j]
                    rec[j] = 0
                    y0[j] = vv[j]
                    sz[j] = 0.0
                    sxz[j] = 0.0
                    szz[j] = 0.0
                    ss2[j] = 0.0
                    zt[j] = 0.0
                    s1[j] = vv[j]
                    s2[j] = np.nan
                    s3[j] = np.nan
                    n_seen[j] = 1
                continue
            xt = xc[t]
            for j in range(m):  # float64 sums
                z = np.float64(vv[j]) - y0[j]
                sz[j] += z
                sxz[j] += xt * z
                szz[j] += z * z
                d = z - zt[j]
                ss2[j] += d * d
                zt[j] = z
            for j in range(m):  # range and distinct values, in the tracking dtype (its own loop: vectorised)
                vt = vv[j]
                h = hi[j]
                lw = lo[j]
                up = vt > h
                down = vt < lw
                rec[j] += up | down  # strict new running max / min: differs from all earlier values
                hi[j] = vt if up else h
                lo[j] = vt if down else lw
                a2 = s2[j]
                a3 = s3[j]
                new = (vt != s1[j]) & (vt != a2) & (vt != a3)
                c = n_seen[j]
                s2[j] = vt if new & (c == 1) else a2
                s3[j] = vt if new & (c == 2) else a3
                n_seen[j] = c + new
        nbad = 0
        for j in range(m):  # filters (but the exact distinct count), R², drift-to-noise, bins: vectorised
            zm = sz[j] / T
            syy = szz[j] - T * zm * zm
            r2 = sxz[j] * sxz[j] / syy * inv_sxx
            r2 = r2 if syy > 0 and r2 < np.inf else 0.0  # (NaN too)
            r2 = min(max(r2, 0.0), 1.0)
            v[j] = r2
            ss = np.sqrt(ss2[j])
            dnr = abs(zt[j]) / ss
            dnr = dnr if ss > 0 else 0.0
            zt[j] = dnr
            b_r2[j] = min(np.int64(r2 * r2_scale), r2_counts.size - 1)
            b_dnr[j] = min(np.int64(dnr * dnr_scale), dnr_counts.size - 1)
            rng = np.float64(hi[j]) - np.float64(lo[j])
            big = rng > thr
            small += 0 if big else 1
            never += 1 if rng == 0 else 0
            if k <= 4:  # exact: 2 kept, 0 filtered (by the range or too few distinct values)
                state[j] = 2 if big and n_seen[j] >= k else 0
                few += 1 if big and n_seen[j] < k else 0
            else:  # 1: not proven by the records, count exactly below
                state[j] = (2 if rec[j] >= k - 1 else 1) if big else 0
            nbad += 0 if np.isfinite(sz[j] + y0[j]) else 1  # a NaN / Inf anywhere makes Σz (or y_1) non-finite
        if nbad:
            return 1, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr
        for j in range(m):
            if state[j] == 1:  # not proven by the records: count distinct values (stop at k)
                nd = 0
                for t in range(T):
                    if bf16:
                        u[0] = np.uint32(y[t, a + j]) << 16
                        vt = np.float64(f[0])
                    else:
                        vt = np.float64(y[t, a + j])
                    new = True
                    for q in range(nd):
                        if seen[q] == vt:
                            new = False
                            break
                    if new:
                        seen[nd] = vt
                        nd += 1
                        if nd >= k:
                            break
                state[j] = 2 if nd >= k else 0
                few += 0 if nd >= k else 1
        for j in range(m):  # the kept columns into the sums and histograms, in column order
            w = 1 if state[j] == 2 else 0
            keep[a + j] = w == 1
            kept += w
            r2 = v[j] if w else 0.0
            dnr = zt[j] if w else 0.0
            sum_r2 += r2
            sum_dnr += dnr
            gt_r2 += 1 if r2 > thresh else 0
            gt_dnr += 1 if dnr > thresh else 0
            r2_counts[b_r2[j]] += w
            dnr_counts[b_dnr[j]] += w
    return 0, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr


def tracking_proto(dtype) -> np.ndarray:
    """The tracking dtype of :func:`_fused_columns` (as an empty array): float64 only for float64 blocks."""
    return np.empty(0, np.float64 if dtype == np.float64 else np.float32)


def fused_kernel():
    """:func:`_fused_columns` compiled by numba (``cache=True``: compiled once, ~1.5 s, then loaded from the cache)."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        _KERNEL = numba.njit(cache=True, nogil=True, error_model="numpy")(_fused_columns)
    return _KERNEL


@dataclass
class _FusedBlock:
    """All-mode result of one block from :func:`_fused_columns`: counts, sums, and the null of its sample.

    The observed R² and drift-to-noise went straight into the calling thread's histograms (``hist``: counts,
    n and the share above the threshold), so only their sums (``sum_r2``, ``sum_dnr``) travel.
    """

    n: int
    never: int
    small: int
    few: int
    kept: int
    keep: np.ndarray  #: (n,) bool, the kept columns (a work array: valid until the thread's next block)
    sum_r2: float
    sum_dnr: float
    null_r2: np.ndarray
    null_dnr: np.ndarray
    null_n: int


def _as_float(y: np.ndarray) -> np.ndarray:
    """A float32 copy of a block of bf16 bits (uint16); other blocks as they are."""
    if y.dtype == np.uint16:
        return torch.from_numpy(y).view(torch.bfloat16).float().numpy()
    return y


def _null_stats(y: np.ndarray, flat: np.ndarray, key: int, xc: np.ndarray, sxx: float) -> tuple[np.ndarray, np.ndarray]:
    """Sign-flip null R² and drift-to-noise of the (T, m) columns ``y`` (flat indices ``flat``)."""
    d = np.diff(np.asarray(y, dtype=np.float64), axis=0)
    ssn = np.sqrt(np.einsum("tn,tn->n", d, d))
    _flip_inplace(d, flat, key)
    c = np.empty((d.shape[0] + 1, d.shape[1]))
    _cumsum_rows(d, c)
    _, nxy, nyy = _moments(c, xc)
    with np.errstate(divide="ignore", invalid="ignore"):
        null_dnr = np.where(ssn > 0, np.abs(c[-1]) / ssn, 0.0)
    return _r2(nxy, nyy, sxx, np.zeros(d.shape[1], dtype=bool)), null_dnr


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
    ``hist["dnr"]``; the sign-flip null on the kept columns among ``null_cols`` (numpy, a small sample).

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
    js = np.flatnonzero(keep) if null_cols is None else null_cols[keep[null_cols]]
    null_r2, null_dnr = _null_stats(_as_float(y[:, js]), i0 + js, key, xc, sxx)
    return _FusedBlock(
        n=n, never=never, small=small, few=few, kept=kept, keep=keep, sum_r2=sum_r2, sum_dnr=sum_dnr,
        null_r2=null_r2, null_dnr=null_dnr, null_n=int(js.size),
    )  # fmt: skip


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


@dataclass
class WeightLinearity:
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

    def to_json(self) -> dict:
        return _clean(self.summary())

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
        from . import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        s = self.to_json()
        write_json(out / "weights.json", s)
        _write_csv(out / "weights_per_tensor.csv", [t.row() for t in self.tensors], TENSOR_CSV_COLUMNS)
        if self.r2.values is not None:
            _save_npz(
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


def _summary_text(r2: dict, null: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        f"n = {r2['n']}",
        f"median R² {f(r2['median'])} (null {f(null['median'])})",
        f"share > 0.7: {f(r2['share_gt_0.7'])} (null {f(null['share_gt_0.7'])})",
    ]
    if r2["median"] is not None and null["median"] is not None:
        lines.append(f"median - null median: {r2['median'] - null['median']:+.3f}")
    return "\n".join(lines)


def _summary_line(what: str, r2: dict, null: dict, kept: int, total: int) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    return (
        f"{what}: {kept}/{total} kept; median R² {f(r2['median'])}, share > 0.7 {f(r2['share_gt_0.7'])}; "
        f"null median {f(null['median'])}, null share > 0.7 {f(null['share_gt_0.7'])}"
    )


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
    fused = USE_NUMBA and not paper
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
                hist = work["hist"] = (job.name, {"r2": Dist(), "dnr": Dist(hi=h)})
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
            pairs = (("null", blk.null_r2), ("null_dnr", blk.null_dnr))
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
    scatter read per checkpoint in one reader thread instead (:class:`~rlvr_linear.fullscan.SpanLoader`); the next
    blocks loading while the current ones are analysed by ``threads`` threads (default 1: the calling thread;
    more help only as far as numpy releases the GIL, about 1.2x for 2 on 2 cores). Results do not depend on
    ``threads`` or ``io_threads``. ``workers`` processes (default: 2 in all mode from :data:`WORKERS_MIN_PARAMS`
    parameters on, if there are 2 CPUs; else 1) share the blocks, each with its own readers and ``threads``
    analysis threads: about 2x on 2 cores, since all mode is CPU bound. The result is the same whatever
    ``workers`` (per-tensor parts are merged in block order); only which NaN / Inf error comes first may differ.

    Filters (paper, in order): 1. ``max_t w - min_t w > min_abs_change`` — default
    :func:`default_min_abs_change` of the tensor's dtype (1e-4 for bf16); 2. at least ``min(min_unique, T)``
    distinct values. Kept parameters get R² and the drift-to-noise ratio. The sign-flip null (R² and
    drift-to-noise) is computed for the kept parameters of :func:`null_sample` (``null_fraction`` of each
    tensor, at least ``null_min``): ``null_fraction`` defaults to 1 (every kept parameter) in paper mode and to
    :data:`NULL_FRACTION_ALL` in all mode, where the null would otherwise cost as much as the R² itself.
    ``keys`` defaults to every floating ``*.weight`` tensor. Needs >= 3 checkpoints.

    NaN / Inf anywhere in an analysed tensor is an error naming the checkpoint and tensor: all mode sees every
    element anyway; paper mode reads whole tensors to gather its sample and checks every element read
    (``check_finite=False`` skips that and checks the sample only).
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
    for k in keys:
        if k not in r0:
            raise RlvrLinearError(f"{r0.path}: tensor {k!r} is missing from this checkpoint")
    sources = [_RowSource(trajectory.reader(i)) for i in range(T)]
    # plan: tensors in the on-disk order of the first checkpoint, one job per (T, n) block
    order = sorted(range(len(keys)), key=lambda i: sources[0].position(keys[i]))
    jobs: list[_Job] = []
    info: dict[str, dict] = {}
    thresholds: dict[str, float] = {}
    for ki in order:
        name = keys[ki]
        dtype = r0.dtype(name)
        thr = default_min_abs_change(dtype) if min_abs_change is None else float(min_abs_change)
        thresholds[str(dtype).replace("torch.", "")] = thr
        numel = r0.numel(name)
        row_len, spans = _row_chunks(r0.shape(name), chunk)
        items = [s.dtype(name).itemsize for s in sources]
        work_dtype = np.float64 if max(items) > 4 else np.float32
        if not paper and USE_NUMBA and all(s.dtype(name) == torch.bfloat16 for s in sources):
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
    bar = tqdm(total=len(jobs), desc="weights R²", unit="block", disable=not progress)
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


# --------------------------------------------------------------------------------------------------
# Probes and teacher-forced log-probs


@dataclass
class Probe:
    """A fixed prompt/response pair scored by every checkpoint (the response is appended verbatim)."""

    prompt: str
    response: str
    problem_id: str = ""


def read_probes(path: str | Path) -> list[Probe]:
    """Probes from a JSONL file with ``prompt`` and ``response`` fields (``problem_id`` optional)."""
    p = Path(path)
    if not p.is_file():
        raise RlvrLinearError(f"{p}: probe file not found")
    out = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlvrLinearError(f"{p}: line {i + 1} is not JSON ({e})") from None
        if not isinstance(r, dict) or "prompt" not in r or "response" not in r:
            raise RlvrLinearError(f"{p}: line {i + 1} lacks a 'prompt' or 'response' field")
        out.append(Probe(str(r["prompt"]), str(r["response"]), str(r.get("problem_id", ""))))
    if not out:
        raise RlvrLinearError(f"{p}: no probes in the file")
    return out


def write_probes(path: str | Path, probes: Sequence[Probe]) -> None:
    lines = [json.dumps({"prompt": p.prompt, "response": p.response, "problem_id": p.problem_id}) for p in probes]
    write_text(path, "\n".join(lines) + "\n")


def _as_probes(probes: Sequence[Probe] | str | Path) -> list[Probe]:
    if isinstance(probes, (str, Path)):
        return read_probes(probes)
    out = list(probes)
    if not out:
        raise RlvrLinearError("no probes given")
    return out


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def make_probes(
    model_dir: str | Path,
    task,
    n_prompts: int = 32,
    k: int = 4,
    split: str = "validation",
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
) -> list[Probe]:
    """Sample ``k`` responses per prompt from one model (the trajectory's first checkpoint) as probes.

    Prompts are ``task.render(problem, tokenizer)`` for ``n_prompts`` problems of ``split``, tokenized without
    special tokens (the rendered text is what the model sees), left padded; sampling is plain
    ``model.generate(do_sample=True, temperature, top_k=0, top_p=1)`` after ``torch.manual_seed(seed)``.
    Responses are decoded with special tokens skipped; empty ones are dropped.
    """
    from .models import load_model
    from .tasks import get_task

    task = get_task(task)
    dev = _device(device)
    model, tok = load_model(model_dir, dtype=dtype, device=dev, allow_pickle=allow_pickle)
    problems = task.problems(split, n_prompts, seed=seed)
    if max_new_tokens is None:
        chat = bool(getattr(tok, "chat_template", None))
        max_new_tokens = task.max_new_tokens(chat) if hasattr(task, "max_new_tokens") else 64
    torch.manual_seed(seed)
    probes: list[Probe] = []
    tok.padding_side = "left"
    for s in range(0, len(problems), batch_size):
        chunk = problems[s : s + batch_size]
        prompts = [task.render(p, tok) for p in chunk]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for j, text in enumerate(texts):
            if text:
                p = chunk[j // k]
                probes.append(Probe(prompts[j // k], text, p.id))
    if not probes:
        raise RlvrLinearError(f"{model_dir}: every sampled response was empty; no probes")
    return probes


def encode_probes(tokenizer, probes: Sequence[Probe]) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, response_ids)`` per probe; both without special tokens (prompt text is pre-rendered)."""
    out = []
    for i, p in enumerate(probes):
        pi = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        ri = tokenizer(p.response, add_special_tokens=False)["input_ids"]
        if not pi:
            raise RlvrLinearError(f"probe {i}: the prompt is empty, so the first response token has no context")
        out.append((list(pi), list(ri)))
    return out


def _batches(encoded: list[tuple[list[int], list[int]]], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _left_pad(encoded, batch: list[int], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    L = max(len(encoded[i][0]) + len(encoded[i][1]) for i in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for row, i in enumerate(batch):
        seq = encoded[i][0] + encoded[i][1]
        ids[row, L - len(seq) :] = torch.tensor(seq)
        mask[row, L - len(seq) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.no_grad()
def score_logprobs(
    model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8, pad_id: int = 0
) -> list[np.ndarray]:
    """Teacher-forced ``log p(y_i | prompt, y_<i) = log_softmax(logits[i-1])[y_i]`` for every response token.

    Batches are left padded (sorted by length) with ``position_ids = cumsum(mask) - 1``; only the logits of
    the last ``max_response + 1`` positions are materialised (``logits_to_keep``). Returns one float32
    array per probe, in input order.
    """
    dev = next(model.parameters()).device
    out: list[np.ndarray | None] = [None] * len(encoded)
    for batch in _batches(encoded, batch_size):
        ids, mask, pos = _left_pad(encoded, batch, pad_id, dev)
        K = max(len(encoded[i][1]) for i in batch) + 1
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=K).logits[:, -K:]
        logits = logits[:, :-1].float()  # position j predicts token j+1 (kept window is L-K .. L-1)
        tgt = ids[:, -(K - 1) :] if K > 1 else ids[:, :0]
        lp = (logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)).cpu().numpy()
        for row, i in enumerate(batch):
            R = len(encoded[i][1])
            out[i] = lp[row, K - 1 - R :].astype(np.float32) if R else np.zeros(0, np.float32)
    return out  # type: ignore[return-value]


def _load_for_scoring(path, device, dtype, allow_pickle: bool = False):
    from .models import load_model

    model, _ = load_model(path, dtype=dtype, device=device, allow_pickle=allow_pickle)
    return model


def _trajectory_tokenizer(trajectory: Trajectory):
    """The tokenizer of the first checkpoint (verl FSDP shards: the one in ``huggingface/`` next to them)."""
    from .tokenizer import load_tokenizer
    from .verl_shards import config_dir

    return load_tokenizer(config_dir(trajectory.paths[0]))


def score_trajectory(
    trajectory: Trajectory,
    probes: Sequence[Probe],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> tuple[np.ndarray, list[tuple[list[int], list[int]]], Any]:
    """(T, N) float32 log-probs of every response token under every checkpoint, the encodings, the tokenizer."""
    dev = _device(device)
    tok = _trajectory_tokenizer(trajectory)
    enc = encode_probes(tok, probes)
    rows = []
    for path in tqdm(trajectory.paths, desc="scoring checkpoints", disable=not progress):
        model = _load_for_scoring(path, dev, dtype, trajectory.allow_pickle)
        lp = score_logprobs(model, enc, batch_size=batch_size, pad_id=tok.pad_token_id or 0)
        rows.append(np.concatenate(lp) if lp else np.zeros(0, np.float32))
        del model
    return np.stack(rows), enc, tok


@dataclass
class LogprobLinearity:
    """Result of :func:`analyze_logprobs`."""

    steps: list[int]
    logp: np.ndarray  #: (T, N) float32, every response token of every probe
    token_ids: np.ndarray  #: (N,)
    probe_index: np.ndarray  #: (N,)
    position: np.ndarray  #: (N,) index of the token within its response
    sampled: np.ndarray  #: indices of eligible positions that were analysed
    fit: LinearFit  #: on the sampled positions
    null_r2: np.ndarray
    dnr: np.ndarray
    probes: list[Probe]
    config: dict
    examples: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        r2, null = Dist(keep=True), Dist(keep=True)
        r2.add(self.fit.r2)
        null.add(self.null_r2)
        change = self.logp[-1].astype(np.float64) - self.logp[0]
        s_r2, s_null = r2.summary(), null.summary()
        dnr = Dist(hi=math.sqrt(len(self.steps) - 1), keep=True)
        dnr.add(self.dnr)
        return {
            "kind": "logprobs",
            "steps": self.steps,
            "n_checkpoints": len(self.steps),
            "config": self.config,
            "counts": {
                "probes": len(self.probes),
                "tokens": int(self.logp.shape[1]),
                "eligible": int((np.abs(change) > self.config["min_change"]).sum()),
                "sampled": int(self.sampled.size),
                "constant": int((self.logp.max(0) == self.logp.min(0)).sum()),
            },
            "r2": s_r2,
            "null": s_null,
            "above_null": _above_null(s_r2, s_null),
            "drift_to_noise": dnr.summary(share=False),
            "mean_abs_change": float(np.abs(change).mean()) if change.size else math.nan,
        }

    def to_json(self) -> dict:
        return _clean(self.summary())

    def save(self, out_dir: str | Path) -> None:
        from . import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        s = self.to_json()
        write_json(out / "logprobs.json", s)
        write_probes(out / "probes.jsonl", self.probes)
        _save_npz(
            out / "logprobs.npz",
            steps=np.asarray(self.steps),
            logp=self.logp,
            token_ids=self.token_ids,
            probe_index=self.probe_index,
            position=self.position,
            sampled=self.sampled,
            r2=self.fit.r2,
            null_r2=self.null_r2,
            slope=self.fit.slope,
            intercept=self.fit.intercept,
        )
        plots.plot_r2_histogram(
            out / "logprobs_r2_hist.png",
            self.fit.r2,
            self.null_r2,
            title=f"Teacher-forced token log-prob R² ({len(self.steps)} checkpoints)",
            summary=_summary_text(s["r2"], s["null"]),
        )
        plots.plot_trajectories(
            out / "logprobs_examples.png",
            self.steps,
            self.examples,
            title="Token log-prob trajectories (teacher forced)",
            ylabel="log p(token)",
        )

    def summary_line(self) -> str:
        s = self.to_json()
        return _summary_line("logprobs", s["r2"], s["null"], s["counts"]["sampled"], s["counts"]["tokens"])


def analyze_logprobs(
    trajectory: Trajectory,
    probes: Sequence[Probe] | str | Path,
    batch_size: int = 8,
    min_change: float = MIN_LOGPROB_CHANGE,
    max_positions: int = MAX_POSITIONS,
    seed: int = PAPER_SEED,
    n_examples: int = 9,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> LogprobLinearity:
    """Per-token R² of teacher-forced log-probs vs step (paper §1.2).

    Every checkpoint scores the same probes (:func:`score_logprobs`). Positions with
    ``|logp_last - logp_first| > min_change`` are eligible; up to ``max_positions`` of them are drawn
    uniformly (``numpy.random.default_rng(seed)``). Null baseline and drift-to-noise as for weights.
    """
    trajectory.validate(min_checkpoints=3)
    probes = _as_probes(probes)
    logp, enc, tok = score_trajectory(trajectory, probes, batch_size, device, dtype, progress)
    _check_finite(logp, trajectory.steps, "log-probs")
    lens = [len(r) for _, r in enc]
    token_ids = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in enc]) if enc else np.zeros(0, np.int64)
    probe_index = np.repeat(np.arange(len(enc)), lens)
    position = np.concatenate([np.arange(n) for n in lens]) if lens else np.zeros(0, np.int64)
    x = np.asarray(trajectory.steps, dtype=np.float64)
    change = logp[-1].astype(np.float64) - logp[0]
    eligible = np.flatnonzero(np.abs(change) > min_change)
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(eligible, size=min(max_positions, eligible.size), replace=False))
    ys = logp[:, sampled].astype(np.float64)
    fit = _fit_tn(ys, x)
    null = _null_tn(ys, sampled, stable_key("logprobs", seed))
    # examples: tokens with the largest change among the sampled ones
    examples = []
    if sampled.size:
        top = np.argsort(-np.abs(change[sampled]))[: max(n_examples * 10, 1)]
        pick = np.sort(rng.choice(top, size=min(n_examples, top.size), replace=False))
        for j in pick:
            g = int(sampled[j])
            text = tok.decode([int(token_ids[g])])
            examples.append(
                {
                    "label": f"{text!r} (probe {probe_index[g]}, pos {position[g]})  "
                    f"Δ={change[g]:+.2f} R²={fit.r2[j]:.3f}",
                    "values": ys[:, j].tolist(),
                    "slope": float(fit.slope[j]),
                    "intercept": float(fit.intercept[j]),
                    "r2": float(fit.r2[j]),
                    "token": text,
                }
            )
    config = {
        "min_change": min_change,
        "max_positions": max_positions,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return LogprobLinearity(
        steps=trajectory.steps,
        logp=logp.astype(np.float32),
        token_ids=token_ids,
        probe_index=probe_index,
        position=position,
        sampled=sampled,
        fit=fit,
        null_r2=_fit_tn(null, x).r2,
        dnr=_dnr_tn(ys),
        probes=list(probes),
        config=config,
        examples=examples,
    )


# --------------------------------------------------------------------------------------------------
# Activations


@torch.no_grad()
def collect_activations(
    model,
    encoded: list[tuple[list[int], list[int]]],
    token: np.ndarray,
    channel: np.ndarray,
    batch_size: int = 8,
    pad_id: int = 0,
) -> np.ndarray:
    """Residual-stream values ``hidden_states[l][response token, channel]`` for the given pairs.

    ``token`` indexes the concatenated response tokens of all probes; ``hidden_states`` is what HF returns
    with ``output_hidden_states=True`` (embeddings, then after each block). Returns (layers + 1, n) float32;
    only the sampled entries are kept.
    """
    dev = next(model.parameters()).device
    lens = np.array([len(r) for _, r in encoded])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    probe = np.searchsorted(np.cumsum(lens), token, side="right")
    offset = token - starts[probe]
    out: np.ndarray | None = None
    row_of = np.full(len(encoded), -1)
    for batch in _batches(encoded, batch_size):
        ids, mask, pos = _left_pad(encoded, batch, pad_id, dev)
        L = ids.shape[1]
        hs = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        if out is None:
            out = np.zeros((len(hs), token.size), dtype=np.float32)
        row_of[:] = -1
        row_of[batch] = np.arange(len(batch))
        sel = np.flatnonzero(row_of[probe] >= 0)
        if sel.size == 0:
            continue
        rows = torch.as_tensor(row_of[probe[sel]], device=dev)
        cols = torch.as_tensor(L - lens[probe[sel]] + offset[sel], device=dev)
        ch = torch.as_tensor(channel[sel], device=dev)
        for layer, h in enumerate(hs):
            out[layer, sel] = h[rows, cols, ch].float().cpu().numpy()
    return out if out is not None else np.zeros((0, token.size), np.float32)


@dataclass
class ActivationLinearity:
    """Result of :func:`analyze_activations`."""

    steps: list[int]
    values: np.ndarray  #: (T, layers + 1, n) float32 sampled activations
    token: np.ndarray  #: (n,) index into the concatenated response tokens
    channel: np.ndarray  #: (n,) hidden channel
    layers: list[dict]  #: per hidden-state index: counts, r2 and null summaries
    r2: Dist
    null: Dist
    config: dict

    def summary(self) -> dict:
        s_r2, s_null = self.r2.summary(), self.null.summary()
        return {
            "kind": "activations",
            "steps": self.steps,
            "n_checkpoints": len(self.steps),
            "config": self.config,
            "r2": s_r2,
            "null": s_null,
            "above_null": _above_null(s_r2, s_null),
            "layers": self.layers,
        }

    def to_json(self) -> dict:
        return _clean(self.summary())

    def save(self, out_dir: str | Path) -> None:
        from . import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        s = self.to_json()
        write_json(out / "activations.json", s)
        _save_npz(
            out / "activations.npz", steps=np.asarray(self.steps), values=self.values, token=self.token,
            channel=self.channel,
        )  # fmt: skip
        med = [np.nan if x["r2"]["median"] is None else x["r2"]["median"] for x in s["layers"]]
        q1 = [np.nan if x["r2"]["q1"] is None else x["r2"]["q1"] for x in s["layers"]]
        q3 = [np.nan if x["r2"]["q3"] is None else x["r2"]["q3"] for x in s["layers"]]
        nmed = [np.nan if x["null"]["median"] is None else x["null"]["median"] for x in s["layers"]]
        plots.plot_layer_medians(
            out / "activations_per_layer.png",
            [x["label"] for x in s["layers"]],
            med,
            nmed,
            q1=q1,
            q3=q3,
            title="Residual-stream activation R² per layer",
        )
        plots.plot_r2_histogram(
            out / "activations_r2_hist.png",
            self.r2.array(),
            self.null.array(),
            title="Activation R² (all layers)",
            summary=_summary_text(s["r2"], s["null"]),
        )

    def summary_line(self) -> str:
        s = self.to_json()
        total = self.values.shape[1] * self.values.shape[2]
        return _summary_line("activations", s["r2"], s["null"], s["r2"]["n"], total)


def analyze_activations(
    trajectory: Trajectory,
    probes: Sequence[Probe] | str | Path,
    pairs_per_layer: int = 20_000,
    batch_size: int = 8,
    min_abs_change: float = 0.0,
    seed: int = PAPER_SEED,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ActivationLinearity:
    """R² of residual-stream activations vs step on the probes' response tokens.

    Up to ``pairs_per_layer`` (response token, channel) pairs are drawn once (seeded) and read at every
    hidden state of every checkpoint (the same pairs for all layers; memory T x layers x pairs floats).
    Pairs whose range is ``<= min_abs_change`` (default: exactly constant) are dropped and counted.
    """
    trajectory.validate(min_checkpoints=3)
    probes = _as_probes(probes)
    dev = _device(device)
    tok = _trajectory_tokenizer(trajectory)
    enc = encode_probes(tok, probes)
    n_tok = sum(len(r) for _, r in enc)
    if n_tok == 0:
        raise RlvrLinearError("the probes have no response tokens")
    vals, token, channel = [], None, None
    for path in tqdm(trajectory.paths, desc="activations", disable=not progress):
        model = _load_for_scoring(path, dev, dtype, trajectory.allow_pickle)
        if token is None:
            hidden = int(model.config.hidden_size)
            flat = sample_indices(n_tok * hidden, min(pairs_per_layer, n_tok * hidden), seed)
            token, channel = flat // hidden, flat % hidden
        vals.append(collect_activations(model, enc, token, channel, batch_size, tok.pad_token_id or 0))
        del model
    values = np.stack(vals)  # (T, layers+1, n)
    _check_finite(values.reshape(values.shape[0], -1), trajectory.steps, "activations")
    x = np.asarray(trajectory.steps, dtype=np.float64)
    r2_all, null_all = Dist(keep=True), Dist(keep=True)
    layers = []
    idx = np.arange(token.size)
    for layer in range(values.shape[1]):
        y = values[:, layer].astype(np.float64)
        keep = (y.max(0) - y.min(0)) > min_abs_change
        yk = y[:, keep]
        fit = _fit_tn(yk, x)
        null_r2 = _fit_tn(_null_tn(yk, idx[keep], stable_key(f"activations.{layer}", seed)), x).r2
        d_r2, d_null = Dist(keep=True), Dist(keep=True)
        d_r2.add(fit.r2)
        d_null.add(null_r2)
        r2_all.merge(d_r2)
        null_all.merge(d_null)
        label = "embeddings" if layer == 0 else f"layer {layer - 1}"
        layers.append(
            {
                "hidden_state": layer,
                "label": label,
                "pairs": int(token.size),
                "kept": int(keep.sum()),
                "filtered_constant": int((~keep).sum()),
                "r2": d_r2.summary(),
                "null": d_null.summary(),
            }
        )
    config = {"pairs_per_layer": pairs_per_layer, "seed": seed, "min_abs_change": min_abs_change, "tokens": n_tok}
    return ActivationLinearity(trajectory.steps, values, token, channel, layers, r2_all, null_all, config)


# --------------------------------------------------------------------------------------------------
# Forecast


@dataclass
class ForecastResult:
    """Result of :func:`forecast`.

    For every later step ``s``, with ``Ŵ(s)`` the per-element OLS line fitted on the checkpoints with step
    ``<= fit_until`` and ``W(f)`` the last of them (the naive "no further change" predictor):

        rel_err(s)        = ||Ŵ(s) - W(s)|| / ||W(s)||
        naive_rel_err(s)  = ||W(f) - W(s)|| / ||W(s)||
        ratio_to_naive(s) = ||Ŵ(s) - W(s)|| / ||W(f) - W(s)||   (< 1: the line beats "no change")

    norms over one tensor (per tensor) or over all tensors (overall). Log-probs: mean absolute error of
    predicted vs true log-probs over all probe tokens, next to the naive MAE.
    """

    fit_steps: list[int]
    later_steps: list[int]
    tensors: list[dict]  #: name, numel, err2, naive2, true2 (lists over later steps)
    logprobs: dict | None = None

    @staticmethod
    def _metrics(err2, naive2, true2) -> dict:
        err, naive, true = (np.sqrt(np.asarray(v, dtype=np.float64)) for v in (err2, naive2, true2))
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "rel_err": (err / true).tolist(),
                "naive_rel_err": (naive / true).tolist(),
                "ratio_to_naive": (err / naive).tolist(),
            }

    def overall(self) -> dict:
        tot = {k: np.sum([t[k] for t in self.tensors], axis=0) for k in ("err2", "naive2", "true2")}
        return self._metrics(tot["err2"], tot["naive2"], tot["true2"])

    def summary(self) -> dict:
        return {
            "kind": "forecast",
            "fit_steps": self.fit_steps,
            "later_steps": self.later_steps,
            "definitions": {
                "rel_err": "||pred - true|| / ||true||, pred = OLS line fitted on fit_steps",
                "naive_rel_err": "||W(fit_last) - true|| / ||true|| (no further change)",
                "ratio_to_naive": "||pred - true|| / ||W(fit_last) - true||",
                "logprob_mae": "mean |pred - true| over all response tokens; naive uses logp(fit_last)",
            },
            "overall": self.overall(),
            "tensors": [
                {"name": t["name"], "numel": t["numel"], **self._metrics(t["err2"], t["naive2"], t["true2"])}
                for t in self.tensors
            ],
            "logprobs": self.logprobs,
        }

    def to_json(self) -> dict:
        return _clean(self.summary())

    def save(self, out_dir: str | Path) -> None:
        from . import plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        s = self.to_json()
        write_json(out / "forecast.json", s)
        rows = []
        for t in s["tensors"]:
            for j, step in enumerate(self.later_steps):
                rows.append(
                    {
                        "name": t["name"],
                        "step": step,
                        "rel_err": t["rel_err"][j],
                        "naive_rel_err": t["naive_rel_err"][j],
                        "ratio_to_naive": t["ratio_to_naive"][j],
                    }
                )
        cols = ["name", "step", "rel_err", "naive_rel_err", "ratio_to_naive"]
        _write_csv(out / "forecast_per_tensor.csv", rows, cols)
        panels = [
            {
                "ours": s["overall"]["rel_err"],
                "naive": s["overall"]["naive_rel_err"],
                "ylabel": "relative L2 error of weights",
                "title": "Weights",
            }
        ]
        if self.logprobs:
            panels.append(
                {"ours": self.logprobs["mae"], "naive": self.logprobs["naive_mae"], "ylabel": "MAE of log-probs",
                 "title": "Teacher-forced log-probs"}
            )  # fmt: skip
        plots.plot_forecast_errors(out / "forecast.png", self.later_steps, panels, fit_until=self.fit_steps[-1])

    def summary_line(self) -> str:
        o = self.overall()
        parts = [
            f"step {s}: rel err {e:.3g} (naive {n:.3g})"
            for s, e, n in zip(self.later_steps, o["rel_err"], o["naive_rel_err"])
        ]
        line = "forecast from steps " + ",".join(map(str, self.fit_steps)) + ": " + "; ".join(parts[:4])
        if len(parts) > 4:
            line += f"; ... ({len(parts)} steps)"
        return line


def split_fit(steps: Sequence[int], fit_until_step: int) -> int:
    """Number of checkpoints used for the fit (step <= ``fit_until_step``); errors unless >= 2 and < len(steps)."""
    F = sum(1 for s in steps if s <= fit_until_step)
    if F < 2:
        raise RlvrLinearError(
            f"forecast needs at least 2 checkpoints with step <= {fit_until_step} to fit a line, "
            f"found {F} (steps: {list(steps)})"
        )
    if F == len(steps):
        raise RlvrLinearError(f"no checkpoint after step {fit_until_step} to forecast (steps: {list(steps)})")
    return F


def forecast(
    trajectory: Trajectory,
    fit_until_step: int,
    probes: Sequence[Probe] | str | Path | None = None,
    chunk: int = 1 << 16,
    keys: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ForecastResult:
    """Fit a line per scalar on the checkpoints with step ``<= fit_until_step`` and predict every later one.

    Weights: every floating tensor (``keys`` to restrict), streamed ``chunk`` elements (whole rows) at a
    time from all checkpoints. Log-probs (when ``probes`` are given): every response token. See
    :class:`ForecastResult` for the error definitions.
    """
    trajectory.validate(min_checkpoints=3)
    steps = trajectory.steps
    F = split_fit(steps, fit_until_step)
    x = np.asarray(steps, dtype=np.float64)
    xf, xl = x[:F], x[F:]
    keys = list(keys) if keys is not None else float_keys(trajectory)
    r0 = trajectory.reader(0)
    sources = [_RowSource(trajectory.reader(i)) for i in range(len(steps))]
    tensors = []
    for name in tqdm(keys, desc="forecast", disable=not progress):
        row_len, spans = _row_chunks(r0.shape(name), chunk)
        acc = {k: np.zeros(len(xl)) for k in ("err2", "naive2", "true2")}
        for a, b in spans:
            y = _read_rows(sources, name, a, b, (b - a) * row_len)
            _check_finite(y, steps, name)
            fit = _fit_tn(y[:F], xf)
            pred = fit.intercept[None, :] + xl[:, None] * fit.slope[None, :]
            true = y[F:]
            acc["err2"] += ((pred - true) ** 2).sum(axis=1)
            acc["naive2"] += ((y[F - 1][None, :] - true) ** 2).sum(axis=1)
            acc["true2"] += (true**2).sum(axis=1)
        for src in sources:
            src.close()
        tensors.append({"name": name, "numel": r0.numel(name), **{k: v.tolist() for k, v in acc.items()}})
    lp_res = None
    if probes is not None:
        logp, _, _ = score_trajectory(trajectory, _as_probes(probes), batch_size, device, dtype, progress)
        _check_finite(logp, steps, "log-probs")
        err, naive = np.zeros(len(xl)), np.zeros(len(xl))
        for a in range(0, logp.shape[1], chunk):  # float64 work arrays of chunk tokens only
            y = logp[:, a : a + chunk].astype(np.float64)
            fit = _fit_tn(y[:F], xf)
            pred = fit.intercept[None, :] + xl[:, None] * fit.slope[None, :]
            err += np.abs(pred - y[F:]).sum(axis=1)
            naive += np.abs(y[F - 1][None, :] - y[F:]).sum(axis=1)
        n = max(logp.shape[1], 1)
        lp_res = {"tokens": int(logp.shape[1]), "mae": (err / n).tolist(), "naive_mae": (naive / n).tolist()}
    return ForecastResult(steps[:F], steps[F:], tensors, lp_res)
