"""Moved to :mod:`rlvr_linear.training.monitor` (``LinearityMonitor``, the online linearity check).

This module keeps the old import path working.
"""

from __future__ import annotations

from .training.monitor import PREFIX, LinearityMonitor

__all__ = ["PREFIX", "LinearityMonitor"]
