"""Moved to :mod:`rlvr_linear.extrapolation`: the coefficient rules (:mod:`~rlvr_linear.extrapolation.rules`), the
tensor policy and option parsers (:mod:`~rlvr_linear.extrapolation.params`), the engine
(:mod:`~rlvr_linear.extrapolation.weights`) and the sweep (:mod:`~rlvr_linear.extrapolation.sweep`).

This module keeps the old import path working. Switches such as ``GRAM_CHUNK`` are read from their own module:
set them there (``rlvr_linear.extrapolation.weights.GRAM_CHUNK``), not here.
"""

from __future__ import annotations

from .extrapolation.params import BUFFER_SUFFIXES, NORM_MARKERS, is_norm_param, parse_dtype, parse_size, tensor_policy
from .extrapolation.rules import (
    MAX_ALPHA,
    alpha_from_steps,
    fit_line,
    least_squares_weights,
    rank_r_weights,
    target_from_alpha,
)
from .extrapolation.sweep import SweepResult, SweepRow, plot_sweep, sweep
from .extrapolation.weights import (
    ARCH_FIELDS,
    DEFAULT_SHARD_BYTES,
    GRAM_CHUNK,
    METADATA_FILE,
    TOKENIZER_FILES,
    extrapolate_fit,
    extrapolate_two_point,
    keep_char_tokenizer,
    select_checkpoints,
)
from .io.checkpoints import step_of_path

#: the old name of :func:`rlvr_linear.io.checkpoints.step_of_path`
step_from_path = step_of_path

__all__ = [
    "ARCH_FIELDS",
    "BUFFER_SUFFIXES",
    "DEFAULT_SHARD_BYTES",
    "GRAM_CHUNK",
    "MAX_ALPHA",
    "METADATA_FILE",
    "NORM_MARKERS",
    "SweepResult",
    "SweepRow",
    "TOKENIZER_FILES",
    "alpha_from_steps",
    "extrapolate_fit",
    "extrapolate_two_point",
    "fit_line",
    "is_norm_param",
    "keep_char_tokenizer",
    "least_squares_weights",
    "parse_dtype",
    "parse_size",
    "plot_sweep",
    "rank_r_weights",
    "select_checkpoints",
    "step_from_path",
    "step_of_path",
    "sweep",
    "target_from_alpha",
    "tensor_policy",
]
