"""The study's ``trajectory`` stage: :func:`.trajectory.analyze_trajectory` on each seed's baseline RL run, and the
cross-seed summary of the results files.

It is the real-model protocol's analysis (``rlvr-linear study --model smollm2-135m``): one pass per run measures
weight R² (paper sample and every parameter), token log-prob R², activations, the forecast, two-point and least-squares
weight extrapolation and logit extrapolation (greedy on ``trajectory_problems`` test problems, avg@k at the run's own
sampling), and ``advise`` at the run's midpoint against what the jumps then measured. The analysis sits on the regime
floor (it reuses the map's cache and case scoring), so the command line runs this stage between the study's
``baseline`` and its ``report``, as it does the regime map.

:func:`summarize` reads only ``trajectory.json`` files, so a summary over seeds run at different times needs no
checkpoint: ``OUT/trajectory/result.json`` (the report's section) and ``summarize(paths)`` on committed files agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import RlvrLinearError
from ..io import jsonable, read_json, write_json
from .cases import case_id
from .trajectory import ALPHAS, analyze_trajectory

TITLE = "Real-model trajectory: linearity, forecast and extrapolation"
#: the linearity bar: a median R² this far above its null counts as linear (the regime map's bar)
ABOVE_NULL = 0.2


def settings_for(cfg, man: dict) -> dict:
    """``analyze_trajectory`` keywords of a study protocol on one run: the run's own sampling for avg@k and its reply
    length for both decodings, windows that skip the early phase, logit extrapolation at the same α."""
    tc = man.get("config") or {}
    return dict(
        problems=cfg.trajectory_problems,
        alphas=ALPHAS,
        logit_alphas=ALPHAS,
        probe_prompts=cfg.probe_prompts,
        probe_samples=cfg.probe_samples,
        from_start=False,
        k=cfg.trajectory_k,
        temperature=float(tc.get("temperature") or 1.0),
        top_p=float(tc.get("top_p") or 1.0),
        max_new_tokens=tc.get("max_new_tokens"),
        threads=cfg.threads,
    )


def run_trajectory_stage(cfg, out: str | Path, progress: bool = True) -> dict:
    """Analyse ``OUT/runs/rl_seed<seed>`` of every seed into ``OUT/trajectory/seed<seed>`` (cached: a rerun resumes),
    then write the section ``OUT/trajectory/result.json``; returns it."""
    out = Path(out)
    paths = []
    for seed in cfg.seeds:
        run = out / "runs" / f"rl_seed{seed}"
        man = read_json(run / "manifest.json") if (run / "manifest.json").is_file() else {}
        if not man.get("finished"):
            raise RlvrLinearError(f"{run}: no finished baseline run; run the baseline stage first")
        dest = out / "trajectory" / f"seed{seed}"
        analyze_trajectory(run, dest, progress=progress, **settings_for(cfg, man))
        paths.append(dest / "trajectory.json")
    res = summarize(paths, rel_to=out)
    # the stage's time: the analyses' recorded compute (stable across reruns, which only reuse the cache)
    res["wall_s"] = round(sum(r["analysis_s_total"] or 0.0 for r in res["numbers"]["per_seed"]), 1)
    write_json(out / "trajectory" / "result.json", jsonable(res))
    timings = read_json(out / "timings.json") if (out / "timings.json").exists() else {}
    write_json(out / "timings.json", {**timings, "trajectory": res["wall_s"]})
    return res


def _seed_row(r: dict) -> dict:
    lin, ex, adv = r["linearity"], r["extrapolation"], r["advisor"]
    tr = r["train"]
    acc = [a for a in tr["val_accuracy"] if a is not None]
    cases = ex["cases"]

    def best(space: str, vs: str) -> dict | None:
        cs = [c for c in cases if c["space"] == space and c.get(vs)]
        return max(cs, key=lambda c: c[vs]["greedy"]["mean"]) if cs else None

    def case_view(c: dict | None) -> dict | None:
        if c is None:
            return None
        keep = ("space", "predictor", "t0", "t1", "alpha", "target", "real_step", "acc_x", "acc_t1",
                "acc_real_target", "gain_vs_t1", "gain_vs_real", "avg_k")  # fmt: skip
        return {"id": case_id(c), **{k: c[k] for k in keep}}

    return {
        "seed": r.get("seed", r["settings"].get("seed")),
        "val_accuracy_start": acc[0] if acc else None,
        "val_accuracy_end": acc[-1] if acc else None,
        "train_wall_s": tr.get("wall_time_s"),
        "analysis_s": {k: v for k, v in r["timing_s"].items() if v is not None},
        "analysis_s_total": round(sum(v for v in r["timing_s"].values() if isinstance(v, (int, float))), 1),
        **{f"{name}_r2": {k: lin[name].get(k) for k in ("median", "null_median", "median_minus_null", "median_ci",
                                                        "null_median_ci", "n")}
           for name in ("weights_paper", "weights", "logprobs", "activations")},  # fmt: skip
        "forecast_ratio": {q: {"fit_until": v["fit_until"], "ratio_at_horizon": v["ratio_at_horizon"],
                               "ratio_pooled": v["ratio_pooled"]}
                           for q, v in r["forecast"].items() if isinstance(v, dict) and "fit_until" in v},  # fmt: skip
        "best_weight_vs_t1": case_view(best("weight", "gain_vs_t1")),
        "best_weight_vs_real": case_view(best("weight", "gain_vs_real")),
        "best_logit_vs_t1": case_view(best("logit", "gain_vs_t1")),
        "best_logit_vs_real": case_view(best("logit", "gain_vs_real")),
        "avg_k_case": case_view(next((c for c in cases if (c["gain_vs_t1"] or {}).get("avg_k")), None)),
        "cases_beating_t1": sum((c["gain_vs_t1"]["greedy"]["lo"] or 0) > 0 for c in cases),
        "cases_beating_real": sum(bool(c.get("gain_vs_real")) and (c["gain_vs_real"]["greedy"]["lo"] or 0) > 0
                                  for c in cases),  # fmt: skip
        "cases": len(cases),
        "advisor_at_t1": {k: adv["at_t1"].get(k) for k in ("until", "verdict", "predictor", "target_step",
                                                            "h_star_steps", "safe")},  # fmt: skip
        "advisor_at_t1_vs_cases": adv["at_t1_vs_cases"],
    }


def _seed_of(path: Path, r: dict) -> int | None:
    name = Path(path).parent.name
    if name.startswith("seed") and name[4:].isdigit():
        return int(name[4:])
    return r.get("seed")


def summarize(paths: list[str | Path], rel_to: str | Path | None = None) -> dict:
    """The study's section over seeds from ``trajectory.json`` files alone (one per seed; a folder named ``seed<N>``
    names its seed): per-seed rows, means over seeds, and the verdict."""
    if not paths:
        raise RlvrLinearError("summarize needs at least one trajectory.json")
    rows = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise RlvrLinearError(f"{p}: not found; run the trajectory stage (or copy its results) first")
        r = read_json(p)
        if r.get("kind") != "trajectory":
            raise RlvrLinearError(f"{p}: not a trajectory analysis (kind {r.get('kind')!r})")
        row = _seed_row(r)
        row["seed"] = _seed_of(p, r)
        rows.append(row)

    def mean(get) -> float | None:
        v = [get(x) for x in rows]
        v = [x for x in v if x is not None]
        return round(float(np.mean(v)), 4) if v else None

    lin = {n: {"median": mean(lambda x, n=n: x[f"{n}_r2"]["median"]),
               "null_median": mean(lambda x, n=n: x[f"{n}_r2"]["null_median"])}
           for n in ("weights_paper", "weights", "logprobs", "activations")}  # fmt: skip
    linear = all((x["weights_paper_r2"]["median_minus_null"] or 0) >= ABOVE_NULL
                 and (x["logprobs_r2"]["median_minus_null"] or 0) >= ABOVE_NULL for x in rows)  # fmt: skip
    beats_t1 = all(x["cases_beating_t1"] > 0 for x in rows)
    beats_real = all(x["cases_beating_real"] > 0 for x in rows)
    reproduced = "yes" if linear and beats_t1 else "partly" if linear or beats_t1 else "no"
    seeds = [x["seed"] for x in rows]
    fc = {q: mean(lambda x, q=q: (x["forecast_ratio"].get(q) or {}).get("ratio_at_horizon")) for q in ("q1", "q2")}
    wp, lp = lin["weights_paper"], lin["logprobs"]
    verdict = (
        f"{len(rows)} seed(s): weight R² {wp['median']} (null {wp['null_median']}), "
        f"log-prob R² {lp['median']} (null {lp['null_median']}): "
        f"{'linear' if linear else 'not linear'} by the +{ABOVE_NULL} bar on {'every' if linear else 'not every'} "
        "seed; "
        f"forecast error ratio at the horizon {fc['q1']} (fit to 1/4) and {fc['q2']} (fit to 1/2); extrapolation "
        f"{'beat' if beats_t1 else 'did not beat'} the t1 checkpoint on every seed and "
        f"{'beat' if beats_real else 'did not beat'} the real checkpoint at its target on every seed (greedy, 95% CI)."
    )
    figs = []
    if rel_to is not None:
        for p in paths:
            d = Path(p).parent
            figs += [str((d / f).relative_to(rel_to)) for f in ("accuracy.png", "forecast_ratio.png")
                     if (d / f).is_file()]  # fmt: skip
    return {
        "title": TITLE,
        "seeds": [s for s in seeds if s is not None],
        "numbers": {"per_seed": rows, "mean": {"linearity": lin, "forecast_ratio_at_horizon": fc},
                    "linear_on_every_seed": linear, "beats_t1_on_every_seed": beats_t1,
                    "beats_real_on_every_seed": beats_real},  # fmt: skip
        "paper": {"note": "paper: weight R² > 0.7 for most parameters, log-prob R² high; extrapolated (AlphaRL) "
                          "models match or beat later real checkpoints on AIME/MATH (R1-Distill-Qwen-1.5B)"},
        "reproduced": reproduced,
        "verdict": verdict,
        "figures": figs,
    }
