from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rlvr_linear import linearity as L
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import discover
from rlvr_linear.linearity import fullscan as F
from rlvr_linear.linearity import reader as R
from rlvr_linear.models.testing import make_trajectory


def _drift(name, w, s, i):
    g = torch.Generator().manual_seed(1000 * i + sum(map(ord, name)))
    return w + s * 2e-5 + 2e-3 * torch.randn(w.shape, generator=g)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullscan")
    steps = [0, 100, 200, 300, 400, 500]
    return {
        "bf16": make_trajectory(root / "bf16", steps, _drift, dtype=torch.bfloat16),
        "f32": make_trajectory(root / "f32", steps, _drift),
    }


def _plan(run, chunk, dtype):
    traj = discover(run)
    T = len(traj.steps)
    sources = [L._RowSource(traj.reader(i)) for i in range(T)]
    keys = sorted(L.weight_keys(traj), key=lambda k: sources[0].position(k))
    jobs = []
    for name in keys:
        row_len, spans = L._row_chunks(traj.reader(0).shape(name), chunk)
        jobs += [L._Job(name, a, b, row_len, dtype, None, [np.dtype(dtype).itemsize] * T) for a, b in spans]
    return traj, sources, jobs


@pytest.mark.parametrize(("kind", "dtype"), [("bf16", np.uint16), ("f32", np.float32)])
@pytest.mark.parametrize("span_bytes", [1, 300, 1 << 20])
def test_span_loader_yields_the_blocks_of_the_block_loader(runs, kind, dtype, span_bytes):
    traj, sources, jobs = _plan(runs[kind], 48, dtype)
    assert L._span_readable(sources, jobs)
    # a worker's order: runs of jobs with gaps (the other worker's segments), as _claim draws them
    order = [j for s in L._segments(jobs, 8)[::2] for j in range(*s)]
    ref = {j: y.copy() for j, _, y in L._BlockLoader(sources, jobs, 1, ahead=2, prefetch=4, order=order)}
    loader = F.SpanLoader(sources, jobs, iter(order), ahead=2, span_bytes=span_bytes, ahead_bytes=4096)
    got = []
    for j, job, y in loader:
        assert job is jobs[j] and y.dtype == dtype and y.flags.c_contiguous and y.shape == (len(sources), job.n)
        np.testing.assert_array_equal(y, ref[j])
        got.append(j)
        loader.release(y)
    assert got == order


def test_span_loader_keeps_unreleased_blocks_intact(runs):
    traj, sources, jobs = _plan(runs["bf16"], 16, np.uint16)
    ref = {j: y.copy() for j, _, y in L._BlockLoader(sources, jobs, 1, ahead=2, prefetch=0)}
    loader = F.SpanLoader(sources, jobs, ahead=1, span_bytes=64, ahead_bytes=0)
    held = [(j, y) for j, _, y in loader]  # never released: no buffer may be reused under them
    assert len(held) == len(jobs)
    for j, y in held:
        np.testing.assert_array_equal(y, ref[j])


def test_preadv_full_scatters_and_stops_at_the_end(tmp_path):
    p = tmp_path / "f.bin"
    data = bytes(range(256)) * 40
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        bufs = [bytearray(n) for n in (3, 0, 1000, 5000)]
        assert F.preadv_full(fd, [memoryview(b) for b in bufs], 7) == 6003
        assert b"".join(bufs) == data[7 : 7 + 6003]
        tail = bytearray(100)
        assert F.preadv_full(fd, [memoryview(tail)], len(data) - 30) == 30
        assert tail[:30] == data[-30:]
    finally:
        os.close(fd)


def test_truncated_file_is_named(runs, tmp_path):
    import shutil

    run = tmp_path / "cut"
    shutil.copytree(runs["bf16"], run)
    traj, sources, jobs = _plan(run, 1 << 20, np.uint16)
    f = sorted(run.glob("step_000300/*.safetensors"))[0]
    os.truncate(f, f.stat().st_size - 10)  # after the headers were read: cut while the analysis runs
    # the header check that opens each file now sees the cut first; either way the one line names the file
    with pytest.raises(RlvrLinearError, match=r"step_000300/.*(file ends inside tensor|truncated safetensors file)"):
        for _ in F.SpanLoader(sources, jobs):
            pass


@pytest.mark.parametrize("kind", ["bf16", "f32"])
def test_all_mode_results_identical_with_span_reads(runs, kind, monkeypatch):
    traj = discover(runs[kind])
    got = {}
    for spans in (False, True):
        monkeypatch.setattr(R, "SPAN_READS", spans)
        got[spans] = [L.analyze_weights(traj, sample="all", chunk=40, workers=w) for w in (1, 2)]
    for a in got[True] + got[False][1:]:
        b = got[False][0]
        assert a.to_json() == b.to_json() and a.examples == b.examples
        assert [t.row() for t in a.tensors] == [t.row() for t in b.tensors]
        for k in ("r2", "null", "dnr", "null_dnr"):
            da, db = getattr(a, k), getattr(b, k)
            assert (da.n, da.n_gt, da.total) == (db.n, db.n_gt, db.total)
            np.testing.assert_array_equal(da.counts, db.counts)
    assert got[True][0].r2.n > 0 and got[True][0].null.n > 0


def test_bf16_keys_order_and_equal_exactly_as_the_values():
    """The int16 tracking keys of bf16 bits: every finite bf16, ordered and tied exactly as its value."""
    from rlvr_linear.linearity import kernel as K

    bits = np.arange(1 << 16, dtype=np.uint32)
    vals = (bits << 16).view(np.float32)
    bits, vals = bits[np.isfinite(vals)].astype(np.uint16), vals[np.isfinite(vals)]
    keys = np.array([K._key(b) for b in bits])
    assert keys.dtype == np.int16 and K._NO_KEY not in keys
    order = np.argsort(vals, kind="stable")
    assert (np.diff(keys[order].astype(np.int32)) >= 0).all()  # same order
    assert np.array_equal(np.diff(keys[order]) == 0, np.diff(vals[order]) == 0)  # tied exactly when equal
    assert K._key(np.uint16(0x8000)) == K._key(np.uint16(0)) == 0  # -0 and +0
    back = np.array([K._key_value(k) for k in keys[::97]])
    assert np.array_equal(back, vals[::97].astype(np.float64))


def _kernel_vs_numpy(y, x, k, bits=None):
    """The fused kernel on ``bits`` (bf16) or ``y`` (floats) against the numpy path on ``y``: identical counts
    and keep, sums within 1e-12."""
    xc, sxx = L._check_steps(x)
    block = y if bits is None else bits
    keep = np.empty(y.shape[1], dtype=bool)
    hr, hd = L.Dist(), L.Dist(hi=np.sqrt(len(x) - 1))
    out = L.fused_kernel()(
        block, bits is not None, L.tracking_proto(block.dtype), xc, 1 / sxx, 1e-4, k,
        hr.counts, hr.bins / hr.hi, hd.counts, hd.bins / hd.hi, 0.7, keep,
    )  # fmt: skip
    blk = L._analyze_block(y.astype(np.float64), x, 0, 1, 1e-4, k)
    assert out[:5] == (0, blk.small, blk.few, blk.never, blk.fit.r2.size)
    np.testing.assert_array_equal(keep, blk.keep)
    assert out[5] == pytest.approx(blk.fit.r2.sum(), rel=1e-12)
    return out


@pytest.mark.skipif(not L.HAVE_NUMBA, reason="numba is not installed")
def test_fused_kernel_bf16_keys_across_signs_zeros_and_exponents():
    """Columns crossing zero, mixing -0 / +0, subnormals and far exponents: the bits path (int16 keys) gives
    exactly what the float32 path and the numpy path give, for every distinct-value count k."""
    rng = np.random.default_rng(3)
    T, n = 14, 4000
    bits = rng.integers(0, 1 << 16, (T, n), dtype=np.uint32).astype(np.uint16)
    ex = (bits >> 7) & 0xFF
    bits[ex == 0xFF] &= 0x7F7F  # no Inf / NaN
    small = rng.choice([0x0000, 0x8000, 0x0001, 0x8001, 0x3F80, 0xBF80], (T, 600)).astype(np.uint16)
    bits[:, :600] = small  # few values: +-0, +-the smallest subnormal, +-1
    bits[:, 600:700] = rng.choice([0x0000, 0x8000], (T, 100)).astype(np.uint16)  # only zeros: never moved
    base = rng.integers(0x3C00, 0x3C80, 800).astype(np.uint16)  # near 2^-7, ties by a few ulps
    bits[:, 700:1500] = base + rng.integers(0, 4, (T, 800)).astype(np.uint16)
    bits[:, 1500:1600] ^= np.uint16(0x8000)  # signs flipped per element
    y = (bits.astype(np.uint32) << 16).view(np.float32)
    x = np.arange(T) * 100.0
    for k in (1, 2, 3, 4, 5, 7):
        a = _kernel_vs_numpy(y, x, k, bits)
        b = _kernel_vs_numpy(y, x, k)
        assert a == b  # bits and float32 paths: bit-identical counts and sums
    assert a[3] >= 100 and a[2] > 0  # never moved, and too few distinct values, do occur


@pytest.mark.skipif(not L.HAVE_NUMBA, reason="numba is not installed")
def test_fused_kernel_counts_do_not_overflow_int16_keys_with_many_checkpoints():
    """More than 2^15 checkpoints: the int16 counts of the bits path saturate instead of wrapping."""
    T = 33_000
    x = np.arange(T, dtype=np.float64)
    vals = np.array([0x3F80, 0x3F81, 0x3F82, 0x3F83, 0x3F84, 0x3F85], dtype=np.uint16)  # 1 + i / 128
    bits = np.empty((T, 6), dtype=np.uint16)
    bits[:, 0] = vals[np.arange(T) % 6]  # 6 distinct values, cycling
    bits[:, 1] = vals[np.minimum(np.arange(T) // 5000, 5)]  # a staircase: every value a new maximum
    bits[:, 2] = vals[(np.arange(T) // 7) % 3]  # 3 distinct values
    bits[:, 3] = vals[0]
    bits[-1, 3] = vals[5]  # moved once: 2 values
    bits[:, 4] = vals[3 + np.arange(T) % 2]  # after 3 distinct values, ~33,000 values that are none of them:
    bits[:3, 4] = vals[:3]  # an unsaturated int16 count of distinct values would wrap negative
    bits[:, 5] = vals[::-1][np.minimum(np.arange(T) // 5000, 5)]  # staircase down: new minima
    y = (bits.astype(np.uint32) << 16).view(np.float32)
    for k in (2, 3, 4, 5, 6, 7):
        out = _kernel_vs_numpy(y, x, k, bits)
        assert out[4] == [6, 5, 4, 4, 3, 0][k - 2]  # kept: the columns with >= k distinct values (6 6 3 2 5 6)
