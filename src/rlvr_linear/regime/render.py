"""Render the regime map from the per-run cache: ``regime_map.json``, ``cases.jsonl`` and the ``regime_*.png`` figures.

Per point: every metric as the mean over its seeds with a t-based 95% CI (``evaluation.mean_ci``; one seed: the
value itself). The best extrapolation of a point, per space (weight, logit), is the case (same window, predictor,
α) with the highest greedy gain over ``t1`` averaged over the seeds that have it; its per-seed paired-bootstrap
CIs are kept, and over seeds its mean CI. Rendering only reads the cache: ``run_regime(..., render_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import copy_file, read_json, write_json, write_text
from .analysis import _num
from .grid import LRS, QUICK_LRS, QUICK_RESPONSES, RESPONSES
from .store import export_records

FIGURES = ("regime_weights_r2.png", "regime_logprobs_r2.png", "regime_extrapolation_gain.png",
           "regime_rl_minus_sft.png", "regime_gain_vs_forecast.png")  # fmt: skip


def _ci(values) -> dict | None:
    from ..evaluation.evaluation import mean_ci

    v = [x for x in values if x is not None]
    if not v:
        return None
    c = mean_ci(v)
    return {"mean": _num(c["mean"]), "lo": _num(c["ci_low"]), "hi": _num(c["ci_high"]), "n": c["n"]}


def _load(regime) -> list[dict]:
    root = regime.out / "analysis"
    out = []
    for p in sorted(root.glob("*/parts.json")) if root.exists() else []:
        parts = read_json(p)
        if "meta" in parts:
            out.append(parts)
    return out


def _best(cases_by_seed: list[dict], space: str) -> dict | None:
    """The case id with the highest mean greedy gain over t1 (over the seeds that have it)."""
    by_id: dict[str, list[dict]] = {}
    for cases in cases_by_seed:
        for cid, c in cases.items():
            if c["space"] == space and c["gain_vs_t1"]["greedy"]["mean"] is not None:
                by_id.setdefault(cid, []).append(c)
    if not by_id:
        return None
    n_max = max(len(v) for v in by_id.values())
    cid, recs = max(((k, v) for k, v in by_id.items() if len(v) == n_max),
                    key=lambda kv: np.mean([c["gain_vs_t1"]["greedy"]["mean"] for c in kv[1]]))  # fmt: skip
    c0 = recs[0]

    def over_seeds(key: str, metric: str) -> dict | None:
        """Mean and t-CI over seeds; with one seed, its paired-bootstrap CI over problems."""
        gs = [(c[key] or {}).get(metric) for c in recs]
        gs = [g for g in gs if g is not None]
        if len(gs) == 1:
            return {**gs[0], "n": 1}
        return _ci([g["mean"] for g in gs])

    return {
        "case": cid,
        "predictor": c0["predictor"],
        "t0": c0["t0"],
        "t1": c0["t1"],
        "alpha": c0["alpha"],
        "target": c0["target"],
        "seeds": [c["seed"] for c in recs],
        "gain_vs_t1_greedy": over_seeds("gain_vs_t1", "greedy"),
        "gain_vs_t1_avg_k": over_seeds("gain_vs_t1", "avg_k"),
        "gain_vs_real_greedy": over_seeds("gain_vs_real", "greedy"),
        "gain_vs_real_avg_k": over_seeds("gain_vs_real", "avg_k"),
        "per_seed": [
            {"seed": c["seed"], "gain_vs_t1": c["gain_vs_t1"], "gain_vs_real": c["gain_vs_real"],
             "acc_t1": c["acc_t1"], "acc_x": c["acc_x"], "acc_real_target": c["acc_real_target"]}
            for c in recs
        ],  # fmt: skip
    }


def summarize_point(runs: list[dict]) -> dict:
    m0 = runs[0]["meta"]
    std = [r for r in runs if not r["meta"]["reground"]]
    rg = [r for r in runs if r["meta"]["reground"]]

    def get(part: str, key: str, sub: str | None = None):
        vals = []
        for r in std:
            v = r.get(part, {}).get(key)
            vals.append(v.get(sub) if isinstance(v, dict) and sub else v)
        return _ci(vals)

    first = [r["train"]["val_accuracy"][0] for r in std if "train" in r]
    last = [r["train"]["val_accuracy"][-1] for r in std if "train" in r]
    cases = [r.get("cases", {}) for r in std]
    out = {
        "point": m0["point"],
        "seeds": sorted(r["meta"]["seed"] for r in std),
        "val_accuracy_start": _ci(first),
        "val_accuracy_end": _ci(last),
        "weights": {k: get("weights", k) for k in ("median", "share_gt_0.7", "null_median", "null_share_gt_0.7",
                                                    "median_minus_null", "drift_to_noise_median",
                                                    "drift_to_noise_null_median")},  # fmt: skip
        "logprobs": {k: get("logprobs", k) for k in ("median", "share_gt_0.7", "null_median", "median_minus_null")},
        "forecast_ratio": {q: get("forecast", q, "ratio_at_horizon") for q in ("q1", "q2")},
        "best_weight_extrapolation": _best(cases, "weight"),
        "best_logit_extrapolation": _best(cases, "logit"),
        "n_cases": sum(len(c) for c in cases),
        "reground": rg[0].get("reground") if rg else None,
    }
    return out


def rl_minus_sft(points: dict) -> None:
    """Give every point that has an SFT contrast (``<point>_sft``) its ``rl_minus_sft``: the RL point's seed-mean
    weight and log-prob R² medians minus the SFT run's (the study's rule: ``study.linearity.SFT_MARGIN``)."""
    for name, p in points.items():
        s = points.get(f"{name}_sft")
        if s is None:
            continue
        d = {}
        for part in ("weights", "logprobs"):
            a, b = _mean(p[part]["median"]), _mean(s[part]["median"])
            d[part] = None if a is None or b is None else _num(a - b)
            d[f"sft_{part}"] = b
        d["sft_seeds"] = s["seeds"]
        p["rl_minus_sft"] = d


def best_over_map(points: dict) -> dict:
    """The best measured gain over the whole map, whatever its sign: per space the point whose best case has the
    largest mean greedy gain over t1 (with that case's gain over the real checkpoint), and the largest re-grounding
    speed-up at a threshold (``None`` where nothing has been measured yet)."""
    out: dict = {}
    for space in ("weight", "logit"):
        cands = [(n, p[f"best_{space}_extrapolation"]) for n, p in points.items()
                 if (p.get(f"best_{space}_extrapolation") or {}).get("gain_vs_t1_greedy")]  # fmt: skip
        if not cands:
            out[space] = None
            continue
        name, b = max(cands, key=lambda nb: nb[1]["gain_vs_t1_greedy"]["mean"])
        out[space] = {"point": name, **{k: b[k] for k in ("case", "predictor", "t0", "t1", "alpha", "target",
                                                           "seeds", "gain_vs_t1_greedy", "gain_vs_real_greedy")}}
    rg = [(n, r) for n, p in points.items() for r in ((p.get("reground") or {}).get("thresholds") or [])
          if r.get("speedup") is not None]  # fmt: skip
    if rg:
        name, r = max(rg, key=lambda nr: nr[1]["speedup"])
        out["regrounding"] = {"point": name, **r, "spec": points[name]["reground"]["spec"]}
    else:
        out["regrounding"] = None
    return out


def _grid(points: dict, quick: bool, fn) -> tuple[np.ndarray, list[str], list[str]]:
    from .grid import main_point

    lrs, resp = (QUICK_LRS, QUICK_RESPONSES) if quick else (LRS, RESPONSES)
    m = np.full((len(resp), len(lrs)), np.nan)
    for i, r in enumerate(resp):
        for j, lr in enumerate(lrs):
            name = (f"lr{lr:.0e}_r{r}".replace("e-0", "e-")) if quick else main_point(lr, r).name
            p = points.get(name)
            v = fn(p) if p else None
            if v is not None:
                m[i, j] = v
    return m, [f"{r} resp/step" for r in resp], [f"lr {lr:g}" for lr in lrs]


def _mean(d):
    return None if not d else d.get("mean")


def _pts(x):
    return None if x is None else 100.0 * x


def figures(out: Path, points: dict, cases: list[dict], quick: bool) -> list[Path]:
    from ..reporting import plots

    paths = []
    specs = [
        ("regime_weights_r2.png", lambda p: _mean(p["weights"]["median_minus_null"]),
         "Weight R² median − null median", "R² − null", -0.2, 0.6),
        ("regime_logprobs_r2.png", lambda p: _mean(p["logprobs"]["median_minus_null"]),
         "Token log-prob R² median − null median", "R² − null", -0.2, 0.6),
        ("regime_extrapolation_gain.png",
         lambda p: _pts(_mean((p["best_weight_extrapolation"] or {}).get("gain_vs_t1_greedy"))),
         "Best weight extrapolation: greedy accuracy − t1", "gain (points of accuracy)", -5.0, 5.0),
        ("regime_rl_minus_sft.png", lambda p: (p.get("rl_minus_sft") or {}).get("weights"),
         "Weight R² median: RL − SFT (same rate, batch, steps)", "RL − SFT", -0.4, 0.4),
    ]  # fmt: skip
    for name, fn, title, label, lo, hi in specs:
        m, rows, cols = _grid(points, quick, fn)
        paths.append(plots.plot_heatmap(out / name, m, rows, cols, title=title, cbar_label=label, vmin=lo, vmax=hi))
    paths.append(_scatter(out / "regime_gain_vs_forecast.png", cases))
    return paths


def _scatter(path: Path, cases: list[dict]) -> Path:
    from matplotlib.figure import Figure

    from ..reporting.plots import _save

    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.subplots()
    colors = {"two_point": "C0", "lsq": "C1", "rank1": "C2"}
    for space, marker in (("weight", "o"), ("logit", "x")):
        for pred, col in colors.items():
            xs, ys = [], []
            for c in cases:
                r = (c.get("forecast_ratio") or {}).get("q2")
                if c["space"] == space and c["predictor"] == pred and r is not None:
                    xs.append(r)
                    ys.append(c["gain_vs_t1"]["greedy"]["mean"])
            if xs:
                ax.scatter(xs, ys, s=12, c=col, marker=marker, alpha=0.6, label=f"{space} {pred} ({len(xs)})")
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(1, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("forecast error / 'no change' error at H (line fit on the first half)")
    ax.set_ylabel("greedy accuracy − t1 checkpoint")
    ax.set_title("Does forecastability predict extrapolation gain?")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def render(regime, results_dir: str | Path | None = None) -> dict:
    """Write ``OUT/regime_map.json``, ``OUT/cases.jsonl`` and ``OUT/regime_*.png`` (and copies into
    ``results_dir`` when given, the cases as ``regime_cases.jsonl``, the finished runs' records under
    ``regime_runs/``) from the cache; returns the map. "trained" counts the items trained here or taken from
    records."""
    runs = _load(regime)
    by_point: dict[str, list[dict]] = {}
    for r in runs:
        by_point.setdefault(r["meta"]["point"], []).append(r)
    points = {name: summarize_point(rs) for name, rs in by_point.items() if any(not r["meta"]["reground"] for r in rs)}
    rl_minus_sft(points)
    cases = [c for r in runs for c in r.get("cases", {}).values()]
    items = regime.items()
    done_train = sum(regime.complete(i) or _finished(regime.run_dir(i)) for i in items)
    analysed = sum(1 for r in runs if (r.get("complete") or "cases" in r or "reground" in r))
    top = max(cases, key=lambda c: c["gain_vs_t1"]["greedy"]["mean"], default=None)
    summary = (f"{done_train}/{len(items)} queue items trained, {analysed} analysed, {len(points)} points, "
               f"{len(cases)} extrapolation cases")  # fmt: skip
    if top:  # the largest of many single-run gains: selected, so it says where it comes from
        g = top["gain_vs_t1"]["greedy"]
        summary += (f"; largest single-run greedy gain over t1 {g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] "
                    f"({top['point']} seed {top['seed']}, {top['space']} {top['predictor']} ({top['t0']}, "
                    f"{top['t1']}) -> {top['target']:g}, alpha {top['alpha']:g})")  # fmt: skip
    out = regime.out
    result = {
        "summary": summary,
        "quick": regime.quick,
        "protocol": "see rlvr_linear.regime.grid / analysis / cases and docs/regime.md",
        "queue": {"items": len(items), "trained": done_train, "analysed": analysed},
        "points": points,
        "best": best_over_map(points),
        "figures": [],
    }
    if points:
        result["figures"] = [p.name for p in figures(out, points, cases, regime.quick)]
    write_json(out / "regime_map.json", result)
    write_text(out / "cases.jsonl", "".join(json.dumps(c) + "\n" for c in cases))
    if results_dir is not None:
        rd = Path(results_dir)
        rd.mkdir(parents=True, exist_ok=True)
        write_json(rd / "regime_map.json", result)
        write_text(rd / "regime_cases.jsonl", "".join(json.dumps(c) + "\n" for c in cases))
        for f in result["figures"]:
            copy_file(out / f, rd / f)
        export_records(out, rd, items)
    return result


def _finished(run: Path) -> bool:
    m = run / "manifest.json"
    return m.exists() and bool(read_json(m).get("finished", False))
