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
    assert unit_costs(StudyConfig.for_mode("default", model="smollm2-135m"))[0] == "smollm2-135m"
    assert unit_costs(StudyConfig.for_mode("quick", model="/some/hf/dir"))[0] == "smollm2-135m"


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
    # SmolLM2: one window (0, 30), targets 36 and 60 (alpha 1.2 and 2.0); real checkpoints 30, 36, 60
    assert _wx_counts(StudyConfig.for_mode("default", model="smollm2-135m")) == (3, 2)


def test_baseline_estimate_counts_steps_evaluations_and_saves():
    u = UNIT_COSTS["smollm2-135m"]
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    row = next(r for r in plan(cfg, ["baseline"]))
    saves = 16  # steps 0, 6, ..., 90
    expect = 90 * u.rl_step + u.load + saves * (u.save + 50 * u.greedy)
    assert row["estimate_s"] == round(expect + 3)
    twice = StudyConfig.for_mode("default", model="smollm2-135m", seeds=[0, 1])
    assert next(r for r in plan(twice, ["baseline"]))["estimate_s"] == round(2 * expect + 3)


def test_smollm2_default_plan_is_about_three_hours():
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    rows = {r["stage"]: r for r in plan(cfg, STAGES)}
    total = _total(cfg)
    assert 2.8 * 3600 <= total <= 3.3 * 3600
    assert {s for s, r in rows.items() if r["skipped"]} == {"robustness", "mechanism", "regrounding"}
    assert all(rows[s]["estimate_s"] == 0 and rows[s]["what"].startswith("not run (budget): ") for s in
               ("robustness", "mechanism", "regrounding"))  # fmt: skip
    assert rows["baseline"]["estimate_s"] > 0.75 * total  # the one RL run is the study's cost
    # what a skipped stage would cost: another RL run (2.3 h) or an SFT run (~22 min)
    assert skipped_cost(cfg, "regrounding") == pytest.approx(rows["baseline"]["estimate_s"] - 3, abs=1)
    assert 15 * 60 <= skipped_cost(cfg, "mechanism") <= 30 * 60
    quick = StudyConfig.for_mode("quick", model="smollm2-135m")
    assert 3 * 60 <= _total(quick) <= 15 * 60  # a smoke test: 3 RL steps at ~87 s


def test_print_plan_states_thread_count_source_and_total(capsys):
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    total = print_plan(cfg, STAGES, done=set())
    out = capsys.readouterr().out
    assert f"estimated total: {duration(total)} ({total:.0f} s) on a free core" in out
    assert duration(total) == "~3.0 h"
    assert "unit costs (smollm2-135m): measured with 1 thread(s); this study uses 1;" in out
    assert "docs/smollm2.md (greedy)" in out and "study_units_smollm2-135m.json" in out
    assert out.count("not run (budget): ") == 3
    # a finished stage is reused: not counted again
    left = print_plan(cfg, STAGES, done={"baseline"})
    rows = {r["stage"]: r for r in plan(cfg, STAGES)}
    assert left == pytest.approx(total - rows["baseline"]["estimate_s"])
    assert "done, reused" in capsys.readouterr().out
    # more threads than the measurements: said so
    print_plan(StudyConfig.for_mode("default", model="smollm2-135m", threads=2), ["baseline"], set())
    assert "this study uses 2" in capsys.readouterr().out


def test_duration():
    assert duration(10_800) == "~3.0 h" and duration(600) == "~10 min" and duration(3599) == "~60 min"
