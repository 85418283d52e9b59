"""``LinearityMonitor``: an online linearity check for any ``transformers.Trainer`` (TRL trainers included).

Every ``every`` optimizer steps (and at the start of training) it records a fixed seeded sample of the trainable
``.weight`` parameters — per tensor the sample of ``analyze weights`` (:func:`~rlvr_linear.linearity.sample_indices`
with ``tensor_seed(name, seed)``, 0.1% and >= 50 per tensor), so every rank draws the same indices — and, from the
newest ``window`` records, computes and logs:

* ``linearity/drift_to_noise``: median |net change| / sqrt(Σ increment²) of the moving sampled parameters;
* ``linearity/r2`` and ``linearity/r2_null``: median per-parameter R² against step, and the same for the sign-flip
  null (drift removed, step sizes kept; :func:`~rlvr_linear.linearity.sign_flip_null`);
* ``linearity/error_ratio``: the backtested forecast error against "no change" of the best predictor (largest h*)
  at its shortest relative horizon (:func:`rlvr_linear.advisor.backtest.backtest`; from 3 records on);
* ``linearity/h_star``: that predictor's safe horizon in steps (0 when no predictor beats "no change").

Values go into the trainer's own ``logs`` dict in ``on_log`` (so ``state.log_history`` has them) — and to
TensorBoard / W&B / any reporting callback when the monitor runs before them: :meth:`LinearityMonitor.install`
puts it first in the trainer's callback list. ``history`` keeps every measurement (``rlvr-linear train --monitor``
writes it to the run's manifest under ``"monitor"``).

Usage in any TRL / transformers trainer::

    mon = LinearityMonitor(every=10)
    trainer = GRPOTrainer(..., callbacks=[mon])
    mon.install(trainer)  # first in the callback list, so TensorBoard / W&B see the linearity/* keys
    trainer.train()
    mon.history  # one dict per measurement

Distributed: DDP (and ZeRO-1/2) ranks hold identical full parameters, so they draw and log identical numbers with
no communication. Under sharding (FSDP2, FSDP1 with ``use_orig_params=True``, ZeRO-3:
:func:`rlvr_linear.training.distributed.sharding`) every rank gathers each sampled weight in turn
(:func:`~rlvr_linear.training.distributed.gathered_params`: one full tensor at a time; FSDP1: the whole model) and
samples it under its unwrapped name, so every rank logs the numbers a single process would log on the same weights.
**Tested** (2 processes, gloo, CPU): DDP, FSDP2, FSDP1 and ZeRO-3, each equal to the single-process monitor.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import TrainerCallback

from ..advisor.advise import weight_stats
from ..advisor.backtest import EXTRA_PREDICTORS, PREDICTORS, Block, backtest, canonical
from ..errors import RlvrLinearError
from ..linearity import PAPER_FRACTION, PAPER_MIN_SAMPLES, PAPER_SEED, paper_sample_size, sample_indices, tensor_seed
from .distributed import clean_name, gathered_params, is_sampled_weight, local_params, sharding

PREFIX = "linearity/"


class LinearityMonitor(TrainerCallback):
    """Record a seeded parameter sample every ``every`` steps; log drift-to-noise, R² vs null, error ratio and h*.

    Args:
        every: record every K optimizer steps (and at ``on_train_begin``).
        window: measurements use the newest ``window`` records (bounds the cost; the two-point base is the oldest
            record in the window).
        predictors, k: as in :func:`rlvr_linear.advisor.advise` (``k`` checkpoints for ``lsq_last_k``).
        fraction, min_samples, seed: the per-tensor sample (``analyze weights`` defaults).
        n_boot: bootstrap resamples for the bound on the error ratio.
    """

    def __init__(
        self,
        every: int = 10,
        window: int = 12,
        predictors: Sequence[str] = PREDICTORS,
        k: int = 4,
        fraction: float = PAPER_FRACTION,
        min_samples: int = PAPER_MIN_SAMPLES,
        seed: int = PAPER_SEED,
        n_boot: int = 200,
    ):
        if int(every) < 1 or int(window) < 3:
            raise RlvrLinearError(f"the linearity monitor needs every >= 1 and window >= 3, got {every} and {window}")
        self.every, self.window, self.k = int(every), int(window), int(k)
        self.predictors = [canonical(p) for p in predictors]
        self.fraction, self.min_samples, self.seed, self.n_boot = fraction, min_samples, seed, n_boot
        self.records: list[tuple[float, np.ndarray]] = []
        self.history: list[dict] = []
        self.coordinate: Callable | None = None  #: state -> x (default ``state.global_step``)
        self._index: dict[str, torch.Tensor] = {}
        self._meta: list[tuple[str, int, bool]] = []
        self._sharded: bool | None = None
        self._last_step: int | None = None
        self._pending: dict | None = None
        self.seconds = 0.0  #: time spent recording and measuring

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _sample(self, model) -> np.ndarray:
        if self._sharded is None:
            self._sharded = sharding(model) is not None
        if self._sharded:  # every rank gathers each full weight in turn and samples it as one process would
            named = gathered_params(model, keep=is_sampled_weight)
        else:
            named = ((clean_name(n), t) for n, t in local_params(model))
        parts, meta = [], []
        for name, t in named:
            if not is_sampled_weight(name, t) or t.numel() == 0:
                continue
            flat = t.reshape(-1)
            idx = self._index.get(name)
            if idx is None:
                n = flat.numel()
                k = paper_sample_size(n, self.fraction, self.min_samples)
                idx = torch.from_numpy(sample_indices(n, k, tensor_seed(name, self.seed))).to(flat.device)
                self._index[name] = idx
            parts.append(flat[idx.to(flat.device)].double().cpu())
            meta.append((name, idx.numel(), t.dim() >= 2))
        self._meta = meta
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    def observe(self, model, state) -> dict | None:
        """Record the current weights (once per global step) and measure; returns the new metrics, if any."""
        if self._last_step == state.global_step:
            return None
        t0 = time.perf_counter()
        self._last_step = state.global_step
        x = float(self.coordinate(state) if self.coordinate else state.global_step)
        self.records.append((x, self._sample(model)))
        self.records = self.records[-self.window :]
        metrics = self.measure() if len(self.records) >= 3 else None
        self.seconds += time.perf_counter() - t0
        if metrics is not None:
            metrics[PREFIX + "seconds"] = self.seconds
            self.history.append({"step": state.global_step, "x": x, **metrics})
            self._pending = metrics
        return metrics

    def blocks(self) -> tuple[list[float], list[Block]]:
        xs = [r[0] for r in self.records]
        y = np.stack([r[1] for r in self.records])
        blocks, a = [], 0
        for name, n, low_rank in self._meta:
            blocks.append(Block(name, y[:, a : a + n], low_rank))
            a += n
        return xs, blocks

    def measure(self) -> dict:
        xs, blocks = self.blocks()
        st = weight_stats(blocks)
        out = {
            PREFIX + "drift_to_noise": st["drift_to_noise_median"],
            PREFIX + "r2": st["r2_median"],
            PREFIX + "r2_null": st["null_r2_median"],
        }
        best = None
        for p in self.predictors:
            bt = backtest(xs, blocks, p, k=self.k, n_boot=self.n_boot, seed=self.seed)
            if bt.rows and (best is None or bt.h_star > best.h_star):
                best = bt
        if best is not None:
            r = best.rows[0]["ratio"]
            out[PREFIX + "error_ratio"] = r if math.isfinite(r) else 1e6
            out[PREFIX + "h_star"] = best.h_star
            out[PREFIX + "predictor"] = float((PREDICTORS + EXTRA_PREDICTORS).index(best.predictor))
        return {k: (0.0 if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

    @property
    def h_star(self) -> float:
        """The newest measured h* in steps (0 before the first backtest)."""
        for h in reversed(self.history):
            if PREFIX + "h_star" in h:
                return float(h[PREFIX + "h_star"])
        return 0.0

    def install(self, trainer) -> LinearityMonitor:
        """Add to ``trainer`` as its first callback, so reporting callbacks (TensorBoard, W&B) see the keys."""
        handler = trainer.callback_handler
        handler.callbacks = [self] + [c for c in handler.callbacks if c is not self]
        return self

    # -- TrainerCallback -----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.observe(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step % self.every == 0:
            self.observe(model, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._pending:
            return
        if logs is not None:
            logs.update(self._pending)
        # Trainer.log appends {**logs, "step": global_step} to log_history before calling on_log
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)
        self._pending = None
