"""Trajectory linearity: R² math, null baseline, streamed weight analysis, log-probs, activations, forecast, CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr_linear import linearity as L
from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import discover
from rlvr_linear.io.loading import load_model
from rlvr_linear.linearity import kernel as K
from rlvr_linear.models.testing import make_trajectory

STEPS14 = list(range(0, 1400, 100))


# --------------------------------------------------------------------------------------------------
# Fixtures: small trajectories built once per module


def _noise(name: str, i: int, shape, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * i + sum(map(ord, name)))
    return scale * torch.randn(shape, generator=g)


def _mixed(name, w, s, i):
    """Norms never move; q_proj jumps once (2 distinct values); the rest is exactly linear."""
    if "norm" in name:
        return w
    if "q_proj" in name:
        return w + (0.01 if i >= 3 else 0.0)
    return w + s * 1e-4


def _noisy(name, w, s, i):
    """Linear drift plus a random walk (cumulative noise), so R² is high but not 1."""
    walk = sum(_noise(name, j, w.shape, 2e-3) for j in range(1, i + 1)) if i else 0.0
    return w + s * 2e-5 + walk


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "mixed": make_trajectory(root / "mixed", [0, 100, 200, 300, 400, 500], _mixed),
        "noisy": make_trajectory(root / "noisy", [0, 100, 200, 300, 400, 500, 600, 700], _noisy),
        "linear": make_trajectory(root / "linear", [0, 100, 200, 300, 400], lambda n, w, s, i: w + s * 1e-4),
        "same": make_trajectory(root / "same", [0, 100, 200, 300], lambda n, w, s, i: w),
    }


PROBES = [
    L.Probe("12+34=", "46\nthat is all", "a"),
    L.Probe("7+8=", "15", "b"),
    L.Probe("What is 3*4? ", "It is 12, since 3*4=12.", "c"),
    L.Probe("1=", "x", "d"),
]


# --------------------------------------------------------------------------------------------------
# Math


def test_exact_line_gives_r2_one_and_slope_intercept():
    x = np.array(STEPS14, dtype=float)
    y = np.stack([0.02 + 3e-6 * x, -1.0 - 2e-4 * x, 5.0 + 0 * x + 1e-9 * x])
    fit = L.linear_fit(y, x)
    np.testing.assert_allclose(fit.r2, 1.0, atol=1e-12)
    np.testing.assert_allclose(fit.slope, [3e-6, -2e-4, 1e-9], rtol=1e-9)
    np.testing.assert_allclose(fit.intercept, [0.02, -1.0, 5.0], rtol=1e-12)
    assert not fit.constant.any()


def test_r2_equals_squared_corrcoef():
    rng = np.random.default_rng(0)
    x = np.array([0, 10, 25, 40, 80, 81, 200], dtype=float)
    y = rng.standard_normal((50, x.size)) + rng.standard_normal((50, 1)) * x / 100
    r2 = L.r2_score(y, x)
    ref = np.array([np.corrcoef(x, row)[0, 1] ** 2 for row in y])
    np.testing.assert_allclose(r2, ref, rtol=1e-12, atol=1e-14)
    # step rescaling does not change R²
    np.testing.assert_allclose(L.r2_score(y, (x - x.min()) / (x.max() - x.min())), r2, rtol=1e-12)
    # 1-D input is one row
    assert L.r2_score(y[3], x).shape == (1,)
    assert L.r2_score(y[3], x)[0] == pytest.approx(ref[3], rel=1e-12)


def test_constant_rows_get_zero_and_are_flagged():
    x = np.arange(14.0)
    y = np.stack([np.full(14, 0.1), np.full(14, 0.1) + np.arange(14) * 1e-3])
    fit = L.linear_fit(y, x)
    assert fit.r2.tolist()[0] == 0.0 and fit.constant.tolist() == [True, False]
    assert fit.slope[0] == 0.0 and fit.intercept[0] == pytest.approx(0.1)
    assert fit.r2[1] == pytest.approx(1.0)


def test_iid_noise_around_a_constant_has_low_r2():
    rng = np.random.default_rng(1)
    y = 0.5 + 1e-3 * rng.standard_normal((20000, 14))
    r2 = L.r2_score(y, STEPS14)
    # R² of pure noise is Beta(1/2, (T-2)/2): median ≈ 0.036 at T = 14
    assert np.median(r2) == pytest.approx(0.036, abs=0.006)
    assert (r2 > 0.7).mean() < 0.002


def test_driftless_random_walk_lands_on_its_null():
    rng = np.random.default_rng(2)
    y = np.cumsum(rng.standard_normal((20000, 14)), axis=1)
    r2 = L.r2_score(y, STEPS14)
    assert np.median(r2) == pytest.approx(0.45, abs=0.015)
    assert (r2 > 0.7).mean() == pytest.approx(0.27, abs=0.015)
    null = L.r2_score(L.sign_flip_null(y, key=7), STEPS14)
    assert np.median(null) == pytest.approx(np.median(r2), abs=0.015)
    assert (null > 0.7).mean() == pytest.approx((r2 > 0.7).mean(), abs=0.015)
    assert np.median(L.drift_to_noise(y)) == pytest.approx(0.70, abs=0.03)
    # a drifting walk is far above its null
    yd = y + 0.5 * np.arange(14)
    assert np.median(L.r2_score(yd, STEPS14)) > np.median(L.r2_score(L.sign_flip_null(yd, key=7), STEPS14)) + 0.3


def test_sign_flip_null_keeps_start_and_step_sizes_and_ignores_chunking():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((100, 70)).cumsum(axis=1) + np.arange(70)  # 69 increments: two hash blocks
    idx = np.arange(1000, 1100)
    null = L.sign_flip_null(y, idx, key=5)
    np.testing.assert_array_equal(null[:, 0], y[:, 0])
    np.testing.assert_allclose(np.abs(np.diff(null, axis=1)), np.abs(np.diff(y, axis=1)), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(L.sign_flip_null(y[10:20], idx[10:20], key=5), null[10:20])
    np.testing.assert_array_equal(L.sign_flip_null(y, idx, key=5), null)
    assert not np.array_equal(L.sign_flip_null(y, idx, key=6), null)
    signs = L.null_signs(np.arange(20000), 13, key=1)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert abs(signs.mean()) < 0.01
    assert L.drift_to_noise(np.arange(14.0))[0] == pytest.approx(math.sqrt(13))


def test_dist_histogram_quantiles_match_exact():
    rng = np.random.default_rng(4)
    v = rng.beta(5, 2, 50000)
    exact, hist = L.Dist(keep=True), L.Dist()
    for part in np.array_split(v, 7):
        exact.add(part)
        hist.add(part)
    for q in (0.25, 0.5, 0.75):
        assert exact.quantile(q) == pytest.approx(np.quantile(v, q), abs=1e-12)
        assert hist.quantile(q) == pytest.approx(np.quantile(v, q), abs=2e-4)
    s = hist.summary()
    assert s["n"] == 50000 and s["mean"] == pytest.approx(v.mean()) and s["share_gt_0.7"] == (v > 0.7).mean()
    assert hist.histogram(50)[0].sum() == 50000
    empty = L.Dist().summary()
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_sampling_and_thresholds():
    assert [L.paper_sample_size(n) for n in (10, 60, 1000, 10**6)] == [10, 50, 50, 1000]
    idx = L.sample_indices(1000, 50, seed=42)
    assert idx.size == 50 and np.unique(idx).size == 50 and (np.diff(idx) > 0).all() and idx.max() < 1000
    ref = np.sort(torch.randperm(1000, generator=torch.Generator().manual_seed(42))[:50].numpy())
    np.testing.assert_array_equal(idx, ref)
    big = L.sample_indices(2**24 + 10, 1000, seed=3)  # rejection path, no randperm of 16M
    assert np.unique(big).size == 1000 and big.max() < 2**24 + 10
    np.testing.assert_array_equal(big, L.sample_indices(2**24 + 10, 1000, seed=3))
    assert not np.array_equal(big, L.sample_indices(2**24 + 10, 1000, seed=4))
    assert np.unique(L.sample_indices(2**21, 2**19, seed=0)).size == 2**19  # k > numel / 4: randperm
    assert L.tensor_seed("a.weight", 42) == L.tensor_seed("a.weight", 42) != L.tensor_seed("b.weight", 42)
    assert L.default_min_abs_change(torch.bfloat16) == pytest.approx(1e-4)
    assert L.default_min_abs_change(torch.float16) == pytest.approx(1.25e-5)
    assert L.default_min_abs_change(torch.float32) == pytest.approx(1e-4 * 2**-16)


def test_parse_param_name():
    assert L.parse_param_name("model.layers.3.self_attn.q_proj.weight") == (3, "Q")
    assert L.parse_param_name("model.layers.12.mlp.down_proj.weight") == (12, "down")
    assert L.parse_param_name("model.layers.0.post_attention_layernorm.weight") == (0, "post_attention_layernorm")
    assert L.parse_param_name("model.embed_tokens.weight") == (None, "embedding")
    assert L.parse_param_name("model.norm.weight") == (None, "final_norm")
    assert L.parse_param_name("lm_head.weight") == (None, "lm_head")
    assert L.parse_param_name("model.layers.1.self_attn.rotary.inv_freq") == (1, "self_attn.rotary")
    assert L.parse_param_name("foo.bar") == (None, "other")


# --------------------------------------------------------------------------------------------------
# Weights


def test_linear_weights_r2_one_and_constant_or_few_unique_filtered(runs):
    res = L.analyze_weights(discover(runs["mixed"]))
    by = {t.name: t for t in res.tensors}
    for t in res.tensors:
        if "norm" in t.name:
            assert t.kept == 0 and t.filtered_small_change == t.sampled == t.never_moved == t.numel
        elif "q_proj" in t.name:
            assert t.kept == 0 and t.filtered_few_unique == t.sampled and t.filtered_small_change == 0
        else:
            assert t.kept == t.sampled == L.paper_sample_size(t.numel) and t.r2["median"] > 1 - 1e-6
    c = res.counts()
    norms = [t for t in res.tensors if "norm" in t.name]
    assert c["never_moved"] == c["filtered_small_change"] == sum(t.numel for t in norms)
    assert c["filtered_few_unique"] == sum(t.sampled for t in res.tensors if "q_proj" in t.name)
    assert c["kept"] + c["filtered_small_change"] + c["filtered_few_unique"] == c["sampled"]
    assert by["model.embed_tokens.weight"].sampled == 50  # 100 x 16 = 1600 < 50 / 0.001
    s = res.to_json()
    assert s["r2"]["n"] == c["kept"] and s["r2"]["median"] > 1 - 1e-6 and s["r2"]["share_gt_0.7"] == 1.0
    # equal increments with random signs: a ±d random walk, far below 1
    assert s["null"]["median"] < 0.8 and s["above_null"]["median"] == pytest.approx(
        s["r2"]["median"] - s["null"]["median"]
    )
    assert s["share_never_moved"] == pytest.approx(c["never_moved"] / c["sampled"])
    assert s["drift_to_noise"]["median"] == pytest.approx(math.sqrt(5), rel=1e-4)
    mat, rows, cols = res.heatmap()
    assert rows == ["layer 0", "layer 1", "embedding", "final_norm"] and cols == L.MODULE_COLUMNS
    assert np.isnan(mat[3]).all()  # the final norm exists but never moved
    assert np.isnan(mat[0, cols.index("Q")]) and np.isnan(mat[0, cols.index("input_layernorm")])
    assert mat[1, cols.index("down")] > 1 - 1e-6 and mat[2, 0] > 1 - 1e-6


def _seed_style(run, seed=42):
    """The seed repo's approach: every checkpoint's full state dict in memory, then sample."""
    traj = discover(run)
    sds = [load_file(str(p / "model.safetensors")) for p in traj.paths]
    x = np.asarray(traj.steps, float)
    out = {}
    for name in L.weight_keys(traj):
        numel = sds[0][name].numel()
        idx = L.sample_indices(numel, L.paper_sample_size(numel), L.tensor_seed(name, seed))
        y = np.stack([sd[name].reshape(-1)[idx].double().numpy() for sd in sds])
        keep = ((y.max(0) - y.min(0)) > L.default_min_abs_change(sds[0][name].dtype)) & (L.n_unique(y) >= 4)
        out[name] = L.linear_fit(y[:, keep].T, x).r2
    return out


def test_streamed_paper_mode_equals_in_memory_seed_approach(runs):
    res = L.analyze_weights(discover(runs["noisy"]))
    ref = _seed_style(runs["noisy"])
    np.testing.assert_allclose(res.r2.array(), np.concatenate([ref[t.name] for t in res.tensors]), rtol=0, atol=1e-12)
    assert res.tensor_id.size == res.flat_index.size == res.r2.n
    assert 0.5 < res.r2.quantile(0.5) < 0.99 and res.null.quantile(0.5) < res.r2.quantile(0.5) - 0.2


def test_all_mode_chunked_equals_whole_and_in_memory(runs):
    traj = discover(runs["noisy"])
    a = L.analyze_weights(traj, sample="all", chunk=7)
    b = L.analyze_weights(traj, sample="all", chunk=1 << 30)
    sds = [load_file(str(p / "model.safetensors")) for p in traj.paths]
    x = np.asarray(traj.steps, float)
    for ta, tb in zip(a.tensors, b.tensors):
        assert (ta.sampled, ta.kept, ta.never_moved) == (tb.sampled, tb.kept, tb.never_moved)
        assert ta.sampled == ta.numel
        for key in ("mean", "share_gt_0.7", "median"):
            assert ta.r2[key] == pytest.approx(tb.r2[key], abs=1e-12)
            assert ta.null[key] == pytest.approx(tb.null[key], abs=1e-12)
        y = np.stack([sd[ta.name].reshape(-1).double().numpy() for sd in sds])
        keep = ((y.max(0) - y.min(0)) > L.default_min_abs_change(torch.float32)) & (L.n_unique(y) >= 4)
        r2 = L.linear_fit(y[:, keep].T, x).r2
        assert ta.kept == keep.sum()
        assert ta.r2["mean"] == pytest.approx(r2.mean(), abs=1e-12)
        assert ta.r2["median"] == pytest.approx(np.median(r2), abs=2e-4)  # 10,000-bin histogram
        assert ta.r2["share_gt_0.7"] == pytest.approx((r2 > 0.7).mean(), abs=1e-12)
    assert a.null.total == pytest.approx(b.null.total, rel=1e-12)
    # the null of a parameter does not depend on the mode: paper-mode nulls are a subset of all-mode ones
    p = L.analyze_weights(traj)
    name = p.tensors[0].name
    sel = p.tensor_id == 0
    y = np.stack([sd[name].reshape(-1).double().numpy() for sd in sds])[:, p.flat_index[sel]]
    key = L.stable_key(name, 42)
    null = L.r2_score(L.sign_flip_null(y.T, p.flat_index[sel], key), x)
    np.testing.assert_allclose(null, p.null.array()[sel], rtol=0, atol=1e-12)


def test_all_mode_threads_and_reading_order_do_not_change_results(runs):
    traj = discover(runs["noisy"])
    ref = L.analyze_weights(traj, sample="all", chunk=40, threads=1, io_threads=0)
    for threads, io in ((2, 1), (1, 3), (3, 2)):
        got = L.analyze_weights(traj, sample="all", chunk=40, threads=threads, io_threads=io)
        assert [t.row() for t in got.tensors] == [t.row() for t in ref.tensors]
        assert got.r2.total == ref.r2.total and np.array_equal(got.null.counts, ref.null.counts)
        assert got.examples == ref.examples
    # results come back in key order even though tensors are read in on-disk order
    assert [t.name for t in ref.tensors] == L.weight_keys(traj)
    p1 = L.analyze_weights(traj, io_threads=0)
    p4 = L.analyze_weights(traj, io_threads=4)
    np.testing.assert_array_equal(p1.r2.array(), p4.r2.array())
    np.testing.assert_array_equal(p1.flat_index, p4.flat_index)


def _same_weights(a, b):
    assert [t.row() for t in a.tensors] == [t.row() for t in b.tensors]
    assert [t.r2 for t in a.tensors] == [t.r2 for t in b.tensors] and a.to_json() == b.to_json()
    for k in ("r2", "null", "dnr", "null_dnr"):
        da, db = getattr(a, k), getattr(b, k)
        assert (da.n, da.n_gt, da.total) == (db.n, db.n_gt, db.total) and np.array_equal(da.counts, db.counts)
        if da.values is not None:
            np.testing.assert_array_equal(da.array(), db.array())
    assert a.examples == b.examples


def test_column_tiles_do_not_change_results(runs, monkeypatch):
    """The numpy path's column tiles (forced: with numba installed, all-mode blocks would take the fused kernel)."""
    traj = discover(runs["noisy"])
    monkeypatch.setattr(K, "USE_NUMBA", False)
    whole = L.analyze_weights(traj, sample="all", chunk=1 << 20)
    widths: list[int] = []
    block = K._analyze_block
    monkeypatch.setattr(K, "_analyze_block", lambda y, *a: widths.append(y.shape[1]) or block(y, *a))
    monkeypatch.setattr(K, "_TILE", 16)  # every block analysed in tiles of 16 columns
    tiled = L.analyze_weights(traj, sample="all", chunk=1 << 20)
    numel = sum(t.numel for t in tiled.tensors)
    assert sum(widths) == numel and max(widths) == 16 and len(widths) >= numel // 16 > 2 * len(tiled.tensors)
    monkeypatch.setattr(K, "_analyze_block", block)
    assert [(t.kept, t.never_moved, t.null_sample) for t in tiled.tensors] == [
        (t.kept, t.never_moved, t.null_sample) for t in whole.tensors
    ]
    for k in ("r2", "null", "dnr", "null_dnr"):
        a, b = getattr(tiled, k), getattr(whole, k)
        assert a.n == b.n and a.total == pytest.approx(b.total, rel=1e-13)
        assert np.abs(a.counts - b.counts).sum() <= 2  # a value on a bin edge may move by one ulp
    assert [e["index"] for e in tiled.examples] == [e["index"] for e in whole.examples]
    if K.HAVE_NUMBA:  # and the fused kernel agrees with the tiled numpy path
        monkeypatch.setattr(K, "USE_NUMBA", True)
        _same_up_to_rounding(L.analyze_weights(traj, sample="all", chunk=1 << 20), tiled)


def test_worker_processes_give_exactly_the_single_process_result(runs, monkeypatch):
    traj = discover(runs["noisy"])
    monkeypatch.setattr(K, "_TILE", 16)  # tiles inside blocks too (the forked workers inherit it)
    ref = L.analyze_weights(traj, sample="all", chunk=40, workers=1)
    jobs = [L._Job("w", i, i + 1, 40, np.float32) for i in range(300)]  # 12,000 elements / 128 = 93.75 per part
    assert L._segments(jobs, 128) == [(i, i + 3) for i in range(0, 300, 3)]
    for workers, threads in ((2, 1), (3, 2)):
        got = L.analyze_weights(traj, sample="all", chunk=40, workers=workers, threads=threads)
        _same_weights(got, ref)
        assert got.null.n == sum(t.null_sample for t in ref.tensors) and got.r2.n == ref.counts()["kept"]
    p1, p2 = L.analyze_weights(traj, workers=1), L.analyze_weights(traj, workers=2)
    _same_weights(p1, p2)
    np.testing.assert_array_equal(p1.tensor_id, p2.tensor_id)
    np.testing.assert_array_equal(p1.flat_index, p2.flat_index)
    with pytest.raises(RlvrLinearError, match="workers must be >= 1, got 0"):
        L.analyze_weights(traj, sample="all", workers=0)


def _same_up_to_rounding(a, b):
    """Fused kernel vs numpy path: identical filter counts, sums within 1e-12, a bin edge value may move."""
    assert [(t.sampled, t.kept, t.filtered_small_change, t.filtered_few_unique, t.never_moved, t.null_sample)
            for t in a.tensors] == [(t.sampled, t.kept, t.filtered_small_change, t.filtered_few_unique,
                                     t.never_moved, t.null_sample) for t in b.tensors]  # fmt: skip
    for k in ("r2", "null", "dnr", "null_dnr"):
        da, db = getattr(a, k), getattr(b, k)
        assert (da.n, da.n_gt) == (db.n, db.n_gt)
        assert da.total == pytest.approx(db.total, rel=1e-12)
        assert np.abs(da.counts - db.counts).sum() <= 2
    for ta, tb in zip(a.tensors, b.tensors):
        for key in ("mean", "share_gt_0.7"):
            assert ta.r2[key] == pytest.approx(tb.r2[key], rel=1e-12, nan_ok=True)
    assert [e["index"] for e in a.examples] == [e["index"] for e in b.examples]


@pytest.mark.skipif(not L.HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_equals_the_numpy_path(runs, tmp_path, monkeypatch, dtype):
    def fn(name, w, s, i):  # random walk + drift; norms never move; q_proj jumps once (too few distinct values)
        return _mixed(name, w, s, i) if "norm" in name or "q_proj" in name else _noisy(name, w, s, i)

    root = make_trajectory(tmp_path / "run", STEPS14, fn, dtype=dtype)
    traj = discover(root)
    for kw in ({"chunk": 40}, {"chunk": 1 << 20, "null_fraction": 1.0}, {"chunk": 40, "min_unique": 6}):
        fused = L.analyze_weights(traj, sample="all", **kw)
        monkeypatch.setattr(K, "USE_NUMBA", False)
        ref = L.analyze_weights(traj, sample="all", **kw)
        monkeypatch.setattr(K, "USE_NUMBA", True)
        _same_up_to_rounding(fused, ref)
        c = fused.counts()
        assert c["never_moved"] > 0 and c["filtered_few_unique"] > 0 and c["kept"] > c["numel"] // 2
    one, two = (L.analyze_weights(traj, sample="all", chunk=40, workers=w) for w in (1, 2))
    assert [t.kept for t in one.tensors] == [t.kept for t in two.tensors]
    for k in ("r2", "null", "dnr", "null_dnr"):  # processes give exactly the one-process result
        da, db = getattr(one, k), getattr(two, k)
        assert (da.n, da.n_gt, da.total) == (db.n, db.n_gt, db.total) and np.array_equal(da.counts, db.counts)


@pytest.mark.skipif(not L.HAVE_NUMBA, reason="numba is not installed")
def test_fused_kernel_on_blocks_with_ties_and_bf16_bits():
    rng = np.random.default_rng(0)
    T, n = 9, 3000
    x = np.arange(T) * 100.0
    xc, sxx = L._check_steps(x)
    y = np.round(rng.standard_normal((T, n)) * rng.choice([0.5, 2, 8], n), 0).astype(np.float32)  # many ties
    y[:, :50] = y[0, :50]  # never moved
    y[:, 50:60] = 0.0
    y[1:, 50:60] = 2.0**-16  # moved, below the threshold
    y[:, 60] = -0.0
    y[::2, 60] = 0.0  # -0 and +0: one value
    bits = (y.view(np.uint32) >> 16).astype(np.uint16)  # y has <= 8 significant bits: bf16 is exact
    assert np.array_equal((bits.astype(np.uint32) << 16).view(np.float32), y)
    for block in (y, bits, y.astype(np.float64)):
        for k in (1, 2, 3, 4, 5, 7):
            keep = np.empty(n, dtype=bool)
            hr, hd = L.Dist(), L.Dist(hi=math.sqrt(T - 1))
            out = L.fused_kernel()(
                block, block.dtype == np.uint16, L.tracking_proto(block.dtype), xc, 1 / sxx, 1e-4, k,
                hr.counts, 1e4, hd.counts, 1e4 / hd.hi, 0.7, keep,
            )  # fmt: skip
            blk = L._analyze_block(y, x, 0, 1, 1e-4, k)
            assert out[:5] == (0, blk.small, blk.few, blk.never, blk.fit.r2.size)
            np.testing.assert_array_equal(keep, blk.keep)
            ref_r, ref_d = L.Dist(), L.Dist(hi=math.sqrt(T - 1))
            ref_r.add(blk.fit.r2)
            ref_d.add(blk.dnr)
            assert out[5] == pytest.approx(blk.fit.r2.sum(), rel=1e-12) and out[6] == ref_r.n_gt
            assert out[7] == pytest.approx(blk.dnr.sum(), rel=1e-12) and out[8] == ref_d.n_gt
            for got, ref, v in ((hr, ref_r, blk.fit.r2), (hd, ref_d, blk.dnr)):  # small integers: many on edges
                s = v * (ref.bins / ref.hi)
                on_edge = int((np.abs(s - np.round(s)) < 1e-9).sum())
                assert np.abs(got.counts - ref.counts).sum() <= 2 * on_edge
    y[3, 100] = math.inf
    keep = np.empty(n, dtype=bool)
    h = L.Dist()
    proto = L.tracking_proto(y.dtype)
    assert L.fused_kernel()(y, False, proto, xc, 1 / sxx, 1e-4, 4, h.counts, 1e4, h.counts, 1e4, 0.7, keep)[0] == 1
    with pytest.raises(RlvrLinearError, match="checkpoint step 300: tensor 'w' contains NaN or Inf"):
        L._analyze_fused(y, x, 0, 1, 1e-4, 4, [0, 100, 200, 300, 400, 500, 600, 700, 800], "w", None,
                         {"r2": L.Dist(), "dnr": L.Dist(hi=math.sqrt(T - 1))}, {})  # fmt: skip


@pytest.mark.skipif(not L.HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("T", [14, 70])  # 70: increments t >= 64 take the second hash block
def test_null_kernel_equals_the_numpy_null(T):
    """The fused path's sign-flip null (numba) against the public numpy null (``sign_flip_null``, ``r2_score``,
    ``drift_to_noise``) on the same columns: each
    column's R² and drift-to-noise to 1e-12, identical bins, counts above 0.7 and sample size."""
    rng = np.random.default_rng(3)
    n = 4000
    x = np.arange(T) * 100.0
    xc, sxx = L._check_steps(x)
    y = np.cumsum(rng.standard_normal((T, n)) * 1e-3 + rng.choice([0.0, 3e-4], n), axis=0)
    y = (y + rng.standard_normal(n) * 0.02).astype(np.float32)
    y[:, 5] = y[0, 5]  # constant: R² and drift-to-noise 0
    bits = torch.from_numpy(y).bfloat16().view(torch.int16).numpy().view(np.uint16)
    keep = rng.random(n) < 0.9
    cols = np.sort(np.append(rng.choice(n, 300, replace=False), 5))
    key, i0 = L.stable_key("model.layers.3.mlp.up_proj.weight"), 7 * n
    assert int(K._mix64(np.uint64(key))) == int(L.stats._splitmix64(np.array([key], dtype=np.uint64))[0])
    fk = K.null_kernel()
    for block in (bits, y, y.astype(np.float64)):
        vals = K._as_float(block).astype(np.float64)
        for every in (False, True):
            js = np.flatnonzero(keep) if every else cols[keep[cols]]
            null = L.sign_flip_null(vals[:, js].T, index=i0 + js, key=key)  # the public reference, (n, T)
            ref_r2, ref_dnr = L.r2_score(null, x), L.drift_to_noise(null)
            assert ref_r2.min() == 0.0 and 0.05 < (ref_r2 > 0.7).mean() < 0.95 and ref_dnr.max() > 0.7
            hr, hd, rr, rd = L.Dist(), L.Dist(hi=math.sqrt(T - 1)), L.Dist(), L.Dist(hi=math.sqrt(T - 1))
            rr.add(ref_r2)
            rd.add(ref_dnr)
            m, s_r2, gt_r2, s_dnr, gt_dnr = fk(
                block, cols, every, keep, i0, np.uint64(key), xc, sxx, hr.counts, hr.bins / hr.hi,
                hd.counts, hd.bins / hd.hi, 0.7, np.empty(2 * T),
            )  # fmt: skip
            assert (m, gt_r2, gt_dnr) == (js.size, rr.n_gt, rd.n_gt)
            assert s_r2 == pytest.approx(ref_r2.sum(), rel=1e-12) and s_dnr == pytest.approx(ref_dnr.sum(), rel=1e-12)
            np.testing.assert_array_equal(hr.counts, rr.counts)
            np.testing.assert_array_equal(hd.counts, rd.counts)
        for j, r2, dnr in list(zip(js, ref_r2, ref_dnr))[:200]:  # column by column
            h = np.zeros(10, dtype=np.int64)
            out = fk(
                block, np.array([j]), False, keep, i0, np.uint64(key), xc, sxx, h, 10.0, h, 1.0, 0.7, np.empty(2 * T)
            )
            assert out[0] == 1 and abs(out[1] - r2) <= 1e-12 and abs(out[3] - dnr) <= 1e-12 * max(1.0, dnr)


def test_dist_pickles_with_sparse_counts():
    import pickle

    d = L.Dist(hi=2.0)
    d.add(np.array([0.1, 0.1, 1.9]))
    e = pickle.loads(pickle.dumps(d))
    assert isinstance(d.__getstate__()["counts"], tuple) and np.array_equal(e.counts, d.counts)
    assert (e.n, e.total, e.n_gt, e.hi, e.bins) == (3, d.total, 1, 2.0, d.bins) and e.counts.dtype == np.int64
    full = L.Dist()
    full.add(np.linspace(0, 1, 30_000))
    assert isinstance(full.__getstate__()["counts"], np.ndarray)
    assert np.array_equal(pickle.loads(pickle.dumps(full)).counts, full.counts)


def test_draw_indices_is_a_deterministic_uniform_subset():
    from rlvr_linear.linearity.sampling import draw_indices

    for numel, k in ((10**7, 40_000), (4096 * 3, 4096), (50, 50), (50, 0)):  # Floyd, permutation, all, none
        idx = draw_indices(numel, k, 7)
        assert idx.dtype == np.int64 and idx.size == k and (np.diff(idx) > 0).all()
        assert (k == 0 or 0 <= idx[0] and idx[-1] < numel) and np.array_equal(idx, draw_indices(numel, k, 7))
    assert not np.array_equal(draw_indices(10**7, 40_000, 7), draw_indices(10**7, 40_000, 8))
    assert draw_indices(100, 5, -1).size == 5  # a negative seed is taken modulo 2^64
    for numel, df_lo, df_hi in ((200, 140, 260), (2000, 1750, 2250)):  # permutation, Floyd: chi² ~ numel - 1
        hits = np.zeros(numel)
        for seed in range(5000):
            hits[draw_indices(numel, 10, seed)] += 1
        e = 5000 * 10 / numel
        assert hits.sum() == 50_000 and df_lo < ((hits - e) ** 2 / e).sum() < df_hi
    with pytest.raises(ValueError, match="cannot draw 11 of 10 indices"):
        draw_indices(10, 11, 0)


def test_null_sample_is_deterministic_chunk_independent_and_close_to_the_full_null(runs):
    assert L.null_sample(10_000, 1.0, 4096, "w") is None and L.null_sample(3000, 0.01, 4096, "w") is None
    s = L.null_sample(100_000, 0.01, 50, "w")
    assert s.size == 1000 and np.array_equal(s, np.unique(s))
    assert np.array_equal(s, L.null_sample(100_000, 0.01, 50, "w"))  # deterministic
    assert L.null_sample(100_000, 0.001, 1000, "w").size == 1000
    assert not np.array_equal(s, L.null_sample(100_000, 0.01, 50, "v"))
    traj = discover(runs["noisy"])
    full = L.analyze_weights(traj, sample="all", null_fraction=1.0)
    kw = {"sample": "all", "null_fraction": 0.3, "null_min": 0}
    a = L.analyze_weights(traj, chunk=7, **kw)
    b = L.analyze_weights(traj, chunk=1 << 30, **kw)
    assert a.to_json()["config"]["null_fraction"] == 0.3 and a.to_json()["counts"]["null_sample"] == a.null.n
    assert [t.row() for t in a.tensors] == [t.row() for t in b.tensors]  # same subsample whatever the chunking
    assert np.array_equal(a.null.counts, b.null.counts) and np.array_equal(a.null_dnr.counts, b.null_dnr.counts)
    for ta, tf in zip(b.tensors, full.tensors):
        assert ta.r2 == tf.r2 and ta.dnr == tf.dnr  # observed R² and drift-to-noise: every kept parameter
        assert tf.null_sample == tf.kept and ta.null_sample == pytest.approx(0.3 * ta.kept, abs=0.1 * ta.kept + 5)
    assert a.null.n == pytest.approx(0.3 * full.null.n, rel=0.1)
    # the subsampled null's distribution matches the full one (each value is the same parameter's null)
    assert a.null.quantile(0.5) == pytest.approx(full.null.quantile(0.5), abs=0.03)
    assert a.null.n_gt / a.null.n == pytest.approx(full.null.n_gt / full.null.n, abs=0.03)
    assert a.null_dnr.quantile(0.5) == pytest.approx(full.null_dnr.quantile(0.5), rel=0.1)


def test_missing_key_and_nan_are_reported(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["linear"], run)
    f = run / "step_000200" / "model.safetensors"
    sd = load_file(str(f))
    bad = dict(sd)
    del bad["model.layers.0.mlp.up_proj.weight"]
    save_file(bad, str(f), metadata={"format": "pt"})
    with pytest.raises(RlvrLinearError, match=r"step 200.*missing \['model.layers.0.mlp.up_proj.weight'\]"):
        L.analyze_weights(discover(run))
    sd["model.layers.1.mlp.down_proj.weight"] = torch.full_like(sd["model.layers.1.mlp.down_proj.weight"], math.nan)
    save_file(sd, str(f), metadata={"format": "pt"})
    msg = "checkpoint step 200: tensor 'model.layers.1.mlp.down_proj.weight' contains NaN or Inf values"
    for mode in ("paper", "all"):
        with pytest.raises(RlvrLinearError, match=msg):
            L.analyze_weights(discover(run), sample=mode)
    with pytest.raises(RlvrLinearError, match=msg):  # raised in whichever process met it, re-raised here
        L.analyze_weights(discover(run), sample="all", chunk=16, workers=2)
    y = np.arange(120.0).reshape(3, 40)
    y[2, 5] = y[1, 30] = math.nan  # tile 0 meets step 300 first, but the block's first bad checkpoint is 200
    with pytest.raises(RlvrLinearError, match="checkpoint step 200: tensor 'w' contains NaN"):
        L._analyze_tiled(y, np.arange(3.0), 0, 1, 1e-4, 2, [100, 200, 300], "w", None, True, None, tile=16)
    with pytest.raises(RlvrLinearError, match="at least 3 checkpoints"):
        L.analyze_weights(discover([f"0={run / 'step_000000'}", f"100={run / 'step_000100'}"]))


def test_verl_and_trl_layouts_are_discovered(runs, tmp_path):
    src = discover(runs["noisy"])
    verl, trl = tmp_path / "verl", tmp_path / "trl"
    for s, p in zip(src.steps, src.paths):
        shutil.copytree(p, verl / f"global_step_{s}" / "actor" / "huggingface")
        shutil.copytree(p, trl / f"checkpoint-{s}")
    ref = L.analyze_weights(src).r2.array()
    for root in (verl, trl):
        traj = discover(root)
        assert traj.steps == src.steps
        np.testing.assert_array_equal(L.analyze_weights(traj).r2.array(), ref)


def test_pickled_weights_need_the_flag_and_give_the_same_result(runs, tmp_path):
    run = tmp_path / "bin"
    shutil.copytree(runs["noisy"], run)
    for d in discover(run).paths:
        torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
        (d / "model.safetensors").unlink()
    with pytest.raises(RlvrLinearError, match="--allow-pickle"):
        L.analyze_weights(discover(run))
    ref = discover(runs["noisy"])
    for mode in ("paper", "all"):
        got = L.analyze_weights(discover(run, allow_pickle=True), sample=mode, chunk=5)
        want = L.analyze_weights(ref, sample=mode, chunk=5)
        assert [t.row() for t in got.tensors] == [t.row() for t in want.tensors]


def test_weights_save_writes_every_output(runs, tmp_path):
    res = L.analyze_weights(discover(runs["noisy"]))
    res.save(tmp_path / "out")
    s = json.loads((tmp_path / "out" / "weights.json").read_text())
    assert s["r2"]["median"] == pytest.approx(res.r2.quantile(0.5))
    assert s["null"]["share_gt_0.7"] == pytest.approx(res.null.n_gt / res.null.n)
    lines = (tmp_path / "out" / "weights_per_tensor.csv").read_text().splitlines()
    assert lines[0].split(",") == L.TENSOR_CSV_COLUMNS and len(lines) == 1 + len(res.tensors)
    z = np.load(tmp_path / "out" / "weights_r2.npz")
    np.testing.assert_allclose(z["r2"], res.r2.array(), rtol=1e-6)
    for png in ("weights_r2_hist.png", "weights_heatmap.png", "weights_examples.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(res.examples) == 9 and all(len(e["values"]) == 8 for e in res.examples)


# --------------------------------------------------------------------------------------------------
# Log-probs


def test_batched_scoring_equals_one_by_one_and_reference(runs):
    model, tok = load_model(discover(runs["noisy"]).paths[-1])
    enc = L.encode_probes(tok, PROBES)
    assert [len(r) for _, r in enc] == [len(p.response) for p in PROBES]  # char tokenizer
    batched = L.score_logprobs(model, enc, batch_size=3, pad_id=tok.pad_token_id)
    single = L.score_logprobs(model, enc, batch_size=1, pad_id=tok.pad_token_id)
    for (p, r), b, s in zip(enc, batched, single):
        np.testing.assert_allclose(b, s, atol=1e-5)
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0].double()
        ref = torch.log_softmax(logits, -1)[torch.arange(len(p) - 1, len(p) + len(r) - 1), torch.tensor(r)]
        np.testing.assert_allclose(b, ref.numpy(), atol=1e-5)
    with pytest.raises(RlvrLinearError, match="probe 0: the prompt is empty"):
        L.encode_probes(tok, [L.Probe("", "abc")])


def test_logprob_r2_on_a_moving_trajectory(runs):
    traj = discover(runs["noisy"])
    res = L.analyze_logprobs(traj, PROBES, batch_size=2, min_change=0.005)
    n_tok = sum(len(p.response) for p in PROBES)
    assert res.logp.shape == (8, n_tok) and res.token_ids.shape == res.probe_index.shape == (n_tok,)
    assert res.probe_index.tolist() == sum(([i] * len(p.response) for i, p in enumerate(PROBES)), [])
    change = res.logp[-1].astype(float) - res.logp[0]
    np.testing.assert_array_equal(res.sampled, np.flatnonzero(np.abs(change) > 0.005))
    np.testing.assert_allclose(res.fit.r2, L.r2_score(res.logp[:, res.sampled].T.astype(float), traj.steps))
    s = res.to_json()
    assert s["counts"]["tokens"] == n_tok and s["counts"]["sampled"] == s["counts"]["eligible"] > 0
    capped = L.analyze_logprobs(traj, PROBES, min_change=0.005, max_positions=3)
    assert capped.sampled.size == 3 and set(capped.sampled) <= set(res.sampled)


def test_logprobs_on_identical_checkpoints_are_sane(runs, tmp_path):
    res = L.analyze_logprobs(discover(runs["same"]), PROBES)
    s = res.to_json()
    assert s["counts"]["eligible"] == s["counts"]["sampled"] == 0
    assert s["counts"]["constant"] == s["counts"]["tokens"] == res.logp.shape[1]
    assert s["r2"]["n"] == 0 and s["r2"]["median"] is None and s["null"]["median"] is None
    res.save(tmp_path / "lp")
    assert json.loads((tmp_path / "lp" / "logprobs.json").read_text())["r2"]["median"] is None
    from matplotlib.image import imread

    for png in ("logprobs_r2_hist.png", "logprobs_examples.png"):  # pictures (an empty analysis still draws axes)
        img = imread(tmp_path / "lp" / png)
        assert img.ndim == 3 and min(img.shape[:2]) > 200 and float(img[..., :3].std()) > 0.01, png
    assert L.read_probes(tmp_path / "lp" / "probes.jsonl") == PROBES


def test_make_probes_and_probe_files(runs, tmp_path):
    from rlvr_linear.evaluation.tasks import get_task

    first = discover(runs["noisy"]).paths[0]
    a = L.make_probes(first, "arithmetic", n_prompts=3, k=2, max_new_tokens=5, seed=1)
    b = L.make_probes(first, "arithmetic", n_prompts=3, k=2, max_new_tokens=5, seed=1)
    assert a == b and 1 <= len(a) <= 6 and all(p.response for p in a)
    task = get_task("arithmetic")
    probs = task.problems("validation", 3, seed=1)
    assert {p.prompt for p in a} <= {task.render(q) for q in probs}
    assert {p.problem_id for p in a} <= {q.id for q in probs}
    f = tmp_path / "p.jsonl"
    L.write_probes(f, a)
    assert L.read_probes(f) == a
    f.write_text('{"prompt": "x"}\n')
    with pytest.raises(RlvrLinearError, match="line 1 lacks a 'prompt' or 'response' field"):
        L.read_probes(f)


# --------------------------------------------------------------------------------------------------
# Activations


def test_activations_match_direct_hidden_states(runs):
    traj = discover(runs["noisy"])
    res = L.analyze_activations(traj, PROBES, pairs_per_layer=40, batch_size=3)
    assert res.values.shape == (8, 3, 40)  # 2 layers + embeddings
    model, tok = load_model(traj.paths[5])
    enc = L.encode_probes(tok, PROBES)
    lens = np.array([len(r) for _, r in enc])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    for j in (0, 17, 39):
        g, ch = int(res.token[j]), int(res.channel[j])
        pi = int(np.searchsorted(np.cumsum(lens), g, side="right"))
        p, r = enc[pi]
        with torch.no_grad():
            hs = model(torch.tensor([p + r]), output_hidden_states=True).hidden_states
        for layer in range(3):
            assert res.values[5, layer, j] == pytest.approx(hs[layer][0, len(p) + g - starts[pi], ch].item(), abs=1e-5)
    s = res.to_json()
    assert [x["label"] for x in s["layers"]] == ["embeddings", "layer 0", "layer 1"]
    assert s["r2"]["n"] == sum(x["kept"] for x in s["layers"])
    same = L.analyze_activations(discover(runs["same"]), PROBES, pairs_per_layer=40).to_json()
    assert all(x["kept"] == 0 and x["filtered_constant"] == 40 for x in same["layers"])


# --------------------------------------------------------------------------------------------------
# Forecast


def test_forecast_linear_weights_is_exact_and_beats_naive(runs, tmp_path):
    traj = discover(runs["linear"])
    res = L.forecast(traj, 200)
    assert res.fit_steps == [0, 100, 200] and res.later_steps == [300, 400]
    o = res.overall()
    assert max(o["rel_err"]) < 1e-6 and min(o["naive_rel_err"]) > 1e-3 and max(o["ratio_to_naive"]) < 1e-3
    # naive error at step s is ||W(s) - W(200)|| = (s - 200) * 1e-4 * sqrt(#moving elements)
    n = sum(t["numel"] for t in res.tensors)
    naive2 = sum(t["naive2"][0] for t in res.tensors)
    assert math.sqrt(naive2) == pytest.approx(100 * 1e-4 * math.sqrt(n), rel=1e-4)
    res.save(tmp_path / "fc")
    s = json.loads((tmp_path / "fc" / "forecast.json").read_text())
    assert s["later_steps"] == [300, 400] and len(s["tensors"]) == len(res.tensors)
    with pytest.raises(RlvrLinearError, match=r"at least 2 checkpoints with step <= 50 to fit a line, found 1"):
        L.forecast(traj, 50)
    with pytest.raises(RlvrLinearError, match="no checkpoint after step 400"):
        L.forecast(traj, 400)


def test_forecast_logprobs(runs):
    res = L.forecast(discover(runs["same"]), 100, probes=PROBES)
    assert res.logprobs["tokens"] == sum(len(p.response) for p in PROBES)
    assert res.logprobs["mae"] == pytest.approx([0.0, 0.0], abs=1e-7) and res.logprobs["naive_mae"] == [0.0, 0.0]
    moving = L.forecast(discover(runs["noisy"]), 300, probes=PROBES)
    assert len(moving.logprobs["mae"]) == 4 and min(moving.logprobs["naive_mae"]) > 0


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_weights_logprobs_forecast(runs, tmp_path, capsys):
    run = str(runs["noisy"])
    assert main(["analyze", "weights", run, "-o", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "median R²" in out and "null median" in out and "null share > 0.7" in out
    assert json.loads((tmp_path / "w" / "weights.json").read_text())["mode"] == "paper"
    assert main(["analyze", "weights", run, "--all", "-o", str(tmp_path / "wa")]) == 0
    assert json.loads((tmp_path / "wa" / "weights.json").read_text())["mode"] == "all"
    for w in ("1", "2"):
        assert main(["analyze", "weights", run, "--all", "--workers", w, "--chunk", "64", "-o", str(tmp_path / w)]) == 0
    for f in ("weights.json", "weights_per_tensor.csv"):
        assert (tmp_path / "2" / f).read_text() == (tmp_path / "1" / f).read_text()
    assert main(["analyze", "weights", run, "-o", str(tmp_path / "w")]) == 2
    assert "already exists" in capsys.readouterr().err
    pairs = [f"{s}={p}" for s, p in zip(discover(run).steps, discover(run).paths)][::3]
    assert main(["analyze", "weights", *pairs, "-o", str(tmp_path / "w3")]) == 0
    assert json.loads((tmp_path / "w3" / "weights.json").read_text())["steps"] == [0, 300, 600]
    assert main(["analyze", "weights", *pairs[:2], "-o", str(tmp_path / "w4")]) == 2
    assert "error: this needs at least 3 checkpoints, found 2" in capsys.readouterr().err

    pf = tmp_path / "probes.jsonl"
    L.write_probes(pf, PROBES)
    assert main(["analyze", "logprobs", run, "--probes", str(pf), "-o", str(tmp_path / "lp")]) == 0
    ref = L.analyze_logprobs(discover(run), PROBES)  # the API with its defaults: what the CLI must have written
    with np.load(tmp_path / "lp" / "logprobs.npz") as z:
        assert z["steps"].tolist() == discover(run).steps
        np.testing.assert_array_equal(z["logp"], ref.logp)
        np.testing.assert_array_equal(z["sampled"], ref.sampled)
        np.testing.assert_array_equal(z["r2"], ref.fit.r2)
    assert json.loads((tmp_path / "lp" / "logprobs.json").read_text()) == json.loads(json.dumps(ref.to_json()))
    args = ["analyze", "logprobs", run, "--task", "arithmetic", "--n-prompts", "2", "--k", "2"]
    assert main([*args, "--max-new-tokens", "4", "-o", str(tmp_path / "lp2")]) == 0
    assert 1 <= len(L.read_probes(tmp_path / "lp2" / "probes.jsonl")) <= 4

    assert main(["analyze", "forecast", run, "--fit-until", "300", "-o", str(tmp_path / "fc")]) == 0
    assert "forecast from steps 0,100,200,300" in capsys.readouterr().out
    assert main(["analyze", "forecast", run, "--fit-until", "0", "-o", str(tmp_path / "fc2")]) == 2
    assert "error: forecast needs at least 2 checkpoints" in capsys.readouterr().err
    assert main(["analyze", "activations", run, "--probes", str(pf), "-o", str(tmp_path / "act")]) == 0
    from matplotlib.image import imread

    act = json.loads((tmp_path / "act" / "activations.json").read_text())
    ref = L.analyze_activations(discover(run), PROBES)
    assert act == json.loads(json.dumps(ref.to_json()))
    assert imread(tmp_path / "act" / "activations_per_layer.png").shape[0] > 200


def test_cluster_median_ci_resamples_whole_groups():
    from rlvr_linear.linearity.stats import cluster_median_ci

    # two equal groups, all 0 and all 1: a resample holds both (median 0.5) or one twice (0 or 1)
    v, g = np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(50, int), np.ones(50, int)]
    r = cluster_median_ci(v, g, n_boot=400)
    assert (r["median"], r["lo"], r["hi"], r["groups"]) == (0.5, 0.0, 1.0, 2)
    # one group: the CI is its median; NaN values are dropped first
    one = cluster_median_ci(np.array([1.0, 2.0, 3.0, np.nan]), np.zeros(4), n_boot=50)
    assert (one["median"], one["lo"], one["hi"], one["groups"]) == (2.0, 2.0, 2.0, 1)
    # many independent groups: the CI brackets the median and shrinks with more groups
    rng = np.random.default_rng(0)
    few, many = (cluster_median_ci(rng.normal(size=n * 10), np.repeat(np.arange(n), 10)) for n in (10, 400))
    assert few["lo"] <= few["median"] <= few["hi"] and many["lo"] <= many["median"] <= many["hi"]
    assert many["hi"] - many["lo"] < (few["hi"] - few["lo"]) / 3
    assert cluster_median_ci(np.array([np.nan]), np.zeros(1))["median"] is None
    with pytest.raises(RlvrLinearError, match="cluster_median_ci: 3 values but 2 group labels"):
        cluster_median_ci(np.ones(3), np.zeros(2))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_shared_prompt_scoring_equals_scoring_each_probe_alone(arch):
    """Probes sharing a prompt run it once (its cache repeated per reply): the same log-probs as scoring every probe
    in full, to float rounding, in input order; replies of 0, 1 and many tokens; prompts of several lengths."""
    from rlvr_linear.linearity.probes import _score_shared, score_logprobs
    from rlvr_linear.models.testing import make_pico_model

    model, tok = make_pico_model(arch, seed=3)
    model.eval()
    enc = [([5, 6, 7], [8, 9, 10, 11]), ([5, 6, 7], [12]), ([3, 4], [9, 9, 9]), ([5, 6, 7], []),
           ([3, 4], [7, 8]), ([9, 10, 11, 12, 13], [4, 5, 6, 7, 8, 9]), ([5, 6, 7], [10, 11, 12])]  # fmt: skip
    alone = score_logprobs(model, enc, batch_size=3, share_prompts=False)
    for bs in (1, 2, 3, 16):
        shared = _score_shared(model, enc, bs, 0)
        assert [len(x) for x in shared] == [len(r) for _, r in enc]
        for a, b in zip(alone, shared):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    default = score_logprobs(model, enc, batch_size=3)  # shared prompts: the shared path by default
    assert all(np.array_equal(a, b) for a, b in zip(default, _score_shared(model, enc, 3, 0)))
    # distinct prompts take the unshared path, unchanged
    uniq = [enc[0], enc[2], enc[5]]
    plain = score_logprobs(model, uniq, share_prompts=False)
    assert all(np.array_equal(a, b) for a, b in zip(score_logprobs(model, uniq), plain))
