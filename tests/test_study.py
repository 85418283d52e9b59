import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.reporting.report import SECTIONS, validate_results
from rlvr_linear.study import (
    CONTRAST_SETTINGS,
    StudyConfig,
    _Ctx,
    _mean_numbers,
    _r2_numbers,
    _verdict_linearity,
    _verdict_logit,
    _verdict_mechanism,
    _verdict_regrounding,
    _verdict_robustness,
    _verdict_wx,
    active_weighted,
    first_reach,
    paper_regime,
    parse_stages,
    plan,
    same_config,
    snap,
    wx_targets,
)

RUN = [s for s in SECTIONS if s != "trajectory"]  #: the tiny study's sections (StudyConfig.default_stages)


def _ci(m):
    return {"mean": m, "std": 0.0, "ci_low": m, "ci_high": m, "n": 1}


def test_config_modes_and_errors():
    q = StudyConfig.for_mode("quick")
    assert q.seeds == [0] and q.rl_steps == 60 and q.base_recipe["hidden_size"] == 64
    d = StudyConfig.for_mode("default")
    # the default runs at the regime map's SGD 3e-3 x 128 responses point: 560 steps, 15 checkpoints
    assert d.seeds == [0, 1, 2] and d.rl_steps == 560 and d.base_recipe is None
    assert (d.optimizer, d.learning_rate, d.save_every, d.prompts_per_step * d.samples_per_prompt) == (
        "sgd", 3e-3, 40, 128)  # fmt: skip
    assert (q.optimizer, q.learning_rate) == ("adamw", 3e-4)
    assert d.rl_steps // d.save_every + 1 == 15
    assert d.reground_specs == ["8,40"] and d.wx_base_fractions == [0.0, 1 / 7]
    assert "fast" in d.robustness and "fast" in CONTRAST_SETTINGS
    f = StudyConfig.for_mode("full")
    assert (f.learning_rate, f.rl_steps, f.save_every) == (1e-5, 1400, 100)
    assert StudyConfig.for_mode("quick", rl_steps=30).rl_steps == 30
    with pytest.raises(RlvrLinearError, match="unknown study mode 'huge'"):
        StudyConfig.for_mode("huge")
    with pytest.raises(RlvrLinearError, match="must hold at least 3 save intervals"):
        StudyConfig.for_mode("quick", rl_steps=10)
    with pytest.raises(RlvrLinearError, match="unknown robustness settings"):
        StudyConfig.for_mode("quick", robustness=["adam9"])
    with pytest.raises(RlvrLinearError, match="unknown optimizer 'lion'; choose adamw or sgd"):
        StudyConfig.for_mode("default", optimizer="lion")
    with pytest.raises(RlvrLinearError, match=r"unknown study settings \['colour'\]"):
        StudyConfig.for_mode("quick", colour=1)
    assert [r["stage"] for r in plan(q, parse_stages(None))] == parse_stages("all")


def test_parse_stages_orders_and_rejects():
    assert parse_stages("report,baseline") == ["baseline", "report"]
    with pytest.raises(RlvrLinearError, match=r"unknown stages \['nope'\]"):
        parse_stages("baseline,nope")


def test_protocol_helpers():
    assert snap(7.4, 5) == 5 and snap(8, 5) == 10 and snap(0, 5, lo=5) == 5 and snap(99, 5, hi=60) == 60
    steps = list(range(0, 61, 5))
    assert wx_targets(15, steps, 4.0, 4) == [20, 35, 45, 60]  # 9 candidates in (15, 60], evenly spread
    assert wx_targets(45, steps, 4.0, 4) == [50, 55, 60]
    assert wx_targets(10, steps, 2.0, 4) == [15, 20]
    # a later base: alpha = (target - t0) / (t1 - t0) <= 2 from (10, 20) reaches 30
    assert wx_targets(20, steps, 2.0, 4, t0=10) == [25, 30]
    assert first_reach([0, 5, 10], [0.1, None, 0.4], 0.3) == 10
    assert first_reach([0, 5], [0.1, 0.2], 0.3) is None


def test_active_weighted_formula():
    t = [
        SimpleNamespace(kept=30, r2={"median": 0.9, "mean": 0.8}),
        SimpleNamespace(kept=10, r2={"median": 0.5, "mean": 0.4}),
        SimpleNamespace(kept=0, r2={"median": None, "mean": None}),
    ]
    aw = active_weighted(SimpleNamespace(tensors=t))
    assert aw["weighted_median"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert aw["weighted_mean"] == pytest.approx((30 * 0.8 + 10 * 0.4) / 40)
    assert aw["kept"] == 40


def test_verdict_rules():
    assert _verdict_linearity({"median": 0.84, "null_median": 0.45}, {"median": 0.42})[0] == "yes"
    assert _verdict_linearity({"median": 0.6, "null_median": 0.45}, {"median": 0.42})[0] == "partly"
    assert _verdict_linearity({"median": 0.6, "null_median": 0.45}, {"median": 0.7})[0] == "no"
    pts = [("10 dB", 0.5), ("-10 dB", 0.58), ("zero-signal", 0.4)]
    curve = [{"label": lab, "weighted_median": _ci(v)} for lab, v in pts]
    assert _verdict_mechanism(curve, 0.43)[0] == "yes"
    assert _verdict_mechanism(curve, 0.57)[0] == "no"
    curve[0]["weighted_median"] = _ci(0.7)
    assert _verdict_mechanism(curve, 0.43)[0] == "partly"
    rows = [{"alpha": 1.5, "diff_vs_real": _ci(0.0), "gain_vs_t1": _ci(0.02)}, {"alpha": 3.0, "diff_vs_real": _ci(-0.5),
            "gain_vs_t1": _ci(-0.5)}]  # fmt: skip
    assert _verdict_wx(rows)[0] == "yes"
    rows[0]["gain_vs_t1"] = _ci(-0.01)
    assert _verdict_wx(rows)[0] == "partly"
    assert _verdict_logit({"diff": 0.02, "ci_low": 0.001, "ci_high": 0.04})[0] == "yes"
    assert _verdict_logit({"diff": 0.02, "ci_low": -0.01, "ci_high": 0.04})[0] == "partly"
    assert _verdict_logit({"diff": -0.02, "ci_low": -0.04, "ci_high": 0.01})[0] == "no"


def _r2(med, null):
    return {"median": med, "q1": med and med - 0.1, "q3": med and med + 0.1, "mean": med, "share_gt_0.7": 0.5, "n": 10,
            "null_median": null, "null_share_gt_0.7": 0.1}  # fmt: skip


def test_mean_numbers_and_paper_regime():
    m = _mean_numbers([_r2(0.8, 0.4), {**_r2(0.9, 0.5), "n": 13}])
    assert m["median"] == pytest.approx(0.85) and m["null_median"] == pytest.approx(0.45) and m["n"] == 12
    assert _mean_numbers([_r2(0.8, 0.4), _r2(None, 0.4)])["median"] is None

    def seed(w, lp):
        return {"rl_weights": _r2(*w), "rl_logprobs": _r2(*lp)}

    ok = seed((0.83, 0.44), (0.77, 0.38))
    assert paper_regime([ok, ok])
    assert not paper_regime([ok, seed((0.79, 0.44), (0.77, 0.38))])  # one seed's weights below 0.8
    assert not paper_regime([seed((0.83, 0.44), (0.76, 0.5))])  # log-probs only 0.26 above their null
    assert not paper_regime([seed((0.83, None), (0.77, 0.38))])


def test_verdict_robustness():
    def row(label, med, null):
        return {"label": label, "weights": {"median": med, "null_median": null}}

    rows = [row("GRPO", 0.8, 0.4), row("SGD", 0.72, 0.5)]
    rep, text = _verdict_robustness(rows)
    assert rep == "yes"
    assert text == "weight median R² per setting: GRPO 0.80, SGD 0.72; paper: 0.72-0.84 across its settings."
    rows[1] = row("SGD", 0.6, 0.5)  # above its null but below 0.7
    assert _verdict_robustness(rows)[0] == "partly"
    rows[1] = row("SGD", 0.72, 0.5)
    rows.append({**row("fast regime", 0.5, 0.45), "setting": "fast"})  # a contrast: shown, not counted
    assert _verdict_robustness(rows)[0] == "yes"
    rows.pop()
    rows[1] = row("SGD", 0.45, 0.5)  # below its null
    assert _verdict_robustness(rows)[0] == "no"
    rows[1] = row("SGD", None, 0.5)  # not computed: not above the null, and left out of the text
    rep, text = _verdict_robustness(rows)
    assert rep == "no" and text.startswith("weight median R² per setting: GRPO 0.80;")


def test_verdict_regrounding():
    def sp(cfg, v):
        return {"config": cfg, "speedup": _ci(v)}

    def budget(cfg, d):
        return {"config": cfg, "diff": _ci(d)}

    speed = [sp("4,4", 1.5), sp("4,4", 2.0), sp("8,8", 0.9), sp("8,8", None)]
    budgets = [budget("4,4", 0.02), budget("4,4", 0.0), budget("8,8", -0.01)]
    rep, text = _verdict_regrounding(speed, budgets)
    assert rep == "yes"
    assert text == ("4,4: speedups 1.50x, 2.00x; mean budget gain +0.010; 8,8: speedups 0.90x; mean budget gain "
                    "-0.010. Paper: up to 6.1x, +2.3..+6.3% at fixed budgets.")  # fmt: skip
    # one threshold reached only: not enough for yes
    assert _verdict_regrounding([sp("4,4", 1.5)], budgets[:1])[0] == "partly"
    # faster at every threshold but no budget gain: partly; a budget gain alone: partly
    assert _verdict_regrounding(speed[:2], [budget("4,4", -0.01)])[0] == "partly"
    assert _verdict_regrounding([sp("4,4", 0.8)], [budget("4,4", 0.01)])[0] == "partly"
    rep, text = _verdict_regrounding([sp("4,4", 0.8), sp("4,4", None)], [budget("4,4", -0.01)])
    assert rep == "no" and text.startswith("4,4: speedups 0.80x; mean budget gain -0.010.")
    rep, text = _verdict_regrounding([sp("4,4", None)], [])
    assert rep == "no" and "no threshold reached" in text and "mean budget gain +nan" in text


@pytest.mark.slow
def test_quick_study_end_to_end_and_rerun_skips(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLVR_LINEAR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "study"
    assert main(["study", "--quick", "-o", str(out), "--threads", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "study plan: mode quick" in first and "estimated total" in first
    assert "adamw lr 0.0003 x 128 responses" in first
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    assert res["meta"]["mode"] == "quick" and res["meta"]["seeds"] == [0]
    # the tiny protocol's stages: every section but the real-model trajectory analysis
    assert "trajectory" not in res and res["meta"]["stages"]["trajectory"]["status"] == "not run"
    for s in RUN:
        sec = res[s]
        assert sec["numbers"], s
        assert sec["reproduced"] in ("yes", "partly", "no", "n/a") and sec["verdict"]
        for f in sec["figures"]:
            assert (out / f).exists(), f
    lin = res["linearity"]["numbers"]
    # the R² numbers are those of the saved analyses (not a range a clamped value always meets), the verdict theirs
    for key in ("rl_weights", "sft_weights"):
        saved = json.loads((out / "linearity" / key / "weights.json").read_text())
        assert lin[key] == _r2_numbers(saved), key
        assert lin[key]["q1"] <= lin[key]["median"] <= lin[key]["q3"] and lin[key]["n"] > 0
        assert lin["per_seed"][0][key] == lin[key]  # one seed: its numbers are the mean
    rep = _verdict_linearity(lin["rl_weights"], lin["sft_weights"])
    assert res["linearity"]["reproduced"] == rep[0] and res["linearity"]["verdict"].startswith(rep[1])
    regime = "reached" if lin["paper_regime"] else "not reached"
    assert res["linearity"]["verdict"].endswith(f"every seed): {regime}.")
    assert lin["paper_regime"] == paper_regime(lin["per_seed"])
    assert lin["rl_weights"]["null_median"] is not None
    assert len(res["mechanism"]["numbers"]["curve"]) == 4  # 3 SNRs + zero signal
    assert res["logit_extrapolation"]["numbers"]["alpha"] == 1.5
    assert res["regrounding"]["numbers"]["thresholds"]
    assert res["weight_extrapolation"]["numbers"]["rows"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 8
    # rerun: every stage is reused, nothing is retrained
    stamps = {s: (out / s / "result.json").stat().st_mtime_ns for s in RUN}
    assert main(["study", "--quick", "-o", str(out), "--threads", "1", "--no-progress"]) == 0
    second = capsys.readouterr().out
    for s in RUN:
        assert f"[{s}] finished earlier: reusing" in second
        assert (out / s / "result.json").stat().st_mtime_ns == stamps[s]
    # a different protocol in the same folder is refused
    assert main(["study", "--quick", "-o", str(out), "--steps", "30", "--no-progress"]) == 2
    assert "holds a study with a different protocol" in capsys.readouterr().err
    if CHROMIUM:  # (checked before the run: a missing chromium skips test_report_renders_headless, not this one)
        _render_headless(out / "report.html", tmp_path)


#: chromium for the headless rendering checks (None: not installed)
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if shutil.os.path.exists("/usr/bin/chromium") else None)


def _render_headless(page: Path, tmp_path: Path) -> None:
    png = tmp_path / "shot.png"
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
         f"--user-data-dir={tmp_path / 'chrome'}", f"--screenshot={png}", "--window-size=1200,3000",
         page.as_uri()],
        check=False, timeout=120, capture_output=True,
    )  # fmt: skip
    assert png.exists() and png.stat().st_size > 10_000
    assert "Uncaught" not in proc.stderr.decode(errors="replace")  # no script errors while rendering


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: headless rendering of the report not checked")
def test_report_renders_headless(tmp_path):
    """The report of the shipped default-mode results renders in a headless browser without script errors."""
    from rlvr_linear.reporting.report import write_report

    res = json.loads((Path(__file__).resolve().parents[1] / "experiments/results/study/results.json").read_text())
    paths = write_report(res, tmp_path / "out")
    _render_headless(paths["html"], tmp_path)


def test_same_config_tolerates_fields_added_since_a_run_was_saved():
    from dataclasses import asdict

    from rlvr_linear.io import jsonable
    from rlvr_linear.training.grpo import TrainConfig

    cfg = TrainConfig(model="tiny", steps=40, save_every=10, learning_rate=3e-5)
    saved = jsonable(asdict(cfg))
    assert same_config(saved, cfg)
    older = {k: v for k, v in saved.items() if k != "reground_max_n"}  # a run saved before that field existed
    assert same_config(older, cfg)
    assert not same_config({**saved, "learning_rate": 3e-4}, cfg)
    assert not same_config({**saved, "colour": 1}, cfg)  # a field this version does not know
    assert not same_config(None, cfg)


def test_robustness_settings_follow_the_baselines_optimizer(tmp_path):
    """The optimizer settings are relative to the baseline: at SGD 3e-3 'sgd' is the baseline itself (its run is
    reused), 'adamw' is AdamW at 3e-5 and 'fast' AdamW at 3e-4; at AdamW 3e-5 the roles swap. Every RL and SFT run
    of the study trains with the study's optimizer."""
    from rlvr_linear.study import ROBUSTNESS_SETTINGS

    def runs(cfg):
        ctx = _Ctx(cfg, tmp_path, progress=False)
        ctx._base = tmp_path / "base"
        base = ctx.train_config(0)
        got = {}
        for name in ("grpo", "sgd", "adamw", "fast", "lr_x3"):
            t = ctx.train_config(0, **ROBUSTNESS_SETTINGS[name][1](cfg.learning_rate, cfg.optimizer))
            got[name] = "baseline" if t == base else (t.optimizer, t.learning_rate)
        return base, ctx.sft_config(0), got

    base, sft, got = runs(StudyConfig.for_mode("default"))
    assert (base.optimizer, base.learning_rate, sft.optimizer, sft.learning_rate) == ("sgd", 3e-3, "sgd", 3e-3)
    assert got == {"grpo": "baseline", "sgd": "baseline", "adamw": ("adamw", pytest.approx(3e-5)),
                   "fast": ("adamw", pytest.approx(3e-4)), "lr_x3": ("sgd", pytest.approx(9e-3))}  # fmt: skip
    base, sft, got = runs(StudyConfig.for_mode("default", optimizer="adamw", learning_rate=3e-5))
    assert (base.optimizer, sft.optimizer) == ("adamw", "adamw")
    assert got == {"grpo": "baseline", "sgd": ("sgd", pytest.approx(3e-3)), "adamw": "baseline",
                   "fast": ("adamw", pytest.approx(3e-4)), "lr_x3": ("adamw", pytest.approx(9e-5))}  # fmt: skip
