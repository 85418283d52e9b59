"""Files in and out: atomic outputs, the JSON cleaner, checkpoints (discovery, lazy reading, the sharded writer),
Hub sources and verl FSDP shards; the checks of values coming in (``validate``: config fields, YAML config files).

Importing this package loads only the light part (``atomic``, ``jsonable``); the checkpoint modules (which load
torch) are imported by name: ``rlvr_linear.io.checkpoints``, ``rlvr_linear.io.hub``, ``rlvr_linear.io.verl_shards``
(also importable under their old names ``rlvr_linear.checkpoints``, ``rlvr_linear.hub``, ``rlvr_linear.verl_shards``).
"""

from __future__ import annotations

from .atomic import atomic_dir, copy_file, mark_output, read_json, remove_stale_temps, write_json, write_npz, write_text
from .jsonable import jsonable
from .lock import locked

__all__ = [
    "atomic_dir",
    "copy_file",
    "jsonable",
    "locked",
    "mark_output",
    "read_json",
    "remove_stale_temps",
    "write_json",
    "write_npz",
    "write_text",
]
