"""Moved to :mod:`rlvr_linear.io.hub` (hf://ORG/REPO[@REV] checkpoint sources).

This module keeps the old import path working."""

from __future__ import annotations

from .io.hub import (
    ALLOW_PATTERNS,
    PREFIX,
    HubSource,
    is_hub_source,
    list_checkpoints,
    resolve_checkpoint,
    step_of_name,
)

__all__ = [
    "ALLOW_PATTERNS",
    "HubSource",
    "PREFIX",
    "is_hub_source",
    "list_checkpoints",
    "resolve_checkpoint",
    "step_of_name",
]
