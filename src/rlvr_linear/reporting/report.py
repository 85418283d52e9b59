"""The study's outputs: ``results.json`` (schema :data:`RESULTS_SCHEMA`, checked by :func:`validate_results`) and a
self-contained ``report.html`` (figures embedded as base64 PNG; no external asset, script, font or link).

``results.json``::

    {
      "meta": {version, mode, model, seeds, wall_time_s, machine, created, stages, config, banner, git},
      "<section>": {title, seeds, numbers, paper, reproduced, verdict, figures, wall_s},   # one per finished stage
      ...
    }

Sections are the study's stages (``baseline``, ``linearity``, ``robustness``, ``mechanism``, ``weight_extrapolation``,
``logit_extrapolation``, ``regrounding``); a stage that has not run is absent. ``reproduced`` is one of ``yes``,
``partly``, ``no``, ``n/a``; ``verdict`` is one sentence; ``paper`` holds the paper's numbers next to ours.
"""

from __future__ import annotations

import base64
import html
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jinja2

from ..errors import RlvrLinearError
from ..io import read_json, write_json, write_text

SECTIONS = [
    "baseline",
    "trajectory",
    "linearity",
    "robustness",
    "mechanism",
    "weight_extrapolation",
    "logit_extrapolation",
    "regrounding",
]
REPRODUCED = ["yes", "partly", "no", "n/a"]
BANNER = (
    "This is a tiny-model miniature of arXiv 2601.04537: models with 0.1-1 M parameters on 2-digit addition, tens "
    "to hundreds of RL steps on a CPU. The paper used a 1.5B model, thousands of GPU hours and AIME/MATH/LCB. "
    "Read the numbers as a check of the qualitative claims, not of the paper's magnitudes."
)
#: the banner of a study on a pretrained model (``--model smollm2-135m`` or an HF directory)
BANNER_PRETRAINED = (
    "A small-budget study of arXiv 2601.04537 on the pretrained model {model}: one seed, tens of RL steps on a CPU, "
    "stages left out for time say so. The paper used a 1.5B model, thousands of GPU hours and AIME/MATH/LCB. "
    "Read the numbers as a check of the qualitative claims, not of the paper's magnitudes."
)


def banner(model: str) -> str:
    """The report's banner for a study of ``model``."""
    return BANNER if model in ("tiny", "tiny-cot") else BANNER_PRETRAINED.format(model=model)


_SECTION_SCHEMA = {
    "type": "object",
    "required": ["title", "seeds", "numbers", "paper", "reproduced", "verdict", "figures"],
    "properties": {
        "title": {"type": "string"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "numbers": {"type": "object"},
        "paper": {"type": "object"},
        "reproduced": {"type": "string", "enum": REPRODUCED},
        "verdict": {"type": "string", "minLength": 1},
        "figures": {"type": "array", "items": {"type": "string"}},
        "wall_s": {"type": ["number", "null"]},
    },
    "additionalProperties": False,
}

#: JSON-Schema-like description of results.json (checked by :func:`validate_results`)
RESULTS_SCHEMA: dict = {
    "type": "object",
    "required": ["meta"],
    "properties": {
        "meta": {
            "type": "object",
            "required": ["version", "mode", "model", "seeds", "wall_time_s", "machine", "created", "stages"],
            "properties": {
                "version": {"type": "string"},
                "mode": {"type": "string", "enum": ["quick", "default", "full"]},
                "model": {"type": "string"},
                "seeds": {"type": "array", "items": {"type": "integer"}},
                "wall_time_s": {"type": "number"},
                "machine": {"type": "object"},
                "created": {"type": "string"},
                "stages": {"type": "object"},
                "config": {"type": "object"},
                "banner": {"type": "string"},
                "git": {
                    "type": "object",
                    "required": ["commit", "dirty"],
                    "properties": {"commit": {"type": ["string", "null"]}, "dirty": {"type": ["boolean", "null"]}},
                    "additionalProperties": False,
                },
            },
            "additionalProperties": False,
        },
        **{s: _SECTION_SCHEMA for s in SECTIONS},
    },
    "additionalProperties": False,
}

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _check(schema: dict, value: Any, path: str, errors: list[str]) -> None:
    types = schema.get("type")
    if types is not None:
        tl = [types] if isinstance(types, str) else list(types)
        ok = any(
            isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool)) for t in tl
        )
        if not ok:
            errors.append(f"{path}: expected {' or '.join(tl)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{path}: empty string")
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errors.append(f"{path}: missing required field {k!r}")
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                _check(props[k], v, f"{path}.{k}", errors)
            elif schema.get("additionalProperties", True) is False:
                errors.append(f"{path}: unexpected field {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            _check(schema["items"], v, f"{path}[{i}]", errors)


def results_errors(obj: Any, schema: dict = RESULTS_SCHEMA) -> list[str]:
    """Every violation of ``schema`` in ``obj`` (empty list: valid)."""
    errors: list[str] = []
    _check(schema, obj, "results", errors)
    return errors


def validate_results(obj: Any) -> None:
    """Raise :class:`RlvrLinearError` listing every schema violation of a results object."""
    errors = results_errors(obj)
    if errors:
        raise RlvrLinearError("results.json does not match its schema:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------------------------------
# Collect


def git_state(path: str | Path | None = None) -> dict:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: this package's source): the HEAD
    commit and whether tracked files differ from it (untracked files do not count); both None outside a git
    checkout (an installed wheel) or without git."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    if not commit:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def collect_results(out: str | Path, cfg, machine: dict | None = None, timings: dict | None = None) -> dict:
    """Assemble the results object from ``OUT/<stage>/result.json`` files and the study config."""
    from dataclasses import asdict

    from .. import __version__

    out = Path(out)
    res: dict = {}
    stages = {}
    for s in SECTIONS:
        p = out / s / "result.json"
        if p.exists():
            res[s] = read_json(p)
            stages[s] = {"status": "done", "wall_s": res[s].get("wall_s")}
        else:
            stages[s] = {"status": "not run", "wall_s": None}
    total = float(sum(v for v in (timings or {}).values() if isinstance(v, (int, float))))
    meta = {
        "version": __version__,
        "mode": cfg.mode,
        "model": cfg.model,
        "seeds": list(cfg.seeds),
        "wall_time_s": round(total, 1),
        "machine": machine or {},
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "stages": stages,
        "config": json.loads(json.dumps(asdict(cfg))),
        "banner": banner(cfg.model),
        "git": git_state(),
    }
    return {"meta": meta, **res}


# --------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.banner{background:#fff4d6;border:1px solid #e0b84c;padding:10px 14px;border-radius:6px;margin:12px 0}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:bold;font-size:.85em;margin-left:8px}
.yes{background:#cdeccd;color:#1d5e1d}.partly{background:#fbe8b5;color:#7a5500}.no{background:#f6cccc;color:#8a1c1c}
.na{background:#e4e4e4;color:#444}
table{border-collapse:collapse;margin:8px 0 14px;font-size:.88em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
.verdict{font-size:1.02em;margin:6px 0 10px}.small{color:#666;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:6px 0}
.cols{display:flex;gap:18px;flex-wrap:wrap}.cols>div{flex:1;min-width:320px}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.8em}
"""


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def _s(v: Any) -> str:
    """``str(v)``, escaped: a table cell of text the code did not build."""
    return html.escape(str(v))


def _ci(d: dict | None, nd: int = 3) -> str:
    """``mean [lo, hi] (n seeds)`` of a mean_ci dict."""
    if not d or d.get("mean") is None:
        return "n/a"
    n = d.get("n", 1)
    if n and n > 1:
        return f"{d['mean']:.{nd}f} [{d['ci_low']:.{nd}f}, {d['ci_high']:.{nd}f}] (n={n})"
    return f"{d['mean']:.{nd}f} (n=1, no CI)"


def _boot(d: dict | None) -> str:
    if not d:
        return "n/a"
    return f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] ({d['n_problems']} problems)"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _img(out: Path, rel: str) -> str:
    """``out/rel`` inlined as a base64 PNG (its alt text: ``rel``), or a note that it is missing."""
    p, alt = Path(out) / rel, html.escape(rel)
    if not p.exists():
        return f'<p class="small">(figure {alt} missing)</p>'
    data = base64.b64encode(p.read_bytes()).decode()
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def _r2_row(label: str, d: dict, paper: str = "") -> list[str]:
    return [
        html.escape(label),
        _f(d.get("median")),
        f"{_f(d.get('q1'))}-{_f(d.get('q3'))}",
        _f(d.get("share_gt_0.7")),
        _f(d.get("null_median")),
        _f(d.get("null_share_gt_0.7")),
        _s(d.get("n", "")),
        paper,
    ]


_R2_HEAD = ["", "median R²", "IQR", "share > 0.7", "null median", "null share > 0.7", "n", "paper median (IQR)"]


def _body_baseline(s: dict) -> str:
    n = s["numbers"]
    rows = [
        [html.escape(seed), _s(", ".join(map(str, r["steps"]))), ", ".join(_f(v, 2) for v in r["val_accuracy"]),
         _f(r.get("wall_time_s"), 0)]
        for seed, r in n["runs"].items()
    ]  # fmt: skip
    return (
        f"<p>Validation greedy accuracy ({n['eval_problems']} problems): start {_ci(n['val_accuracy_start'])}, "
        f"end {_ci(n['val_accuracy_end'])}, gain {_ci(n['val_accuracy_gain'])}.</p>"
        + _table(["seed", "checkpoint steps", "validation accuracy", "wall s"], rows)
    )


def _body_linearity(s: dict) -> str:
    n, p = s["numbers"], s["paper"]

    def iqr(key: str) -> str:
        return f"{p[key + '_median']} ({p[key + '_iqr'][0]}-{p[key + '_iqr'][1]})"

    rows = [
        _r2_row("RL weights", n["rl_weights"], iqr("rl_weight_r2")),
        _r2_row("RL token log-probs", n["rl_logprobs"], iqr("rl_logprob_r2")),
        _r2_row("SFT weights", n["sft_weights"], iqr("sft_weight_r2")),
        _r2_row("SFT token log-probs", n["sft_logprobs"], f"{p['sft_logprob_r2_median']}"),
    ]
    head = ""
    if len(n.get("per_seed", [])) > 1:
        head = f"<p>Medians are means over {len(n['per_seed'])} seeds; per seed:</p>" + _table(
            ["seed", "RL weights (null)", "RL log-probs (null)", "SFT weights", "SFT log-probs"],
            [
                [_s(r["seed"])]
                + [
                    f"{_f(r[k]['median'])} ({_f(r[k]['null_median'])})" if k.startswith("rl") else _f(r[k]["median"])
                    for k in ("rl_weights", "rl_logprobs", "sft_weights", "sft_logprobs")
                ]
                for r in n["per_seed"]
            ],
        )
    fc = n["forecast"]
    ftxt = (
        f"<p><b>Forecast</b> (line fitted on steps {', '.join(map(str, fc['fit_steps']))}; predicting "
        f"{', '.join(map(str, fc['later_steps']))}): relative L2 error of all weights at the last step "
        f"{_f(fc['weights_rel_err_last'], 5)} vs {_f(fc['weights_naive_rel_err_last'], 5)} for 'no further change'; "
        f"error ratio to naive per step: {', '.join(_f(v, 2) for v in fc['weights_ratio_to_naive'])}"
    )
    if fc.get("logprob_mae"):
        ftxt += (
            f"; log-prob MAE {', '.join(_f(v, 3) for v in fc['logprob_mae'])} vs naive "
            f"{', '.join(_f(v, 3) for v in fc['logprob_naive_mae'])}"
        )
    ftxt += ".</p>"
    return (
        f"<p>Checkpoints: steps {', '.join(map(str, n['checkpoints']))}; forecast on seed "
        f"{n.get('forecast_seed', s['seeds'][0])}; weight sampling: "
        f"{_f(n.get('weight_sampling'))}; {n['probes']} teacher-forced probes (base-model responses). "
        "Null = the same increments with random signs (driftless).</p>" + _table(_R2_HEAD, rows) + head + ftxt
    )


def _paper_robustness_key(row: dict, baseline_optimizer: str) -> str:
    """The paper's robustness run a setting compares with: GSPO, lr x3 and group 16 by name; the baseline and the
    optimizer settings by the optimizer they trained with (the paper's GRPO is AdamW, its "SGD" run SGD)."""
    named = {"gspo": "GSPO", "lr_x3": "LR x3 (3e-6)", "group_16": "Rollouts 16"}
    if row["setting"] in named:
        return named[row["setting"]]
    if row["setting"] not in ("grpo", "sgd", "adamw"):
        return ""
    opt = row.get("overrides", {}).get("optimizer", baseline_optimizer)
    return "SGD" if opt == "sgd" else "GRPO"


def _body_robustness(s: dict) -> str:
    n, paper = s["numbers"], s["paper"]
    base_opt = n["baseline_optimizer"]  # render_html fills it in for results written before the field existed
    rows = []
    for r in n["settings"]:
        w, lp = r["weights"], r["logprobs"]
        pp = paper.get(_paper_robustness_key(r, base_opt), None)
        ptxt = (
            f"{pp['weight']} ({pp['weight_iqr'][0]}-{pp['weight_iqr'][1]}); log-prob {pp['logprob']}" if pp else "n/a"
        )
        rows.append([html.escape(r["label"]), _f(w["median"]), f"{_f(w['q1'])}-{_f(w['q3'])}", _f(w["null_median"]),
                     _f(lp["median"]), _f(lp["null_median"]), _f(r["val_accuracy_end"]), ptxt])  # fmt: skip
    head = ["setting", "weight median R²", "weight IQR", "weight null median", "log-prob median R²",
            "log-prob null median", "final val acc", "paper weight median (IQR)"]  # fmt: skip
    return (
        f"<p>One run per setting, seed {s['seeds'][0]}; baseline optimizer {html.escape(base_opt)}; SGD lr = "
        f"{n['sgd_lr_factor']:g} x the AdamW lr. The paper's column is its run with the same optimizer (its "
        "baseline GRPO is AdamW).</p>"
        + _table(head, rows)
    )


def _body_mechanism(s: dict) -> str:
    n, p = s["numbers"], s["paper"]
    lookup = {str(k): v for k, v in zip(p["snr_db"], p["weighted_median_r2"])}
    rows = []
    for pt in [n["vanilla_sft"], *n["curve"]]:
        key = pt["label"].replace(" dB", "")
        pv = p["sft_baseline_median"] if pt["label"] == "vanilla SFT" else lookup.get(key)
        rows.append([html.escape(pt["label"]), _ci(pt["weighted_median"]), _ci(pt["weighted_mean"]),
                     _ci(pt["val_accuracy_end"]), _f(pv)])  # fmt: skip
    return (
        "<p>Weighted R² = Σ<sub>i</sub> kept<sub>i</sub>·stat<sub>i</sub> / Σ<sub>i</sub> kept<sub>i</sub> over "
        "tensors i (kept = moved parameters that passed the filters; stat = the tensor's median or mean R²). Noise: "
        "w<sub>t</sub> = (s + σε<sub>t</sub>)/√(s²+σ²), σ = 10<sup>−SNR/20</sup>.</p>"
        + _table(["setting", "weighted median R²", "weighted mean R²", "final val acc", "paper weighted median"], rows)
    )


def _body_wx(s: dict) -> str:
    n = s["numbers"]
    rows = [
        [_s(r.get("t0", 0)), _s(r["t1"]), _s(r["target"]), _f(r["alpha"], 2), _ci(r["extrapolated"]),
         _ci(r["real_rl"]), _ci(r["diff_vs_real"]), _ci(r["gain_vs_t1"])]
        for r in n["rows"]
    ]  # fmt: skip
    head = ["t0", "t1", "target", "alpha", "extrapolated acc", "real RL acc at target", "extrap − real",
            "extrap − t1 ckpt"]  # fmt: skip
    peaks = "; ".join(
        f"(t0, t1) = {k}: peak at {v['target']} (alpha {v['alpha']:.2f}, {v['accuracy']:.3f})"
        for k, v in n["peaks"].items()
    )
    return (
        f"<p>{html.escape(n['metric'])} on {n['problems']} problems; two-point rule from (t0, t1); t0 = 0 is the "
        f"paper's base, a later t0 skips the early phase. Peaks: {peaks}.</p>" + _table(head, rows)
    )


def _body_logit(s: dict) -> str:
    n, p = s["numbers"], s["paper"]
    rows = [[_s(r["seed"]), _f(r["std_rl"], 4), _f(r["extrapolated"], 4), _boot(r["bootstrap"])] for r in n["per_seed"]]
    return (
        f"<p>Logit extrapolation from step {n['base_step']} and step {n['second_step']} (last) with alpha "
        f"{n['alpha']} (nominal target step {_f(n['target_step'], 1)}); avg@{n['k']} at T = 0.6, top-p 0.95 on "
        f"{n['problems']} {_s(n['split'])} problems. Last RL checkpoint: {_ci(n['std_rl_avg_at_k'], 4)}; extrapolated: "
        f"{_ci(n['extrapolated_avg_at_k'], 4)}; difference over seeds {_ci(n['diff_over_seeds'], 4)}; pooled paired "
        f"bootstrap over problems {_boot(n['pooled_paired_bootstrap'])}; relative "
        f"{_f(n['relative_improvement_%'], 2)}%. Paper: {p['std_rl_avg']} -> {p['ours_avg']} "
        f"(+{p['relative_improvement_%']}%).</p>"
        + _table(["seed", "last RL avg@k", "extrapolated avg@k", "paired bootstrap diff [95% CI]"], rows)
    )


def _body_regrounding(s: dict) -> str:
    n = s["numbers"]
    sp_rows = [
        [html.escape(r["config"]), _f(r["threshold"]), _s(r["std_steps"]), _s(r["reground_steps"]), _s(r["reached"]),
         _ci(r["speedup"], 2)]
        for r in n["speedups"]
    ]  # fmt: skip
    b_rows = [
        [html.escape(r["config"]), _s(r["gradient_steps"]), _ci(r["standard"]), _ci(r["reground"]), _ci(r["diff"]),
         _f(r["relative_%"], 1), _boot(r["pooled_paired_bootstrap"])]
        for r in n["fixed_budgets"]
    ]  # fmt: skip
    walls = "; ".join(f"{k}: {_ci(v, 1)} s" for k, v in n["wall_time_s"].items())
    return (
        f"<p>Thresholds ({html.escape(n['threshold_rule'])}): {', '.join(_f(t) for t in n['thresholds'])}. Steps are "
        f"gradient steps; optimizer state after a jump: {html.escape(n['optimizer_after_jump'])}.</p>"
        + _table(["config (M,N)", "threshold", "standard steps", "re-grounded steps", "reached", "speedup"], sp_rows)
        + f"<p>Fixed gradient budgets: greedy test accuracy on {n['budget_problems']} problems.</p>"
        + _table(["config", "gradient steps", "standard", "re-grounded", "diff", "rel %", "pooled bootstrap"], b_rows)
        + f"<p class='small'>Wall time per run including jumps and evaluations: {walls}.</p>"
    )


_BODIES = {
    "baseline": _body_baseline,
    "linearity": _body_linearity,
    "robustness": _body_robustness,
    "mechanism": _body_mechanism,
    "weight_extrapolation": _body_wx,
    "logit_extrapolation": _body_logit,
    "regrounding": _body_regrounding,
}


#: ``rlvr_linear/templates``: package data (pyproject.toml), one level above this module
_TEMPLATES = Path(__file__).parent.parent / "templates"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters["tojson_plain"] = lambda v: json.dumps(v)  # (escaped by autoescape like any other string)
    return env


def regime_html(map_dir: str | Path, img) -> str:
    """The study report's leading section when ``map_dir/regime_map.json`` exists (else ``""``); ``img(path)``
    inlines the figure at ``path`` (the map's figures lie next to its JSON). Reads only the map's files (written by
    :mod:`rlvr_linear.regime.render`), so the report imports nothing from the regime map."""
    p = Path(map_dir) / "regime_map.json"
    if not p.exists():
        return ""
    m = read_json(p)
    rows = []
    for name, pt in sorted(m.get("points", {}).items()):
        def f(d):
            return "—" if not d or d.get("mean") is None else f"{d['mean']:.3f}"

        b = pt.get("best_weight_extrapolation") or {}
        g = b.get("gain_vs_t1_greedy")
        gain = "—" if not g else f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] ({html.escape(b['case'])})"
        c = (pt.get("rl_minus_sft") or {}).get("weights")
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{len(pt['seeds'])}</td><td>{f(pt['weights']['median'])}"
                    f" (null {f(pt['weights']['null_median'])})</td><td>{f(pt['logprobs']['median'])} (null "
                    f"{f(pt['logprobs']['null_median'])})</td><td>{f(pt['forecast_ratio']['q2'])}</td>"
                    f"<td>{gain}</td><td>{'—' if c is None else f'{c:+.3f}'}</td></tr>")  # fmt: skip
    best_rows = []
    for key, what in (("weight", "weight extrapolation"), ("logit", "logit extrapolation")):
        b = (m.get("best") or {}).get(key)
        if b:
            g, r = b["gain_vs_t1_greedy"], b.get("gain_vs_real_greedy")
            real = "no real checkpoint" if not r else f"{r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"
            gain = f"{g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]"
            best_rows.append(f"<tr><td>{what}</td><td>{html.escape(b['point'])}: {html.escape(b['case'])}</td>"
                             f"<td>{gain}</td><td>{real}</td></tr>")  # fmt: skip
        else:
            best_rows.append(f"<tr><td>{what}</td><td colspan='3'>not measured yet</td></tr>")
    r = (m.get("best") or {}).get("regrounding")
    best_rows.append(
        f"<tr><td>re-grounding</td><td>{html.escape(r['point'])} ({html.escape(r['spec'])})</td>"
        f"<td>speed-up {r['speedup']:.2f}x</td><td>—</td></tr>"
        if r
        else "<tr><td>re-grounding</td><td colspan='3'>not measured yet</td></tr>"
    )
    figs = "".join(f"<div>{img(Path(map_dir) / f)}</div>" for f in m.get("figures", []))
    return (
        "<h2 id='regime'>Regime map</h2>"
        f"<p class='verdict'>{html.escape(m.get('summary', ''))}. Protocol: docs/regime.md.</p>"
        f"<div class='cols'>{figs}</div>"
        "<p>Best measured gain over the map, whatever its sign (greedy, held-out; paired bootstrap 95% CI):</p>"
        "<table><tr><th>effect</th><th>where</th><th>gain over t1</th><th>vs the real checkpoint</th></tr>"
        + "".join(best_rows)
        + "</table>"
        "<table><tr><th>point</th><th>seeds</th><th>weight R² median</th><th>log-prob R² median</th>"
        "<th>forecast ratio (fit 1/2)</th><th>best weight extrapolation, greedy − t1 [95% CI]</th>"
        "<th>weight R² RL − SFT</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(results: dict, out: str | Path, regime_dir: str | Path | None = None) -> str:
    """The report as one HTML string; figures (paths relative to ``out``) are inlined as base64 PNG. The regime map
    leads it when ``regime_dir`` (default ``out/regime``) holds one (``regime_map.json`` and its figures).

    Rendered from ``templates/report.html.j2`` with Jinja2 autoescaping: titles, verdicts, run names, notes and the
    JSON dumps are escaped there; only HTML this module builds itself (the section tables, whose text cells go
    through :func:`html.escape`, the regime map and the inlined figures) is passed through ``|safe``.
    """
    out = Path(out)
    regime_dir = out / "regime" if regime_dir is None else Path(regime_dir)
    summary = []
    for s in SECTIONS:
        r = results.get(s)
        if r is None:
            summary.append({"name": s, "result": None})
            continue
        try:
            # a stage the protocol left out for its budget (study.run.not_run_result) has no table: its verdict says it
            if s == "robustness" and "baseline_optimizer" not in r["numbers"]:  # results written before the field
                opt = results.get("meta", {}).get("config", {}).get("optimizer", "adamw")  # existed: the study's
                r = {**r, "numbers": {**r["numbers"], "baseline_optimizer": opt}}
            body = "" if r["numbers"].get("not_run") else _BODIES[s](r)
        except (KeyError, TypeError, ValueError) as e:  # a malformed section still shows its raw numbers
            body = f"<p class='small'>(table unavailable: {html.escape(repr(e))})</p>"
        summary.append(
            {
                "name": s,
                "result": r,
                "cls": r["reproduced"].replace("/", ""),
                "wall": _f(r.get("wall_s"), 0),
                "body": body,
                "paper_json": json.dumps(r["paper"], indent=1, ensure_ascii=False),
                "figures": [_img(out, f) for f in r.get("figures", [])],
                "numbers_json": json.dumps(r["numbers"], indent=1, ensure_ascii=False)[:60000],
            }
        )
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            css=_CSS,
            banner=BANNER,
            meta=results["meta"],
            regime=regime_html(regime_dir, lambda p: _img(p.parent, p.name)),
            summary=summary,
        )
    )


def write_report(results: dict, out: str | Path, regime_dir: str | Path | None = None) -> dict:
    """Validate ``results``, write ``OUT/results.json`` and ``OUT/report.html`` atomically; returns both paths
    (``regime_dir``: see :func:`render_html`)."""
    out = Path(out)
    validate_results(results)
    j = write_json(out / "results.json", results)
    h = write_text(out / "report.html", render_html(results, out, regime_dir))
    return {"json": j, "html": h}
