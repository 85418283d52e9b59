"""Writing a trajectory sketch (:mod:`.sketch`) from checkpoints: :func:`write_sketch` (``rlvr-linear sketch``).

Incremental: the checkpoints already in the sketch are not read again (a Hub checkpoint is not fetched); each new
one is read once for its weight sample (every tensor in turn, checked for NaN / Inf as ``analyze weights`` checks
it) and, when the sketch has probes, loaded once to score them with the code ``analyze logprobs`` uses
(:func:`~.probes.score_checkpoint`). One writer per sketch at a time (its lock).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import atomic_dir
from ..io.checkpoints import TensorReader, Trajectory
from ..io.lock import locked
from .logprobs import analyze_logprobs
from .probes import Probe, encode_probes, load_for_scoring, make_probes, score_logprobs
from .reader import has_nonfinite
from .sketch import MODEL_FIELDS, Sketch, check_model_config, dtype_name, is_sketch
from .stats import PAPER_FRACTION, PAPER_MIN_SAMPLES, PAPER_SEED

#: sequences per forward pass when scoring, unless given: ``analyze logprobs``'s default
BATCH_SIZE = inspect.signature(analyze_logprobs).parameters["batch_size"].default
#: the compute dtype of scoring, unless given: ``analyze logprobs``'s default
DTYPE = inspect.signature(analyze_logprobs).parameters["dtype"].default


def probe_origin(task, **settings) -> dict:
    """How :func:`~.probes.make_probes` samples probes for ``task`` with ``settings`` (its defaults filled in): what a
    sketch records, so that re-running with the same ``--task`` keeps its probes and other settings are refused."""
    bound = inspect.signature(make_probes).bind(None, task, **settings)
    bound.apply_defaults()
    out = {k: v for k, v in bound.arguments.items() if k not in ("model_dir", "allow_pickle")}
    out["task"] = task if isinstance(task, str) else getattr(task, "name", str(task))
    out["dtype"] = dtype_name(out["dtype"])
    out["device"] = None if out["device"] is None else str(out["device"])
    return out


def sample_task_probes(model_dir, task, allow_pickle: bool = False, **settings) -> tuple[list[Probe], dict]:
    """Probes sampled from ``model_dir`` on ``task`` (:func:`~.probes.make_probes`) and their :func:`probe_origin`."""
    return make_probes(model_dir, task, allow_pickle=allow_pickle, **settings), probe_origin(task, **settings)


def weight_names(reader) -> list[str]:
    """The tensors a sketch samples from a checkpoint: floating ``*.weight`` (as :func:`~.sampling.weight_keys`)."""
    return [k for k in reader.keys() if k.endswith(".weight") and reader.dtype(k).is_floating_point]


def token_texts(tokenizer, encoded: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[int, str]:
    """The text of each response token id (what the log-prob analysis labels its examples with)."""
    ids = sorted({int(i) for _, r in encoded for i in r})
    return {i: tokenizer.decode([i]) for i in ids}


def _from_model(state: Mapping[str, torch.Tensor] | None, name: str, stored: torch.dtype) -> torch.Tensor | None:
    """A loaded model's copy of a saved tensor, when it holds the stored values exactly (the same dtype, or a wider
    float the stored one converts to and back without loss); else None (read the file)."""
    t = None if state is None else state.get(name)
    if t is None or not (t.dtype == stored or (t.dtype == torch.float32 and stored in (torch.bfloat16, torch.float16))):
        return None
    return t.detach().cpu()


def sample_checkpoint(reader, sketch: Sketch, label: str,
                      state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The sketch's sample of every tensor of one checkpoint, in its stored dtype (NaN / Inf anywhere: refused).

    ``state``: the checkpoint already loaded as a model (its ``state_dict``), whose tensors are used instead of reading
    the file again where they hold the stored values exactly (:func:`_from_model`); the reader then gives only the
    header (names, shapes, dtypes, config)."""
    have = set(weight_names(reader))
    want = {t.name for t in sketch.tensors}
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        raise RlvrLinearError(f"{label}: its '*.weight' tensors differ from the sketch's ({sketch.path}); missing "
                              f"{missing[:3]}, unexpected {extra[:3]}")  # fmt: skip
    check_model_config(reader.config(), sketch, label)
    out = {}
    for t in sketch.tensors:
        if tuple(reader.shape(t.name)) != t.shape:
            raise RlvrLinearError(f"{label}: tensor {t.name!r} has shape {tuple(reader.shape(t.name))}, the sketch "
                                  f"{t.shape}")  # fmt: skip
        stored = reader.dtype(t.name)
        loaded = _from_model(state, t.name, stored)
        flat = (reader.get(t.name) if loaded is None else loaded.to(stored)).reshape(-1)
        if has_nonfinite(flat):
            raise RlvrLinearError(f"{label}: tensor {t.name!r} contains NaN or Inf values")
        out[t.name] = flat[torch.from_numpy(sketch.indices(t.name))].clone()
    return out


def source_label(trajectory: Trajectory, i: int) -> str:
    """Where checkpoint ``i`` comes from: its folder, or its ``hf://`` source (before it is fetched)."""
    c = trajectory.checkpoints[i]
    return str(c.remote) if c.remote is not None else str(c.path)


def _resolve(name: str, given, recorded, where: Path):
    if given is None or given == recorded:
        return recorded
    raise RlvrLinearError(f"{where}: the sketch was written with {name} {recorded}, not {given}; keep its settings "
                          "(or write a new sketch)")  # fmt: skip


def _check_probes(sketch: Sketch, probes, origin: Mapping | None) -> None:
    """Probes asked for when extending ``sketch``: they must be the ones it holds."""
    if probes is None and origin is None:
        return
    if not sketch.has_probes:
        raise RlvrLinearError(f"{sketch.path}: this sketch holds no log-probs for its {len(sketch.steps)} "
                              "checkpoints; write a new sketch to add probes")  # fmt: skip
    rec = sketch.meta["probes"].get("origin")
    if origin is not None:
        if rec != dict(origin):
            made = rec or "a probe file (--probes)"
            raise RlvrLinearError(f"{sketch.path}: its probes were made by {made}, not {dict(origin)}; keep its probes "
                                  "(leave out --task / --probes) or write a new sketch")  # fmt: skip
    elif list(probes() if callable(probes) else probes) != sketch.probes:
        raise RlvrLinearError(f"{sketch.path}: holds other probes ({sketch.path / 'probes.jsonl'}) than those given")


def write_sketch(
    trajectory: Trajectory,
    out: str | Path,
    probes: Sequence[Probe] | Callable[[], Sequence[Probe]] | None = None,
    *,
    probe_origin: Mapping | None = None,
    fraction: float | None = None,
    min_samples: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    progress: bool = False,
) -> tuple[Sketch, list[int]]:
    """Sketch every checkpoint of ``trajectory`` that ``out`` does not hold yet; returns the sketch and the steps added.

    A new sketch takes the sampling settings (default: the paper's, as ``analyze weights``), the tensors and the model
    config of the trajectory's first new checkpoint, and, with ``probes`` (a list, or a callable returning them, called
    only for a new sketch), the tokenizer of that checkpoint to encode them. An existing
    sketch keeps its settings and probes: ``None`` takes them; anything else must equal them (``probe_origin``: the
    :func:`probe_origin` of ``--task`` probes) or is refused. ``batch_size``, ``dtype``, ``device``: the scoring.
    """
    out = Path(out)
    with locked(out):
        sketch = Sketch(out) if is_sketch(out) else None
        if sketch is None and out.exists():
            raise RlvrLinearError(f"{out} exists and is not a trajectory sketch (no sketch.json)")
        steps = sketch.steps if sketch is not None else []
        new = [i for i, s in enumerate(trajectory.steps) if s not in steps]
        labels = {i: source_label(trajectory, i) for i in new}  # (before a Hub checkpoint is fetched)
        if sketch is not None:
            _resolve("fraction", fraction, sketch.fraction, out)
            _resolve("min samples", min_samples, sketch.min_samples, out)
            _resolve("seed", seed, sketch.seed, out)
            sc = sketch.scoring
            if sketch.has_probes:
                _resolve("scoring batch size", batch_size, sc["batch_size"], out)
                _resolve("scoring dtype", None if dtype is None else dtype_name(dtype), sc["dtype"], out)
            _check_probes(sketch, probes, probe_origin)
        elif new:
            sketch = _create(trajectory, new[0], out, probes, probe_origin, fraction, min_samples, seed,
                             batch_size, dtype, device)  # fmt: skip
        else:
            raise RlvrLinearError("no checkpoints to sketch")
        sc = sketch.scoring
        enc = sketch.encoded() if sketch.has_probes else None
        added = []
        for i in tqdm(new, desc="sketching checkpoints", disable=None if progress else True):
            step, label = trajectory.steps[i], labels[i]
            logp, path, what = None, trajectory.local_path(i), f"checkpoint step {step} ({label})"
            with TensorReader(path, allow_pickle=trajectory.allow_pickle) as reader:
                if enc is None:
                    values = sample_checkpoint(reader, sketch, what)
                else:  # one read of the weights: the model scored is also where the sample comes from
                    model = load_for_scoring(path, device, getattr(torch, sc["dtype"]), trajectory.allow_pickle)
                    values = sample_checkpoint(reader, sketch, what, state=model.state_dict())
                    lp = score_logprobs(model, enc, batch_size=sc["batch_size"], pad_id=sc["pad_id"])
                    logp = np.concatenate(lp) if lp else np.zeros(0, np.float32)
                    del model
            sketch.add(step, label, values, logp)
            added.append(step)
        return sketch, added


def _create(trajectory, i, out, probes, origin, fraction, min_samples, seed, batch_size, dtype, device) -> Sketch:
    with TensorReader(trajectory.local_path(i), allow_pickle=trajectory.allow_pickle) as reader:
        tensors = [(n, reader.shape(n), reader.dtype(n)) for n in weight_names(reader)]
        if not tensors:
            raise RlvrLinearError(f"{reader.path}: no floating '*.weight' tensors to sketch")
        model = {k: v for k, v in reader.config().items() if k in MODEL_FIELDS}
    kw: dict = {}
    if probes is not None:
        from ..io.tokenizer import load_tokenizer
        from ..io.verl_shards import config_dir

        probes = list(probes() if callable(probes) else probes)
        tok = load_tokenizer(config_dir(trajectory.local_path(i)))  # the tokenizer score_trajectory would use
        enc = encode_probes(tok, probes)
        scoring = {"batch_size": int(batch_size or BATCH_SIZE), "dtype": dtype_name(dtype or DTYPE),
                   "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),  # as score_checkpoint
                   "pad_id": int(tok.pad_token_id or 0)}  # fmt: skip
        kw = dict(probes=probes, encoded=enc, token_texts=token_texts(tok, enc), scoring=scoring, origin=origin)
    with atomic_dir(out, kind="sketch") as tmp:
        Sketch.create(tmp, tensors, fraction=PAPER_FRACTION if fraction is None else fraction,
                      min_samples=PAPER_MIN_SAMPLES if min_samples is None else min_samples,
                      seed=PAPER_SEED if seed is None else seed, model=model, **kw)  # fmt: skip
    return Sketch(out)
