"""Moved to :mod:`rlvr_linear.training.sft` (supervised trajectories with token-level random-sign noise).

This module keeps the old import path working.
"""

from __future__ import annotations

from .training.sft import SFTConfig, noise_weights, signal_noise, train_sft, weighted_sft_loss

__all__ = ["SFTConfig", "noise_weights", "signal_noise", "train_sft", "weighted_sft_loss"]
