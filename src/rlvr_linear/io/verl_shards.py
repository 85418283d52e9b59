"""verl's FSDP checkpoints read in place, one parameter at a time, without a merged copy.

verl's ``FSDPCheckpointManager`` saves, per checkpoint, ``global_step_N/actor/`` with

* ``model_world_size_W_rank_R.pt`` for R in 0..W-1: ``torch.save`` of the rank's *sharded* model state dict,
  whose values are DTensors (the rank's local shard plus the device mesh and placements);
* ``huggingface/``: config and tokenizer (merged weights only when ``hf_model`` is in the checkpoint contents);
* ``optim_*.pt``, ``extra_state_*.pt``, ``fsdp_config.json`` (not read here).

:class:`FsdpShards` gathers a parameter from the ranks' local tensors following the placements recorded in
the DTensors (``Shard(d)``: concatenated along ``d`` in mesh order; ``Replicate()``: the first copy), nesting
over the mesh dimensions (``("fsdp",)`` or HSDP's ``("ddp", "fsdp")``). The files are opened with
``torch.load(mmap=True, weights_only=True)``: nothing is read until a parameter is gathered, and only the
gathered parameter (the last one, cached for row-wise readers) is held in memory beyond torch's mapping.

These files are pickles. They are read only with ``allow_pickle`` (``--allow-pickle``), and even then through
torch's restricted unpickler with only the DTensor-related classes below allow-listed; a file that needs
anything else is refused with an error naming the file and the class.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import torch

from ..errors import RlvrLinearError
from .containment import contained
from .pickled import load_pickled_weights

SHARD_RE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
#: the folder (next to the shards) with config.json and the tokenizer
HF_SUBDIR = "huggingface"

#: (module, name) of the classes a DTensor state dict pickles, across torch versions; those that exist are
#: allow-listed for ``torch.load(weights_only=True)``
_DTENSOR_CLASSES = [
    ("torch.distributed.tensor", "DTensor"),
    ("torch.distributed.tensor._dtensor_spec", "DTensorSpec"),
    ("torch.distributed.tensor._dtensor_spec", "TensorMeta"),
    ("torch.distributed.tensor._dtensor_spec", "ShardOrderEntry"),
    ("torch.distributed.tensor.placement_types", "Shard"),
    ("torch.distributed.tensor.placement_types", "Replicate"),
    ("torch.distributed.tensor.placement_types", "Partial"),
    ("torch.distributed.tensor.placement_types", "_StridedShard"),
    ("torch.distributed.device_mesh", "DeviceMesh"),
    ("torch.distributed._mesh_layout", "_MeshLayout"),
    ("torch.distributed._mesh_layout", "_FlatLayout"),
]


def dtensor_safe_globals() -> list[type]:
    """The DTensor-related classes of this torch that exist (what the restricted unpickler may build)."""
    import importlib

    out = []
    for mod, name in _DTENSOR_CLASSES:
        try:
            obj = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        out.append(obj)
    return out


def shard_files(path: str | Path) -> dict[int, Path]:
    """``{rank: file}`` of the ``model_world_size_W_rank_R.pt`` files in ``path`` ({} if none).

    Errors when files of several world sizes are mixed, a rank is missing or a file links out of ``path``.
    """
    p = Path(path)
    if not p.is_dir():
        return {}
    found: dict[int, dict[int, Path]] = {}
    for f in p.iterdir():
        m = SHARD_RE.match(f.name)
        if m:  # (a shard that is a link out of the folder is refused)
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = contained(p, f.name)
    if not found:
        return {}
    if len(found) > 1:
        raise RlvrLinearError(f"{p}: model shards of several world sizes {sorted(found)}; keep one set")
    ((world, files),) = found.items()
    missing = sorted(set(range(world)) - set(files))
    if missing:
        raise RlvrLinearError(
            f"{p}: incomplete verl checkpoint: model_world_size_{world}_rank_R.pt missing for ranks {missing}"
        )
    return dict(sorted(files.items()))


def is_shard_dir(path: str | Path) -> bool:
    """True if ``path`` holds verl FSDP model shards (``model_world_size_W_rank_R.pt``)."""
    p = Path(path)
    return p.is_dir() and any(SHARD_RE.match(f.name) for f in p.glob("model_world_size_*_rank_*.pt"))


def config_dir(path: str | Path) -> Path:
    """Where config.json and the tokenizer of a shard folder live (``huggingface/`` next to the shards)."""
    p = Path(path)
    return p / HF_SUBDIR if (p / HF_SUBDIR).is_dir() else p


class FsdpShards:
    """Lazy, per-parameter access to one verl FSDP checkpoint folder (``global_step_N/actor``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = shard_files(self.path)
        if not self.files:
            raise RlvrLinearError(f"{self.path}: no model_world_size_W_rank_R.pt files")
        self.world_size = len(self.files)
        self._sds: dict[int, dict] = {}
        self._last: tuple[str, torch.Tensor] | None = None
        keys = list(self._sd(0))
        cfg = self.config()
        tied = cfg.get("tie_word_embeddings", True)
        if tied and "lm_head.weight" in keys and "model.embed_tokens.weight" in keys:
            keys.remove("lm_head.weight")  # the tied copy: not stored by save_pretrained either
        self._keys = keys

    # -- loading ---------------------------------------------------------------------------------
    def _sd(self, rank: int) -> dict:
        sd = self._sds.get(rank)
        if sd is None:
            sd = self._sds[rank] = load_shard(self.files[rank])
        return sd

    def config(self) -> dict:
        cfg = config_dir(self.path) / "config.json"
        return json.loads(cfg.read_text()) if cfg.exists() else {}

    # -- metadata ----------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Sorted, as a safetensors checkpoint lists its tensors (so analyses list them in the same order)."""
        return sorted(self._keys)

    def _first(self, name: str):
        sd = self._sd(0)
        if name not in sd:
            raise RlvrLinearError(f"{self.path}: tensor {name!r} is missing from this checkpoint")
        return sd[name]

    def shape(self, name: str) -> tuple[int, ...]:
        t = self._first(name)
        if _is_dtensor(t):
            return tuple(t.shape)
        return (sum(self._plain(r, name).shape[0] for r in self.files), *t.shape[1:]) if t.dim() else ()

    def dtype(self, name: str) -> torch.dtype:
        return self._first(name).dtype

    # -- gathering ---------------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The full parameter, gathered from the ranks' shards (the last one is kept for repeated reads)."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        self._last = None  # release the previous parameter first
        t = self._first(name)
        full = self._gather_dtensor(name, t) if _is_dtensor(t) else self._gather_plain(name)
        self._last = (name, full)
        return full

    def _plain(self, rank: int, name: str) -> torch.Tensor:
        t = self._sd(rank).get(name)
        if t is None:
            raise RlvrLinearError(f"{self.files[rank]}: tensor {name!r} is missing from this shard")
        return t

    def _gather_plain(self, name: str) -> torch.Tensor:
        # not a DTensor: as verl's model merger, the ranks' pieces are concatenated along dim 0
        parts = [self._plain(r, name) for r in self.files]
        return parts[0] if len(parts) == 1 or parts[0].dim() == 0 else torch.cat(parts, dim=0)

    def _gather_dtensor(self, name: str, t0) -> torch.Tensor:
        from torch.distributed.tensor import Replicate, Shard

        mesh = t0.device_mesh.mesh
        placements = tuple(t0.placements)
        for pl in placements:
            if type(pl) not in (Shard, Replicate):
                raise RlvrLinearError(
                    f"{self.path}: tensor {name!r} has placement {pl}; only Shard and Replicate can be gathered"
                )

        def local(coord: tuple[int, ...]) -> torch.Tensor:
            rank = int(mesh[coord])
            if rank not in self.files:
                raise RlvrLinearError(f"{self.path}: rank {rank} of the device mesh has no shard file")
            lt = self._plain(rank, name)
            if not _is_dtensor(lt) or tuple(lt.placements) != placements:
                raise RlvrLinearError(f"{self.files[rank]}: tensor {name!r} is not sharded like in rank 0")
            return lt.to_local()

        def assemble(prefix: tuple[int, ...]) -> torch.Tensor:
            d = len(prefix)
            if d == mesh.dim():
                return local(prefix)
            pl = placements[d]
            if isinstance(pl, Replicate):
                return assemble((*prefix, 0))
            return torch.cat([assemble((*prefix, i)) for i in range(mesh.shape[d])], dim=pl.dim)

        full = assemble(())
        if tuple(full.shape) != tuple(t0.shape):
            raise RlvrLinearError(
                f"{self.path}: the shards of {name!r} gather to shape {tuple(full.shape)}, expected {tuple(t0.shape)}"
            )
        return full

    def close(self) -> None:
        self._sds.clear()
        self._last = None


def _is_dtensor(t) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "placements")


_LOG_LOCK = threading.Lock()


def load_shard(file: str | Path) -> dict:
    """``torch.load`` one rank's file: memory mapped, ``weights_only=True``, DTensor classes allow-listed."""
    mesh_log = logging.getLogger("torch.distributed.device_mesh")
    with _LOG_LOCK:  # (the logger's level is shared by the threads that load shards)
        level = mesh_log.level
        mesh_log.setLevel(logging.ERROR)  # "unpickling of the DeviceMesh occurred before the PGs were created"
        try:
            return load_pickled_weights(file, dtensor_safe_globals(), allowed="tensors and DTensor classes")
        finally:
            mesh_log.setLevel(level)
