"""Know before you jump: backtest linear predictors on a run's checkpoints and say how far a jump is safe.

:mod:`.backtest` (the error-ratio / h* arithmetic, shared with :mod:`rlvr_linear.monitor`), :mod:`.advise`
(reading a run, the recommendation, JSON / PNG / text), :mod:`.validate` (precision and recall of the
advisor's "safe" calls on labelled extrapolation cases), :mod:`.calibrate` (the calibrated "safe" threshold, fitted
and cross-validated over runs), :mod:`.study_cases` (the study's weight-extrapolation jumps as labelled cases) and
:mod:`.compare` (adaptive re-grounding against standard RL and fixed (M, N)).
"""

from .advise import Advice, advise
from .backtest import PREDICTORS, Backtest, Block, backtest

__all__ = ["Advice", "Backtest", "Block", "PREDICTORS", "advise", "backtest"]
