import dataclasses
import json

import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.study.adaptive_regrounding import _unused_as_saved, check_reusable, compare_adaptive
from rlvr_linear.training.grpo import TrainConfig

CFG = TrainConfig(model="pico", steps=4, save_every=1, learning_rate=1e-2, reground_optimizer="reset", threads=1)


def _save(run, cfg, finished=True):
    run.mkdir(parents=True)
    man = {"config": dataclasses.asdict(cfg) if cfg is not None else None, "checkpoints": [], "finished": finished}
    (run / "manifest.json").write_text(json.dumps(man))


def test_compare_adaptive_refuses_a_finished_run_with_another_config(tmp_path, monkeypatch):
    import rlvr_linear.training.grpo

    def no_training(*a, **kw):
        raise AssertionError("compare_adaptive trained instead of refusing")

    monkeypatch.setattr(rlvr_linear.training.grpo, "train", no_training)
    _save(tmp_path / "runs" / "standard_seed0", dataclasses.replace(CFG, learning_rate=3e-4))
    with pytest.raises(RlvrLinearError) as e:
        compare_adaptive(tmp_path, CFG, m=2, fixed=(), seeds=(0,), progress=False)
    msg = str(e.value)
    assert msg == (
        f"{tmp_path / 'runs' / 'standard_seed0'}: not the comparison's standard, seed 0 run (differs in learning_rate "
        "(saved 0.0003, wanted 0.01)); move it away or use another output folder"
    )
    assert "\n" not in msg


def test_reuse_check_ignores_regrounding_fields_of_a_standard_run(tmp_path):
    # the study trains standard RL with reground_optimizer "keep"; the comparison's base says "reset": same run
    saved = {"config": {**dataclasses.asdict(CFG), "reground_optimizer": "keep"}, "finished": True}
    del saved["config"]["micro_batch"]  # saved before the field existed: it takes its default
    std = _unused_as_saved(dataclasses.replace(CFG, seed=0), saved["config"])
    assert std.reground_optimizer == "keep"
    check_reusable(tmp_path, saved, std, "standard, seed 0")  # no error
    # a re-grounding run: the optimizer policy matters
    auto = dataclasses.replace(CFG, reground="2,auto")
    assert _unused_as_saved(auto, saved["config"]) is auto
    saved_auto = {"config": {**dataclasses.asdict(auto), "reground_optimizer": "keep"}}
    with pytest.raises(RlvrLinearError, match=r"differs in reground_optimizer \(saved 'keep', wanted 'reset'\)"):
        check_reusable(tmp_path, saved_auto, auto, "auto, seed 0")
    with pytest.raises(RlvrLinearError, match="x: not the comparison's auto, seed 0 run .its manifest has no config"):
        check_reusable(tmp_path / "x", {"finished": True}, auto, "auto, seed 0")
    newer = {"config": {**dataclasses.asdict(auto), "from_the_future": 1}}
    with pytest.raises(RlvrLinearError, match="from_the_future .a field this version does not know"):
        check_reusable(tmp_path, newer, auto, "auto, seed 0")
