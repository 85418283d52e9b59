"""Where a trainer keeps its weights: unwrapping wrapped models, this rank's shard of every trainable parameter, and
a check that DDP ranks agree.

Shared by the two callbacks that touch the live weights: the re-grounding jump (:mod:`.regrounding`) edits the
local shards in place, and the linearity monitor (:mod:`.monitor`) samples them. Keeping these helpers here is what
lets neither callback import the other.
"""

from __future__ import annotations

from collections.abc import Iterator

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
            raise RlvrLinearError(
                "re-grounding: FSDP1 with use_orig_params=False exposes flattened parameters only; "
                "use FSDP2 (fsdp_version: 2) or set use_orig_params=True"
            )
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
