"""Moved to :mod:`rlvr_linear.io.verl_shards` (verl FSDP shards gathered per parameter).

This module keeps the old import path working."""

from __future__ import annotations

from .io.verl_shards import (
    HF_SUBDIR,
    SHARD_RE,
    FsdpShards,
    config_dir,
    dtensor_safe_globals,
    is_shard_dir,
    load_shard,
    shard_files,
)

__all__ = [
    "FsdpShards",
    "HF_SUBDIR",
    "SHARD_RE",
    "config_dir",
    "dtensor_safe_globals",
    "is_shard_dir",
    "load_shard",
    "shard_files",
]
