"""``SketchCallback``: write a trajectory sketch (:mod:`rlvr_linear.linearity.sketch`) while any TRL / transformers
trainer runs, so the run's linearity can be measured after its checkpoints are deleted.

At the start of training and at every save (``on_save``: right after the trainer wrote ``checkpoint-N``) it samples
the live model's parameters — per floating ``*.weight`` tensor the indices ``analyze weights`` draws, in the
parameters' own dtype, under the names ``save_pretrained`` writes (tied copies dropped) — and, with probes, scores
their teacher-forced log-probs with :func:`~rlvr_linear.linearity.score_logprobs` (eval mode, no grad, without the
trainer's mixed-precision autocast; in the model's own dtype and on its device, both recorded in the sketch). The
sketch equals what ``rlvr-linear sketch`` writes from the saved checkpoints (the log-probs where the model's dtype
and device are the command's: fp32 on CPU by default). A step already in the sketch (a resumed run) is skipped.

Usage in any TRL script::

    from rlvr_linear.training.sketch_callback import SketchCallback
    trainer = GRPOTrainer(..., callbacks=[SketchCallback("out/sketch", probes="probes.jsonl")])
    trainer.train()  # then: rlvr-linear analyze weights out/sketch -o out/w

``rlvr-linear train --sketch`` writes ``RUN/sketch`` this way. Distributed: the process of rank 0 writes. With
whole parameters on every rank (single process, DDP, ZeRO-1/2) rank 0 alone records. Under sharding (FSDP2, FSDP1
with ``use_orig_params=True``, ZeRO-3) every rank takes part: each trainable weight is gathered in turn
(:func:`~rlvr_linear.training.distributed.gathered_params`) and rank 0 keeps its sample; rank 0 sends the probes to
the others and every rank runs the scoring forward passes (the sharded model's all-gathers need them all). The
sketch then equals the one written from the whole model (tested under FSDP2, FSDP1 and ZeRO-3, 2 gloo processes).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from ..errors import RlvrLinearError
from ..io import atomic_dir
from ..io.lock import locked
from ..linearity import (
    PAPER_FRACTION,
    PAPER_MIN_SAMPLES,
    PAPER_SEED,
    Probe,
    encode_probes,
    read_probes,
    score_logprobs,
)
from ..linearity.sketch import MODEL_FIELDS, Sketch, dtype_name, is_sketch
from ..linearity.sketch_writer import BATCH_SIZE, probe_origin, sample_task_probes, token_texts
from .distributed import gathered_params, hf_module, is_sampled_weight, sharding, unwrap_model


def saved_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The floating ``*.weight`` tensors of ``model`` under the names ``save_pretrained`` writes (tied copies dropped:
    :func:`transformers.modeling_utils.remove_tied_weights_from_state_dict`), sorted by name as in the saved file."""
    model = unwrap_model(model)
    if sharding(model) is not None:
        raise RlvrLinearError("saved_weights: the model's parameters are sharded; gather them with "
                              "rlvr_linear.training.distributed.gathered_params")  # fmt: skip
    sd = model.state_dict()
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        sd = remove_tied_weights_from_state_dict(dict(sd), model)
    except ImportError:  # transformers 4: drop the names declared tied (``_tied_weights_keys``) that share storage
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        shared = Counter(v.untyped_storage().data_ptr() for v in sd.values())
        sd = {k: v for k, v in sd.items() if k not in tied or shared[v.untyped_storage().data_ptr()] < 2}
    return {k: sd[k] for k in sorted(sd) if is_sampled_weight(k, sd[k])}


def model_config(model: torch.nn.Module) -> dict:
    """The config fields a sketch records, as ``save_pretrained`` writes them (``architectures`` filled in)."""
    model = hf_module(model)
    cfg = model.config.to_dict() if hasattr(model, "config") else {}
    cfg["architectures"] = cfg.get("architectures") or [_class_name(model)]
    return {k: cfg[k] for k in MODEL_FIELDS if cfg.get(k) is not None}


def _class_name(model: torch.nn.Module) -> str:
    """The model's class name (FSDP2's ``fully_shard`` swaps in a subclass named ``FSDP<name>``)."""
    return next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))


class SketchCallback(TrainerCallback):
    """Write the weight sample (and the probes' log-probs) of the model being trained to the sketch ``out``.

    Args:
        out: the sketch folder (created at the first record; an existing sketch is extended and keeps its settings).
        probes: prompt/response pairs (a list of :class:`~rlvr_linear.linearity.Probe`, a JSONL file, or a callable
            returning them, called when the sketch is created) scored at every record; None: weights only.
        fraction, min_samples, seed: the per-tensor sample (``analyze weights`` defaults).
        batch_size: sequences per forward pass when scoring.
        probe_origin: how the probes were made (the ``probe_origin`` of ``--task`` probes), recorded in the sketch.
    """

    def __init__(
        self,
        out: str | Path,
        probes: Sequence[Probe] | str | Path | Callable[[], Sequence[Probe]] | None = None,
        *,
        fraction: float = PAPER_FRACTION,
        min_samples: int = PAPER_MIN_SAMPLES,
        seed: int = PAPER_SEED,
        batch_size: int = BATCH_SIZE,
        probe_origin: dict | None = None,
    ):
        self.out = Path(out)
        self.probes = read_probes(probes) if isinstance(probes, (str, Path)) else probes
        self.fraction, self.min_samples, self.seed, self.batch_size = fraction, min_samples, seed, int(batch_size)
        self.probe_origin = probe_origin
        self.sketch: Sketch | None = None
        self._index: dict[str, torch.Tensor] = {}
        self._encoded = None
        self.seconds = 0.0  #: time spent sampling, scoring and writing
        self.record_seconds: dict[int, float] = {}  #: per step recorded: its time (the first: probes sampled too)

    def _open(self, model, tokenizer, tensors: list[tuple[str, tuple, torch.dtype]]) -> Sketch:
        """The sketch (created with ``tensors``, ``(name, shape, dtype)``, if it does not exist yet)."""
        if self.sketch is not None:
            return self.sketch
        if not is_sketch(self.out):
            kw: dict = {}
            if self.probes is not None:
                self.probes = list(self.probes() if callable(self.probes) else self.probes)
                if tokenizer is None:
                    raise RlvrLinearError("SketchCallback: scoring probes needs the tokenizer (the trainer's "
                                          "processing_class)")  # fmt: skip
                enc = encode_probes(tokenizer, self.probes)
                p = next(unwrap_model(model).parameters())  # dtype and device (a DTensor's: the local shard's)
                scoring = {"batch_size": self.batch_size, "dtype": dtype_name(p.dtype), "device": p.device.type,
                           "pad_id": int(tokenizer.pad_token_id or 0)}  # fmt: skip
                kw = dict(probes=self.probes, encoded=enc, token_texts=token_texts(tokenizer, enc), scoring=scoring,
                          origin=self.probe_origin)  # fmt: skip
            with atomic_dir(self.out, kind="sketch") as tmp:
                Sketch.create(tmp, tensors,
                              fraction=self.fraction, min_samples=self.min_samples, seed=self.seed,
                              model=model_config(model), **kw)  # fmt: skip
        sk = Sketch(self.out)
        if (sk.fraction, sk.min_samples, sk.seed) != (self.fraction, self.min_samples, self.seed):
            want = f"fraction {self.fraction:g}, min samples {self.min_samples}, seed {self.seed}"
            raise RlvrLinearError(f"{self.out}: the sketch was written with {sk.sampling_text()}, not {want}")
        made = sk.meta["probes"].get("origin") if sk.has_probes else None
        if self.probe_origin is not None and sk.has_probes:
            if made != self.probe_origin:
                raise RlvrLinearError(f"{self.out}: the sketch's probes were made by {made}, not {self.probe_origin}")
        elif self.probes is not None and not callable(self.probes) and sk.probes != list(self.probes):
            raise RlvrLinearError(f"{self.out}: the sketch holds other probes than the callback's")
        self.sketch = sk
        return sk

    @torch.no_grad()
    def record(self, model, step: int, tokenizer=None, source: str = "live model") -> bool:
        """Add the model's weights (and log-probs) at ``step`` to the sketch; False if the step is there already.

        Under sharding every rank must call it (it gathers the weights and runs the scoring passes on each)."""
        t0 = time.perf_counter()
        if sharding(model) is not None:
            done = self._record_sharded(model, step, tokenizer, source)
        else:
            done = self._record_whole(model, step, tokenizer, source)
        if done:
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.record_seconds[int(step)] = dt
        return done

    def _record_whole(self, model, step: int, tokenizer, source: str) -> bool:
        with locked(self.out, wait=True):
            weights = saved_weights(model)
            sk = self._open(model, tokenizer, [(k, tuple(v.shape), v.dtype) for k, v in weights.items()])
            if step in sk.steps:
                return False
            values = self._take(sk, step, weights.items())
            logp = self._score(model, self._probe_ids(sk), sk.scoring) if sk.has_probes else None
            sk.add(step, source, values, logp)
        return True

    def _record_sharded(self, model, step: int, tokenizer, source: str) -> bool:
        import torch.distributed as dist

        rank0 = dist.get_rank() == 0
        with locked(self.out, wait=True) if rank0 else contextlib.nullcontext():
            todo: list = [None]
            if rank0:
                new = self.sketch is None and not is_sketch(self.out)
                todo[0] = "new" if new else "skip" if step in (self.sketch or Sketch(self.out)).steps else "add"
            dist.broadcast_object_list(todo, src=0)
            if todo[0] == "skip":
                return False
            tensors = None
            if todo[0] == "new":  # the full shapes first: one more gather, when the sketch is created
                tensors = sorted((n, tuple(w.shape), w.dtype) for n, w in gathered_params(model, is_sampled_weight))
            sk = self._open(model, tokenizer, tensors) if rank0 else None
            named = gathered_params(model, is_sampled_weight)
            values = self._take(sk, step, named) if rank0 else [None for _ in named]
            probes = [(self._probe_ids(sk), sk.scoring) if rank0 and sk.has_probes else None]
            dist.broadcast_object_list(probes, src=0)
            logp = self._score(model, *probes[0]) if probes[0] is not None else None
            if rank0:
                sk.add(step, source, values, logp)
        return True

    def _take(self, sk: Sketch, step: int, named) -> dict[str, torch.Tensor]:
        """The sketch's sample of each of its tensors in ``named`` (consumed to the end: it may be a collective)."""
        values, bad, seen, wanted = {}, [], set(), {t.name: t for t in sk.tensors}
        for name, w in named:
            t = wanted.get(name)
            if t is None:
                continue
            seen.add(name)
            if tuple(w.shape) != t.shape:
                bad.append(f"tensor {name!r} is shape {tuple(w.shape)}, the sketch {self.out} has {t.shape}")
                continue
            idx = self._index.get(name)
            if idx is None or idx.device != w.device:
                idx = self._index[name] = torch.from_numpy(sk.indices(name)).to(w.device)
            values[name] = w.reshape(-1)[idx].cpu()
        bad += [f"tensor {t.name!r} is missing, the sketch {self.out} has {t.shape}" for t in sk.tensors
                if t.name not in seen]  # fmt: skip
        if bad:
            raise RlvrLinearError(f"step {step}: {bad[0]}")
        return values

    def _probe_ids(self, sk: Sketch) -> list[tuple[list[int], list[int]]]:
        if self._encoded is None:
            self._encoded = sk.encoded()
        return self._encoded

    def _score(self, model, encoded, scoring: dict) -> np.ndarray:
        model = unwrap_model(model)
        was_training = model.training
        # accelerate's mixed precision wraps forward in autocast: score the weights as saved, as the analysis does
        wrapped = model.__dict__.get("forward")
        if wrapped is not None and hasattr(model, "_original_forward"):
            model.forward = model._original_forward
        model.eval()
        try:
            lp = score_logprobs(model, encoded, batch_size=scoring["batch_size"], pad_id=scoring["pad_id"])
        finally:
            model.train(was_training)
            if wrapped is not None:
                model.forward = wrapped
        return np.concatenate(lp) if lp else np.zeros(0, np.float32)

    # -- TrainerCallback ---------------------------------------------------------------------------------------
    def _hook(self, args, state, model, processing_class, where: str) -> None:
        if model is None or (not getattr(state, "is_world_process_zero", True) and sharding(model) is None):
            return
        out_dir = getattr(args, "output_dir", None)
        source = f"{out_dir}/checkpoint-{state.global_step}" if where == "save" and out_dir else "live model"
        self.record(model, state.global_step, processing_class, source)

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._hook(args, state, model, processing_class, "begin")

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._hook(args, state, model, processing_class, "save")


#: prompts of the in-run sketch's probes (x 4 replies, ~750 reply tokens on SmolLM2's arithmetic): fewer than
#: ``sketch --task``'s 32, and replies capped at the run's own length, so that scoring them stays under 2% of a
#: SmolLM2 step (bench/results/sketch_record_smollm2.json; 16 prompts measured 2.1%)
TRAIN_PROBE_PROMPTS = 12


def train_sketch(out: str | Path, first_checkpoint: str | Path, task: str,
                 max_new_tokens: int | None = None) -> SketchCallback:  # fmt: skip
    """The callback of ``rlvr-linear train --sketch``: probes sampled on ``task`` from ``first_checkpoint`` (read when
    the sketch is created, after step 0 is saved) as ``rlvr-linear sketch RUN --task TASK --n-prompts 12
    --max-new-tokens N`` samples them (:data:`TRAIN_PROBE_PROMPTS`; ``N`` the run's reply cap, ``max_new_tokens``,
    else the task's), without touching the training's random state; an existing sketch (a resumed run) keeps its
    own."""
    settings = {"batch_size": BATCH_SIZE, "n_prompts": TRAIN_PROBE_PROMPTS, "max_new_tokens": max_new_tokens}

    def probes() -> list[Probe]:
        with torch.random.fork_rng():  # make_probes seeds torch
            return sample_task_probes(first_checkpoint, task, **settings)[0]

    return SketchCallback(out, probes, probe_origin=probe_origin(task, **settings))
