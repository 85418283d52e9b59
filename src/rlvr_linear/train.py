"""Moved to :mod:`rlvr_linear.training.grpo` (GRPO training that saves a trajectory).

This module keeps the old import path working, including the private helpers that tests import from it (``_rows``,
the optimizer-state converters); they are not part of ``__all__``.
"""

from __future__ import annotations

from .training.grpo import (  # noqa: F401 (the private helpers are re-exported for tests)
    ALGORITHMS,
    LARGE_MODEL_MICRO_BATCH,
    PRESETS,
    TrainConfig,
    TrajectoryCallback,
    _optimizer_from_tensors,
    _optimizer_to_tensors,
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
