"""Periodic re-grounding (paper §6, v1/v2 name "RL-Extra"): M real RL steps, then a gradient-free jump of N steps.

One *cycle* starts from an anchor ``W_a`` (the weights at the start of the segment), runs M optimizer steps to
``W``, and then projects the weights N steps further along the segment's own direction:

    W ← W_a + α · (W − W_a),    α = (M + N) / M

The projected weights become the anchor of the next segment. Each cycle spends M gradient steps and advances the
*effective* step by M + N, so after k cycles: gradient steps = k·M, effective steps = k·(M + N).

Adaptive N (``ReGroundingCallback(m, "auto")``, ``--reground M,auto``): at the end of each segment the
:class:`~rlvr_linear.training.monitor.LinearityMonitor` backtests the trajectory so far (in effective steps) and N is
its safe horizon h* (floored, capped at ``max_n``); N = 0 — no jump — when no linear predictor beats "no change".

Two ways to run it:

* :class:`ReGroundingCallback` — in-process, for any ``transformers.Trainer`` (TRL's ``GRPOTrainer`` included).
  The jump happens in ``on_step_end`` every M optimizer steps. ``optimizer_state="reset"`` clears Adam's moments
  after the jump, which is what the paper gets implicitly by restarting its verl job every cycle.
* :func:`~rlvr_linear.training.reground_driver.reground_driver` (``rlvr-linear reground``) — out-of-process, for
  any trainer with a command line (verl, OpenRLHF, TRL scripts, ``rlvr-linear train``): run the command for M
  steps, extrapolate the resulting checkpoint with :func:`rlvr_linear.extrapolation.weights.extrapolate_two_point`,
  restart from the projection. Resumable. It lives in :mod:`rlvr_linear.training.reground_driver`.

Parameter policy (as in weight extrapolation, paper §5.1, the same rule:
:func:`rlvr_linear.extrapolation.params.is_norm_param`): only parameters with ``requires_grad`` are jumped;
with ``norms="copy"`` a parameter whose lowercased name contains ``layernorm``/``rmsnorm``/``norm``/``ln_`` keeps
its trained value (W), with ``norms="extrapolate"`` it is jumped like the others.

Distributed training (the callback; each case tested with gloo processes on CPU against the same run in one process,
``tests/test_distributed_engines.py``):

* DDP: every rank holds the full parameters and they are identical after each optimizer step, so every rank
  applies the same elementwise jump from its own identical anchor — deterministic, no communication.
  :func:`~rlvr_linear.training.distributed.ranks_agree` checks it.
* FSDP2, FSDP1 (``use_orig_params=True``) and DeepSpeed ZeRO-3: each rank jumps only its *local shard*, with anchors
  stored per local shard (``p.to_local()`` for FSDP2 DTensor parameters, the sharded view ``p.data`` for FSDP1,
  ``p.ds_tensor`` for ZeRO-3). Since the jump is elementwise, jumping each shard is the same as jumping the whole.
  Under DeepSpeed the fp32 master weights are refreshed from the jumped weights with the optimizer's
  ``refresh_fp32_params()``, otherwise the next optimizer step would undo the jump; ``reset`` zeroes its state
  tensors in place. FSDP1 with ``use_orig_params=False`` (flattened parameters only) is refused with one line.

vLLM: TRL re-syncs vLLM weights whenever the trainer's ``global_step`` changed since the last sync —
``trl/trainer/grpo_trainer.py`` (TRL 1.16.0), ``GRPOTrainer._generate_single_turn`` (``if self.state.global_step
!= self._last_loaded_step: self.vllm_generation.sync_weights()``) and ``GRPOTrainer._generate`` (same check on the
``rollout_func`` path). ``on_step_end`` runs right after ``global_step += 1``, so the jumped weights are pushed to
vLLM at the next generation. Caveat: with ``steps_per_generation > 1`` (or ``num_iterations > 1``) completions
generated before the jump are still consumed after it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..errors import RlvrLinearError
from ..extrapolation.params import NORM_POLICIES, is_norm_param
from .distributed import local_params

OPTIMIZER_POLICIES = ("keep", "reset")


# --------------------------------------------------------------------------------------------------
# The jump itself


def jumped_names(names: Iterable[str], norms: str = "copy") -> list[str]:
    """The subset of ``names`` that a jump moves under the ``norms`` policy."""
    _check_choice("norms", norms, NORM_POLICIES)
    return [n for n in names if norms == "extrapolate" or not is_norm_param(n)]


@torch.no_grad()
def capture_anchors(
    params_named: Iterable[tuple[str, torch.Tensor]],
    norms: str = "copy",
    device: str | torch.device = "cpu",
    anchors: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """fp32 copies (on ``device``) of the tensors a jump will move; reuses the buffers of ``anchors`` if given."""
    out = anchors if anchors is not None else {}
    for name, t in params_named:
        if norms == "copy" and is_norm_param(name):
            continue
        buf = out.get(name)
        if buf is not None and buf.shape == t.shape:
            buf.copy_(t.detach())
        else:
            out[name] = t.detach().to(device=device, dtype=torch.float32, copy=True)
    return out


@torch.no_grad()
def jump_(
    params_named: Iterable[tuple[str, torch.Tensor]],
    anchors: dict[str, torch.Tensor],
    alpha: float,
    norms: str = "copy",
) -> list[str]:
    """In place, for each ``(name, tensor)``: ``W ← W_a + α·(W − W_a)``, computed in fp32, cast back to W's dtype.

    ``params_named`` are the tensors to consider (the caller keeps only trainable ones; each may be a local shard).
    Under ``norms="copy"`` norm tensors are left untouched; every other tensor must have an anchor of the same
    shape. Returns the names that were jumped. The arithmetic is exactly ``a + alpha * (w.float() - a)``.
    """
    _check_choice("norms", norms, NORM_POLICIES)
    done = []
    for name, w in params_named:
        if norms == "copy" and is_norm_param(name):
            continue
        a = anchors.get(name)
        if a is None:
            raise RlvrLinearError(f"re-grounding: no anchor for parameter {name!r}")
        if a.shape != w.shape:
            raise RlvrLinearError(
                f"re-grounding: anchor of {name!r} has shape {tuple(a.shape)}, the weight {tuple(w.shape)}"
            )
        a = a.to(w.device, non_blocking=True)
        w.copy_(a + alpha * (w.float() - a))
        done.append(name)
    return done


def parse_spec(spec: str) -> tuple[int, int]:
    """``"M,N"`` → ``(M, N)`` with M ≥ 1, N ≥ 0."""
    parts = str(spec).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        m, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise RlvrLinearError(f"re-grounding spec must be M,N (two integers, e.g. 100,100), got {spec!r}") from None
    _check_mn(m, n)
    return m, n


def _check_mn(m: int, n: int) -> None:
    if int(m) < 1:
        raise RlvrLinearError(f"re-grounding: M (gradient steps per cycle) must be >= 1, got {m}")
    if int(n) < 0:
        raise RlvrLinearError(f"re-grounding: N (extrapolated steps per cycle) must be >= 0, got {n}")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RlvrLinearError(f"re-grounding: {what} must be one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Optimizer state after a jump


def _optimizer_chain(optimizer: Any) -> list[Any]:
    """[outer wrapper, ..., innermost torch optimizer] (accelerate / DeepSpeed wrappers expose ``.optimizer``)."""
    chain = []
    o = optimizer
    while o is not None and not any(o is c for c in chain):
        chain.append(o)
        o = getattr(o, "optimizer", None)
    return chain


def refresh_master_weights(optimizer: Any) -> bool:
    """DeepSpeed keeps fp32 master weights: copy the jumped bit16 weights into them. Returns True if it did."""
    for o in _optimizer_chain(optimizer):
        fn = getattr(o, "refresh_fp32_params", None)
        if callable(fn):
            fn()
            return True
    return False


def reset_optimizer_state(optimizer: Any) -> None:
    """Forget Adam's moments and step counts, as a freshly created optimizer would have.

    Plain torch optimizers: ``state.clear()`` (state is re-created lazily at the next step, bit-identical to a new
    optimizer). DeepSpeed optimizers (detected by ``refresh_fp32_params``): the tensors are zeroed in place and
    ``step`` set to 0, because DeepSpeed may hold references to its state tensors (offload / swapping).
    The LR scheduler is not touched.
    """
    chain = _optimizer_chain(optimizer)
    if not chain:
        return
    inner = chain[-1]
    state = getattr(inner, "state", None)
    if state is None:
        return
    if not any(callable(getattr(o, "refresh_fp32_params", None)) for o in chain):
        state.clear()
        return
    for st in state.values():
        for k, v in st.items():
            if torch.is_tensor(v):
                v.zero_()
            elif k == "step" and isinstance(v, (int, float)):
                st[k] = type(v)(0)
    for group in getattr(inner, "param_groups", []):
        if "step" in group and isinstance(group["step"], (int, float)):
            group["step"] = type(group["step"])(0)


# --------------------------------------------------------------------------------------------------
# In-process callback


class ReGroundingCallback(TrainerCallback, ExportableState):
    """Every M optimizer steps, jump the live weights N steps further along the segment: W ← W_a + ((M+N)/M)(W − W_a).

    Args:
        m: gradient (optimizer) steps per segment; the jump happens in ``on_step_end`` when ``global_step % m == 0``.
        n: extrapolated steps per jump. ``n = 0`` is an exact no-op: no anchors, no arithmetic, no optimizer reset.
            ``n = "auto"``: after each segment jump by the ``monitor``'s current h* (steps the backtested line
            beats "no change", see :mod:`.monitor`), floored, capped at ``max_n``; 0 when not linear.
        norms: ``"copy"`` (norm parameters are not jumped) or ``"extrapolate"`` (they are).
        optimizer_state: ``"keep"`` leaves Adam's moments as they are after the jump; ``"reset"`` clears them (the
            paper's behaviour, which restarts its trainer each cycle). The LR schedule is never reset.
        anchor_device: where the fp32 anchors live (``"cpu"`` by default: 4 bytes per trainable parameter of RAM).
        monitor: the :class:`~.monitor.LinearityMonitor` of ``n="auto"`` (default: a new one recording
            every ``m`` steps); it is asked to record the pre-jump weights at each segment end, in effective steps.
        max_n: cap on an automatic N (default ``5 * m``).

    Counters: ``grad_steps`` (= ``state.global_step``), ``extrapolated_steps`` (N per jump), ``effective_steps``
    (their sum), ``jumps``; ``history`` holds one ``{"grad_step", "effective_step", "jump_seconds", "alpha"}`` per
    jump. ``on_log`` adds ``reground/effective_step`` and ``reground/jumps`` to the logs and to ``state.log_history``.

    Resuming a Trainer from a checkpoint: anchors are not saved, so the anchor is re-captured at the resumed step s.
    The first jump then extrapolates the partial segment of g = (next multiple of M) − s steps with α = (g + N)/g,
    keeping N extrapolated steps per jump. The counters survive resumption when the Trainer is given
    ``restore_callback_states_from_checkpoint=True`` (this class is an ``ExportableState``); the Trainer then
    replaces the instance you passed with a new one, so read the counters from ``trainer.callback_handler.callbacks``.

    Under DeepSpeed with bf16/fp16 the anchor is the bit16 weight (not the fp32 master copy), like the paper's bf16
    checkpoints; the jumped value is written back to the master weights.
    """

    def __init__(
        self,
        m: int,
        n: int,
        norms: str = "copy",
        optimizer_state: str = "keep",
        anchor_device: str = "cpu",
        monitor: Any = None,
        max_n: int | None = None,
    ):
        self.auto = n == "auto"
        if self.auto:
            from .monitor import LinearityMonitor

            n = 0
            self.max_n = int(max_n) if max_n is not None else 5 * int(m)
            _check_mn(m, self.max_n)
            self.monitor = monitor if monitor is not None else LinearityMonitor(every=int(m))
            self.monitor.coordinate = lambda state: state.global_step + self.extrapolated_steps
        _check_mn(m, n)
        _check_choice("norms", norms, NORM_POLICIES)
        _check_choice("optimizer_state", optimizer_state, OPTIMIZER_POLICIES)
        self.m, self.n = int(m), int(n)
        self.norms = norms
        self.optimizer_state = optimizer_state
        self.anchor_device = anchor_device
        self.alpha = (self.m + self.n) / self.m
        self.anchors: dict[str, torch.Tensor] = {}
        self.anchor_step: int | None = None
        self.grad_steps = 0
        self.extrapolated_steps = 0
        self.jumps = 0
        self.history: list[dict] = []

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> ReGroundingCallback:
        """Build from ``"M,N"`` or ``"M,auto"`` (the ``--reground`` flag); ``kwargs`` go to the constructor."""
        parts = str(spec).replace(" ", "").split(",")
        if len(parts) == 2 and parts[1] == "auto":
            m, _ = parse_spec(f"{parts[0]},0")
            return cls(m, "auto", **kwargs)
        kwargs.pop("monitor", None), kwargs.pop("max_n", None)
        m, n = parse_spec(spec)
        return cls(m, n, **kwargs)

    @property
    def effective_steps(self) -> int:
        return self.grad_steps + self.extrapolated_steps

    def counters(self) -> dict[str, int]:
        return {
            "grad_steps": self.grad_steps,
            "extrapolated_steps": self.extrapolated_steps,
            "effective_steps": self.effective_steps,
            "jumps": self.jumps,
        }

    # -- ExportableState -----------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "args": {
                "m": self.m,
                "n": "auto" if self.auto else self.n,
                **({"max_n": self.max_n} if self.auto else {}),
                "norms": self.norms,
                "optimizer_state": self.optimizer_state,
                "anchor_device": str(self.anchor_device),
            },
            "attributes": {
                "extrapolated_steps": self.extrapolated_steps,
                "jumps": self.jumps,
                "history": self.history,
            },
        }

    # -- events ----------------------------------------------------------------------------------------
    def _capture(self, model, step: int) -> None:
        self.anchors = capture_anchors(local_params(model), self.norms, self.anchor_device, self.anchors)
        self.anchor_step = step

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.grad_steps = state.global_step
        if self.n == 0 and not self.auto:
            return
        if model is None:
            raise RlvrLinearError("ReGroundingCallback needs the model (it is passed by transformers.Trainer)")
        self._capture(model, state.global_step)
        if self.auto:
            self.monitor.observe(model, state)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.grad_steps = state.global_step
        if (self.n == 0 and not self.auto) or state.global_step % self.m != 0:
            return
        if self.anchor_step is None:
            warnings.warn("ReGroundingCallback: on_train_begin was not called; capturing the anchor now", stacklevel=1)
            self._capture(model, state.global_step)
            return
        g = state.global_step - self.anchor_step
        if g <= 0:
            return
        if self.auto:  # the monitor sees the pre-jump weights at effective step global_step + extrapolated_steps
            self.monitor.observe(model, state)
            self.n = min(self.max_n, int(math.floor(self.monitor.h_star)))
            if self.n == 0:
                self._capture(model, state.global_step)
                self.history.append({"grad_step": state.global_step, "effective_step": self.effective_steps,
                                     "jump_seconds": 0.0, "alpha": 1.0, "n": 0})  # fmt: skip
                return
        alpha = self.alpha if g == self.m and not self.auto else (g + self.n) / g
        t0 = time.perf_counter()
        jump_(local_params(model), self.anchors, alpha, self.norms)
        refresh_master_weights(optimizer)
        if self.optimizer_state == "reset" and optimizer is not None:
            reset_optimizer_state(optimizer)
        self._capture(model, state.global_step)
        self.jumps += 1
        self.extrapolated_steps += self.n
        self.history.append(
            {
                "grad_step": state.global_step,
                "effective_step": self.effective_steps,
                "jump_seconds": time.perf_counter() - t0,
                "alpha": alpha,
                "n": self.n,
            }
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        extra = {"reground/effective_step": self.effective_steps, "reground/jumps": self.jumps}
        if logs is not None:
            logs.update(extra)
        # Trainer.log appends {**logs, "step": global_step} to log_history *before* calling on_log.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)
