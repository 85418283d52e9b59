"""R² maths, the sign-flip null, drift-to-noise, distribution summaries and the small output helpers."""

from __future__ import annotations

import csv
import io
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RlvrLinearError
from ..io import write_text

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


def _r(x: float, nd: int = 4) -> float:
    return round(x, nd) if isinstance(x, float) and math.isfinite(x) else x


def _above_null(obs: dict, null: dict) -> dict:
    return {k: obs[k] - null[k] for k in ("median", "mean", "share_gt_0.7")}


class JsonResult:
    """What every linearity result shares: ``to_json()`` (its ``summary()`` made JSON-safe) and the start of
    ``save()`` (:meth:`_save_json`: the folder made, ``NAME.json`` written atomically)."""

    def summary(self) -> dict:  # pragma: no cover - every result defines it
        raise NotImplementedError

    def to_json(self) -> dict:
        from ..io import jsonable

        return jsonable(self.summary())

    def _save_json(self, out_dir: str | Path, name: str) -> tuple[Path, dict]:
        """Make ``out_dir``, write ``out_dir/NAME.json`` and return the folder and the JSON object."""
        from ..io import write_json

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        s = self.to_json()
        write_json(out / f"{name}.json", s)
        return out, s


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for k, v in r.items()})
    write_text(path, buf.getvalue())


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


def cluster_median_ci(values: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict:  # fmt: skip
    """Median of ``values`` with a cluster-bootstrap CI: whole groups (tensors of a weight sample, probes of the
    log-prob positions) are resampled with replacement, since values inside a group are not independent. NaN values
    are dropped first. Returns ``{"median", "lo", "hi", "groups", "level"}``."""
    v, g = np.asarray(values, float).ravel(), np.asarray(groups).ravel()
    if v.shape != g.shape:
        raise RlvrLinearError(f"cluster_median_ci: {v.shape[0]} values but {g.shape[0]} group labels")
    keep = np.isfinite(v)
    v, g = v[keep], g[keep]
    if len(v) == 0:
        return {"median": None, "lo": None, "hi": None, "groups": 0, "level": level}
    labels, inv = np.unique(g, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    members = np.split(v[order], np.cumsum(np.bincount(inv))[:-1])
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        pick = rng.integers(0, len(members), size=len(members))
        boots[i] = np.median(np.concatenate([members[j] for j in pick]))
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"median": float(np.median(v)), "lo": float(lo), "hi": float(hi), "groups": len(labels), "level": level}
