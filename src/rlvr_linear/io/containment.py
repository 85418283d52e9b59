"""Paths named by files: a name read from a checkpoint (a shard index entry, a manifest path) stays inside its folder.

:func:`contained` is the one check, used wherever a name that comes from a file is joined to a folder. The name must
be relative, without ``..`` components, NUL or control characters, and its resolved real path (all symlinks followed)
must lie inside the folder's real path: ``../x``, ``/etc/x`` and a link pointing out are refused alike.

One layout is allowed a link out: a Hugging Face Hub cache snapshot (``models--ORG--REPO/snapshots/REV/...``), whose
files are links to ``models--ORG--REPO/blobs/<hash>``. A name there may resolve to a file directly in that
repository's ``blobs/`` folder, nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RlvrLinearError


def unsafe_part(name: object) -> str | None:
    """Why ``name`` cannot be a relative path inside a folder (None if it can): checked on the text alone."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name or name.strip("/") in ("", "."):
        return "empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "a NUL or control character"
    if name.startswith("/") or "\\" in name:
        return "an absolute path" if name.startswith("/") else "a backslash"
    if ".." in name.split("/"):
        return "a '..' component"
    return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _hub_blobs(real_root: Path) -> Path | None:
    """``models--ORG--REPO/blobs`` when ``real_root`` lies in a snapshot of that Hub cache repository, else None."""
    parts = real_root.parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            return Path(*parts[:i], "blobs")
    return None


def contained(root: str | Path, name: object, source: str | Path | None = None) -> Path:
    """``root / name``, if ``name`` stays inside the folder ``root``; else one error naming ``source`` and ``name``.

    ``source`` is the file (or Hub source) that gave the name; it defaults to ``root``. See the module docstring
    for the rules.
    """
    where = source if source is not None else root
    why = unsafe_part(name)
    if why is None:
        path = Path(root) / str(name)
        try:
            real_root, real, link = _real(Path(root)), _real(path), path.is_symlink()
        except (OSError, ValueError) as e:  # a name the OS cannot take (too long, not encodable)
            why = f"not a usable path ({type(e).__name__})"
        else:
            if real != real_root and real.is_relative_to(real_root):
                return path
            if real.parent == _hub_blobs(real_root):
                return path
            why = "it names the folder itself" if real == real_root else "it points outside the folder"
            why += f" (a link to {real})" if link else ""
    shown = repr(name)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    raise RlvrLinearError(f"{where}: refused the entry {shown}: {why}; it must be a path inside {root}")
