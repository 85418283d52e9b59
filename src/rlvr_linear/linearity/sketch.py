"""Trajectory sketches: a run's weight sample and probe log-probs per checkpoint, in a small folder.

A sketch carries what ``analyze weights`` (paper mode), ``analyze logprobs`` and ``advise`` read from a run's
checkpoints, so they can be measured after the checkpoints are gone (TRL's ``save_total_limit``, verl's
``max_ckpt_to_keep``)::

    SKETCH/
      sketch.json              format, sampling settings, tensors (shape, dtype, samples), probes, checkpoints
      indices.safetensors      per tensor: its sampled flat indices (int64, sorted), stored once
      probes.jsonl             the probes (prompt + response), when log-probs are sketched
      probes.safetensors       their token ids (prompts and responses, concatenated) and lengths
      probe_tokens.json        the text of each response token id (the labels of the example plots)
      step_000040.safetensors  per checkpoint: every tensor's sampled values in the checkpoint's own dtype, and
                               ``logprobs`` (float32: every response token of every probe)

The sample is the one ``analyze weights`` draws: per floating ``*.weight`` tensor ``sample_indices(numel,
paper_sample_size(numel, fraction, min_samples), tensor_seed(name, seed))``. A sketch opens as a
:class:`SketchTrajectory` (:func:`open_run`) that the analyses read like checkpoints: the paper-mode reader gathers
the indices it draws from the stored ones (the null's coin flips hash the flat indices, so every number equals the
checkpoints'), and :func:`~.probes.score_trajectory` returns the stored log-probs. Whole tensors are not there:
``--all``, activations, forecasts and extrapolation need the checkpoints.

Each file is written atomically, a step file before ``sketch.json`` names it. Every step file carries the sketch's
fingerprint (sampling settings, the hashes of the indices and of the probes): a sketch whose files disagree is
refused with one line naming the file. Writing from checkpoints: :mod:`.sketch_writer`; from a model being
trained: :class:`rlvr_linear.training.sketch_callback.SketchCallback`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from ..errors import RlvrLinearError
from ..io import read_json, write_json
from ..io.atomic import write_bytes
from ..io.checkpoints import SAFETENSORS_DTYPES, Checkpoint, Trajectory, check_safetensors, discover, step_dir_name
from .probes import Probe, read_probes, write_probes
from .sampling import paper_sample_size, sample_indices, tensor_seed

FORMAT = "rlvr-linear-sketch"
VERSION = 1
MANIFEST = "sketch.json"
INDICES = "indices.safetensors"
PROBES = "probes.jsonl"
PROBE_IDS = "probes.safetensors"
TOKEN_TEXTS = "probe_tokens.json"
#: the tensor of a step file that holds the probes' log-probs
LOGPROBS = "logprobs"
#: the model config fields recorded (those :meth:`Trajectory.validate` compares across checkpoints)
MODEL_FIELDS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size")
_PROBE_ARRAYS = ("prompt_ids", "prompt_lengths", "response_ids", "response_lengths")


def step_file(step: int) -> str:
    """The file of the checkpoint at ``step`` in a sketch (``step_000040.safetensors``)."""
    return step_dir_name(step) + ".safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _dtype(name: str, where: Path) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise RlvrLinearError(f"{where}: {name!r} is not a floating dtype")
    return dt


def is_sketch(source: object) -> bool:
    """True if ``source`` is a folder holding a trajectory sketch (``sketch.json``)."""
    if isinstance(source, (list, tuple)):
        return len(source) == 1 and is_sketch(source[0])
    if not isinstance(source, (str, Path)) or str(source).startswith("hf:/"):
        return False
    return (Path(source) / MANIFEST).is_file()


def open_run(source: str | Path | Sequence[str], allow_pickle: bool = False) -> Trajectory:
    """A run's checkpoints (:func:`~rlvr_linear.io.checkpoints.discover`), or the checkpoints of a sketch folder."""
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    if is_sketch(source):
        return SketchTrajectory(Sketch(source))
    return discover(source, allow_pickle=allow_pickle)


@dataclass(frozen=True)
class SketchTensor:
    """One sketched tensor: its name, full shape, dtype at the first checkpoint and number of samples."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    samples: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": dtype_name(self.dtype), "samples": self.samples}


class Sketch:
    """A sketch folder, opened and checked: every file agrees with ``sketch.json`` (else one error naming it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        p = self.path / MANIFEST
        try:
            meta = read_json(p)
            ok = isinstance(meta, dict) and meta.get("format") == FORMAT
        except (OSError, ValueError) as e:
            raise RlvrLinearError(f"{p}: not a readable sketch manifest ({e})") from None
        if not ok:
            raise RlvrLinearError(f'{p}: not a trajectory sketch (no "format": "{FORMAT}")')
        if meta.get("version") != VERSION:
            raise RlvrLinearError(f"{p}: sketch format version {meta.get('version')}; this rlvr-linear reads {VERSION}")
        self.meta = meta
        try:
            s = meta["sampling"]
            self.fraction, self.min_samples, self.seed = float(s["fraction"]), int(s["min_samples"]), int(s["seed"])
            self.tensors = [
                SketchTensor(t["name"], tuple(int(d) for d in t["shape"]), _dtype(t["dtype"], p), int(t["samples"]))
                for t in meta["tensors"]
            ]
            self.checkpoints: list[dict] = sorted(meta["checkpoints"], key=lambda c: int(c["step"]))
            self.model: dict = dict(meta.get("model") or {})
            self._by_name = {t.name: t for t in self.tensors}
            self._indices: dict[str, np.ndarray] | None = None
            self._probes: list[Probe] | None = None
            self._check()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RlvrLinearError(f"{p}: malformed sketch manifest ({type(e).__name__}: {e})") from None

    # -- checks ----------------------------------------------------------------------------------------
    def _check(self) -> None:
        meta = self.meta
        f = self.path / INDICES
        if not f.is_file() or _sha256(f) != meta.get("indices_sha256"):
            raise RlvrLinearError(f"{f}: missing, or not the indices {self.path / MANIFEST} records (sha256 differs)")
        for t in self.tensors:
            k = paper_sample_size(t.numel, self.fraction, self.min_samples)
            if t.samples != k:
                raise RlvrLinearError(
                    f"{self.path / MANIFEST}: tensor {t.name!r} has {t.samples} samples; fraction {self.fraction:g} "
                    f"and min samples {self.min_samples} give {k}"
                )
        header = check_safetensors(f)
        self._check_arrays(f, header, {t.name: [t.samples] for t in self.tensors}, ("I64",))
        pr = meta.get("probes")
        if pr is not None:
            for name, key in ((PROBES, "sha256"), (PROBE_IDS, "ids_sha256")):
                g = self.path / name
                if not g.is_file() or _sha256(g) != pr.get(key):
                    raise RlvrLinearError(f"{g}: missing, or not the probes {self.path / MANIFEST} records")
        for c in self.checkpoints:
            self._check_step(int(c["step"]), c.get("file"))

    def _check_arrays(self, f: Path, header: dict, shapes: Mapping[str, list[int]], dtypes: Iterable[str]) -> None:
        have = {k for k in header if k != "__metadata__"}
        if have != set(shapes):
            missing, extra = sorted(set(shapes) - have), sorted(have - set(shapes))
            raise RlvrLinearError(f"{f}: its tensors differ from the sketch's; missing {missing[:3]}, unexpected "
                                  f"{extra[:3]}")  # fmt: skip
        for name, shape in shapes.items():
            info = header[name]
            if list(info.get("shape", [])) != shape or info.get("dtype") not in dtypes:
                raise RlvrLinearError(
                    f"{f}: tensor {name!r} is {info.get('dtype')} {info.get('shape')}, the sketch expects {shape}"
                )

    def _check_step(self, step: int, fname: str | None) -> None:
        f = self.path / step_file(step)
        if fname != f.name or not f.is_file():
            raise RlvrLinearError(f"{f}: missing (step {step} is listed in {self.path / MANIFEST})")
        header = check_safetensors(f)
        got = dict(header.get("__metadata__") or {})
        want = {**self.fingerprint(), "step": str(step)}
        for key, value in want.items():
            if got.get(key) != value:
                raise RlvrLinearError(
                    f"{f}: its {key} ({got.get(key)}) differs from the sketch's ({value}); this checkpoint was "
                    "sketched with other settings, indices or probes"
                )
        shapes = {t.name: [t.samples] for t in self.tensors}
        if self.has_probes:
            shapes[LOGPROBS] = [int(self.meta["probes"]["tokens"])]
        floats = [k for k, v in SAFETENSORS_DTYPES.items() if v.is_floating_point]
        self._check_arrays(f, header, shapes, floats)

    def fingerprint(self) -> dict[str, str]:
        """What every step file's metadata must hold: the format, the sampling settings, the indices and probes."""
        pr = self.meta.get("probes")
        return {
            "format": f"{FORMAT}/{VERSION}",
            "sampling": self.sampling_text(),
            "indices_sha256": str(self.meta["indices_sha256"]),
            "probes_sha256": str(pr["sha256"]) if pr else "none",
        }

    def sampling_text(self) -> str:
        return f"fraction {self.fraction:g}, min samples {self.min_samples}, seed {self.seed}"

    # -- contents --------------------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        return [int(c["step"]) for c in self.checkpoints]

    def tensor(self, name: str) -> SketchTensor:
        t = self._by_name.get(name)
        if t is None:
            raise RlvrLinearError(f"{self.path}: tensor {name!r} is not in this sketch")
        return t

    def indices(self, name: str) -> np.ndarray:
        """The sorted flat indices sampled from tensor ``name``."""
        if self._indices is None:
            with safe_open(self.path / INDICES, framework="numpy") as f:
                self._indices = {k: f.get_tensor(k) for k in f.keys()}
        self.tensor(name)
        return self._indices[name]

    @property
    def has_probes(self) -> bool:
        return self.meta.get("probes") is not None

    @property
    def probes(self) -> list[Probe] | None:
        if self.has_probes and self._probes is None:
            self._probes = read_probes(self.path / PROBES)
        return self._probes

    @property
    def scoring(self) -> dict:
        """How the log-probs were scored: ``batch_size``, ``dtype``, ``device``, ``pad_id``."""
        return dict(self.meta["probes"]["scoring"]) if self.has_probes else {}

    def encoded(self) -> list[tuple[list[int], list[int]]]:
        """``(prompt_ids, response_ids)`` per probe, as :func:`~.probes.encode_probes` gave them."""
        with safe_open(self.path / PROBE_IDS, framework="numpy") as f:
            a = {k: f.get_tensor(k) for k in _PROBE_ARRAYS}
        prompts = np.split(a["prompt_ids"], np.cumsum(a["prompt_lengths"])[:-1])
        responses = np.split(a["response_ids"], np.cumsum(a["response_lengths"])[:-1])
        return [(p.tolist(), r.tolist()) for p, r in zip(prompts, responses)]

    def token_texts(self) -> dict[int, str]:
        return {int(k): v for k, v in read_json(self.path / TOKEN_TEXTS).items()}

    # -- writing ---------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: str | Path,
        tensors: Sequence[tuple[str, Sequence[int], torch.dtype]],
        *,
        fraction: float,
        min_samples: int,
        seed: int,
        model: Mapping | None = None,
        probes: Sequence[Probe] | None = None,
        encoded: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
        token_texts: Mapping[int, str] | None = None,
        scoring: Mapping | None = None,
        origin: Mapping | None = None,
    ) -> None:
        """Write the files of a sketch with no checkpoints yet into the (new, empty) ``folder``.

        ``tensors``: ``(name, shape, dtype)`` in the order of the checkpoints' reader; their samples are drawn here
        (the paper draw of ``analyze weights``). With ``probes``: their
        ``encoded`` token ids, the text of each response token id, the ``scoring`` settings (``batch_size``,
        ``dtype``, ``device``, ``pad_id``) and how they were made (``origin``: the probe sampling settings of a
        ``--task``, else None).
        """
        folder = Path(folder)
        idx, rows = {}, []
        for name, shape, dtype in tensors:
            t = SketchTensor(name, tuple(int(d) for d in shape), dtype, 0)
            k = paper_sample_size(t.numel, fraction, min_samples)
            idx[name] = torch.from_numpy(sample_indices(t.numel, k, tensor_seed(name, seed)))
            rows.append({**t.to_json(), "samples": k})
        write_bytes(folder / INDICES, save_safetensors(idx))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "sampling": {"fraction": fraction, "min_samples": min_samples, "seed": seed},
            "indices_sha256": _sha256(folder / INDICES),
            "model": {k: (model or {}).get(k) for k in MODEL_FIELDS if (model or {}).get(k) is not None},
            "probes": None,
            "tensors": rows,
            "checkpoints": [],
        }
        if probes is not None:
            enc = list(encoded or [])
            if len(enc) != len(probes):
                raise RlvrLinearError(f"{folder}: {len(probes)} probes but {len(enc)} encodings")
            write_probes(folder / PROBES, probes)
            arrays = {
                "prompt_ids": [i for p, _ in enc for i in p],
                "prompt_lengths": [len(p) for p, _ in enc],
                "response_ids": [i for _, r in enc for i in r],
                "response_lengths": [len(r) for _, r in enc],
            }
            tensors_ids = {k: torch.tensor(v, dtype=torch.int64) for k, v in arrays.items()}
            write_bytes(folder / PROBE_IDS, save_safetensors(tensors_ids))
            write_json(folder / TOKEN_TEXTS, {str(k): v for k, v in sorted((token_texts or {}).items())})
            meta["probes"] = {
                "file": PROBES,
                "count": len(probes),
                "tokens": len(arrays["response_ids"]),
                "sha256": _sha256(folder / PROBES),
                "ids_sha256": _sha256(folder / PROBE_IDS),
                "scoring": dict(scoring or {}),
                "origin": dict(origin) if origin is not None else None,
            }
        write_json(folder / MANIFEST, meta)

    def add(self, step: int, source: str, values: Mapping[str, torch.Tensor], logprobs: np.ndarray | None) -> None:
        """Write checkpoint ``step`` (the sampled ``values`` per tensor, the probes' ``logprobs``), then list it."""
        if step in self.steps:
            raise RlvrLinearError(f"{self.path}: step {step} is already in the sketch")
        if set(values) != set(self._by_name):
            missing, extra = sorted(set(self._by_name) - set(values)), sorted(set(values) - set(self._by_name))
            raise RlvrLinearError(f"step {step} ({source}): its tensors differ from the sketch's {self.path}; "
                                  f"missing {missing[:3]}, unexpected {extra[:3]}")  # fmt: skip
        out: dict[str, torch.Tensor] = {}
        for t in self.tensors:
            v = values[t.name]
            if tuple(v.shape) != (t.samples,) or not v.is_floating_point():
                raise RlvrLinearError(f"step {step} ({source}): tensor {t.name!r} gave {tuple(v.shape)} {v.dtype}, "
                                      f"the sketch expects {t.samples} float values")  # fmt: skip
            out[t.name] = v.detach().to("cpu").contiguous()
        if self.has_probes != (logprobs is not None):
            raise RlvrLinearError(f"step {step} ({source}): log-probs {'missing' if self.has_probes else 'given'} "
                                  f"for the sketch {self.path}")  # fmt: skip
        if logprobs is not None:
            lp = torch.from_numpy(np.ascontiguousarray(logprobs, dtype=np.float32))
            if lp.shape != (int(self.meta["probes"]["tokens"]),):
                raise RlvrLinearError(f"step {step} ({source}): {lp.numel()} log-probs, the probes have "
                                      f"{self.meta['probes']['tokens']} response tokens")  # fmt: skip
            out[LOGPROBS] = lp
        f = self.path / step_file(step)
        write_bytes(f, save_safetensors(out, metadata={**self.fingerprint(), "step": str(step)}))
        entry = {"step": int(step), "source": str(source), "file": f.name}
        self.checkpoints = sorted([*self.checkpoints, entry], key=lambda c: int(c["step"]))
        self.meta["checkpoints"] = self.checkpoints
        write_json(self.path / MANIFEST, self.meta)


class TokenTexts:
    """Stands in for the tokenizer where the log-prob analysis labels its examples: the text of each token id."""

    def __init__(self, texts: Mapping[int, str]):
        self.texts = dict(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.texts.get(int(i), f"<{int(i)}>") for i in ids)


class SketchReader:
    """One checkpoint of a sketch, read like a :class:`~rlvr_linear.io.checkpoints.TensorReader` (kind
    ``"sketch"``): names, shapes and dtypes of the full tensors, and :meth:`gather` of sampled values."""

    kind = "sketch"
    allow_pickle = False

    def __init__(self, sketch: Sketch, step: int):
        self.sketch, self.step = sketch, step
        self.path = sketch.path
        self.file = step_file(step)
        self._handle = None

    def _open(self):
        if self._handle is None:
            self._handle = safe_open(self.path / self.file, framework="pt")
        return self._handle

    def keys(self) -> list[str]:
        return [t.name for t in self.sketch.tensors]

    def __contains__(self, name: str) -> bool:
        return name in self.sketch._by_name

    def file_of(self, name: str) -> str:
        self.sketch.tensor(name)
        return self.file

    def shape(self, name: str) -> tuple[int, ...]:
        return self.sketch.tensor(name).shape

    def numel(self, name: str) -> int:
        return self.sketch.tensor(name).numel

    def dtype(self, name: str) -> torch.dtype:
        self.sketch.tensor(name)
        return SAFETENSORS_DTYPES[self._open().get_slice(name).get_dtype()]

    def config(self) -> dict:
        return dict(self.sketch.model)

    def get(self, name: str) -> torch.Tensor:
        raise RlvrLinearError(
            f"{self.path}: a trajectory sketch holds a sample of each tensor, not {name!r} whole; analyses of every "
            "parameter (--all), activations, forecasts and extrapolation need the checkpoints"
        )

    def values(self, name: str) -> torch.Tensor:
        """Every sampled value of ``name`` (in the order of :meth:`Sketch.indices`), in the checkpoint's dtype."""
        self.sketch.tensor(name)
        return self._open().get_tensor(name)

    def gather(self, name: str, index: np.ndarray) -> torch.Tensor:
        """The values at flat ``index`` (each must be one the sketch sampled), in the checkpoint's dtype."""
        stored = self.sketch.indices(name)
        index = np.asarray(index, dtype=np.int64)
        if index.shape == stored.shape and np.array_equal(index, stored):
            return self.values(name)
        pos = np.minimum(np.searchsorted(stored, index), max(stored.size - 1, 0))
        missing = int((stored[pos] != index).sum()) if stored.size else index.size
        if missing:
            raise RlvrLinearError(
                f"{self.path}: tensor {name!r}: {missing} of the {index.size} indices asked for are not in the "
                f"sketch's sample ({self.sketch.sampling_text()}); analyze the sketch with those settings"
            )
        return self.values(name)[torch.from_numpy(pos)]

    def get_flat(self, name: str, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        if index is None or isinstance(index, slice):
            return self.get(name)
        return self.gather(name, torch.as_tensor(index).numpy())

    def logprobs(self) -> np.ndarray:
        if not self.sketch.has_probes:
            raise RlvrLinearError(f"{self.path}: this sketch holds no log-probs (it was written without probes)")
        return self._open().get_tensor(LOGPROBS).numpy()

    def close(self) -> None:
        self._handle = None

    def __enter__(self) -> SketchReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SketchTrajectory(Trajectory):
    """The checkpoints of a sketch as a :class:`~rlvr_linear.io.checkpoints.Trajectory` (paths: the step files)."""

    def __init__(self, sketch: Sketch, steps: Sequence[int] | None = None):
        self.sketch = sketch
        steps = sketch.steps if steps is None else list(steps)
        if not steps:
            raise RlvrLinearError(f"{sketch.path}: the sketch holds no checkpoints yet")
        super().__init__([Checkpoint(s, sketch.path / step_file(s)) for s in steps])

    def reader(self, i: int) -> SketchReader:
        if i not in self._readers:
            self._readers[i] = SketchReader(self.sketch, self.checkpoints[i].step)
        return self._readers[i]

    def subset(self, indices: Iterable[int]) -> SketchTrajectory:
        return SketchTrajectory(self.sketch, [self.checkpoints[i].step for i in indices])

    def until(self, step: int) -> SketchTrajectory:
        return SketchTrajectory(self.sketch, [s for s in self.steps if s <= step])

    def stored_logprobs(self, probes: Sequence[Probe], batch_size: int, dtype: torch.dtype):
        """``(logp (T, N) float32, encodings, token texts)``: what :func:`~.probes.score_trajectory` returns, read
        from the sketch. The probes and the scoring settings must be the sketch's."""
        sk = self.sketch
        if not sk.has_probes:
            raise RlvrLinearError(f"{sk.path}: this sketch holds no log-probs (it was written without probes)")
        if list(probes) != sk.probes:
            raise RlvrLinearError(f"{sk.path}: the sketch holds the log-probs of its own probes ({sk.path / PROBES}); "
                                  "the probes given differ")  # fmt: skip
        sc = sk.scoring
        if int(batch_size) != sc.get("batch_size") or dtype_name(dtype) != sc.get("dtype"):
            raise RlvrLinearError(
                f"{sk.path}: its log-probs were scored with batch size {sc.get('batch_size')} in {sc.get('dtype')}; "
                f"asked for batch size {batch_size} in {dtype_name(dtype)} (pass the sketch's settings)"
            )
        logp = np.stack([self.reader(i).logprobs() for i in range(len(self))])
        return logp, sk.encoded(), TokenTexts(sk.token_texts())


def sketch_bytes(numels: Iterable[int], itemsize: int, fraction: float, min_samples: int) -> int:
    """Bytes of sampled values per checkpoint: ``Σ paper_sample_size(numel) · itemsize`` over the tensors (the step
    file adds its header and 4 bytes per probe response token)."""
    return sum(paper_sample_size(int(n), fraction, min_samples) for n in numels) * int(itemsize)


def check_model_config(config: Mapping, sketch: Sketch, label: str) -> None:
    """Refuse a checkpoint whose architecture (the recorded config fields) differs from the sketch's."""
    for key, want in sketch.model.items():
        got = config.get(key)
        if got is not None and got != want:
            raise RlvrLinearError(f"{label}: config {key}={got!r} differs from the sketch's {want!r} ({sketch.path})")
