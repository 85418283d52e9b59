"""Per-run analysis of the regime map, cached under ``OUT/analysis/<run>/`` so a rerun skips what is done.

Each run gets ``parts.json`` (one key per part below, rewritten atomically after every part or case) and
``scores/<key>.npz`` (per-problem greedy 0/1 and avg@k scores of one model on the held-out set). Parts:

    train         steps, validation greedy accuracy and mean reward per checkpoint (from the manifest)
    weights       weight R² median / share > 0.7 with the sign-flip null, drift-to-noise (``analyze_weights``)
    logprobs      token log-prob R² with its null on probes sampled once from the base (``analyze_logprobs``)
    forecast      weights fitted up to 1/4 and 1/2 of the horizon: error vs "no change" (``forecast``)
    cases         weight and logit extrapolation cases (``regime.cases``)
    reground      steps to thresholds of the re-grounded run vs the standard run (re-grounding items only)

Held-out problems: the task's validation and test splits together (2,029 problems of the short task; 1,000 sampled
from each split of the long-response task), none of which is ever trained on (training draws from the train split
only); the quick map uses 100 of them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import RlvrLinearError
from ..io import read_json, write_json, write_npz
from ..io.checkpoints import step_dir_name
from .grid import Item

#: bump a part's version to recompute it on the next run (the cache keeps the rest)
VERSIONS = {"train": 1, "weights": 1, "logprobs": 1, "forecast": 1, "reground": 1}
#: probes for the token log-prob R²: prompts x responses sampled from the base (validation split)
PROBE_PROMPTS, PROBE_SAMPLES = 32, 4
#: avg@k at the paper's sampling
K, TEMPERATURE, TOP_P = 4, 0.6, 0.95
HELD_OUT_MAX = 2500
SAMPLED_PER_SPLIT = 1000
QUICK_HELD_OUT = 100


def _num(x, nd: int = 4):
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


class RunCache:
    """``OUT/analysis/<run>/``: parts.json + per-model score files, all written atomically.

    ``versions``: part -> version (default :data:`VERSIONS`, the map's); a part whose stored version differs is
    recomputed. Other analyses (``regime.trajectory``) pass their own table."""

    def __init__(self, root: Path, versions: dict[str, int] | None = None):
        self.root = root
        self.path = root / "parts.json"
        self.versions = VERSIONS if versions is None else versions
        self.parts: dict = read_json(self.path) if self.path.exists() else {}

    def has(self, part: str) -> bool:
        v = self.parts.get(part)
        return isinstance(v, dict) and v.get("version") == self.versions.get(part, 1)

    def put(self, part: str, value: dict) -> None:
        self.parts[part] = {"version": self.versions.get(part, 1), **value}
        self.save()

    def save(self) -> None:
        write_json(self.path, self.parts)

    def score_path(self, key: str) -> Path:
        return self.root / "scores" / f"{key}.npz"

    def load_scores(self, key: str) -> dict[str, np.ndarray] | None:
        p = self.score_path(key)
        if not p.exists():
            return None
        with np.load(p) as z:
            return {k: z[k] for k in z.files}

    def save_scores(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        write_npz(self.score_path(key), **arrays)


class Scorer:
    """Scores models on the held-out problems (greedy; avg@k at T = 0.6, top-p 0.95), cached per key.

    The map's held-out set by default; ``splits`` and ``n`` (the first ``n`` problems of those splits, in order)
    choose another one, and ``batch_size`` the generation batch (a real model may want a smaller one). ``k``,
    ``temperature`` and ``top_p`` set avg@k's sampling (a trajectory scores at its training temperature), and
    ``max_new_tokens`` both decodings' length (default: the task's)."""

    def __init__(
        self,
        task_name: str,
        quick: bool,
        *,
        splits: tuple[str, ...] = ("validation", "test"),
        n: int | None = None,
        batch_size: int = 256,
        k: int = K,
        temperature: float = TEMPERATURE,
        top_p: float = TOP_P,
        max_new_tokens: int | None = None,
    ):
        from ..evaluation.tasks import get_task

        self.task = get_task(task_name)
        self.batch_size = batch_size
        self.k, self.temperature, self.top_p, self.max_new_tokens = k, temperature, top_p, max_new_tokens
        probs = []
        for split in splits:
            try:
                probs += self.task.problems(split, None)
            except (TypeError, RlvrLinearError):  # sampled tasks (arithmetic-cot): 1,000 per split
                probs += self.task.problems(split, max(SAMPLED_PER_SPLIT, n or 0))
        if n is not None:
            if n < 1 or len(probs) < n:
                raise RlvrLinearError(
                    f"asked for {n} held-out problems of {task_name!r} ({' + '.join(splits)}); it has {len(probs)}"
                )
            self.problems = probs[:n]
        else:
            self.problems = probs[:QUICK_HELD_OUT] if quick else probs[:HELD_OUT_MAX]

    def score(self, cache: RunCache, key: str, model, avg: bool) -> dict[str, np.ndarray]:
        """Per-problem ``greedy`` (and ``avg`` when asked) of ``model`` (a directory or a generator)."""
        from ..evaluation.evaluation import evaluate

        have = cache.load_scores(key) or {}
        need_greedy, need_avg = "greedy" not in have, avg and "avg" not in have
        if not (need_greedy or need_avg):
            return have
        if not isinstance(model, (str, Path)):  # a zero-argument factory (e.g. of a logit-extrapolated generator)
            model = model()
        r = evaluate(
            model, self.task, problems=self.problems, k=self.k if need_avg else 0, greedy=need_greedy,
            temperature=self.temperature, top_p=self.top_p, seed=0, batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
        )  # fmt: skip
        if need_greedy:
            have["greedy"] = r.greedy_correct.astype(np.float32)
        if need_avg:
            have["avg"] = r.correct.mean(1).astype(np.float32)
        cache.save_scores(key, have)
        return have


def held_out_note(scorer: Scorer) -> str:
    return f"{len(scorer.problems)} held-out problems (validation + test splits, never trained on)"


# --------------------------------------------------------------------------------------------------
# Parts


def part_train(man: dict) -> dict:
    cps = man["checkpoints"]
    return {
        "steps": [c["step"] for c in cps],
        "val_accuracy": [c.get("val_accuracy") for c in cps],
        "mean_reward": [c.get("mean_reward") for c in cps],
        "effective_steps": [c.get("effective_step", c["step"]) for c in cps],
        "wall_time_s": man.get("wall_time"),
    }


def _r2(summary: dict) -> dict:
    r, n = summary["r2"], summary["null"]
    out = {
        "median": _num(r.get("median")),
        "share_gt_0.7": _num(r.get("share_gt_0.7")),
        "null_median": _num(n.get("median")),
        "null_share_gt_0.7": _num(n.get("share_gt_0.7")),
        "n": r.get("n"),
    }
    out["median_minus_null"] = (
        None if None in (out["median"], out["null_median"]) else _num(out["median"] - out["null_median"])
    )
    return out


def part_weights(run: Path, sample: str = "all", save_to: Path | None = None, **kwargs) -> dict:
    """Weight R² of ``run`` (``analyze_weights(sample=..., **kwargs)``); ``save_to``: also write its files there."""
    from ..io.checkpoints import discover
    from ..linearity import analyze_weights

    res = analyze_weights(discover(run), sample=sample, **kwargs)
    if save_to is not None:
        res.save(save_to)
    s = res.to_json()
    out = _r2(s)
    dnr = s.get("drift_to_noise") or {}
    out["drift_to_noise_median"] = _num(dnr.get("median"))
    out["drift_to_noise_null_median"] = _num(dnr.get("null_median"))
    return out


def probes_for(regime, model: str, task: str):
    """Probes sampled once per (base, task) from the base model, cached in ``OUT/probes/``."""
    from ..linearity import make_probes, read_probes, write_probes

    p = regime.out / "probes" / f"{model}_{task}.jsonl"
    if p.exists():
        return read_probes(p)
    probes = make_probes(regime.base(model), task, n_prompts=PROBE_PROMPTS, k=PROBE_SAMPLES, seed=0)
    write_probes(p, probes)
    return probes


def part_logprobs(regime, item: Item, run: Path) -> dict:
    out = logprob_r2(run, probes_for(regime, item.point.model, item.point.task))
    out["probes"] = PROBE_PROMPTS * PROBE_SAMPLES
    return out


def logprob_r2(run: Path, probes, save_to: Path | None = None, **kwargs) -> dict:
    """Token log-prob R² of ``run`` on ``probes`` with its null (``analyze_logprobs``); ``save_to``: its files."""
    from ..io.checkpoints import discover
    from ..linearity import analyze_logprobs

    res = analyze_logprobs(discover(run), probes, **kwargs)
    if save_to is not None:
        res.save(save_to)
    return _r2(res.to_json())


def forecast_steps(point) -> dict[str, int]:
    """Fit-until steps at 1/4 and 1/2 of the horizon, on the save grid."""
    from ..study.common import snap

    H, u = point.horizon, point.save_every
    return {"q1": snap(H / 4, u, lo=u, hi=H - u), "q2": snap(H / 2, u, lo=u, hi=H - u)}


def part_forecast(item: Item, run: Path) -> dict:
    """Weights forecast from the checkpoints up to 1/4 (q1) and 1/2 (q2) of the horizon; ratio = ||pred − W(s)|| /
    ||W(fit_last) − W(s)|| (< 1: the line beats "no change"), at the horizon and pooled over all later steps."""
    return forecast_ratios(run, forecast_steps(item.point))


def forecast_ratios(run: Path, fit_until: dict[str, int], curve: bool = False) -> dict:
    """:func:`part_forecast` for any fit-until steps (name -> step); ``curve``: also the ratio at every later step
    (``steps``, ``ratio``)."""
    from ..io.checkpoints import discover
    from ..linearity import forecast

    traj = discover(run)
    out = {}
    for q, until in fit_until.items():
        fc = forecast(traj, until)
        tot = {k: np.sum([t[k] for t in fc.tensors], axis=0) for k in ("err2", "naive2", "true2")}
        err, naive = np.sqrt(tot["err2"]), np.sqrt(tot["naive2"])
        out[q] = {
            "fit_until": until,
            "ratio_at_horizon": _num(err[-1] / naive[-1], 5),
            "ratio_pooled": _num(math.sqrt(tot["err2"].sum() / tot["naive2"].sum()), 5),
            "rel_err_at_horizon": _num(err[-1] / math.sqrt(tot["true2"][-1]), 6),
        }
        if curve:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[q]["curve"] = {"steps": list(fc.later_steps), "ratio": [_num(v, 5) for v in err / naive]}
    return out


def part_reground(regime, item: Item, scorer: Scorer, cache: RunCache, man: dict) -> dict:
    """Steps to thresholds: the standard run's held-out greedy accuracy at 1/4 and 1/2 of the horizon (seed 0);
    the first checkpoint of each run (gradient steps) whose held-out greedy accuracy reaches it; speedup = ratio."""
    from ..study.common import ckpt, first_reach
    from .grid import Item as _Item

    std_item = _Item(item.point, item.seed, full=True)
    std_run, rg_run = regime.run_dir(std_item), regime.run_dir(item)
    std_cache = RunCache(regime.out / "analysis" / std_item.run_name)
    u, half = item.point.save_every, item.point.horizon // 2
    steps = [s for s in range(0, half + 1, u)]
    std_acc = [float(scorer.score(std_cache, step_dir_name(s), ckpt(std_run, s), avg=False)["greedy"].mean())
               for s in steps]  # fmt: skip
    rg_steps = [c["step"] for c in man["checkpoints"] if c["step"] <= half]
    rg_acc = [float(scorer.score(cache, step_dir_name(s), ckpt(rg_run, s), avg=False)["greedy"].mean())
              for s in rg_steps]  # fmt: skip
    fs = forecast_steps(item.point)
    rows = []
    for q, s in fs.items():
        th = std_acc[steps.index(s)]
        a, b = first_reach(steps, std_acc, th), first_reach(rg_steps, rg_acc, th)
        rows.append({"at": q, "threshold": _num(th), "std_steps": a, "reground_steps": b,
                     "speedup": _num(a / b) if a and b else None})  # fmt: skip
    return {
        "spec": f"{u},{u}",
        "optimizer_after_jump": "reset",
        "gradient_steps": half,
        "std_curve": {"steps": steps, "greedy": [_num(v) for v in std_acc]},
        "reground_curve": {"steps": rg_steps, "greedy": [_num(v) for v in rg_acc]},
        "thresholds": rows,
        "n_problems": len(scorer.problems),
    }
