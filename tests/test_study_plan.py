"""The study's plan: unit costs from the committed measurements, stage estimates, the budgets of the modes."""

import json
from pathlib import Path

import pytest

from rlvr_linear.study import STAGES, StudyConfig
from rlvr_linear.study.plan import UNIT_COSTS, _wx_counts, duration, plan, print_plan, skipped_cost, unit_costs

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def _read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _total(cfg: StudyConfig) -> float:
    return sum(r["estimate_s"] for r in plan(cfg, STAGES))


def test_unit_costs_are_the_committed_measurements():
    """Each cost is the number of its source file (CPU seconds; wall seconds for load and save)."""
    for key, rl in (
        ("tiny", round(_read("train_step_threads1.json")["trl_s_per_step"], 3)),
        ("smollm2-135m", round(sum(_read(f)["trl"]["cpu_s_per_step"] for f in
                                   ("train_step_smollm2.json", "train_step_smollm2_repeat.json")) / 2, 2)),
    ):  # fmt: skip
        u, m = UNIT_COSTS[key], _read(f"study_units_{key}.json")
        assert m["threads"] == u.threads == 1
        assert u.rl_step == rl
        assert u.sft_step == pytest.approx(m["sft_step_s"]["cpu_s"], abs=1e-4)
        assert u.sample == pytest.approx(m["sample_s"]["cpu_s"], abs=1e-4)
        assert u.probe == pytest.approx(m["probe_s"]["cpu_s"], abs=1e-4)
        assert u.load == pytest.approx(m["load_s"]["wall_s"], abs=1e-4)
        assert u.save == pytest.approx(m["save_s"]["wall_s"], abs=1e-4)
        assert u.weights == pytest.approx(m["weights_s"]["cpu_s"] / m["weights_s"]["checkpoints"], abs=1e-4)
        assert all(f in u.source for f in ("train_step", f"study_units_{key}.json"))
    assert UNIT_COSTS["tiny"].greedy == pytest.approx(_read("study_units_tiny.json")["greedy_s"]["cpu_s"], abs=1e-5)
    # SmolLM2's greedy evaluation: docs/smollm2.md, 200 validation problems in 2 min 17 s (one thread)
    assert UNIT_COSTS["smollm2-135m"].greedy == pytest.approx(137 / 200, abs=1e-4)
    assert "2 min 17 s" in (RESULTS.parents[1] / "docs" / "smollm2.md").read_text()


def test_cost_keys():
    assert unit_costs(StudyConfig.for_mode("quick"))[0] == "tiny-quick"
    assert unit_costs(StudyConfig.for_mode("default"))[0] == "tiny"
    assert unit_costs(StudyConfig.for_mode("default", model="smollm2-135m"))[0] == "smollm2-arith"
    assert unit_costs(StudyConfig.for_mode("quick", model="/some/hf/dir"))[0] == "smollm2-arith"
    # another preset on SmolLM2 prices its steps with the measurements of the long-reply setting
    assert unit_costs(StudyConfig.for_mode("default", model="smollm2-135m", preset="smollm2-cot"))[0] == "smollm2-135m"


def test_tiny_default_plan_fits_its_30_minutes():
    cfg = StudyConfig.for_mode("default")
    rows = {r["stage"]: r for r in plan(cfg, STAGES)}
    total = _total(cfg)
    # 29 min; the default study measured 27.8 min of one-thread CPU from a fresh clone (README)
    assert 25 * 60 <= total <= 30 * 60
    assert not any(r["skipped"] for r in rows.values())
    # the RL stages dominate: 3 baseline runs, 3 new robustness runs, 3 re-grounded runs of 560 steps
    for st in ("baseline", "robustness", "regrounding"):
        assert 400 <= rows[st]["estimate_s"] <= 520, st
    assert _total(StudyConfig.for_mode("quick")) <= 5 * 60


def test_wx_counts_follow_the_stage_plan():
    # tiny default: windows (0, 160/280/400) and (80, 160/280/400), 4 targets each; 9 distinct real checkpoints
    assert _wx_counts(StudyConfig.for_mode("default")) == (9, 24)
    # SmolLM2 with the stage's former protocol: one window (0, 30), targets 36 and 60; real checkpoints 30, 36, 60
    old = StudyConfig.for_mode("default", model="smollm2-135m", rl_steps=90, save_every=6, wx_t1_fractions=[1 / 3],
                               wx_max_alpha=2.0, wx_max_targets=2)  # fmt: skip
    assert _wx_counts(old) == (3, 2)


def test_baseline_estimate_counts_steps_evaluations_and_saves():
    u = UNIT_COSTS["smollm2-arith"]
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    row = next(r for r in plan(cfg, ["baseline"]))
    saves = 16  # steps 0, 10, ..., 150
    expect = 150 * u.rl_step + u.load + saves * (u.save + 200 * u.greedy)
    assert row["estimate_s"] == round(expect + 3)
    twice = StudyConfig.for_mode("default", model="smollm2-135m", seeds=[0, 1])
    assert next(r for r in plan(twice, ["baseline"]))["estimate_s"] == round(2 * expect + 3)


def test_smollm2_default_plan_is_one_run_and_its_trajectory_analysis():
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    stages = cfg.default_stages()
    rows = {r["stage"]: r for r in plan(cfg, stages)}
    total = sum(r["estimate_s"] for r in rows.values())
    u = UNIT_COSTS["smollm2-arith"]
    assert {s for s, r in rows.items() if r["skipped"]} == {"robustness", "mechanism", "regrounding"}
    assert all(rows[s]["estimate_s"] == 0 and rows[s]["what"].startswith("not run (budget): ") for s in
               ("robustness", "mechanism", "regrounding"))  # fmt: skip
    # the RL run: 150 steps of 20.6 CPU s and 16 evaluations on 200 problems; the analysis: 16 greedy evaluations on
    # 500 problems and avg@4 of 3 models, the probes on 16 checkpoints and 4 weight passes
    assert 55 * 60 <= rows["baseline"]["estimate_s"] <= 62 * 60
    expect = 16 * 500 * u.greedy + 3 * 4 * 500 * u.sample + 16 * (u.load + 64 * u.probe + 4 * u.weights) + 6 * u.save
    assert rows["trajectory"]["estimate_s"] == round(expect + 3)
    assert 95 * 60 <= total <= 115 * 60  # about the 100 minutes of docs/smollm2.md
    # what a skipped stage would cost: another RL run or an SFT run
    assert skipped_cost(cfg, "regrounding") == pytest.approx(rows["baseline"]["estimate_s"] - 3, abs=1)
    quick = StudyConfig.for_mode("quick", model="smollm2-135m")
    quick_total = sum(r["estimate_s"] for r in plan(quick, quick.default_stages()))
    assert 3 * 60 <= quick_total <= 10 * 60  # a smoke test: 10 RL steps at ~21 s


def test_print_plan_states_thread_count_source_and_total(capsys, monkeypatch):
    from rlvr_linear.runtime.threads import usable_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the thread policy: a 135M model gets every core
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    total = print_plan(cfg, STAGES, done=set())
    out = capsys.readouterr().out
    assert f"estimated total: {duration(total)} ({total:.0f} s) on a free core" in out
    assert duration(total) == duration(sum(r["estimate_s"] for r in plan(cfg, STAGES) if not r["skipped"]))
    assert f"unit costs (smollm2-arith): measured with 1 thread(s); this study uses {usable_cores()};" in out
    assert "eval_units_smollm2-arith.json (greedy, sample)" in out and "study_units_smollm2-135m.json" in out
    assert out.count("not run (budget): ") == 3
    # a finished stage is reused: not counted again
    left = print_plan(cfg, STAGES, done={"baseline"})
    rows = {r["stage"]: r for r in plan(cfg, STAGES)}
    assert left == pytest.approx(total - rows["baseline"]["estimate_s"])
    assert "done, reused" in capsys.readouterr().out
    # --threads wins; the tiny model gets one thread
    print_plan(StudyConfig.for_mode("default", model="smollm2-135m", threads=3), ["baseline"], set())
    assert "this study uses 3" in capsys.readouterr().out
    print_plan(StudyConfig.for_mode("default"), ["baseline"], set())
    assert "this study uses 1;" in capsys.readouterr().out


def test_duration():
    assert duration(10_800) == "~3.0 h" and duration(600) == "~10 min" and duration(3599) == "~60 min"
