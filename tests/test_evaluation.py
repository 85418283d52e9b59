from math import comb

import numpy as np
import pytest
import torch

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.evaluation import (
    HFGenerator,
    evaluate,
    mean_ci,
    paired_bootstrap,
    pass_at_k,
    pass_at_k_table,
)
from rlvr_linear.evaluation.tasks import get_task
from rlvr_linear.models.testing import make_pico_model


@pytest.mark.parametrize("n", [1, 5, 16])
def test_pass_at_k_matches_combinatorial_definition(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            ref = 1.0 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)


def test_pass_at_k_table_and_bad_k():
    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    tab = pass_at_k_table(correct)
    assert list(tab) == [1, 2, 3, 4]
    assert tab[1] == pytest.approx(np.mean([0.25, 0, 1]))
    assert tab[4] == pytest.approx(np.mean([1, 0, 1]))
    with pytest.raises(RlvrLinearError):
        pass_at_k(4, 1, 0)


def test_paired_bootstrap_ci_contains_true_difference():
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.3
    b = a | (rng.random(400) < 0.2)
    ci = paired_bootstrap(a, b, n_boot=2000)
    assert ci["diff"] == pytest.approx(b.mean() - a.mean())
    assert ci["ci_low"] < ci["diff"] < ci["ci_high"]
    assert ci["ci_low"] > 0
    same = paired_bootstrap(a, a, n_boot=500)
    assert same["diff"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_mean_ci():
    r = mean_ci([1.0, 2.0, 3.0])
    assert r["mean"] == 2.0 and r["std"] == 1.0
    assert r["ci_low"] == pytest.approx(2 - 4.303 / 3**0.5, abs=5e-4)  # the 3-decimal t-table value


@pytest.mark.parametrize("n", [3, 12, 40])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_mean_ci_matches_scipy_t(n, level):
    """Beyond the old 10-sample table and at other levels: the half-width is t(n-1) * s / sqrt(n), exactly."""
    from scipy import stats

    v = np.random.default_rng(n).normal(1.0, 2.0, n)
    r = mean_ci(v, level=level)
    s = v.std(ddof=1)
    h = stats.t.ppf(0.5 + level / 2, n - 1) * s / np.sqrt(n)
    assert r["n"] == n and r["mean"] == pytest.approx(v.mean()) and r["std"] == pytest.approx(s)
    assert r["ci_low"] == pytest.approx(v.mean() - h, rel=1e-12)
    assert r["ci_high"] == pytest.approx(v.mean() + h, rel=1e-12)
    if n > 10:  # not the normal quantile the table fell back to
        from statistics import NormalDist

        z = NormalDist().inv_cdf(0.5 + level / 2) * s / np.sqrt(n)
        assert r["ci_high"] - r["mean"] > z * 1.001


class EchoGenerator:
    """A dummy model: answers correctly on problems whose first operand is even, and 'x' otherwise."""

    tokenizer = None

    def generate(self, prompts, n=1, **kw):
        out = []
        for p in prompts:
            a, b = p.rstrip("=").split("+")
            out.append([str(int(a) + int(b)) if int(a) % 2 == 0 else "x"] * n)
        return out


def test_evaluate_with_dummy_generator():
    task = get_task("arithmetic")
    probs = task.problems("test", 50)
    res = evaluate(EchoGenerator(), task, problems=probs, k=4)
    expect = np.array([int(p.prompt.split("+")[0]) % 2 == 0 for p in probs])
    assert np.array_equal(res.greedy_correct, expect)
    assert res.correct.shape == (50, 4)
    assert res.avg_at_k == pytest.approx(expect.mean())
    assert res.pass_at_k[4] == pytest.approx(expect.mean())
    js = res.to_json()
    assert js["n_problems"] == 50 and js["avg@4"] == pytest.approx(expect.mean())


def test_hf_generator_greedy_batched_equals_one_by_one():
    model, tok = make_pico_model(seed=1)
    gen = HFGenerator(model, tok)
    prompts = ["1+2=", "12+34=", "5+67="]
    batched = gen.generate(prompts, greedy=True, max_new_tokens=5)
    single = [gen.generate([p], greedy=True, max_new_tokens=5)[0] for p in prompts]
    assert batched == single
    s1 = gen.generate(prompts, 3, temperature=1.0, max_new_tokens=5, seed=7)
    s2 = gen.generate(prompts, 3, temperature=1.0, max_new_tokens=5, seed=7)
    assert s1 == s2 and all(len(x) == 3 for x in s1)


def test_evaluate_saves_matrix(tmp_path, pico_dir):
    res = evaluate(pico_dir, "arithmetic", n_problems=6, k=2, max_new_tokens=4)
    res.save(tmp_path, "m")
    data = np.load(tmp_path / "m.npz")
    assert data["correct"].shape == (6, 2) and data["greedy_correct"].shape == (6,)
    with pytest.raises(RlvrLinearError, match="k must be"):
        evaluate(pico_dir, "arithmetic", n_problems=2, k=-1)
    torch.manual_seed(0)
