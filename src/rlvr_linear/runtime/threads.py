"""How many CPU threads torch uses: one place, so that small models never lose to oversubscription.

Two processes that each give torch all the cores oversubscribe them: on 2 cores two ``train --preset tiny``
runs each went ~60x slower (torch's OpenMP pools spin against each other). A small model gains nothing from
a second thread anyway, so the rule is:

1. ``--threads N`` (or ``threads=N`` in a config) wins;
2. else ``OMP_NUM_THREADS``, when set, is left in force (torch reads it at start-up);
3. else 1 thread for models under :data:`SMALL_MODEL_PARAMS` parameters, all usable cores above it.

The CLI calls :func:`configure` once per command (before any model is known, the provisional choice is 1
thread) and the code that loads a model calls :func:`for_params` with its size.
"""

from __future__ import annotations

import os

#: below this many parameters a second thread does not pay (tiny preset, 0.8M parameters: see the README's
#: "Threads" paragraph for the measurement); above it torch gets every usable core
SMALL_MODEL_PARAMS = 20_000_000

_state = {"mode": None}  # None: never configured (library use: leave torch alone); "explicit" | "env" | "auto"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose(n_params: int | None = None, requested: int | None = None, env: str | None = None) -> int | None:
    """The thread count the rule above gives; None means "leave torch as it is" (``OMP_NUM_THREADS`` is set)."""
    if requested:
        return max(1, int(requested))
    if env is None:
        env = os.environ.get("OMP_NUM_THREADS")
    if env and env.strip():
        return None
    if n_params is None or n_params < SMALL_MODEL_PARAMS:
        return 1
    return usable_cores()


def configure(requested: int | None = None) -> int:
    """Start-of-command choice: ``requested``, else ``OMP_NUM_THREADS``, else 1 until a model size is known."""
    import torch

    n = choose(None, requested)
    if requested:
        _state["mode"] = "explicit"
    elif n is None:
        _state["mode"] = "env"
    else:
        _state["mode"] = "auto"
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def use(n: int) -> int:
    """An explicit thread count (a config's ``threads``): set now and kept, whatever model is loaded later."""
    import torch

    _state["mode"] = "explicit"
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def for_params(n_params: int) -> int:
    """Once the model size is known: all cores for a large model, unless the count was set explicitly.

    Does nothing when :func:`configure` was never called (library use) or the count came from
    ``--threads`` / ``OMP_NUM_THREADS``.
    """
    import torch

    if _state["mode"] == "auto":
        torch.set_num_threads(choose(n_params, None, env=""))
    return torch.get_num_threads()


def for_model(model) -> int:
    """:func:`for_params` with the parameter count of a ``torch.nn.Module``."""
    return for_params(sum(p.numel() for p in model.parameters()))
