"""Validation: how often are the advisor's "safe" calls right, on extrapolations whose accuracy was measured?

A *case* (one JSON object per line of ``cases.jsonl``, as the regime map writes them) is one extrapolation:
``{"run", "t0", "t1", "target", "predictor": "two_point" | "lsq" | "rank1", "gain_vs_t1": {"greedy": {"mean", "lo",
"hi"}, "avg_k": {...}}, ...}`` with gain = accuracy of the extrapolated model minus the t1 checkpoint's (paired
bootstrap 95% CI); optional ``"fit"`` (``"all"``, the default, as the regime map fits every checkpoint in
[t0, t1], or ``"last-K"``) for least squares. Cases with ``"space": "logit"`` (output-space extrapolation) and cases
without a measured gain are skipped and counted.

The advisor's call uses only the run's checkpoints with ``t0 <= step <= t1`` (no peeking; t0 is the two-point /
rank-1 base). Two rules (``rule``):

* ``"h_star"``: **safe** when the jump ``target - t1`` is at most the predictor's h* in weight space (bound < 1);
* ``"calibrated"``: the same walk with a bound threshold ``c`` fitted on labelled cases (:mod:`.calibrate`); the
  reported calls are **held-out**: leave one run out, ``c`` fitted on the other runs' cases (largest recall at
  precision >= 0.8 there). The fit on all cases, the per-predictor variant and the fit on the other label are
  reported next to it (``"calibration"``), the in-sample numbers labelled as such.

A case with too few checkpoints to backtest is called unsafe (the advisor would not vouch for it) and counted.

Label ("the extrapolated model scored at least as well as t1"), chosen with ``label``:

* ``"mean"`` (default): the gain's point estimate is >= 0. This is the literal reading, and it does not reward the
  advisor for cases that are merely too noisy to call worse;
* ``"ci"``: the CI upper bound is >= 0 (not significantly worse), a lenient label reported next to it.

Precision = right "safe" calls / "safe" calls; recall = right "safe" calls / cases labelled safe. ``other_rules``
scores the h* rule applied to the run's curve (validation accuracy / reward; :func:`~.advise.read_curve`), alone
and together with the weights. Several cases files can be validated together; ``per_source`` splits the scores by
file. A relative ``run`` path is looked up next to the cases file, then from the working directory, then in the
folders above the cases file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import jsonable, write_json
from . import calibrate
from .advise import advise
from .backtest import canonical

REQUIRED = ("run", "t0", "t1", "target", "predictor", "gain_vs_t1")
LABELS = ("mean", "ci")
RULES = ("h_star", "calibrated")


def _resolve_run(run: str, cases_file: Path) -> str:
    r = Path(run)
    if r.is_absolute() or not (cases_file.parent / r).exists() and r.exists():
        return str(r)
    for d in [cases_file.parent, *cases_file.resolve().parent.parents]:
        if (d / r).exists():
            return os.path.relpath(d / r)
    return str(r)


def read_cases(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise RlvrLinearError(f"{p}: cases file not found")
    cases = []
    for i, line in enumerate(p.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            c = json.loads(line)
        except json.JSONDecodeError as e:
            raise RlvrLinearError(f"{p}: line {i + 1} is not JSON ({e})") from None
        missing = [k for k in REQUIRED if not isinstance(c, dict) or k not in c]
        if missing:
            raise RlvrLinearError(f"{p}: line {i + 1} lacks {', '.join(missing)}")
        c["run"] = _resolve_run(c["run"], p)
        c.setdefault("source", p.name)
        cases.append(c)
    if not cases:
        raise RlvrLinearError(f"{p}: no cases")
    return cases


def _k(case: dict) -> int | str:
    """Least-squares window of a case: ``"all"`` checkpoints in [t0, t1] unless ``"fit": "last-K"``."""
    fit = case.get("fit", "all")
    if isinstance(fit, str) and fit.startswith("last-") and fit[5:].isdigit():
        return int(fit[5:])
    return "all"


def _curve_call(row: dict) -> bool:
    """The same rule on the run's own validation / reward curve (False when the run has no curve)."""
    h = row.get("h_star_curve")
    return h is not None and row["target"] - row["t1"] <= h


def label_of(gain: dict, rule: str) -> bool:
    return gain["mean"] >= 0 if rule == "mean" else gain["hi"] >= 0


def scores(calls: list[bool], labels: list[bool]) -> dict:
    c, y = np.asarray(calls, bool), np.asarray(labels, bool)
    tp = int((c & y).sum())
    return {
        "cases": int(c.size),
        "labelled_safe": int(y.sum()),
        "called_safe": int(c.sum()),
        "true_safe_calls": tp,
        "false_safe_calls": int((c & ~y).sum()),
        "correct_calls": int((c == y).sum()),
        "precision": tp / int(c.sum()) if c.sum() else None,
        "recall": tp / int(y.sum()) if y.sum() else None,
        "base_rate": float(y.mean()) if y.size else None,
    }


def _read_all(cases) -> list[dict]:
    if isinstance(cases, (str, Path)):
        return read_cases(cases)
    cases = list(cases)
    if cases and all(isinstance(c, (str, Path)) for c in cases):
        return [c for path in cases for c in read_cases(path)]
    return cases


def advise_cases(cases: list[dict], metric: str = "greedy", progress: bool = True) -> tuple[list[dict], dict]:
    """One row per weight-space case with a measured gain: the labels, and the advisor's backtest of the case's
    predictor on the checkpoints t0..t1 (``bins`` = [[rho_max, upper], ...], ``need``, ``h_star``, ``rho``, the
    predicted ratio). Advises each (run, t0, t1, k) once. Returns ``(rows, skipped counts)``."""
    cache: dict = {}
    rows = []
    skipped = {"logit": 0, "no_gain": 0}
    for c in tqdm(cases, desc="advising cases", disable=None if progress else True):
        if c.get("space", "weight") != "weight":
            skipped["logit"] += 1
            continue
        gain = (c["gain_vs_t1"] or {}).get(metric)
        if not gain or gain.get("mean") is None:
            skipped["no_gain"] += 1
            continue
        pred = canonical(c["predictor"])
        t0, t1, target = int(c["t0"]), int(c["t1"]), float(c["target"])
        kk = _k(c) if pred == "lsq_last_k" else 4
        if kk == "all":
            pred, kk = "lsq_all", 4
        key = (c["run"], t0, t1, kk)
        if key not in cache:
            try:
                preds = ("two_point", "lsq_all", "lsq_last_k", "rank1")
                cache[key] = advise(c["run"], until=t1, base_step=t0, k=kk, predictors=preds, progress=False)
            except RlvrLinearError as e:
                cache[key] = str(e)
        adv = cache[key]
        row = {"run": c["run"], "source": c.get("source"), "seed": c.get("seed"), "t0": t0, "t1": t1,
               "target": target, "predictor": pred, "gain": gain, "label_mean": label_of(gain, "mean"),
               "label_ci": label_of(gain, "ci")}  # fmt: skip
        if isinstance(adv, str):
            row.update(h_star=None, rho=None, predicted_ratio=None, bins=[], need=math.inf, error=adv)
        else:
            bt = adv.spaces["weights"][pred]
            rho = (target - t1) / bt.span if bt.span > 0 else math.inf
            bins = [[r["rho_max"], r["upper"]] for r in bt.rows]
            row.update(h_star=bt.h_star, rho=rho, predicted_ratio=bt.ratio_at(rho), bins=bins,
                       need=calibrate.need(bins, rho))  # fmt: skip
            cv = adv.spaces.get("curve", {}).get(pred)
            row["h_star_curve"] = None if cv is None else cv.h_star
        row["call_h_star"] = bool(row["need"] < 1.0)
        rows.append(row)
    return rows, skipped


def _other(label: str) -> str:
    return "ci" if label == "mean" else "mean"


def score_calls(calls: list[bool], rows: list[dict], label: str) -> dict:
    """Scores of ``calls`` on ``label`` and the other label, per predictor and per cases file."""

    def by(field: str, lab: str) -> dict:
        return {
            v: scores([c for c, r in zip(calls, rows) if r.get(field) == v],
                      [r[f"label_{lab}"] for r in rows if r.get(field) == v])
            for v in sorted({r.get(field) for r in rows}, key=str)
        }  # fmt: skip

    return {
        "scores": scores(calls, [r[f"label_{label}"] for r in rows]),
        "scores_other_label": scores(calls, [r[f"label_{_other(label)}"] for r in rows]),
        "per_predictor": by("predictor", label),
        "per_predictor_other_label": by("predictor", _other(label)),
        "per_source": by("source", label),
        "per_source_other_label": by("source", _other(label)),
    }


def calibration(rows: list[dict], label: str, target_precision: float = calibrate.TARGET_PRECISION) -> dict:
    """The calibrated rule on ``rows``: held-out (leave one run out) calls fitted on ``label``, and next to them the
    per-predictor variant, the fit on the other label (both held out) and the fit on all rows (in-sample)."""
    cv = calibrate.cross_validate(rows, label, target_precision=target_precision)
    per = calibrate.cross_validate(rows, label, target_precision=target_precision, by_predictor=True)
    oth = calibrate.cross_validate(rows, _other(label), target_precision=target_precision)
    fit_all = calibrate.fit(rows, label, target_precision)
    fit_all_per = calibrate.fit(rows, label, target_precision, by_predictor=True)
    return {
        "calls": cv["calls"],
        "target_precision": target_precision,
        "criterion": f"bound c with the largest recall at precision >= {target_precision} on the fitting cases "
        f"(label {label!r}; smallest c on ties; c = 0, nothing safe, when none reaches it); held out: leave one run "
        "out",
        "folds": cv["folds"],
        "by_predictor": {"folds": per["folds"], **score_calls(per["calls"], rows, label)},
        "fit_on_other_label": {
            "label": _other(label),
            "folds": oth["folds"],
            **score_calls(oth["calls"], rows, _other(label)),
        },
        "fit_all": fit_all,
        "fit_all_in_sample": score_calls(calibrate.apply(fit_all, rows), rows, label),
        "fit_all_by_predictor": {p: f["bound"] for p, f in fit_all_per["bounds"].items()},
    }


def validate(
    cases: str | Path | list,
    out: str | Path | None = None,
    *,
    metric: str = "greedy",
    label: str = "mean",
    rule: str = "h_star",
    target_precision: float = calibrate.TARGET_PRECISION,
    progress: bool = True,
) -> dict:
    """Call every case with the advisor and score the calls (see the module docstring). ``cases``: a cases file,
    a list of them, or a list of case dicts. Writes ``validation.json`` and ``validation.png`` (the backtested
    number the rule thresholds vs measured gain) to ``out``."""
    if label not in LABELS:
        raise RlvrLinearError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if rule not in RULES:
        raise RlvrLinearError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    rows, skipped = advise_cases(_read_all(cases), metric, progress)
    if not rows:
        raise RlvrLinearError("no weight-space case with a measured gain to validate")
    result: dict = {"kind": "advisor_validation", "metric": metric, "label": label, "rule": rule}
    if rule == "h_star":
        result["rule_text"] = "call safe when target - t1 <= h* (weights; backtest on checkpoints t0..t1)"
        calls = [r["call_h_star"] for r in rows]
        result.update(score_calls(calls, rows, label))
    else:
        cal = calibration(rows, label, target_precision)
        calls = cal.pop("calls")
        result["rule_text"] = (
            "call safe when target - t1 <= h*_c (the h* walk with bound threshold c; weights; backtest on "
            "checkpoints t0..t1); c fitted on the other runs' cases (leave one run out): held-out calls"
        )
        result.update(score_calls(calls, rows, label))
        result["calibration"] = cal
        result["h_star_rule"] = score_calls([r["call_h_star"] for r in rows], rows, label)
    for r, c in zip(rows, calls):
        r["call_safe"] = c
    lab = [r[f"label_{label}"] for r in rows]
    result["other_rules"] = {
        "curve": scores([_curve_call(r) for r in rows], lab),
        "weights_and_curve": scores([r["call_h_star"] and _curve_call(r) for r in rows], lab),
    }
    result["not_backtestable"] = sum(1 for r in rows if "error" in r)
    result["skipped"] = skipped
    result["cases"] = rows
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "validation.json", jsonable(result))
        bound = result["calibration"]["fit_all"]["bound"] if rule == "calibrated" else 1.0
        plot_validation(rows, out / "validation.png", label, bound=bound, rule=rule)
    return result


def plot_validation(
    rows: list[dict], path: str | Path, label: str = "mean", bound: float = 1.0, rule: str = "h_star"
) -> Path:
    """Measured gain (95% CI) against the case's ``need`` (the bin bound the rule thresholds; the case is called
    safe when it is below the threshold, drawn at ``bound``); green: called safe, red: not; filled: labelled safe."""
    from matplotlib.figure import Figure

    from ..reporting.plots import _save

    fig = Figure(figsize=(6.5, 4.8))
    ax = fig.subplots()
    marks = {"two_point": "o", "lsq_last_k": "s", "lsq_all": "s", "rank1": "^"}
    for r in rows:
        if not math.isfinite(r["need"]):
            continue
        g = r["gain"]
        color = "tab:green" if r["call_safe"] else "tab:red"
        ax.errorbar(min(r["need"], 1e3), g["mean"], yerr=[[g["mean"] - g["lo"]], [g["hi"] - g["mean"]]],
                    fmt=marks.get(r["predictor"], "o"), color=color, alpha=0.55, ms=5, lw=0.8,
                    mfc=color if r[f"label_{label}"] else "none")  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(1, color="gray", lw=0.8, ls="--", label="h* threshold (1)")
    if rule == "calibrated":
        ax.axvline(bound, color="tab:blue", lw=1.0, ls="-", label=f"calibrated c = {bound:.3g} (fit on all)")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xscale("log")
    ax.set_xlabel("backtested 95% bound of the weight error ratio up to the case's horizon")
    ax.set_ylabel(f"greedy accuracy gain vs t1 (95% CI)\nfilled: labelled safe ({label!r})", fontsize=9)
    n_inf = sum(1 for r in rows if not math.isfinite(r["need"]))
    who = "called safe (held out)" if rule == "calibrated" else "called safe"
    ax.set_title(f"{len(rows) - n_inf} cases (+{n_inf} beyond every backtested horizon, not shown)\n"
                 f"green: {who}, red: not; o two-point, s least squares, ^ rank-1", fontsize=8)  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)
