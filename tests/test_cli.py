"""Bad input gives one clear error line and exit status 2."""

import json

import pytest

from rlvr_linear.cli import main


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_unknown_task(capsys, pico_dir):
    rc, err = _err(capsys, ["eval", str(pico_dir), "--task", "nope", "-k", "1", "--n-problems", "2"])
    assert rc == 2 and err[-1].startswith("error: unknown task 'nope'")


def test_model_dir_without_weights(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, err = _err(capsys, ["eval", str(tmp_path / "empty"), "-k", "1"])
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'empty'}: no checkpoints found")


def test_k_below_one(capsys, pico_dir):
    rc, err = _err(capsys, ["eval", str(pico_dir), "-k", "-1", "--n-problems", "2"])
    assert rc == 2 and err[-1] == "error: k must be >= 1 (or 0 for greedy only), got -1"


def test_empty_benchmark_file(capsys, pico_dir, tmp_path):
    f = tmp_path / "aime.jsonl"
    f.write_text("")
    rc, err = _err(capsys, ["eval", str(pico_dir), "--task", str(f), "-k", "1"])
    assert rc == 2 and err[-1] == f"error: {f}: the benchmark file holds no problems"


def test_missing_path(capsys):
    rc, err = _err(capsys, ["eval", "/does/not/exist"])
    assert rc == 2 and err[-1] == "error: /does/not/exist: no such file or directory"


def test_eval_run_directory_and_compare(capsys, tmp_path):
    from rlvr_linear.models.testing import make_trajectory

    run = make_trajectory(tmp_path / "run", [0, 5, 10], lambda n, w, s, i: w + 0.01 * s)
    rc = main(["eval", str(run), "--n-problems", "4", "-k", "2", "--max-new-tokens", "3", "--compare",
               "-o", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("greedy") == 3 and "95% CI" in out
    js = json.loads((tmp_path / "ev" / "run__step_000010.json").read_text())
    assert js["n_problems"] == 4 and js["k"] == 2


def test_train_bad_config(capsys, tmp_path):
    rc, err = _err(capsys, ["train", "-o", str(tmp_path / "r"), "--algorithm", "ppo"])
    assert rc == 2 and err[-1].startswith("error: unknown algorithm 'ppo'")


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert "rlvr-linear" in capsys.readouterr().out


def _train_parser():
    import argparse

    from rlvr_linear.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_train_flags_are_the_train_config_fields():
    """Every TrainConfig field is a flag (plus -o/--out, --preset, --config, --overwrite), with its comment as help."""
    from dataclasses import fields

    from rlvr_linear.cli.train import EXTRA_OPTIONS
    from rlvr_linear.training.grpo import TrainConfig

    p = _train_parser()
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(TrainConfig)} | set(EXTRA_OPTIONS)
    opts = p._option_string_actions
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in opts, f.name
    # the earlier flag names keep working
    old = ["-o", "--out", "--lr", "--learning-rate", "--steps", "--preset", "--config", "--reground", "--monitor",
           "--threads", "--save-every", "--reground-max-n", "--monitor-every", "--overwrite"]  # fmt: skip
    for flag in old:
        assert flag in opts, flag
    assert opts["--beta"].help.startswith("KL coefficient (paper: no KL)")
    assert opts["--top-p"].help == "nucleus sampling during training (default: 1.0)"
    assert "--no-monitor" in opts and "--no-bf16" in opts
    assert opts["--reground-norms"].choices == ["copy", "extrapolate"]


def test_train_flags_round_trip_into_the_config(tmp_path):
    from rlvr_linear.cli.train import config_from_args
    from rlvr_linear.training.grpo import PRESETS, TrainConfig

    p = _train_parser()
    args = p.parse_args(["-o", str(tmp_path), "--lr", "0.01", "--top-p", "0.9", "--beta", "0.04", "--epsilon", "0.1",
                         "--reground", "4,8", "--reground-norms", "extrapolate", "--monitor", "--max-new-tokens", "5",
                         "--grpo-extra", '{"gradient_checkpointing": false}', "--preset", "tiny-cot"])  # fmt: skip
    cfg = config_from_args(args)
    assert cfg == TrainConfig(**{**PRESETS["tiny-cot"], "learning_rate": 0.01, "top_p": 0.9, "beta": 0.04,
                                 "epsilon": 0.1, "reground": "4,8", "reground_norms": "extrapolate", "monitor": True,
                                 "max_new_tokens": 5, "grpo_extra": {"gradient_checkpointing": False}})  # fmt: skip
    # unset flags leave the preset / YAML values; --no-x sets False over a YAML True
    y = tmp_path / "c.yaml"
    y.write_text("steps: 7\nmonitor: true\nbf16: false\n")
    cfg = config_from_args(p.parse_args(["-o", str(tmp_path), "--config", str(y), "--no-monitor", "--steps", "9"]))
    assert cfg.steps == 9 and cfg.monitor is False and cfg.learning_rate == TrainConfig().learning_rate
    assert config_from_args(p.parse_args(["-o", str(tmp_path)])) == TrainConfig(**PRESETS["tiny"])
    with pytest.raises(SystemExit):
        p.parse_args(["-o", str(tmp_path), "--grpo-extra", "[1]"])


def test_analyze_defaults_come_from_the_api():
    import inspect

    from rlvr_linear.cli import build_parser
    from rlvr_linear.linearity import analyze_logprobs, analyze_weights, make_probes

    def default(f, name):
        return inspect.signature(f).parameters[name].default

    p = build_parser()
    w = p.parse_args(["analyze", "weights", "run", "-o", "x"])
    for k in ("fraction", "min_samples", "min_unique", "chunk", "seed"):
        assert getattr(w, k) == default(analyze_weights, k), k
    lp = p.parse_args(["analyze", "logprobs", "run", "--task", "arithmetic", "-o", "x"])
    for k in ("min_change", "max_positions", "batch_size"):
        assert getattr(lp, k) == default(analyze_logprobs, k), k
    assert (lp.n_prompts, lp.k, lp.split, lp.temperature, lp.probe_seed) == tuple(
        default(make_probes, k) for k in ("n_prompts", "k", "split", "temperature", "seed")
    )


def test_study_flags_are_the_study_config_fields(tmp_path):
    import argparse
    from dataclasses import fields

    from rlvr_linear.cli import build_parser
    from rlvr_linear.cli.study import EXTRA_OPTIONS, config_from_args
    from rlvr_linear.study import StudyConfig

    p = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["study"]
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == {f.name for f in fields(StudyConfig)} | set(EXTRA_OPTIONS)
    old = ["--quick", "--full", "-o", "--model", "--stages", "--seeds", "--steps", "--save-every", "--threads",
           "--render-only", "--no-progress", "--rl-steps", "--logit-alpha", "--no-mechanism-zero-signal"]  # fmt: skip
    for flag in old:
        assert flag in p._option_string_actions, flag
    args = p.parse_args(["--quick", "-o", str(tmp_path), "--steps", "30", "--seeds", "1,2", "--reground-specs", "4,4",
                         "2,8", "--mechanism-snrs", "5,-5", "--no-mechanism-zero-signal", "--logit-alpha", "2",
                         "--base-recipe", '{"max_steps": 10}'])  # fmt: skip
    over = dict(rl_steps=30, seeds=[1, 2], reground_specs=["4,4", "2,8"], mechanism_snrs=[5.0, -5.0],
                mechanism_zero_signal=False, logit_alpha=2.0, base_recipe={"max_steps": 10})  # fmt: skip
    assert config_from_args(args) == StudyConfig.for_mode("quick", **over)
    assert config_from_args(p.parse_args(["-o", str(tmp_path)])) == StudyConfig.for_mode("default")
    with pytest.raises(SystemExit):
        p.parse_args(["-o", str(tmp_path), "--seeds", "1,x"])


def test_train_help_shows_what_runs_by_default(capsys):
    from rlvr_linear.training.grpo import PRESETS, TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    tiny = PRESETS["tiny"]
    assert tiny["steps"] != TrainConfig.steps and tiny["optimizer"] != TrainConfig.optimizer  # else this tests nothing
    assert f"(default of preset tiny: {tiny['steps']})" in out and "(default of preset tiny: sgd)" in out
    assert f"optimizer steps (default: {TrainConfig.steps})" not in out and "all cores)" not in out
    assert "else 1 under 20M params, all cores above" in out


def test_a_log_file_gets_no_progress_bar_carriage_returns(pico_dir, tmp_path):
    """Bars only on a terminal: stderr redirected to a file holds plain lines (train shows an RL bar on a terminal)."""
    import os
    import subprocess
    import sys

    log = tmp_path / "train.log"
    argv = [sys.executable, "-m", "rlvr_linear", "train", "--model", str(pico_dir), "--task", "arithmetic",
            "--steps", "2", "--save-every", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--max-new-tokens", "4", "--eval-problems", "2", "--threads", "1", "-o", str(tmp_path / "run")]  # fmt: skip
    with open(log, "wb") as f:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        rc = subprocess.run(argv, stdout=f, stderr=f, env=env, timeout=300).returncode
    text = log.read_bytes()
    assert rc == 0, text.decode()
    assert b"\r" not in text and b"run written to" in text
    assert b"RL step 1/2: mean reward" in text and b"RL step 2/2: mean reward" in text  # a plain line per checkpoint
