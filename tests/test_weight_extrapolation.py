"""Weight-space extrapolation: paper formula, least squares, rank-R, policies, I/O safety, CLI and sweep."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.extrapolation import weights as engine
from rlvr_linear.extrapolation.params import is_norm_param, parse_size
from rlvr_linear.extrapolation.rules import alpha_from_steps, fit_line, least_squares_weights
from rlvr_linear.extrapolation.sweep import sweep
from rlvr_linear.extrapolation.weights import extrapolate_fit, extrapolate_two_point
from rlvr_linear.io import read_json
from rlvr_linear.io.checkpoints import TensorReader, step_of_path
from rlvr_linear.models.testing import make_pico_dir, make_trajectory


def _noisy(name, w, step, i):
    """Checkpoint i: the init plus an independent random perturbation (so nothing is linear)."""
    g = torch.Generator().manual_seed(1000 * i + sum(w.shape))  # by shape: tied names must agree
    return w + 0.05 * i * torch.randn(w.shape, generator=g)


def _pair(tmp_path: Path, dtype=None, steps=(100, 200)) -> tuple[Path, Path]:
    root = make_trajectory(tmp_path / "run", list(steps), _noisy, dtype=dtype)
    return root / f"step_{steps[0]:06d}", root / f"step_{steps[1]:06d}"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    r = TensorReader(path)
    return {k: r.get(k).clone() for k in r.keys()}


def _direction(name: str, shape) -> torch.Tensor:
    # seeded by shape, not name: with tied embeddings make_trajectory's state dict holds the same
    # parameter under two names (embed_tokens and lm_head), which must get the same update
    g = torch.Generator().manual_seed(sum(shape) * 7 + len(shape))
    return torch.randn(shape, generator=g) * 1e-2


def _no_leftovers(parent: Path, name: str) -> bool:
    return not any(p.name.startswith(f".{name}") for p in parent.iterdir()) and not (parent / name).exists()


# --------------------------------------------------------------------------------------------------
# helpers


def test_alpha_from_steps_and_errors():
    assert alpha_from_steps(0, 1400, 2000) == 2000 / 1400
    assert alpha_from_steps(100, 200, 300) == 2.0
    assert alpha_from_steps(100, 200, 150) == 0.5
    with pytest.raises(RlvrLinearError, match="base step and second step are both 100"):
        alpha_from_steps(100, 100, 300)


def test_norm_rule_matches_seed():
    for name in [
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "transformer.ln_f.weight",
        "model.layers.3.post_attention_layernorm.weight",
        "encoder.RMSNorm.weight",
    ]:
        assert is_norm_param(name), name
    for name in ["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.bias"]:
        assert not is_norm_param(name), name


def test_least_squares_weights_closed_form():
    steps = [0, 10, 25, 40]
    w = least_squares_weights(steps, 70)
    assert w.sum() == pytest.approx(1.0)
    y = np.array([3.0, 1.0, 4.0, 1.5])
    slope, icpt = np.polyfit(steps, y, 1)
    assert w @ y == pytest.approx(icpt + slope * 70)
    s, c = fit_line(steps, y[:, None])
    assert s[0] == pytest.approx(slope) and c[0] == pytest.approx(icpt)


def test_step_of_path(tmp_path):
    assert step_of_path(tmp_path / "run" / "step_000400") == 400
    assert step_of_path(tmp_path / "checkpoint-40") == 40
    assert step_of_path(tmp_path / "global_step_7" / "actor" / "huggingface") == 7
    assert step_of_path(tmp_path / "step_5" / "merged") is None


def test_parse_size():
    assert parse_size("512MB") == 512 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1000") == 1000
    with pytest.raises(RlvrLinearError, match="cannot parse size"):
        parse_size("lots")


# --------------------------------------------------------------------------------------------------
# two-point rule


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_two_point_equals_paper_formula_tensor_by_tensor(tmp_path, dtype):
    a, b = _pair(tmp_path, dtype=dtype)
    out = extrapolate_two_point(a, b, tmp_path / "out", alpha=1.7, progress=False)
    ta, tb, to = _tensors(a), _tensors(b), _tensors(out)
    assert set(to) == set(tb)
    for k, v in to.items():
        assert v.dtype == tb[k].dtype == (dtype or torch.float32), k
        if is_norm_param(k):
            assert torch.equal(v, tb[k]), k  # paper: norms are copied from the second checkpoint
        else:
            ref = (ta[k].float() + 1.7 * (tb[k].float() - ta[k].float())).to(tb[k].dtype)
            assert torch.equal(v, ref), k
            assert not torch.equal(v, tb[k]), k
    meta = read_json(out / "extrapolation.json")
    assert meta["alpha"] == 1.7 and meta["method"] == "two-point"
    assert (meta["base_step"], meta["second_step"], meta["target_step"]) == (100, 200, pytest.approx(270.0))
    assert meta["tensors"]["model.norm.weight"]["policy"] == "copied"
    assert meta["tensors"]["model.embed_tokens.weight"]["policy"] == "extrapolated"
    assert meta["counts"] == {"extrapolated": 21, "copied": 5}
    assert read_json(out / "config.json") == read_json(b / "config.json")
    assert (out / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_alpha_one_is_b_and_alpha_zero_is_a(tmp_path):
    a, b = _pair(tmp_path)
    ta, tb = _tensors(a), _tensors(b)
    o1 = _tensors(extrapolate_two_point(a, b, tmp_path / "one", alpha=1.0, progress=False))
    assert all(torch.equal(o1[k], tb[k]) for k in tb)
    o0 = _tensors(extrapolate_two_point(a, b, tmp_path / "zero", alpha=0.0, force=True, progress=False))
    for k in tb:
        assert torch.equal(o0[k], tb[k] if is_norm_param(k) else ta[k]), k
    oe = _tensors(
        extrapolate_two_point(a, b, tmp_path / "zn", alpha=0.0, force=True, norms="extrapolate", progress=False)
    )
    assert all(torch.equal(oe[k], ta[k]) for k in ta)


def test_norms_extrapolate_policy(tmp_path):
    a, b = _pair(tmp_path)
    ta, tb = _tensors(a), _tensors(b)
    out = extrapolate_two_point(a, b, tmp_path / "out", alpha=2.5, norms="extrapolate", progress=False)
    to = _tensors(out)
    for k in ("model.norm.weight", "model.layers.1.input_layernorm.weight"):
        assert torch.equal(to[k], ta[k] + 2.5 * (tb[k] - ta[k])), k
    meta = read_json(out / "extrapolation.json")
    assert meta["counts"] == {"extrapolated": 26}
    assert meta["tensors"]["model.norm.weight"]["reason"] == "norm parameter (norms='extrapolate')"


def test_dtype_override_and_config(tmp_path):
    a, b = _pair(tmp_path, dtype=torch.bfloat16)
    out = extrapolate_two_point(a, b, tmp_path / "out", alpha=1.5, dtype="fp32", progress=False)
    ta, tb, to = _tensors(a), _tensors(b), _tensors(out)
    k = "model.layers.0.mlp.up_proj.weight"
    assert to[k].dtype == torch.float32
    assert torch.equal(to[k], ta[k].float() + 1.5 * (tb[k].float() - ta[k].float()))
    assert read_json(out / "config.json")["dtype"] == "float32"


def test_tied_embeddings_stay_tied(tmp_path):
    for tie in (True, False):
        a = make_pico_dir(tmp_path / f"a{tie}", seed=0, tie=tie)
        b = make_pico_dir(tmp_path / f"b{tie}", seed=1, tie=tie)
        out = extrapolate_two_point(a, b, tmp_path / f"o{tie}", alpha=1.5, progress=False)
        assert set(TensorReader(out).keys()) == set(TensorReader(b).keys())
        assert ("lm_head.weight" in TensorReader(out).keys()) == (not tie)
        assert read_json(out / "config.json")["tie_word_embeddings"] is tie


def test_sharded_output_loads_and_matches_unsharded(tmp_path):
    from rlvr_linear.io.loading import load_model

    a, b = _pair(tmp_path)
    one = extrapolate_two_point(a, b, tmp_path / "one", alpha=1.5, progress=False)
    many = extrapolate_two_point(a, b, tmp_path / "many", alpha=1.5, max_shard_bytes=2048, progress=False)
    assert (one / "model.safetensors").exists() and not (one / "model.safetensors.index.json").exists()
    index = read_json(many / "model.safetensors.index.json")
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((many / s).exists() for s in shards)
    assert read_json(many / "extrapolation.json")["weight_files"] == shards
    m1, tok = load_model(one)
    m2, _ = load_model(many)
    ids = tok(["What is 12+7? "], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(m1(ids).logits, m2(ids).logits)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    a, b = _pair(tmp_path)
    calls = {"n": 0}
    real = engine._combine

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kw)

    monkeypatch.setattr(engine, "_combine", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        extrapolate_two_point(a, b, tmp_path / "out", alpha=1.5, max_shard_bytes=2048, progress=False)
    assert _no_leftovers(tmp_path, "out")


def test_nan_and_overflow_name_the_tensor(tmp_path):
    a, b = _pair(tmp_path)
    sd = load_file(b / "model.safetensors")
    sd["model.layers.1.mlp.gate_proj.weight"][0, 0] = float("nan")
    save_file(sd, str(b / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RlvrLinearError, match=r"tensor 'model.layers.1.mlp.gate_proj.weight': extrapolation produced"):
        extrapolate_two_point(a, b, tmp_path / "out", alpha=1.5, progress=False)
    assert _no_leftovers(tmp_path, "out")
    sd["model.layers.1.mlp.gate_proj.weight"][0, 0] = 0.0
    sd["model.layers.0.self_attn.o_proj.weight"][0, 0] = 60000.0
    save_file(sd, str(b / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        RlvrLinearError, match=r"tensor 'model.layers.0.self_attn.o_proj.weight': values overflow float16"
    ):
        extrapolate_two_point(a, b, tmp_path / "out", alpha=2.0, dtype="fp16", progress=False)


def test_validation_errors(tmp_path):
    a, b = _pair(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RlvrLinearError, match=r"alpha=25 is outside \(0, 20\]"):
        extrapolate_two_point(a, b, out, alpha=25, progress=False)
    with pytest.raises(RlvrLinearError, match=r"alpha=-1 is outside \(0, 20\].*--force"):
        extrapolate_two_point(a, b, out, alpha=-1, progress=False)
    extrapolate_two_point(a, b, out, alpha=25, force=True, progress=False)
    with pytest.raises(RlvrLinearError, match=f"{out} already exists"):
        extrapolate_two_point(a, b, out, alpha=1.5, progress=False)
    extrapolate_two_point(a, b, out, alpha=1.5, overwrite=True, progress=False)
    assert read_json(out / "extrapolation.json")["alpha"] == 1.5
    # a missing tensor is named
    sd = load_file(b / "model.safetensors")
    del sd["model.layers.1.self_attn.v_proj.bias"]
    save_file(sd, str(b / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        RlvrLinearError, match=r"tensor 'model.layers.1.self_attn.v_proj.bias' is in the base checkpoint"
    ):
        extrapolate_two_point(a, b, tmp_path / "x", alpha=1.5, progress=False)
    # a shape mismatch is named
    sd = load_file(a / "model.safetensors")
    del sd["model.layers.1.self_attn.v_proj.bias"]
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(4, 4)
    save_file(sd, str(a / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        RlvrLinearError, match=r"shape mismatch for tensor 'model.layers.0.mlp.up_proj.weight': \[4, 4\]"
    ):
        extrapolate_two_point(a, b, tmp_path / "x", alpha=1.5, progress=False)
    # architecture
    q = make_pico_dir(tmp_path / "qwen", arch="qwen2")
    ll = make_pico_dir(tmp_path / "llama", arch="llama")
    with pytest.raises(RlvrLinearError, match="architecture mismatch: config model_type is 'qwen2'"):
        extrapolate_two_point(q, ll, tmp_path / "x", alpha=1.5, progress=False)
    with pytest.raises(RlvrLinearError, match="norms must be 'copy' or 'extrapolate'"):
        extrapolate_two_point(q, q, tmp_path / "x", alpha=1.5, norms="keep", progress=False)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# least squares and rank-R


def test_least_squares_exact_on_linear_trajectory(tmp_path):
    steps = [0, 10, 25, 40, 60]
    root = make_trajectory(tmp_path / "run", steps, lambda n, w, s, i: w + s * _direction(n, w.shape))
    w0 = _tensors(root / "step_000000")
    out = extrapolate_fit(root, tmp_path / "out", target_step=150, norms="extrapolate", progress=False)
    to = _tensors(out)
    for k, v in to.items():
        ref = w0[k] + 150 * _direction(k, v.shape)
        torch.testing.assert_close(v, ref, rtol=0, atol=8 * torch.finfo(torch.float32).eps * (1 + ref.abs().max()))
    meta = read_json(out / "extrapolation.json")
    assert meta["method"] == "least-squares" and meta["steps"] == steps
    assert meta["least_squares_weights"] == pytest.approx(least_squares_weights(steps, 150).tolist())
    # last-K selects the newest K checkpoints; copies (norms) come from the newest
    out3 = extrapolate_fit(root, tmp_path / "out3", target_step=150, fit="last-3", progress=False)
    meta3 = read_json(out3 / "extrapolation.json")
    assert meta3["steps"] == [25, 40, 60]
    assert torch.equal(_tensors(out3)["model.norm.weight"], _tensors(root / "step_000060")["model.norm.weight"])


def test_fit_with_two_checkpoints_is_the_two_point_rule(tmp_path):
    a, b = _pair(tmp_path)
    two = _tensors(extrapolate_two_point(a, b, tmp_path / "two", alpha=2.3, progress=False))
    fit = _tensors(extrapolate_fit([f"100={a}", f"200={b}"], tmp_path / "fit", target_step=330, progress=False))
    for k in two:
        torch.testing.assert_close(fit[k], two[k], rtol=0, atol=1e-6)


def test_rank1_exact_on_rank1_trajectory(tmp_path):
    steps = [0, 5, 20, 30]

    def fn(name, w, s, i):
        d = _direction(name, w.shape)
        if w.ndim == 2:  # W_t = W_0 + f(t) u v^T with f linear
            d = torch.outer(d[:, 0], d[0, :]) * 10
        return w + 0.5 * s * d

    root = make_trajectory(tmp_path / "run", steps, fn)
    w0 = _tensors(root / "step_000000")
    out = extrapolate_fit(root, tmp_path / "out", target_step=90, rank=1, progress=False)
    to = _tensors(out)
    meta = read_json(out / "extrapolation.json")
    for k, v in to.items():
        if is_norm_param(k):
            continue
        ref = fn(k, w0[k], 90, 0)
        torch.testing.assert_close(v, ref, rtol=0, atol=8 * torch.finfo(torch.float32).eps * (1 + ref.abs().max()))
        t = meta["tensors"][k]
        assert t["fit"] == ("rank-1" if v.ndim == 2 else "least-squares line"), k
        if v.ndim == 2:
            assert t["energy"] == pytest.approx(1.0)
    assert meta["method"] == "rank-1"


def _relex_reference(mats: list[np.ndarray], steps, target, rank):
    """Explicit RELEX-style reference: SVD of the delta stack, linear fit of each coefficient column."""
    d = np.stack([(m - mats[0]).ravel() for m in mats]).astype(np.float64)
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    c = u[:, :rank] * s[:rank]
    c_hat = np.array([np.polyval(np.polyfit(steps, c[:, j], 1), target) for j in range(rank)])
    return mats[0].astype(np.float64) + (c_hat @ vt[:rank]).reshape(mats[0].shape)


def test_rank_r_matches_explicit_svd_reference_and_full_rank_equals_least_squares(tmp_path, monkeypatch):
    steps = [0, 10, 20, 35, 50]

    def fn(name, w, s, i):
        g = torch.Generator().manual_seed(100 + i)
        return w + s * _direction(name, w.shape) + 0.02 * torch.randn(w.shape, generator=g) * (i > 0)

    root = make_trajectory(tmp_path / "run", steps, fn)
    mats = [_tensors(root / f"step_{s:06d}") for s in steps]
    k = "model.layers.0.mlp.gate_proj.weight"
    lsq = _tensors(extrapolate_fit(root, tmp_path / "lsq", target_step=80, progress=False))
    for rank in (1, 2):
        out = _tensors(extrapolate_fit(root, tmp_path / f"r{rank}", target_step=80, rank=rank, progress=False))
        ref = _relex_reference([m[k].numpy() for m in mats], steps, 80, rank)
        np.testing.assert_allclose(out[k].numpy(), ref, rtol=0, atol=1e-5)
        assert not torch.allclose(out[k], lsq[k], atol=1e-4)  # truncation really filters something
        bias = "model.layers.0.self_attn.q_proj.bias"  # 1-D: plain least squares
        assert torch.equal(out[bias], lsq[bias])
    # the streamed Gram matrix does not depend on the chunking
    monkeypatch.setattr(engine, "GRAM_CHUNK", 37)
    chunked = _tensors(extrapolate_fit(root, tmp_path / "chunked", target_step=80, rank=2, progress=False))
    torch.testing.assert_close(chunked[k], out[k], rtol=0, atol=1e-6)
    full = _tensors(extrapolate_fit(root, tmp_path / "full", target_step=80, rank=len(steps) - 1, progress=False))
    for name in lsq:
        torch.testing.assert_close(full[name], lsq[name], rtol=0, atol=1e-5)


def test_fit_errors(tmp_path):
    root = make_trajectory(tmp_path / "run", [0, 10, 20], lambda n, w, s, i: w + s * 1e-3)
    with pytest.raises(RlvrLinearError, match="fit='last-5' needs 5 checkpoints but the run has 3"):
        extrapolate_fit(root, tmp_path / "o", target_step=40, fit="last-5", progress=False)
    with pytest.raises(RlvrLinearError, match="fit must be 'all' or 'last-K'"):
        extrapolate_fit(root, tmp_path / "o", target_step=40, fit="first-2", progress=False)
    with pytest.raises(RlvrLinearError, match=r"horizon .* is outside \(0, 20\]"):
        extrapolate_fit(root, tmp_path / "o", target_step=1000, progress=False)
    with pytest.raises(RlvrLinearError, match="rank must be >= 1"):
        extrapolate_fit(root, tmp_path / "o", target_step=40, rank=0, progress=False)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_weights_round_trip(tmp_path, capsys):
    a, b = _pair(tmp_path)
    out = tmp_path / "cli_out"
    assert (
        main(["extrapolate", "weights", "--base", str(a), "--second", str(b), "--target-step", "300", "-o", str(out)])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    meta = read_json(out / "extrapolation.json")
    assert (meta["alpha"], meta["base_step"], meta["second_step"]) == (2.0, 100, 200)
    assert main(["extrapolate", "weights", "--base", str(a), "--second", str(b), "--alpha", "1.5", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "extrapolate",
                "weights",
                "--base",
                str(a),
                "--second",
                str(b),
                "--alpha",
                "1.5",
                "--dtype",
                "bf16",
                "--overwrite",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert TensorReader(out).dtype("model.embed_tokens.weight") == torch.bfloat16
    # steps cannot be inferred from arbitrary names
    p1, p2 = make_pico_dir(tmp_path / "modelA", seed=0), make_pico_dir(tmp_path / "modelB", seed=1)
    assert (
        main(
            [
                "extrapolate",
                "weights",
                "--base",
                str(p1),
                "--second",
                str(p2),
                "--target-step",
                "3",
                "-o",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "pass --base-step and --second-step" in capsys.readouterr().err
    assert (
        main(
            [
                "extrapolate",
                "weights",
                "--base",
                str(p1),
                "--second",
                str(p2),
                "--target-step",
                "3",
                "--base-step",
                "1",
                "--second-step",
                "2",
                "-o",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    assert read_json(tmp_path / "x" / "extrapolation.json")["alpha"] == 2.0
    assert (
        main(
            [
                "extrapolate",
                "weights",
                "--base",
                str(a),
                "--second",
                str(b),
                "--alpha",
                "1.5",
                "--rank",
                "-o",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "--fit and --rank need --run" in capsys.readouterr().err
    # fit over a run
    run = a.parent
    assert (
        main(
            [
                "extrapolate",
                "weights",
                "--run",
                str(run),
                "--fit",
                "last-2",
                "--rank",
                "--target-step",
                "250",
                "-o",
                str(tmp_path / "z"),
            ]
        )
        == 0
    )
    meta = read_json(tmp_path / "z" / "extrapolation.json")
    assert (meta["method"], meta["fit"], meta["steps"], meta["target_step"]) == ("rank-1", "last-2", [100, 200], 250.0)


# --------------------------------------------------------------------------------------------------
# sweep


def _fake_eval(calls):
    def evaluate(path, task, **kw):
        calls.append((Path(path).name, task, kw))
        alpha = (
            read_json(Path(path) / "extrapolation.json")["alpha"]
            if (Path(path) / "extrapolation.json").exists()
            else 1.0
        )
        return 0.9 - 0.1 * (alpha - 2.0) ** 2  # peak at alpha = 2

    return evaluate


def test_sweep_keeps_only_the_best(tmp_path):
    a, b = _pair(tmp_path)
    calls: list = []
    res = sweep(
        tmp_path / "sw",
        task="arithmetic",
        base=a,
        second=b,
        targets=[400, 250, 300, 500],
        n_problems=17,
        evaluate_fn=_fake_eval(calls),
        progress=False,
    )
    assert [r.target_step for r in res.rows] == [250, 300, 400, 500]
    assert [r.alpha for r in res.rows] == [1.5, 2.0, 3.0, 4.0]
    assert res.best_row.target_step == 300 and res.best_row.accuracy == pytest.approx(0.9)
    assert res.reference == pytest.approx(0.8) and res.reference_step == 200
    names = sorted(p.name for p in (tmp_path / "sw").iterdir())
    assert names == [".rlvr-linear.json", "best", "sweep.json", "sweep.png"]
    assert read_json(tmp_path / "sw" / "best" / "extrapolation.json")["alpha"] == 2.0
    assert all(kw == {"split": "validation", "n_problems": 17, "k": 0, "greedy": True} for _, _, kw in calls)
    assert len(calls) == 5  # four candidates + the reference
    saved = read_json(tmp_path / "sw" / "sweep.json")
    assert saved["best_row"]["target_step"] == 300 and saved["best_row"]["path"] == str(tmp_path / "sw" / "best")
    assert "* " in res.table().splitlines()[2]
    assert _no_leftovers(tmp_path, "sw.tmp")


def test_sweep_keep_all_with_alphas_and_fit(tmp_path):
    a, b = _pair(tmp_path)
    res = sweep(
        tmp_path / "sw",
        task="arithmetic",
        base=a,
        second=b,
        alphas=[1.5, 3],
        keep_all=True,
        reference=False,
        evaluate_fn=_fake_eval([]),
        progress=False,
    )
    names = sorted(p.name for p in (tmp_path / "sw").iterdir())
    assert names == [".rlvr-linear.json", "sweep.json", "sweep.png", "target_250", "target_400"]
    assert res.reference is None and res.best_row.path == str(tmp_path / "sw" / "target_250")
    res = sweep(
        tmp_path / "sf",
        task="arithmetic",
        run=a.parent,
        rank=1,
        targets=[300, 400],
        evaluate_fn=_fake_eval([]),
        progress=False,
    )
    assert res.method == "rank-1" and res.best_row.target_step == 300
    assert read_json(tmp_path / "sf" / "best" / "extrapolation.json")["method"] == "rank-1"


def test_cli_sweep_with_injected_evaluator(tmp_path, monkeypatch, capsys):
    a, b = _pair(tmp_path)
    fake = types.ModuleType("rlvr_linear.evaluation.evaluation")
    fake.evaluate = _fake_eval([])
    monkeypatch.setitem(sys.modules, "rlvr_linear.evaluation.evaluation", fake)
    rc = main(
        [
            "extrapolate",
            "sweep",
            "--base",
            str(a),
            "--second",
            str(b),
            "--targets",
            "250,300,500",
            "--task",
            "arithmetic",
            "--n-problems",
            "5",
            "-o",
            str(tmp_path / "sw"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "best: alpha 2.000, accuracy 0.9000" in out
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["n_problems"] == 5
    assert (
        main(
            [
                "extrapolate",
                "sweep",
                "--base",
                str(a),
                "--second",
                str(b),
                "--targets",
                "250",
                "--task",
                "nonsense",
                "-o",
                str(tmp_path / "sw2"),
            ]
        )
        == 2
    )
    assert "unknown task 'nonsense'" in capsys.readouterr().err
