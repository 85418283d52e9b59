"""Markdown tables rendered from the results files, so that the README quotes exactly what the runs wrote.

The README holds generated blocks between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers;
:func:`update_blocks` replaces them and ``experiments/render_readme.py`` writes (or ``--check`` s) the README. The
same files feed the HTML report (``reporting/report.py``), so the README and the report have one source of truth:

* ``study``: the study's ``results.json`` (``rlvr-linear study``), one row per stage, and the linearity per seed;
* ``regime``: the regime map's ``regime_map.json`` (``rlvr-linear study --stages regime``), one row per point.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RlvrLinearError
from .linearity import PAPER_MARGIN, PAPER_REGIME, SFT_MARGIN

#: the study's sections in README order (the report's order)
STUDY_ROWS = ("baseline", "linearity", "robustness", "mechanism", "weight_extrapolation", "logit_extrapolation",
              "regrounding")  # fmt: skip


def _f(v: Any, nd: int = 3, sign: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped, one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# the study


def _mci(d: dict | None, nd: int = 3, sign: bool = False) -> str:
    """``mean [lo, hi]`` of an ``evaluation.mean_ci`` dict (``ci_low``/``ci_high``) or a map dict (``lo``/``hi``)."""
    if not d or d.get("mean") is None:
        return "n/a"
    lo, hi = d.get("ci_low", d.get("lo")), d.get("ci_high", d.get("hi"))
    if lo is None or hi is None or lo == hi:
        return _f(d["mean"], nd, sign)
    return f"{_f(d['mean'], nd, sign)} [{_f(lo, nd, sign)}, {_f(hi, nd, sign)}]"


def study_table(results: dict) -> str:
    """One row per stage: whether the paper's effect reproduced, and the stage's verdict (its numbers)."""
    rows = []
    for name in STUDY_ROWS:
        sec = results.get(name)
        if not sec:
            continue
        rows.append([sec.get("title", name), sec.get("reproduced", "n/a"), sec.get("verdict", "")])
    return table(["stage", "reproduced?", "ours (the stage's verdict, with its numbers)"], rows)


def linearity_table(results: dict) -> str:
    """RL and SFT weight / log-prob R² medians with their nulls, per seed and as the mean over seeds."""
    n = results["linearity"]["numbers"]
    per_seed = n.get("per_seed") or [{"seed": results["linearity"]["seeds"][0], **{k: n[k] for k in
                                      ("rl_weights", "rl_logprobs", "sft_weights", "sft_logprobs")}}]  # fmt: skip

    def row(label: str, r: dict) -> list[str]:
        return [label] + [
            f"{_f(r[k]['median'])} ({_f(r[k]['null_median'])})"
            for k in ("rl_weights", "rl_logprobs", "sft_weights", "sft_logprobs")
        ]

    rows = [row(f"seed {r['seed']}", r) for r in per_seed]
    if len(per_seed) > 1:
        rows.append(row("mean", n))
    head = ["", "RL weights R² (null)", "RL token log-probs R² (null)", "SFT weights R² (null)",
            "SFT token log-probs R² (null)"]  # fmt: skip
    return table(head, rows)


def wx_table(results: dict) -> str:
    """The weight-extrapolation rows at alpha <= 2 (mean over seeds, t-based 95% CI)."""
    n = results["weight_extrapolation"]["numbers"]
    rows = [
        [f"({r.get('t0', 0)}, {r['t1']}) → {r['target']}", _f(r["alpha"], 2), _mci(r["extrapolated"]),
         _mci(r["t1_checkpoint"]), _mci(r["real_rl"]), _mci(r["gain_vs_t1"], sign=True),
         _mci(r["diff_vs_real"], sign=True)]
        for r in n["rows"] if r["alpha"] <= 2.0
    ]  # fmt: skip
    head = ["(t0, t1) → target", "α", "extrapolated", "t1 checkpoint", "real RL at target", "− t1", "− real"]
    return table(head, rows)


def robustness_table(results: dict) -> str:
    """Weight and log-prob R² median (null) and final validation accuracy per setting (seed 0)."""
    rows = [
        [r["label"], f"{_f(r['weights']['median'])} ({_f(r['weights']['null_median'])})",
         f"{_f(r['logprobs']['median'])} ({_f(r['logprobs']['null_median'])})", _f(r["val_accuracy_end"])]
        for r in results["robustness"]["numbers"]["settings"]
    ]  # fmt: skip
    return table(["setting", "weights R² median (null)", "log-probs R² median (null)", "final validation greedy"], rows)


def regrounding_table(results: dict) -> str:
    """Gradient steps to each threshold per seed (standard vs re-grounded), speed-up and accuracy at fixed budgets."""
    n = results["regrounding"]["numbers"]
    rows = []
    for r in n["speedups"]:
        rows.append([
            r["config"], _f(r["threshold"]), ", ".join(map(str, r["std_steps"])),
            ", ".join("—" if x is None else str(x) for x in r["reground_steps"]), r["reached"],
            _mci(r["speedup"], 2),
        ])  # fmt: skip
    head = ["(M, N)", "threshold", "standard: steps per seed", "re-grounded: steps per seed", "reached",
            "speed-up, mean [95% CI over seeds]"]  # fmt: skip
    out = table(head, rows)
    rows = [
        [b["config"], b["gradient_steps"], _mci(b["standard"]), _mci(b["reground"]), _mci(b["diff"], sign=True),
         _mci({**b["pooled_paired_bootstrap"], "mean": b["pooled_paired_bootstrap"]["diff"]}, sign=True)]
        for b in n["fixed_budgets"]
    ]  # fmt: skip
    head = ["(M, N)", "gradient steps", "standard", "re-grounded", "difference [CI over seeds]",
            "difference [paired bootstrap over problems]"]  # fmt: skip
    return out + "\n" + table(head, rows)


# --------------------------------------------------------------------------------------------------
# the regime map

_POINT = re.compile(r"^lr(?P<lr>[0-9.e+-]+)_r(?P<r>\d+)(?P<rest>.*)$")


def _point_label(name: str) -> tuple[float, int, str]:
    m = _POINT.match(name)
    if not m:
        return (float("inf"), 0, name)
    return (float(m["lr"]), int(m["r"]), m["rest"].lstrip("_").replace("_", " "))


def _short_label(name: str) -> str:
    """``lr3e-5_r128_sgd`` -> ``3e-5×128 sgd``."""
    lr, resp, rest = _point_label(name)
    return f"{fmt_lr(lr)}×{resp}" + (f" {rest}" if rest else "")


def fmt_lr(lr: float) -> str:
    """``3e-05`` -> ``3e-5``, ``0.0001`` -> ``1e-4``."""
    mant, exp = f"{lr:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def _case_desc(b: dict) -> str:
    pred = {"two_point": "two-point", "lsq": "least squares", "rank1": "rank-1"}.get(b["predictor"], b["predictor"])
    tgt = b["target"]
    tgt = int(tgt) if float(tgt).is_integer() else tgt
    return f"{pred} ({b['t0']}, {b['t1']}) → {tgt}, α {b['alpha']:g}"


def _best_cell(b: dict | None) -> str:
    if not b:
        return "n/a"
    cell = f"{_case_desc(b)}: {_mci(b['gain_vs_t1_greedy'], sign=True)}"
    real = b.get("gain_vs_real_greedy")
    cell += f" (vs real: {_mci(real, sign=True)})" if real else " (no real checkpoint at the target)"
    return cell


def regime_table(regime_map: dict) -> str:
    """One row per point of the map, ordered by learning rate then responses per step."""
    rows = []
    for name in sorted(regime_map["points"], key=_point_label):
        p = regime_map["points"][name]
        lr, resp, rest = _point_label(name)
        w, lp = p["weights"], p["logprobs"]
        rows.append([
            fmt_lr(lr) + (f" {rest}" if rest else ""),
            resp,
            ", ".join(map(str, p["seeds"])),
            f"{_f((p['val_accuracy_start'] or {}).get('mean'))} → {_f((p['val_accuracy_end'] or {}).get('mean'))}",
            f"{_mci(w['median'])} ({_f((w['null_median'] or {}).get('mean'))})",
            f"{_mci(lp['median'])} ({_f((lp['null_median'] or {}).get('mean'))})",
            _mci(p["forecast_ratio"]["q2"], 2),
            _best_cell(p.get("best_weight_extrapolation")),
            _best_cell(p.get("best_logit_extrapolation")),
        ])  # fmt: skip
    head = ["lr", "responses / step", "seeds", "validation greedy, start → end", "weight R² median (null)",
            "log-prob R² median (null)", "forecast ratio (fit to H/2)", "best weight extrapolation, greedy − t1",
            "best logit extrapolation, greedy − t1"]  # fmt: skip
    return table(head, rows)


def _mean(d: dict | None) -> float | None:
    return None if not d else d.get("mean")


def _lo(d: dict | None) -> float | None:
    return None if not d else d.get("lo", d.get("ci_low"))


def _linear(p: dict, part: str) -> tuple[bool, str]:
    """The study's bar for the paper's regime (``study.linearity.PAPER_REGIME``), on a map point's seed means."""
    m, null = _mean(p[part]["median"]), _mean(p[part]["null_median"])
    ok = m is not None and null is not None and m >= PAPER_REGIME[part] and m >= null + PAPER_MARGIN
    return ok, f"{_f(m)} (null {_f(null)})"


def _gain(b: dict | None, key: str) -> tuple[bool, str]:
    g = (b or {}).get(key)
    if not g or g.get("mean") is None:
        return False, "n/a"
    return _lo(g) is not None and _lo(g) > 0, _mci(g, sign=True)


#: effect -> (what counts as "appears", test on a point of the map)
EFFECTS = {
    "weight linearity": (
        f"median R² ≥ {PAPER_REGIME['weights']:g} and ≥ null + {PAPER_MARGIN:g}",
        lambda p: _linear(p, "weights"),
    ),
    "token log-prob linearity": (
        f"median R² ≥ {PAPER_REGIME['logprobs']:g} and ≥ null + {PAPER_MARGIN:g}",
        lambda p: _linear(p, "logprobs"),
    ),
    "a line forecasts the weights": (
        "error ratio vs 'no change' < 1 at the horizon, fit to H/2",
        lambda p: (
            (_mean(p["forecast_ratio"]["q2"]) or 9) < 1,
            _f(_mean(p["forecast_ratio"]["q2"]), 2),
        ),
    ),
    "weight extrapolation beats its t1 checkpoint": (
        "best case's greedy gain over t1: 95% CI above 0",
        lambda p: _gain(p.get("best_weight_extrapolation"), "gain_vs_t1_greedy"),
    ),
    "weight extrapolation beats real RL at the target": (
        "the same case vs the real checkpoint: CI above 0",
        lambda p: _gain(p.get("best_weight_extrapolation"), "gain_vs_real_greedy"),
    ),
    "logit extrapolation beats its t1 checkpoint": (
        "best logit case's greedy gain over t1: CI above 0",
        lambda p: _gain(p.get("best_logit_extrapolation"), "gain_vs_t1_greedy"),
    ),
    "logit extrapolation beats real RL at the target": (
        "the same case vs the real checkpoint: CI above 0",
        lambda p: _gain(p.get("best_logit_extrapolation"), "gain_vs_real_greedy"),
    ),
    "RL more linear than SFT": (
        f"weight R² median RL − SFT > {SFT_MARGIN:g}, the study's rule, SFT at the same rate, batch and steps",
        lambda p: _contrast(p.get("rl_minus_sft")),
    ),
}


def _contrast(d: dict | None) -> tuple[bool, str] | None:
    """RL − SFT weight R² (``None``: the point has no SFT contrast, it is left out of the row)."""
    if not d or d.get("weights") is None:
        return None
    return d["weights"] > SFT_MARGIN, f"{d['weights']:+.3f} (SFT {_f(d['sft_weights'])})"


def progress_line(regime_map: dict) -> str:
    """What the map holds so far: queue items done, points by their number of seeds, re-grounding points."""
    q, pts = regime_map["queue"], regime_map["points"]
    by_seeds: dict[int, list[str]] = {}
    for name in sorted(pts, key=_point_label):
        by_seeds.setdefault(len(pts[name]["seeds"]), []).append(_short_label(name))
    parts = [f"{n} seed{'s' * (n > 1)}: {', '.join(names)}" for n, names in sorted(by_seeds.items(), reverse=True)]
    rg = [_short_label(n) for n in sorted(pts, key=_point_label) if pts[n].get("reground")]
    done = q["trained"] >= q["items"]
    return (
        f"**{'What the map holds' if done else 'What has run so far'}** (rendered from the map): {q['trained']} of "
        f"{q['items']} queue items trained and analysed. Points with {'; '.join(parts)}. Re-grounding measured at "
        f"{len(rg)} point{'s' * (len(rg) != 1)}{': ' + ', '.join(rg) if rg else ''}. "
        + ("" if done else "The rest is queued (order in docs/regime.md); ")
        + ("A" if done else "a") + " point with one seed is a lead, not a result.\n"
    )


def effects_table(regime_map: dict) -> str:
    """Effect -> the map's RL points where it appears -> where it does not, each point with its number (SFT
    contrast points only through the RL − SFT row)."""
    names = [n for n in sorted(regime_map["points"], key=_point_label) if not n.endswith("_sft")]
    label = _short_label

    rows = []
    for effect, (rule, test) in EFFECTS.items():
        yes, no = [], []
        for n in names:
            res = test(regime_map["points"][n])
            if res is None:
                continue
            ok, txt = res
            (yes if ok else no).append(f"{label(n)}: {txt}")
        rows.append([f"{effect} ({rule})", "; ".join(yes) or "nowhere", "; ".join(no) or "—"])
    return table(["effect (criterion)", "appears at (lr×responses: number)", "does not appear at"], rows)


def best_table(regime_map: dict) -> str:
    """The best measured gain over the map for weight extrapolation, logit extrapolation and re-grounding."""
    best = regime_map.get("best") or {}

    def label(name: str) -> str:
        lr, resp, rest = _point_label(name)
        return f"lr {fmt_lr(lr)}, {resp} responses" + (f" {rest}" if rest else "")

    rows = []
    for space, what in (("weight", "weight extrapolation"), ("logit", "logit extrapolation")):
        b = best.get(space)
        if not b:
            rows.append([what, "not measured yet", "", ""])
            continue
        where = f"{label(b['point'])}: {_case_desc(b)} ({len(b['seeds'])} seed(s))"
        real = b.get("gain_vs_real_greedy")
        rows.append([what, where, _mci(b["gain_vs_t1_greedy"], sign=True),
                     _mci(real, sign=True) if real else "no real checkpoint at the target"])  # fmt: skip
    r = best.get("regrounding")
    if r:
        gain = f"speed-up {r['speedup']:.2f}× to threshold {_f(r['threshold'])} (held-out greedy)"
        rows.append(["re-grounding", f"{label(r['point'])}, (M, N) = ({r['spec']})", gain, "—"])
    else:
        rows.append(["re-grounding", "not measured yet (its runs are last in the queue)", "", ""])
    return table(["effect", "where (best over the map)", "greedy gain over t1 [95% CI]", "vs the real checkpoint"],
                 rows)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# README blocks


def update_blocks(text: str, blocks: dict[str, str]) -> str:
    """Replace the body of every ``<!-- BEGIN name -->`` ... ``<!-- END name -->`` block named in ``blocks``."""
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- BEGIN {re.escape(name)} -->\n)(.*?)(<!-- END {re.escape(name)} -->)", re.S)
        if len(pat.findall(text)) != 1:
            raise RlvrLinearError(f"README: expected one block '<!-- BEGIN {name} -->' ... '<!-- END {name} -->'")
        text = pat.sub(lambda m, body=body: m[1] + body + m[3], text)
    return text


def _ci2(v: Any, ci: list | None) -> str:
    return _f(v) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci and None not in ci else "")


def _gain_cell(c: dict | None, vs: str, key: str = "greedy") -> str:
    """``two-point α 1.5 → 95: +0.012 [-0.010, +0.034]`` (the gain of a case over t1 or its real target)."""
    if not c or not c.get(vs) or not c[vs].get(key):
        return "-"
    g, what = c[vs][key], {"two_point": "two-point", "lsq": "least squares"}.get(c["predictor"], c["predictor"])
    return (f"{c['space']} {what} α {c['alpha']:g} → {c['target']:g}: {_f(g['mean'], sign=True)} "
            f"[{_f(g['lo'], sign=True)}, {_f(g['hi'], sign=True)}]")  # fmt: skip


def smollm2_table(summary: dict) -> str:
    """The real-model experiment per seed (``experiments/results/smollm2/summary.json``, from
    :func:`rlvr_linear.regime.summarize`): every measured number next to its null or baseline, with its CI; a timed
    run (``numbers.timed``: the one command under GNU time) in a column of its own."""
    # (a row without a field, from an older summary, shows "-")
    rows = summary["numbers"]["per_seed"] + summary["numbers"].get("timed", [])

    def row(label: str, fn) -> list[str]:
        return [label, *[fn(r) for r in rows]]

    def r2(name: str):
        return lambda r: (f"{_ci2(r[name]['median'], r[name].get('median_ci'))} (null "
                          f"{_ci2(r[name]['null_median'], r[name].get('null_median_ci'))})")  # fmt: skip

    def fc(q: str):
        return lambda r: (f"{_f((r['forecast_ratio'].get(q) or {}).get('ratio_at_horizon'), 2)} (fit ≤ "
                          f"{(r['forecast_ratio'].get(q) or {}).get('fit_until')})")  # fmt: skip

    def advice(r: dict) -> str:
        a = r["advisor_at_t1"]
        calls = r["advisor_at_t1_vs_cases"]
        measured = ", ".join(f"α {c['alpha']:g}: {_f(c['gain_vs_t1']['mean'], sign=True)}" for c in calls)
        return f"{a['verdict']} (h* {_f(a['h_star_steps'], 0)}); measured two-point gain over t1: {measured or '-'}"

    def minutes(v: Any) -> str:
        return "-" if v is None else f"{v / 60:.0f} min"

    def wall(r: dict) -> str:
        parts = f"{minutes(r['train_wall_s'])} + {minutes(r['analysis_s_total'])}"
        if "timed" not in r:
            return f"{parts} = {minutes(r.get('end_to_end_s'))}"
        t = r["timed"]
        return (f"{parts}; the command start to end: **{minutes(t['wall_s'])}** (GNU time; CPU {t['cpu_per_wall']:g} "
                "cores on average)")  # fmt: skip

    body = [
        row("validation greedy (200 problems), step 0 → end", lambda r: f"{_f(r['val_accuracy_start'])} → "
            f"{_f(r['val_accuracy_end'])}"),  # fmt: skip
        row("weight R², paper sample [95% CI]", r2("weights_paper_r2")),
        row("weight R², every parameter", r2("weights_r2")),
        row("log-prob R² [95% CI]", r2("logprobs_r2")),
        row("activation R²", r2("activations_r2")),
        row("forecast error ratio at the horizon, fit to 1/4", fc("q1")),
        row("forecast error ratio at the horizon, fit to 1/2", fc("q2")),
        row("best weight extrapolation vs t1 (greedy gain)",
            lambda r: _gain_cell(r["best_weight_vs_t1"], "gain_vs_t1")),
        row("best weight extrapolation vs the real checkpoint at its target",
            lambda r: _gain_cell(r["best_weight_vs_real"], "gain_vs_real")),
        row("best logit extrapolation vs t1", lambda r: _gain_cell(r["best_logit_vs_t1"], "gain_vs_t1")),
        row("best logit extrapolation vs the real checkpoint at its target",
            lambda r: _gain_cell(r.get("best_logit_vs_real"), "gain_vs_real")),
        row("cases beating t1 / the real target (CI above 0)", lambda r: f"{r['cases_beating_t1']} / "
            f"{r['cases_beating_real']} of {r['cases']}"),  # fmt: skip
        row("avg@4 at T 0.7: two-point vs t1", lambda r: _gain_cell(r["avg_k_case"], "gain_vs_t1", "avg_k")),
        row("avg@4 at T 0.7: two-point vs the real target", lambda r: _gain_cell(r["avg_k_case"], "gain_vs_real",
                                                                                "avg_k")),  # fmt: skip
        row("advise at t1 (the run's midpoint)", advice),
        row("wall time: training + analysis = end to end", wall),
    ]
    heads = [f"seed {r['seed']}" + (" (timed: the command alone)" if "timed" in r else "") for r in rows]
    return table(["measure", *heads], body)
