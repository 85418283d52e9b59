import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.evaluation import paired_bootstrap
from rlvr_linear.models.testing import make_trajectory
from rlvr_linear.study.advisor_cases import check_against_study, study_cases, write_cases

N = 10  # validation problems
ROWS = [(0, 40, 80), (0, 40, 120), (40, 80, 120)]  # (t0, t1, target)
KEY = "model.layers.0.self_attn.q_proj.weight"


def _scores(n_right: int) -> np.ndarray:
    return np.array([1.0] * n_right + [0.0] * (N - n_right))


@pytest.fixture
def study(tmp_path):
    """A pico study: runs/rl_seed{0,1} with exactly linear weights, the stage's config and result.json."""
    root = tmp_path / "study"
    for seed in (0, 1):
        make_trajectory(root / "runs" / f"rl_seed{seed}", [0, 40, 80, 120], lambda n, w, s, i: w + 1e-3 * s, seed=seed)
    (root / "study_config.json").write_text(json.dumps({
        "task": "arithmetic", "rl_steps": 120, "save_every": 40, "learning_rate": 3e-5, "prompts_per_step": 2,
        "samples_per_prompt": 4, "wx_eval_problems": N}))  # fmt: skip
    rows = [{"t0": a, "t1": b, "target": t, "alpha": round((t - a) / (b - a), 4),
             "extrapolated": {"mean": 0.5}, "t1_checkpoint": {"mean": 0.5}, "real_rl": {"mean": 0.5}}
            for a, b, t in ROWS]  # fmt: skip
    (root / "weight_extrapolation").mkdir()
    (root / "weight_extrapolation" / "result.json").write_text(
        json.dumps({"seeds": [0, 1], "numbers": {"rows": rows, "problems": N}})
    )
    return root


def fake_scorer(seen):
    """Checkpoints: step/40 + 3 right answers (step 40: 4, 80: 5, 120: 6); extrapolated models: 7 right at seed 0,
    2 at seed 1. Records each extrapolated model's ``KEY`` tensor."""

    def score(model, task, problems):
        assert len(problems) == N
        name = Path(model).name
        if name.startswith("step_"):
            return _scores(int(name[5:]) // 40 + 3)
        seen[name] = load_file(str(Path(model) / "model.safetensors"))[KEY]
        return _scores(7 if name.startswith("seed0") else 2)

    return score


def test_study_cases_rescore_and_label(study, tmp_path, monkeypatch):
    seen = {}
    cases = study_cases(study, scorer=fake_scorer(seen), progress=False)
    assert len(cases) == 6 and [c["seed"] for c in cases] == [0, 0, 0, 1, 1, 1]
    c = cases[1]  # seed 0, t0 0, t1 40, target 120: alpha 3
    assert (c["t0"], c["t1"], c["target"], c["alpha"], c["predictor"], c["space"]) == (
        0,
        40,
        120.0,
        3.0,
        "two_point",
        "weight",
    )
    assert c["run"] == str(study / "runs" / "rl_seed0") and c["n_problems"] == N and c["real_step"] == 120
    assert (c["acc_t1"], c["acc_x"], c["acc_real_target"]) == (0.4, 0.7, 0.6)
    ref = paired_bootstrap(_scores(4), _scores(7))
    assert c["gain_vs_t1"]["greedy"] == {"mean": 0.3, "lo": round(ref["ci_low"], 4), "hi": round(ref["ci_high"], 4)}
    assert c["gain_vs_real"]["greedy"]["mean"] == pytest.approx(0.1) and c["gain_vs_t1"]["avg_k"] is None
    assert cases[4]["gain_vs_t1"]["greedy"]["mean"] == -0.2  # seed 1, t1 40: 2 right against 4
    # the extrapolated weights are W_t0 + alpha (W_t1 - W_t0): exactly linear runs land on the line at the target
    w0 = load_file(str(study / "runs" / "rl_seed0" / "step_000000" / "model.safetensors"))[KEY]
    for name in ("seed0_t0-40_to120", "seed0_t40-80_to120", "seed0_t0-40_to80"):
        target = int(name.split("_to")[1])
        assert (seen[name] - (w0 + 1e-3 * target)).abs().max() < 1e-6, name
    # against the stage's numbers (0.5 everywhere): extrapolated 0.45 over seeds, t1 0.4 at step 40, real 0.6 at 120
    worst = check_against_study(cases, study)
    assert worst == pytest.approx({"extrapolated": 0.05, "t1_checkpoint": 0.1, "real_rl": 0.1})
    # written cases are read by validate, the relative run path found from the folders above the file
    monkeypatch.chdir(tmp_path)
    rel = [{**c, "run": str(Path(c["run"]).relative_to(tmp_path))} for c in cases]
    out = write_cases(rel, tmp_path / "experiments" / "results" / "cases.jsonl")
    monkeypatch.chdir(study / "runs")  # the run paths do not resolve from here
    from rlvr_linear.advisor.validate import read_cases

    got = read_cases(out)
    assert Path(got[0]["run"]).resolve() == (study / "runs" / "rl_seed0").resolve()
    assert got[0]["source"] == "cases.jsonl"


def test_study_cases_errors(study):
    (study / "runs" / "rl_seed1" / "step_000080").rename(study / "runs" / "rl_seed1" / "gone")
    with pytest.raises(RlvrLinearError, match="step_000080: checkpoint not found"):
        study_cases(study, scorer=lambda m, t, p: _scores(1), progress=False)
    (study / "weight_extrapolation" / "result.json").unlink()
    with pytest.raises(RlvrLinearError, match="result.json: not found; is .* a study folder"):
        study_cases(study, progress=False)
