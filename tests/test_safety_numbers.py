"""No wrong number with exit 0, and error messages that say what is wrong.

A checkpoint that lacks a tensor or holds NaN / Inf weights is refused before anything is evaluated; a trajectory
with one checkpoint in another dtype is analysed in a common dtype and says so; an extrapolation that could not be
loaded is not written; FIFOs among a checkpoint's files are refused instead of blocking; bad counts, an output under
a file and a resumed config name the real problem. Each test runs the CLI on pico checkpoints and asserts the exact
error line, the exit status and what is (not) on disk.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_checks import cli_err as _cli
from cli_checks import linear_drift as _linear
from cli_checks import one_error_line as _one_error_line
from rlvr_linear.models.testing import make_pico_dir, make_trajectory
from rlvr_linear.training.grpo import config_changes

TENSOR = "model.layers.0.mlp.up_proj.weight"  # 32 x 16 in the pico model
EVAL = ("--n-problems", "2", "-k", "0", "--max-new-tokens", "2")


def _edit_weights(d: Path, edit) -> None:
    f = d / "model.safetensors"
    sd = load_file(f)
    edit(sd)
    save_file(sd, f, metadata={"format": "pt"})


@pytest.fixture
def run3(tmp_path):
    return make_trajectory(tmp_path / "run", [0, 10, 20], _linear)


# --------------------------------------------------------------------------------------------------
# Wrong numbers with exit 0


def test_eval_refuses_a_checkpoint_with_a_missing_tensor(tmp_path, capsys):
    d = make_pico_dir(tmp_path / "ckpt")
    _edit_weights(d, lambda sd: sd.pop(TENSOR))
    rc, err = _cli(capsys, "eval", d, *EVAL, "-o", tmp_path / "ev")
    line = _one_error_line(err)
    assert rc == 2, err
    assert line == f"error: {d}: tensors missing from the checkpoint (they would be randomly initialised): {TENSOR}"
    assert not (tmp_path / "ev").exists()


def test_eval_refuses_an_untied_lm_head_that_is_missing_but_not_a_tied_one(tmp_path, capsys):
    tied = make_pico_dir(tmp_path / "tied")  # lm_head shares the embedding: not stored, not missing
    assert "lm_head.weight" not in load_file(tied / "model.safetensors")
    rc, err = _cli(capsys, "eval", tied, *EVAL)
    assert rc == 0, err
    untied = make_pico_dir(tmp_path / "untied", tie=False)
    _edit_weights(untied, lambda sd: sd.pop("lm_head.weight"))
    rc, err = _cli(capsys, "eval", untied, *EVAL)
    line = _one_error_line(err)
    assert rc == 2 and line.endswith(f"{untied}: tensors missing from the checkpoint (they would be randomly "
                                     "initialised): lm_head.weight"), line  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_eval_refuses_non_finite_weights(tmp_path, capsys, bad):
    d = make_pico_dir(tmp_path / "ckpt")

    def poison(sd):
        sd[TENSOR][3, 5] = bad

    _edit_weights(d, poison)
    rc, err = _cli(capsys, "eval", d, *EVAL, "-o", tmp_path / "ev")
    line = _one_error_line(err)
    assert rc == 2 and line == f"error: {d}: tensor {TENSOR} has NaN or Inf values", line
    assert not (tmp_path / "ev").exists()


def test_generate_refuses_non_finite_weights(tmp_path, capsys):
    a = make_pico_dir(tmp_path / "step_000000")
    b = make_pico_dir(tmp_path / "step_000010", seed=1)
    _edit_weights(b, lambda sd: sd["model.norm.weight"].fill_(float("nan")))
    rc, err = _cli(capsys, "generate", a, b, "--alpha", "1.5", "--prompt", "1+1=", "--max-new-tokens", "2")
    line = _one_error_line(err)
    assert rc == 2 and line == f"error: {b}: tensor model.norm.weight has NaN or Inf values", line


def _mixed_run(tmp_path: Path) -> Path:
    """step_000020 stored in bf16, the other checkpoints in fp32 (same linear trajectory)."""
    run = make_trajectory(tmp_path / "run", [0, 10, 20], _linear)
    bf = make_trajectory(tmp_path / "bf", [0, 10, 20], _linear, dtype=torch.bfloat16)
    _edit_weights(run / "step_000020", lambda sd: sd.update(load_file(bf / "step_000020" / "model.safetensors")))
    return run


@pytest.mark.parametrize("mode", ["paper", "all"])
def test_analyze_weights_casts_a_bf16_checkpoint_among_fp32_ones_and_says_so(tmp_path, capsys, mode):
    run = _mixed_run(tmp_path)
    out = tmp_path / "lin"
    rc, err = _cli(capsys, "analyze", "weights", run, "-o", out, *(["--all"] if mode == "all" else []))
    assert rc == 0, err
    notes = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("note: ")]
    assert notes == [f"note: {run / 'step_000020'} is bfloat16, others float32; values cast to float32"], err
    s = json.loads((out / "weights.json").read_text())
    # filter 1 uses the coarsest dtype's threshold: a move the bf16 checkpoint cannot resolve is not "kept"
    assert s["config"]["min_abs_change"] == {"bfloat16": 1e-4}
    assert s["r2"]["median"] > 0.99 and s["counts"]["kept"] > 0.9 * s["counts"]["sampled"]


def test_extrapolate_refuses_inputs_without_config_json(run3, tmp_path, capsys):
    for s in ("step_000000", "step_000010"):
        (run3 / s / "config.json").unlink()
    out = tmp_path / "x"
    rc, err = _cli(
        capsys, "extrapolate", "weights", "--base", run3 / "step_000000", "--second", run3 / "step_000010",
        "--alpha", "1.5", "-o", out,
    )  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2, err
    assert line == (
        f"error: {run3 / 'step_000010'}: no config.json, so the extrapolated weights could not be loaded as a model; "
        "nothing written"
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


# --------------------------------------------------------------------------------------------------
# Messages that mislead


def test_prompts_per_step_zero_names_the_field(tmp_path, capsys):
    out = tmp_path / "tr"
    rc, err = _cli(capsys, "train", "--steps", "1", "--save-every", "1", "--prompts-per-step", "0", "-o", out)
    line = _one_error_line(err)
    assert rc == 2 and "micro_batch" not in line, line
    assert line.startswith("error: prompts_per_step must be") and line.endswith(">= 1 (got 0)"), line
    assert not out.exists()


def test_one_step_path_says_how_many_checkpoints(run3, tmp_path, capsys):
    ckpt = run3 / "step_000010"
    rc, err = _cli(capsys, "analyze", "weights", f"10={ckpt}", "-o", tmp_path / "lin")
    assert rc == 2 and _one_error_line(err) == "error: this needs at least 3 checkpoints, found 1 ([10])", err
    rc, err = _cli(capsys, "extrapolate", "weights", "--run", f"10={ckpt}", "--alpha", "1.5", "-o", tmp_path / "x")
    assert rc == 2 and _one_error_line(err) == "error: a fit needs at least 2 checkpoints, the run has 1 ([10])", err
    assert not (tmp_path / "lin").exists() and not (tmp_path / "x").exists()


def test_output_under_a_file_names_the_file(run3, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in (afile / "w", afile / "deeper" / "w"):
        rc, err = _cli(capsys, "analyze", "weights", run3, "-o", out)
        assert rc == 2 and _one_error_line(err) == f"error: {afile} is a file, not a folder", err
    rc, err = _cli(
        capsys, "extrapolate", "weights", "--base", run3 / "step_000000", "--second", run3 / "step_000010",
        "--alpha", "1.5", "-o", afile / "x",
    )  # fmt: skip
    assert rc == 2 and _one_error_line(err) == f"error: {afile} is a file, not a folder", err
    assert afile.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]


def test_resume_config_compare_is_nan_safe():
    nan = float("nan")
    saved = {"learning_rate": nan, "steps": 10, "grpo_extra": {"min_p": nan, "stop": [1, nan]}}
    same = {"learning_rate": nan, "steps": 10, "grpo_extra": {"min_p": nan, "stop": (1, nan)}}  # JSON: list vs tuple
    assert config_changes(saved, same) == {}
    diff = config_changes(saved, {**same, "learning_rate": 1e-3})
    assert list(diff) == ["learning_rate"] and math.isnan(diff["learning_rate"][0]) and diff["learning_rate"][1] == 1e-3
    assert config_changes({"steps": 10}, {"steps": 20}) == {"steps": (10, 20)}


@pytest.fixture
def unblock_fifos():
    """Open every registered FIFO for writing after a while, so that code which opens one for reading gets EOF
    instead of blocking forever (a test then fails on its assertion rather than hanging)."""
    fifos: list[Path] = []
    stop = threading.Event()

    def feed():
        t0 = time.monotonic()
        while not stop.is_set():
            if time.monotonic() - t0 > 5:
                for f in fifos:
                    try:
                        os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:  # no reader yet
                        pass
            time.sleep(0.05)

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    yield fifos
    stop.set()
    th.join()


def _fifo(path: Path, fifos: list[Path]) -> Path:
    path.unlink()
    os.mkfifo(path)
    fifos.append(path)
    return path


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_fifo_in_a_checkpoint_is_refused_not_waited_on(run3, tmp_path, capsys, unblock_fifos, name):
    ckpt = run3 / "step_000010"
    f = _fifo(ckpt / name, unblock_fifos)
    want = f"error: {f}: not a regular file (a FIFO); refusing to read it"
    rc, err = _cli(capsys, "eval", ckpt, *EVAL)
    assert rc == 2 and _one_error_line(err) == want, err
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "lin")
    assert rc == 2 and _one_error_line(err) == want, err
    rc, err = _cli(
        capsys, "extrapolate", "weights", "--base", run3 / "step_000000", "--second", ckpt, "--alpha", "2",
        "-o", tmp_path / "x",
    )  # fmt: skip
    assert rc == 2 and _one_error_line(err) == want, err
    assert not (tmp_path / "lin").exists() and not (tmp_path / "x").exists()


def test_fifo_checkpoint_of_a_run_without_manifest_is_refused_not_skipped(run3, tmp_path, capsys, unblock_fifos):
    (run3 / "manifest.json").unlink()  # checkpoints found by their folder names
    f = _fifo(run3 / "step_000010" / "model.safetensors", unblock_fifos)
    rc, err = _cli(capsys, "analyze", "weights", run3, "-o", tmp_path / "lin")
    line = _one_error_line(err)
    assert rc == 2 and line == f"error: {f}: not a regular file (a FIFO); refusing to read it", line
    assert not (tmp_path / "lin").exists()
