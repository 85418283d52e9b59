"""Writing model folders: the files a model needs besides its weights, and weights streamed into shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import RlvrLinearError
from . import verl_shards
from .checkpoints import SAFE_INDEX, SAFE_SINGLE, WEIGHT_FILES, find_model_dir
from .containment import contained

NON_WEIGHT_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")


def copy_model_files(src: str | Path, dst: str | Path) -> None:
    """Copy config, generation config and tokenizer files (everything but weights) from ``src`` to ``dst``."""
    src, dst = verl_shards.config_dir(find_model_dir(src)), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not f.is_file() or f.name in WEIGHT_FILES or f.name.startswith("."):
            continue
        if f.suffix in NON_WEIGHT_SUFFIXES and not f.name.endswith(".index.json"):
            contained(src, f.name)  # a link out of the folder is refused, not copied into the new model
            try:
                shutil.copyfile(f, dst / f.name)  # content only: the copy follows the umask, as our other outputs
            except OSError as e:
                raise RlvrLinearError(f"{dst / f.name}: cannot write ({e.strerror or e})") from None


class ShardedWriter:
    """Stream tensors into sharded safetensors files plus ``model.safetensors.index.json``.

    Holds at most one shard's worth of tensors in memory. With a single shard the file is written
    as ``model.safetensors`` (no index), as ``save_pretrained`` does.
    """

    def __init__(self, out_dir: str | Path, max_shard_bytes: int = 2 * 1024**3):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[dict[str, torch.Tensor] | str] = []
        self._weight_map: dict[str, str] = {}
        self._total = 0
        self._tmp_names: list[str] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self._buf and self._buf_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buf[name] = tensor.detach().contiguous().cpu()
        self._buf_bytes += nbytes
        self._total += nbytes

    def _flush(self) -> None:
        if not self._buf:
            return
        tmp = f"shard-{len(self._tmp_names):05d}.tmp.safetensors"
        try:
            save_file(self._buf, str(self.out_dir / tmp), metadata={"format": "pt"})
        except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error type
            raise RlvrLinearError(f"{self.out_dir / tmp}: cannot write ({e})") from None
        for k in self._buf:
            self._weight_map[k] = tmp
        self._tmp_names.append(tmp)
        self._buf, self._buf_bytes = {}, 0

    def finalize(self) -> list[str]:
        """Write the last shard and the index; returns the weight file names."""
        self._flush()
        n = len(self._tmp_names)
        if n == 1:
            (self.out_dir / self._tmp_names[0]).rename(self.out_dir / SAFE_SINGLE)
            return [SAFE_SINGLE]
        names = {}
        for i, tmp in enumerate(self._tmp_names):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.out_dir / tmp).rename(self.out_dir / final)
            names[tmp] = final
        index = {
            "metadata": {"total_size": self._total},
            "weight_map": {k: names[v] for k, v in sorted(self._weight_map.items())},
        }
        (self.out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return list(names.values())
