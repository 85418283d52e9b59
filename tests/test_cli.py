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
    from rlvr_linear.testing import make_trajectory

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
