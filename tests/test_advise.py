import json
import zlib

import numpy as np
import pytest
import torch

from rlvr_linear.advisor import advise
from rlvr_linear.advisor.advise import CLAIM, NOT_LINEAR, NOT_SAFE, read_curve
from rlvr_linear.advisor.backtest import Block, backtest, coefficients
from rlvr_linear.advisor.calibrate import SAFE_BOUND
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.extrapolation.rules import least_squares_weights
from rlvr_linear.models.testing import make_pico_dir, make_trajectory

STEPS = list(range(0, 220, 20))  # 11 checkpoints


def _gen(name: str, extra: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) + 7919 * extra)


def _direction(name, w):
    return torch.randn(w.shape, generator=_gen(name))


def line_plus_noise(name, w, s, i):  # drift 1e-3/step, noise sd 1e-3 (20x smaller than one save interval's drift)
    return w + 1e-3 * s * _direction(name, w) + 1e-3 * torch.randn(w.shape, generator=_gen(name, i + 1))


def random_walk(name, w, s, i):  # driftless: the sum of i independent N(0, 0.02^2) increments
    steps = [torch.randn(w.shape, generator=_gen(name, t + 1)) for t in range(i)]
    return w + 0.02 * (torch.stack(steps).sum(0) if steps else 0)


def bends(name, w, s, i):  # slope falls linearly and reaches 0 at step 200: s - s^2 / 400
    return w + 1e-3 * (s - s * s / 400.0) * _direction(name, w)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    return {name: make_trajectory(root / name, STEPS, fn) for name, fn in
            [("line", line_plus_noise), ("walk", random_walk), ("bend", bends)]}  # fmt: skip


def _safe_h(adv, p):
    return adv.spaces["weights"][p].h_star_below(SAFE_BOUND)


def test_one_decision_on_a_line_a_walk_and_a_bend(runs):
    line, walk, bend = (advise(runs[k]) for k in ("line", "walk", "bend"))
    # the exact line: every predictor beats "no change" at every backtested horizon, and the jump is calibrated safe
    rec = line.recommendation
    assert rec["extrapolate"] and rec["decision"] == "extrapolate" and rec["claim"] == CLAIM
    best = max(("two_point", "lsq_last_k", "rank1"), key=lambda p: _safe_h(line, p))
    assert rec["h_steps"] == _safe_h(line, best) >= 800 and rec["target_step"] == 200 + int(rec["h_steps"])
    assert rec["verdict"] == f"extrapolate with {rec['predictor']} to step {rec['target_step']}"
    assert line.h_star("two_point") >= 800 and rec["evidence"]["linear"] and rec["evidence"]["h_star_steps"] >= 800
    assert all(r["upper"] < 0.2 for r in line.spaces["weights"]["two_point"].rows)
    # the random walk: "no change" is the best forecast, so no horizon is safe
    w = walk.recommendation
    assert (w["extrapolate"], w["decision"], w["verdict"]) == (False, "do not extrapolate", NOT_LINEAR)
    assert not w["evidence"]["linear"] and w["evidence"]["why"].startswith("no predictor beats 'no change'")
    assert all(walk.h_star(p) == 0 for p in ("two_point", "lsq_last_k", "rank1"))
    assert all(r["ratio"] > 1 for bt in walk.spaces["weights"].values() for r in bt.rows)
    # the bend: only the local line (last 4 checkpoints) wins, and only over short jumps; the decision follows the
    # calibrated horizon (a jump only if one passes the bound)
    b = bend.recommendation
    assert bend.h_star("two_point") == 0 and 0 < b["evidence"]["h_star_steps"] <= 80 and b["evidence"]["linear"]
    hc = {p: _safe_h(bend, p) for p in ("two_point", "lsq_last_k", "rank1")}
    assert b["evidence"]["safe_h_by_predictor"] == hc
    if max(hc.values()) > 0:
        assert b["extrapolate"] and b["h_steps"] == max(hc.values()) <= 80
    else:
        assert (b["extrapolate"], b["verdict"]) == (False, NOT_SAFE)
    rows = bend.spaces["weights"]["lsq_last_k"].rows
    assert rows[0]["ratio"] < 1 < rows[-1]["ratio"]
    # one decision in the text too: no second verdict
    for adv in (line, walk, bend):
        text = adv.summary_text()
        assert text.count("decision: ") == 1 and "recommendation" not in text and "safe horizon" not in text
        assert f"decision: {adv.recommendation['verdict']}" in text


def test_bend_error_ratio_matches_closed_form(runs):
    """Two-point from step 0 on f(s) = s - s²/400.

    Prediction error x_j (x_j - x_o) / 400, naive error (x_j - x_o)(1 - (x_j + x_o) / 400).
    """
    adv = advise(runs["bend"], predictors=["two_point"])
    for p in adv.spaces["weights"]["two_point"].pairs:
        xo, xj = p["origin"], p["target"]
        expect = abs(xj / (400 - xj - xo)) if xj + xo != 400 else np.inf
        assert p["ratio"] == pytest.approx(expect, rel=1e-3)


def test_outputs_json_png_text(runs, tmp_path):
    man = json.loads((runs["line"] / "manifest.json").read_text())
    for c in man["checkpoints"]:
        c["val_accuracy"] = 0.2 + 0.001 * c["step"] + (0.01 if c["step"] % 40 else 0.0)
    (runs["line"] / "manifest.json").write_text(json.dumps(man))
    adv = advise(runs["line"])
    out = adv.save(tmp_path / "o")
    data = json.loads((out / "advice.json").read_text())
    assert data["recommendation"]["predictor"] in ("two_point", "lsq_last_k", "rank1")
    assert data["recommendation"]["target_step"] == int(200 + data["recommendation"]["h_steps"])
    assert set(data["spaces"]) == {"weights", "curve"} and data["stats"]["curve"]["metric"] == "val_accuracy"
    assert data["stats"]["curve"]["values"][-1] == pytest.approx(0.4)
    assert (out / "advice.png").stat().st_size > 1000
    assert f"decision: {data['recommendation']['verdict']}" in (out / "advice.txt").read_text()


def test_until_does_not_peek(runs):
    a = advise(runs["bend"], until=100)
    assert a.steps == [0, 20, 40, 60, 80, 100]
    assert max(p["target"] for bt in a.spaces["weights"].values() for p in bt.pairs) == 100


def test_coefficients_reuse_weight_extrapolation_rules():
    x = np.array([0.0, 10.0, 20.0, 30.0])
    assert np.allclose(coefficients("two_point", x, [0, 2], 50.0), [1 - 2.5, 2.5])
    assert np.allclose(coefficients("lsq_last_k", x, [1, 2, 3], 50.0), least_squares_weights([10, 20, 30], 50))
    # rank-1 on an exact rank-1 trajectory reproduces the least-squares prediction
    y = np.outer(x**2, np.arange(1.0, 6.0))
    c = coefficients("rank1", x, [0, 1, 2, 3], 50.0, Block("m", y))
    assert np.allclose(c @ y, least_squares_weights(x, 50.0) @ y)


def test_curve_alone_and_reported(tmp_path):
    x = np.arange(0, 100, 10.0)
    bt = backtest(x, [Block("acc", (0.1 + 0.005 * x)[:, None], low_rank=False)], "two_point")
    assert bt.rows and all(r["ratio"] < 1e-9 and r["upper"] == r["ratio"] for r in bt.rows)


def test_bad_inputs(tmp_path, runs):
    few = make_trajectory(tmp_path / "few", [0, 10, 20], line_plus_noise)
    with pytest.raises(RlvrLinearError, match="at least 4 checkpoints.*found 3"):
        advise(few)
    # a checkpoint of another architecture (hidden 32) has tensors of other shapes
    big = make_pico_dir(tmp_path / "big", hidden=32)
    mixed = [f"{s}={runs['line'] / f'step_{s:06d}'}" for s in (0, 20, 40)] + [f"60={big}"]
    with pytest.raises(RlvrLinearError, match="checkpoint step 60 .* has shape"):
        advise(mixed)
    with pytest.raises(RlvrLinearError, match="unknown predictor"):
        advise(runs["line"], predictors=["cubic"])


def test_trl_layout_and_trainer_state_curve(tmp_path):
    src = make_trajectory(tmp_path / "ours", STEPS[:6], line_plus_noise)
    trl = tmp_path / "trl"
    trl.mkdir()
    hist = [{"step": s, "reward": 0.1 + 0.001 * s, "loss": 0.0} for s in range(1, 101)]
    for s in STEPS[1:6]:
        (src / f"step_{s:06d}").rename(trl / f"checkpoint-{s}")
        (trl / f"checkpoint-{s}" / "trainer_state.json").write_text(json.dumps({"log_history": hist[:s]}))
    metric, cs, cv = read_curve(trl, 60)
    assert metric == "reward" and cs == list(range(1, 61)) and cv[-1] == pytest.approx(0.16)
    adv = advise(trl)  # steps 20..100: checkpoint-N, no manifest
    assert adv.steps == [20, 40, 60, 80, 100] and adv.stats["curve"]["metric"] == "reward"
    assert adv.spaces["curve"]["two_point"].rows[0]["ratio"] < 1e-6  # the reward rises on a straight line


# --------------------------------------------------------------------------------------------------
# validation on labelled cases, and the CLI


def _case(run, t1, target, mean, lo, hi, predictor="two_point", t0=0):
    gain = {"mean": mean, "lo": lo, "hi": hi}
    return {"run": str(run), "seed": 0, "t0": t0, "t1": t1, "target": target, "alpha": (target - t0) / (t1 - t0),
            "predictor": predictor, "n_problems": 100, "gain_vs_t1": {"greedy": gain, "avg_k": gain},
            "gain_vs_real": None}  # fmt: skip


def test_validate_precision_recall_and_no_peeking(runs, tmp_path):
    from rlvr_linear.advisor.validate import validate

    cases = [
        _case(runs["line"], 100, 200, 0.05, 0.01, 0.09),  # called safe, safe
        _case(runs["line"], 100, 160, -0.02, -0.06, 0.02),  # called safe; worse by the mean, not by the CI
        _case(runs["walk"], 100, 150, -0.10, -0.15, -0.05),  # called unsafe, unsafe
        _case(runs["walk"], 100, 150, 0.01, -0.03, 0.05, predictor="lsq"),  # called unsafe, safe: a miss
        _case(runs["line"], 40, 80, 0.0, -0.02, 0.02),  # steps 0..40: 3 checkpoints, cannot be backtested
        {**_case(runs["line"], 100, 150, 0.1, 0.0, 0.2), "space": "logit"},  # output space: skipped
    ]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n")
    res = validate(path, tmp_path / "val", progress=False)
    assert res["skipped"] == {"logit": 1, "no_gain": 0}
    assert res["other_rules"]["curve"]["cases"] == 5  # runs without a curve are never called safe by it
    assert res["other_rules"]["weights_and_curve"]["called_safe"] <= res["scores"]["called_safe"]
    assert [r["call_safe"] for r in res["cases"]] == [True, True, False, False, False]
    s = res["scores"]
    assert (s["called_safe"], s["labelled_safe"], s["true_safe_calls"]) == (2, 3, 1)
    assert (s["false_safe_calls"], s["correct_calls"]) == (1, 2)  # case 2 wrongly safe; case 3 rightly unsafe
    assert s["precision"] == 0.5 and s["recall"] == pytest.approx(1 / 3)
    o = res["scores_other_label"]  # CI upper bound >= 0: cases 1, 2, 4, 5 are safe
    assert (o["precision"], o["recall"]) == (1.0, 0.5)
    assert res["not_backtestable"] == 1 and "at least 4 checkpoints" in res["cases"][4]["error"]
    assert res["cases"][3]["predictor"] == "lsq_all"  # the regime map's "lsq" fits every checkpoint in [t0, t1]
    ref = advise(runs["line"], until=100, base_step=0)
    assert res["cases"][0]["h_star"] == ref.spaces["weights"]["two_point"].h_star  # only steps <= t1 were used
    assert res["cases"][0]["rho"] == 1.0 and res["cases"][1]["rho"] == 0.6
    assert json.loads((tmp_path / "val" / "validation.json").read_text())["scores"]["precision"] == 0.5
    assert (tmp_path / "val" / "validation.png").stat().st_size > 1000


def test_cli_advise_and_validate(runs, tmp_path, capsys):
    from rlvr_linear.cli import main

    assert main(["advise", str(runs["walk"]), "-o", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"decision: {NOT_LINEAR}" in out
    assert json.loads((tmp_path / "a" / "advice.json").read_text())["recommendation"]["extrapolate"] is False
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(_case(runs["line"], 100, 200, 0.05, 0.01, 0.09)) + "\n")
    assert main(["advise", "--validate", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "1 cases, 1 labelled safe (mean), 1 called safe: precision 1.00, recall 1.00 (base rate 1.00)" in printed
    assert "1/1 calls right" in printed
    assert main(["advise"]) == 2
    assert "give a run directory" in capsys.readouterr().err
    path.write_text('{"run": "x"}\n')
    assert main(["advise", "--validate", str(path)]) == 2
    assert "line 1 lacks t0, t1, target, predictor, gain_vs_t1" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# adaptive re-grounding vs standard RL and fixed (M, N)


def _man(accs):
    return {"checkpoints": [{"step": i, "val_accuracy": a} for i, a in enumerate(accs)], "finished": True}


def test_summarize_comparison_speedups_budgets_best_fixed():
    from rlvr_linear.study.adaptive_regrounding import summarize_comparison

    std = [0.0, 0.1, 0.2, 0.3, 0.4]
    mans = {
        "standard": {0: _man(std), 1: _man(std)},
        "(2,2)": {0: _man(std), 1: _man(std)},
        "(2,6)": {0: _man([0.0] * 5), 1: _man([0.0] * 5)},
        "auto": {0: _man([0.0, 0.2, 0.4, 0.4, 0.5]), 1: _man([0.0, 0.1, 0.2, 0.4, 0.4])},
    }
    scores = {(n, s, 4): np.array([1.0, 0.0, 1.0, 0.0]) for n in mans for s in (0, 1)}
    scores[("auto", 0, 4)] = np.array([1.0, 1.0, 1.0, 0.0])
    res = summarize_comparison(mans, steps=4, save_every=1, threshold_fractions=(0.5, 1.0), budget_scores=scores)
    assert res["thresholds"] == [0.2, 0.4]
    assert res["steps_to_threshold"]["auto"] == [[1, 2], [2, 3]]
    auto = res["speedups"]["auto"]
    assert auto[0]["speedup"]["mean"] == pytest.approx(1.5) and auto[1]["speedup"]["mean"] == pytest.approx(5 / 3)
    assert [r["speedup"]["mean"] for r in res["speedups"]["(2,2)"]] == [1.0, 1.0]
    assert res["speedups"]["(2,6)"][0]["reached"] == "0/2" and res["speedups"]["(2,6)"][0]["speedup"]["mean"] is None
    b = res["fixed_budgets"]["auto"][0]
    assert b["gradient_steps"] == 4 and b["diff"]["mean"] == pytest.approx(0.125)  # (0.25 + 0) / 2
    assert res["best_fixed"] == "(2,2)"
    assert "auto beats the best fixed (M, N)" in res["verdict"]


@pytest.mark.slow
def test_compare_adaptive_toy(tmp_path, pico_dir, monkeypatch):
    from rlvr_linear.evaluation.tasks import TASKS, ArithmeticTask
    from rlvr_linear.study.adaptive_regrounding import compare_adaptive
    from rlvr_linear.training.grpo import TrainConfig

    class HasDigitTask(ArithmeticTask):
        def score(self, completion, problem):
            return float(any(ch.isdigit() for ch in completion))

    monkeypatch.setitem(TASKS, "has-digit", HasDigitTask)
    cfg = TrainConfig(model=str(pico_dir), task="has-digit:digits=1", steps=4, save_every=1, prompts_per_step=2,
                      samples_per_prompt=4, max_new_tokens=8, eval_problems=8, learning_rate=1e-2,
                      threads=1)  # fmt: skip
    res = compare_adaptive(tmp_path / "cmp", cfg, m=2, fixed=("2,2",), seeds=(0, 1), max_n=4,
                           threshold_fractions=(0.5,), budget_fractions=(0.5, 1.0), budget_problems=8,
                           progress=False)  # fmt: skip
    assert set(res["speedups"]) == {"(2,2)", "auto"} and res["best_fixed"] == "(2,2)"
    assert [b["gradient_steps"] for b in res["fixed_budgets"]["auto"]] == [2, 4]
    man = json.loads((tmp_path / "cmp" / "runs" / "auto_seed0" / "manifest.json").read_text())
    assert [h["grad_step"] for h in man["reground_history"]] == [2, 4]  # one decision per 2-step segment
    assert all(0 <= h["n"] <= 4 for h in man["reground_history"])
    assert man["config"]["reground"] == "2,auto" and "monitor" in man
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["best_fixed"] == "(2,2)"


def test_verl_layout(tmp_path):
    src = make_trajectory(tmp_path / "ours", STEPS[:5], line_plus_noise)
    verl = tmp_path / "verl"
    for s in STEPS[:5]:
        dst = verl / f"global_step_{s}" / "actor" / "huggingface"
        dst.parent.mkdir(parents=True)
        (src / f"step_{s:06d}").rename(dst)
    adv = advise(verl)
    assert adv.steps == STEPS[:5] and "curve" not in adv.spaces
    assert adv.recommendation["extrapolate"] and adv.h_star("two_point") >= 80


def test_logprob_space_with_probe_file(runs, tmp_path):
    from rlvr_linear.linearity import Probe, write_probes

    probes = tmp_path / "probes.jsonl"
    write_probes(probes, [Probe("1+2=", "3"), Probe("4+4=", "8 ok"), Probe("9+1=", "10")])
    adv = advise(runs["line"], probes=probes, predictors=["two_point", "lsq"])
    assert set(adv.spaces) >= {"weights", "logprobs"} and adv.stats["logprobs"]["tokens"] == 7
    for p in ("two_point", "lsq_last_k"):
        w, lp = adv.spaces["weights"][p].h_star, adv.spaces["logprobs"][p].h_star
        assert adv.h_star(p) == min(w, lp)  # both spaces must agree
    assert adv.recommendation["evidence"]["h_star_steps"] == max(adv.h_star(p) for p in ("two_point", "lsq_last_k"))


def test_bf16_checkpoints(tmp_path):
    run = make_trajectory(tmp_path / "bf16", STEPS[:6], line_plus_noise, dtype=torch.bfloat16)
    adv = advise(run, predictors=["two_point"])
    assert adv.recommendation["extrapolate"] and adv.spaces["weights"]["two_point"].rows[0]["ratio"] < 0.2
