"""``study --model smollm2-135m``: the budgeted real-model protocol (the 100-minute experiment of docs/smollm2.md),
its default stages and "not run (budget)" stages, and resuming. SmolLM2 itself is never loaded; the protocol's
stages run end to end on a pico Llama in tests/test_regime_trajectory_stage.py."""

from dataclasses import asdict

import pytest

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import jsonable, write_json
from rlvr_linear.reporting.report import validate_results
from rlvr_linear.study import StudyConfig, run_study
from rlvr_linear.study.common import _Ctx
from rlvr_linear.study.run import _check_config
from rlvr_linear.training.grpo import PRESETS

SKIPPED = {"robustness", "mechanism", "regrounding"}


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The protocol runs in one thread (``torch.set_num_threads(1)``): give the other tests theirs back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_smollm2_protocol_fields():
    c = StudyConfig.for_mode("default", model="smollm2-135m")
    pre = PRESETS["smollm2-arith"]
    assert (c.preset, c.task, c.seeds, c.threads) == ("smollm2-arith", "arithmetic:system=", [0], None)  # the policy
    assert (c.learning_rate, c.optimizer, c.prompts_per_step, c.samples_per_prompt) == (
        pre["learning_rate"], "adamw", pre["prompts_per_step"], pre["samples_per_prompt"])  # fmt: skip
    assert (c.learning_rate, c.prompts_per_step, c.samples_per_prompt) == (1e-6, 8, 4)
    assert (c.rl_steps, c.save_every) == (150, 10) and c.rl_steps // c.save_every == 15  # checkpoints after step 0
    assert (c.eval_problems, c.probe_prompts * c.probe_samples, c.trajectory_problems, c.trajectory_k) == (
        200, 64, 500, 4)  # fmt: skip
    assert c.base_recipe is None
    assert c.default_stages() == ["baseline", "trajectory", "robustness", "mechanism", "regrounding", "report"]
    assert "trajectory" not in StudyConfig.for_mode("default").default_stages()
    assert set(c.budget_skips()) == SKIPPED
    assert c.budget_skips()["robustness"] == "no robustness settings (--robustness grpo,sgd: one RL run each)"
    # naming settings runs the stage again (a different protocol, so a new folder)
    more = StudyConfig.for_mode("default", model="smollm2-135m", robustness=["grpo", "sgd"], mechanism_snrs=[0.0])
    assert set(more.budget_skips()) == {"regrounding"}
    # an HF directory gets the same protocol
    assert asdict(StudyConfig.for_mode("default", model="/m")) == {**asdict(c), "model": "/m"}
    # the tiny modes skip nothing and keep their preset
    for mode in ("quick", "default", "full"):
        t = StudyConfig.for_mode(mode)
        assert t.budget_skips() == {} and t.preset is None and t.task == "arithmetic"
    assert StudyConfig.for_mode("quick", mechanism_snrs=[], mechanism_zero_signal=True).budget_skips() == {}


def test_smollm2_quick_is_a_smoke_test_and_full_is_refused(capsys):
    q = StudyConfig.for_mode("quick", model="smollm2-135m")
    assert (q.rl_steps, q.save_every, q.eval_problems, q.trajectory_problems) == (10, 1, 8, 8)
    assert set(q.budget_skips()) == SKIPPED
    with pytest.raises(RlvrLinearError, match=r"study --full has no protocol for smollm2-135m \(days on a CPU\)"):
        StudyConfig.for_mode("full", model="smollm2-135m")
    assert main(["study", "--full", "--model", "smollm2-135m", "-o", "unused"]) == 2
    assert "study --full has no protocol for smollm2-135m" in capsys.readouterr().err
    with pytest.raises(RlvrLinearError, match=r"unknown preset 'nope'; choose from "):
        StudyConfig.for_mode("quick", preset="nope")


def test_smollm2_runs_are_the_documented_training_command(tmp_path):
    """Every RL run of the protocol is preset smollm2-arith with the study's steps, and its config is exactly what
    the README's `rlvr-linear train --model smollm2-135m ...` command records (so a run trained by hand is reused)."""
    from rlvr_linear.study.common import same_config
    from rlvr_linear.training.grpo import TrainConfig

    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    ctx = _Ctx(cfg, tmp_path, progress=False)
    t = ctx.train_config(1)
    assert (t.model, t.task, t.max_new_tokens, t.steps, t.save_every, t.eval_problems, t.threads, t.sketch) == (
        "smollm2-135m", "arithmetic:system=", 16, 150, 10, 200, None, True)  # fmt: skip
    assert (t.learning_rate, t.prompts_per_step, t.samples_per_prompt, t.temperature, t.top_p) == (
        1e-6, 8, 4, 0.7, 0.95)  # fmt: skip
    by_hand = TrainConfig(model="smollm2-135m", task="arithmetic:system=", prompts_per_step=8, samples_per_prompt=4,
                          max_new_tokens=16, temperature=0.7, top_p=0.95, learning_rate=1e-6, optimizer="adamw",
                          steps=150, save_every=10, eval_problems=200, threads=1, seed=1, sketch=True)  # fmt: skip
    assert same_config(jsonable(asdict(by_hand)), t)  # trained with one thread: the same run
    assert not same_config(jsonable(asdict(by_hand)) | {"seed": 2}, t)
    # the tiny study keeps its preset
    tiny = _Ctx(StudyConfig.for_mode("default"), tmp_path, progress=False)
    tiny._base = tmp_path / "base"
    tt = tiny.train_config(0)
    assert (tt.task, tt.learning_rate, tt.optimizer) == ("arithmetic", 3e-3, "sgd")
    assert t.optimizer == "adamw"


def test_skipped_stages_write_not_run_budget_results_without_any_model(tmp_path, capsys):
    """Only skipped stages asked for: nothing loads a model (no baseline is triggered); rerun reuses them."""
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    out = tmp_path / "smol"
    res = run_study(cfg, out, stages=[*sorted(SKIPPED), "report"], progress=False)
    printed = capsys.readouterr().out
    assert "~1." not in printed.split("estimated total:")[1].splitlines()[0]  # only the report is left to run
    assert not (out / "runs").exists() and not (out / "baseline").exists()
    validate_results(res)
    for s in SKIPPED:
        sec = res[s]
        assert sec["reproduced"] == "n/a" and sec["numbers"]["not_run"] == "budget"
        assert sec["verdict"].startswith("not run (budget): this protocol has no ")
        assert sec["numbers"]["reason"] == cfg.budget_skips()[s]
        assert f"[{s}] not run (budget): " in printed
    assert "one such run costs ~1.1 h here" in res["robustness"]["verdict"]
    assert "one such run costs ~2" in res["mechanism"]["verdict"] and " min here" in res["mechanism"]["verdict"]
    assert res["meta"]["model"] == "smollm2-135m" and res["meta"]["config"]["preset"] == "smollm2-arith"
    page = (out / "report.html").read_text()
    assert page.count("not run (budget): this protocol has no ") >= 3
    stamps = {s: (out / s / "result.json").stat().st_mtime_ns for s in SKIPPED}
    run_study(cfg, out, stages=[*sorted(SKIPPED), "report"], progress=False)
    again = capsys.readouterr().out
    for s in SKIPPED:
        assert f"[{s}] finished earlier: reusing" in again
        assert (out / s / "result.json").stat().st_mtime_ns == stamps[s]


def test_a_study_folder_from_before_a_new_field_stays_resumable(tmp_path):
    cfg = StudyConfig.for_mode("quick")
    saved = jsonable(asdict(cfg))
    del saved["preset"]  # a folder started before StudyConfig had ``preset``
    write_json(tmp_path / "study_config.json", saved)
    _check_config(tmp_path, cfg)  # accepted: the missing field counts at its default (None)
    with pytest.raises(RlvrLinearError, match=r"different protocol \(fields \['preset'\]\)"):
        _check_config(tmp_path, StudyConfig.for_mode("quick", preset="smollm2-cot"))
    write_json(tmp_path / "study_config.json", {**saved, "rl_steps": 30})
    with pytest.raises(RlvrLinearError, match=r"different protocol \(fields \['rl_steps'\]\)"):
        _check_config(tmp_path, cfg)
