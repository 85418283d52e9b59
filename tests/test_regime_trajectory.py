"""The analysis of one trajectory (rlvr_linear.regime.trajectory): plan and budget on SmolLM2's grid, and end to end
on a pico run of the quick base (16 RL steps), with resume, per-case caching and the case records' bootstrap CIs."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_json
from rlvr_linear.io.checkpoints import step_dir_name
from rlvr_linear.regime import trajectory as tj

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(path: Path, steps: list[int], finished: bool = True, model: str = "smollm2-135m") -> Path:
    for s in steps:
        (path / step_dir_name(s)).mkdir(parents=True, exist_ok=True)
    man = {
        "config": {"model": model, "task": "arithmetic-cot-chat", "prompts_per_step": 8, "samples_per_prompt": 8},
        "task": "arithmetic-cot-chat",
        "checkpoints": [{"step": s, "val_accuracy": 0.2} for s in steps],
    }
    if finished:
        man["finished"] = True
    write_json(path / "manifest.json", man)
    return path


# --------------------------------------------------------------------------------------------------
# Plan and budget (fast)


def test_plan_on_the_smollm2_grid():
    grid = tj.Grid(150, 10)
    assert tj.windows(grid, tj.ALPHAS) == [(0, 70), (20, 70)]  # 2 x 70 = 140 <= 150; 80 would jump past the run
    cases = tj.plan(grid, tj.Settings(task="arithmetic-cot-chat"))
    w = [c for c in cases if c["space"] == "weight"]
    lg = [c for c in cases if c["space"] == "logit"]
    assert len(w) == 2 * 2 * 3 and {c["predictor"] for c in w} == {"two_point", "lsq"}
    assert {c["alpha"] for c in w} == {1.25, 1.5, 2.0} and {c["alpha"] for c in lg} == {1.5, 2.0} and len(lg) == 4
    assert sorted({c["target"] for c in cases}) == [82.5, 87.5, 95.0, 105.0, 120.0, 140.0]
    assert max(c["target"] for c in cases) <= 150
    assert "weight_two_point_0_70_a2" in {c["id"] for c in cases}
    # t1 = 70 and the save steps nearest the targets (82.5 -> 80, 87.5 -> 90, 95 and 105 -> 100)
    assert tj.real_steps(grid, cases) == [70, 80, 90, 100, 120, 140]
    # skipping the early phase: only the window from 2u, every predictor and logit at every alpha
    skip = tj.plan(grid, tj.Settings(task="arithmetic", logit_alphas=tj.ALPHAS, from_start=False))
    assert {c["t0"] for c in skip} == {20} and len(skip) == 3 * 3 and tj.real_steps(grid, skip) == [70, 80, 100, 120]
    assert tj.windows(grid, tj.ALPHAS, from_start=False) == [(20, 70)]
    with pytest.raises(RlvrLinearError, match="no window from step 4 reaches alpha 2"):
        tj.windows(tj.Grid(8, 2), tj.ALPHAS, from_start=False)
    with pytest.raises(RlvrLinearError, match="no window reaches alpha 2"):
        tj.windows(tj.Grid(6, 2), tj.ALPHAS)
    with pytest.raises(RlvrLinearError, match="avg@k needs k >= 1"):
        tj.Settings(task="arithmetic", k=0)
    with pytest.raises(RlvrLinearError, match="max_new_tokens must be >= 1, got 0"):
        tj.Settings(task="arithmetic", max_new_tokens=0)
    with pytest.raises(RlvrLinearError, match="alphas must be > 1"):
        tj.Settings(task="arithmetic", alphas=(1.0, 2.0))


def test_estimate_for_smollm2_uses_its_measured_cost(tmp_path):
    from rlvr_linear.study.plan import UNIT_COSTS

    run = _fake_run(tmp_path / "smol", list(range(0, 151, 10)))
    e = tj.estimate(run, 300)
    assert (e["real_checkpoints"], e["weight_extrapolated"], e["logit_extrapolated"]) == (6, 12, 4)
    assert e["model_evaluations"] == 6 + 12 + 2 * 4
    assert e["s_per_problem"] == UNIT_COSTS["smollm2-135m"].greedy == 0.685
    assert e["evaluation_s"] == pytest.approx(26 * 300 * 0.685)  # 5,343 s
    assert 0 < e["other_s"] < 1800 and e["total_s"] == pytest.approx(e["evaluation_s"] + e["other_s"])
    assert e["total_s"] < 2 * 3600  # the brief's budget: <= ~2 h on one thread
    line = tj.estimate_line(e)
    assert line.startswith("26 model evaluations (6 real checkpoints, 12 weight-extrapolated, 4 logit-extrapolated")
    assert "x 300 problems x 0.685 s" in line and "~1.5 h of greedy evaluation" in line


def test_read_run_refuses_unfinished_and_irregular_runs(tmp_path):
    with pytest.raises(RlvrLinearError, match="not finished"):
        tj.read_run(_fake_run(tmp_path / "a", [0, 10, 20, 30], finished=False))
    with pytest.raises(RlvrLinearError, match="not on a regular grid"):
        tj.read_run(_fake_run(tmp_path / "b", [0, 10, 20, 35]))
    with pytest.raises(RlvrLinearError, match="manifest.json: not found"):
        tj.read_run(tmp_path / "c")
    run = _fake_run(tmp_path / "d", [0, 10, 20, 30])
    (run / step_dir_name(20)).rmdir()
    with pytest.raises(RlvrLinearError, match="step_000020: checkpoint folder missing"):
        tj.read_run(run)
    man, grid = tj.read_run(_fake_run(tmp_path / "e", [0, 5, 10, 15, 20]))
    assert grid == tj.Grid(20, 5) and man["task"] == "arithmetic-cot-chat"


def test_scorer_takes_a_split_and_a_count():
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.regime.analysis import Scorer

    s = Scorer("arithmetic", quick=False, splits=("test",), n=50, batch_size=16)
    assert [p.id for p in s.problems] == [p.id for p in get_task("arithmetic").problems("test", None)[:50]]
    assert s.batch_size == 16
    with pytest.raises(RlvrLinearError, match="asked for 100000 held-out problems of 'arithmetic' \\(test\\)"):
        Scorer("arithmetic", quick=False, splits=("test",), n=100_000)
    assert len(Scorer("arithmetic", quick=True).problems) == 100  # the map's default is unchanged


# --------------------------------------------------------------------------------------------------
# End to end on a pico run (slow: ~40 s on 2 shared cores)

PROBLEMS = 40


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    import torch

    from rlvr_linear.models.base_model import ensure_base
    from rlvr_linear.regime.grid import Point
    from rlvr_linear.study.config import QUICK_BASE_RECIPE
    from rlvr_linear.training.grpo import train

    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("trajectory")
    base = str(ensure_base("tiny", **QUICK_BASE_RECIPE))
    cfg = Point(lr=3e-4, responses=16, horizon=16, save_every=2, group=4).train_config(0, model=base, eval_problems=20)
    run = root / "run"
    train(cfg, run, progress=False)
    out = root / "ana"
    res = tj.analyze_trajectory(run, out, problems=PROBLEMS, probe_prompts=4, probe_samples=2, activation_probes=2,
                                threads=1, progress=False)  # fmt: skip
    yield run, out, res
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_trajectory_results(analysed):
    run, out, res = analysed
    assert read_json(out / "trajectory.json") == res
    assert (res["horizon"], res["save_every"], res["task"]) == (16, 2, "arithmetic")
    assert res["train"]["steps"] == list(range(0, 17, 2))
    lin = res["linearity"]
    for k in ("weights_paper", "weights", "logprobs", "activations"):
        v = lin[k]
        assert 0 <= v["median"] <= 1 and 0 <= v["null_median"] <= 1 and v["n"] > 0, k
        assert v["median_minus_null"] == pytest.approx(v["median"] - v["null_median"], abs=2e-4)
    assert lin["weights"]["n"] > lin["weights_paper"]["n"]  # every parameter vs the 0.1% sample
    from rlvr_linear.linearity.stats import cluster_median_ci

    with np.load(out / "weights_paper" / "weights_r2.npz") as z:  # the CIs: clusters of tensors, probes
        ref = cluster_median_ci(z["null_r2"], z["tensor_id"])
    assert lin["weights_paper"]["null_median_ci"] == [round(ref["lo"], 4), round(ref["hi"], 4)]
    with np.load(out / "logprobs" / "logprobs.npz") as z:
        ref = cluster_median_ci(z["r2"], z["probe_index"][z["sampled"]])
    assert lin["logprobs"]["median_ci"] == [round(ref["lo"], 4), round(ref["hi"], 4)]
    assert lin["logprobs"]["ci_groups"] == ref["groups"] and lin["weights_paper"]["ci_unit"] == "tensor"
    assert lin["weights_paper"]["drift_to_noise_median"] > 0
    assert (lin["logprobs"]["probes"], lin["activations"]["probes"]) == (8, 2)
    assert [x["label"] for x in lin["activations"]["layers"]] == ["embeddings", "layer 0", "layer 1"]
    assert len((out / "probes.jsonl").read_text().splitlines()) == 8
    fc = res["forecast"]
    assert (fc["q1"]["fit_until"], fc["q2"]["fit_until"]) == (4, 8)
    assert fc["q2"]["curve"]["steps"] == [10, 12, 14, 16]
    assert fc["q2"]["curve"]["ratio"][-1] == pytest.approx(fc["q2"]["ratio_at_horizon"], abs=1e-5)
    ex = res["extrapolation"]
    assert ex["windows"] == [[0, 8], [4, 8]] and ex["n_problems"] == PROBLEMS and ex["split"] == "test"
    assert len(ex["cases"]) == 16 and set(ex["real_accuracy"]) == {"8", "10", "12", "16"}
    for c in ex["cases"]:
        assert (c["kind"], c["k"], c["n_problems"], c["run"], c["point"]) == ("trajectory", None, PROBLEMS,
                                                                               str(run), "run")  # fmt: skip
        assert c["avg_k"] == {"acc_t1": None, "acc_x": None, "acc_real_target": None}
        assert c["acc_t1"] == ex["real_accuracy"]["8"]["mean"]
        assert c["acc_real_target"] == ex["real_accuracy"][str(c["real_step"])]["mean"]
        assert c["forecast_ratio"] == {q: fc[q]["ratio_at_horizon"] for q in ("q1", "q2")}
    best = ex["best_weight"]
    assert best["gain_vs_t1"]["greedy"]["mean"] == max(
        c["gain_vs_t1"]["greedy"]["mean"] for c in ex["cases"] if c["space"] == "weight"
    )
    adv = res["advisor"]
    assert (adv["last"]["until"], adv["last"]["checkpoints"]) == (16, 9)
    assert (adv["at_t1"]["until"], adv["at_t1"]["checkpoints"]) == (8, 5)
    for a in (adv["last"], adv["at_t1"]):
        # one decision: a jump only where the line beats "no change" and the calibrated bound passes
        assert a["linear"] == (a["h_star_steps"] > 0) and a["safe"]["bound"] == pytest.approx(0.6014)
        assert a["extrapolate"] == (a["linear"] and a["safe"]["extrapolate"])
        if a["extrapolate"]:
            assert (a["predictor"], a["target_step"]) == (a["safe"]["predictor"], a["safe"]["target_step"])
    calls = adv["at_t1_vs_cases"]
    assert [c["target"] for c in calls] == [10.0, 12.0, 16.0]
    for c in calls:
        assert c["safe_h_star"] == (c["jump"] <= adv["at_t1"]["h_star_by_predictor"]["two_point"])
        assert c["at_least_as_good"] == (c["gain_vs_t1"]["mean"] >= 0)
    for f in res["figures"]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    for d in ("weights_paper", "weights_all", "logprobs", "activations", "advice_last", "advice_t1"):
        assert any((out / d).iterdir()), d
    assert not any((out / "tmp").rglob("*.safetensors"))  # extrapolated models deleted after scoring
    with np.load(out / "scores.npz") as z:  # the per-problem arrays behind every accuracy
        assert len(z.files) == len(ex["cases"]) + len(ex["real_accuracy"])
        assert float(z["step_000008__greedy"].mean()) == pytest.approx(ex["real_accuracy"]["8"]["mean"], abs=1e-4)


@pytest.mark.slow
def test_case_records_are_paired_bootstraps_of_the_stored_scores(analysed):
    from rlvr_linear.advisor.validate import read_cases
    from rlvr_linear.evaluation.evaluation import paired_bootstrap
    from rlvr_linear.regime.analysis import RunCache

    run, out, res = analysed
    cache = RunCache(out, versions=tj.VERSIONS)
    file_cases = [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]
    assert file_cases == res["extrapolation"]["cases"]
    ids = [c["id"] for c in tj.plan(tj.Grid(16, 2), tj.Settings(task="arithmetic", problems=PROBLEMS))]
    for cid, c in zip(ids, file_cases):
        x = cache.load_scores(f"case_{cid}")["greedy"]
        t1 = cache.load_scores(step_dir_name(c["t1"]))["greedy"]
        real = cache.load_scores(step_dir_name(c["real_step"]))["greedy"]
        assert len(x) == len(t1) == PROBLEMS
        for gain, a in ((c["gain_vs_t1"]["greedy"], t1), (c["gain_vs_real"]["greedy"], real)):
            r = paired_bootstrap(a, x)
            assert gain == {"mean": round(r["diff"], 4), "lo": round(r["ci_low"], 4), "hi": round(r["ci_high"], 4)}
        assert c["acc_x"] == round(float(x.mean()), 4) and c["acc_t1"] == round(float(t1.mean()), 4)
    # the advisor's validation reads them as cases
    got = read_cases(out / "cases.jsonl")
    assert len(got) == 16 and {c["run"] for c in got} == {str(run)}


@pytest.mark.slow
def test_rerun_computes_nothing_and_a_lost_case_is_rescored_alone(analysed, monkeypatch):
    import rlvr_linear.evaluation.evaluation as evaluation

    run, out, res = analysed
    cached = [p for p in out.rglob("*") if p.is_file() and (p.name == "parts.json" or "scores" in p.parts)]
    stamps = {p: os.stat(p).st_mtime_ns for p in cached}
    calls = []
    real_evaluate = evaluation.evaluate

    def counting(model, *a, **k):
        calls.append(model)
        return real_evaluate(model, *a, **k)

    monkeypatch.setattr(evaluation, "evaluate", counting)
    import rlvr_linear.linearity as lin

    def boom(*a, **k):
        raise AssertionError("a cached part was recomputed")

    for name in ("analyze_weights", "analyze_logprobs", "analyze_activations", "forecast", "make_probes"):
        monkeypatch.setattr(lin, name, boom)
    again = tj.analyze_trajectory(run, out, problems=PROBLEMS, probe_prompts=4, probe_samples=2,
                                  activation_probes=2, threads=1, progress=False)  # fmt: skip
    assert again == res and calls == []
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps

    # a kill after a case's model was built but before its record and score were saved: only that model is scored
    parts = read_json(out / "parts.json")
    cid = "weight_lsq_4_8_a1.5"
    old = parts["cases"].pop(cid)
    write_json(out / "parts.json", parts)
    (out / "scores" / f"case_{cid}.npz").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(evaluation, "evaluate", counting)
    third = tj.analyze_trajectory(run, out, problems=PROBLEMS, probe_prompts=4, probe_samples=2,
                                  activation_probes=2, threads=1, progress=False)  # fmt: skip
    assert len(calls) == 1 and "weight_lsq_4_8_a1.5" in str(calls[0])
    assert read_json(out / "parts.json")["cases"][cid] == old
    assert third["timing_s"]["cases_s"] > res["timing_s"]["cases_s"]  # the rescoring's time is added
    assert {k: v for k, v in third.items() if k != "timing_s"} == {k: v for k, v in res.items() if k != "timing_s"}


@pytest.mark.slow
def test_other_settings_are_refused_and_the_script_copies_results(analysed, tmp_path, capsys):
    run, out, _ = analysed
    with pytest.raises(RlvrLinearError, match="holds an analysis of another run or with other settings \\(problems\\)"):
        tj.analyze_trajectory(run, out, problems=PROBLEMS + 1, probe_prompts=4, probe_samples=2, activation_probes=2)
    spec = importlib.util.spec_from_file_location("smollm2_trajectory", ROOT / "experiments" / "smollm2_trajectory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dest = tmp_path / "results"
    res = mod.main([str(run), "-o", str(out), "--problems", str(PROBLEMS), "--probe-prompts", "4", "--probe-samples",
                    "2", "--activation-probes", "2", "--results-dir", str(dest)])  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("estimate: 24 model evaluations (4 real checkpoints, 12 weight-extrapolated")
    assert "measured now on step 0 (16 test problems)" in printed
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(["trajectory.json", "trajectory_cases.jsonl", "scores.npz", *tj.FIGURES])
    assert read_json(dest / "trajectory.json") == res
    assert np.array_equal(np.frombuffer((dest / "accuracy.png").read_bytes(), np.uint8),
                          np.frombuffer((out / "accuracy.png").read_bytes(), np.uint8))  # fmt: skip
