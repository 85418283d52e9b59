"""bench/gpu_confirm.sh: the dry run (CPU, pico sizes) goes through every stage and writes the results JSON."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_confirm", ROOT / "bench" / "gpu_confirm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_choose_steps_fits_half_the_time_left_in_whole_save_intervals():
    gc = _module()
    assert gc.choose_steps(0.25, 430.0, 1500, 15) == (855, 57)  # 860 steps fit; 57 x 15
    assert gc.choose_steps(0.01, 430.0, 1500, 15) == (1500, 100)  # capped by --max-steps
    assert gc.choose_steps(100.0, 430.0, 1500, 15) == (15, 1)  # at least one step per checkpoint


def test_scipy_stub_stands_in_only_when_scipy_is_missing(monkeypatch):
    gc = _module()
    assert gc._stub_scipy_if_missing() is False  # installed here: left alone
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else real_find_spec(n, *a))
    for name in ("scipy", "scipy.stats"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert gc._stub_scipy_if_missing() is True
    from scipy import stats  # the stub

    with pytest.raises(RuntimeError, match="scipy is not installed"):
        stats.t.ppf(0.975, 3)


@pytest.mark.slow
def test_dry_run_writes_every_field(tmp_path):
    out = tmp_path / "gpu_confirm.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "bench" / "gpu_confirm.sh"), "--dry-run", "--engine", "bare", "--out", str(out),
           "--work", str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpu_confirm.sh: torch" in proc.stdout
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["engine"] == "bare" and r["machine"]["device"] == "cpu"
    assert set(r["timings_s"]) == {"base", "calibrate", "rl", "analysis", "extrapolation"}
    assert r["total_s"] < 600 and r["within_10_minutes"] is True
    assert r["base"]["params"] == 21920 and r["base"]["val_greedy"] >= 0.2  # the warm-up reached its target
    rl = r["rl"]
    assert (rl["steps"], rl["save_every"]) == (8, 2)  # max_steps 8, 4 checkpoints after step 0
    assert [s for s, _ in rl["val_accuracy"]] == [0, 2, 4, 6, 8]
    assert all(0.0 <= a <= 1.0 for _, a in rl["val_accuracy"])
    an = r["analysis"]
    assert an["n_checkpoints"] == 5 and an["forecast"]["fit_until_step"] == 4
    assert 0.0 <= an["weight_r2"]["median"] <= 1.0 and 0.0 <= an["weight_r2_null"]["median"] <= 1.0
    assert an["above_null"]["median"] == pytest.approx(an["weight_r2"]["median"] - an["weight_r2_null"]["median"])
    assert len(an["forecast"]["ratio_to_naive"]) == 2  # steps 6 and 8 forecast from 0..4
    ex = r["extrapolation"]
    assert ex["target_step"] == 8 and ex["two_point"] == {"base_step": 0, "second_step": 4, "alpha": 2.0}
    assert ex["least_squares"]["fit_steps"] == [0, 2, 4]
    assert set(ex["greedy_accuracy"]) == {"real_target", "real_mid", "two_point", "least_squares"}
    for name, ci in ex["vs_real_target"].items():
        assert ci["n_problems"] == 10  # the whole 1-digit test split
        want = ex["greedy_accuracy"][name] - ex["greedy_accuracy"]["real_target"]
        assert ci["diff"] == pytest.approx(want) and ci["ci_low"] <= ci["diff"] <= ci["ci_high"]
    manifest = json.loads((tmp_path / "work" / "run" / "manifest.json").read_text())
    assert manifest["finished"] is True and manifest["config"]["engine"] == "bare"
    assert (tmp_path / "work" / "run" / "step_000008" / "model.safetensors").exists()
