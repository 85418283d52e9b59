from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rlvr_linear import linearity as L
from rlvr_linear.checkpoints import discover
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.linearity import fullscan as F
from rlvr_linear.linearity import reader as R
from rlvr_linear.testing import make_trajectory


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
    with pytest.raises(RlvrLinearError, match=r"step_000300/.*file ends inside tensor"):
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
