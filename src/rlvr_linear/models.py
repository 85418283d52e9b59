"""Models: loading any HF causal LM directory, the tiny embedded default, and the SmolLM2 preset."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import find_model_dir
from .errors import RlvrLinearError
from .tokenizer import load_tokenizer


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` from an HF model directory (eval mode, left padding).

    fp32 is the default on CPU: bf16 is 6-22x slower on CPUs without AVX-512/AMX.
    """
    from transformers import AutoModelForCausalLM

    d = find_model_dir(path)
    if not (d / "config.json").exists():
        raise RlvrLinearError(f"{d}: no config.json, not an HF model directory")
    tok = load_tokenizer(d)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RlvrLinearError(f"{d}: cannot load the model ({type(e).__name__}: {e})") from None
    model.to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
