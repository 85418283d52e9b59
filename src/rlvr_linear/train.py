"""Moved to :mod:`rlvr_linear.training.grpo` (GRPO training that saves a trajectory).

This module keeps the old import path working.
"""

from __future__ import annotations

from .training.grpo import (
    ALGORITHMS,
    LARGE_MODEL_MICRO_BATCH,
    PRESETS,
    TrainConfig,
    TrajectoryCallback,
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
