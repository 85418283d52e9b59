import json
import math
import zlib

import pytest
import torch

from rlvr_linear.advisor import advise, calibrate
from rlvr_linear.advisor.backtest import rho_star_of
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.models.testing import make_trajectory

STEPS = list(range(0, 220, 20))


def _row(run, need, label, predictor="two_point"):
    return {"run": run, "need": need, "label_mean": label, "label_ci": True, "predictor": predictor}


# --------------------------------------------------------------------------------------------------
# need: the smallest threshold that calls a case safe


def test_need_is_the_running_max_of_the_bounds_up_to_the_case_horizon():
    bins = [[0.25, 0.7], [0.5, 0.6], [1.0, 0.9], [2.0, 1.3]]
    assert calibrate.need(bins, 0.2) == 0.7
    assert calibrate.need(bins, 0.5) == 0.7  # the second bin's 0.6 does not lower the first bin's 0.7
    assert calibrate.need(bins, 0.8) == 0.9
    assert calibrate.need(bins, 2.0) == 1.3
    assert calibrate.need(bins, 2.5) == math.inf  # beyond every backtested bin
    assert calibrate.need([], 0.1) == math.inf and calibrate.need(bins, None) == math.inf
    # the same walk as h*: safe at threshold c exactly when rho <= rho*_c
    rows = [{"rho_max": a, "upper": u} for a, u in bins]
    for rho in (0.2, 0.5, 0.8, 2.0):
        for c in (0.65, 0.75, 0.95, 1.0, 1.4):
            assert (calibrate.need(bins, rho) < c) == (rho <= rho_star_of(rows, c))


# --------------------------------------------------------------------------------------------------
# fitting one threshold


def test_fit_bound_picks_the_largest_recall_at_the_target_precision():
    needs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    labels = [True, True, True, True, False, True, False, False]
    f = calibrate.fit_bound(needs, labels, 0.8)
    # c = 0.65 calls the 6 smallest: 5 right (precision 0.83, recall 1); c = 0.75 would drop precision to 0.71
    assert f["bound"] == pytest.approx(0.65) and f["feasible"]
    assert (f["called_safe"], f["recall"]) == (6, 1.0) and f["precision"] == pytest.approx(5 / 6)
    # a stricter target: only the first four (c = 0.45, precision 1, recall 0.8)
    assert calibrate.fit_bound(needs, labels, 0.9)["bound"] == pytest.approx(0.45)


def test_fit_bound_ties_and_infeasible():
    # c = 0.15 and c = 0.25 both reach recall 1; the smaller (fewer wrong calls) wins
    assert calibrate.fit_bound([0.1, 0.2, 0.3], [True, False, False], 0.5)["bound"] == pytest.approx(0.15)
    f = calibrate.fit_bound([0.1, 0.2, math.inf], [False, True, True], 0.8)  # no threshold reaches 0.8
    assert f == {"bound": 0.0, "feasible": False, "precision": None, "recall": 0.0, "called_safe": 0, "cases": 3}
    assert calibrate.fit_bound([math.inf, math.inf], [True, True])["bound"] == 0.0  # nothing backtestable
    assert calibrate.candidates([0.5, 0.5, 1.0, math.inf]) == [0.75, pytest.approx(1.1)]


def test_fit_by_predictor_and_unseen_predictor():
    rows = [_row("a", 0.5, True, "rank1"), _row("a", 0.9, False, "rank1"),
            _row("a", 1.1, True, "lsq_all"), _row("a", 1.5, False, "lsq_all")]  # fmt: skip
    f = calibrate.fit(rows, "mean", by_predictor=True)
    assert calibrate.bound_for(f, "rank1") == pytest.approx(0.7)
    assert calibrate.bound_for(f, "lsq_all") == pytest.approx(1.3)
    assert calibrate.bound_for(f, "two_point") == 0.0  # never seen: never safe
    assert calibrate.apply(f, rows) == [True, False, True, False]
    assert calibrate.fit(rows, "mean")["bound"] == pytest.approx(0.7)  # one threshold: 1.1 would cost precision


# --------------------------------------------------------------------------------------------------
# cross-validation over runs


def test_cross_validation_never_fits_on_the_held_out_run(monkeypatch):
    # runs b and c alone give c = 0.65; run a's cases, if they leaked into a fit, would push it to 0.785
    bc = [_row("b", 0.3, True), _row("b", 0.6, True), _row("b", 0.7, False), _row("c", 0.4, True),
          _row("c", 0.8, False), _row("c", 0.9, False)]  # fmt: skip
    a = [_row("a", x, True) for x in (0.72, 0.73, 0.74, 0.75, 0.76, 0.77)]
    rows = a + bc
    seen = []
    real_fit = calibrate.fit

    def spy(train, *args, **kw):
        seen.append({r["run"] for r in train})
        return real_fit(train, *args, **kw)

    monkeypatch.setattr(calibrate, "fit", spy)
    cv = calibrate.cross_validate(rows, "mean")
    assert seen == [{"b", "c"}, {"a", "c"}, {"a", "b"}]  # every fold fits without its held-out run
    fold_a = cv["folds"][0]
    assert fold_a["held_out"] == "a" and fold_a["fit_cases"] == 6 and fold_a["held_out_cases"] == 6
    assert fold_a["bound"] == pytest.approx(real_fit(bc, "mean")["bound"]) == pytest.approx(0.65)
    assert cv["calls"][:6] == [False] * 6  # held out, run a's cases are above 0.65
    assert real_fit(rows, "mean")["bound"] == pytest.approx(0.785)  # in sample they would all be called safe


# --------------------------------------------------------------------------------------------------
# validate(rule="calibrated") on synthetic runs, and advise's calibrated safe horizon


def _gen(name, extra=0):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) + 7919 * extra)


def _line(noise):
    def fn(name, w, s, i):
        d = torch.randn(w.shape, generator=_gen(name))
        return w + 1e-3 * s * d + noise * torch.randn(w.shape, generator=_gen(name, i + 1))

    return fn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    # an exact line (tiny noise: bounds ~0) and a line under heavy noise (bounds near 1)
    return {
        "clean_a": make_trajectory(root / "clean_a", STEPS, _line(1e-4)),
        "clean_b": make_trajectory(root / "clean_b", STEPS, _line(1e-4), seed=1),
        "noisy": make_trajectory(root / "noisy", STEPS, _line(3e-2)),
    }


def _case(run, target, mean):
    gain = {"mean": mean, "lo": mean - 0.01, "hi": mean + 0.01}
    return {"run": str(run), "seed": 0, "t0": 0, "t1": 100, "target": target, "predictor": "two_point",
            "gain_vs_t1": {"greedy": gain}}  # fmt: skip


def test_validate_calibrated_is_held_out(runs, tmp_path):
    from rlvr_linear.advisor.validate import validate

    cases = [_case(runs["clean_a"], 150, 0.01), _case(runs["clean_b"], 150, 0.02), _case(runs["noisy"], 150, -0.05)]
    res = validate(cases, tmp_path / "val", rule="calibrated", progress=False)
    needs = [r["need"] for r in res["cases"]]
    assert needs[0] < 0.2 and needs[1] < 0.2 and needs[2] > 0.5
    cal = res["calibration"]
    # holding out clean_a: the fit sees clean_b (safe) and noisy (unsafe) and calls clean_a safe
    assert [f["held_out"] for f in cal["folds"]] == [str(runs[k]) for k in ("clean_a", "clean_b", "noisy")]
    assert needs[1] < cal["folds"][0]["bound"] < needs[2]
    # holding out noisy: only safe cases are left, so the fit calls everything up to 1.1 x the largest need safe
    assert cal["folds"][2]["bound"] == pytest.approx(1.1 * max(needs[:2]))
    assert [r["call_safe"] for r in res["cases"]] == [True, True, False]
    assert res["scores"]["precision"] == 1.0 and res["scores"]["recall"] == 1.0
    assert res["h_star_rule"]["scores"]["called_safe"] == sum(n < 1 for n in needs)
    assert cal["fit_all"]["bound"] == pytest.approx((max(needs[:2]) + needs[2]) / 2)
    saved = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert saved["rule"] == "calibrated" and saved["calibration"]["folds"][0]["fit_cases"] == 2
    assert (tmp_path / "val" / "validation.png").stat().st_size > 1000
    with pytest.raises(RlvrLinearError, match="rule must be one of h_star, calibrated, got 'best'"):
        validate(cases, rule="best", progress=False)


def test_cli_validate_calibrated_several_files(runs, tmp_path, capsys):
    from rlvr_linear.cli import main

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(_case(runs["clean_a"], 150, 0.01)) + "\n" + json.dumps(_case(runs["noisy"], 150, -0.05)))
    b.write_text(json.dumps(_case(runs["clean_b"], 150, 0.02)) + "\n")
    assert main(["advise", "--validate", str(a), str(b), "--rule", "calibrated"]) == 0
    out = capsys.readouterr().out
    assert "3 cases, 2 labelled safe (mean), 2 called safe (held out: leave one run out): precision 1.00" in out
    assert "a.jsonl: 2 cases, precision 1.00, recall 1.00" in out and "b.jsonl: 1 cases" in out
    assert "thresholds fitted per held-out run:" in out and "h* rule (bound < 1) on the same cases" in out


def test_advise_reports_the_calibrated_safe_horizon(runs):
    adv = advise(runs["noisy"])
    safe = adv.recommendation["safe"]
    assert safe["bound"] == calibrate.SAFE_BOUND and "552 weight-space cases" in safe["provenance"]
    for p in ("two_point", "lsq_last_k", "rank1"):
        bt = adv.spaces["weights"][p]
        assert safe["h_steps_by_predictor"][p] == bt.h_star_below(calibrate.SAFE_BOUND) <= bt.h_star
        assert adv.safe_h(p, bound=1.0) == bt.h_star  # the threshold 1 is h*
    clean = advise(runs["clean_a"])
    s = clean.recommendation["safe"]
    assert s["extrapolate"] and s["h_steps"] >= 800 and s["target_step"] == 200 + math.floor(s["h_steps"])
    assert "calibrated safe h*_c (weight bound < 0.601" in clean.summary_text()
    rec = clean.recommendation  # the one decision is the calibrated jump
    assert (rec["target_step"], rec["predictor"]) == (s["target_step"], s["predictor"])
    assert "75% of the jumps called safe" in clean.summary_text()  # the confidence, from the calibration
    assert clean.to_json()["recommendation"]["safe"]["bound"] == calibrate.SAFE_BOUND
