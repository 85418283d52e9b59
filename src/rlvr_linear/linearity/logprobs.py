"""Log-prob linearity: :func:`analyze_logprobs` and :class:`LogprobLinearity`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import write_npz
from ..io.checkpoints import Trajectory
from .probes import Probe, _as_probes, score_trajectory, write_probes
from .reader import _check_finite
from .stats import (
    MAX_POSITIONS,
    MIN_LOGPROB_CHANGE,
    PAPER_SEED,
    Dist,
    JsonResult,
    LinearFit,
    _above_null,
    _dnr_tn,
    _fit_tn,
    _null_tn,
    _summary_line,
    _summary_text,
    stable_key,
)


@dataclass
class LogprobLinearity(JsonResult):
    """Result of :func:`analyze_logprobs`."""

    steps: list[int]
    logp: np.ndarray  #: (T, N) float32, every response token of every probe
    token_ids: np.ndarray  #: (N,)
    probe_index: np.ndarray  #: (N,)
    position: np.ndarray  #: (N,) index of the token within its response
    sampled: np.ndarray  #: indices of eligible positions that were analysed
    fit: LinearFit  #: on the sampled positions
    null_r2: np.ndarray
    dnr: np.ndarray
    probes: list[Probe]
    config: dict
    examples: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        r2, null = Dist(keep=True), Dist(keep=True)
        r2.add(self.fit.r2)
        null.add(self.null_r2)
        change = self.logp[-1].astype(np.float64) - self.logp[0]
        s_r2, s_null = r2.summary(), null.summary()
        dnr = Dist(hi=math.sqrt(len(self.steps) - 1), keep=True)
        dnr.add(self.dnr)
        return {
            "kind": "logprobs",
            "steps": self.steps,
            "n_checkpoints": len(self.steps),
            "config": self.config,
            "counts": {
                "probes": len(self.probes),
                "tokens": int(self.logp.shape[1]),
                "eligible": int((np.abs(change) > self.config["min_change"]).sum()),
                "sampled": int(self.sampled.size),
                "constant": int((self.logp.max(0) == self.logp.min(0)).sum()),
            },
            "r2": s_r2,
            "null": s_null,
            "above_null": _above_null(s_r2, s_null),
            "drift_to_noise": dnr.summary(share=False),
            "mean_abs_change": float(np.abs(change).mean()) if change.size else math.nan,
        }

    def save(self, out_dir: str | Path) -> None:
        from ..reporting import plots

        out, s = self._save_json(out_dir, "logprobs")
        write_probes(out / "probes.jsonl", self.probes)
        write_npz(
            out / "logprobs.npz",
            steps=np.asarray(self.steps),
            logp=self.logp,
            token_ids=self.token_ids,
            probe_index=self.probe_index,
            position=self.position,
            sampled=self.sampled,
            r2=self.fit.r2,
            null_r2=self.null_r2,
            slope=self.fit.slope,
            intercept=self.fit.intercept,
        )
        plots.plot_r2_histogram(
            out / "logprobs_r2_hist.png",
            self.fit.r2,
            self.null_r2,
            title=f"Teacher-forced token log-prob R² ({len(self.steps)} checkpoints)",
            summary=_summary_text(s["r2"], s["null"]),
        )
        plots.plot_trajectories(
            out / "logprobs_examples.png",
            self.steps,
            self.examples,
            title="Token log-prob trajectories (teacher forced)",
            ylabel="log p(token)",
        )

    def summary_line(self) -> str:
        s = self.to_json()
        return _summary_line("logprobs", s["r2"], s["null"], s["counts"]["sampled"], s["counts"]["tokens"])


def analyze_logprobs(
    trajectory: Trajectory,
    probes: Sequence[Probe] | str | Path,
    batch_size: int = 8,
    min_change: float = MIN_LOGPROB_CHANGE,
    max_positions: int = MAX_POSITIONS,
    seed: int = PAPER_SEED,
    n_examples: int = 9,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> LogprobLinearity:
    """Per-token R² of teacher-forced log-probs vs step (paper §1.2).

    Every checkpoint scores the same probes (:func:`score_logprobs`). Positions with
    ``|logp_last - logp_first| > min_change`` are eligible; up to ``max_positions`` of them are drawn
    uniformly (``numpy.random.default_rng(seed)``). Null baseline and drift-to-noise as for weights.
    """
    trajectory.validate(min_checkpoints=3)
    probes = _as_probes(probes)
    logp, enc, tok = score_trajectory(trajectory, probes, batch_size, device, dtype, progress)
    _check_finite(logp, trajectory.steps, "log-probs")
    lens = [len(r) for _, r in enc]
    token_ids = np.concatenate([np.asarray(r, dtype=np.int64) for _, r in enc]) if enc else np.zeros(0, np.int64)
    probe_index = np.repeat(np.arange(len(enc)), lens)
    position = np.concatenate([np.arange(n) for n in lens]) if lens else np.zeros(0, np.int64)
    x = np.asarray(trajectory.steps, dtype=np.float64)
    change = logp[-1].astype(np.float64) - logp[0]
    eligible = np.flatnonzero(np.abs(change) > min_change)
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(eligible, size=min(max_positions, eligible.size), replace=False))
    ys = logp[:, sampled].astype(np.float64)
    fit = _fit_tn(ys, x)
    null = _null_tn(ys, sampled, stable_key("logprobs", seed))
    # examples: tokens with the largest change among the sampled ones
    examples = []
    if sampled.size:
        top = np.argsort(-np.abs(change[sampled]))[: max(n_examples * 10, 1)]
        pick = np.sort(rng.choice(top, size=min(n_examples, top.size), replace=False))
        for j in pick:
            g = int(sampled[j])
            text = tok.decode([int(token_ids[g])])
            examples.append(
                {
                    "label": f"{text!r} (probe {probe_index[g]}, pos {position[g]})  "
                    f"Δ={change[g]:+.2f} R²={fit.r2[j]:.3f}",
                    "values": ys[:, j].tolist(),
                    "slope": float(fit.slope[j]),
                    "intercept": float(fit.intercept[j]),
                    "r2": float(fit.r2[j]),
                    "token": text,
                }
            )
    config = {
        "min_change": min_change,
        "max_positions": max_positions,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return LogprobLinearity(
        steps=trajectory.steps,
        logp=logp.astype(np.float32),
        token_ids=token_ids,
        probe_index=probe_index,
        position=position,
        sampled=sampled,
        fit=fit,
        null_r2=_fit_tn(null, x).r2,
        dnr=_dnr_tn(ys),
        probes=list(probes),
        config=config,
        examples=examples,
    )
