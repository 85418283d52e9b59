"""The coefficient rules of weight-space extrapolation, as a small registry (name -> rule).

Every predictor of this package writes the weights at a target step as a fixed linear combination of the selected
checkpoints ``W_1 .. W_T`` (oldest first), so a rule only has to produce the per-checkpoint coefficients ``c`` with
``W(target) = sum_i c_i W_i`` and ``sum_i c_i = 1``. The engine (:mod:`.weights`) computes it as
``W_first + sum_{i >= 2} c_i (W_i - W_first)`` to avoid cancellation; a rule never sees a tensor, only the steps,
the target and, for rank-r, the T x T Gram matrix of one tensor's deltas. Keeping the rules apart from the
streaming engine is what lets the backtest (:mod:`rlvr_linear.advisor.backtest`) score the same predictors on
sampled rows that the engine applies to whole checkpoints.

Rules (registered in the way mergekit registers merge methods: a name, a small class, its parameters):

* ``two-point`` (paper §5.1): ``c = (1 - alpha, alpha)`` with ``alpha = (T - a) / (b - a)``. Two steps only.
* ``least-squares``: per parameter, the line fitted to all points evaluated at the target; ``c`` is one row of
  the hat matrix, ``c_i = 1/T + (tau - s_mean)(s_i - s_mean) / sum_j (s_j - s_mean)^2``. With two checkpoints it
  is exactly two-point.
* ``rank-r`` (RELEX-style, arXiv 2605.21468; parameter ``rank``): the least-squares row projected onto the top-r
  eigenvectors of the Gram matrix ``G = D D^T`` of the deltas ``D = [W_i - W_first]`` (see :func:`rank_r_weights`);
  for ``r >= T - 1`` it equals least squares, because the first row of D is zero. Without a Gram matrix (1-D
  tensors) it falls back to the least-squares line.

:func:`get_rule` builds a rule by name; an unknown name is a one-line :class:`~rlvr_linear.errors.RlvrLinearError`
that lists the known ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import RlvrLinearError

#: alphas outside (0, MAX_ALPHA] are refused unless ``force``
MAX_ALPHA = 20.0


# --------------------------------------------------------------------------------------------------
# The formulas


def alpha_from_steps(base_step: float, second_step: float, target_step: float) -> float:
    """``alpha = (T - a) / (b - a)``: the two-point coefficient that reaches step T from steps a and b."""
    if second_step == base_step:
        raise RlvrLinearError(
            f"base step and second step are both {base_step}; extrapolation needs two different steps"
        )
    return (target_step - base_step) / (second_step - base_step)


def target_from_alpha(base_step: float, second_step: float, alpha: float) -> float:
    """``T = a + alpha * (b - a)``: the step that ``alpha`` reaches from steps a and b (inverse of alpha_from_steps)."""
    return base_step + alpha * (second_step - base_step)


def check_alpha(alpha: float, force: bool, what: str = "alpha") -> None:
    """Refuse a non-finite alpha, and one outside (0, :data:`MAX_ALPHA`] unless ``force``."""
    if not math.isfinite(alpha):
        raise RlvrLinearError(f"{what} must be a finite number, got {alpha}")
    if (alpha <= 0 or alpha > MAX_ALPHA) and not force:
        raise RlvrLinearError(
            f"{what}={alpha:g} is outside (0, {MAX_ALPHA:g}]; alpha <= 0 goes back past the base checkpoint and "
            f"large alphas usually break the model (paper Fig. 5 peaks at alpha 1.3-3); pass --force to allow it"
        )


def least_squares_weights(steps: Sequence[float], target: float) -> np.ndarray:
    """Hat-matrix row ``w`` with ``sum_i w_i y_i`` = least-squares line through ``(steps, y)`` at ``target``."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) < 2:
        raise RlvrLinearError(f"a least-squares line needs at least 2 checkpoints, got {len(s)}")
    c = s - s.mean()
    sxx = float(c @ c)
    if sxx == 0.0:
        raise RlvrLinearError(f"all checkpoints have the same step {s[0]:g}; cannot fit a line")
    return 1.0 / len(s) + (target - s.mean()) * c / sxx


def fit_line(steps: Sequence[float], values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised least squares for ``values`` of shape (T, n) (array or tensor): returns ``(slope, intercept)``."""
    s = np.asarray(steps, dtype=np.float64)
    y = values.double().numpy() if hasattr(values, "double") else np.asarray(values, dtype=np.float64)
    c = s - s.mean()
    sxx = float(c @ c)
    if sxx == 0.0:
        raise RlvrLinearError("all checkpoints have the same step; cannot fit a line")
    slope = (c @ y) / sxx
    return slope, y.mean(0) - slope * s.mean()


def rank_r_weights(gram: Any, w: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    """Project least-squares weights onto the top-``rank`` eigenvectors of the Gram matrix (array or tensor).

    Returns ``(beta, energy)``: ``W(tau) = W_first + sum_i beta_i (W_i - W_first)`` and the share of
    ``||D||^2`` in the kept components. Through ``G = D D^T = U S^2 U^T`` the RELEX prediction
    ``W_first + C(tau) V`` (``C = U_R S_R``, ``V = S_R^-1 U_R^T D``, ``C(tau) = C^T w``) collapses to
    ``W_first + (U_R U_R^T w)^T D``: no division by singular values, no sign ambiguity.
    """
    g = gram.numpy() if hasattr(gram, "numpy") else np.asarray(gram, dtype=np.float64)
    evals, evecs = np.linalg.eigh(g)  # ascending
    r = min(rank, len(evals))
    u = evecs[:, -r:]
    total = float(np.clip(evals, 0, None).sum())
    energy = float(np.clip(evals[-r:], 0, None).sum() / total) if total > 0 else 1.0
    return u @ (u.T @ w), energy


# --------------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True)
class Coefficients:
    """What a rule returns for one tensor: ``W(target) = sum_i weights_i W_i`` (oldest first; sums to 1)."""

    weights: np.ndarray
    #: extra fields for the tensor's entry in ``extrapolation.json`` (e.g. rank-r's kept energy)
    info: dict = field(default_factory=dict)

    @property
    def deltas(self) -> list[float]:
        """The engine's coefficients ``c_i`` (i >= 2) of ``W_first + sum_i c_i (W_i - W_first)``."""
        return [float(x) for x in self.weights[1:]]


class Rule:
    """One coefficient rule. Subclasses set ``name`` / ``formula`` and implement :meth:`coefficients`."""

    name: ClassVar[str]
    #: the formula recorded in ``extrapolation.json``
    formula: ClassVar[str]
    #: True when :meth:`coefficients` uses the Gram matrix of a tensor's deltas (the engine then streams it)
    needs_gram: ClassVar[bool] = False

    @property
    def method(self) -> str:
        """The method name recorded in ``extrapolation.json`` and shown in sweeps."""
        return self.name

    def coefficients(self, steps: Sequence[float], target: float, gram: Any = None) -> Coefficients:
        raise NotImplementedError


#: rule name -> rule class; filled by :func:`register`
RULES: dict[str, type[Rule]] = {}


def register(name: str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: make a :class:`Rule` available to :func:`get_rule` under ``name``."""

    def deco(cls: type[Rule]) -> type[Rule]:
        if name in RULES:
            raise RlvrLinearError(f"coefficient rule {name!r} is registered twice")
        cls.name = name
        RULES[name] = cls
        return cls

    return deco


def rule_names() -> list[str]:
    """The registered rule names, in registration order."""
    return list(RULES)


def get_rule(name: str, **params: Any) -> Rule:
    """The rule registered as ``name``, built with ``params`` (``rank`` for ``rank-r``)."""
    cls = RULES.get(name)
    if cls is None:
        raise RlvrLinearError(f"unknown coefficient rule {name!r}; known rules: {', '.join(RULES)}")
    try:
        return cls(**params)
    except TypeError as e:
        raise RlvrLinearError(f"coefficient rule {name!r}: bad parameters {params} ({e})") from None


@register("two-point")
@dataclass(frozen=True)
class TwoPoint(Rule):
    """``c = (1 - alpha, alpha)``, ``alpha = (T - a) / (b - a)`` (paper §5.1).

    With unknown steps pass ``steps=(0, 1)`` and ``target=alpha``: then ``alpha_from_steps`` returns alpha itself.
    """

    formula: ClassVar[str] = "W = W_base + alpha * (W_second - W_base)"

    def coefficients(self, steps: Sequence[float], target: float, gram: Any = None) -> Coefficients:
        if len(steps) != 2:
            raise RlvrLinearError(f"the two-point rule needs exactly 2 checkpoints, got {len(steps)}")
        alpha = alpha_from_steps(float(steps[0]), float(steps[1]), float(target))
        return Coefficients(np.array([1.0 - alpha, alpha]))


@register("least-squares")
@dataclass(frozen=True)
class LeastSquares(Rule):
    """The least-squares line through all selected checkpoints, evaluated at the target (one hat-matrix row)."""

    formula: ClassVar[str] = "W = W_first + sum_i w_i (W_i - W_first), w = least-squares hat row at target"

    def coefficients(self, steps: Sequence[float], target: float, gram: Any = None) -> Coefficients:
        return Coefficients(least_squares_weights(steps, float(target)))


@register("rank-r")
@dataclass(frozen=True)
class RankR(Rule):
    """The least-squares row projected onto the top-``rank`` left singular vectors of the deltas (RELEX-style)."""

    rank: int = 1
    formula: ClassVar[str] = "W = W_first + (U_R U_R^T w)^T D, D = [W_i - W_first], U_R = top-R eigenvectors of D D^T"
    needs_gram: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise RlvrLinearError(f"rank must be >= 1, got {self.rank}")

    @property
    def method(self) -> str:
        return f"rank-{self.rank}"

    def coefficients(self, steps: Sequence[float], target: float, gram: Any = None) -> Coefficients:
        """With ``gram=None`` (a 1-D tensor) the plain least-squares line; else the rank-r projection.

        ``weights[0]`` is ``1 - sum(weights[1:])`` (the projection's own first entry multiplies the zero row of D
        and so never matters); ``weights[1:]`` are the projected coefficients exactly.
        """
        w = least_squares_weights(steps, float(target))
        if gram is None:
            return Coefficients(w, {"fit": "least-squares line"})
        beta, energy = rank_r_weights(gram, w, int(self.rank))
        full = np.concatenate([[1.0 - float(beta[1:].sum())], beta[1:]])
        return Coefficients(full, {"fit": f"rank-{self.rank}", "energy": round(energy, 6)})
