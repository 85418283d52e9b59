"""Forecast: fit a line on early checkpoints, score it on later ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io.checkpoints import Trajectory
from .probes import Probe, _as_probes, score_trajectory
from .reader import _check_finite, _read_rows, _row_chunks, _RowSource
from .sampling import float_keys
from .stats import JsonResult, _fit_tn, _write_csv

# --------------------------------------------------------------------------------------------------
# Forecast


@dataclass
class ForecastResult(JsonResult):
    """Result of :func:`forecast`.

    For every later step ``s``, with ``Ŵ(s)`` the per-element OLS line fitted on the checkpoints with step
    ``<= fit_until`` and ``W(f)`` the last of them (the naive "no further change" predictor):

        rel_err(s)        = ||Ŵ(s) - W(s)|| / ||W(s)||
        naive_rel_err(s)  = ||W(f) - W(s)|| / ||W(s)||
        ratio_to_naive(s) = ||Ŵ(s) - W(s)|| / ||W(f) - W(s)||   (< 1: the line beats "no change")

    norms over one tensor (per tensor) or over all tensors (overall). Log-probs: mean absolute error of
    predicted vs true log-probs over all probe tokens, next to the naive MAE.
    """

    fit_steps: list[int]
    later_steps: list[int]
    tensors: list[dict]  #: name, numel, err2, naive2, true2 (lists over later steps)
    logprobs: dict | None = None

    @staticmethod
    def _metrics(err2, naive2, true2) -> dict:
        err, naive, true = (np.sqrt(np.asarray(v, dtype=np.float64)) for v in (err2, naive2, true2))
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "rel_err": (err / true).tolist(),
                "naive_rel_err": (naive / true).tolist(),
                "ratio_to_naive": (err / naive).tolist(),
            }

    def overall(self) -> dict:
        tot = {k: np.sum([t[k] for t in self.tensors], axis=0) for k in ("err2", "naive2", "true2")}
        return self._metrics(tot["err2"], tot["naive2"], tot["true2"])

    def summary(self) -> dict:
        return {
            "kind": "forecast",
            "fit_steps": self.fit_steps,
            "later_steps": self.later_steps,
            "definitions": {
                "rel_err": "||pred - true|| / ||true||, pred = OLS line fitted on fit_steps",
                "naive_rel_err": "||W(fit_last) - true|| / ||true|| (no further change)",
                "ratio_to_naive": "||pred - true|| / ||W(fit_last) - true||",
                "logprob_mae": "mean |pred - true| over all response tokens; naive uses logp(fit_last)",
            },
            "overall": self.overall(),
            "tensors": [
                {"name": t["name"], "numel": t["numel"], **self._metrics(t["err2"], t["naive2"], t["true2"])}
                for t in self.tensors
            ],
            "logprobs": self.logprobs,
        }

    def save(self, out_dir: str | Path) -> None:
        from ..reporting import plots

        out, s = self._save_json(out_dir, "forecast")
        rows = []
        for t in s["tensors"]:
            for j, step in enumerate(self.later_steps):
                rows.append(
                    {
                        "name": t["name"],
                        "step": step,
                        "rel_err": t["rel_err"][j],
                        "naive_rel_err": t["naive_rel_err"][j],
                        "ratio_to_naive": t["ratio_to_naive"][j],
                    }
                )
        cols = ["name", "step", "rel_err", "naive_rel_err", "ratio_to_naive"]
        _write_csv(out / "forecast_per_tensor.csv", rows, cols)
        panels = [
            {
                "ours": s["overall"]["rel_err"],
                "naive": s["overall"]["naive_rel_err"],
                "ylabel": "relative L2 error of weights",
                "title": "Weights",
            }
        ]
        if self.logprobs:
            panels.append(
                {"ours": self.logprobs["mae"], "naive": self.logprobs["naive_mae"], "ylabel": "MAE of log-probs",
                 "title": "Teacher-forced log-probs"}
            )  # fmt: skip
        plots.plot_forecast_errors(out / "forecast.png", self.later_steps, panels, fit_until=self.fit_steps[-1])

    def summary_line(self) -> str:
        o = self.overall()
        parts = [
            f"step {s}: rel err {e:.3g} (naive {n:.3g})"
            for s, e, n in zip(self.later_steps, o["rel_err"], o["naive_rel_err"])
        ]
        line = "forecast from steps " + ",".join(map(str, self.fit_steps)) + ": " + "; ".join(parts[:4])
        if len(parts) > 4:
            line += f"; ... ({len(parts)} steps)"
        return line


def split_fit(steps: Sequence[int], fit_until_step: int) -> int:
    """Number of checkpoints used for the fit (step <= ``fit_until_step``); errors unless >= 2 and < len(steps)."""
    F = sum(1 for s in steps if s <= fit_until_step)
    if F < 2:
        raise RlvrLinearError(
            f"forecast needs at least 2 checkpoints with step <= {fit_until_step} to fit a line, "
            f"found {F} (steps: {list(steps)})"
        )
    if F == len(steps):
        raise RlvrLinearError(f"no checkpoint after step {fit_until_step} to forecast (steps: {list(steps)})")
    return F


def forecast(
    trajectory: Trajectory,
    fit_until_step: int,
    probes: Sequence[Probe] | str | Path | None = None,
    chunk: int = 1 << 16,
    keys: Sequence[str] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ForecastResult:
    """Fit a line per scalar on the checkpoints with step ``<= fit_until_step`` and predict every later one.

    Weights: every floating tensor (``keys`` to restrict), streamed ``chunk`` elements (whole rows) at a
    time from all checkpoints. Log-probs (when ``probes`` are given): every response token. See
    :class:`ForecastResult` for the error definitions.
    """
    trajectory.validate(min_checkpoints=3)
    steps = trajectory.steps
    F = split_fit(steps, fit_until_step)
    x = np.asarray(steps, dtype=np.float64)
    xf, xl = x[:F], x[F:]
    keys = list(keys) if keys is not None else float_keys(trajectory)
    r0 = trajectory.reader(0)
    sources = [_RowSource(trajectory.reader(i)) for i in range(len(steps))]
    tensors = []
    for name in tqdm(keys, desc="forecast", disable=None if progress else True):
        row_len, spans = _row_chunks(r0.shape(name), chunk)
        acc = {k: np.zeros(len(xl)) for k in ("err2", "naive2", "true2")}
        for a, b in spans:
            y = _read_rows(sources, name, a, b, (b - a) * row_len)
            _check_finite(y, steps, name)
            fit = _fit_tn(y[:F], xf)
            pred = fit.intercept[None, :] + xl[:, None] * fit.slope[None, :]
            true = y[F:]
            acc["err2"] += ((pred - true) ** 2).sum(axis=1)
            acc["naive2"] += ((y[F - 1][None, :] - true) ** 2).sum(axis=1)
            acc["true2"] += (true**2).sum(axis=1)
        for src in sources:
            src.close()
        tensors.append({"name": name, "numel": r0.numel(name), **{k: v.tolist() for k, v in acc.items()}})
    lp_res = None
    if probes is not None:
        logp, _, _ = score_trajectory(trajectory, _as_probes(probes), batch_size, device, dtype, progress)
        _check_finite(logp, steps, "log-probs")
        err, naive = np.zeros(len(xl)), np.zeros(len(xl))
        for a in range(0, logp.shape[1], chunk):  # float64 work arrays of chunk tokens only
            y = logp[:, a : a + chunk].astype(np.float64)
            fit = _fit_tn(y[:F], xf)
            pred = fit.intercept[None, :] + xl[:, None] * fit.slope[None, :]
            err += np.abs(pred - y[F:]).sum(axis=1)
            naive += np.abs(y[F - 1][None, :] - y[F:]).sum(axis=1)
        n = max(logp.shape[1], 1)
        lp_res = {"tokens": int(logp.shape[1]), "mae": (err / n).tolist(), "naive_mae": (naive / n).tolist()}
    return ForecastResult(steps[:F], steps[F:], tensors, lp_res)
