"""Know before you jump: backtest linear predictors on a run's checkpoints and say how far a jump is safe.

:mod:`.backtest` (the error-ratio / h* arithmetic, shared with :mod:`rlvr_linear.monitor`), :mod:`.advise`
(reading a run, the recommendation, JSON / PNG / text) and :mod:`.validate` (precision and recall of the
advisor's "safe" calls on labelled extrapolation cases).
"""

from .advise import Advice, advise
from .backtest import PREDICTORS, Backtest, Block, backtest

__all__ = ["Advice", "Backtest", "Block", "PREDICTORS", "advise", "backtest"]
