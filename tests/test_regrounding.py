"""Periodic re-grounding: the in-process callback (jump formula, optimizer reset, N=0, norms, counters, DDP) and
the out-of-process driver (resume after a kill, plan mismatch, dry run, checkpoint layouts, real extrapolation)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.extrapolation.params import is_norm_param
from rlvr_linear.models.testing import make_pico_dir, make_pico_model, make_trajectory
from rlvr_linear.training.distributed import local_params, ranks_agree
from rlvr_linear.training.reground_driver import STATE_FILE, SUMMARY_FILE, find_final_checkpoint, reground_driver
from rlvr_linear.training.regrounding import ReGroundingCallback, jump_, parse_spec, reset_optimizer_state

# --------------------------------------------------------------------------------------------------
# jump_ and small helpers


def test_jump_formula_and_norm_policy():
    w = {"layer.weight": torch.tensor([1.0, 2.0, 3.0]), "input_layernorm.weight": torch.tensor([1.0, 1.0])}
    a = {"layer.weight": torch.tensor([0.0, 1.0, 5.0]), "input_layernorm.weight": torch.tensor([0.0, 0.0])}
    named = list(w.items())
    done = jump_(named, a, alpha=3.0, norms="copy")
    assert done == ["layer.weight"]
    assert torch.equal(w["layer.weight"], torch.tensor([3.0, 4.0, -1.0]))  # a + 3 (w - a)
    assert torch.equal(w["input_layernorm.weight"], torch.tensor([1.0, 1.0]))
    done = jump_([("input_layernorm.weight", w["input_layernorm.weight"])], a, alpha=2.0, norms="extrapolate")
    assert done == ["input_layernorm.weight"]
    assert torch.equal(w["input_layernorm.weight"], torch.tensor([2.0, 2.0]))


def test_jump_bf16_computes_in_fp32_and_casts_back():
    w = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    a = {"x": torch.tensor([0.5, 1.5])}
    jump_([("x", w)], a, alpha=2.0)
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, torch.tensor([1.5, 2.5], dtype=torch.bfloat16))


def test_jump_errors():
    with pytest.raises(RlvrLinearError, match="no anchor for parameter 'x'"):
        jump_([("x", torch.zeros(2))], {}, alpha=2.0)
    with pytest.raises(RlvrLinearError, match=r"anchor of 'x' has shape \(3,\), the weight \(2,\)"):
        jump_([("x", torch.zeros(2))], {"x": torch.zeros(3)}, alpha=2.0)
    with pytest.raises(RlvrLinearError, match="norms must be one of copy, extrapolate, got 'none'"):
        jump_([], {}, alpha=2.0, norms="none")


def test_is_norm_param():
    for n in ["model.norm.weight", "model.layers.0.input_layernorm.weight", "transformer.ln_f.weight", "RMSNorm.w"]:
        assert is_norm_param(n)
    for n in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"]:
        assert not is_norm_param(n)


def test_parse_spec_and_from_spec():
    assert parse_spec("100,100") == (100, 100)
    assert parse_spec(" 20, 0") == (20, 0)
    cb = ReGroundingCallback.from_spec("20,100", optimizer_state="reset")
    assert (cb.m, cb.n, cb.alpha, cb.optimizer_state) == (20, 100, 6.0, "reset")
    for bad, msg in [
        ("100", "must be M,N"),
        ("a,b", "must be M,N"),
        ("1,2,3", "must be M,N"),
        ("0,5", "M \\(gradient steps per cycle\\) must be >= 1, got 0"),
        ("5,-1", "N \\(extrapolated steps per cycle\\) must be >= 0, got -1"),
    ]:
        with pytest.raises(RlvrLinearError, match=msg):
            parse_spec(bad)
    with pytest.raises(RlvrLinearError, match="optimizer_state must be one of keep, reset, got 'zero'"):
        ReGroundingCallback(2, 2, optimizer_state="zero")


def test_reset_optimizer_state_deepspeed_like_zeroes_in_place():
    p = torch.nn.Parameter(torch.ones(3))
    inner = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    inner.step()
    refreshed = []
    ds = SimpleNamespace(optimizer=inner, refresh_fp32_params=lambda: refreshed.append(1))
    wrapper = SimpleNamespace(optimizer=ds)  # accelerate-style wrapper around the DeepSpeed optimizer
    exp_avg = inner.state[p]["exp_avg"]
    reset_optimizer_state(wrapper)
    assert inner.state[p]["exp_avg"] is exp_avg and torch.count_nonzero(exp_avg) == 0
    assert torch.count_nonzero(inner.state[p]["exp_avg_sq"]) == 0 and float(inner.state[p]["step"]) == 0.0


def test_partial_segment_after_resume_uses_its_own_alpha():
    """Resumed at step 3 with M=4: the first jump (step 4) covers g=1 step and uses alpha=(1+N)/1."""
    model = torch.nn.Linear(2, 1, bias=False)
    cb = ReGroundingCallback(4, 2)
    st = SimpleNamespace(global_step=3, log_history=[])
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    cb.on_train_begin(None, st, None, model=model)
    with torch.no_grad():
        model.weight.add_(1.0)
    st.global_step = 4
    cb.on_step_end(None, st, None, model=model, optimizer=None)
    assert torch.equal(model.weight, torch.tensor([[4.0, 4.0]]))  # 1 + 3 * (2 - 1)
    assert cb.history[0]["alpha"] == 3.0 and cb.counters() == {
        "grad_steps": 4,
        "extrapolated_steps": 2,
        "effective_steps": 6,
        "jumps": 1,
    }


# --------------------------------------------------------------------------------------------------
# The callback inside a real transformers.Trainer


class _Recorder:
    """A TrainerCallback recording fp32 copies of the trainable weights at on_train_begin and on_step_end."""

    def __new__(cls, tag: str, store: dict):
        from transformers import TrainerCallback

        class Rec(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                store[(tag, 0)] = {n: t.detach().clone() for n, t in local_params(model)}

            def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
                store[(tag, state.global_step)] = {n: t.detach().clone() for n, t in local_params(model)}
                opt_state = optimizer.optimizer.state if hasattr(optimizer, "optimizer") else optimizer.state
                store[("opt", tag, state.global_step)] = len(opt_state)

        return Rec()


class _TinyLM(torch.utils.data.Dataset):
    def __init__(self, tok, n=16):
        texts = [f"{i}+{i + 1}={2 * i + 1}" for i in range(n)]
        self.rows = []
        for t in texts:
            ids = tok(t.ljust(10), add_special_tokens=False)["input_ids"][:10]
            self.rows.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(ids)})

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _train(tmp_path, callbacks, steps=4, seed=0, resume=None, **kw):
    from transformers import Trainer, TrainingArguments

    model, tok = make_pico_model(seed=seed)
    model.train()
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer_out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy=kw.pop("save_strategy", "no"),
        seed=seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **kw,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_TinyLM(tok), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _ref_jump(anchor: dict, w: dict, alpha: float, norms: str) -> dict:
    out = {}
    for k in w:
        if norms == "copy" and is_norm_param(k):
            out[k] = w[k]
        else:
            out[k] = anchor[k] + alpha * (w[k] - anchor[k])
    return out


@pytest.mark.parametrize("norms", ["copy", "extrapolate"])
def test_callback_jump_equals_formula(tmp_path, norms):
    store: dict = {}
    cb = ReGroundingCallback(2, 3, norms=norms)
    _train(tmp_path, [_Recorder("pre", store), cb, _Recorder("post", store)], steps=5)
    alpha = 2.5
    names = list(store[("pre", 0)])
    assert any(is_norm_param(n) for n in names) and any(not is_norm_param(n) for n in names)
    anchor = store[("post", 0)]
    for step in (2, 4):
        ref = _ref_jump(anchor, store[("pre", step)], alpha, norms)
        post = store[("post", step)]
        for n in names:
            assert torch.equal(post[n], ref[n]), (step, n)  # same fp32 arithmetic: bit-exact
            ref64 = anchor[n].double() + alpha * (store[("pre", step)][n].double() - anchor[n].double())
            if norms == "extrapolate" or not is_norm_param(n):
                assert torch.allclose(post[n].double(), ref64, rtol=0, atol=1e-6)
                assert not torch.equal(post[n], store[("pre", step)][n])  # it actually moved
            else:
                assert torch.equal(post[n], store[("pre", step)][n])  # norms keep the trained value
        anchor = post  # the jumped weights are the next anchor
    for step in (1, 3, 5):  # no jump between multiples of M
        for n in names:
            assert torch.equal(store[("post", step)][n], store[("pre", step)][n])


def test_callback_counters_and_logs(tmp_path):
    cb = ReGroundingCallback(2, 3)
    trainer = _train(tmp_path, [cb], steps=5)
    assert cb.counters() == {"grad_steps": 5, "extrapolated_steps": 6, "effective_steps": 11, "jumps": 2}
    assert [(h["grad_step"], h["effective_step"], h["alpha"]) for h in cb.history] == [(2, 5, 2.5), (4, 10, 2.5)]
    assert all(h["jump_seconds"] >= 0 for h in cb.history)
    hist = [e for e in trainer.state.log_history if "loss" in e]
    logged = [(e["step"], e["reground/effective_step"], e["reground/jumps"]) for e in hist]
    assert logged == [(1, 1, 0), (2, 5, 1), (3, 6, 1), (4, 10, 2), (5, 11, 2)]
    st = cb.state()
    assert st["args"] == {"m": 2, "n": 3, "norms": "copy", "optimizer_state": "keep", "anchor_device": "cpu"}
    assert st["attributes"]["jumps"] == 2 and st["attributes"]["extrapolated_steps"] == 6


@pytest.mark.parametrize("policy", ["keep", "reset"])
def test_callback_optimizer_state(tmp_path, policy):
    store: dict = {}
    cb = ReGroundingCallback(2, 2, optimizer_state=policy)
    _train(tmp_path, [cb, _Recorder("post", store)], steps=3)
    n_params = len(store[("post", 0)])
    assert store[("opt", "post", 1)] == n_params  # Adam state exists after an ordinary step
    assert store[("opt", "post", 2)] == (0 if policy == "reset" else n_params)  # jump step
    assert store[("opt", "post", 3)] == n_params  # re-created lazily at the next step


def test_callback_n0_is_bit_identical(tmp_path):
    plain = _train(tmp_path / "a", [], steps=4)
    cb = ReGroundingCallback(2, 0, optimizer_state="reset")
    with_cb = _train(tmp_path / "b", [cb], steps=4)
    pa, pb = dict(plain.model.named_parameters()), dict(with_cb.model.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert cb.anchors == {} and cb.jumps == 0 and cb.effective_steps == cb.grad_steps == 4
    # and jumping does change the run
    jumped = _train(tmp_path / "c", [ReGroundingCallback(2, 1)], steps=4)
    emb = "model.embed_tokens.weight"
    assert not torch.equal(pa[emb], dict(jumped.model.named_parameters())[emb])


def test_callback_counters_survive_trainer_resume(tmp_path):
    """Counters are saved in trainer_state.json; resumed at step 3 with M=2, the partial jump at 4 uses g=1."""
    _train(tmp_path, [ReGroundingCallback(2, 1)], steps=3, save_strategy="steps", save_steps=3)
    ckpt = tmp_path / "trainer_out" / "checkpoint-3"
    saved = json.loads((ckpt / "trainer_state.json").read_text())["stateful_callbacks"]["ReGroundingCallback"]
    assert saved["attributes"]["jumps"] == 1 and saved["args"]["m"] == 2
    trainer = _train(
        tmp_path, [ReGroundingCallback(2, 1)], steps=4, resume=str(ckpt), restore_callback_states_from_checkpoint=True
    )
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ReGroundingCallback))  # a new instance
    assert cb.counters() == {"grad_steps": 4, "extrapolated_steps": 2, "effective_steps": 6, "jumps": 2}
    assert [(h["grad_step"], h["effective_step"], h["alpha"]) for h in cb.history] == [(2, 3, 1.5), (4, 6, 2.0)]


# --------------------------------------------------------------------------------------------------
# DDP: 2 processes (gloo) agree with the single-process jump


def _ddp_run(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    distributed = world > 1
    if distributed:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model, tok = make_pico_model(seed=0)
    model.train()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(wrapped.parameters(), lr=1e-2)
    cb = ReGroundingCallback(3, 2, optimizer_state="reset")
    state = SimpleNamespace(global_step=0, log_history=[])
    cb.on_train_begin(None, state, None, model=wrapped)
    ids = torch.tensor([tok("1+2=3 and 4+5=9", add_special_tokens=False)["input_ids"]] * 2)
    for _ in range(4):
        loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        state.global_step += 1
        cb.on_step_end(None, state, None, model=wrapped, optimizer=opt)
    agree = ranks_agree(wrapped)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"sd": sd, "agree": agree, "jumps": cb.jumps}, Path(out_dir) / f"w{world}_r{rank}.pt")
    if distributed:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _ddp_run(0, 1, port, str(tmp_path))
    mp.spawn(_ddp_run, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "w1_r0.pt", weights_only=True)
    r0 = torch.load(tmp_path / "w2_r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "w2_r1.pt", weights_only=True)
    assert r0["agree"] and r1["agree"] and r0["jumps"] == r1["jumps"] == single["jumps"] == 1
    for k, v in single["sd"].items():
        assert torch.equal(r0["sd"][k], r1["sd"][k]), k  # ranks agree exactly
        assert torch.allclose(r0["sd"][k], v, rtol=0, atol=1e-6), k  # and match the single-process jump


# --------------------------------------------------------------------------------------------------
# The driver

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, shutil, sys
    from pathlib import Path
    from safetensors.numpy import load_file, save_file  # numpy, not torch: a fast start for each cycle

    model, steps, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    cycle = os.environ["REGROUND_CYCLE"]
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({"cycle": int(cycle), "model": model, "steps": steps, "out": str(out)}) + "\\n")
    out.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAKE_FAIL_CYCLE") == cycle:
        (out / "stale.txt").write_text("left behind by a failed attempt")
        sys.exit(3)
    ckpt = out / f"step_{steps:06d}"
    shutil.copytree(model, ckpt)
    sd = load_file(str(Path(model) / "model.safetensors"))
    save_file({k: v + 0.001 * steps for k, v in sd.items()}, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    (out / "manifest.json").write_text(json.dumps({"checkpoints": [{"step": steps, "path": ckpt.name}]}))
    """
)


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    log = tmp_path / "trainer_log.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL_CYCLE", raising=False)
    monkeypatch.delenv("FAKE_FAIL_EXTRAPOLATE", raising=False)
    calls = []

    def fake_extrapolate(base, second, out, *, alpha, norms, metadata, allow_pickle=False):
        if os.environ.get("FAKE_FAIL_EXTRAPOLATE") == str(metadata["reground"]["cycle"]):
            raise RuntimeError("killed while extrapolating")
        calls.append({"base": str(base), "second": str(second), "alpha": alpha, "norms": norms, **metadata["reground"]})
        import shutil

        shutil.copytree(second, out, dirs_exist_ok=True)
        return Path(out)

    monkeypatch.setattr("rlvr_linear.training.reground_driver._extrapolate", fake_extrapolate)
    cmd = f"{sys.executable} {script} {{model}} {{steps}} {{out}}"
    start = make_pico_dir(tmp_path / "start")
    return SimpleNamespace(cmd=cmd, log=log, calls=calls, start=start, work=tmp_path / "work")


def _log_cycles(log: Path) -> list[int]:
    return [json.loads(line)["cycle"] for line in log.read_text().splitlines()] if log.exists() else []


def test_driver_runs_cycles_and_accounts_steps(fake_env):
    summary = reground_driver(fake_env.cmd, fake_env.start, m=4, n=6, cycles=2, workdir=fake_env.work, start_step=10)
    work = fake_env.work.resolve()
    entries = [json.loads(line) for line in fake_env.log.read_text().splitlines()]
    assert [(e["cycle"], e["steps"]) for e in entries] == [(1, 4), (2, 4)]
    assert entries[0]["model"] == str(fake_env.start.resolve())
    assert entries[1]["model"] == str(work / "cycle_01" / "extrapolated")
    assert entries[1]["out"] == str(work / "cycle_02" / "train")
    assert [(c["alpha"], c["norms"], c["second"]) for c in fake_env.calls] == [
        (2.5, "copy", str(work / "cycle_01" / "train" / "step_000004")),
        (2.5, "copy", str(work / "cycle_02" / "train" / "step_000004")),
    ]
    assert (summary["gradient_steps"], summary["extrapolated_steps"], summary["effective_step"]) == (8, 12, 30)
    assert [(h["gradient_steps"], h["effective_step"]) for h in summary["history"]] == [(4, 20), (8, 30)]
    assert summary["final_model"] == str(work / "cycle_02" / "extrapolated")
    assert json.loads((work / SUMMARY_FILE).read_text())["effective_step"] == 30
    state = json.loads((work / STATE_FILE).read_text())
    assert state["completed_cycles"] == 2 and state["gradient_steps"] == 8 and state["effective_step"] == 30
    assert [c["phase"] for c in state["cycles"]] == ["extrapolated", "extrapolated"]


def test_driver_resumes_after_failed_trainer(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_CYCLE", "2")
    with pytest.raises(RlvrLinearError, match="re-grounding cycle 2/3: the trainer command exited with status 3: "):
        reground_driver(fake_env.cmd, fake_env.start, 2, 2, 3, fake_env.work)
    state = json.loads((fake_env.work / STATE_FILE).read_text())
    assert [c["phase"] for c in state["cycles"]] == ["extrapolated"] and state["completed_cycles"] == 1
    monkeypatch.delenv("FAKE_FAIL_CYCLE")
    summary = reground_driver(fake_env.cmd, fake_env.start, 2, 2, 3, fake_env.work)
    assert _log_cycles(fake_env.log) == [1, 2, 2, 3]  # cycle 1 not rerun, cycle 2 rerun from a fresh {out}
    assert not (fake_env.work / "cycle_02" / "train" / "stale.txt").exists()
    assert [c["cycle"] for c in fake_env.calls] == [1, 2, 3]
    assert summary["cycles"] == 3 and summary["gradient_steps"] == 6 and summary["effective_step"] == 12


def test_driver_resumes_after_kill_between_phases(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_EXTRAPOLATE", "2")
    with pytest.raises(RuntimeError, match="killed while extrapolating"):
        reground_driver(fake_env.cmd, fake_env.start, 2, 2, 3, fake_env.work)
    state = json.loads((fake_env.work / STATE_FILE).read_text())
    assert [c["phase"] for c in state["cycles"]] == ["extrapolated", "trained"]
    monkeypatch.delenv("FAKE_FAIL_EXTRAPOLATE")
    reground_driver(fake_env.cmd, fake_env.start, 2, 2, 3, fake_env.work)
    assert _log_cycles(fake_env.log) == [1, 2, 3]  # the trained cycle 2 is not trained again
    assert [c["cycle"] for c in fake_env.calls] == [1, 2, 3]
    # extending the number of cycles continues from the last one
    summary = reground_driver(fake_env.cmd, fake_env.start, 2, 2, 4, fake_env.work)
    assert _log_cycles(fake_env.log) == [1, 2, 3, 4] and summary["effective_step"] == 16


def test_driver_plan_mismatch_and_restart(fake_env):
    reground_driver(fake_env.cmd, fake_env.start, 2, 2, 1, fake_env.work)
    with pytest.raises(RlvrLinearError, match=r"the saved re-grounding plan differs \(n: saved 2, now 3\); "):
        reground_driver(fake_env.cmd, fake_env.start, 2, 3, 1, fake_env.work)
    with pytest.raises(RlvrLinearError, match="plan differs \\(cmd: saved"):
        reground_driver(fake_env.cmd + " ", fake_env.start, 2, 2, 1, fake_env.work)
    summary = reground_driver(fake_env.cmd, fake_env.start, 2, 3, 1, fake_env.work, restart=True)
    assert _log_cycles(fake_env.log) == [1, 1] and summary["effective_step"] == 5 and fake_env.calls[-1]["alpha"] == 2.5


def test_driver_dry_run_runs_nothing(fake_env, capsys):
    res = reground_driver(fake_env.cmd, fake_env.start, 20, 100, 2, fake_env.work, dry_run=True, start_step=5)
    out = capsys.readouterr().out
    assert not fake_env.work.exists() and not fake_env.log.exists() and fake_env.calls == []
    work = fake_env.work.resolve()
    assert "re-grounding plan: M=20 N=100 alpha=6 cycles=2" in out
    assert "cycle 1/2 [will run]: gradient steps 20, effective step 125" in out
    assert "cycle 2/2 [will run]: gradient steps 40, effective step 245" in out
    assert f"$ {sys.executable} " in out
    assert f"{work / 'cycle_01' / 'extrapolated'} 20 {work / 'cycle_02' / 'train'}" in out
    assert [p["effective_step"] for p in res["plan"]] == [125, 245]


def test_cli_dry_run_and_errors(fake_env, capsys):
    from rlvr_linear.cli import main

    def args(cmd, *extra):
        return ["reground", "--cmd", cmd, "--model", str(fake_env.start), "--m", "3", "--n", "3", *extra]

    rc = main(args(fake_env.cmd, "--cycles", "2", "-w", str(fake_env.work), "--dry-run", "--norms", "extrapolate"))
    out = capsys.readouterr().out
    assert rc == 0 and "alpha=2 cycles=2" in out and "effective step 12" in out and not fake_env.work.exists()
    rc = main(args("true {model}", "--cycles", "1", "-w", str(fake_env.work)))
    assert rc == 2 and "error: the trainer command must contain {out}" in capsys.readouterr().err
    rc = main(args(f"{sys.executable} -c 'import sys; sys.exit(7)' {{model}} {{steps}} {{out}}", "--cycles", "1",
                   "-w", str(fake_env.work)))  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "error: re-grounding cycle 1/1: the trainer command exited with status 7: " in err, err
    assert "'import sys; sys.exit(7)'" in err  # the command as it ran, quoted to paste into a shell
    rc = main(args(fake_env.cmd, "--cycles", "1", "-w", str(fake_env.work / "x"), "--norms", "extrapolate"))
    assert rc == 0 and fake_env.calls[-1]["norms"] == "extrapolate"
    assert "re-grounding done: 1 cycles, 3 gradient steps, effective step 6" in capsys.readouterr().out


def test_find_final_checkpoint_layouts(tmp_path):
    trl = tmp_path / "trl"
    for s in (2, 4):
        make_pico_dir(trl / f"checkpoint-{s}")
    assert find_final_checkpoint(trl, 4) == (trl / "checkpoint-4", 4)
    verl = tmp_path / "verl"
    make_pico_dir(verl / "global_step_3" / "actor" / "huggingface")
    assert find_final_checkpoint(verl, 3) == (verl / "global_step_3" / "actor" / "huggingface", 3)
    ours = make_trajectory(tmp_path / "ours", [0, 5], lambda n, w, s, i: w)
    assert find_final_checkpoint(ours, 5) == (ours / "step_000005", 5)
    flat = make_pico_dir(tmp_path / "flat")
    make_pico_dir(flat / "checkpoint-2")  # an intermediate checkpoint and the final model in {out} itself
    assert find_final_checkpoint(flat, 4) == (flat, None)
    with pytest.raises(RlvrLinearError, match="the last checkpoint is step 4 but 6 steps were asked for"):
        find_final_checkpoint(trl, 6)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlvrLinearError, match="empty: no checkpoint found"):
        find_final_checkpoint(tmp_path / "empty", 1)


def test_driver_with_real_weight_extrapolation(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log.jsonl"))
    monkeypatch.delenv("FAKE_FAIL_CYCLE", raising=False)
    start = make_pico_dir(tmp_path / "start")
    m, n = 4, 2
    summary = reground_driver(f"{sys.executable} {script} {{model}} {{steps}} {{out}}", start, m, n, 2, tmp_path / "w")
    w0 = load_file(str(start / "model.safetensors"))
    final = load_file(str(Path(summary["final_model"]) / "model.safetensors"))
    c, alpha = 0.001 * m, (m + n) / m  # the fake trainer adds c to every tensor per cycle
    for k, v in w0.items():
        expect = v + (2 * c if is_norm_param(k) else 2 * alpha * c)
        assert torch.allclose(final[k].float(), expect, rtol=0, atol=1e-5), k
    meta = json.loads((Path(summary["final_model"]) / "extrapolation.json").read_text())
    assert (meta["alpha"], meta["base_step"], meta["second_step"], meta["target_step"]) == (1.5, 6, 10, 12)
    assert meta["metadata"]["reground"]["cycle"] == 2
