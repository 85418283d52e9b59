"""Runs that users extend and retry: a resumed or extended run equals one run straight through, bit for bit (one
thread), and a finished run re-run with the same config is left as it is (exit 0)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import TASKS, ArithmeticTask
from rlvr_linear.training.grpo import TrainConfig, TrajectoryCallback, train


class HasDigitTask(ArithmeticTask):
    """Reward 1 when the completion holds a digit: a random pico model earns it sometimes, so GRPO moves."""

    def score(self, completion, problem):
        return float(any(ch.isdigit() for ch in completion))


@pytest.fixture(autouse=True)
def _pico_task(monkeypatch):
    monkeypatch.setitem(TASKS, "has-digit", HasDigitTask)


#: 6 steps, a save every 2, an evaluation every 4 (so the evaluations at steps 2 and 6 fall off their grid)
ARGS = dict(task="has-digit:digits=1", steps=6, save_every=2, eval_every=4, prompts_per_step=2, samples_per_prompt=4,
            max_new_tokens=8, eval_problems=8, learning_rate=1e-2, threads=1)  # fmt: skip


def _cfg(model, **kw):
    return TrainConfig(**{**ARGS, "model": str(model), **kw})


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """One 6-step run straight through (and its pico base)."""
    TASKS["has-digit"] = HasDigitTask
    try:
        from rlvr_linear.models.testing import make_pico_dir

        root = tmp_path_factory.mktemp("whole")
        pico = make_pico_dir(root / "pico")
        train(_cfg(pico), root / "run", progress=False)
        return pico, root / "run"
    finally:
        TASKS.pop("has-digit", None)


def _weights(run, step):
    return load_file(run / f"step_{step:06d}" / "model.safetensors")


def _assert_same_run(run, ref):
    for step in (2, 4, 6):
        a, b = _weights(run, step), _weights(ref, step)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"step {step} differs"
    w2, w6 = _weights(ref, 2), _weights(ref, 6)
    assert any(not torch.equal(w2[k], w6[k]) for k in w2)  # the run moved: equal weights are not trivially equal
    m, r = (json.loads((d / "manifest.json").read_text()) for d in (run, ref))
    assert [c["step"] for c in m["checkpoints"]] == [c["step"] for c in r["checkpoints"]] == [0, 2, 4, 6]
    assert [c["mean_reward"] for c in m["checkpoints"]] == [c["mean_reward"] for c in r["checkpoints"]]
    assert m["finished"] and m["config"] == r["config"]
    assert (run / "config.yaml").read_text() == (ref / "config.yaml").read_text()
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    refs = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [x["step"] for x in refs] == [1, 2, 3, 4, 5, 6]
    assert [x["reward"] for x in recs] == [x["reward"] for x in refs]
    resume = sorted(p.name for p in (run / "resume").iterdir() if not p.name.startswith("."))
    assert resume == ["optimizer.safetensors", "rng.safetensors", "state.json"]  # tensors and JSON: no pickle


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path, whole, monkeypatch):
    pico, ref = whole
    run = tmp_path / "run"
    orig = TrajectoryCallback.on_step_end

    def dying(self, args, state, control, **kw):
        orig(self, args, state, control, **kw)
        if self.step(state) == 5:
            raise KeyboardInterrupt  # killed during step 5, after the step-4 save

    monkeypatch.setattr(TrajectoryCallback, "on_step_end", dying)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(pico), run, progress=False)
    monkeypatch.setattr(TrajectoryCallback, "on_step_end", orig)
    assert [c["step"] for c in json.loads((run / "manifest.json").read_text())["checkpoints"]] == [0, 2, 4]
    train(_cfg(pico), run, progress=False)
    _assert_same_run(run, ref)


@pytest.mark.slow
def test_raising_steps_continues_a_finished_run_as_one_long_run(tmp_path, whole, capsys):
    pico, ref = whole
    run = tmp_path / "run"
    short = train(_cfg(pico, steps=2), run, progress=False)
    assert short["finished"] and [c["step"] for c in short["checkpoints"]] == [0, 2]
    longer = train(_cfg(pico), run, progress=False)  # steps 2 -> 6, save_every and the rest unchanged
    assert "resuming" in capsys.readouterr().out
    assert longer["config"]["steps"] == 6
    _assert_same_run(run, ref)


@pytest.mark.slow
def test_a_finished_run_rerun_is_complete_and_exits_0(tmp_path, whole, capsys):
    pico, ref = whole
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--config", str(run / "config.yaml"), "-o", str(run)]) == 0  # a retry wrapper's re-run
    assert f"run {run} is already complete (6 steps); nothing to do" in capsys.readouterr().out
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    # killed after its last save but before it was marked finished: complete too, and now marked
    man = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**man, "finished": False}))
    assert train(_cfg(pico), run, progress=False)["finished"]
    assert json.loads((run / "manifest.json").read_text())["finished"]
    # fewer steps than it holds, or another setting: refused
    with pytest.raises(RlvrLinearError, match=r"holds 6 steps, more than steps=4"):
        train(_cfg(pico, steps=4), run, progress=False)
    with pytest.raises(RlvrLinearError, match="different config"):
        train(_cfg(pico, steps=8, learning_rate=0.5), run, progress=False)
