"""Pickled weights (``pytorch_model.bin``, its shards, verl's ``.pt`` shards): the one loader, restricted to tensors.

Pickles can run code when loaded, so every reader of such files goes through :func:`load_pickled_weights`, and only
when the user allowed it (``--allow-pickle``; the callers refuse otherwise). Even then the file is read with torch's
restricted unpickler (``weights_only=True``), which builds tensors and plain containers and nothing else unless the
caller allow-lists a few classes (verl's DTensors). A file that needs anything more is refused with one line naming
the file and the class it asked for; nothing in it is run.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import RlvrLinearError

#: torch's safe_globals() context is process-wide: one load at a time (a load only parses the pickle; mmap)
_LOAD_LOCK = threading.Lock()


def _reason(e: Exception, allowed: str) -> str:
    """One line on why torch refused the file (never its advice to load it unrestricted)."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"refused: it needs {m.group(1)} to load, and only {allowed} may be loaded from pickled weights"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if "weights_only" not in ln and "trust" not in ln] or [type(e).__name__]
    return f"cannot load it as {allowed} ({lines[0][:300]})"


def load_pickled_weights(file: str | Path, safe_globals: Sequence[type] = (), allowed: str = "tensors") -> dict:
    """``torch.load`` of ``file``: on the CPU, memory mapped (torch's zip format; the legacy format is read whole),
    ``weights_only=True`` with ``safe_globals`` allowed.

    Returns the state dict; anything but a dict, or a file the restricted unpickler refuses, is one error naming
    the file (``allowed`` says what may be in it, for that message).
    """
    file = Path(file)
    try:
        with open(file, "rb") as f:  # torch's zip format can be memory mapped; the legacy format is read whole
            zipped = f.read(4) == b"PK\x03\x04"
        with _LOAD_LOCK, torch.serialization.safe_globals(list(safe_globals)):
            sd = torch.load(file, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, zip / mmap errors: one error naming the file
        raise RlvrLinearError(f"{file}: {_reason(e, allowed)}") from None
    if not isinstance(sd, dict):
        raise RlvrLinearError(f"{file}: not a state dict (a {type(sd).__name__})")
    return sd
