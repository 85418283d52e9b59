"""Output folders never lose a user's data: one writer per output (a lock), ``--overwrite`` replaces only our own
outputs, and a failed command leaves no folder it created.

The lock tests run real processes (two ``train`` on one ``-o``; a lock holder killed with SIGKILL) and a property
test of random interleavings of two writers; the ``--overwrite`` tests try each way of losing data through the CLI
and check that the data is intact; the leftover tests fail a command on a full filesystem (a small tmpfs, root only)
and with a trainer command that exits 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_checks import cli_err as _cli
from cli_checks import linear_drift as _linear
from cli_checks import one_error_line as _error_line
from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.atomic import atomic_dir
from rlvr_linear.io.lock import lock_path, locked
from rlvr_linear.io.outputs import MARKER
from rlvr_linear.models.testing import make_pico_dir, make_trajectory

TRAIN = ["--task", "arithmetic", "--steps", "30", "--save-every", "10", "--prompts-per-step", "2",
         "--samples-per-prompt", "2", "--max-new-tokens", "4", "--threads", "1"]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` with its bytes (to prove that nothing was touched)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def run1(tmp_path):
    return make_trajectory(tmp_path / "run1", [0, 10, 20], _linear)


# --------------------------------------------------------------------------------------------------
# One writer per output


#: a train process that imports everything first, then waits for GO to exist before it runs the command line
_READY_TRAIN = """
import os, sys, time
import trl  # noqa: F401  (the slow imports, before the race)
from rlvr_linear.cli import main
import rlvr_linear.training.grpo  # noqa: F401
open(sys.argv[1], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


def _metrics_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_train_processes_on_one_run_directory(tmp_path):
    pico = make_pico_dir(tmp_path / "pico")
    run, go = tmp_path / "run", tmp_path / "go"
    procs = []
    try:
        for seed in (0, 1):
            ready = tmp_path / f"ready{seed}"
            argv = ["train", "--model", str(pico), *TRAIN, "--seed", str(seed), "-o", str(run)]
            cmd = [sys.executable, "-c", _READY_TRAIN, str(ready), str(go), *argv]
            procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        _wait_for(lambda: all((tmp_path / f"ready{s}").exists() for s in (0, 1)), 300, "both processes to import")
        go.write_text("")  # both start their run at the same moment
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    rcs = [p.returncode for p in procs]
    assert sorted(rcs) == [0, 2], (rcs, [e[-1500:] for _, e in outs])
    won, lost = (0, 1) if rcs[0] == 0 else (1, 0)
    line = _error_line(outs[lost][1])
    assert line == f"error: {run} is being written by another rlvr-linear process (pid {procs[won].pid})", line
    assert _metrics_steps(run) == list(range(1, 31))  # each step once: the winner's
    assert f"seed: {won}\n" in (run / "config.yaml").read_text()
    assert json.loads((run / "manifest.json").read_text())["finished"]
    assert not lock_path(run).exists()  # released and removed


#: holds the lock of argv[1] (through the same code the CLI uses), says so, then sleeps until killed
_HOLDER = """
import sys, time
from rlvr_linear.io.lock import locked
with locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_extrapolate_refused_while_another_process_writes_the_output(run1, tmp_path, capsys):
    out = tmp_path / "x"
    args = ["extrapolate", "weights", "--base", run1 / "step_000000", "--second", run1 / "step_000010",
            "--alpha", "1.5", "-o", out]  # fmt: skip
    holder = _hold(out)
    try:
        rc, err = _cli(capsys, *args)
        assert rc == 2 and _error_line(err) == f"error: {out} is being written by another rlvr-linear process " \
            f"(pid {holder.pid})"  # fmt: skip
        assert "wrote" not in capsys.readouterr().out and not out.exists()
        rc, err = _cli(capsys, *args, "--overwrite")  # --overwrite does not take a folder from its writer either
        assert rc == 2 and "is being written by another rlvr-linear process" in _error_line(err)
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves no stale lock: the next writer proceeds
        holder.wait()
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads((out / "extrapolation.json").read_text())["alpha"] == 1.5
    assert not lock_path(out).exists()


def test_every_folder_writer_takes_the_lock(run1, tmp_path, capsys):
    """analyze -o, eval -o, train -o and reground -w are refused while another process writes their output."""
    pico = make_pico_dir(tmp_path / "pico")
    cases = {
        "lin": ["analyze", "weights", run1],
        "ev": ["eval", pico, "--n-problems", "2", "-k", "0"],
        "run": ["train", "--model", pico, *TRAIN],
    }
    for name, args in cases.items():
        out = tmp_path / name
        holder = _hold(out)
        try:
            rc, err = _cli(capsys, *args, "-o", out)
        finally:
            holder.kill()
            holder.wait()
        assert rc == 2 and f"{out} is being written by another rlvr-linear process (pid {holder.pid})" in err, err
        assert not out.exists(), name
    work = tmp_path / "work"
    holder = _hold(work)
    try:
        rc, err = _cli(capsys, "reground", "--model", pico, "--m", "1", "--n", "1", "--cycles", "1", "-w", work,
                       "--cmd", "false {model} {steps} {out}")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2 and f"{work} is being written by another rlvr-linear process" in _error_line(err)


_WRITERS = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),  # which writer
        st.floats(0, 0.004),  # sleep before trying
        st.integers(1, 4),  # chunks written while holding the lock
        st.booleans(),  # wait for the lock (True) or be refused at once
    ),
    min_size=2,
    max_size=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=_WRITERS)
def test_two_writers_never_hold_the_lock_together(plan):
    """Two writers (threads, each with its own open file: flock excludes them as it does two processes) try to lock,
    write and unlock in random orders, sleeps and blocking modes: never both hold it, and the output is always one
    writer's whole content."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out.txt"
        state = {"holders": 0, "max": 0, "written": [], "refused": 0, "bad": []}
        guard = threading.Lock()

        def writer(w: int) -> None:
            for i, (who, delay, chunks, wait) in enumerate(plan):
                if who != w:
                    continue
                time.sleep(delay)
                content = f"writer {w} attempt {i}|" * (50 * chunks)
                try:
                    with locked(out, wait=wait):
                        with guard:
                            state["holders"] += 1
                            state["max"] = max(state["max"], state["holders"])
                        with open(out, "w") as f:
                            step = len(content) // chunks + 1
                            for k in range(0, len(content), step):
                                f.write(content[k : k + step])
                                f.flush()
                                time.sleep(0.0005)
                        if out.read_text() != content:
                            state["bad"].append(i)
                        with guard:
                            state["holders"] -= 1
                            state["written"].append(content)
                except RlvrLinearError as e:
                    assert not wait and re.fullmatch(
                        rf"{re.escape(str(out))} is being written by another rlvr-linear process \(pid {os.getpid()}\)",
                        str(e),
                    ), str(e)
                    with guard:
                        state["refused"] += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert state["max"] <= 1 and state["bad"] == []
        assert len(state["written"]) + state["refused"] == len(plan)
        if state["written"]:
            assert out.read_text() in state["written"]  # whole, one writer's
        assert not lock_path(out).exists()


def test_nested_writers_of_one_command_do_not_block_themselves(tmp_path):
    run = tmp_path / "run"
    with locked(run):
        with locked(run):  # the same lock again, same thread
            pass
        with atomic_dir(run / "step_000010", kind="checkpoint") as tmp:  # train saving a checkpoint in its run
            (tmp / "w").write_text("1")
        with atomic_dir(run / "step_000010", overwrite=True, kind="checkpoint") as tmp:
            (tmp / "w").write_text("2")
    assert (run / "step_000010" / "w").read_text() == "2" and not lock_path(run).exists()


# --------------------------------------------------------------------------------------------------
# --overwrite replaces only what rlvr-linear wrote, never an input


def test_analyze_overwrite_never_deletes_its_input(run1, tmp_path, capsys):
    before = _snapshot(run1)
    rc, err = _cli(capsys, "analyze", "weights", run1, "-o", run1, "--overwrite")
    assert rc == 2 and _error_line(err) == f"error: {run1} is an input of this command; refusing to --overwrite it"
    assert _snapshot(run1) == before


def test_analyze_overwrite_never_deletes_a_folder_holding_its_input(tmp_path, capsys):
    par = tmp_path / "par"
    run = make_trajectory(par / "run", [0, 10, 20], _linear)
    (par / "notes.txt").write_text("my notes")
    before = _snapshot(par)
    rc, err = _cli(capsys, "analyze", "weights", run, "-o", par, "--overwrite")
    line = _error_line(err)
    assert rc == 2 and line == f"error: {par} holds {run}, an input of this command; refusing to --overwrite it"
    assert _snapshot(par) == before


def test_extrapolate_overwrite_never_replaces_a_checkpoint(run1, tmp_path, capsys):
    before = _snapshot(run1)
    rc, err = _cli(capsys, "extrapolate", "weights", "--base", run1 / "step_000000", "--second",
                   run1 / "step_000010", "--alpha", "2", "-o", run1 / "step_000020", "--overwrite")  # fmt: skip
    line = _error_line(err)
    assert rc == 2 and line == f"error: {run1 / 'step_000020'} is a checkpoint of the run {run1}; refusing to " \
        "--overwrite it"  # fmt: skip
    assert _snapshot(run1) == before


def test_train_overwrite_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    pico = make_pico_dir(tmp_path / "pico")
    d = tmp_path / "notarun"
    d.mkdir()
    (d / "thesis.tex").write_text("\\documentclass{article}")
    rc, err = _cli(capsys, "train", "--model", pico, *TRAIN, "-o", d, "--overwrite")
    line = _error_line(err)
    assert rc == 2 and line == f"error: {d} was not written by rlvr-linear (no {MARKER}); refusing to --overwrite it"
    assert sorted(os.listdir(d)) == ["thesis.tex"] and (d / "thesis.tex").read_text() == "\\documentclass{article}"


def test_overwrite_never_replaces_a_run_with_another_output_nor_a_users_file(run1, tmp_path, capsys):
    run2 = make_trajectory(tmp_path / "run2", [0, 10], _linear)
    before = _snapshot(run2)
    rc, err = _cli(capsys, "extrapolate", "weights", "--base", run1 / "step_000000", "--second",
                   run1 / "step_000010", "--alpha", "2", "-o", run2, "--overwrite")  # fmt: skip
    assert rc == 2 and _error_line(err) == f"error: {run2} holds a training run; refusing to --overwrite it with " \
        "another kind of output"  # fmt: skip
    assert _snapshot(run2) == before
    thesis = tmp_path / "thesis.tex"
    thesis.write_text("chapter 1")
    rc, err = _cli(capsys, "generate", run1 / "step_000000", "--prompt", "1+1=", "-o", thesis, "--overwrite")
    assert rc == 2 and _error_line(err) == f"error: {thesis} was not written by rlvr-linear; refusing to " \
        "--overwrite it"  # fmt: skip
    assert thesis.read_text() == "chapter 1"


def test_overwrite_of_our_own_output_still_works(run1, tmp_path, capsys):
    a, b = run1 / "step_000000", run1 / "step_000010"
    x = tmp_path / "x"
    for alpha in ("1.5", "2"):
        rc, err = _cli(capsys, "extrapolate", "weights", "--base", a, "--second", b, "--alpha", alpha, "-o", x,
                       "--overwrite")  # fmt: skip
        assert rc == 0, err
        assert json.loads((x / "extrapolation.json").read_text())["alpha"] == float(alpha)
        assert json.loads((x / MARKER).read_text())["kind"] == "extrapolation"
    lin = tmp_path / "lin"
    for _ in range(2):
        rc, err = _cli(capsys, "analyze", "weights", run1, "-o", lin, "--overwrite")
        assert rc == 0, err
    assert json.loads((lin / MARKER).read_text())["kind"] == "analysis"
    completions = tmp_path / "c.jsonl"
    for _ in range(2):
        rc, err = _cli(capsys, "generate", a, "--prompt", "1+1=", "--greedy", "--max-new-tokens", "2", "-o",
                       completions, "--overwrite")  # fmt: skip
        assert rc == 0, err
    assert "completion" in json.loads(completions.read_text().splitlines()[0])


@pytest.mark.slow
def test_train_overwrite_of_our_own_run_still_works(tmp_path, capsys):
    pico = make_pico_dir(tmp_path / "pico")
    run = tmp_path / "run"
    rc, err = _cli(capsys, "train", "--model", pico, *TRAIN, "-o", run)
    assert rc == 0, err[-2000:]
    assert json.loads((run / MARKER).read_text())["kind"] == "run"
    assert json.loads((run / "step_000010" / MARKER).read_text())["kind"] == "checkpoint"
    rc, err = _cli(capsys, "train", "--model", pico, *TRAIN, "--seed", "3", "-o", run, "--overwrite")
    assert rc == 0, err[-2000:]
    assert "seed: 3\n" in (run / "config.yaml").read_text() and _metrics_steps(run) == list(range(1, 31))
    rc, err = _cli(capsys, "analyze", "weights", run, "-o", tmp_path / "lin")  # markers do not confuse readers
    assert rc == 0, err[-2000:]


# --------------------------------------------------------------------------------------------------
# A failed command leaves no folder it created


@pytest.fixture
def full_fs(tmp_path):
    """A 16 KiB tmpfs filled up (root and a working ``mount`` only)."""
    if os.geteuid() != 0:
        pytest.skip("full-filesystem test needs root to mount a small tmpfs (not root here)")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"full-filesystem test: cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 1024):
                pass
        except OSError:  # full
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_eval_on_a_full_filesystem_leaves_no_folder(full_fs, tmp_path, capsys):
    pico = make_pico_dir(tmp_path / "pico")
    out = full_fs / "ev"
    rc, err = _cli(capsys, "eval", pico, "--n-problems", "2", "-k", "0", "-o", out)
    line = _error_line(err)
    assert rc == 2 and str(out) in line and "No space left on device" in line, line
    assert os.listdir(full_fs) == ["filler"]  # no empty folder, no lock file


def test_failed_reground_leaves_no_folder(tmp_path, capsys):
    pico = make_pico_dir(tmp_path / "pico")
    work = tmp_path / "a" / "work"
    exit1 = f"{sys.executable} -c 'import sys; sys.exit(1)' {{model}} {{steps}} {{out}}"
    for trainer in ("false {model} {steps} {out}", exit1):
        rc, err = _cli(capsys, "reground", "--model", pico, "--m", "1", "--n", "1", "--cycles", "1", "-w", work,
                       "--cmd", trainer)  # fmt: skip
        assert rc == 2 and "the trainer command exited with status 1" in _error_line(err)
        assert sorted(os.listdir(tmp_path)) == ["pico"]  # neither work/ nor cycle_01/ nor a/
    work.mkdir(parents=True)  # a work dir of the user's stays, without the failed cycle's folder
    rc, err = _cli(capsys, "reground", "--model", pico, "--m", "1", "--n", "1", "--cycles", "1", "-w", work,
                   "--cmd", "false {model} {steps} {out}")  # fmt: skip
    assert rc == 2 and os.listdir(work) == []
