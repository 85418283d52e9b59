"""The regime map (rlvr_linear.regime): grid and queue, the --quick map end to end, resume and caching."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import read_json, write_json
from rlvr_linear.regime import cases as regime_cases
from rlvr_linear.regime import grid
from rlvr_linear.regime.grid import Item, main_grid, queue
from rlvr_linear.regime.store import needed_parts as store_needed

CASE_KEYS = {"point", "run", "seed", "t0", "t1", "target", "alpha", "predictor", "space", "n_problems", "acc_t1",
             "acc_x", "acc_real_target", "gain_vs_t1", "gain_vs_real", "forecast_ratio"}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Grid and queue (fast)


def test_main_grid_horizons_and_checkpoints():
    pts = main_grid()
    assert sorted({(p.lr, p.responses) for p in pts}) == sorted(
        (lr, r) for lr in (1e-5, 3e-5, 1e-4, 3e-4) for r in (128, 512, 1024)
    )
    for p in pts:
        assert p.horizon == p.save_every * 14  # 15 checkpoints including step 0
        assert p.prompts * p.group == p.responses
        assert p.optimizer == "adamw" and p.task == "arithmetic"
    assert {p.horizon for p in pts if p.lr == 1e-5} == {1400}
    lr_h = [p.lr * p.horizon for p in pts]
    assert max(lr_h) / min(lr_h) < 2.5


def test_queue_order_seed0_then_contrasts_then_seeds_row_by_row_then_reground():
    q = queue(cot_available=True)
    kinds = [("reground" if i.reground else i.point.kind, i.seed) for i in q]
    assert kinds[:12] == [("main", 0)] * 12 and all(i.full for i in q[:12])
    contrast = [k for k in kinds[12:] if k[0] in ("sgd", "cot") and k[1] == 0]
    assert contrast and kinds[12 : 12 + len(contrast)] == contrast
    rest = kinds[12 + len(contrast) :]
    row = [("main", 1), ("main", 2)] * 4
    sft = [("sft", 0)] * 12  # the SFT contrast of every main-grid point, after the 512 row
    assert rest[:38] == row + [("sgd", 1), ("sgd", 2)] + row + sft + row
    seeds = [i for i in q[12 + len(contrast) :][:38] if i.point.kind == "main"]
    assert [i.point.responses for i in seeds] == [128] * 8 + [512] * 8 + [1024] * 8
    # within a row: shortest horizon first, both seeds of a point together
    for k in range(0, 24, 8):
        assert [(i.point.horizon, i.seed) for i in seeds[k : k + 8]] == [
            (h, s) for h in (112, 280, 560, 1400) for s in (1, 2)
        ]
    assert {(i.point.lr, i.point.horizon) for i in q if i.point.kind == "sgd" and i.seed > 0} == {(3e-3, 560)}
    assert rest[38:] == [("reground", 0)] * 12 + [("sft", 0)] * 2 + [("cot", 1), ("cot", 2), ("sft", 1), ("sft", 2)] * 2
    cot = [p for p in grid.contrast_points() if p.kind == "cot"]
    sft0 = [i.point.name for i in q if i.point.kind == "sft" and i.seed == 0]
    assert sft0 == [p.name + "_sft" for p in grid.main_grid() + cot]
    assert [i.run_name for i in q[-10:]] == [
        "lr3e-5_r128_cot_sft_s0", "lr1e-4_r128_cot_sft_s0", "lr1e-4_r128_cot_s1", "lr1e-4_r128_cot_s2",
        "lr1e-4_r128_cot_sft_s1", "lr1e-4_r128_cot_sft_s2", "lr3e-5_r128_cot_s1", "lr3e-5_r128_cot_s2",
        "lr3e-5_r128_cot_sft_s1", "lr3e-5_r128_cot_sft_s2"]  # fmt: skip
    assert len({i.run_name for i in q}) == len(q)
    for p in [i.point for i in q if i.point.kind == "sgd"]:  # SGD at 100x an AdamW rate, that rate's horizon
        lr = round(p.lr / 100, 12)
        assert lr in grid.LRS and p.horizon == grid.HORIZON[lr]
    assert not [i for i in queue(cot_available=False) if i.point.task != "arithmetic"]


def test_sft_contrast_points_match_their_rl_point():
    from rlvr_linear.training.sft import SFTConfig

    rls = grid.main_grid() + [p for p in grid.contrast_points() if p.kind == "cot"]
    for rl, sft in zip(rls, grid.sft_points(rls)):
        assert sft.kind == "sft" and sft.name == rl.name + "_sft" and rl.kind in ("main", "cot")
        cfg = sft.train_config(1)
        assert isinstance(cfg, SFTConfig)
        assert (cfg.learning_rate, cfg.optimizer, cfg.steps, cfg.save_every, cfg.batch_size, cfg.seed, cfg.threads) == (
            rl.lr, rl.optimizer, rl.horizon, rl.save_every, rl.responses // 8, 1, 1)
        assert (cfg.task, cfg.model) == (rl.task, rl.model)
        assert cfg.noise_snr_db is None and not cfg.zero_signal
        assert regime_cases.plan(Item(sft, 0, full=False)) == []
        assert store_needed(Item(sft, 0, full=False)) == ("train", "weights", "logprobs")


def test_case_plan_windows_targets_and_reductions():
    p = grid.main_point(1e-4, 512)  # H = 280, u = 20
    full = regime_cases.plan(Item(p, 0, full=True))
    red = regime_cases.plan(Item(p, 1, full=False))
    assert {(c["t0"], c["t1"]) for c in full if c["space"] == "weight"} == {
        (t0, t1) for t0 in (0, 40) for t1 in (100, 140, 280)
    }
    for c in full + red:
        assert c["target"] == pytest.approx(c["t0"] + c["alpha"] * (c["t1"] - c["t0"]))
    w = [c for c in full if c["space"] == "weight"]
    assert len(w) == 6 * (4 + 2 + 2) and {c["predictor"] for c in w} == {"two_point", "lsq", "rank1"}
    assert {c["alpha"] for c in w if c["predictor"] == "two_point"} == {1.25, 1.5, 2.0, 3.0}
    assert {c["alpha"] for c in w if c["predictor"] != "two_point"} == {1.5, 2.0}
    assert len([c for c in full if c["space"] == "logit"]) == 4 * 2
    assert len(red) == 4 * 2 * 2 and {c["predictor"] for c in red} == {"two_point", "lsq"}
    assert len({c["id"] for c in full}) == len(full)


def test_study_stage_is_opt_in():
    from rlvr_linear.study import STAGES, parse_stages

    assert "regime" not in parse_stages(None) and "regime" not in STAGES
    assert parse_stages("regime") == ["regime"]
    assert parse_stages("report,regime") == ["regime", "report"]
    with pytest.raises(RlvrLinearError, match="unknown stages"):
        parse_stages("regimes")


def test_render_only_needs_the_regime_stage(tmp_path, capsys):
    from rlvr_linear.cli import main

    rc = main(["study", "--stages", "baseline", "--render-only", "-o", str(tmp_path / "o")])
    assert rc == 2
    assert "--render-only goes with --stages regime" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The quick map end to end (slow: ~2 min on 2 cores)


@pytest.fixture(scope="module")
def quick_map(tmp_path_factory):
    from rlvr_linear.regime import run_regime

    out = tmp_path_factory.mktemp("regime") / "map"
    t0 = time.time()
    res = run_regime(out, quick=True)
    return out, res, time.time() - t0


def _cases(out):
    return [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_quick_map_end_to_end(quick_map):
    out, res, _ = quick_map
    m = read_json(out / "regime_map.json")
    assert m == json.loads(json.dumps(res))
    assert set(m["points"]) == {"lr3e-4_r16", "lr1e-3_r16", "lr3e-4_r32", "lr1e-3_r32", "lr3e-4_r16_sft"}
    # the summary's largest single-run gain names the case it was selected from
    top = max(_cases(out), key=lambda c: c["gain_vs_t1"]["greedy"]["mean"])
    g = top["gain_vs_t1"]["greedy"]
    assert m["summary"].endswith(
        f"largest single-run greedy gain over t1 {g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] ({top['point']} "
        f"seed {top['seed']}, {top['space']} {top['predictor']} ({top['t0']}, {top['t1']}) -> {top['target']:g}, "
        f"alpha {top['alpha']:g})")
    assert m["queue"] == {"items": 6, "trained": 6, "analysed": 6}
    # the SFT contrast: linearity only, and the RL point's difference to it
    sft = m["points"]["lr3e-4_r16_sft"]
    for d in (sft["weights"]["median"], sft["weights"]["null_median"], sft["logprobs"]["median"]):
        assert 0.0 <= d["mean"] <= 1.0
    assert sft["n_cases"] == 0 and sft["best_weight_extrapolation"] is None and sft["forecast_ratio"]["q2"] is None
    d = m["points"]["lr3e-4_r16"]["rl_minus_sft"]
    for part in ("weights", "logprobs"):
        rl = m["points"]["lr3e-4_r16"][part]["median"]["mean"]
        assert d[part] == pytest.approx(rl - sft[part]["median"]["mean"], abs=2e-4)
        assert d[f"sft_{part}"] == sft[part]["median"]["mean"]
    assert d["sft_seeds"] == [0] and "rl_minus_sft" not in m["points"]["lr1e-3_r16"]
    sft_man = read_json(out / "runs" / "lr3e-4_r16_sft_s0" / "manifest.json")
    assert sft_man["kind"] == "sft" and sft_man["config"]["batch_size"] == 4  # 16 responses = 4 prompts x 4
    assert sft_man["config"]["learning_rate"] == 3e-4 and sft_man["config"]["steps"] == 16
    for p in (v for k, v in m["points"].items() if not k.endswith("_sft")):
        w, lp = p["weights"], p["logprobs"]
        for d in (w["median"], w["share_gt_0.7"], w["null_median"], lp["median"], lp["null_median"]):
            assert 0.0 <= d["mean"] <= 1.0
        assert w["median_minus_null"]["mean"] == pytest.approx(w["median"]["mean"] - w["null_median"]["mean"], abs=2e-4)
        assert w["drift_to_noise_median"]["mean"] > 0
        for q in ("q1", "q2"):
            assert p["forecast_ratio"][q]["mean"] > 0
        b = p["best_weight_extrapolation"]
        for g in (b["gain_vs_t1_greedy"], b["per_seed"][0]["gain_vs_t1"]["greedy"]):
            assert g["lo"] <= g["mean"] <= g["hi"]
        assert b["gain_vs_t1_greedy"]["mean"] == pytest.approx(b["per_seed"][0]["acc_x"] - b["per_seed"][0]["acc_t1"],
                                                               abs=1e-3)  # fmt: skip
        assert 0 <= p["val_accuracy_start"]["mean"] <= 1
    full = m["points"]["lr3e-4_r16"]
    assert full["best_logit_extrapolation"] is not None
    rg = full["reground"]
    assert rg["spec"] == "2,2" and rg["gradient_steps"] == 8 and len(rg["thresholds"]) == 2
    assert rg["std_curve"]["steps"] == [0, 2, 4, 6, 8]
    for f in m["figures"]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(m["figures"]) == 5 and "regime_rl_minus_sft.png" in m["figures"]
    # the best gain over the map, whatever its sign: the point whose best case gains most over t1
    best = m["best"]["weight"]
    top = max((p for p in m["points"].values() if p["best_weight_extrapolation"]),
              key=lambda p: p["best_weight_extrapolation"]["gain_vs_t1_greedy"]["mean"])
    assert best["gain_vs_t1_greedy"] == top["best_weight_extrapolation"]["gain_vs_t1_greedy"]
    assert m["best"]["logit"]["point"] == "lr3e-4_r16"  # the only point with logit cases
    speed = [r["speedup"] for r in rg["thresholds"] if r["speedup"] is not None]
    assert (m["best"]["regrounding"] or {}).get("speedup") == (max(speed) if speed else None)


@pytest.mark.slow
def test_quick_map_cases_file(quick_map):
    out, res, _ = quick_map
    cases = _cases(out)
    assert len(cases) == sum(p["n_cases"] for p in res["points"].values())
    expect = sum(len(regime_cases.plan(i)) for i in queue(quick=True) if not i.reground)
    assert len(cases) == expect
    for c in cases:
        assert CASE_KEYS <= set(c)
        assert c["n_problems"] == 100
        assert c["target"] == pytest.approx(c["t0"] + c["alpha"] * (c["t1"] - c["t0"]))
        for v in (c["acc_t1"], c["acc_x"]):
            assert 0 <= v <= 1
        g = c["gain_vs_t1"]["greedy"]
        assert g["lo"] <= g["mean"] <= g["hi"]
        assert g["mean"] == pytest.approx(c["acc_x"] - c["acc_t1"], abs=1e-3)
        assert (c["gain_vs_real"] is None) == (c["acc_real_target"] is None) == (c["target"] > c["horizon"])
        if c["gain_vs_real"] is not None:
            assert c["gain_vs_real"]["greedy"]["mean"] == pytest.approx(c["acc_x"] - c["acc_real_target"], abs=1e-3)
        if c["predictor"] == "two_point" and c["alpha"] in (1.5, 2.0) and c["point"] == "lr3e-4_r16":
            a = c["gain_vs_t1"]["avg_k"]  # full items score avg@k on these two-point cases
            assert a["lo"] <= a["mean"] <= a["hi"]
            assert a["mean"] == pytest.approx(c["avg_k"]["acc_x"] - c["avg_k"]["acc_t1"], abs=1e-3)
    assert {c["space"] for c in cases} == {"weight", "logit"}
    assert not any((out / "tmp").rglob("*.safetensors"))  # extrapolated models deleted after scoring


@pytest.mark.slow
def test_quick_map_resume_reuses_and_killed_point_resumes(quick_map):
    from rlvr_linear.regime import run_regime

    out, res, first_s = quick_map
    stamps = {p: os.stat(p).st_mtime_ns for p in out.rglob("*") if p.is_file() and "parts.json" in p.name}
    t0 = time.time()
    again = run_regime(out, quick=True)
    assert again["points"] == res["points"]
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # nothing recomputed
    assert time.time() - t0 < first_s / 2

    # a point killed mid-training: manifest up to step 8, later checkpoints gone, no analysis yet
    run = out / "runs" / "lr1e-3_r32_s0"
    man = read_json(run / "manifest.json")
    man["checkpoints"] = [c for c in man["checkpoints"] if c["step"] <= 8]
    man.pop("finished")
    write_json(run / "manifest.json", man)
    for d in run.glob("step_*"):
        if int(d.name.split("_")[1]) > 8:
            shutil.rmtree(d)
    shutil.rmtree(out / "analysis" / "lr1e-3_r32_s0")
    other = out / "analysis" / "lr3e-4_r16_s0" / "parts.json"
    other_stamp = os.stat(other).st_mtime_ns
    run_regime(out, quick=True)
    man = read_json(run / "manifest.json")
    assert man["finished"] and [c["step"] for c in man["checkpoints"]] == list(range(0, 17, 2))
    parts = read_json(out / "analysis" / "lr1e-3_r32_s0" / "parts.json")
    assert len(parts["cases"]) == len(regime_cases.plan(Item(grid.quick_grid()[3], 0, full=False)))
    assert os.stat(other).st_mtime_ns == other_stamp
    assert len(_cases(out)) == sum(len(regime_cases.plan(i)) for i in queue(quick=True) if not i.reground)

    good = read_json(run / "manifest.json")  # a folder holding another setting is refused, not overwritten
    bad = json.loads(json.dumps(good))
    bad["config"]["learning_rate"] = 0.5
    write_json(run / "manifest.json", bad)
    try:
        with pytest.raises(RlvrLinearError, match="another config"):
            run_regime(out, quick=True)
    finally:
        write_json(run / "manifest.json", good)


@pytest.mark.slow
def test_report_section_leads_when_the_map_is_present(quick_map, tmp_path):
    from rlvr_linear.reporting.report import regime_html

    out, res, _ = quick_map
    assert regime_html(tmp_path / "regime", str) == ""
    (tmp_path / "regime").mkdir()
    for f in ["regime_map.json", *res["figures"]]:
        shutil.copyfile(out / f, tmp_path / "regime" / f)
    seen = []
    h = regime_html(tmp_path / "regime", lambda p: seen.append(p) or f"<img {p}>")
    assert h.startswith("<h2 id='regime'>Regime map</h2>")
    assert seen == [tmp_path / "regime" / f for f in res["figures"]]
    for name in res["points"]:
        assert f"<td>{name}</td>" in h


def test_held_out_set_is_validation_plus_test_never_train():
    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.regime.analysis import Scorer

    s = Scorer("arithmetic", quick=False)
    task = get_task("arithmetic")
    val, test = task.problems("validation", None), task.problems("test", None)
    assert [p.id for p in s.problems] == [p.id for p in val + test] and len(s.problems) >= 2000
    assert not {p.prompt for p in s.problems} & {p.prompt for p in task.problems("train", None)}
    cot = Scorer("arithmetic-cot", quick=False)  # sampled task: 1,000 per split
    assert len({p.id for p in cot.problems}) == 2000
    assert len(Scorer("arithmetic", quick=True).problems) == 100


# --------------------------------------------------------------------------------------------------
# Records (regime.store): the map resumes from committed per-run analyses, without checkpoints


def test_record_is_complete_only_when_marked_for_its_item_at_current_versions():
    from rlvr_linear.regime.analysis import VERSIONS
    from rlvr_linear.regime.store import is_complete

    item = Item(grid.main_point(1e-4, 128), 1, full=False)
    parts = {"meta": {"point": item.point.name, "seed": 1, "reground": False}, "complete": True,
             **{k: {"version": VERSIONS[k]} for k in ("train", "weights", "logprobs", "forecast")}}  # fmt: skip
    assert is_complete(parts, item)
    assert not is_complete({**parts, "complete": False}, item)
    assert not is_complete(parts, Item(item.point, 2, full=False))  # another seed's record
    assert not is_complete(parts, Item(item.point, 1, full=True, reground=True))
    assert not is_complete({**parts, "weights": {"version": VERSIONS["weights"] + 1}}, item)  # a bumped part
    assert not is_complete({k: v for k, v in parts.items() if k != "logprobs"}, item)


@pytest.mark.slow
def test_quick_map_resumes_from_records_without_checkpoints(quick_map, tmp_path):
    """Records exported with the results let a machine without ``out/`` render the same map, training nothing."""
    from rlvr_linear.regime import run_regime

    out, res, _ = quick_map
    results = tmp_path / "results"
    now = run_regime(out, quick=True, render_only=True, results_dir=results)  # (another test re-ran a point)
    recs = sorted(p.name for p in (results / "regime_runs").glob("*.json"))
    assert recs == sorted(f"{i.run_name}.json" for i in queue(quick=True))
    fresh = tmp_path / "fresh"
    again = run_regime(fresh, quick=True, results_dir=results)
    assert not (fresh / "runs").exists()  # nothing trained
    assert again["points"] == now["points"] and again["queue"] == now["queue"] == res["queue"]


@pytest.mark.slow
def test_records_rebuilt_from_a_rendered_map_render_back_to_it(quick_map, tmp_path):
    from rlvr_linear.io import write_json
    from rlvr_linear.regime import Regime
    from rlvr_linear.regime.render import render
    from rlvr_linear.regime.store import parts_from_map

    out, _, _ = quick_map
    m = read_json(out / "regime_map.json")
    reg = Regime(tmp_path / "rebuilt", quick=True)
    recs = parts_from_map(m, _cases(out), reg.items(), reg.run_dir)
    assert sorted(recs) == sorted(i.run_name for i in queue(quick=True))
    for name, parts in recs.items():
        assert parts["meta"]["recovered"] == "regime_map.json" and parts["complete"]
        write_json(reg.out / "analysis" / name / "parts.json", parts)
    back = render(reg)
    assert back["points"] == m["points"] and back["best"] == m["best"] and back["summary"] == m["summary"]
    assert (reg.out / "cases.jsonl").read_text() == (out / "cases.jsonl").read_text()
    two = {**m, "points": {k: {**p, "seeds": [0, 1]} for k, p in m["points"].items()}}  # multi-seed: not split
    assert parts_from_map(two, _cases(out), reg.items(), reg.run_dir) == {}


def test_workers_split_the_queue_and_clean_only_their_own_tmp(tmp_path):
    from rlvr_linear.regime.runner import Regime

    items = queue(quick=True)
    shares = [Regime(tmp_path, quick=True, worker=(k, 2)).my_items() for k in (0, 1)]
    assert [i for i, _ in shares[0]] == list(range(0, len(items), 2))
    assert sorted(i for s in shares for i, _ in s) == list(range(len(items)))
    assert [it for _, it in Regime(tmp_path, quick=True).my_items()] == items
    mine, other = shares[0][0][1], shares[1][0][1]
    for it in (mine, other):
        (tmp_path / "tmp" / it.run_name).mkdir(parents=True)
    Regime(tmp_path, quick=True, worker=(0, 2)).clean_tmp()
    assert not (tmp_path / "tmp" / mine.run_name).exists()
    assert (tmp_path / "tmp" / other.run_name).exists()  # another worker may be scoring there
    Regime(tmp_path, quick=True).clean_tmp()
    assert not (tmp_path / "tmp").exists()
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(RlvrLinearError, match="worker must be"):
            Regime(tmp_path, worker=bad)


def test_script_refuses_a_bad_worker_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "regime.py"
    for arg, msg in (("2/2", "error: worker must be (k, n) with 0 <= k < n, got (2, 2)"),
                     ("abc", "--worker takes K/N (e.g. 0/2), got 'abc'")):  # fmt: skip
        p = subprocess.run([sys.executable, str(script), "--worker", arg, "--out", str(tmp_path)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()  # nothing trained
