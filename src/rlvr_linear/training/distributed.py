"""Where a trainer keeps its weights: unwrapping wrapped models, this rank's shard of every trainable parameter, the
full parameters gathered one at a time, and a check that DDP ranks agree.

Shared by the callbacks that touch the live weights: the re-grounding jump (:mod:`.regrounding`) edits the local
shards in place; the linearity monitor (:mod:`.monitor`) and the sketch (:mod:`.sketch_callback`) sample the full
parameters, gathered under sharding, with the single-process names, so that their numbers equal the single-process
ones. Keeping these helpers here is what lets no callback import another.

Sharding engines (:func:`sharding`): FSDP2 (``fully_shard``: DTensor parameters, ``Shard(0)``), FSDP1
(``FullyShardedDataParallel`` with ``use_orig_params=True``: each parameter a flat view of this rank's part, names
prefixed ``_fsdp_wrapped_module.``) and DeepSpeed ZeRO-3 (``p.ds_tensor``, this rank's flat partition). FSDP1 with
``use_orig_params=False`` exposes only flattened parameters: refused with one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..errors import RlvrLinearError


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / DataParallel / DeepSpeed engine / torch.compile wrappers (keeps FSDP: it cleans names itself)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif type(model).__name__ in ("DeepSpeedEngine", "PipelineEngine") and hasattr(model, "module"):
            model = model.module
        else:
            return model


def hf_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself: :func:`unwrap_model`, then the module inside an FSDP1 root wrapper."""
    m = unwrap_model(model)
    return m.module if type(m).__name__ == "FullyShardedDataParallel" else m


#: what FSDP1 (and activation checkpointing, torch.compile) insert into parameter names
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

FLAT_PARAMS = ("FSDP1 with use_orig_params=False exposes flattened parameters only; use FSDP2 (fsdp_version: 2) or "
               "set use_orig_params=True")  # fmt: skip


def clean_name(name: str) -> str:
    """``name`` without the wrappers' prefixes: the name the unwrapped model (and ``save_pretrained``) uses."""
    for p in WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def is_sampled_weight(name: str, t: torch.Tensor) -> bool:
    """The tensors the weight samples draw from (monitor, sketch, ``analyze weights``): floating ``*.weight``."""
    return name.endswith(".weight") and t.is_floating_point()


def sharding(model: torch.nn.Module) -> str | None:
    """``"fsdp2"``, ``"fsdp1"`` or ``"zero3"`` if ``model``'s parameters are sharded across ranks, else None."""
    m = unwrap_model(model)
    for p in m.parameters():
        if hasattr(p, "ds_tensor"):
            return "zero3"
        if type(p).__name__ == "DTensor":
            return "fsdp2"
    if any(type(x).__name__ == "FullyShardedDataParallel" for x in m.modules()):
        return "fsdp1"
    return None


def gathered_params(
    model: torch.nn.Module, keep: Callable[[str, torch.Tensor], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` for every trainable parameter that ``keep(name, param)`` accepts, under the
    unwrapped model's names (:func:`clean_name`), in ``named_parameters`` order.

    Under sharding a collective: every rank must call it with the same model and consume it to the end. Each
    parameter is gathered when it is reached and is valid until the next one is asked for (FSDP2:
    ``full_tensor()``; ZeRO-3: ``deepspeed.zero.GatheredParameters``; FSDP1: the whole model inside
    ``summon_full_params``, which holds every full parameter at once). Unsharded models give their parameters.
    """
    m = unwrap_model(model)
    kind = sharding(m)
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if any("flat_param" in n for n, _ in m.named_parameters()):
            raise RlvrLinearError(FLAT_PARAMS)
        with FSDP.summon_full_params(m, writeback=False):
            for n, p in m.named_parameters():
                name = clean_name(n)
                if p.requires_grad and (keep is None or keep(name, p)):
                    yield name, p.data
        return
    for n, p in m.named_parameters():
        name = clean_name(n)
        if not p.requires_grad or (keep is not None and not keep(name, p)):
            continue
        if kind == "zero3" and hasattr(p, "ds_tensor"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield name, p.data
        elif type(p).__name__ == "DTensor":
            yield name, p.full_tensor()
        else:
            yield name, p.data


def local_params(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, local tensor)`` for every trainable parameter; the tensor is this rank's shard where sharded.

    * DeepSpeed ZeRO-3: ``p.ds_tensor`` (the flat, possibly padded partition owned by this rank);
    * FSDP2 (DTensor parameters): ``p.to_local()`` (a view of this rank's shard, in-place edits reach the DTensor);
    * FSDP1 with ``use_orig_params=True``: ``p.data`` is already the sharded view (may be empty on some ranks);
    * anything else (single process, DDP, ZeRO-1/2): ``p.data``, the full tensor.
    """
    for name, p in unwrap_model(model).named_parameters():
        if not p.requires_grad:
            continue
        if "flat_param" in name:
            raise RlvrLinearError(f"re-grounding: {FLAT_PARAMS}")
        if hasattr(p, "ds_tensor"):
            yield name, p.ds_tensor.data
        elif hasattr(p, "to_local") and callable(p.to_local):
            yield name, p.to_local()
        else:
            yield name, p.data


@torch.no_grad()
def ranks_agree(model: torch.nn.Module) -> bool:
    """True if every rank holds the same full trainable weights (per-parameter sum and sum of squares; DDP only).

    Outside ``torch.distributed`` it returns True.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    stats = []
    for _, t in local_params(model):
        t = t.double()
        stats.extend([t.sum(), (t * t).sum()])
    if not stats:
        return True
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    vmax = torch.stack(stats).to(device)
    vmin = vmax.clone()
    dist.all_reduce(vmax, op=dist.ReduceOp.MAX)
    dist.all_reduce(vmin, op=dist.ReduceOp.MIN)
    return bool(torch.equal(vmax, vmin))
