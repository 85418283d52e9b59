"""The optimizers every run can train with (RL, SFT, the study), and the one check of a name against them.

Light on purpose (no torch): ``StudyConfig`` validates with it before any model code is imported.
"""

from __future__ import annotations

from ..errors import RlvrLinearError

#: ``adamw`` (torch AdamW) or ``sgd`` (plain SGD, no momentum)
OPTIMIZERS = ("adamw", "sgd")

#: SGD needs a far larger step than AdamW (no per-parameter normalisation): an SGD rate is this many times the AdamW
#: rate it stands for (fixed once; the study's robustness settings and the regime map's SGD points use it)
SGD_LR_FACTOR = 100.0


def check_optimizer(name: str) -> None:
    """Raise :class:`RlvrLinearError` naming the choices when ``name`` is not one of :data:`OPTIMIZERS`."""
    if name not in OPTIMIZERS:
        raise RlvrLinearError(f"unknown optimizer {name!r}; choose {' or '.join(OPTIMIZERS)}")
