"""Pico models and synthetic trajectories for tests and benchmarks (random init, no hub, seconds on CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..io.checkpoints import step_dir_name
from ..io.tokenizer import build_char_tokenizer, save_char_tokenizer


def pico_config(arch: str = "qwen2", vocab_size: int = 100, hidden: int = 16, layers: int = 2, tie: bool = True):
    """A tiny Qwen2 or Llama config (2 layers, hidden 16) for tests."""
    from transformers import LlamaConfig, Qwen2Config

    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    return cls(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def make_pico_model(arch: str = "qwen2", seed: int = 0, tie: bool = True, **kw):
    """Return ``(model, tokenizer)``: a random pico causal LM with the char tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = build_char_tokenizer()
    cfg = pico_config(arch, vocab_size=len(tok), tie=tie, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model.eval(), tok


def save_model(model, tok, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    out_dir = Path(out_dir)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out_dir)
    save_char_tokenizer(tok, out_dir)
    return out_dir


def make_pico_dir(out_dir: str | Path, arch: str = "qwen2", seed: int = 0, dtype=None, **kw) -> Path:
    model, tok = make_pico_model(arch, seed=seed, **kw)
    return save_model(model, tok, out_dir, dtype=dtype)


def make_trajectory(
    root: str | Path,
    steps: list[int],
    fn: Callable[[str, torch.Tensor, int, int], torch.Tensor],
    arch: str = "qwen2",
    seed: int = 0,
    dtype=None,
    **kw,
) -> Path:
    """Write ``root/step_XXXXXX/`` checkpoints whose tensors are ``fn(name, w0, step, i)``.

    ``w0`` is the random-init tensor; e.g. ``lambda n, w, s, i: w + s * 1e-3`` gives exactly linear weights.
    Also writes a ``manifest.json`` like ``rlvr-linear train`` does.
    """
    import json

    root = Path(root)
    model, tok = make_pico_model(arch, seed=seed, **kw)
    w0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    entries = []
    for i, s in enumerate(steps):
        sd = {k: fn(k, v.clone(), s, i) for k, v in w0.items()}
        model.load_state_dict(sd)
        d = root / step_dir_name(s)
        save_model(model, tok, d, dtype=dtype)
        model.to(torch.float32)
        entries.append({"step": s, "path": d.name})
    (root / "manifest.json").write_text(json.dumps({"checkpoints": entries}, indent=2))
    return root


#: a minimal chat template for pico models (the SmolLM2 prompt path without SmolLM2)
PICO_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def digit_chat_task():
    """``arithmetic-cot-chat`` with a reward a random pico model can earn (any digit in the reply), so that GRPO has
    a signal to follow on the chat path (register it under a test name with ``monkeypatch.setitem(TASKS, ...)``)."""
    from ..evaluation.tasks import ArithmeticCoTChatTask

    class DigitChatTask(ArithmeticCoTChatTask):
        def score(self, completion, problem):
            return float(any(ch.isdigit() for ch in completion))

    return DigitChatTask
