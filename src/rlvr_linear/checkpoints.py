"""Moved to :mod:`rlvr_linear.io.checkpoints` (checkpoint discovery, the lazy tensor reader, the sharded writer).

This module keeps the old import path working."""

from __future__ import annotations

from .io.checkpoints import (
    BIN_INDEX,
    BIN_SINGLE,
    NON_WEIGHT_SUFFIXES,
    SAFE_INDEX,
    SAFE_SINGLE,
    SAFETENSORS_DTYPES,
    WEIGHT_FILES,
    Checkpoint,
    ShardedWriter,
    TensorReader,
    Trajectory,
    check_distinct,
    check_safetensors,
    check_weight_files,
    copy_model_files,
    discover,
    find_model_dir,
    has_weights,
    parse_step_path,
    step_of_path,
    weight_files,
)

__all__ = [
    "BIN_INDEX",
    "BIN_SINGLE",
    "Checkpoint",
    "NON_WEIGHT_SUFFIXES",
    "SAFETENSORS_DTYPES",
    "SAFE_INDEX",
    "SAFE_SINGLE",
    "ShardedWriter",
    "TensorReader",
    "Trajectory",
    "WEIGHT_FILES",
    "check_distinct",
    "check_safetensors",
    "check_weight_files",
    "copy_model_files",
    "discover",
    "find_model_dir",
    "has_weights",
    "parse_step_path",
    "step_of_path",
    "weight_files",
]
