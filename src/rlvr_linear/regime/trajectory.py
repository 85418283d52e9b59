"""The analysis of one RL trajectory: the regime map's per-run measurements on any finished run.

:func:`analyze_trajectory` runs the map's parts (:mod:`.analysis`, :mod:`.cases`) on one run of ``rlvr-linear
train`` (checkpoints on a regular grid ``0, u, .., H``), cached per part and per case in ``OUT`` so that a killed
analysis resumes where it stopped:

    train          steps, validation accuracy and mean reward per checkpoint (the manifest)
    weights_paper  weight R² with the sign-flip null and drift-to-noise, the paper's sampling (0.1% per tensor)
    weights        the same over every parameter (``sample="all"``; the map's part)
    logprobs       token log-prob R² with its null on probes sampled once from step 0 (validation split)
    activations    residual-stream activation R² with its null on the first few of those probes
    forecast       weights fitted up to 1/4 and 1/2 of the horizon: error ratio vs "no change" (with its curve)
    cases          weight extrapolation (two-point, least squares) and logit extrapolation, scored greedy
    advice_last    ``advise(run, task=...)`` at the last checkpoint
    advice_t1      the same as if only the checkpoints up to the windows' ``t1`` (about H/2) existed

Extrapolation windows: ``t1`` is the largest save step with ``max(alphas) * t1 <= H`` (H/2 for α up to 2), ``t0``
in {0, 2u} (windows shorter than 2u skipped), so every target ``t0 + α (t1 - t0)`` lies within the run and is
compared with the real checkpoint nearest to it (``real_step``) as well as with ``t1``: paired bootstrap 95% CIs over
``problems`` test problems (never trained on). With ``from_start=False`` only the window that skips the early phase
(``t0 = 2u``) is scored, and ``advice_t1`` backtests from that ``t0`` too (the advisor's two-point base is the
window's). The case records are the map's (``cases.jsonl``, readable by ``rlvr-linear advise --validate``), with
``kind`` "trajectory". avg@k (``k`` samples at ``temperature``/``top_p``, the run's own sampling when the study calls
it) is scored for the two-point α = 1.5 case of the last window, its ``t1`` and its real target (each avg@k costs
about ``k`` greedy evaluations); ``k=None``: greedy only. Weight and log-prob R² medians carry a cluster-bootstrap
95% CI (tensors, probes: ``linearity.stats.cluster_median_ci``).

``OUT`` layout: ``parts.json`` and ``scores/`` (the map's :class:`.analysis.RunCache`), ``probes.jsonl``, one folder
per linearity part and advice with its own files and figures, ``cases.jsonl``, ``trajectory.json`` (the results) and
the figures ``weights_r2_hist.png``, ``weights_all_r2_hist.png``, ``logprobs_r2_hist.png``,
``activations_per_layer.png``, ``accuracy.png``, ``forecast_ratio.png``. Extrapolated models live under
``OUT/tmp`` (wiped at start, each deleted after scoring). An ``OUT`` holding another run or other settings is
refused.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import RlvrLinearError
from ..io import copy_file, jsonable, read_json, write_json, write_npz, write_text
from ..io.checkpoints import step_dir_name
from ..runtime.threads import use as threads_use
from .analysis import RunCache, Scorer, _num, _r2, forecast_ratios, forecast_steps, logprob_r2, part_train, part_weights
from .cases import score_cases, with_ids

#: this analysis's part versions (bump one to recompute it; the regime map's table is not touched)
VERSIONS = {"train": 1, "weights_paper": 2, "weights": 1, "logprobs": 2, "activations": 1, "forecast": 1,
            "advice_last": 2, "advice_t1": 2}  # fmt: skip
ALPHAS = (1.25, 1.5, 2.0)
LOGIT_ALPHAS = (1.5, 2.0)
PREDICTORS = ("two_point", "lsq")
PROBE_PROMPTS, PROBE_SAMPLES = 16, 4
ACTIVATION_PROBES = 8
EVAL_BATCH = 64
FIGURES = ("weights_r2_hist.png", "weights_all_r2_hist.png", "logprobs_r2_hist.png", "activations_per_layer.png",
           "accuracy.png", "forecast_ratio.png")  # fmt: skip


def _log(msg: str) -> None:
    print(f"[trajectory {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Settings:
    """What the analysis measures; stored in ``OUT/parts.json`` and compared on every rerun."""

    task: str
    problems: int = 300
    alphas: tuple[float, ...] = ALPHAS
    logit_alphas: tuple[float, ...] = LOGIT_ALPHAS
    probe_prompts: int = PROBE_PROMPTS
    probe_samples: int = PROBE_SAMPLES
    activation_probes: int = ACTIVATION_PROBES
    split: str = "test"
    from_start: bool = True  #: also the window from step 0 (False: only the one that skips the early phase)
    k: int | None = None  #: avg@k samples per problem (None: greedy only)
    temperature: float = 0.6  #: avg@k sampling
    top_p: float = 0.95
    max_new_tokens: int | None = None  #: both decodings (None: the task's default)

    def __post_init__(self):
        if self.problems < 1 or self.probe_prompts < 1 or self.probe_samples < 1 or self.activation_probes < 1:
            raise RlvrLinearError(f"problems, probe counts must be >= 1: {self}")
        if not self.alphas or min(self.alphas + self.logit_alphas) <= 1:
            raise RlvrLinearError(f"extrapolation alphas must be > 1, got {self.alphas} and {self.logit_alphas}")
        if (self.k is not None and self.k < 1) or not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise RlvrLinearError(f"avg@k needs k >= 1, temperature > 0 and 0 < top_p <= 1: {self}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RlvrLinearError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class Grid:
    """The run's save grid: checkpoints at ``0, save_every, .., horizon`` (duck-types ``grid.Point`` for
    :func:`.analysis.forecast_steps`)."""

    horizon: int
    save_every: int


# --------------------------------------------------------------------------------------------------
# The run and the plan


def read_run(run: str | Path) -> tuple[dict, Grid]:
    """The finished run's manifest and its save grid; an unfinished run or an irregular grid is an error."""
    run = Path(run)
    mp = run / "manifest.json"
    if not mp.is_file():
        raise RlvrLinearError(f"{mp}: not found; is {run} a run folder of rlvr-linear train?")
    man = read_json(mp)
    steps = [c["step"] for c in man.get("checkpoints", [])]
    if not man.get("finished"):
        raise RlvrLinearError(f"{run}: the run is not finished (checkpoints up to step {max(steps, default=0)}); "
                              "analyse it once training ends")  # fmt: skip
    if len(steps) < 4 or steps[0] != 0:
        raise RlvrLinearError(f"{run}: needs >= 4 checkpoints from step 0, found steps {steps}")
    u = steps[1]
    if steps != list(range(0, steps[-1] + 1, u)):
        raise RlvrLinearError(f"{run}: checkpoints are not on a regular grid from step 0: {steps}")
    for s in steps:
        if not (run / step_dir_name(s)).is_dir():
            raise RlvrLinearError(f"{run / step_dir_name(s)}: checkpoint folder missing")
    return man, Grid(steps[-1], u)


def windows(grid: Grid, alphas, from_start: bool = True) -> list[tuple[int, int]]:
    """``(t0, t1)``: ``t1`` the largest save step with ``max(alphas) * t1 <= H`` (at least 2u), ``t0`` in {0, 2u}
    (``from_start=False``: 2u only) with ``t1 - t0 >= 2u``."""
    H, u = grid.horizon, grid.save_every
    t1 = int(H / max(alphas) // u) * u
    if t1 < 2 * u:
        raise RlvrLinearError(f"horizon {H} with saves every {u}: no window reaches alpha {max(alphas)} in the run")
    out = [(t0, t1) for t0 in ((0, 2 * u) if from_start else (2 * u,)) if t1 - t0 >= 2 * u]
    if not out:
        raise RlvrLinearError(f"horizon {H} with saves every {u}: no window from step {2 * u} reaches alpha "
                              f"{max(alphas)} in the run")  # fmt: skip
    return out


def plan(grid: Grid, s: Settings) -> list[dict]:
    """Every case, in scoring order: two-point and least squares at every α of ``s.alphas``, logit (two-point
    mix) at ``s.logit_alphas``, on every window (:func:`windows` with ``s.from_start``); targets beyond the run
    dropped."""
    cases = []
    for t0, t1 in windows(grid, s.alphas, s.from_start):
        for predictor in PREDICTORS:
            for a in s.alphas:
                cases.append(dict(space="weight", predictor=predictor, t0=t0, t1=t1, alpha=float(a)))
    for t0, t1 in windows(grid, s.alphas, s.from_start):
        for a in s.logit_alphas:
            cases.append(dict(space="logit", predictor="two_point", t0=t0, t1=t1, alpha=float(a)))
    return [c for c in with_ids(cases) if c["target"] <= grid.horizon]


def real_steps(grid: Grid, cases: list[dict]) -> list[int]:
    """The real checkpoints the cases are scored against: every ``t1`` and the save step nearest each target."""
    from ..study.common import snap

    return sorted({c["t1"] for c in cases} | {snap(c["target"], grid.save_every) for c in cases})


# --------------------------------------------------------------------------------------------------
# Budget


def _unit_costs(man: dict):
    """The measured SmolLM2 unit costs (``study.plan.UNIT_COSTS``) when the run is SmolLM2-135M, else None."""
    from ..study.plan import UNIT_COSTS

    names = [str((man.get("config") or {}).get("model", "")), str(man.get("base_model", ""))]
    return UNIT_COSTS["smollm2-135m"] if any("smollm2-135m" in n.lower() for n in names) else None


def measure_greedy(run: str | Path, task: str, n: int = 16, batch_size: int = EVAL_BATCH) -> float:
    """Seconds per problem of greedy evaluation of the run's step 0 on ``n`` test problems (the model loaded
    beforehand, not timed)."""
    from ..evaluation.evaluation import as_generator, evaluate

    gen = as_generator(str(Path(run) / step_dir_name(0)))
    t = time.perf_counter()
    evaluate(gen, task, split="test", n_problems=n, k=0, batch_size=batch_size)
    return (time.perf_counter() - t) / n


def estimate(run: str | Path, problems: int = 300, *, task: str | None = None, alphas=ALPHAS,
             logit_alphas=LOGIT_ALPHAS, s_per_problem: float | None = None) -> dict:  # fmt: skip
    """How many greedy evaluations the cases need and what they cost: ``problems`` x model evaluations x seconds per
    problem (SmolLM2: the measured 0.685 s; else ``s_per_problem`` or :func:`measure_greedy`). A logit-extrapolated
    model decodes two models (counted twice). For SmolLM2 the linearity parts and the advice are priced with the
    study's unit costs; the all-parameter weight pass is not priced (not measured)."""
    man, grid = read_run(run)
    task = task or man["task"]
    s = Settings(task=task, problems=problems, alphas=tuple(alphas), logit_alphas=tuple(logit_alphas))
    cases = plan(grid, s)
    n_w = sum(c["space"] == "weight" for c in cases)
    n_l = sum(c["space"] == "logit" for c in cases)
    n_r = len(real_steps(grid, cases))
    u = _unit_costs(man)
    if s_per_problem is None:
        s_per_problem, source = (u.greedy, "SmolLM2-135M, measured (study.plan.UNIT_COSTS)") if u else (
            measure_greedy(run, task), "measured now on step 0 (16 test problems)")  # fmt: skip
    else:
        source = "given"
    equiv = n_r + n_w + 2 * n_l
    out = {
        "real_checkpoints": n_r,
        "weight_extrapolated": n_w,
        "logit_extrapolated": n_l,
        "model_evaluations": equiv,
        "problems": problems,
        "s_per_problem": s_per_problem,
        "s_per_problem_source": source,
        "evaluation_s": equiv * problems * s_per_problem,
        "other_s": None,
    }
    if u is not None:
        T, T1 = grid.horizon // grid.save_every + 1, windows(grid, s.alphas)[0][1] // grid.save_every + 1
        probes = s.probe_prompts * s.probe_samples
        out["other_s"] = (
            probes * u.sample  # probes sampled from step 0
            + probes * T * u.probe  # log-prob R²
            + s.activation_probes * T * u.probe  # activations (about one scoring pass)
            + T * u.weights * 3  # paper-sampled weight R² and the two forecasts
            + 32 * (u.sample + (T + T1) * u.probe)
            + (T + T1) * u.weights  # two advice runs (16 x 2 probes each)
            + n_w * u.save  # writing the extrapolated models
        )
    out["total_s"] = out["evaluation_s"] + (out["other_s"] or 0.0)
    return out


def _dur(sec: float) -> str:
    return f"~{sec / 3600:.1f} h" if sec >= 3600 else f"~{sec / 60:.0f} min" if sec >= 120 else f"~{sec:.0f} s"


def estimate_line(e: dict) -> str:
    """:func:`estimate` in one line."""
    other = "not priced for this model" if e["other_s"] is None else _dur(e["other_s"])
    return (
        f"{e['model_evaluations']} model evaluations ({e['real_checkpoints']} real checkpoints, "
        f"{e['weight_extrapolated']} weight-extrapolated, {e['logit_extrapolated']} logit-extrapolated x 2) x "
        f"{e['problems']} problems x {e['s_per_problem']:.3g} s ({e['s_per_problem_source']}) = "
        f"{_dur(e['evaluation_s'])} of greedy evaluation; probes, linearity and advice {other} (the all-parameter "
        f"weight pass not priced); total {_dur(e['total_s'])}, one thread"
    )


# --------------------------------------------------------------------------------------------------
# Parts


def _probes(out: Path, run: Path, s: Settings, cache: RunCache):
    from ..linearity import make_probes, read_probes, write_probes

    p = out / "probes.jsonl"
    if p.exists():
        return read_probes(p)
    t = time.perf_counter()
    probes = make_probes(run / step_dir_name(0), s.task, n_prompts=s.probe_prompts, k=s.probe_samples,
                         split="validation", seed=0)  # fmt: skip
    write_probes(p, probes)
    cache.parts.setdefault("timing", {})["probes_s"] = round(time.perf_counter() - t, 1)
    cache.save()
    return probes


def r2_cis(npz: Path, groups: str) -> dict:
    """Cluster-bootstrap 95% CIs of the R² median and of its null's median from a saved analysis
    (``weights_r2.npz``: groups ``tensor_id``; ``logprobs.npz``: ``probe_index`` of the sampled positions)."""
    from ..linearity.stats import cluster_median_ci

    with np.load(npz) as z:
        g = z[groups] if groups != "probe_index" else z["probe_index"][z["sampled"]]
        r, n = cluster_median_ci(z["r2"], g), cluster_median_ci(z["null_r2"], g)
    return {"median_ci": [_num(r["lo"]), _num(r["hi"])], "null_median_ci": [_num(n["lo"]), _num(n["hi"])],
            "ci_groups": r["groups"], "ci_unit": "tensor" if groups == "tensor_id" else "probe"}  # fmt: skip


def _activations(run: Path, probes, save_to: Path) -> dict:
    from ..io.checkpoints import discover
    from ..linearity import analyze_activations

    res = analyze_activations(discover(run), probes)
    res.save(save_to)
    s = res.to_json()
    out = _r2(s)
    out["probes"] = len(probes)
    out["layers"] = [{"label": x["label"], "median": _num(x["r2"]["median"]), "null_median": _num(x["null"]["median"])}
                     for x in s["layers"]]  # fmt: skip
    return out


def _advice(run: Path, task: str, until: int | None, save_to: Path, progress: bool,
            base_step: int | None = None) -> dict:  # fmt: skip
    from ..advisor import advise

    adv = advise(run, task=task, until=until, base_step=base_step, progress=progress)
    adv.save(save_to)
    rec = adv.recommendation
    safe = rec.get("safe") or {}
    w = adv.stats.get("weights", {})
    return {
        "until": adv.steps[-1],
        "base_step": adv.steps[0],
        "checkpoints": len(adv.steps),
        "verdict": rec["verdict"],
        "extrapolate": rec["extrapolate"],
        "predictor": rec.get("predictor"),
        "target_step": rec.get("target_step"),
        "alpha": _num(rec.get("alpha")),
        "linear": rec["evidence"]["linear"],
        "h_star_steps": _num(rec["evidence"]["h_star_steps"], 2),
        "h_star_by_predictor": {p: _num(adv.h_star(p), 2) for p in adv.spaces.get("weights", {})},
        "safe": {
            "bound": _num(safe.get("bound")),
            "extrapolate": bool(safe.get("extrapolate")),
            "predictor": safe.get("predictor"),
            "target_step": safe.get("target_step"),
            "h_steps": _num(safe.get("h_steps"), 2),
            "h_steps_by_predictor": {p: _num(v, 2) for p, v in (safe.get("h_steps_by_predictor") or {}).items()},
        },
        "weights_r2_median": _num(w.get("r2_median")),
        "weights_null_r2_median": _num(w.get("null_r2_median")),
    }


def _check_meta(cache: RunCache, meta: dict, out: Path) -> None:
    old = cache.parts.get("meta")
    if old is None:
        cache.parts["meta"] = meta
        cache.save()
        return
    diff = sorted({k for k in set(old) | set(meta) if old.get(k) != meta.get(k)})
    sdiff = sorted(k for k in meta["settings"] if (old.get("settings") or {}).get(k) != meta["settings"][k])
    if diff:
        what = ", ".join(sdiff) if sdiff else ", ".join(diff)
        raise RlvrLinearError(f"{out} holds an analysis of another run or with other settings ({what}); "
                              "use another folder or remove it")  # fmt: skip


def analyze_trajectory(
    run: str | Path,
    out: str | Path,
    *,
    task: str | None = None,
    problems: int = 300,
    alphas=ALPHAS,
    logit_alphas=LOGIT_ALPHAS,
    probe_prompts: int = PROBE_PROMPTS,
    probe_samples: int = PROBE_SAMPLES,
    activation_probes: int = ACTIVATION_PROBES,
    from_start: bool = True,
    k: int | None = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Analyse the finished run ``run`` into ``out`` (see the module docstring) and return ``trajectory.json``.

    ``task``: default the run's (manifest). ``from_start``, ``k``, ``temperature``, ``top_p``, ``max_new_tokens``:
    :class:`Settings`. ``threads``: torch threads (``torch.set_num_threads``; 1 also keeps the all-parameter weight
    pass in one process). Every part and case is cached in ``out``: a rerun computes only what is missing.
    """
    run, out = Path(run), Path(out)
    man, grid = read_run(run)
    s = Settings(task=task or man["task"], problems=problems, alphas=tuple(float(a) for a in alphas),
                 logit_alphas=tuple(float(a) for a in logit_alphas), probe_prompts=probe_prompts,
                 probe_samples=probe_samples, activation_probes=activation_probes, from_start=from_start, k=k,
                 temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)  # fmt: skip
    if threads is not None:
        threads_use(threads)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "tmp", ignore_errors=True)
    cache = RunCache(out, versions=VERSIONS)
    meta = {"run": str(run.resolve()), "trained_wall_time": man.get("wall_time"), "horizon": grid.horizon,
            "save_every": grid.save_every, "settings": jsonable(asdict(s))}  # fmt: skip
    _check_meta(cache, meta, out)
    cases = plan(grid, s)
    t1 = cases[0]["t1"]
    log = _log if progress else (lambda msg: None)

    def part(name: str, fn) -> None:
        if cache.has(name):
            return
        log(f"{name} ...")
        t = time.perf_counter()
        value = fn()
        value["seconds"] = round(time.perf_counter() - t, 1)
        cache.put(name, value)
        log(f"{name} done in {value['seconds']:.0f} s")

    workers = 1 if threads == 1 else None
    part("train", lambda: part_train(man))
    part("weights_paper", lambda: {**part_weights(run, "paper", out / "weights_paper", progress=progress),
                                   **r2_cis(out / "weights_paper" / "weights_r2.npz", "tensor_id")})  # fmt: skip
    part("weights", lambda: part_weights(run, "all", out / "weights_all", workers=workers, progress=progress))
    probes = None
    if not (cache.has("logprobs") and cache.has("activations")):
        probes = _probes(out, run, s, cache)
    part("logprobs", lambda: {**logprob_r2(run, probes, out / "logprobs", progress=progress), "probes": len(probes),
                              "prompts": s.probe_prompts, "samples": s.probe_samples,
                              **r2_cis(out / "logprobs" / "logprobs.npz", "probe_index")})  # fmt: skip
    part("activations", lambda: _activations(run, probes[: s.activation_probes], out / "activations"))
    part("forecast", lambda: forecast_ratios(run, forecast_steps(grid), curve=True))
    scorer = Scorer(s.task, quick=False, splits=(s.split,), n=s.problems, batch_size=EVAL_BATCH, k=s.k or 1,
                    temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)  # fmt: skip
    responses = int(man["config"]["prompts_per_step"]) * int(man["config"]["samples_per_prompt"])
    info = {"point": run.name, "run": str(run), "seed": man["config"].get("seed"), "kind": "trajectory",
            "lr": man["config"].get("learning_rate"), "responses": responses}  # fmt: skip
    todo = [c for c in cases if c["id"] not in cache.parts.get("cases", {})]
    if todo:
        log(f"cases: {len(todo)} of {len(cases)} to score on {s.problems} {s.split} problems ...")
        t = time.perf_counter()
        last = windows(grid, s.alphas, s.from_start)[-1][0]

        def always_avg(c: dict) -> bool:  # one avg@k comparison: two-point at alpha 1.5 from the last window
            return s.k is not None and c["space"] == "weight" and c["predictor"] == "two_point" and c["alpha"] == 1.5 \
                and c["t0"] == last

        score_cases(cases, run, cache, scorer, tmp=out / "tmp", info=info, horizon=grid.horizon,
                    save_every=grid.save_every, fit_until=forecast_steps(grid), always_avg=always_avg,
                    avg_on_gain=False, k=s.k)  # fmt: skip
        timing = cache.parts.setdefault("timing", {})
        # kept to the millisecond: one rescored case (tens of ms on a fast machine) must show in the total
        timing["cases_s"] = round(timing.get("cases_s", 0.0) + time.perf_counter() - t, 3)
        cache.save()
        log(f"cases done in {time.perf_counter() - t:.0f} s")
    for r in real_steps(grid, cases):  # (every one is scored by its cases; cached)
        scorer.score(cache, step_dir_name(r), str(run / step_dir_name(r)), avg=False)
    part("advice_last", lambda: _advice(run, s.task, None, out / "advice_last", progress))
    base = 0 if s.from_start else cases[0]["t0"]  # the advisor's two-point base: the scored window's
    part("advice_t1", lambda: _advice(run, s.task, t1, out / "advice_t1", progress, base_step=base))
    return render(run, out, cache, grid, s, cases)


# --------------------------------------------------------------------------------------------------
# Results and figures


def _accuracy_ci(scores: np.ndarray) -> tuple[float, float, float]:
    """Mean and paired-bootstrap 95% CI of one model's per-problem scores (against all zeros)."""
    from ..evaluation.evaluation import paired_bootstrap

    r = paired_bootstrap(np.zeros_like(scores), scores)
    return r["diff"], r["ci_low"], r["ci_high"]


def _best(cases: list[dict], space: str) -> dict | None:
    cs = [c for c in cases if c["space"] == space]
    return max(cs, key=lambda c: c["gain_vs_t1"]["greedy"]["mean"]) if cs else None


def advisor_calls(advice: dict, recs: list[dict]) -> list[dict]:
    """The advice at ``t1`` against the measured two-point cases from its own base (``base_step``, step 0 unless
    said): called safe when the jump ``target - t1`` is at most h* (``h_star``) or the calibrated h*_c
    (``calibrated``); the label is the greedy gain over ``t1`` >= 0 (the validation's "mean" label)."""
    h = advice["h_star_by_predictor"].get("two_point")
    hc = (advice["safe"]["h_steps_by_predictor"] or {}).get("two_point")
    base = advice.get("base_step", 0)
    out = []
    for c in recs:
        if c["space"] != "weight" or c["predictor"] != "two_point" or c["t0"] != base or c["t1"] != advice["until"]:
            continue
        jump, gain = c["target"] - c["t1"], c["gain_vs_t1"]["greedy"]
        out.append({"alpha": c["alpha"], "target": c["target"], "jump": jump,
                    "safe_h_star": h is not None and jump <= h, "safe_calibrated": hc is not None and jump <= hc,
                    "gain_vs_t1": gain, "at_least_as_good": gain["mean"] >= 0})  # fmt: skip
    return out


def plot_accuracy(path: Path, train: dict, real: dict, points: list[dict], *, n: int, split: str) -> Path:
    """The run's validation accuracy (manifest), the real checkpoints and the extrapolated models on the held-out
    problems (95% CIs), against step."""
    from matplotlib.figure import Figure

    from ..reporting.plots import _save

    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    val = [np.nan if v is None else v for v in train["val_accuracy"]]
    ax.plot(train["steps"], val, ".-", color="0.6", label="validation greedy (training run)")
    xs = sorted(real)
    m = np.array([real[x] for x in xs], dtype=float).reshape(-1, 3)
    if len(xs):
        ax.errorbar(xs, m[:, 0], yerr=[m[:, 0] - m[:, 1], m[:, 2] - m[:, 0]], fmt="ks", capsize=3, zorder=5,
                    label=f"real checkpoints, {n} {split} problems")  # fmt: skip
    styles = {("weight", "two_point"): "o", ("weight", "lsq"): "^", ("logit", "two_point"): "D"}
    for (space, pred, t0, t1), group in _groups(points).items():
        g = sorted(group, key=lambda c: c["target"])
        y = np.array([c["ci"] for c in g], dtype=float)
        ax.errorbar([c["target"] for c in g], y[:, 0], yerr=[y[:, 0] - y[:, 1], y[:, 2] - y[:, 0]],
                    fmt=styles.get((space, pred), "o") + "--", capsize=2, alpha=0.8,
                    label=f"{space} {pred}, [{t0}, {t1}]")  # fmt: skip
    ax.set_xlabel("step (extrapolated: target step)")
    ax.set_ylabel("greedy accuracy")
    ax.set_title("Real checkpoints and extrapolated models", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _groups(points: list[dict]) -> dict:
    out: dict = {}
    for c in points:
        out.setdefault((c["space"], c["predictor"], c["t0"], c["t1"]), []).append(c)
    return out


def render(run: Path, out: Path, cache: RunCache, grid: Grid, s: Settings, cases: list[dict]) -> dict:
    """``OUT/trajectory.json``, ``OUT/cases.jsonl`` and the figures, from the cache (nothing is computed)."""
    from ..reporting.plots import plot_curves

    p = cache.parts
    recs = [p["cases"][c["id"]] for c in cases]
    write_text(out / "cases.jsonl", "".join(json.dumps(c) + "\n" for c in recs))
    real, real_avg, arrays = {}, {}, {}
    for r in real_steps(grid, cases):
        sc = cache.load_scores(step_dir_name(r))
        real[r] = _accuracy_ci(sc["greedy"])
        if "avg" in sc:
            real_avg[r] = _accuracy_ci(sc["avg"])
        arrays.update({f"{step_dir_name(r)}__{k}": v for k, v in sc.items()})
    points = []
    for c, rec in zip(cases, recs):
        sc = cache.load_scores(f"case_{c['id']}")
        arrays.update({f"case_{c['id']}__{k}": v for k, v in sc.items()})
        points.append({**rec, "ci": _accuracy_ci(sc["greedy"])})
    write_npz(out / "scores.npz", **arrays)
    plot_accuracy(out / "accuracy.png", p["train"], real, points, n=s.problems, split=s.split)
    fc = {q: v for q, v in p["forecast"].items() if isinstance(v, dict) and "curve" in v}
    plot_curves(
        out / "forecast_ratio.png",
        {f"fit on steps <= {v['fit_until']}": (v["curve"]["steps"], v["curve"]["ratio"], None) for v in fc.values()},
        ylabel="||line - W(s)|| / ||W(fit end) - W(s)||", title="Weight forecast: error ratio vs 'no change' (< 1: "
        "the line wins)", hlines=[1.0],
    )  # fmt: skip
    for src, dst in (("weights_paper/weights_r2_hist.png", "weights_r2_hist.png"),
                     ("weights_all/weights_r2_hist.png", "weights_all_r2_hist.png"),
                     ("logprobs/logprobs_r2_hist.png", "logprobs_r2_hist.png"),
                     ("activations/activations_per_layer.png", "activations_per_layer.png")):  # fmt: skip
        copy_file(out / src, out / dst)

    def strip(v: dict) -> dict:
        return {k: x for k, x in v.items() if k != "version"}

    result = {
        "kind": "trajectory",
        "run": str(run),
        "task": s.task,
        "settings": jsonable(asdict(s)),
        "horizon": grid.horizon,
        "save_every": grid.save_every,
        "train": strip(p["train"]),
        "linearity": {k: strip(p[k]) for k in ("weights_paper", "weights", "logprobs", "activations")},
        "forecast": strip(p["forecast"]),
        "extrapolation": {
            "n_problems": s.problems,
            "split": s.split,
            "windows": [list(w) for w in windows(grid, s.alphas, s.from_start)],
            "real_accuracy": {
                str(k): {"mean": _num(v[0]), "lo": _num(v[1]), "hi": _num(v[2])} for k, v in real.items()
            },  # fmt: skip
            "real_avg_k": {
                str(k): {"mean": _num(v[0]), "lo": _num(v[1]), "hi": _num(v[2])} for k, v in real_avg.items()
            },  # fmt: skip
            "per_problem_scores": "scores.npz (0/1 greedy and avg@k per test problem: <model>__greedy, <model>__avg)",
            "best_weight": _best(recs, "weight"),
            "best_logit": _best(recs, "logit"),
            "cases": recs,
        },
        "advisor": {
            "last": strip(p["advice_last"]),
            "at_t1": strip(p["advice_t1"]),
            "at_t1_vs_cases": advisor_calls(p["advice_t1"], recs),
        },
        "timing_s": {**{k: p[k].get("seconds") for k in VERSIONS if k in p}, **p.get("timing", {})},
        "figures": list(FIGURES),
    }
    result = jsonable(result)
    write_json(out / "trajectory.json", result)
    return result


def copy_results(out: str | Path, dest: str | Path) -> list[Path]:
    """Copy ``trajectory.json``, ``cases.jsonl`` (as ``trajectory_cases.jsonl``) and the figures of ``out`` into
    ``dest`` (atomic copies); returns the written paths."""
    out, dest = Path(out), Path(dest)
    names = [("trajectory.json", "trajectory.json"), ("cases.jsonl", "trajectory_cases.jsonl"),
             ("scores.npz", "scores.npz")]
    names += [(f, f) for f in FIGURES]
    missing = [a for a, _ in names if not (out / a).is_file()]
    if missing:
        raise RlvrLinearError(f"{out}: {', '.join(missing)} missing; run the analysis first")
    return [copy_file(out / a, dest / b) for a, b in names]


__all__ = ["Settings", "analyze_trajectory", "copy_results", "estimate", "estimate_line", "plan", "windows"]
