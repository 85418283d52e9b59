"""Files in and out: atomic outputs, the JSON cleaner, checkpoints (discovery, lazy reading, the sharded writer),
Hub sources and verl FSDP shards, a checkpoint folder loaded as ``(model, tokenizer)`` (:mod:`.loading`, the one
guarded way in) and the character tokenizer that survives a save (:mod:`.tokenizer`); the checks of values coming in
(``validate``: config fields, YAML config files).

Importing this package loads only the light part (``atomic``, ``jsonable``, ``lock``); the modules that load torch are
imported by name: ``rlvr_linear.io.checkpoints``, ``rlvr_linear.io.writer``, ``rlvr_linear.io.hub``,
``rlvr_linear.io.verl_shards``, ``rlvr_linear.io.loading``.

May import: ``errors``, ``runtime``.
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
