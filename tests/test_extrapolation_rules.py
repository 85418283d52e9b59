"""The coefficient-rule registry of :mod:`rlvr_linear.extrapolation.rules`: names, formulas, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.extrapolation import RULES, get_rule, rule_names
from rlvr_linear.extrapolation.rules import Coefficients, LeastSquares, RankR, TwoPoint


def _trajectory(rng: np.random.Generator, steps: np.ndarray, n: int = 40) -> np.ndarray:
    """(T, n) random trajectories: a random line per column plus noise, so the fit is not exact."""
    slope, intercept = rng.normal(size=n), rng.normal(size=n)
    return intercept + np.outer(steps, slope) + rng.normal(scale=0.3, size=(len(steps), n))


def test_the_registry_lists_the_three_rules():
    assert rule_names() == ["two-point", "least-squares", "rank-r"]
    assert RULES == {"two-point": TwoPoint, "least-squares": LeastSquares, "rank-r": RankR}
    assert isinstance(get_rule("rank-r", rank=3), RankR) and get_rule("rank-r", rank=3).rank == 3
    assert [get_rule(n).method for n in ("two-point", "least-squares")] == ["two-point", "least-squares"]
    assert get_rule("rank-r", rank=2).method == "rank-2"


@pytest.mark.parametrize("a,b,target", [(200, 1400, 2000), (0, 1, 1.5), (10, 30, 25)])
def test_two_point_coefficients_are_one_minus_alpha_and_alpha(a, b, target):
    alpha = (target - a) / (b - a)
    c = get_rule("two-point").coefficients([a, b], target)
    np.testing.assert_array_equal(c.weights, [1.0 - alpha, alpha])
    assert c.deltas == [alpha] and c.info == {}
    # the paper's run: alpha 1.5 -> (-0.5, 1.5)
    if (a, b, target) == (200, 1400, 2000):
        np.testing.assert_array_equal(c.weights, [-0.5, 1.5])


def test_two_point_needs_exactly_two_steps():
    with pytest.raises(RlvrLinearError, match="exactly 2 checkpoints, got 3"):
        get_rule("two-point").coefficients([0, 1, 2], 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_squares_sums_to_one_and_equals_polyfit_at_the_target(seed):
    rng = np.random.default_rng(seed)
    steps = np.sort(rng.choice(np.arange(0, 500), size=7, replace=False)).astype(float)
    target = float(steps[-1] + rng.uniform(10, 300))
    y = _trajectory(rng, steps)
    w = get_rule("least-squares").coefficients(steps, target).weights
    assert w.shape == (7,)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    predicted = w @ y
    expected = [np.polyval(np.polyfit(steps, y[:, j], 1), target) for j in range(y.shape[1])]
    np.testing.assert_allclose(predicted, expected, rtol=1e-9, atol=1e-9)


def test_least_squares_on_two_points_is_two_point():
    lsq = get_rule("least-squares").coefficients([100, 300], 450).weights
    two = get_rule("two-point").coefficients([100, 300], 450).weights
    np.testing.assert_allclose(lsq, two, rtol=0, atol=1e-12)
    np.testing.assert_allclose(two, [-0.75, 1.75], rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 3])
def test_rank_r_with_r_at_least_t_minus_one_equals_least_squares(seed):
    rng = np.random.default_rng(seed)
    steps = np.array([0.0, 20, 40, 60, 80, 100])
    target = 160.0
    y = _trajectory(rng, steps, n=200)
    d = y - y[0]  # the deltas D; its first row is zero
    gram = d @ d.T
    lsq = get_rule("least-squares").coefficients(steps, target).weights
    for r in (len(steps) - 1, len(steps), len(steps) + 3):
        c = get_rule("rank-r", rank=r).coefficients(steps, target, gram)
        assert c.info["fit"] == f"rank-{r}" and c.info["energy"] == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(c.weights, lsq, rtol=0, atol=1e-9)
        np.testing.assert_allclose(c.weights @ y, lsq @ y, rtol=1e-9, atol=1e-9)
    # a smaller rank really filters: the prediction differs from least squares and keeps less energy
    low = get_rule("rank-r", rank=1).coefficients(steps, target, gram)
    assert low.weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(low.weights @ y - lsq @ y).max() > 1e-3
    assert 0.0 < low.info["energy"] < 1.0
    # without a Gram matrix (a 1-D tensor) rank-r is the least-squares line
    line = get_rule("rank-r", rank=1).coefficients(steps, target)
    np.testing.assert_array_equal(line.weights, lsq)
    assert line.info == {"fit": "least-squares line"}


def test_unknown_rule_is_a_one_line_error_listing_the_known_ones():
    with pytest.raises(RlvrLinearError) as e:
        get_rule("cubic")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == "unknown coefficient rule 'cubic'; known rules: two-point, least-squares, rank-r"


def test_bad_parameters_are_errors():
    with pytest.raises(RlvrLinearError, match="rank must be >= 1, got 0"):
        get_rule("rank-r", rank=0)
    with pytest.raises(RlvrLinearError, match="bad parameters"):
        get_rule("two-point", rank=2)


def test_deltas_are_the_engines_coefficients():
    c = Coefficients(np.array([0.25, -0.5, 1.25]))
    assert c.deltas == [-0.5, 1.25] and all(type(x) is float for x in c.deltas)
