"""Fault injection: every hostile input or crash gives one clear line (exit 2) or the right behaviour.

Each test reproduces one hostile input or crash (the README's Reliability table) on a pico model and asserts the
message, the exit status and what is left on disk. The full-filesystem tests mount a small tmpfs (root only; skipped
otherwise, with the reason); the kill -9 tests run ``train``, ``extrapolate`` and the re-grounding driver as real
processes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_checks import cli_err as _cli
from cli_checks import linear_drift as _linear
from cli_checks import one_error_line as _one_error_line
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import get_task
from rlvr_linear.extrapolation.weights import extrapolate_two_point
from rlvr_linear.io import atomic_dir, remove_stale_temps, write_json
from rlvr_linear.io.checkpoints import TensorReader, discover
from rlvr_linear.io.tokenizer import MARKER, load_tokenizer
from rlvr_linear.io.writer import ShardedWriter, copy_model_files
from rlvr_linear.linearity import PAPER_SEED, analyze_weights, paper_sample_size, sample_indices, tensor_seed
from rlvr_linear.models.testing import make_pico_dir, make_trajectory
from rlvr_linear.runtime import threads

ROOT = Path(__file__).resolve().parent.parent
TENSOR = "model.layers.0.mlp.up_proj.weight"  # 32 x 16 in the pico model


def _hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie nobody reaped is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.01):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def run3(tmp_path):
    return make_trajectory(tmp_path / "run", [0, 10, 20], _linear)


# --------------------------------------------------------------------------------------------------
# Truncated / empty safetensors


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_truncated_or_empty_single_file_is_named(run3, tmp_path, capsys, how):
    f = run3 / "step_000010" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "lin")
    line = _one_error_line(err)
    assert rc == 2 and str(f) in line and ("truncated" in line or "empty" in line), line
    assert not (tmp_path / "lin").exists()
    rc, err = _cli(
        capsys, "extrapolate", "weights", "--base", run3 / "step_000000", "--second", run3 / "step_000010",
        "--alpha", "1.5", "-o", tmp_path / "x",
    )  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and str(f) in line, line
    assert not (tmp_path / "x").exists() and _hidden(tmp_path) == []


def test_truncated_shard_is_named(run3, tmp_path, capsys):
    d = run3 / "step_000010"
    with TensorReader(d) as r:
        w = ShardedWriter(tmp_path / "sharded", max_shard_bytes=2048)
        for k in r.keys():
            w.add(k, r.get(k))
        files = w.finalize()
    assert len(files) > 2
    copy_model_files(d, tmp_path / "sharded")
    bad = tmp_path / "sharded" / files[1]
    bad.write_bytes(bad.read_bytes()[:100])
    rc, err = _cli(capsys, "analyze", "weights", "0=" + str(run3 / "step_000000"), f"10={tmp_path / 'sharded'}",
                   "20=" + str(run3 / "step_000020"), "-o", tmp_path / "lin")  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and str(bad) in line and "truncated" in line, line
    bad.write_bytes(b"")
    with pytest.raises(RlvrLinearError, match=f"{bad}: empty or truncated safetensors file \\(0 bytes"):
        TensorReader(tmp_path / "sharded")


# --------------------------------------------------------------------------------------------------
# NaN / Inf anywhere


def _poison(run: Path, step: int, value: float) -> int:
    """Put ``value`` into TENSOR at step ``step``, at a flat index the paper sample does not draw."""
    f = run / f"step_{step:06d}" / "model.safetensors"
    sd = load_file(f)
    numel = sd[TENSOR].numel()
    sampled = set(sample_indices(numel, paper_sample_size(numel), tensor_seed(TENSOR, PAPER_SEED)).tolist())
    idx = next(i for i in range(numel) if i not in sampled)
    flat = sd[TENSOR].reshape(-1).clone()
    flat[idx] = value
    sd[TENSOR] = flat.reshape(sd[TENSOR].shape)
    save_file(sd, str(f), metadata={"format": "pt"})
    return idx


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("mode", ["paper", "all"])
def test_nan_or_inf_outside_the_sample_is_found(run3, tmp_path, capsys, value, mode):
    _poison(run3, 10, value)
    # the paper sample alone does not see it (what happened before): the check reads every element
    res = analyze_weights(discover(run3), check_finite=False)
    assert np.isfinite(res.to_json()["r2"]["median"])
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "lin", *(["--all"] if mode == "all" else []))
    line = _one_error_line(err)
    assert rc == 2 and f"checkpoint step 10: tensor '{TENSOR}' contains NaN or Inf values" in line, line
    assert not (tmp_path / "lin").exists()
    if mode == "paper":  # the opt-out: only the sample is checked, and it misses this element
        rc, _ = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "lin", "--no-check-finite")
        assert rc == 0 and (tmp_path / "lin" / "weights.json").exists()


# --------------------------------------------------------------------------------------------------
# Output errors: full filesystem, a path through a file


@pytest.fixture
def full_fs(tmp_path):
    """A 16 KiB tmpfs: too small for any of our outputs (root and a working ``mount`` only)."""
    if os.geteuid() != 0:
        pytest.skip("full-filesystem test needs root to mount a small tmpfs (not root here)")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"full-filesystem test: cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_extrapolate_on_a_full_filesystem(run3, full_fs, capsys):
    rc, err = _cli(
        capsys, "extrapolate", "weights", "--base", run3 / "step_000000", "--second", run3 / "step_000010",
        "--alpha", "1.5", "-o", full_fs / "x",
    )  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and str(full_fs) in line and "No space left on device" in line, line
    assert os.listdir(full_fs) == []  # no partial output, no temporary folder


def test_analyze_on_a_full_filesystem(run3, full_fs, capsys):
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", full_fs / "lin")
    line = _one_error_line(err)
    assert rc == 2 and str(full_fs) in line and "No space left on device" in line, line
    assert os.listdir(full_fs) == []


def test_output_under_a_file_is_one_line(run3, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "afile" / "lin")
    line = _one_error_line(err)
    assert rc == 2 and str(tmp_path / "afile") in line, line


# --------------------------------------------------------------------------------------------------
# The same checkpoint twice


def test_same_folder_under_two_steps_is_refused(run3, tmp_path, capsys):
    a, b = run3 / "step_000000", run3 / "step_000020"
    rc, err = _cli(capsys, "analyze", "weights", f"0={a}", f"10={a}", f"20={b}", "-o", tmp_path / "lin")
    line = _one_error_line(err)
    assert rc == 2 and f"the same checkpoint {a} is given as step 0 and as step 10" in line, line
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    rc, err = _cli(capsys, "analyze", "weights", f"0={a}", f"10={tmp_path / 'link'}", f"20={b}", "-o", tmp_path / "l")
    assert rc == 2 and "given as step 0 and as step 10" in _one_error_line(err)
    assert not (tmp_path / "lin").exists() and not (tmp_path / "l").exists()


def test_extrapolate_base_equal_to_second_is_refused(run3, tmp_path, capsys):
    a = run3 / "step_000010"
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    for second in (a, tmp_path / "link"):
        rc, err = _cli(capsys, "extrapolate", "weights", "--base", a, "--second", second, "--alpha", "1.5",
                       "-o", tmp_path / "x")  # fmt: skip
        line = _one_error_line(err)
        assert rc == 2 and "is given as --base and as --second" in line, line
        assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# Temporary folders, umask, failed train


def test_stale_temp_folders_of_dead_processes_only_are_removed(tmp_path):
    host = socket.gethostname().replace("-", "_")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".out.tmp-{dead.pid}@{host}-abcd1234",
            "dead_old": f".out.old-{dead.pid}@{host}",
            "live": f".out.tmp-{live.pid}@{host}-abcd1234",
            "mine": f".out.tmp-{os.getpid()}@{host}-abcd1234",
            "other_host": f".out.tmp-{dead.pid}@elsewhere-abcd1234",
            "other_name": f".outer.tmp-{dead.pid}@{host}-abcd1234",
        }
        for n in names.values():
            (tmp_path / n).mkdir()
            (tmp_path / n / "shard").write_text("partial")
        removed = remove_stale_temps(tmp_path / "out")
        assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead_old"]])
        left = {names[k] for k in ("live", "mine", "other_host", "other_name")}
        assert set(_hidden(tmp_path)) == left
        with atomic_dir(tmp_path / "out") as tmp:  # a writer cleans up before it starts
            assert tmp.name.startswith(f".out.tmp-{os.getpid()}@")
            (tmp / "f").write_text("ok")
        assert (tmp_path / "out" / "f").read_text() == "ok" and set(_hidden(tmp_path)) == left
        # a JSON writer killed mid-write leaves a hidden file: the next write of that file removes it
        stale_file = tmp_path / f".r.json.tmp-{dead.pid}@{host}-abcd1234"
        stale_file.write_text("{")
        write_json(tmp_path / "r.json", {"a": 1})
        assert not stale_file.exists() and json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
        assert set(_hidden(tmp_path)) == left
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o027])
def test_outputs_follow_the_umask(run3, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = extrapolate_two_point(run3 / "step_000000", run3 / "step_000010", tmp_path / "x", alpha=1.5,
                                    progress=False)  # fmt: skip
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f.txt").write_text("x")
    finally:
        os.umask(old)
    for d in (out, tmp_path / "d"):
        assert d.stat().st_mode & 0o777 == 0o777 & ~mask, (d, oct(d.stat().st_mode))
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, (f, oct(f.stat().st_mode))


def test_failed_train_leaves_no_folder_it_created(tmp_path, capsys):
    (tmp_path / "keep").mkdir()
    for out in (tmp_path / "a" / "b" / "run", tmp_path / "keep" / "run"):
        rc, err = _cli(capsys, "train", "--model", tmp_path / "missing", "--steps", "1", "-o", out)
        line = _one_error_line(err)
        assert rc == 2 and f"{tmp_path / 'missing'}: no such file or directory" in line, line
    assert sorted(os.listdir(tmp_path)) == ["keep"] and os.listdir(tmp_path / "keep") == []


# --------------------------------------------------------------------------------------------------
# JSONL line numbers


def test_jsonl_errors_give_line_numbers(tmp_path):
    f = tmp_path / "bench.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    with pytest.raises(RlvrLinearError, match="bench.jsonl: line 2 lacks a 'problem' or 'answer' field"):
        get_task(str(f))
    f.write_text('\n{"problem": "1+1", "answer": "2"}\n[1, 2]\n')
    with pytest.raises(RlvrLinearError, match="bench.jsonl: line 3 is not a JSON object"):
        get_task(str(f))
    f.write_text('{"problem": "1+1", "answer": "2"}\n\n{"problem": \n')
    with pytest.raises(RlvrLinearError, match="bench.jsonl:3: not valid JSON"):
        get_task(str(f))


# --------------------------------------------------------------------------------------------------
# Threads


def test_thread_policy(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert threads.choose(None, None) == 1
        assert threads.choose(threads.SMALL_MODEL_PARAMS - 1, None) == 1
        assert threads.choose(threads.SMALL_MODEL_PARAMS, None) == threads.usable_cores()
        assert threads.choose(10**9, 3) == 3
        assert threads.choose(10**9, None, env="2") is None  # OMP_NUM_THREADS set: leave torch alone
        assert threads.configure(None) == 1
        assert threads.for_params(10**3) == 1
        assert threads.for_params(10**9) == threads.usable_cores()
        assert threads.configure(2) == 2 and threads.for_params(10**3) == 2  # --threads wins
        # a config's explicit count (train / study threads=1) holds when a large model is loaded later
        assert threads.configure(None) == 1 and threads.use(1) == 1 and threads.for_params(10**9) == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        threads.configure(None)
        assert threads.for_params(10**9) == 1  # OMP_NUM_THREADS wins over the size rule
    finally:
        threads._state["mode"] = None
        torch.set_num_threads(before)


def test_cli_applies_the_thread_policy(tmp_path, capsys, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        rc, _ = _cli(capsys, "analyze", "weights", tmp_path / "nothing", "-o", tmp_path / "o")
        assert rc == 2 and torch.get_num_threads() == 1
        rc, _ = _cli(capsys, "extrapolate", "weights", "--base", "x", "--second", "y", "--alpha", "2", "--threads", "2",
                     "-o", tmp_path / "o")  # fmt: skip
        assert rc == 2 and torch.get_num_threads() == 2
    finally:
        threads._state["mode"] = None
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# kill -9 in the middle, then a clean re-run


def _metrics_steps(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return out


@pytest.mark.slow
def test_kill_train_after_a_checkpoint_then_resume(tmp_path):
    pico = make_pico_dir(tmp_path / "pico")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlvr_linear", "train", "--model", str(pico), "--task", "arithmetic",
           "--steps", "10", "--save-every", "5", "--prompts-per-step", "2", "--samples-per-prompt", "2",
           "--max-new-tokens", "4", "--threads", "1", "-o", str(run)]  # fmt: skip
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill right after step 5's checkpoint, once step 6 was logged
        _wait_for(lambda: 6 in _metrics_steps(run), 300, "step 6 in metrics.jsonl", p)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    manifest = json.loads((run / "manifest.json").read_text())
    last = manifest["checkpoints"][-1]["step"]
    assert last == 5 and max(_metrics_steps(run)) > last  # killed after a checkpoint, with later steps logged
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stdout
    assert _metrics_steps(run) == list(range(1, 11))  # each step once, in order
    manifest = json.loads((run / "manifest.json").read_text())
    assert [c["step"] for c in manifest["checkpoints"]] == [0, 5, 10] and manifest["finished"]
    assert _hidden(run) in ([".rlvr-linear.json"], [".rlvr-linear.json", ".trainer"]), _hidden(run)


@pytest.mark.slow
def test_kill_extrapolate_mid_write_then_rerun(tmp_path):
    a = make_pico_dir(tmp_path / "step_000000", hidden=256, layers=6, seed=0)
    b = make_pico_dir(tmp_path / "step_000100", hidden=256, layers=6, seed=1)
    out = tmp_path / "x150"
    cmd = [sys.executable, "-m", "rlvr_linear", "extrapolate", "weights", "--base", str(a), "--second", str(b),
           "--target-step", "150", "--max-shard-size", "64KB", "-o", str(out)]  # fmt: skip

    def partial():
        tmps = [d for d in tmp_path.glob(".x150.tmp-*") if any(d.glob("shard-*"))]
        return tmps[0] if tmps else None

    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        leftover = _wait_for(partial, 120, "a partial shard in the temporary folder", p, poll=0.002)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    assert leftover.is_dir() and not out.exists()  # killed mid-write: only the hidden temporary folder
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _hidden(tmp_path) == []  # the dead process's temporary folder is gone
    meta = json.loads((out / "extrapolation.json").read_text())
    assert meta["alpha"] == 1.5 and len(meta["weight_files"]) > 1
    with TensorReader(out) as r_out, TensorReader(a) as ra, TensorReader(b) as rb:
        k = "model.layers.0.mlp.up_proj.weight"
        torch.testing.assert_close(r_out.get(k), ra.get(k) + 1.5 * (rb.get(k) - ra.get(k)))


FAKE_TRAINER = r"""
import os, shutil, sys, time
from pathlib import Path
model, steps, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
Path(os.environ["FAKE_PID"]).write_text(str(os.getpid()))
if os.path.exists(os.environ["FAKE_HANG"]):
    time.sleep(120)
    (out / "late_write").parent.mkdir(parents=True, exist_ok=True)
    (out / "late_write").write_text("an orphaned trainer wrote here")
ck = out / f"checkpoint-{steps}"
shutil.copytree(model, ck)
(ck / "rlvr_linear_tokenizer.json").unlink(missing_ok=True)  # as a TRL checkpoint: no char-tokenizer marker
"""


@pytest.mark.slow
def test_kill_reground_driver_ends_its_trainer_then_rerun(tmp_path):
    start = make_pico_dir(tmp_path / "start")
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    hang, pidf, work = tmp_path / "hang", tmp_path / "trainer.pid", tmp_path / "work"
    hang.write_text("1")
    env = {**_env(), "FAKE_PID": str(pidf), "FAKE_HANG": str(hang)}
    trainer_cmd = f"{sys.executable} {script} {{model}} {{steps}} {{out}}"
    cmd = [sys.executable, "-m", "rlvr_linear", "reground", "--model", str(start), "--m", "2", "--n", "2",
           "--cycles", "2", "-w", str(work), "--cmd", trainer_cmd]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: pidf.exists() and pidf.read_text().strip(), 120, "the trainer to start", p)
        trainer = int(pidf.read_text())
        assert not _is_dead(trainer)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    _wait_for(lambda: _is_dead(trainer), 15, "the orphaned trainer to end")
    hang.unlink()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((work / "reground_summary.json").read_text())
    assert summary["cycles"] == 2 and summary["effective_step"] == 8
    assert not list(work.rglob("late_write"))
    tok_files = sorted(f.name for f in start.iterdir() if f.name.startswith("tokenizer") or f.name == MARKER)
    for k in (1, 2):
        ext = work / f"cycle_{k:02d}" / "extrapolated"
        for name in tok_files:  # the char tokenizer exactly as our loader needs it
            assert (ext / name).read_bytes() == (start / name).read_bytes(), name
        tok = load_tokenizer(ext)
        assert (
            tok("1 2", add_special_tokens=False)["input_ids"]
            == load_tokenizer(start)("1 2", add_special_tokens=False)["input_ids"]
        )
        assert len(tok("1 2", add_special_tokens=False)["input_ids"]) == 3


@pytest.mark.slow
def test_two_processes_benchmark_smoke(tmp_path):
    pico = make_pico_dir(tmp_path / "pico")
    out = tmp_path / "two.json"
    extra = f"--model {pico} --task arithmetic --prompts-per-step 2 --samples-per-prompt 2 --max-new-tokens 4"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "two_processes.py"), "--steps", "1", "--extra", extra,
                        "-o", str(out)], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["alone_s"] > 0 and len(res["together_s"]) == 2
    assert res["ratio"] == pytest.approx(max(res["together_s"]) / res["alone_s"], rel=0.01)
    assert "ratio (slower / alone)" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_terminated_or_interrupted_driver_ends_its_trainer(tmp_path, sig):
    start = make_pico_dir(tmp_path / "start")
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    hang, pidf = tmp_path / "hang", tmp_path / "trainer.pid"
    hang.write_text("1")
    env = {**_env(), "FAKE_PID": str(pidf), "FAKE_HANG": str(hang)}
    trainer_cmd = f"{sys.executable} {script} {{model}} {{steps}} {{out}}"
    cmd = [sys.executable, "-m", "rlvr_linear", "reground", "--model", str(start), "--m", "2", "--n", "2",
           "--cycles", "1", "-w", str(tmp_path / "work"), "--cmd", trainer_cmd]  # fmt: skip
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: pidf.exists() and pidf.read_text().strip(), 120, "the trainer to start", p)
        trainer = int(pidf.read_text())
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert _is_dead(trainer)
    if sig == signal.SIGINT:
        assert p.returncode == 130 and err.rstrip().endswith("interrupted"), err[-500:]
    else:
        assert p.returncode == -signal.SIGTERM
