"""The regime map (issue 10): where, over learning rate x responses per step (and contrasts: SGD, long responses),
the paper's effects appear in miniature. ``grid`` fixes the points and horizons, ``runner`` trains and caches,
``analysis`` measures each run, ``render`` writes the map and its figures. See docs/regime.md.
"""

from .grid import Item, Point, main_grid, queue
from .runner import Regime, run_regime

__all__ = ["Item", "Point", "Regime", "main_grid", "queue", "run_regime"]
