import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlvr_linear.advisor import advise
from rlvr_linear.advisor.backtest import PREDICTORS
from rlvr_linear.models.testing import make_pico_model, save_model
from rlvr_linear.training.distributed import local_params
from rlvr_linear.training.grpo import TrainConfig, TrajectoryCallback, train
from rlvr_linear.training.monitor import PREFIX, LinearityMonitor
from rlvr_linear.training.regrounding import ReGroundingCallback

KEYS = [PREFIX + k for k in ("drift_to_noise", "r2", "r2_null", "error_ratio", "h_star")]


def _drive(model, steps, update, callbacks, every_save=None, out=None, tok=None):
    """A hand-made training loop: ``update(step)`` moves the weights; callbacks see on_step_end like in a Trainer."""
    state = SimpleNamespace(global_step=0, log_history=[])
    for cb in callbacks:
        cb.on_train_begin(None, state, None, model=model)
    if out is not None:
        save_model(model, tok, out / "step_000000")
    for _ in range(steps):
        state.global_step += 1
        update(state.global_step)
        for cb in callbacks:
            cb.on_step_end(None, state, None, model=model, optimizer=None)
        if out is not None and state.global_step % every_save == 0:
            save_model(model, tok, out / f"step_{state.global_step:06d}")
    return state


def _mover(model, kind: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn(p.shape, generator=g) * 1e-3 for p in params]

    @torch.no_grad()
    def update(step):
        for p, d in zip(params, v):
            if kind == "line":
                p.add_(d + 1e-5 * torch.randn(p.shape, generator=g))
            else:
                p.add_(1e-3 * torch.randn(p.shape, generator=g))

    return update


def test_monitor_matches_advise_on_the_same_checkpoints(tmp_path):
    model, tok = make_pico_model()
    mon = LinearityMonitor(every=5, window=50)
    _drive(model, 40, _mover(model, "line"), [mon], every_save=5, out=tmp_path, tok=tok)
    assert [r[0] for r in mon.records] == list(range(0, 45, 5))
    adv = advise([f"{s}={tmp_path / f'step_{s:06d}'}" for s in range(0, 45, 5)])
    last = mon.history[-1]
    assert last["step"] == 40 and all(math.isfinite(last[k]) for k in KEYS)
    # the same sample (same seeded indices per tensor), the same formulas
    assert last[PREFIX + "r2"] == pytest.approx(adv.stats["weights"]["r2_median"], rel=1e-9)
    assert last[PREFIX + "drift_to_noise"] == pytest.approx(adv.stats["weights"]["drift_to_noise_median"], rel=1e-9)
    best = PREDICTORS[int(last[PREFIX + "predictor"])]
    assert last[PREFIX + "h_star"] == pytest.approx(adv.spaces["weights"][best].h_star)
    assert last[PREFIX + "error_ratio"] == pytest.approx(adv.spaces["weights"][best].rows[0]["ratio"], rel=1e-9)
    assert last[PREFIX + "h_star"] >= 40 and last[PREFIX + "error_ratio"] < 0.1


def test_monitor_random_walk_has_no_safe_horizon():
    model, _ = make_pico_model()
    mon = LinearityMonitor(every=2)
    _drive(model, 16, _mover(model, "walk"), [mon])
    assert mon.h_star == 0 and mon.history[-1][PREFIX + "error_ratio"] > 1
    assert mon.history[-1][PREFIX + "r2"] < 0.8


def test_monitor_logs_into_on_log_and_log_history():
    model, _ = make_pico_model()
    mon = LinearityMonitor(every=1)
    state = _drive(model, 3, _mover(model, "line"), [mon])
    state.log_history.append({"loss": 1.0, "step": 3})
    logs = {"loss": 1.0}
    mon.on_log(None, state, None, logs=logs)
    assert set(KEYS) <= set(logs) and set(KEYS) <= set(state.log_history[-1])
    logs2 = {"loss": 1.0}
    mon.on_log(None, state, None, logs=logs2)  # nothing new measured: nothing added
    assert logs2 == {"loss": 1.0}


def test_grpo_run_logs_monitor_keys(tmp_path, pico_dir, monkeypatch):
    from rlvr_linear.evaluation.tasks import TASKS, ArithmeticTask

    class HasDigitTask(ArithmeticTask):
        def score(self, completion, problem):
            return float(any(ch.isdigit() for ch in completion))

    monkeypatch.setitem(TASKS, "has-digit", HasDigitTask)
    seen = {}
    orig = TrajectoryCallback.on_train_end

    def spy(self, args, state, control, **kw):
        seen["log_history"] = list(state.log_history)
        return orig(self, args, state, control, **kw)

    monkeypatch.setattr(TrajectoryCallback, "on_train_end", spy)
    cfg = TrainConfig(model=str(pico_dir), task="has-digit:digits=1", steps=4, save_every=2, prompts_per_step=2,
                      samples_per_prompt=4, max_new_tokens=8, eval_problems=8, learning_rate=1e-2, threads=1,
                      monitor=True, monitor_every=1)  # fmt: skip
    manifest = train(cfg, tmp_path / "run", progress=False)
    logged = [h for h in seen["log_history"] if PREFIX + "r2" in h]
    assert [h["step"] for h in logged] == [2, 3, 4]  # measured from the 3rd record (steps 0, 1, 2) on
    for h in logged:
        assert all(math.isfinite(h[k]) for k in KEYS), h
        assert "loss" in h  # the trainer's own log entry carries them
    assert [h["step"] for h in manifest["monitor"]] == [2, 3, 4]
    assert (
        json.loads((tmp_path / "run" / "manifest.json").read_text())["monitor"][-1][PREFIX + "r2"]
        == logged[-1][PREFIX + "r2"]
    )
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if PREFIX + "h_star" in m] == [2, 3, 4]


# --------------------------------------------------------------------------------------------------
# adaptive re-grounding


@pytest.mark.parametrize("kind", ["line", "walk"])
def test_auto_reground_jumps_only_when_linear(kind):
    model, _ = make_pico_model()
    rg = ReGroundingCallback(4, "auto", max_n=8)
    before = {}

    class Spy:
        def on_train_begin(self, *a, **k):
            pass

        def on_step_end(self, args, state, control, model=None, **k):
            before[state.global_step] = {n: t.clone() for n, t in local_params(model)}

    _drive(model, 24, _mover(model, kind), [Spy(), rg])
    ns = [h["n"] for h in rg.history]
    assert len(ns) == 6  # one decision per 4-step segment
    if kind == "line":
        assert rg.jumps >= 3 and max(ns) == 8 and rg.extrapolated_steps == sum(ns)
        assert [r[0] for r in rg.monitor.records][:3] == [0, 4, 8]  # records in effective steps
    else:
        assert ns == [0] * 6 and rg.jumps == 0 and rg.extrapolated_steps == 0
        after = dict(local_params(model))
        assert all(torch.equal(after[n], before[24][n]) for n in after)  # never moved the weights
    st = rg.state()
    assert st["args"]["n"] == "auto" and st["args"]["max_n"] == 8


def test_bad_monitor_settings():
    from rlvr_linear.errors import RlvrLinearError

    with pytest.raises(RlvrLinearError, match="every >= 1 and window >= 3, got 0 and 12"):
        LinearityMonitor(every=0)
    with pytest.raises(RlvrLinearError, match="unknown predictor 'cubic'"):
        LinearityMonitor(predictors=["cubic"])


def test_from_spec_auto():
    rg = ReGroundingCallback.from_spec("10,auto")
    assert rg.auto and rg.m == 10 and rg.max_n == 50 and rg.monitor.every == 10
    assert not ReGroundingCallback.from_spec("10,5", monitor=None, max_n=3).auto


# --------------------------------------------------------------------------------------------------
# 2 processes (gloo), DDP: the ranks log the same numbers (sharded engines: tests/test_distributed_engines.py)


def _ddp_monitor(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, tok = make_pico_model(seed=0)
    model.train()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    mon = LinearityMonitor(every=1)
    ids = torch.tensor([tok("1+2=3 and 4+5=9", add_special_tokens=False)["input_ids"]] * 2)
    state = SimpleNamespace(global_step=0, log_history=[])
    mon.on_train_begin(None, state, None, model=wrapped)
    for _ in range(5):
        wrapped(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        state.global_step += 1
        mon.on_step_end(None, state, None, model=wrapped)
    out = {"ddp": mon.history, "ddp_sharded": mon._sharded}
    Path(out_dir, f"r{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ranks_log_the_same_numbers(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_monitor, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):  # wall time differs; every other number must be identical
        for h in r["ddp"]:
            h.pop(PREFIX + "seconds")
    assert r0["ddp_sharded"] is False and r1["ddp_sharded"] is False
    assert r0["ddp"] == r1["ddp"] and len(r0["ddp"]) == 4 and all(math.isfinite(r0["ddp"][-1][k]) for k in KEYS)
