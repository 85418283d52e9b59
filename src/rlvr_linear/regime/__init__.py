"""The regime map: where, over learning rate x responses per step (and contrasts: SGD, long responses),
the paper's effects appear in miniature. ``grid`` fixes the points and horizons, ``runner`` trains and caches,
``analysis`` measures each run, ``cases`` builds and scores its extrapolation cases, ``render`` writes the map and its
figures, ``trajectory`` runs the map's measurements on any finished run, ``trajectory_stage`` makes that the study's
``trajectory`` stage (the real-model protocol's analysis). See docs/regime.md.

The map reuses the study's protocol and helpers, so it sits above the study: ``rlvr-linear study --stages regime``
runs it from the command line (:func:`run_regime`), and the study's report reads its ``regime_map.json``.

May import: ``errors``, ``runtime``, ``io``, ``evaluation``, ``reporting``, ``models``, ``linearity``,
``extrapolation``, ``advisor``, ``training``, ``study``.
"""

from .grid import Item, Point, main_grid, queue
from .runner import Regime, run_regime
from .trajectory_stage import run_trajectory_stage, summarize

__all__ = ["Item", "Point", "Regime", "main_grid", "queue", "run_regime", "run_trajectory_stage", "summarize"]
