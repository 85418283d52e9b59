"""Moved to :mod:`rlvr_linear.training.grpo` (GRPO training that saves a trajectory).

This module keeps the old import path working, including the private helper that tests import from it (``_rows``);
it is not part of ``__all__``. The optimizer-state converters live in :mod:`rlvr_linear.training.resume`.
"""

from __future__ import annotations

from .training.grpo import (  # noqa: F401 (the private helper is re-exported for tests)
    ALGORITHMS,
    LARGE_MODEL_MICRO_BATCH,
    PRESETS,
    TrainConfig,
    TrajectoryCallback,
    _rows,
    micro_batch_size,
    resolve_model,
    save_checkpoint,
    summarize,
    train,
)

__all__ = [
    "ALGORITHMS",
    "LARGE_MODEL_MICRO_BATCH",
    "PRESETS",
    "TrainConfig",
    "TrajectoryCallback",
    "micro_batch_size",
    "resolve_model",
    "save_checkpoint",
    "summarize",
    "train",
]
