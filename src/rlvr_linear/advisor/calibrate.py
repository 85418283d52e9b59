"""Calibrating the advisor's "safe" call on labelled cases: one bound threshold, fitted and cross-validated over runs.

h* calls a jump safe while the backtested 95% upper bound of the weight-space error ratio stays below 1 ("the line
still beats no change"). On measured cases that is too optimistic: a line that beats "no change" in weight space
does not make the jumped model score at least as well as its source checkpoint. The **calibrated rule** walks the
same bins with a threshold ``c`` instead of 1 (:meth:`~.backtest.Backtest.h_star_below`):

    safe  <=>  target − t1 <= h*_c  <=>  ρ <= ρ*_c,      ρ*_c = :func:`~.backtest.rho_star_of` (bins, c)

so every case reduces to one number, its **need** (:func:`need`): the largest bin bound up to the first bin whose
largest observed ρ reaches the case's ρ; the case is called safe iff ``need < c`` (a case beyond every backtested
bin, or whose run could not be backtested, has need = inf: never safe).

**Fitting** (:func:`fit_bound`): the candidates are the midpoints between consecutive distinct finite needs of the
fitting cases (and 1.1 × the largest); the chosen ``c`` has the largest recall among the candidates whose precision
on those cases is >= ``target_precision`` (0.8, the advisor's goal), the smallest such ``c`` on ties; when no
candidate reaches it, ``c = 0`` (call nothing safe) and ``feasible`` is False. ``by_predictor`` fits one ``c`` per
predictor on that predictor's cases.

**Cross-validation** (:func:`cross_validate`): leave one group (a run) out: ``c`` is fitted on the other groups'
cases only and calls the held-out group's cases; the pooled held-out calls are scored. These are the numbers to
report; the fit on all cases (what :func:`~.advise.advise` ships as :data:`SAFE_BOUND`) is in-sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .backtest import canonical

TARGET_PRECISION = 0.8

#: The calibrated threshold ``advise`` uses for its safe horizon: :func:`fit_bound` on ALL 552 weight-space cases
#: of experiments/results/regime_cases.jsonl (480, the regime map's first 10 runs) and
#: experiments/results/advisor/study_cases.jsonl (72, the default study's 3 seeds), label "mean" (the gain's point
#: estimate >= 0: "scored at least as well as t1"), target precision 0.8, one threshold for every predictor:
#: 0.601351, rounded; 47 calls in sample. (The first fit, on 456 cases of the map's first 8 runs, gave 0.5967.)
SAFE_BOUND = 0.6014
SAFE_BOUND_PROVENANCE = (
    "fit_bound on all 552 weight-space cases (experiments/results/regime_cases.jsonl: 480, the regime map's first "
    "10 runs; experiments/results/advisor/study_cases.jsonl: 72, the default study's 3 seeds), label mean (gain "
    ">= 0), target precision 0.8: in sample 47 safe calls, precision 0.81, recall 0.25; held out (leave one run "
    "out, 13 runs): 40 safe calls, precision 0.75, recall 0.19 (experiments/results/advisor/calibrated_mean/"
    "validation.json); the goal (precision >= 0.8 at recall >= 0.5) is not reached on this label"
)
#: the decision's confidence in one line (from the provenance above)
SAFE_BOUND_CONFIDENCE = (
    "calibrated on 552 measured jumps of the tiny model: held out, 75% of the jumps called safe scored at least as "
    "well as the newest checkpoint (40 calls, recall 0.19)"
)


def need(bins: Sequence[Sequence[float]] | None, rho: float | None) -> float:
    """The smallest threshold that calls a case safe is just above this: the running max of the bin bounds up to
    the first bin whose largest observed ρ reaches ``rho``. ``bins``: ``[[rho_max, upper], ...]``, shortest first;
    inf when there are none, when ``rho`` is None, or when ``rho`` lies beyond every backtested bin."""
    if not bins or rho is None or not math.isfinite(rho):
        return math.inf
    running = -math.inf
    for rho_max, upper in bins:
        running = max(running, float(upper))
        if rho <= rho_max:
            return running
    return math.inf


def called_safe(needs, bound: float) -> np.ndarray:
    return np.asarray(needs, dtype=np.float64) < bound


def _prec_rec(calls: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    tp = int((calls & labels).sum())
    return (tp / int(calls.sum()) if calls.sum() else None, tp / int(labels.sum()) if labels.sum() else None)


def candidates(needs) -> list[float]:
    v = np.unique(np.asarray(needs, dtype=np.float64))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return []
    return [float(x) for x in (v[:-1] + v[1:]) / 2] + [float(v[-1] * 1.1)]


def fit_bound(needs, labels, target_precision: float = TARGET_PRECISION) -> dict:
    """The threshold with the largest recall at precision >= ``target_precision`` on these cases (see the module
    docstring); ``{"bound", "feasible", "precision", "recall", "called_safe", "cases"}`` (in-sample)."""
    n, y = np.asarray(needs, dtype=np.float64), np.asarray(labels, dtype=bool)
    best: tuple[float, float, float] | None = None  # (recall, -bound, precision)
    for c in candidates(n):
        p, r = _prec_rec(called_safe(n, c), y)
        if p is None or r is None or p < target_precision:
            continue
        if best is None or (r, -c) > (best[0], best[1]):
            best = (r, -c, p)
    bound = 0.0 if best is None else -best[1]
    calls = called_safe(n, bound)
    p, r = _prec_rec(calls, y)
    return {"bound": bound, "feasible": best is not None, "precision": p, "recall": r,
            "called_safe": int(calls.sum()), "cases": int(n.size)}  # fmt: skip


def fit(rows: list[dict], label: str, target_precision: float = TARGET_PRECISION, by_predictor: bool = False) -> dict:
    """:func:`fit_bound` on validation rows (``need`` and ``label_<label>`` fields); ``by_predictor``: one
    threshold per predictor, ``{"bounds": {predictor: fit}}``; else ``{"bound": ..., ...}``."""
    if not by_predictor:
        return fit_bound([r["need"] for r in rows], [r[f"label_{label}"] for r in rows], target_precision)
    preds = sorted({r["predictor"] for r in rows})
    return {
        "bounds": {
            p: fit_bound([r["need"] for r in rows if r["predictor"] == p],
                         [r[f"label_{label}"] for r in rows if r["predictor"] == p], target_precision)
            for p in preds
        }
    }  # fmt: skip


def bound_for(fitted: dict, predictor: str) -> float:
    """The threshold a fit gives ``predictor`` (0, never safe, for a predictor a per-predictor fit never saw)."""
    if "bounds" in fitted:
        got = fitted["bounds"].get(predictor) or fitted["bounds"].get(canonical(predictor))
        return 0.0 if got is None else got["bound"]
    return fitted["bound"]


def apply(fitted: dict, rows: list[dict]) -> list[bool]:
    return [bool(r["need"] < bound_for(fitted, r["predictor"])) for r in rows]


def cross_validate(
    rows: list[dict],
    label: str,
    *,
    group: str = "run",
    target_precision: float = TARGET_PRECISION,
    by_predictor: bool = False,
) -> dict:
    """Leave-one-group-out: for each group (default the run), fit on the other groups' rows only and call the
    held-out rows. Returns ``{"calls": [bool per row, in order], "folds": [...]}``."""
    groups = list(dict.fromkeys(r[group] for r in rows))
    calls: list[bool | None] = [None] * len(rows)
    folds = []
    for g in groups:
        train = [r for r in rows if r[group] != g]
        held = [i for i, r in enumerate(rows) if r[group] == g]
        f = fit(train, label, target_precision, by_predictor)
        for i, c in zip(held, apply(f, [rows[i] for i in held])):
            calls[i] = c
        fold = {"held_out": g, "held_out_cases": len(held), "fit_cases": len(train)}
        fold.update({"bound": f["bound"], "feasible": f["feasible"]} if "bound" in f else
                    {"bounds": {p: v["bound"] for p, v in f["bounds"].items()}})  # fmt: skip
        folds.append(fold)
    return {"calls": [bool(c) for c in calls], "folds": folds}
