"""The numba kernels of the all-mode fused path: filters, R², drift-to-noise and histograms in one pass over a
block's columns (:func:`_fused_columns`), and the sign-flip null of its null sample (:func:`_null_columns`)."""

from __future__ import annotations

import numpy as np

from .stats import _splitmix64

_KERNEL = _NULL_KERNEL = None

#: columns per tile of :func:`_fused_columns` (its per-column accumulators stay in L1)
_FUSED_TILE = 512
#: tracking key that no bf16 value maps to (:func:`_fused_columns`: "no value yet")
_NO_KEY = -32768


def _key(x):
    """Tracking key of one stored element: bf16 bits (uint16) -> int16 ``b`` if ``b < 2^15`` else ``2^15 - b``
    (orders like the values, equal exactly when the values are: -0 and +0 both give 0); a float as it is."""
    if isinstance(x, np.uint16):
        b = int(x)
        return np.int16(b if b < 32768 else 32768 - b)
    return x


def _value(x):
    """The float64 value of one stored element (bf16 bits: ``bits << 16`` is the float32)."""
    if isinstance(x, np.uint16):
        return np.float64(np.uint32(int(x) << 16).view(np.float32))
    return np.float64(x)


def _key_value(kk):
    """The float64 value of a key of :func:`_key` (an int16 key of a zero gives +0)."""
    if isinstance(kk, np.int16):
        b = int(kk)
        return _value(np.uint16(b if b >= 0 else 32768 - b))
    return np.float64(kk)


def _no_key(proto):
    """A key no element maps to (as ``proto``'s dtype): NaN for floats, -2^15 for int16 keys."""
    return np.int16(_NO_KEY) if proto.dtype == np.int16 else proto.dtype.type(np.nan)


def _mix64(x):
    """SplitMix64 of one uint64 (:func:`~rlvr_linear.linearity.stats._splitmix64` on a scalar)."""
    with np.errstate(over="ignore"):
        return _splitmix64(np.array([x], dtype=np.uint64))[0]


def _register_overloads(numba) -> None:
    """Compiled versions of :func:`_key`, :func:`_value`, :func:`_key_value`, :func:`_no_key`, chosen by type
    when :func:`_fused_columns` is compiled (one specialisation per block dtype, no branch in its loops)."""
    from numba import types
    from numba.extending import overload

    @overload(_key)
    def _ov_key(x):
        if x == types.uint16:

            def impl(x):
                b = np.int32(x)
                return np.int16(b if b < 32768 else 32768 - b)

            return impl
        return lambda x: x

    @overload(_value)
    def _ov_value(x):
        if x == types.uint16:
            return lambda x: np.float64(np.uint32(np.uint32(x) << 16).view(np.float32))
        return lambda x: np.float64(x)

    @overload(_key_value)
    def _ov_key_value(kk):
        if kk == types.int16:

            def impl(kk):
                b = np.int32(kk)
                return np.float64(np.uint32(np.uint32(b if b >= 0 else 32768 - b) << 16).view(np.float32))

            return impl
        return lambda kk: np.float64(kk)

    @overload(_no_key)
    def _ov_no_key(proto):
        if proto.dtype == types.int16:
            return lambda proto: np.int16(_NO_KEY)
        return lambda proto: np.nan

    @overload(_mix64)
    def _ov_mix64(x):
        def impl(x):  # uint64 throughout (wrapping products), as the numpy version
            z = np.uint64(x) + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

        return impl


def _fused_columns(y, bf16, tproto, xc, inv_sxx, thr, k, r2_counts, r2_scale, dnr_counts, dnr_scale, thresh, keep):
    """One pass over the columns of a (T, n) block ``y`` (float32 / float64 values, or bf16 bits as uint16; ``bf16``
    says which, and must agree with the dtype, which chooses the compiled path); per column, over T:

    * range filter ``max - min > thr`` (``never``: max == min), then at least ``k`` distinct values (the first
      3 distinct values kept while ``k <= 4``; for larger ``k``, new running maxima / minima prove distinct
      values and the columns they do not prove are counted exactly, stopped at ``k``);
    * on ``z_t = y_t - y_1`` in float64: ``z̄ = Σ z / T``, ``S_xz = Σ xc_t z_t``, ``S_zz = Σ z² - T z̄²``,
      ``R² = clip(S_xz² / S_zz / S_xx, 0, 1)`` (0 when ``S_zz <= 0``), drift-to-noise ``|z_T| / sqrt(Σ d²)``
      with ``d_t = z_{t+1} - z_t`` (the formulas of :func:`_analyze_block`);
    * kept columns add to the histograms ``r2_counts`` / ``dnr_counts`` (bin ``int(v * scale)``, clipped, as
      :meth:`Dist.add`) and to the returned sums and counts above ``thresh``; ``keep[j]`` is set.

    Range and distinct values are tracked on *keys* of the dtype of ``tproto`` (:func:`tracking_proto`): the
    values themselves for float32 / float64 blocks; for bf16 the int16 ``b`` if ``b < 2^15`` else ``2^15 - b``
    of the bits ``b``, which orders like the values and is equal exactly when the values are (``-0`` and ``+0``
    both give 0; NaN bits are caught by the sums), so no conversion pass and twice the vector width of
    float32. The float64 sums read the bits directly (``bits << 16`` is the float32). Each row is one loop
    for the sums and one for the keys (each vectorised at its own width; the key loop tracks only what ``k``
    needs). Every count and sum is the same as the float32 tracking's, bit for bit.

    Returns ``(bad, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr)``; ``bad`` = 1 when a value is NaN
    or Inf (the caller then raises with the checkpoint's step; the other outputs are then incomplete).
    """
    T, n = y.shape
    W = _FUSED_TILE
    kd = tproto.dtype
    none = _no_key(tproto)  # "no value yet": equal to no key
    cap = min(k if k <= 4 else k - 1, 32767)  # counts saturate where they prove enough (int16: no overflow)
    # per-column accumulators of a tile: local arrays, so that the compiler vectorises the loops over columns
    v = np.empty(W)
    hi = np.empty(W, kd)
    lo = np.empty(W, kd)
    s1 = np.empty(W, kd)  # the first 3 distinct keys (none: not yet), k <= 4
    s2 = np.empty(W, kd)
    s3 = np.empty(W, kd)
    cnt = np.empty(W, kd)  # k <= 4: distinct keys seen (up to k); else: new running maxima / minima (up to k - 1)
    y0 = np.empty(W)
    sz = np.empty(W)
    sxz = np.empty(W)
    szz = np.empty(W)
    ss2 = np.empty(W)
    zt = np.empty(W)
    state = np.empty(W, np.int64)  # 0: filtered by the range, 1: to count distinct values, 2: kept
    b_r2 = np.empty(W, np.int64)
    b_dnr = np.empty(W, np.int64)
    seen = np.empty(T)
    small = few = never = kept = gt_r2 = gt_dnr = 0
    sum_r2 = sum_dnr = 0.0
    for a in range(0, n, W):
        m = min(W, n - a)
        r = y[0, a : a + m]
        r1 = y[min(1, T - 1), a : a + m]  # the first two rows at once (T = 1: row 0 again, z = 0)
        x1 = xc[min(1, T - 1)]
        for j in range(m):
            v0 = _value(r[j])
            z = _value(r1[j]) - v0
            y0[j] = v0
            sz[j] = z  # (= 0 + z but for the sign of a zero, which no output depends on)
            sxz[j] = x1 * z
            szz[j] = z * z
            ss2[j] = z * z
            zt[j] = z
        for j in range(m):
            k0 = _key(r[j])
            k1 = _key(r1[j])
            hi[j] = k1 if k1 > k0 else k0
            lo[j] = k1 if k1 < k0 else k0
            if k <= 4:
                new = (k1 != k0) & (1 < cap)
                s1[j] = k0
                s2[j] = k1 if new else none
                s3[j] = none
                cnt[j] = 1 + new
            else:
                cnt[j] = k1 != k0
        for t in range(2, T):
            r = y[t, a : a + m]
            xt = xc[t]
            for j in range(m):  # float64 sums
                z = _value(r[j]) - y0[j]
                sz[j] += z
                sxz[j] += xt * z
                szz[j] += z * z
                d = z - zt[j]
                ss2[j] += d * d
                zt[j] = z
            if k <= 4:
                for j in range(m):  # range and the first distinct keys
                    vt = _key(r[j])
                    h = hi[j]
                    lw = lo[j]
                    hi[j] = vt if vt > h else h
                    lo[j] = vt if vt < lw else lw
                    a2 = s2[j]
                    a3 = s3[j]
                    c = cnt[j]
                    new = (vt != s1[j]) & (vt != a2) & (vt != a3) & (c < cap)
                    s2[j] = vt if new & (c == 1) else a2
                    s3[j] = vt if new & (c == 2) else a3
                    cnt[j] = c + new
            else:
                for j in range(m):  # range and new running maxima / minima (each differs from all earlier keys)
                    vt = _key(r[j])
                    h = hi[j]
                    lw = lo[j]
                    up = vt > h
                    down = vt < lw
                    c = cnt[j]
                    cnt[j] = c + ((up | down) & (c < cap))
                    hi[j] = vt if up else h
                    lo[j] = vt if down else lw
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
            rng = _key_value(hi[j]) - _key_value(lo[j])  # (a zero key gives +0: the same range)
            big = rng > thr
            small += 0 if big else 1
            never += 1 if rng == 0 else 0
            if k <= 4:  # exact: 2 kept, 0 filtered (by the range or too few distinct values)
                st = 2 if big and cnt[j] >= k else 0
                few += 1 if big and cnt[j] < k else 0
            else:  # 1: not proven by the records (the first key and cnt new maxima / minima), count exactly below
                st = (2 if cnt[j] >= k - 1 else 1) if big else 0
            state[j] = st
            w = 1 if st != 0 else 0  # (a column of state 1 taken back below if it has too few distinct values)
            keep[a + j] = w == 1
            kept += w
            r2 = r2 if w else 0.0
            dnr = dnr if w else 0.0
            v[j] = r2
            zt[j] = dnr
            gt_r2 += 1 if r2 > thresh else 0
            gt_dnr += 1 if dnr > thresh else 0
            nbad += 0 if np.isfinite(sz[j] + y0[j]) else 1  # a NaN / Inf anywhere makes Σz (or y_1) non-finite
        if nbad:
            return 1, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr
        for j in range(m if k > 4 else 0):
            if state[j] == 1:  # not proven by the records: count distinct keys (stop at k)
                nd = 0
                for t in range(T):
                    vt = np.float64(_key(y[t, a + j]))
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
                if nd < k:  # taken back
                    state[j] = 0
                    few += 1
                    keep[a + j] = False
                    kept -= 1
                    gt_r2 -= 1 if v[j] > thresh else 0
                    gt_dnr -= 1 if zt[j] > thresh else 0
                    v[j] = 0.0
                    zt[j] = 0.0
        for j in range(m):  # the kept columns into the sums (0 for the others) and histograms, in column order
            w = 1 if state[j] != 0 else 0
            sum_r2 += v[j]
            sum_dnr += zt[j]
            r2_counts[b_r2[j]] += w
            dnr_counts[b_dnr[j]] += w
    return 0, small, few, never, kept, sum_r2, gt_r2, sum_dnr, gt_dnr


def _null_columns(y, cols, every, keep, i0, key, xc, sxx, nr_counts, nr_scale, nd_counts, nd_scale, thresh, work):
    """The sign-flip null (``stats.sign_flip_null`` with ``r2_score`` and ``drift_to_noise``, the same formulas in
    float64) of the kept columns ``cols`` of a (T, n) block ``y`` (values or bf16 bits as in
    :func:`_fused_columns`; ``every``: all kept columns, ``cols`` unused), flat indices ``i0 + j``: increments
    ``d_t = y_{t+1} - y_t``, flipped where bit ``t % 64`` of
    ``splitmix64((i0 + j) ^ splitmix64(key + t // 64))`` is set (:func:`~rlvr_linear.linearity.stats.null_signs`),
    their cumulative sums ``c`` (``c_1 = 0``), ``R² = S_xc² / (S_xx S_cc)`` and ``|c_T| / sqrt(Σ d²)``.

    Adds them to the histograms ``nr_counts`` / ``nd_counts`` (bins as :meth:`Dist.add`) and returns
    ``(m, sum_r2, gt_r2, sum_dnr, gt_dnr)`` (``m`` columns, the sums in column order, counts above ``thresh``).
    ``work``: a float64 array of at least ``2 T`` elements.
    """
    T, n = y.shape
    nb = (T - 1 + 63) // 64
    inv_t = 1.0 / T
    d = work[: T - 1]
    c = work[T - 1 : 2 * T - 1]
    m = gt_r2 = gt_dnr = 0
    sum_r2 = sum_dnr = 0.0
    base = np.uint64(0)
    for q in range(n if every else cols.size):
        j = q if every else cols[q]
        if not keep[j]:
            continue
        flat = np.uint64(i0 + j)
        prev = _value(y[0, j])
        ss = 0.0
        for t in range(T - 1):
            v = _value(y[t + 1, j])
            dt = v - prev
            prev = v
            d[t] = dt
            ss += dt * dt
        acc = 0.0
        c[0] = 0.0
        for b in range(nb):
            base = _mix64(key + np.uint64(b))
            h = _mix64(flat ^ base)
            for t in range(64 * b, min(T - 1, 64 * b + 64)):
                acc += -d[t] if (h >> np.uint64(t - 64 * b)) & np.uint64(1) else d[t]
                c[t + 1] = acc
        s0 = s1 = s2 = 0.0
        for t in range(T):
            s0 += inv_t * c[t]
            s1 += xc[t] * c[t]
            s2 += c[t] * c[t]
        syy = s2 - T * s0 * s0
        r2 = s1 * s1 / (sxx * syy)
        r2 = min(max(r2, 0.0), 1.0) if syy > 0 and np.isfinite(r2) else 0.0
        ssn = np.sqrt(ss)
        dnr = abs(c[T - 1]) / ssn if ssn > 0 else 0.0
        m += 1
        sum_r2 += r2
        sum_dnr += dnr
        gt_r2 += 1 if r2 > thresh else 0
        gt_dnr += 1 if dnr > thresh else 0
        nr_counts[max(min(np.int64(r2 * nr_scale), nr_counts.size - 1), 0)] += 1
        nd_counts[max(min(np.int64(dnr * nd_scale), nd_counts.size - 1), 0)] += 1
    return m, sum_r2, gt_r2, sum_dnr, gt_dnr


def tracking_proto(dtype) -> np.ndarray:
    """The key dtype of :func:`_fused_columns` (as an empty array): int16 for bf16 bits (uint16), float64 for
    float64 blocks, else float32."""
    if dtype == np.uint16:
        return np.empty(0, np.int16)
    return np.empty(0, np.float64 if dtype == np.float64 else np.float32)


def fused_kernel():
    """:func:`_fused_columns` compiled by numba (``cache=True``: compiled once per block dtype, then loaded from
    the cache)."""
    global _KERNEL, _NULL_KERNEL
    if _KERNEL is None:
        import numba

        _register_overloads(numba)
        jit = numba.njit(cache=True, nogil=True, error_model="numpy")
        _NULL_KERNEL = jit(_null_columns)
        _KERNEL = jit(_fused_columns)
    return _KERNEL


def null_kernel():
    """:func:`_null_columns` compiled by numba (as :func:`fused_kernel`)."""
    fused_kernel()
    return _NULL_KERNEL
