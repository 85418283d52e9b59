"""Moved to :mod:`rlvr_linear.io.checkpoints` (checkpoint discovery, the lazy tensor reader) and
:mod:`rlvr_linear.io.writer` (the sharded writer, copying a model's non-weight files).

This module keeps the old import path working."""

from __future__ import annotations

from .io.checkpoints import (
    BIN_INDEX,
    BIN_SINGLE,
    SAFE_INDEX,
    SAFE_SINGLE,
    SAFETENSORS_DTYPES,
    WEIGHT_FILES,
    Checkpoint,
    TensorReader,
    Trajectory,
    check_distinct,
    check_safetensors,
    check_weight_files,
    discover,
    find_model_dir,
    has_weights,
    parse_step_path,
    step_of_path,
    weight_files,
)
from .io.writer import NON_WEIGHT_SUFFIXES, ShardedWriter, copy_model_files

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
