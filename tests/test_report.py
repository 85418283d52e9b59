import copy
import re

import numpy as np
import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.reporting import plots
from rlvr_linear.reporting.report import RESULTS_SCHEMA, render_html, results_errors, validate_results, write_report


def _ci(m):
    return {"mean": m, "std": 0.0, "ci_low": m, "ci_high": m, "n": 1}


def _good(fig="baseline/curve.png"):
    return {
        "meta": {
            "version": "0.1.0", "mode": "quick", "model": "tiny", "seeds": [0], "wall_time_s": 12.5,
            "machine": {"cpus": 2}, "created": "2026-01-01 00:00:00", "stages": {"baseline": {"status": "done"}},
        },
        "baseline": {
            "title": "Baseline RL runs", "seeds": [0],
            "numbers": {"runs": {"0": {"steps": [0, 5], "val_accuracy": [0.2, 0.3], "wall_time_s": 3.0}},
                        "val_accuracy_start": _ci(0.2), "val_accuracy_end": _ci(0.3),
                        "val_accuracy_gain": _ci(0.1), "eval_problems": 10},
            "paper": {"note": "n/a"}, "reproduced": "n/a", "verdict": "RL raised accuracy.",
            "figures": [fig], "wall_s": 3.1,
        },
    }  # fmt: skip


def test_schema_accepts_a_good_object():
    assert results_errors(_good()) == []
    validate_results(_good())
    sec = RESULTS_SCHEMA["properties"]["baseline"]["properties"]
    assert sec["reproduced"]["enum"] == ["yes", "partly", "no", "n/a"]


def test_schema_rejects_broken_objects():
    bad = copy.deepcopy(_good())
    bad["baseline"]["reproduced"] = "maybe"
    del bad["meta"]["seeds"]
    bad["meta"]["wall_time_s"] = "fast"
    bad["surprise"] = {}
    errs = results_errors(bad)
    assert "results.baseline.reproduced: 'maybe' is not one of ['yes', 'partly', 'no', 'n/a']" in errs
    assert "results.meta: missing required field 'seeds'" in errs
    assert "results.meta.wall_time_s: expected number, got str" in errs
    assert "results: unexpected field 'surprise'" in errs
    with pytest.raises(RlvrLinearError, match="results.json does not match its schema"):
        validate_results(bad)
    bad2 = copy.deepcopy(_good())
    bad2["baseline"]["seeds"] = [True]
    assert results_errors(bad2) == ["results.baseline.seeds[0]: expected integer, got bool"]
    bad3 = copy.deepcopy(_good())
    bad3["baseline"]["verdict"] = ""
    assert results_errors(bad3) == ["results.baseline.verdict: empty string"]


def test_html_embeds_figures_and_has_no_external_assets(tmp_path):
    plots.plot_curves(tmp_path / "baseline" / "curve.png", {"RL": ([0, 5], [0.2, 0.3], None)})
    res = _good()
    paths = write_report(res, tmp_path)
    page = paths["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 1
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, flags=re.I)
    assert "Tiny-model miniature" in page
    assert "reproduced: n/a" in page and "RL raised accuracy." in page
    assert "0.300 (n=1, no CI)" in page  # every number comes with its seeds / CI
    import json

    assert json.loads(paths["json"].read_text()) == res  # results.json holds exactly the validated object
    # a missing figure is reported, not fatal; an invalid object is refused before anything is written
    page2 = render_html(_good(fig="nope.png"), tmp_path)
    assert "(figure nope.png missing)" in page2
    broken = _good()
    broken["baseline"]["reproduced"] = "?"
    with pytest.raises(RlvrLinearError):
        write_report(broken, tmp_path / "other")
    assert not (tmp_path / "other" / "report.html").exists()


def test_study_plots_write_pngs(tmp_path):
    p1 = plots.plot_r2_compare(tmp_path / "a.png", {"RL": np.linspace(0, 1, 50), "SFT": np.linspace(0, 0.5, 50)})
    p2 = plots.plot_r2_settings(tmp_path / "b.png", ["x", "y"], {"w": [(0.1, 0.5, 0.9, 0.4), (None, 0.6, None, None)]})
    paper = {"snr_db": [0, -10], "weighted_median_r2": [0.43, 0.58], "sft_baseline_median": 0.43}
    p3 = plots.plot_snr_curve(
        tmp_path / "c.png", ["0 dB", "-10 dB"], [0.5, 0.6], [0.4, None], sft_median=0.45, paper=paper
    )
    curves = {"t1 = 5": ([10], [0.25], [(0.2, 0.3)])}
    p4 = plots.plot_extrapolation(tmp_path / "d.png", ([0, 5, 10], [0.1, 0.2, 0.3]), curves)
    from matplotlib.image import imread

    for p in (p1, p2, p3, p4):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(p)  # a real picture: a sizeable canvas with something drawn on it
        assert img.ndim == 3 and min(img.shape[:2]) > 200 and float(img[..., :3].std()) > 0.01, p


def test_user_text_is_escaped_and_only_code_built_html_is_raw(tmp_path):
    """Jinja2 autoescaping: a <script> in a run name, title, verdict, note or the model name never reaches the page."""
    evil = "<script>alert(1)</script>"
    res = _good(fig="nope.png")
    res["meta"]["model"] = evil
    b = res["baseline"]
    b["title"], b["verdict"], b["paper"]["note"] = evil, evil, evil
    b["numbers"]["runs"] = {evil: b["numbers"]["runs"]["0"]}
    page = render_html(res, tmp_path)
    assert "<script" not in page.lower()
    # model; summary title + verdict; heading; verdict; the runs table; the paper and numbers JSON dumps
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 8
    assert "&lt;script&gt;" in page.split("Paper's numbers")[1]  # the note, inside the escaped JSON
    assert "<table><tr><th>seed</th>" in page  # the code-built table is HTML, not escaped text
    assert "<span class='badge na'>n/a</span>" in page


def test_results_record_the_git_commit_and_dirtiness(tmp_path):
    import subprocess

    from rlvr_linear.reporting.report import git_state

    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a git checkout
    run = dict(cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["git", "init", "-q"], **run)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(["git", "add", "a.txt"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "m"], **run)
    head = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **run).stdout.strip()
    assert git_state(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "untracked.txt").write_text("x")
    assert git_state(tmp_path)["dirty"] is False  # untracked files do not count
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path) == {"commit": head, "dirty": True}
    # collect_results puts this package's state into meta, and the schema accepts it (and rejects a wrong type)
    import dataclasses

    from rlvr_linear.reporting.report import collect_results

    @dataclasses.dataclass
    class Cfg:
        mode: str = "quick"
        model: str = "tiny"
        seeds: tuple = (0,)

    res = collect_results(tmp_path / "out", Cfg())
    assert set(res["meta"]["git"]) == {"commit", "dirty"}
    assert res["meta"]["git"] == git_state()
    assert results_errors(res) == []
    res["meta"]["git"]["dirty"] = "yes"
    assert results_errors(res) == ["results.meta.git.dirty: expected boolean or null, got str"]


def test_a_stage_left_out_for_budget_shows_its_verdict_and_no_table_error(tmp_path):
    from rlvr_linear.reporting.report import banner

    res = _good()
    res["meta"].update(model="smollm2-135m", banner=banner("smollm2-135m"))
    res["robustness"] = {
        "title": "Robustness", "seeds": [], "paper": {"note": "n/a"}, "reproduced": "n/a", "figures": [],
        "numbers": {"not_run": "budget", "reason": "no robustness settings", "one_run_estimate_s": 8000.0},
        "verdict": "not run (budget): this protocol has no robustness settings; one such run costs 2.2 h here.",
    }  # fmt: skip
    page = write_report(res, tmp_path)["html"].read_text()
    assert "not run (budget): this protocol has no robustness settings" in page
    assert "table unavailable" not in page
    assert "Pretrained model, small budget." in page and "Tiny-model miniature" not in page
    assert "pretrained model smollm2-135m" in page
    assert banner("tiny").startswith("This is a tiny-model miniature")


def test_robustness_rows_compare_with_the_papers_run_of_the_same_optimizer():
    from rlvr_linear.reporting.report import _paper_robustness_key

    def row(setting, **ov):
        return {"setting": setting, "overrides": ov}

    # SGD baseline (the default study): its baseline row is the paper's SGD run, the AdamW row the paper's GRPO
    assert _paper_robustness_key(row("grpo"), "sgd") == "SGD"
    assert _paper_robustness_key(row("adamw", optimizer="adamw", learning_rate=3e-5), "sgd") == "GRPO"
    assert _paper_robustness_key(row("fast", optimizer="adamw", learning_rate=3e-4), "sgd") == ""
    # AdamW baseline: the other way round; named settings by name
    assert _paper_robustness_key(row("grpo"), "adamw") == "GRPO"
    assert _paper_robustness_key(row("sgd", optimizer="sgd", learning_rate=3e-3), "adamw") == "SGD"
    assert _paper_robustness_key(row("group_16", samples_per_prompt=16), "sgd") == "Rollouts 16"
    assert _paper_robustness_key(row("dr_grpo", algorithm="dr_grpo"), "adamw") == ""


def test_the_shipped_default_study_compares_its_sgd_baseline_with_the_papers_sgd_run(tmp_path):
    """The stage records ``baseline_optimizer``; results written before it take the optimizer from ``meta``."""
    import json
    from pathlib import Path

    res = json.loads((Path(__file__).resolve().parents[1] / "experiments/results/study/results.json").read_text())
    assert res["robustness"]["numbers"]["baseline_optimizer"] == res["meta"]["config"]["optimizer"] == "sgd"
    older = copy.deepcopy(res)
    del older["robustness"]["numbers"]["baseline_optimizer"]
    for r in (res, older):
        page = render_html(r, tmp_path)
        assert "baseline optimizer sgd" in page
        row = re.search(r"<tr><td>GRPO \(baseline\)</td>.*?</tr>", page, re.S).group(0)
        assert "0.81 (0.7-0.89)" in row  # the paper's SGD run, not its AdamW GRPO (0.84)


def test_the_regime_map_leads_the_report_from_a_given_folder(tmp_path):
    """The committed study report is rendered with the committed map (``regime_dir``); without one, ``out/regime``."""
    import base64
    import json

    res = _good(fig="nope.png")
    assert "id='regime'" not in render_html(res, tmp_path / "study")
    mdir = tmp_path / "results"
    mdir.mkdir()
    png = b"\x89PNG\r\n\x1a\n fake"
    (mdir / "regime_weights_r2.png").write_bytes(png)
    ci = {"mean": 0.012, "lo": 0.004, "hi": 0.021}
    m = {
        "summary": "map: 2 of 57 items",
        "figures": ["regime_weights_r2.png"],
        "points": {"1e-5x128": {"seeds": [0, 1, 2], "weights": {"median": {"mean": 0.9}, "null_median": {"mean": 0.43}},
                                "logprobs": {"median": {"mean": 0.87}, "null_median": {"mean": 0.46}},
                                "forecast_ratio": {"q2": {"mean": 0.64}}, "best_weight_extrapolation": None,
                                "rl_minus_sft": {"weights": 0.029, "logprobs": 0.081}}},
        "best": {"weight": {"point": "1e-5x128", "case": "two-point (200, 700) -> 1200", "gain_vs_t1_greedy": ci,
                            "gain_vs_real_greedy": None},
                 "regrounding": {"point": "1e-5x512", "spec": "(100,100)", "speedup": 2.0}},
    }  # fmt: skip
    (mdir / "regime_map.json").write_text(json.dumps(m))
    page = render_html(res, tmp_path / "study", regime_dir=mdir)
    sec = page.split("<h2 id='regime'>Regime map</h2>")[1]
    assert page.index("id='regime'") < page.index("<h2>Summary") < page.index("<h2 id='baseline'>")
    assert "map: 2 of 57 items" in sec
    assert f'<img alt="regime_weights_r2.png" src="data:image/png;base64,{base64.b64encode(png).decode()}">' in sec
    assert "+0.012 [+0.004, +0.021]" in sec and "no real checkpoint" in sec
    assert "<td>logit extrapolation</td><td colspan='3'>not measured yet</td>" in sec
    assert "speed-up 2.00x" in sec
    assert "<th>weight R² RL − SFT</th>" in sec and "<td>+0.029</td></tr>" in sec
    assert str(tmp_path) not in page  # no machine paths in the page
    # the default folder is out/regime
    (tmp_path / "study" / "regime").mkdir(parents=True)
    (tmp_path / "study" / "regime" / "regime_map.json").write_text(json.dumps(m))
    assert "map: 2 of 57 items" in render_html(res, tmp_path / "study")
