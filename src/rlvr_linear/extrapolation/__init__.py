"""Extrapolation: predict later checkpoints from earlier ones, in weight space and in output (logit) space.

One concept per module:

* :mod:`.rules`: the coefficient rules (``two-point``, ``least-squares``, ``rank-r``) as a registry: given the
  selected steps and the target, the per-checkpoint coefficients (or the rank-r projection). Pure numpy.
* :mod:`.params`: which tensors move (the one norm-parameter rule, buffers, non-float tensors) and the dtype / size
  parsers of the options.
* :mod:`.weights`: the weight engine: checkpoint selection, the streamed combine, the sharded writer and its
  ``extrapolation.json`` (:func:`~.weights.extrapolate_two_point`, :func:`~.weights.extrapolate_fit`).
* :mod:`.sweep`: extrapolate to several targets, evaluate each, keep the best, plot (paper Fig. 5).
* :mod:`.mixing`: the logit-mixing formulas, top-k / top-p filters, the sampler, model compatibility checks.
* :mod:`.logits`: :class:`~.logits.ExtrapolatedGenerator`, the lockstep K-model decoder (and its teacher forcing).
* :mod:`.logit_scoring`: :func:`~.logit_scoring.score`, the command line's mixing weights, decoded records.
* :mod:`.lm_eval_adapter`: the lm-evaluation-harness backend ``rlvr-linear-extrapolated`` (optional extra
  ``rlvr-linear[lm-eval]``; ``python -m rlvr_linear.extrapolation.lm_eval_adapter``).

Step parsing is :func:`rlvr_linear.io.checkpoints.step_of_path` everywhere. Importing this package loads only the
registry; the engines (which load torch) are imported by name.

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``.
"""

from __future__ import annotations

from .rules import RULES, Coefficients, Rule, get_rule, register, rule_names

__all__ = ["RULES", "Coefficients", "Rule", "get_rule", "register", "rule_names"]
