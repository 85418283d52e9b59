"""Know before you jump: backtest linear predictors on a run's checkpoints and say how far a jump is safe.

:mod:`.backtest` (the error-ratio / h* arithmetic, shared with :mod:`rlvr_linear.training.monitor`), :mod:`.advise`
(reading a run, the recommendation, JSON / PNG / text), :mod:`.validate` (precision and recall of the
advisor's "safe" calls on labelled extrapolation cases) and :mod:`.calibrate` (the calibrated "safe" threshold,
fitted and cross-validated over runs). The advisor sits below training, whose monitor calls it live; the experiments
that train or re-score runs to test it live in the study: :mod:`rlvr_linear.study.advisor_cases` (the study's
weight-extrapolation jumps as labelled cases) and :mod:`rlvr_linear.study.adaptive_regrounding` (adaptive
re-grounding against standard RL and fixed (M, N)).

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``, ``models``, ``linearity``,
``extrapolation``.
"""

from .advise import Advice, advise
from .backtest import PREDICTORS, Backtest, Block, backtest

__all__ = ["Advice", "Backtest", "Block", "PREDICTORS", "advise", "backtest"]
