"""Moved to :mod:`rlvr_linear.extrapolation`: the formulas, filters and sampler
(:mod:`~rlvr_linear.extrapolation.mixing`), the decoder :class:`ExtrapolatedGenerator`
(:mod:`~rlvr_linear.extrapolation.logits`) and scoring / records (:mod:`~rlvr_linear.extrapolation.logit_scoring`).

This module keeps the old import path working.
"""

from __future__ import annotations

from .extrapolation.logit_scoring import generate_records, resolve_weights, score
from .extrapolation.logits import DecodeOutput, ExtrapolatedGenerator
from .extrapolation.mixing import (
    check_tokenizers,
    check_vocab,
    filter_logits,
    mix_logits,
    mixed_log_probs,
    pair_weights,
)
from .extrapolation.rules import alpha_from_steps
from .io.checkpoints import step_of_path

#: the old name of :func:`rlvr_linear.io.checkpoints.step_of_path`
infer_step = step_of_path

__all__ = [
    "DecodeOutput",
    "ExtrapolatedGenerator",
    "alpha_from_steps",
    "check_tokenizers",
    "check_vocab",
    "filter_logits",
    "generate_records",
    "infer_step",
    "mix_logits",
    "mixed_log_probs",
    "pair_weights",
    "resolve_weights",
    "score",
]
