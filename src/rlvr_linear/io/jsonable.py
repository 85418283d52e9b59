"""The one JSON cleaner: numpy values, tuples, paths and non-finite floats made JSON-safe."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(obj: Any, *, finite: bool = True, paths: bool = False) -> Any:
    """JSON-safe copy of ``obj``: dict keys -> str, tuples -> lists, numpy arrays and scalars -> Python values.

    ``finite``: NaN / Inf -> None (JSON has no such numbers); False keeps them (``json`` writes ``NaN``).
    ``paths``: ``Path`` -> str. Anything else is returned as it is.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, finite=finite, paths=paths) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, finite=finite, paths=paths) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), finite=finite, paths=paths)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) or not finite else None
    if paths and isinstance(obj, Path):
        return str(obj)
    return obj
