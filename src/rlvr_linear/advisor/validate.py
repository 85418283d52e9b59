"""Validation: how often are the advisor's "safe" calls right, on extrapolations whose accuracy was measured?

A *case* (one JSON object per line of ``cases.jsonl``, as the regime map writes them) is one extrapolation:
``{"run", "t0", "t1", "target", "predictor": "two_point" | "lsq" | "rank1", "gain_vs_t1": {"greedy": {"mean", "lo",
"hi"}, "avg_k": {...}}, ...}`` with gain = accuracy of the extrapolated model minus the t1 checkpoint's (paired
bootstrap 95% CI); optional ``"fit"`` (``"all"``, the default, as the regime map fits every checkpoint in
[t0, t1], or ``"last-K"``) for least squares. Cases with ``"space": "logit"`` (output-space extrapolation) and cases
without a measured gain are skipped and counted.

The advisor's call uses only the run's checkpoints with ``t0 <= step <= t1`` (no peeking; t0 is the two-point /
rank-1 base): **safe** when the jump ``target - t1`` is at most the predictor's h* in weight space. A case with
too few checkpoints to backtest is called unsafe (the advisor would not vouch for it) and counted.

Label ("the extrapolated model scored at least as well as t1"), chosen with ``label``:

* ``"mean"`` (default): the gain's point estimate is >= 0. This is the literal reading, and it does not reward the
  advisor for cases that are merely too noisy to call worse;
* ``"ci"``: the CI upper bound is >= 0 (not significantly worse), a lenient label reported next to it.

Precision = right "safe" calls / "safe" calls; recall = right "safe" calls / cases labelled safe. ``other_rules``
scores the same rule applied to the run's curve (validation accuracy / reward; :func:`~.advise.read_curve`), alone
and together with the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_json
from .advise import advise
from .backtest import canonical

REQUIRED = ("run", "t0", "t1", "target", "predictor", "gain_vs_t1")
LABELS = ("mean", "ci")


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
        run = Path(c["run"])
        c["run"] = str(run if run.is_absolute() else (p.parent / run if (p.parent / run).exists() else run))
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


def validate(
    cases: str | Path | list[dict],
    out: str | Path | None = None,
    *,
    metric: str = "greedy",
    label: str = "mean",
    progress: bool = True,
) -> dict:
    """Call every case with the advisor and score the calls (see the module docstring). Writes
    ``validation.json`` and ``validation.png`` (predicted error ratio vs measured gain) to ``out``."""
    if label not in LABELS:
        raise RlvrLinearError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    cases = read_cases(cases) if isinstance(cases, (str, Path)) else list(cases)
    cache: dict = {}
    rows = []
    skipped = {"logit": 0, "no_gain": 0}
    for c in tqdm(cases, desc="advising cases", disable=not progress):
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
        row = {"run": c["run"], "seed": c.get("seed"), "t0": t0, "t1": t1, "target": target, "predictor": pred,
               "gain": gain, "label_mean": label_of(gain, "mean"), "label_ci": label_of(gain, "ci")}  # fmt: skip
        if isinstance(adv, str):
            row.update(call_safe=False, h_star=None, rho=None, predicted_ratio=None, error=adv)
        else:
            bt = adv.spaces["weights"][pred]
            rho = (target - t1) / bt.span if bt.span > 0 else math.inf
            row.update(call_safe=bool(target - t1 <= bt.h_star), h_star=bt.h_star, rho=rho,
                       predicted_ratio=bt.ratio_at(rho))  # fmt: skip
            cv = adv.spaces.get("curve", {}).get(pred)
            row["h_star_curve"] = None if cv is None else cv.h_star
        rows.append(row)
    calls = [r["call_safe"] for r in rows]
    result = {
        "kind": "advisor_validation",
        "metric": metric,
        "label": label,
        "rule": "call safe when target - t1 <= h* (weights; backtest on checkpoints t0..t1)",
        "scores": scores(calls, [r[f"label_{label}"] for r in rows]),
        "scores_other_label": scores(calls, [r[f"label_{'ci' if label == 'mean' else 'mean'}"] for r in rows]),
        "per_predictor": {
            p: scores(
                [r["call_safe"] for r in rows if r["predictor"] == p],
                [r[f"label_{label}"] for r in rows if r["predictor"] == p],
            )
            for p in sorted({r["predictor"] for r in rows})
        },  # fmt: skip
        "other_rules": {
            "curve": scores([_curve_call(r) for r in rows], [r[f"label_{label}"] for r in rows]),
            "weights_and_curve": scores(
                [r["call_safe"] and _curve_call(r) for r in rows], [r[f"label_{label}"] for r in rows]
            ),
        },  # fmt: skip
        "not_backtestable": sum(1 for r in rows if "error" in r),
        "skipped": skipped,
        "cases": rows,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "validation.json", result)
        plot_validation(rows, out / "validation.png", label)
    return result


def plot_validation(rows: list[dict], path: str | Path, label: str = "mean") -> Path:
    from matplotlib.figure import Figure

    from ..plots import _save

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    marks = {"two_point": "o", "lsq_last_k": "s", "lsq_all": "s", "rank1": "^"}
    for r in rows:
        if r["predicted_ratio"] is None:
            continue
        g = r["gain"]
        color = "tab:green" if r["call_safe"] else "tab:red"
        ax.errorbar(min(r["predicted_ratio"], 1e3), g["mean"], yerr=[[g["mean"] - g["lo"]], [g["hi"] - g["mean"]]],
                    fmt=marks.get(r["predictor"], "o"), color=color, alpha=0.6, ms=5, lw=0.8)  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(1, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("advisor's backtested error ratio at the case's horizon (weights)")
    ax.set_ylabel("measured accuracy gain vs t1 (95% CI)")
    ax.set_title("green: called safe, red: not; o two-point, s least squares, ^ rank-1", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
