"""``advise``: is this run in the linear regime, and how far can it safely jump?

From the checkpoints seen so far (any layout :func:`rlvr_linear.io.checkpoints.discover` reads, or a trajectory sketch:
:func:`~rlvr_linear.linearity.sketch.open_run`) it backtests each linear predictor (:mod:`.backtest`) in up to three
spaces:

* **weights**: a fixed seeded sample of every ``.weight`` tensor, the sampling of ``analyze weights``
  (:func:`~rlvr_linear.linearity.sample_indices`, ``paper_sample_size``, ``tensor_seed``; 0.1%, >= 50 per tensor);
* **logprobs** (when a task or probe file is given): teacher-forced response-token log-probs under every checkpoint
  (:func:`~rlvr_linear.linearity.score_trajectory`; probes sampled from the first checkpoint for a task);
* **curve**: the run's validation accuracy (``manifest.json`` of ``rlvr-linear train``), else its mean reward, or
  the ``reward`` entries of TRL's ``trainer_state.json`` ``log_history``; steps after the newest checkpoint are
  ignored (no peeking).

h* (weights and log-probs; a predictor's h* is the smaller of the two, the curve is reported next to them) says how
far the line still beats "no change": it is the evidence that the run is in the linear regime. The **decision** is
one: the calibrated safe horizon h*_c, the same walk over the weight-space bins with the bound threshold
:data:`~.calibrate.SAFE_BOUND` instead of 1, fitted on measured cases for "the jumped model scores at least as well
as the newest checkpoint" (:mod:`.calibrate`, where its provenance and held-out precision / recall are stated), the
rule that validation supports. So ``recommendation`` says one of:

* "extrapolate with P to step T": the predictor with the largest h*_c, ``T = newest + h*_c``, its α; claimed: at
  least as accurate as the newest checkpoint, with the calibration's held-out precision as confidence (a gain is not
  claimed: it was not measured);
* "do not extrapolate: not in the linear regime" when every h* is 0;
* "do not extrapolate: no jump passes the calibrated bound" when the line beats "no change" (h* > 0) but no jump is
  calibrated safe.

``recommendation["evidence"]`` holds h* and h*_c per predictor; the JSON, the text and the plot say the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_json, write_text
from ..io.checkpoints import Trajectory
from ..linearity import (
    PAPER_FRACTION,
    PAPER_MIN_SAMPLES,
    PAPER_SEED,
    _check_finite,
    drift_to_noise,
    paper_sample_size,
    r2_score,
    sample_indices,
    sign_flip_null,
    tensor_seed,
    weight_keys,
)
from ..linearity.sketch import PROBES, SketchTrajectory, open_run
from .backtest import CONFIDENCE_TEXT, PREDICTORS, Backtest, Block, backtest, canonical
from .calibrate import SAFE_BOUND, SAFE_BOUND_CONFIDENCE, SAFE_BOUND_PROVENANCE

MIN_CHECKPOINTS = 4
DECISION_SPACES = ("weights", "logprobs")
NOT_LINEAR = "do not extrapolate: not in the linear regime"
NOT_SAFE = "do not extrapolate: no jump passes the calibrated bound"
CLAIM = ("at least as accurate as the newest checkpoint (the calibrated rule's label); a gain is not claimed, it was "
         "not measured")  # fmt: skip


def sample_weights(
    trajectory: Trajectory,
    fraction: float = PAPER_FRACTION,
    min_samples: int = PAPER_MIN_SAMPLES,
    seed: int = PAPER_SEED,
    progress: bool = False,
) -> list[Block]:
    """The seeded per-tensor sample of ``analyze weights`` at every checkpoint, one :class:`Block` per tensor."""
    r0 = trajectory.reader(0)
    blocks = []
    for name in tqdm(weight_keys(trajectory), desc="reading sampled weights", disable=None if progress else True):
        numel = r0.numel(name)
        idx = sample_indices(numel, paper_sample_size(numel, fraction, min_samples), tensor_seed(name, seed))
        y = trajectory.stack(name, torch.from_numpy(idx)).numpy()
        _check_finite(y, trajectory.steps, name)
        blocks.append(Block(name, y, len(r0.shape(name)) >= 2))
    return blocks


def _manifest_curve(man: dict, until: int) -> tuple[str, list[int], list[float]] | None:
    cps = [c for c in man.get("checkpoints", []) if c.get("step") is not None and c["step"] <= until]
    for key in ("val_accuracy", "mean_reward"):
        pts = [(int(c["step"]), float(c[key])) for c in cps if c.get(key) is not None]
        if len(pts) >= MIN_CHECKPOINTS - 1:
            return key, [p[0] for p in pts], [p[1] for p in pts]
    return None


def _trainer_state_curve(run: Path, until: int) -> tuple[str, list[int], list[float]] | None:
    states = []
    for p in run.glob("checkpoint-*/trainer_state.json"):
        try:
            states.append((int(p.parent.name.split("-")[-1]), p))
        except ValueError:
            continue
    states = [s for s in states if s[0] <= until] or states
    if not states:
        return None
    hist = json.loads(max(states)[1].read_text()).get("log_history", [])
    for key in ("eval_reward", "reward"):
        pts = {int(h["step"]): float(h[key]) for h in hist if key in h and "step" in h and h["step"] <= until}
        if len(pts) >= MIN_CHECKPOINTS - 1:
            steps = sorted(pts)
            return key, steps, [pts[s] for s in steps]
    return None


def read_curve(run: str | Path, until: int) -> tuple[str, list[int], list[float]] | None:
    """``(metric, steps, values)`` of the run's own curve up to step ``until``, or None if it has none."""
    run = Path(run)
    if (run / "manifest.json").is_file():
        got = _manifest_curve(json.loads((run / "manifest.json").read_text()), until)
        if got:
            return got
    return _trainer_state_curve(run, until) if run.is_dir() else None


def weight_stats(blocks: list[Block]) -> dict:
    """Median R² of the sampled weights next to its sign-flip null, and the median drift-to-noise (moving rows)."""
    y = np.concatenate([b.values for b in blocks], axis=1).T  # (n, T)
    y = y[(y.max(axis=1) > y.min(axis=1))]
    if y.shape[0] == 0:
        return {"moving": 0, "r2_median": math.nan, "null_r2_median": math.nan, "drift_to_noise_median": math.nan}
    steps = np.arange(y.shape[1], dtype=np.float64)
    r2 = r2_score(y, steps)
    null = r2_score(sign_flip_null(y, key=PAPER_SEED), steps)
    return {
        "moving": int(y.shape[0]),
        "r2_median": float(np.median(r2)),
        "null_r2_median": float(np.median(null)),
        "drift_to_noise_median": float(np.median(drift_to_noise(y))),
    }


@dataclass
class Advice:
    """Result of :func:`advise`: per space and predictor a :class:`~.backtest.Backtest`, and the recommendation."""

    steps: list[int]
    spaces: dict[str, dict[str, Backtest]]
    stats: dict
    recommendation: dict
    config: dict = field(default_factory=dict)

    def h_star(self, predictor: str, spaces=DECISION_SPACES) -> float:
        """The smallest h* (steps) over the decision spaces present."""
        predictor = canonical(predictor)
        vals = [self.spaces[s][predictor].h_star for s in spaces if s in self.spaces and predictor in self.spaces[s]]
        return min(vals) if vals else 0.0

    def safe_h(self, predictor: str, bound: float | None = None) -> float:
        """The calibrated safe horizon h*_c (steps; weights): :meth:`~.backtest.Backtest.h_star_below` with
        ``bound`` (default :data:`~.calibrate.SAFE_BOUND`)."""
        bt = self.spaces.get("weights", {}).get(canonical(predictor))
        return 0.0 if bt is None else bt.h_star_below(SAFE_BOUND if bound is None else bound)

    def to_json(self) -> dict:
        from ..io import jsonable

        return jsonable(
            {
                "kind": "advice",
                "steps": self.steps,
                "config": self.config,
                "confidence": CONFIDENCE_TEXT,
                "stats": self.stats,
                "recommendation": self.recommendation,
                "spaces": {s: {p: bt.to_json() for p, bt in d.items()} for s, d in self.spaces.items()},
            }
        )

    def summary_text(self) -> str:
        rec = self.recommendation
        st = self.stats.get("weights", {})
        lines = [
            f"checkpoints: {len(self.steps)} (steps {self.steps[0]}..{self.steps[-1]})",
            f"weights: {st.get('moving', 0)} moving sampled parameters; median R² {st.get('r2_median', math.nan):.3f}"
            f" (sign-flip null {st.get('null_r2_median', math.nan):.3f}); median drift-to-noise "
            f"{st.get('drift_to_noise_median', math.nan):.2f}",
            "error ratio vs 'no change' by relative horizon rho = jump / fit span (< 1: the line wins; [95% bound]):",
        ]
        if "curve" in self.spaces:
            lines.append(f"  (curve = the run's {self.stats['curve']['metric']}; no bootstrap: one series)")
        for space, d in self.spaces.items():
            label = space
            for p, bt in d.items():
                cells = " ".join(f"{r['rho_hi']:g}:{r['ratio']:.2f}[{r['upper']:.2f}]" for r in bt.rows[:6]) or bt.note
                lines.append(f"  {label:<9} {p:<10} h*={bt.h_star:7.1f} steps (rho*={bt.rho_star:.2f})  {cells}")
        ev = rec["evidence"]
        lines.append(f"decision: {rec['verdict']}")
        if rec["extrapolate"]:
            lines.append(f"  jump +{rec['h_steps']:.0f} steps, alpha {rec['alpha']:.3g} from step {rec['fit_from']}; "
                         f"expected: {CLAIM}")  # fmt: skip
        lines.append(f"  confidence: {rec['confidence']}")
        lines.append(f"  evidence: {ev['why']}")
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "advice.json", self.to_json())
        write_text(out / "advice.txt", self.summary_text() + "\n")
        plot_advice(self, out / "advice.png")
        return out


def plot_advice(adv: Advice, path: str | Path) -> Path:
    """Error ratio vs relative horizon, one panel per space, one line per predictor, h* marked."""
    from matplotlib.figure import Figure

    from ..reporting.plots import _save

    spaces = list(adv.spaces)
    fig = Figure(figsize=(5 * len(spaces), 4))
    axes = np.atleast_1d(fig.subplots(1, len(spaces), squeeze=False)).ravel()
    colors = {"two_point": "tab:blue", "lsq_last_k": "tab:orange", "rank1": "tab:green", "lsq_all": "tab:purple"}
    for ax, space in zip(axes, spaces):
        for p, bt in adv.spaces[space].items():
            if not bt.rows:
                continue
            rx = [r["rho_max"] for r in bt.rows]
            ax.plot(rx, [r["ratio"] for r in bt.rows], "o-", color=colors.get(p), label=f"{p} (h*={bt.h_star:.0f})")
            ax.plot(rx, [min(r["upper"], 1e6) for r in bt.rows], ":", color=colors.get(p))
            if bt.rho_star > 0:
                ax.axvline(bt.rho_star, color=colors.get(p), alpha=0.5, lw=2)
        ax.axhline(1.0, color="k", lw=0.8)
        if space == "weights" and math.isfinite(SAFE_BOUND):
            ax.axhline(SAFE_BOUND, color="tab:red", lw=0.8, ls="-.", label=f"calibrated bound {SAFE_BOUND:.3g}")
        ax.set_xscale("log")
        ax.set_xlabel("relative horizon rho = jump / fit span")
        ax.set_ylabel("error ratio vs 'no change' (dotted: 95% bound)")
        ax.set_title(space, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Backtest up to step {adv.steps[-1]}. Decision: {adv.recommendation['verdict']}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _fit_from(steps: list[int], predictor: str, base: int, k: int) -> int:
    return steps[base] if predictor != "lsq_last_k" else steps[len(steps) - k]


def safe_recommendation(adv: Advice, base: int = 0, k: int = 4, bound: float | None = None) -> dict:
    """The calibrated safe horizon: per predictor h*_c in weight space, and the largest of them as a jump."""
    bound = SAFE_BOUND if bound is None else bound
    steps = adv.steps
    h = {p: adv.safe_h(p, bound) for p in adv.spaces.get("weights", {})}
    out: dict = {"bound": bound, "provenance": SAFE_BOUND_PROVENANCE, "h_steps_by_predictor": h,
                 "space": "weights", "extrapolate": False}  # fmt: skip
    if not h or not math.isfinite(bound):
        return out
    best = max(h, key=lambda p: (h[p], -list(h).index(p)))
    target = int(math.floor(steps[-1] + h[best]))
    if h[best] <= 0 or target <= steps[-1]:
        return out
    fit_from = _fit_from(steps, best, base, k)
    out.update(extrapolate=True, predictor=best, target_step=target, h_steps=h[best],
               alpha=(target - fit_from) / (steps[-1] - fit_from), fit_from=fit_from)  # fmt: skip
    return out


def recommend(adv: Advice, base: int = 0, k: int = 4) -> dict:
    """The one decision (see the module docstring): the calibrated safe jump, or why there is none."""
    steps = adv.steps
    h = {p: adv.h_star(p) for p in next(iter(adv.spaces.values()))}
    numbers = {
        p: {s: {"h_star": d[p].h_star, "first_bin": d[p].rows[0] if d[p].rows else None}
            for s, d in adv.spaces.items() if p in d}
        for p in h
    }  # fmt: skip
    safe = safe_recommendation(adv, base, k)
    spaces = [s for s in DECISION_SPACES if s in adv.spaces]
    best = max(h, key=lambda p: (h[p], -list(h).index(p)))
    linear = h[best] > 0 and math.floor(steps[-1] + h[best]) > steps[-1]
    if linear:
        why = (f"the line beats 'no change' up to h* = {h[best]:.0f} steps (smallest over {', '.join(spaces)}; "
               + ", ".join(f"{p} {v:.0f}" for p, v in h.items()) + "); calibrated safe h*_c (weight bound < "
               f"{safe['bound']:.3g}): " + ", ".join(f"{p} {v:.0f}" for p, v in safe["h_steps_by_predictor"].items()))
    else:
        firsts = []
        for p in h:
            r = adv.spaces["weights"][p].rows
            firsts.append(f"{p}: ratio {r[0]['ratio']:.2f} (bound {r[0]['upper']:.2f})" if r else f"{p}: no backtest")
        why = "no predictor beats 'no change' at the shortest horizon: " + "; ".join(firsts)
    evidence = {"linear": linear, "h_star_steps": h[best] if linear else 0.0, "h_star_by_predictor": h,
                "safe_h_by_predictor": safe["h_steps_by_predictor"], "bound": safe["bound"], "why": why,
                "numbers": numbers}  # fmt: skip
    out = {"extrapolate": False, "evidence": evidence, "safe": safe, "confidence": SAFE_BOUND_CONFIDENCE}
    if linear and safe["extrapolate"]:
        p = safe["predictor"]
        return {**out, "extrapolate": True, "decision": "extrapolate",
                "verdict": f"extrapolate with {p} to step {safe['target_step']}", "predictor": p,
                "target_step": safe["target_step"], "h_steps": safe["h_steps"], "alpha": safe["alpha"],
                "fit_from": safe["fit_from"], "claim": CLAIM}  # fmt: skip
    return {**out, "decision": "do not extrapolate", "verdict": NOT_SAFE if linear else NOT_LINEAR}


def advise(
    trajectory: Trajectory | str | Path | list[str],
    *,
    task: Any = None,
    probes: Any = None,
    predictors=PREDICTORS,
    until: int | None = None,
    base_step: int | None = None,
    k: int = 4,
    run_dir: str | Path | None = None,
    fraction: float = PAPER_FRACTION,
    min_samples: int = PAPER_MIN_SAMPLES,
    seed: int = PAPER_SEED,
    n_probes: int = 16,
    device: str | None = None,
    progress: bool = False,
) -> Advice:
    """Backtest linear predictors on the checkpoints with step <= ``until`` and recommend a jump (or none).

    ``base_step``: the two-point / rank-1 base (default the first checkpoint); earlier checkpoints are dropped.
    ``k``: checkpoints of the ``lsq_last_k`` fit. ``run_dir``: where the curve is read (default: ``trajectory``
    when it is a directory). Fewer than 4 checkpoints, or checkpoints whose tensors differ, raise
    :class:`~rlvr_linear.errors.RlvrLinearError`.
    """
    if not isinstance(trajectory, Trajectory):
        if run_dir is None and isinstance(trajectory, (str, Path)):
            run_dir = trajectory
        trajectory = open_run(trajectory)  # a run's checkpoints, or a trajectory sketch
    preds = [canonical(p) for p in predictors]
    traj = trajectory.until(until) if until is not None else trajectory
    if base_step is not None:
        if base_step not in traj.steps:
            raise RlvrLinearError(f"base step {base_step} is not a checkpoint step ({traj.steps})")
        traj = traj.subset([i for i, s in enumerate(traj.steps) if s >= base_step])
    if len(traj) < MIN_CHECKPOINTS:
        raise RlvrLinearError(
            f"advise needs at least {MIN_CHECKPOINTS} checkpoints to backtest a line (fit on earlier ones, "
            f"predict later ones); found {len(traj)} (steps {traj.steps})"
        )
    try:
        traj.validate(min_checkpoints=MIN_CHECKPOINTS)
        spaces: dict[str, list[Block]] = {"weights": sample_weights(traj, fraction, min_samples, seed, progress)}
    finally:
        traj.close()  # the sample is in memory; no open files stay behind (validate() advises many runs)
    steps = traj.steps
    stats: dict = {"weights": weight_stats(spaces["weights"])}
    if probes is None and task is not None:
        from ..linearity import make_probes

        if isinstance(traj, SketchTrajectory):
            where = traj.sketch.path
            raise RlvrLinearError(f"{where}: a trajectory sketch holds no model to sample probes from; pass its own "
                                  f"probes instead of a task (--probes {where / PROBES})")  # fmt: skip
        probes = make_probes(traj.paths[0], task, n_prompts=n_probes, k=2, seed=seed, device=device)
    if probes is not None:
        from ..linearity import _as_probes, score_trajectory

        logp, _, _ = score_trajectory(traj, _as_probes(probes), device=device, progress=progress)
        _check_finite(logp, steps, "log-probs")
        spaces["logprobs"] = [Block("logprobs", logp.astype(np.float64))]
        stats["logprobs"] = {"tokens": int(logp.shape[1])}
    curve = read_curve(run_dir, steps[-1]) if run_dir is not None else None
    results: dict[str, dict[str, Backtest]] = {}
    for space, blocks in spaces.items():
        results[space] = {p: backtest(steps, blocks, p, k=k, seed=seed) for p in preds}
    if curve is not None:
        metric, cs, cv = curve
        cs, cv = [s for s in cs if s >= steps[0]], [v for s, v in zip(cs, cv) if s >= steps[0]]
        if len(cs) >= MIN_CHECKPOINTS:
            blk = [Block(metric, np.asarray(cv, dtype=np.float64)[:, None], low_rank=False)]
            results["curve"] = {p: backtest(cs, blk, p, k=k, seed=seed) for p in preds}
            stats["curve"] = {"metric": metric, "steps": cs, "values": cv}
    config = {"predictors": preds, "k": k, "fraction": fraction, "min_samples": min_samples, "seed": seed,
              "base_step": steps[0], "paths": [str(p) for p in traj.paths]}  # fmt: skip
    adv = Advice(steps, results, stats, {}, config)
    adv.recommendation = recommend(adv, 0, k)
    return adv
