"""``study --model smollm2-135m``: the budgeted real-model protocol, its "not run (budget)" stages, resuming, and the
stage plumbing end to end on a pico Llama (same protocol, model given as a path). SmolLM2 itself is never loaded."""

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import TASKS, ArithmeticCoTChatTask
from rlvr_linear.io import jsonable, write_json
from rlvr_linear.models.testing import PICO_CHAT_TEMPLATE, digit_chat_task, make_pico_model, save_model
from rlvr_linear.reporting.report import SECTIONS, validate_results
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
    pre = PRESETS["smollm2-cot"]
    assert (c.preset, c.task, c.seeds, c.threads) == ("smollm2-cot", "arithmetic-cot-chat", [0], 1)
    assert (c.learning_rate, c.prompts_per_step, c.samples_per_prompt) == (
        pre["learning_rate"], pre["prompts_per_step"], pre["samples_per_prompt"])  # fmt: skip
    assert (c.rl_steps, c.save_every) == (90, 6) and c.rl_steps // c.save_every == 15  # checkpoints after step 0
    assert (c.eval_problems, c.probe_prompts * c.probe_samples, c.logit_k, c.logit_problems) == (50, 32, 4, 50)
    assert (c.wx_base_fractions, c.wx_t1_fractions, c.wx_max_alpha, c.wx_max_targets) == ([0.0], [1 / 3], 2.0, 2)
    assert c.base_recipe is None
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
    assert (q.rl_steps, q.save_every, q.eval_problems, q.task) == (3, 1, 8, "arithmetic-cot-chat")
    assert set(q.budget_skips()) == SKIPPED
    with pytest.raises(RlvrLinearError, match=r"study --full has no protocol for smollm2-135m \(days on a CPU\)"):
        StudyConfig.for_mode("full", model="smollm2-135m")
    assert main(["study", "--full", "--model", "smollm2-135m", "-o", "unused"]) == 2
    assert "study --full has no protocol for smollm2-135m" in capsys.readouterr().err
    with pytest.raises(RlvrLinearError, match=r"unknown preset 'nope'; choose from "):
        StudyConfig.for_mode("quick", preset="nope")


def test_smollm2_runs_use_the_long_reply_preset(tmp_path):
    """Every RL run of the protocol is preset smollm2-cot with the study's steps: 48 new tokens (the task's)."""
    cfg = StudyConfig.for_mode("default", model="smollm2-135m")
    ctx = _Ctx(cfg, tmp_path, progress=False)
    ctx._base = tmp_path / "base"  # not loaded: the run config only names it
    t = ctx.train_config(0)
    assert (t.task, t.max_new_tokens, t.steps, t.save_every, t.eval_problems, t.threads) == (
        "arithmetic-cot-chat", None, 90, 6, 50, 1)  # fmt: skip
    assert (t.learning_rate, t.prompts_per_step, t.samples_per_prompt) == (1e-5, 8, 8)
    assert ArithmeticCoTChatTask().max_new_tokens(True) == 48
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
    assert "~3.0 h" not in printed.split("estimated total:")[1].splitlines()[0]  # only the report is left to run
    assert not (out / "runs").exists() and not (out / "baseline").exists()
    validate_results(res)
    for s in SKIPPED:
        sec = res[s]
        assert sec["reproduced"] == "n/a" and sec["numbers"]["not_run"] == "budget"
        assert sec["verdict"].startswith("not run (budget): this protocol has no ")
        assert sec["numbers"]["reason"] == cfg.budget_skips()[s]
        assert f"[{s}] not run (budget): " in printed
    assert "one such run costs ~2.4 h here" in res["robustness"]["verdict"]
    assert "one such run costs ~2" in res["mechanism"]["verdict"] and " min here" in res["mechanism"]["verdict"]
    assert res["meta"]["model"] == "smollm2-135m" and res["meta"]["config"]["preset"] == "smollm2-cot"
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


_DigitChatTask = digit_chat_task()
CHAT_TEMPLATE = PICO_CHAT_TEMPLATE


@pytest.mark.slow
def test_real_model_quick_study_on_a_pico_llama_runs_every_stage_and_resumes(tmp_path, monkeypatch, capsys):
    """The SmolLM2 protocol's plumbing (chat task, preset smollm2-cot, one thread, skipped stages) with a pico Llama
    given as a model path; a second run reuses every stage."""
    monkeypatch.setitem(TASKS, "cot-chat-digit", _DigitChatTask)
    model, tok = make_pico_model("llama", seed=1)
    tok.chat_template = CHAT_TEMPLATE
    pico = save_model(model, tok, tmp_path / "pico-llama-chat")
    cfg = StudyConfig.for_mode("quick", model=str(pico), task="cot-chat-digit", learning_rate=3e-2)
    out = tmp_path / "study"
    res = run_study(cfg, out, progress=False)
    printed = capsys.readouterr().out
    assert "unit costs (smollm2-135m): measured with 1 thread(s); this study uses 1;" in printed
    validate_results(res)
    assert res["meta"]["machine"]["threads"] == 1
    man = json.loads((out / "runs" / "rl_seed0" / "manifest.json").read_text())
    assert [c["step"] for c in man["checkpoints"]] == [0, 1, 2, 3] and man["finished"]
    assert man["config"]["task"] == "cot-chat-digit" and man["config"]["max_new_tokens"] is None
    assert res["baseline"]["numbers"]["runs"]["0"]["steps"] == [0, 1, 2, 3]
    lin = res["linearity"]["numbers"]
    assert lin["checkpoints"] == [0, 1, 2, 3] and lin["rl_weights"]["n"] > 0 and lin["probes"] > 0
    assert [(r["t1"], r["target"], r["alpha"]) for r in res["weight_extrapolation"]["numbers"]["rows"]] == [(1, 2, 2.0)]
    assert res["logit_extrapolation"]["numbers"]["k"] == 1 and res["logit_extrapolation"]["numbers"]["problems"] == 4
    for s in SECTIONS:
        if s in SKIPPED:
            assert res[s]["verdict"].startswith("not run (budget): ") and res[s]["reproduced"] == "n/a"
        else:
            assert not res[s]["verdict"].startswith("not run"), s
    stamps = {s: (out / s / "result.json").stat().st_mtime_ns for s in SECTIONS}
    run_study(cfg, out, progress=False)
    again = capsys.readouterr().out
    for s in SECTIONS:
        assert f"[{s}] finished earlier: reusing" in again
        assert (out / s / "result.json").stat().st_mtime_ns == stamps[s]
    assert Path(out / "report.html").exists()
