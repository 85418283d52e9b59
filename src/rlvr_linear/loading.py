"""Loading any HF causal LM directory (or verl FSDP shards) as ``(model, tokenizer)``."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import verl_shards
from .checkpoints import TensorReader, check_weight_files, find_model_dir
from .errors import RlvrLinearError
from .threads import for_model
from .tokenizer import load_tokenizer


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
):
    """Load ``(model, tokenizer)`` from an HF model directory (eval mode, left padding).

    fp32 is the default on CPU: bf16 is 6-22x slower on CPUs without AVX-512/AMX. A verl checkpoint saved as
    FSDP shards only (``global_step_N/actor/model_world_size_W_rank_R.pt``) is read with ``allow_pickle``: the
    model is built from ``actor/huggingface/config.json`` and filled one gathered parameter at a time.
    """
    from transformers import AutoModelForCausalLM

    d = find_model_dir(path)
    if verl_shards.is_shard_dir(d):
        if not allow_pickle:
            raise RlvrLinearError(
                f"{d}: verl FSDP shards only; they are pickles, which can run code, so loading them is refused unless "
                "you pass --allow-pickle (they are then read with weights_only=True and only DTensor classes allowed), "
                "or merge them: add hf_model to verl's actor_rollout_ref.actor.checkpoint.save_contents, or run "
                "verl's model merger"
            )
        tok = load_tokenizer(verl_shards.config_dir(d))
        model = load_from_shards(d, dtype)
    else:
        if not (d / "config.json").exists():
            raise RlvrLinearError(f"{d}: no config.json, not an HF model directory")
        tok = load_tokenizer(d)
        check_weight_files(d)  # a truncated / empty safetensors file: one error naming it
        try:
            model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise RlvrLinearError(f"{d}: cannot load the model ({type(e).__name__}: {e})") from None
    for_model(model)
    model.to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _no_init_weights():
    """transformers' context that skips random initialisation (moved between 4.x and 5.x); a no-op if absent."""
    for mod in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return importlib.import_module(mod).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def load_from_shards(path: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM built from the config next to verl FSDP shards and filled from them, one parameter at a time.

    Every parameter and persistent buffer of the model must come from the shards (a tied ``lm_head`` follows the
    embedding); a missing or extra tensor, or a shape that differs, is an error naming it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    d = Path(path)
    cdir = verl_shards.config_dir(d)
    if not (cdir / "config.json").exists():
        raise RlvrLinearError(f"{d}: verl FSDP shards without {verl_shards.HF_SUBDIR}/config.json: no model to build")
    try:
        config = AutoConfig.from_pretrained(str(cdir))
        with _no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RlvrLinearError(f"{cdir}: cannot build the model from config.json ({type(e).__name__}: {e})") from None
    model.tie_weights()  # (skipped with the initialisation by transformers 5)
    model.to(dtype)
    if (cdir / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(cdir))
    target = model.state_dict()  # views of the parameters: tied names share one tensor
    with TensorReader(d, allow_pickle=True) as reader:
        keys = reader.keys()
        extra = sorted(set(keys) - set(target))
        if extra:
            raise RlvrLinearError(f"{d}: tensors the {type(model).__name__} does not have: {', '.join(extra[:5])}")
        filled: set[int] = set()
        for k in tqdm(keys, desc="gathering shards", disable=len(keys) < 50, leave=False):
            t = reader.get(k)
            if tuple(t.shape) != tuple(target[k].shape):
                want = tuple(target[k].shape)
                raise RlvrLinearError(f"{d}: {k} has shape {tuple(t.shape)}, the model expects {want}")
            with torch.no_grad():
                target[k].copy_(t)
            filled.add(target[k].data_ptr())
    missing = sorted(k for k, v in target.items() if v.data_ptr() not in filled)
    if missing:
        raise RlvrLinearError(f"{d}: tensors missing from the shards: {', '.join(missing[:5])}")
    return model
