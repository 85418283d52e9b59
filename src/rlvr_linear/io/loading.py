"""Loading any HF causal LM directory (or verl FSDP shards) as ``(model, tokenizer)``: the one guarded way in."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..runtime.threads import for_model
from . import verl_shards
from .checkpoints import TensorReader, find_model_dir
from .tokenizer import load_tokenizer


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
):
    """Load ``(model, tokenizer)`` from an HF model directory (eval mode, left padding).

    fp32 is the default on CPU: bf16 is 6-22x slower on CPUs without AVX-512/AMX. Weights load through
    :func:`load_causal_lm`: pickled ones (``pytorch_model.bin``; a verl checkpoint saved as FSDP shards only,
    ``global_step_N/actor/model_world_size_W_rank_R.pt``) only with ``allow_pickle``, into a model built from
    its ``config.json`` (verl: ``actor/huggingface/config.json``) and filled one tensor at a time.
    """
    d = find_model_dir(path)
    model = load_causal_lm(d, dtype, allow_pickle)
    tok = load_tokenizer(verl_shards.config_dir(d) if verl_shards.is_shard_dir(d) else d)
    _refuse_nonfinite(d, model)
    for_model(model)
    model.to(device).eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """The causal LM (no tokenizer, not moved) of a model folder: the one way this package loads a model's weights.

    safetensors go through ``from_pretrained(use_safetensors=True)``, so transformers never falls back to a pickle.
    Pickled weights (``pytorch_model.bin``, its shards, verl FSDP shards) are refused unless ``allow_pickle``; then
    they are read by :class:`~rlvr_linear.io.checkpoints.TensorReader` (``weights_only=True``: a file that needs
    more than tensors is refused, nothing in it runs) into a model built from ``config.json``.
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
        return load_from_shards(d, dtype)
    if not (d / "config.json").exists():
        raise RlvrLinearError(f"{d}: no config.json, not an HF model directory")
    with TensorReader(d, allow_pickle=allow_pickle) as reader:  # refuses pickled weights without allow_pickle
        if reader.kind != "safetensors":
            return _filled_model(d, d, reader, dtype)
    try:  # (the reader has checked every safetensors file's header: a truncated one is named)
        model, info = AutoModelForCausalLM.from_pretrained(
            str(d), dtype=dtype, use_safetensors=True, output_loading_info=True
        )
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise RlvrLinearError(f"{d}: cannot load the model ({type(e).__name__}: {e})") from None
    _refuse_missing(d, model, info.get("missing_keys", ()))
    return model


def _refuse_missing(d: Path, model, missing) -> None:
    """A tensor the checkpoint lacks would be left randomly initialised: refuse, naming it. A tied weight (``lm_head``
    sharing the embedding) is not missing, whether or not transformers lists it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {**dict(model.named_buffers(remove_duplicate=False)), **params}
    loaded = {t.data_ptr() for k, t in tensors.items() if k not in missing}
    lost = sorted(k for k in missing if k not in tensors or tensors[k].data_ptr() not in loaded)
    if lost:
        more = f" (and {len(lost) - 5} more)" if len(lost) > 5 else ""
        names = ", ".join(lost[:5]) + more
        raise RlvrLinearError(f"{d}: tensors missing from the checkpoint (they would be randomly initialised): {names}")


def _refuse_nonfinite(d: Path, model) -> None:
    """A NaN / Inf weight makes every output meaningless: refuse, naming the first such tensor."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise RlvrLinearError(f"{d}: tensor {name} has NaN or Inf values")


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
    d = Path(path)
    cdir = verl_shards.config_dir(d)
    if not (cdir / "config.json").exists():
        raise RlvrLinearError(f"{d}: verl FSDP shards without {verl_shards.HF_SUBDIR}/config.json: no model to build")
    with TensorReader(d, allow_pickle=True) as reader:
        return _filled_model(d, cdir, reader, dtype)


def _filled_model(d: Path, cdir: Path, reader: TensorReader, dtype: torch.dtype):
    """A causal LM built from ``cdir/config.json`` and filled from ``reader``, one tensor at a time."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

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
    keys = reader.keys()
    extra = sorted(set(keys) - set(target))
    if extra:
        raise RlvrLinearError(f"{d}: tensors the {type(model).__name__} does not have: {', '.join(extra[:5])}")
    filled: set[int] = set()
    for k in tqdm(keys, desc="loading weights", disable=True if len(keys) < 50 else None, leave=False):
        t = reader.get(k)
        if tuple(t.shape) != tuple(target[k].shape):
            want = tuple(target[k].shape)
            raise RlvrLinearError(f"{d}: {k} has shape {tuple(t.shape)}, the model expects {want}")
        with torch.no_grad():
            target[k].copy_(t)
        filled.add(target[k].data_ptr())
    missing = sorted(k for k, v in target.items() if v.data_ptr() not in filled)
    if missing:
        raise RlvrLinearError(f"{d}: tensors missing from the checkpoint: {', '.join(missing[:5])}")
    return model.eval()  # (as from_pretrained returns it)
