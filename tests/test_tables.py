"""README tables from results files (rlvr_linear.study.tables) and the README's generated blocks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.study.tables import (
    best_table,
    effects_table,
    fmt_lr,
    linearity_table,
    regime_table,
    study_table,
    table,
    update_blocks,
    wx_table,
)

ROOT = Path(__file__).resolve().parents[1]


def _mci(m, lo=None, hi=None):
    return {"mean": m, "std": 0.0, "ci_low": m if lo is None else lo, "ci_high": m if hi is None else hi, "n": 3}


def test_table_escapes_pipes_and_newlines():
    assert table(["a", "b|c"], [[1, "x\ny"]]) == "| a | b\\|c |\n|---|---|\n| 1 | x y |\n"


def test_fmt_lr():
    assert [fmt_lr(x) for x in (3e-5, 1e-4, 0.0003, 3e-3)] == ["3e-5", "1e-4", "3e-4", "3e-3"]


def _r2(med, null):
    return {"median": med, "null_median": null}


def test_study_tables():
    res = {
        "baseline": {"title": "Baseline RL runs", "reproduced": "n/a", "verdict": "RL raised accuracy"},
        "linearity": {
            "title": "Linearity",
            "reproduced": "yes",
            "verdict": "RL weights: median R² 0.830",
            "seeds": [0, 1],
            "numbers": {
                "per_seed": [
                    {"seed": s, "rl_weights": _r2(0.8 + s / 10, 0.4), "rl_logprobs": _r2(0.7, 0.3),
                     "sft_weights": _r2(0.6, 0.4), "sft_logprobs": _r2(0.5, 0.3)}
                    for s in (0, 1)
                ],  # fmt: skip
                "rl_weights": _r2(0.85, 0.4), "rl_logprobs": _r2(0.7, 0.3), "sft_weights": _r2(0.6, 0.4),
                "sft_logprobs": _r2(0.5, 0.3),
            },  # fmt: skip
        },
        "weight_extrapolation": {
            "numbers": {
                "rows": [
                    {"t0": 80, "t1": 280, "target": 480, "alpha": 2.0, "extrapolated": _mci(0.45, 0.43, 0.47),
                     "t1_checkpoint": _mci(0.44), "real_rl": _mci(0.46), "gain_vs_t1": _mci(0.01, -0.005, 0.025),
                     "diff_vs_real": _mci(-0.01, -0.02, 0.0)},
                    {"t0": 0, "t1": 140, "target": 560, "alpha": 4.0, "extrapolated": _mci(0.3),
                     "t1_checkpoint": _mci(0.4), "real_rl": _mci(0.46), "gain_vs_t1": _mci(-0.1),
                     "diff_vs_real": _mci(-0.16)},
                ]
            }
        },
    }  # fmt: skip
    st = study_table(res).splitlines()
    assert st[2] == "| Baseline RL runs | n/a | RL raised accuracy |" and st[3].startswith("| Linearity | yes |")
    assert len(st) == 5 and st[4].startswith("| weight_extrapolation | n/a |")  # absent stages left out
    lt = linearity_table(res).splitlines()
    assert lt[2] == "| seed 0 | 0.800 (0.400) | 0.700 (0.300) | 0.600 (0.400) | 0.500 (0.300) |"
    assert lt[4].startswith("| mean | 0.850 (0.400) |")
    wt = wx_table(res).splitlines()
    assert len(wt) == 3  # alpha 4 is left out
    assert wt[2] == (
        "| (80, 280) → 480 | 2.00 | 0.450 [0.430, 0.470] | 0.440 | 0.460 | +0.010 [-0.005, +0.025] "
        "| -0.010 [-0.020, +0.000] |"
    )


def test_regime_table_orders_points_and_renders_best_cases():
    best = {"predictor": "rank1", "t0": 200, "t1": 500, "alpha": 2.0, "target": 800.0,
            "gain_vs_t1_greedy": {"mean": 0.017, "lo": 0.006, "hi": 0.028, "n": 1},
            "gain_vs_real_greedy": {"mean": -0.002, "lo": -0.013, "hi": 0.009, "n": 1}}  # fmt: skip

    def point(w):
        one = {"mean": w, "lo": w, "hi": w, "n": 1}
        return {"seeds": [0], "val_accuracy_start": {"mean": 0.335}, "val_accuracy_end": {"mean": 0.4},
                "weights": {"median": one, "null_median": {"mean": 0.43}},
                "logprobs": {"median": one, "null_median": {"mean": 0.4}},
                "forecast_ratio": {"q2": {"mean": 0.63, "lo": 0.6, "hi": 0.7, "n": 2}},
                "best_weight_extrapolation": best, "best_logit_extrapolation": None}  # fmt: skip

    m = {"points": {"lr3e-4_r128": point(0.58), "lr1e-5_r512": point(0.93), "lr1e-5_r128": point(0.9)}}
    rows = regime_table(m).splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| 1e-5", "128"], ["| 1e-5", "512"], ["| 3e-4", "128"]]
    assert "| 0.900 (0.430) |" in rows[0] and "| 0.63 [0.60, 0.70] |" in rows[0]
    assert "rank-1 (200, 500) → 800, α 2: +0.017 [+0.006, +0.028] (vs real: -0.002 [-0.013, +0.009])" in rows[0]
    assert rows[0].endswith("| n/a |")


def test_progress_line_groups_points_by_seeds():
    from rlvr_linear.study.tables import progress_line

    m = {"queue": {"items": 57, "trained": 32, "analysed": 32},
         "points": {"lr3e-5_r128": {"seeds": [0, 1, 2], "reground": {"spec": "40,40"}},
                    "lr1e-5_r128": {"seeds": [0, 1, 2], "reground": None},
                    "lr3e-3_r128_sgd": {"seeds": [0]}, "lr3e-5_r128_cot_sft": {"seeds": [0]}}}  # fmt: skip
    line = progress_line(m)
    assert "32 of 57 queue items trained and analysed" in line
    assert "Points with 3 seeds: 1e-5×128, 3e-5×128; 1 seed: 3e-5×128 cot sft, 3e-3×128 sgd." in line
    assert "Re-grounding measured at 1 point: 3e-5×128. The rest is queued" in line
    m["queue"]["trained"] = 57
    line = progress_line(m)
    assert line.startswith("**What the map holds** (rendered from the map): 57 of 57 queue items")
    assert "queued" not in line and line.endswith("3e-5×128. A point with one seed is a lead, not a result.\n")


def test_effects_table_splits_points_by_each_criterion():
    def point(w, null, ratio, gain_lo):
        one = lambda m: {"mean": m, "lo": m, "hi": m, "n": 1}  # noqa: E731
        best = {"gain_vs_t1_greedy": {"mean": gain_lo + 0.01, "lo": gain_lo, "hi": gain_lo + 0.02, "n": 1}}
        return {"weights": {"median": one(w), "null_median": one(null)},
                "logprobs": {"median": one(w), "null_median": one(null)},
                "forecast_ratio": {"q2": one(ratio)}, "best_weight_extrapolation": best}  # fmt: skip

    m = {"points": {"lr1e-5_r128": point(0.9, 0.43, 0.63, 0.006), "lr3e-4_r128": point(0.81, 0.52, 1.3, -0.01)}}
    rows = {r.split(" | ")[0].lstrip("| ").split(" (")[0]: r for r in effects_table(m).splitlines()[2:]}
    # 0.81 clears 0.8 but not null + 0.3 = 0.82
    assert rows["weight linearity"].endswith("| 1e-5×128: 0.900 (null 0.430) | 3e-4×128: 0.810 (null 0.520) |")
    assert "| 1e-5×128: 0.63 | 3e-4×128: 1.30 |" in rows["a line forecasts the weights"]
    assert "| 1e-5×128: +0.016 [+0.006, +0.026] |" in rows["weight extrapolation beats its t1 checkpoint"]
    assert rows["logit extrapolation beats its t1 checkpoint"].endswith("| nowhere | 1e-5×128: n/a; 3e-4×128: n/a |")
    assert rows["RL more linear than SFT"].endswith("| nowhere | — |")  # no point has an SFT contrast yet

    # SFT contrast points: only in the RL − SFT row, through their RL point
    m["points"]["lr1e-5_r128"]["rl_minus_sft"] = {"weights": 0.02, "sft_weights": 0.88}
    m["points"]["lr3e-4_r128"]["rl_minus_sft"] = {"weights": 0.12, "sft_weights": 0.69}
    m["points"]["lr1e-5_r128_sft"] = point(0.88, 0.43, 9.0, -1.0)
    # a long-response point's twin is named <point>_sft too ("lr3e-5_r128_cot_sft")
    m["points"]["lr3e-5_r128_cot"] = {**point(0.7, 0.43, 0.9, -0.02), "rl_minus_sft": {"weights": -0.05,
                                                                                      "sft_weights": 0.75}}
    m["points"]["lr3e-5_r128_cot_sft"] = point(0.75, 0.43, 9.0, -1.0)
    rows = {r.split(" | ")[0].lstrip("| ").split(" (")[0]: r for r in effects_table(m).splitlines()[2:]}
    assert rows["RL more linear than SFT"].endswith(
        "| 3e-4×128: +0.120 (SFT 0.690) | 1e-5×128: +0.020 (SFT 0.880); 3e-5×128 cot: -0.050 (SFT 0.750) |")
    assert "sft" not in "".join(rows.values())


def test_best_table():
    b = {"point": "lr1e-5_r512", "case": "weight_two_point_200_500_a2", "predictor": "two_point", "t0": 200,
         "t1": 500, "alpha": 2.0, "target": 800.0, "seeds": [0, 1],
         "gain_vs_t1_greedy": {"mean": 0.027, "lo": 0.014, "hi": 0.04, "n": 2},
         "gain_vs_real_greedy": None}  # fmt: skip
    rows = best_table({"best": {"weight": b, "logit": None, "regrounding": {"point": "lr3e-5_r128", "spec": "40,40",
                                "threshold": 0.4, "speedup": 1.5}}}).splitlines()[2:]  # fmt: skip
    assert rows[0] == ("| weight extrapolation | lr 1e-5, 512 responses: two-point (200, 500) → 800, α 2 (2 seed(s)) "
                       "| +0.027 [+0.014, +0.040] | no real checkpoint at the target |")  # fmt: skip
    assert rows[1].startswith("| logit extrapolation | not measured yet |")
    assert "speed-up 1.50× to threshold 0.400" in rows[2]


def test_update_blocks():
    text = "a\n<!-- BEGIN t -->\nold\n<!-- END t -->\nb\n"
    assert update_blocks(text, {"t": "new\n"}) == "a\n<!-- BEGIN t -->\nnew\n<!-- END t -->\nb\n"
    with pytest.raises(RlvrLinearError, match="expected one block '<!-- BEGIN u -->'"):
        update_blocks(text, {"u": "x"})


def test_pages_blocks_are_rendered_from_the_committed_results():
    """README.md and docs/*.md quote exactly what the results files hold (run experiments/render_readme.py after new
    results); each generated block lives in exactly one page."""
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "render_readme.py"), "--check"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    m = json.loads((ROOT / "experiments" / "results" / "regime_map.json").read_text())
    assert sum(regime_table(m) in p.read_text() for p in pages) == 1
    res = json.loads((ROOT / "experiments" / "results" / "study" / "results.json").read_text())
    assert sum(study_table(res) in p.read_text() for p in pages) == 1


def _render_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "experiments" / "render_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _repo_with_pages(tmp_path, mod, monkeypatch, pages: dict[str, str]) -> dict[str, Path]:
    """A repository in tmp_path holding ``pages`` (path relative to the root: text), the render module pointed at it
    (its blocks still come from the committed results files)."""
    (tmp_path / "docs").mkdir()
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(mod, "REPO", tmp_path)
    return {name: tmp_path / name for name in pages}


def _blocks_text(blocks: dict[str, str], names, body=None) -> str:
    return "".join(f"<!-- BEGIN {n} -->\n{blocks[n] if body is None else body}<!-- END {n} -->\n" for n in names)


def test_render_readme_reports_a_missing_block_in_one_line(tmp_path, monkeypatch, capsys):
    mod = _render_module()
    pages = _repo_with_pages(tmp_path, mod, monkeypatch,
                             {"README.md": "# no generated blocks here\n", "docs/a.md": "# nor here\n"})  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["render_readme.py"])
    assert mod.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: expected block '<!-- BEGIN ") and err.count("\n") == 1
    assert "in exactly one page (README.md, docs/*.md), found in none of them" in err
    assert pages["README.md"].read_text() == "# no generated blocks here\n"


def test_render_readme_refuses_a_block_in_two_pages(tmp_path, monkeypatch, capsys):
    mod = _render_module()
    blocks = mod.blocks()
    twice = {"README.md": _blocks_text(blocks, blocks), "docs/results.md": _blocks_text(blocks, ["regime"], "x\n")}
    _repo_with_pages(tmp_path, mod, monkeypatch, twice)
    monkeypatch.setattr(sys, "argv", ["render_readme.py", "--check"])
    assert mod.main() == 2
    assert capsys.readouterr().err == (
        "error: expected block '<!-- BEGIN regime -->' ... '<!-- END regime -->' in exactly one page "
        "(README.md, docs/*.md), found in README.md, docs/results.md\n"
    )


def test_render_readme_checks_every_page_and_leaves_unknown_blocks(tmp_path, monkeypatch, capsys):
    mod = _render_module()
    blocks = mod.blocks()
    names = list(blocks)
    readme = "# r\n<!-- BEGIN headline -->\nby hand\n<!-- END headline -->\n" + _blocks_text(blocks, names[:4])
    pages = _repo_with_pages(tmp_path, mod, monkeypatch, {
        "README.md": readme, "docs/results.md": "# results\n" + _blocks_text(blocks, names[4:], "old\n"),
        "docs/other.md": "# other\n"})  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["render_readme.py", "--check"])
    assert mod.main() == 1
    assert capsys.readouterr().err == "docs/results.md is out of date: run python experiments/render_readme.py\n"
    assert "old\n<!-- END " in pages["docs/results.md"].read_text()  # --check writes nothing
    monkeypatch.setattr(sys, "argv", ["render_readme.py"])
    assert mod.main() == 0
    assert pages["README.md"].read_text() == readme  # the hand-written headline block is left as it is
    assert pages["docs/results.md"].read_text() == "# results\n" + _blocks_text(blocks, names[4:])
    monkeypatch.setattr(sys, "argv", ["render_readme.py", "--check"])
    assert mod.main() == 0
