import json

import pytest
import torch
from safetensors.torch import load_file

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import TASKS, ArithmeticTask
from rlvr_linear.training.grpo import TrainConfig, TrajectoryCallback, train
from rlvr_linear.training.resume import optimizer_from_tensors, optimizer_to_tensors


class HasDigitTask(ArithmeticTask):
    """A pico-friendly verifiable task: reward 1 when the completion contains a digit

    A random pico model never solves arithmetic, so its rewards would all be 0 and GRPO would not move.
    """

    def score(self, completion, problem):
        return float(any(ch.isdigit() for ch in completion))


@pytest.fixture(autouse=True)
def _pico_task(monkeypatch):
    monkeypatch.setitem(TASKS, "has-digit", HasDigitTask)


def _cfg(model, **kw):
    base = dict(
        model=str(model),
        task="has-digit:digits=1",
        steps=3,
        save_every=1,
        prompts_per_step=2,
        samples_per_prompt=4,
        max_new_tokens=8,
        eval_problems=8,
        learning_rate=1e-2,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_three_step_train_changes_params_and_saves_loadable_checkpoints(tmp_path, pico_dir):
    run = tmp_path / "run"
    manifest = train(_cfg(pico_dir), run, progress=False)
    steps = [c["step"] for c in manifest["checkpoints"]]
    assert steps == [0, 1, 2, 3] and manifest["finished"]
    assert all(c["val_accuracy"] is not None for c in manifest["checkpoints"])
    w0 = load_file(run / "step_000000" / "model.safetensors")
    w3 = load_file(run / "step_000003" / "model.safetensors")
    start = load_file(pico_dir / "model.safetensors")
    assert all(torch.equal(w0[k], start[k]) for k in start)  # step 0 is the starting model
    assert any(not torch.equal(w0[k], w3[k]) for k in w0)  # training changed parameters
    # a saved checkpoint loads back with identical tensors
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(run / "step_000003")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], w3[k]) for k in w3)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all("reward" in x for x in lines)
    assert (run / "config.yaml").exists()
    assert train(_cfg(pico_dir), run, progress=False) == manifest  # re-run when complete: left as it is


@pytest.mark.slow
def test_killed_run_resumes_from_last_save(tmp_path, pico_dir, monkeypatch):
    run = tmp_path / "run"
    cfg = _cfg(pico_dir, steps=4, save_every=2)
    orig = TrajectoryCallback.on_step_end

    def dying(self, args, state, control, **kw):
        orig(self, args, state, control, **kw)
        if self.step(state) == 3:
            raise KeyboardInterrupt  # killed after the step-2 save, during step 3

    monkeypatch.setattr(TrajectoryCallback, "on_step_end", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, progress=False)
    monkeypatch.setattr(TrajectoryCallback, "on_step_end", orig)
    m = json.loads((run / "manifest.json").read_text())
    assert [c["step"] for c in m["checkpoints"]] == [0, 2] and not m.get("finished")
    saved2 = load_file(run / "step_000002" / "model.safetensors")
    manifest = train(cfg, run, progress=False)
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 2, 4] and manifest["finished"]
    assert all(torch.equal(saved2[k], v) for k, v in load_file(run / "step_000002" / "model.safetensors").items())
    with pytest.raises(RlvrLinearError, match="different config"):
        cfg2 = _cfg(pico_dir, steps=4, save_every=2, learning_rate=0.5)
        (run / "manifest.json").write_text(json.dumps({**manifest, "finished": False}))
        train(cfg2, run, progress=False)


def _kill_at(monkeypatch, step):
    """Make training die during ``step`` (after the saves before it); returns the undo."""
    orig = TrajectoryCallback.on_step_end

    def dying(self, args, state, control, **kw):
        orig(self, args, state, control, **kw)
        if self.step(state) == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrajectoryCallback, "on_step_end", dying)
    return lambda: monkeypatch.setattr(TrajectoryCallback, "on_step_end", orig)


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, pico_dir, monkeypatch):
    """Killed and resumed, a run ends with the steps, manifest fields, metrics and files of one run straight through."""
    cfg = _cfg(pico_dir, steps=4, save_every=2)
    whole = train(cfg, tmp_path / "whole", progress=False)
    run = tmp_path / "resumed"
    undo = _kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, progress=False)
    undo()
    resumed = train(cfg, run, progress=False)
    assert [c["step"] for c in resumed["checkpoints"]] == [c["step"] for c in whole["checkpoints"]] == [0, 2, 4]
    assert [c["path"] for c in resumed["checkpoints"]] == [c["path"] for c in whole["checkpoints"]]
    assert sorted(resumed) == sorted(whole)
    assert [sorted(c) for c in resumed["checkpoints"]] == [sorted(c) for c in whole["checkpoints"]]
    timing = {"checkpoints", "wall_time"}
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in whole.items() if k not in timing}
    assert [c["val_accuracy"] is None for c in resumed["checkpoints"]] == [
        c["val_accuracy"] is None for c in whole["checkpoints"]
    ]
    recs = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("whole", "resumed")}  # fmt: skip
    assert [r["step"] for r in recs["resumed"]] == [r["step"] for r in recs["whole"]] == [1, 2, 3, 4]
    assert [sorted(r) for r in recs["resumed"]] == [sorted(r) for r in recs["whole"]]
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert (run / "config.yaml").read_text() == (tmp_path / "whole" / "config.yaml").read_text()
    w0, r0 = (load_file(tmp_path / d / "step_000000" / "model.safetensors") for d in ("whole", "resumed"))
    assert all(torch.equal(w0[k], r0[k]) for k in w0)  # both start from the same base


@pytest.mark.slow
def test_train_reground_inside_grpo_records_effective_step(tmp_path, pico_dir, capsys):
    """``rlvr-linear train --reground M,N``: jumps inside the GRPO run, effective steps in manifest and metrics."""
    from rlvr_linear.cli import main

    run = tmp_path / "rg"
    argv = ["train", "-o", str(run), "--model", str(pico_dir), "--task", "has-digit:digits=1", "--steps", "4",
            "--save-every", "1", "--prompts-per-step", "2", "--samples-per-prompt", "4", "--max-new-tokens", "8",
            "--eval-problems", "8", "--lr", "1e-2", "--threads", "1", "--reground", "2,3"]  # fmt: skip
    assert main(argv) == 0
    m = json.loads((run / "manifest.json").read_text())
    assert m["finished"] and m["config"]["reground"] == "2,3"
    # M = 2, N = 3: a jump of 3 steps after gradient steps 2 and 4 (effective = gradient steps + 3 per jump)
    assert [(c["step"], c["effective_step"]) for c in m["checkpoints"]] == [(0, 0), (1, 1), (2, 5), (3, 6), (4, 10)]
    assert [(h["grad_step"], h["effective_step"]) for h in m["reground_history"]] == [(2, 5), (4, 10)]
    assert all(h["alpha"] == pytest.approx(2.5) for h in m["reground_history"])  # (M + N) / M
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["effective_step"]) for r in recs] == [(1, 1), (2, 5), (3, 6), (4, 10)]


def test_optimizer_state_round_trip():
    p = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW(p, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        sum((x**2).sum() for x in p).backward()
        opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(x.detach().clone()) for x in p], lr=0.1)
    optimizer_from_tensors(opt2, tensors, json.loads(json.dumps(meta)))
    for i in range(2):
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p[i]][k], opt2.state[opt2.param_groups[0]["params"][i]][k])
        assert float(opt2.state[opt2.param_groups[0]["params"][i]]["step"]) == 2.0


def test_config_validation_and_yaml(tmp_path):
    with pytest.raises(RlvrLinearError, match="unknown algorithm"):
        TrainConfig(algorithm="ppo")
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\nalgorithm: gspo\noptimizer: sgd\n")
    cfg = TrainConfig.from_yaml(f, seed=3)
    assert (cfg.steps, cfg.algorithm, cfg.optimizer, cfg.seed) == (7, "gspo", "sgd", 3)
    f.write_text("stepz: 7\n")
    with pytest.raises(RlvrLinearError, match="unknown config fields"):
        TrainConfig.from_yaml(f)
