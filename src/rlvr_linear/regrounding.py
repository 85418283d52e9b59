"""Moved to :mod:`rlvr_linear.training`: the in-process callback and the jump
(:mod:`~rlvr_linear.training.regrounding`), the any-trainer driver (:mod:`~rlvr_linear.training.reground_driver`)
and the distributed helpers (:mod:`~rlvr_linear.training.distributed`). The norm rule is
:func:`rlvr_linear.extrapolation.params.is_norm_param`, shared with weight extrapolation.

This module keeps the old import path working. Tests that swap the driver's extrapolation patch
``rlvr_linear.training.reground_driver._extrapolate``.
"""

from __future__ import annotations

from .extrapolation.params import NORM_MARKERS, NORM_POLICIES, is_norm_param
from .training.distributed import local_params, ranks_agree, unwrap_model
from .training.reground_driver import (
    PLACEHOLDERS,
    STATE_FILE,
    SUMMARY_FILE,
    CyclePlan,
    find_final_checkpoint,
    plan_cycles,
    reground_driver,
    render_command,
)
from .training.regrounding import (
    OPTIMIZER_POLICIES,
    ReGroundingCallback,
    capture_anchors,
    jump_,
    jumped_names,
    parse_spec,
    refresh_master_weights,
    reset_optimizer_state,
)

#: the old names of the norm rule (one rule, defined in :mod:`rlvr_linear.extrapolation.params`)
NORM_PATTERNS = NORM_MARKERS
is_norm_name = is_norm_param

__all__ = [
    "NORM_PATTERNS",
    "NORM_POLICIES",
    "OPTIMIZER_POLICIES",
    "PLACEHOLDERS",
    "STATE_FILE",
    "SUMMARY_FILE",
    "CyclePlan",
    "ReGroundingCallback",
    "capture_anchors",
    "find_final_checkpoint",
    "is_norm_name",
    "jump_",
    "jumped_names",
    "local_params",
    "parse_spec",
    "plan_cycles",
    "ranks_agree",
    "refresh_master_weights",
    "reground_driver",
    "render_command",
    "reset_optimizer_state",
    "unwrap_model",
]
