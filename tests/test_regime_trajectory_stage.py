"""The study's ``trajectory`` stage (rlvr_linear.regime.trajectory_stage): the summary over seeds from results files
alone, and ``rlvr-linear study`` on the real-model protocol end to end with a pico Llama (baseline, trajectory,
report; resumed by a rerun)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_json
from rlvr_linear.regime import summarize
from rlvr_linear.regime.trajectory_stage import ABOVE_NULL, settings_for

ROOT = Path(__file__).resolve().parents[1]


def _case(space: str, alpha: float, gain_t1: tuple, gain_real: tuple | None) -> dict:
    def g(m, lo, hi):
        return {"greedy": {"mean": m, "lo": lo, "hi": hi}, "avg_k": None}

    return {"space": space, "predictor": "two_point", "t0": 20, "t1": 70, "alpha": alpha, "target": 20 + alpha * 50,
            "real_step": 100, "acc_x": 0.5, "acc_t1": 0.5, "acc_real_target": 0.55, "avg_k": {},
            "gain_vs_t1": g(*gain_t1), "gain_vs_real": None if gain_real is None else g(*gain_real)}  # fmt: skip


def _trajectory(w: float, lp: float, cases: list[dict]) -> dict:
    def r2(m, null):
        return {"median": m, "null_median": null, "median_minus_null": round(m - null, 4),
                "median_ci": [m - 0.01, m + 0.01], "null_median_ci": [null - 0.01, null + 0.01], "n": 100}

    return {
        "kind": "trajectory",
        "settings": {},
        "train": {"val_accuracy": [0.1, None, 0.5], "wall_time_s": 100.0},
        "linearity": {"weights_paper": r2(w, 0.43), "weights": r2(w, 0.43), "logprobs": r2(lp, 0.48),
                      "activations": r2(0.6, 0.45)},  # fmt: skip
        "forecast": {"q1": {"fit_until": 40, "ratio_at_horizon": 1.2, "ratio_pooled": 1.0},
                     "q2": {"fit_until": 80, "ratio_at_horizon": 1.4, "ratio_pooled": 1.3}},  # fmt: skip
        "extrapolation": {"cases": cases},
        "advisor": {"at_t1": {"until": 70, "verdict": "v", "predictor": "two_point", "target_step": None,
                              "h_star_steps": 30.0, "safe": {}}, "at_t1_vs_cases": []},  # fmt: skip
        "timing_s": {"weights": 15.0, "cases_s": None},
    }


def test_summary_over_seeds_reads_only_results_files(tmp_path):
    win = _case("weight", 1.5, (0.04, 0.01, 0.07), (0.01, -0.02, 0.04))
    lose = _case("logit", 2.0, (-0.1, -0.15, -0.05), None)
    paths = []
    for seed, (w, lp) in {0: (0.79, 0.96), 1: (0.81, 0.9)}.items():
        p = write_json(tmp_path / f"seed{seed}" / "trajectory.json", _trajectory(w, lp, [win, lose]))
        paths.append(p)
    res = summarize(paths)
    assert res["seeds"] == [0, 1] and res["reproduced"] == "yes"
    num = res["numbers"]
    assert num["mean"]["linearity"]["weights_paper"] == {"median": 0.8, "null_median": 0.43}
    assert num["mean"]["forecast_ratio_at_horizon"] == {"q1": 1.2, "q2": 1.4}
    assert (num["linear_on_every_seed"], num["beats_t1_on_every_seed"], num["beats_real_on_every_seed"]) == (
        True, True, False)  # fmt: skip
    row = num["per_seed"][0]
    assert (row["val_accuracy_start"], row["val_accuracy_end"]) == (0.1, 0.5)
    assert (row["cases"], row["cases_beating_t1"]) == (2, 1)
    assert row["best_weight_vs_t1"]["id"] == "weight_two_point_20_70_a1.5"
    assert row["best_logit_vs_t1"]["id"] == "logit_two_point_20_70_a2"
    assert row["weights_paper_r2"]["median_ci"] == [0.78, 0.8] and row["analysis_s"] == {"weights": 15.0}
    assert row["analysis_s_total"] == 15.0
    assert "did not beat the real checkpoint at its target" in res["verdict"]
    assert "weight R² 0.8 (null 0.43), log-prob R² 0.93 (null 0.48): linear" in res["verdict"]
    # the docs table: one column per seed, every number with its null or CI
    from rlvr_linear.study.tables import smollm2_table

    md = smollm2_table(res)
    lines = md.splitlines()
    assert lines[0] == "| measure | seed 0 | seed 1 |" and len(lines) == 2 + 16
    assert "| weight R², paper sample [95% CI] | 0.790 [0.780, 0.800] (null 0.430 [0.420, 0.440]) |" in md
    assert "weight two-point α 1.5 → 95: +0.040 [+0.010, +0.070]" in md  # the best weight case vs t1
    assert "| cases beating t1 / the real target (CI above 0) | 1 / 0 of 2 | 1 / 0 of 2 |" in md
    assert "1.20 (fit ≤ 40)" in md and "2 min + 0 min = - |" in md  # no end to end before experiments/smollm2.py
    # a seed below the linearity bar makes it partly; nothing beating t1 either: no
    flat = write_json(tmp_path / "seed2" / "trajectory.json", _trajectory(0.43 + ABOVE_NULL - 0.01, 0.9, [win]))
    assert summarize([*paths, flat])["reproduced"] == "partly"
    dull = write_json(tmp_path / "seed3" / "trajectory.json", _trajectory(0.5, 0.5, [lose]))
    assert summarize([dull])["reproduced"] == "no"
    with pytest.raises(RlvrLinearError, match="seed9/trajectory.json: not found; run the trajectory stage"):
        summarize([tmp_path / "seed9" / "trajectory.json"])
    other = write_json(tmp_path / "x" / "trajectory.json", {"kind": "regime"})
    with pytest.raises(RlvrLinearError, match="not a trajectory analysis \\(kind 'regime'\\)"):
        summarize([other])
    with pytest.raises(RlvrLinearError, match="at least one"):
        summarize([])


def test_settings_follow_the_runs_own_sampling():
    from rlvr_linear.study import StudyConfig

    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    man = {"config": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 16}}
    s = settings_for(cfg, man)
    assert (s["problems"], s["k"], s["temperature"], s["top_p"], s["max_new_tokens"]) == (500, 4, 0.7, 0.95, 16)
    assert s["from_start"] is False and s["alphas"] == s["logit_alphas"] == (1.25, 1.5, 2.0) and s["threads"] is None


@pytest.mark.slow
def test_real_model_study_runs_baseline_trajectory_and_report_and_resumes(tmp_path, monkeypatch, capsys):
    import torch

    from rlvr_linear.evaluation.tasks import TASKS
    from rlvr_linear.models.testing import PICO_CHAT_TEMPLATE, digit_chat_task, make_pico_model, save_model
    from rlvr_linear.reporting.report import validate_results

    threads = torch.get_num_threads()
    monkeypatch.setitem(TASKS, "cot-chat-digit", digit_chat_task())
    model, tok = make_pico_model("llama", seed=1)
    tok.chat_template = PICO_CHAT_TEMPLATE
    pico = save_model(model, tok, tmp_path / "pico-llama-chat")
    out = tmp_path / "study"
    argv = ["study", "--quick", "--model", str(pico), "--task", "cot-chat-digit", "--learning-rate", "3e-2",
            "--no-progress", "-o", str(out)]  # fmt: skip
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "[trajectory] running" in printed and "[trajectory] done in " in printed and "[report] " in printed
    plan = printed.split("estimated total")[0]  # the plan names the trajectory stage the command runs after
    assert "trajectory            1 run(s): linearity, forecast, extrapolation on 8 test problems" in plan
    for skipped in ("linearity", "weight_extrapolation", "logit_extrapolation"):
        assert not (out / skipped).exists()
    man = read_json(out / "runs" / "rl_seed0" / "manifest.json")
    assert [c["step"] for c in man["checkpoints"]] == list(range(11)) and man["config"]["max_new_tokens"] == 16
    assert man["config"]["sketch"] is True and (out / "runs" / "rl_seed0" / "sketch").is_dir()
    tr = read_json(out / "trajectory" / "seed0" / "trajectory.json")
    s = tr["settings"]
    assert (s["problems"], s["k"], s["temperature"], s["max_new_tokens"], s["from_start"]) == (8, 2, 0.7, 16, False)
    cases = tr["extrapolation"]["cases"]
    # the window that skips the early phase only (t0 = 2u): two-point, least squares and logit at every alpha
    assert {c["t0"] for c in cases} == {2} and {c["t1"] for c in cases} == {5} and len(cases) == 9
    assert {(c["space"], c["predictor"], c["alpha"]) for c in cases} == {
        (sp, p, a) for sp, p in (("weight", "two_point"), ("weight", "lsq"), ("logit", "two_point"))
        for a in (1.25, 1.5, 2.0)}  # fmt: skip
    key = ("weight", "two_point", 2, 1.5)
    forced = next(c for c in cases if (c["space"], c["predictor"], c["t0"], c["alpha"]) == key)
    fid = "weight_two_point_2_5_a1.5"
    assert forced["avg_k"]["acc_x"] is not None and forced["gain_vs_t1"]["avg_k"] is not None
    for c in cases:  # avg@k for that one comparison only (t1, the case, its real target)
        assert (c["avg_k"]["acc_x"] is not None) == (c is forced)
    assert forced["avg_k"]["acc_real_target"] is not None and set(tr["extrapolation"]["real_avg_k"]) == {"5", "6"}
    adv = tr["advisor"]  # the advice at t1 backtests from the window's base, and is checked on its cases
    assert (adv["at_t1"]["base_step"], adv["at_t1"]["until"]) == (2, 5)
    assert [c["alpha"] for c in adv["at_t1_vs_cases"]] == [1.25, 1.5, 2.0]
    lin = tr["linearity"]
    for k, unit in (("weights_paper", "tensor"), ("logprobs", "probe")):
        lo, hi = lin[k]["median_ci"]
        assert lo <= lin[k]["median"] <= hi and lin[k]["ci_unit"] == unit and lin[k]["ci_groups"] > 1
    scores = np.load(out / "trajectory" / "seed0" / "scores.npz")
    assert scores["step_000005__greedy"].shape == (8,) and f"case_{fid}__avg" in scores.files
    assert float(scores[f"case_{fid}__greedy"].mean()) == pytest.approx(forced["acc_x"], abs=1e-4)
    result = read_json(out / "trajectory" / "result.json")
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    assert res["trajectory"] == result and res["meta"]["stages"]["trajectory"]["status"] == "done"
    same = summarize([out / "trajectory" / "seed0" / "trajectory.json"], rel_to=out)
    assert same == {k: v for k, v in result.items() if k != "wall_s"}
    assert result["figures"] == ["trajectory/seed0/accuracy.png", "trajectory/seed0/forecast_ratio.png"]
    assert "Real-model trajectory" in (out / "report.html").read_text()
    # a rerun reuses the run and every cached part
    stamp = (out / "trajectory" / "seed0" / "parts.json").stat().st_mtime_ns
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    assert "[baseline] finished earlier: reusing" in capsys.readouterr().out
    assert (out / "trajectory" / "seed0" / "parts.json").stat().st_mtime_ns == stamp
    assert Path(out / "report.html").exists()

    # the experiment script: the evidence into small files (no checkpoint), the summary from those files alone
    import importlib.util

    spec = importlib.util.spec_from_file_location("smollm2_exp", ROOT / "experiments" / "smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dest = tmp_path / "results"
    assert mod.main(["collect", str(out), "--dest", str(dest)]) == 0
    d = dest / "seed0"
    assert (d / "sketch" / "sketch.json").is_file() and not list(d.rglob("model.safetensors"))  # no checkpoint
    assert read_json(d / "trajectory.json") == tr and read_json(d / "manifest.json") == man
    assert read_json(d / "study_timings.json")["timings_s"]["trajectory"] == result["wall_s"] > 0
    assert mod.main(["summary", "--dest", str(dest)]) == 0
    summ = read_json(dest / "summary.json")
    row = summ["numbers"]["per_seed"][0]
    assert row["end_to_end_s"] == pytest.approx(man["wall_time"] + result["wall_s"], abs=0.11)
    assert result["wall_s"] == row["analysis_s_total"] == pytest.approx(sum(tr["timing_s"].values()), abs=0.11)
    assert summ["verdict"] == result["verdict"]
    assert summ["figures"] == ["seed0/accuracy.png", "seed0/forecast_ratio.png"]
    # a timed run: the same study collected beside the seeds with its GNU time output, in a column of its own
    gnu = tmp_path / "study.time"
    gnu.write_text("RL step 10/150: mean reward 0.037\n\tCommand being timed: \"rlvr-linear study -o x\"\n"
                   "\tUser time (seconds): 100.50\n\tSystem time (seconds): 20.25\n"
                   "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n"
                   "\tMaximum resident set size (kbytes): 2097152\n\tExit status: 0\n")  # fmt: skip
    assert mod.gnu_time(gnu) == {"command": "rlvr-linear study -o x", "wall_s": 3723.0, "user_s": 100.5,
                                 "system_s": 20.25, "max_rss_mb": 2048, "exit_status": 0,
                                 "cpu_per_wall": 0.03}  # fmt: skip
    assert mod.main(["collect", str(out), "--dest", str(dest), "--timed", str(gnu)]) == 0
    assert read_json(dest / "timed-seed0" / "end_to_end.json")["wall_s"] == 3723.0
    assert read_json(dest / "timed-seed0" / "trajectory.json") == tr
    assert mod.main(["summary", "--dest", str(dest)]) == 0
    both = read_json(dest / "summary.json")
    assert both["numbers"]["per_seed"] == summ["numbers"]["per_seed"] and both["verdict"] == summ["verdict"]
    assert both["numbers"]["timed"][0]["end_to_end_s"] == 3723.0
    from rlvr_linear.study.tables import smollm2_table

    md = smollm2_table(both)
    assert md.splitlines()[0] == "| measure | seed 0 | seed 0 (timed: the command alone) |"
    assert "the command start to end: **62 min** (GNU time; CPU 0.03 cores on average) |" in md
    bad = tmp_path / "bad.time"
    bad.write_text("Exit status: 0\n")
    with pytest.raises(RlvrLinearError, match="bad.time: not the output of /usr/bin/time -v"):
        mod.gnu_time(bad)
    shutil.rmtree(dest / "timed-seed0")
    shutil.rmtree(out)  # the summary needs only the copied files
    assert mod.main(["summary", "--dest", str(dest)]) == 0 and read_json(dest / "summary.json") == summ
