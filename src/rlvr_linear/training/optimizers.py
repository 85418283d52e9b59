"""The optimizers every run can train with (RL, SFT, the study), and the one check of a name against them.

Light on purpose (no torch): ``StudyConfig`` validates with it before any model code is imported.
"""

from __future__ import annotations

from ..errors import RlvrLinearError

#: ``adamw`` (torch AdamW) or ``sgd`` (plain SGD, no momentum)
OPTIMIZERS = ("adamw", "sgd")


def check_optimizer(name: str) -> None:
    """Raise :class:`RlvrLinearError` naming the choices when ``name`` is not one of :data:`OPTIMIZERS`."""
    if name not in OPTIMIZERS:
        raise RlvrLinearError(f"unknown optimizer {name!r}; choose {' or '.join(OPTIMIZERS)}")
