"""Extrapolation cases of one regime-map run: weight (two-point, least squares, rank-1) and logit extrapolation.

Windows, with ``u = H/14`` the save interval and ``H`` the horizon: ``t1`` at 1/3, 1/2 and the end of the run
(snapped to the save grid: 5u, 7u, 14u), ``t0`` at step 0 and at ``2u`` (skipping the early phase; windows
shorter than 2u are skipped). Targets ``t0 + α (t1 − t0)`` for α in {1.25, 1.5, 2, 3}. Least squares and rank-1
fit every checkpoint in ``[t0, t1]`` (``extrapolation.weights.extrapolate_fit``); two-point uses ``t0`` and ``t1``
(``extrapolate_two_point``). Logit extrapolation mixes the logits of the ``t0`` and ``t1`` models with the same α
(``extrapolation.logits.ExtrapolatedGenerator``).

Full items (seed 0 of the main grid, contrast points), 56 cases: two-point at every α, least squares and rank-1 at
α in {1.5, 2}, on all 6 windows; logit at t1 in {7u, 14u}, α in {1.5, 2}. Reduced items (seeds 1 and 2), 16 cases:
two-point and least squares at t1 in {7u, 14u}, α in {1.5, 2}; no rank-1, no logit.

Scores (``analysis.Scorer``): greedy on every case; avg@k (k = 4, T = 0.6, top-p 0.95) where it matters: the
two-point cases at α in {1.5, 2} and the logit cases of a full item, and any case whose greedy gain over ``t1`` is
>= 0. Gains are paired
bootstrap 95% CIs over the held-out problems (``evaluation.paired_bootstrap``) against the ``t1`` checkpoint and
against the real checkpoint nearest the target when the target lies within the run (``real_step``;
``real_exact`` says whether the target is itself a saved step). Extrapolated models are written under
``OUT/tmp`` and deleted after scoring. :func:`run_cases` is the map's driver; :func:`score_cases` scores any plan
of cases on any run (``regime.trajectory`` uses it on one real-model run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..io.checkpoints import step_dir_name
from .analysis import RunCache, Scorer, _num, forecast_steps
from .grid import Item

ALPHAS = (1.25, 1.5, 2.0, 3.0)
REDUCED_ALPHAS = (1.5, 2.0)
PREDICTORS = ("two_point", "lsq", "rank1")


def windows(item: Item, full: bool) -> list[tuple[int, int]]:
    from ..study.common import snap

    H, u = item.point.horizon, item.point.save_every
    t1s = [snap(H / 3, u, lo=u, hi=H), snap(H / 2, u, lo=u, hi=H), H] if full else [snap(H / 2, u, lo=u, hi=H), H]
    out = []
    for t1 in dict.fromkeys(t1s):
        for t0 in (0, 2 * u):
            if t1 - t0 >= 2 * u:
                out.append((t0, t1))
    return out


def plan(item: Item) -> list[dict]:
    """Every case of ``item`` (see the module docstring), in scoring order; none for an SFT contrast run."""
    if item.point.method == "sft":
        return []
    full = item.full
    cases = []
    for t0, t1 in windows(item, full):
        for predictor in PREDICTORS if full else ("two_point", "lsq"):
            for a in ALPHAS if full and predictor == "two_point" else REDUCED_ALPHAS:
                cases.append(dict(space="weight", predictor=predictor, t0=t0, t1=t1, alpha=a))
    if full:
        for t0, t1 in windows(Item(item.point, item.seed, full=False), False):
            for a in REDUCED_ALPHAS:
                cases.append(dict(space="logit", predictor="two_point", t0=t0, t1=t1, alpha=a))
    return with_ids(cases)


def case_id(c: dict) -> str:
    """A case's key in the cache, from its ``space``, ``predictor``, ``t0``, ``t1`` and ``alpha``."""
    return f"{c['space']}_{c['predictor']}_{c['t0']}_{c['t1']}_a{c['alpha']:g}"


def with_ids(cases: list[dict]) -> list[dict]:
    """Give each case (``space``, ``predictor``, ``t0``, ``t1``, ``alpha``) its ``target`` and ``id``, in place."""
    for c in cases:
        c["target"] = c["t0"] + c["alpha"] * (c["t1"] - c["t0"])
        c["id"] = case_id(c)
    return cases


def _build(case: dict, run: Path, out: Path) -> Path:
    from ..extrapolation.weights import extrapolate_fit, extrapolate_two_point
    from ..io.checkpoints import discover
    from ..study.common import ckpt

    shutil.rmtree(out, ignore_errors=True)
    t0, t1 = case["t0"], case["t1"]
    if case["predictor"] == "two_point":
        return extrapolate_two_point(ckpt(run, t0), ckpt(run, t1), out, alpha=case["alpha"], base_step=t0,
                                     second_step=t1, progress=False)  # fmt: skip
    traj = discover(run)
    sub = traj.subset([i for i, s in enumerate(traj.steps) if t0 <= s <= t1])
    rank = 1 if case["predictor"] == "rank1" else None
    return extrapolate_fit(sub, out, target_step=case["target"], rank=rank, progress=False)


def run_cases(regime, item: Item, run: Path, cache: RunCache, scorer: Scorer) -> bool:
    """Score every missing case of ``item``; each finished case is saved at once. Returns whether any ran."""
    p = item.point
    info = {"point": p.name, "run": str(run), "seed": item.seed, "kind": p.kind, "lr": p.lr, "responses": p.responses}
    return score_cases(
        plan(item), run, cache, scorer, tmp=regime.out / "tmp" / item.run_name, info=info, horizon=p.horizon,
        save_every=p.save_every, fit_until=forecast_steps(p),
        always_avg=lambda c: item.full and c["predictor"] == "two_point" and c["alpha"] in REDUCED_ALPHAS,
    )  # fmt: skip


def score_cases(
    planned: list[dict],
    run: Path,
    cache: RunCache,
    scorer: Scorer,
    *,
    tmp: Path,
    info: dict,
    horizon: int,
    save_every: int,
    fit_until: dict[str, int],
    always_avg=lambda case: False,
    avg_on_gain: bool = True,
    k: int | None = 4,
) -> bool:
    """Score every case of ``planned`` (:func:`with_ids` records) missing from ``cache.parts["cases"]`` on
    ``run``'s checkpoints (a grid of ``save_every`` up to ``horizon``); cases not in ``planned`` are dropped. Each
    record starts with ``info`` (point, run, seed, kind, lr, responses) and is saved at once; extrapolated models are
    built under ``tmp/<case id>`` and deleted after scoring. avg@k is scored where ``always_avg(case)``, and, with
    ``avg_on_gain``, where the greedy gain over ``t1`` is >= 0; ``fit_until`` names the forecast part's entries
    whose ratio each record carries. Returns whether any case ran."""
    from ..evaluation.evaluation import gain_ci
    from ..extrapolation.logits import ExtrapolatedGenerator
    from ..study.common import ckpt, snap

    done = cache.parts.setdefault("cases", {})
    stale = [c for c in done if c not in {p["id"] for p in planned}]  # cases of an earlier, larger plan
    for cid in stale:
        del done[cid]
    if stale:
        cache.save()
    fr = cache.parts.get("forecast", {})
    ratio = {q: (fr.get(q) or {}).get("ratio_at_horizon") for q in fit_until}
    H, u = horizon, save_every
    changed = False
    for case in planned:
        if case["id"] in done:
            continue
        t0, t1, target = case["t0"], case["t1"], case["target"]
        key = f"case_{case['id']}"
        case_tmp = Path(tmp) / case["id"]
        if case["space"] == "weight":

            def model(case=case, tmp=case_tmp):
                return str(_build(case, run, tmp))
        else:

            def model(t0=t0, t1=t1, a=case["alpha"]):
                return ExtrapolatedGenerator.from_dirs(ckpt(run, t0), ckpt(run, t1), alpha=a)

        avg_now = bool(always_avg(case))
        x = scorer.score(cache, key, model, avg=avg_now)
        s1 = scorer.score(cache, step_dir_name(t1), str(ckpt(run, t1)), avg=avg_now)
        gain_g = gain_ci(s1["greedy"], x["greedy"])
        want_avg = avg_now or (avg_on_gain and gain_g["mean"] is not None and gain_g["mean"] >= 0)
        if want_avg:
            x = scorer.score(cache, key, model, avg=True)
            s1 = scorer.score(cache, step_dir_name(t1), str(ckpt(run, t1)), avg=True)
        real_step = snap(target, u) if target <= H else None
        sr = None
        if real_step is not None:
            sr = scorer.score(cache, step_dir_name(real_step), str(ckpt(run, real_step)), avg=want_avg)
        shutil.rmtree(case_tmp, ignore_errors=True)
        rec = {
            **info,
            "horizon": H,
            "t0": t0,
            "t1": t1,
            "target": target,
            "alpha": case["alpha"],
            "predictor": case["predictor"],
            "space": case["space"],
            "n_problems": len(scorer.problems),
            "k": k,
            "acc_t1": _num(s1["greedy"].mean()),
            "acc_x": _num(x["greedy"].mean()),
            "acc_real_target": None if sr is None else _num(sr["greedy"].mean()),
            "real_step": real_step,
            "real_exact": real_step is not None and real_step == target,
            "avg_k": {
                "acc_t1": _num(s1["avg"].mean()) if "avg" in s1 else None,
                "acc_x": _num(x["avg"].mean()) if "avg" in x else None,
                "acc_real_target": _num(sr["avg"].mean()) if sr is not None and "avg" in sr else None,
            },
            "gain_vs_t1": {
                "greedy": gain_g,
                "avg_k": gain_ci(s1["avg"], x["avg"]) if "avg" in x and "avg" in s1 else None,
            },
            "gain_vs_real": None
            if sr is None
            else {
                "greedy": gain_ci(sr["greedy"], x["greedy"]),
                "avg_k": gain_ci(sr["avg"], x["avg"]) if "avg" in x and "avg" in sr else None,
            },
            "forecast_ratio": ratio,
        }
        done[case["id"]] = rec
        cache.save()
        changed = True
    return changed
