"""Checkpoint discovery and lazy tensor access (the streaming safetensors writer is in :mod:`.writer`).

A *trajectory* is an ordered list of HF model directories indexed by training step. Sources:

* a run directory written by ``rlvr-linear train`` (``manifest.json`` + ``step_000040/``);
* a TRL / HF Trainer output directory (``checkpoint-40/``);
* a verl output directory (``global_step_40/actor/huggingface/``);
* an explicit list of ``STEP=PATH`` strings.

Tensors are read one at a time through ``safetensors.safe_open`` (memory mapped); no checkpoint is
ever loaded whole. Pickled ``*.bin`` weights are refused unless ``allow_pickle=True`` and then loaded
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import RlvrLinearError
from . import verl_shards
from .containment import contained
from .pickled import load_pickled_weights
from .safetensors_header import header_length, parse_header

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_FILES = {SAFE_SINGLE, SAFE_INDEX, BIN_SINGLE, BIN_INDEX}

_STEP_PATTERNS = [
    re.compile(r"^step_(\d+)$"),
    re.compile(r"^checkpoint-(\d+)$"),
    re.compile(r"^global_step_(\d+)$"),
    re.compile(r"^step-(\d+)$"),
]


# --------------------------------------------------------------------------------------------------
# Locating weights


def _is_hub(source: object) -> bool:
    return str(source).startswith("hf:/")


def has_weights(path: Path) -> bool:
    return (
        any((path / f).exists() for f in WEIGHT_FILES)
        or any(path.glob("model-*.safetensors"))
        or any(path.glob("model_world_size_*_rank_*.pt"))  # verl's FSDP shards (see verl_shards)
    )


#: what a model directory's readers open (weights, index, config, tokenizer): :func:`check_regular_files` checks these
_READ_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".jinja", ".txt", ".model", ".tiktoken")
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"))  # fmt: skip


def check_regular(path: str | Path) -> None:
    """Refuse a FIFO, device or socket before it is opened (opening a FIFO blocks until something writes to it).

    A symlink to a regular file is fine; a path that does not exist is left to the reader to name.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = next((what for test, what in _SPECIAL_KINDS if test(mode)), "not a plain file")
        raise RlvrLinearError(f"{path}: not a regular file ({kind}); refusing to read it")


def check_regular_files(d: str | Path) -> Path:
    """:func:`check_regular` on every file of model directory ``d`` (and of verl's config folder) that a reader
    opens; returns ``d``."""
    d = Path(d)
    for folder in dict.fromkeys([d, verl_shards.config_dir(d)]):
        for f in folder.iterdir():
            if f.suffix in _READ_SUFFIXES:
                check_regular(f)
    return d


def find_model_dir(path: str | Path, check_files: bool = True) -> Path:
    """Resolve ``path`` to the directory that holds HF weights (handles verl's ``actor/huggingface``).

    ``hf://ORG/REPO[@REV][/SUBFOLDER]`` is fetched from the Hugging Face Hub (cache) first. With ``check_files``
    a FIFO, device or socket among the files to read is refused (:func:`check_regular_files`).
    """
    if _is_hub(path):
        from .hub import resolve_checkpoint

        path = resolve_checkpoint(path)
    p = Path(path)
    if not p.exists():
        raise RlvrLinearError(f"{p}: no such file or directory")
    if p.is_file():
        p = p.parent
    cands = [p, p / "huggingface", p / "actor" / "huggingface", p / "actor"]
    if p.name == "huggingface":  # verl's config folder, next to its FSDP shards
        cands.append(p.parent)
    for cand in cands:
        if cand.is_dir() and has_weights(cand):
            return check_regular_files(cand) if check_files else cand
    raise RlvrLinearError(
        f"{p}: no model weights found (expected {SAFE_SINGLE}, {SAFE_INDEX} or, with --allow-pickle, {BIN_SINGLE})"
    )


def check_safetensors(path: str | Path) -> dict:
    """Validate a safetensors file's framing and header without reading its data; returns the header.

    Checks what ``safe_open`` would reject (a file under 8 bytes, a header longer than the file, a header that
    is not JSON or not a consistent table of tensors, data that does not cover the file exactly:
    :func:`~rlvr_linear.io.safetensors_header.parse_header`) and turns it into one error naming the file.
    """
    p = Path(path)
    check_regular(p)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            return parse_header(f.read(header_length(f.read(8), size)), size)
    except FileNotFoundError:
        raise RlvrLinearError(f"{p}: weight file is missing") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise RlvrLinearError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
    except ValueError as e:
        raise RlvrLinearError(f"{p}: {e}") from None


def read_safetensors_header(fd: int) -> tuple[int, dict]:
    """``(data start, header)`` of the safetensors file open as ``fd``, by positioned reads (``os.pread``: the file
    position is not moved, so threads may share ``fd``). Raises ``ValueError`` / ``OSError`` on a bad header (the
    checks of :func:`check_safetensors`, which is the file-naming one)."""
    size = os.fstat(fd).st_size
    n = header_length(os.pread(fd, 8, 0), size)
    return 8 + n, parse_header(os.pread(fd, n, 8), size)


def read_weight_map(d: Path, index: str = SAFE_INDEX) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> file name) of the shard index ``d / index``; every file it names must lie
    inside ``d`` (:func:`~rlvr_linear.io.containment.contained`: no ``..``, absolute path or link out)."""
    f = d / index
    try:
        wm = json.loads(f.read_text())["weight_map"]
        if not isinstance(wm, dict):
            raise TypeError(f"weight_map is a {type(wm).__name__}, not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RlvrLinearError(f"{f}: not a valid shard index ({type(e).__name__}: {e})") from None
    for name in dict.fromkeys(wm.values()):
        contained(d, name, f)
    return wm


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model directory (the single file, or every shard the index names)."""
    d = find_model_dir(path)
    if (d / SAFE_INDEX).exists():
        return [d / f for f in dict.fromkeys(read_weight_map(d).values())]
    return [d / SAFE_SINGLE] if (d / SAFE_SINGLE).exists() else []


def check_weight_files(path: str | Path) -> None:
    """:func:`check_safetensors` on every weight file of a model directory (headers only: cheap)."""
    for f in weight_files(path):
        check_safetensors(f)


class TensorReader:
    """Lazy, per-tensor access to one HF checkpoint directory (single file or sharded)."""

    def __init__(self, path: str | Path, allow_pickle: bool = False):
        self.path = find_model_dir(path)
        self.allow_pickle = allow_pickle
        self._handles: dict[str, object] = {}
        self._pickled: dict[str, dict[str, torch.Tensor]] = {}
        self._key_to_file: dict[str, str] = {}
        if (self.path / SAFE_INDEX).exists():
            check_weight_files(self.path)  # a truncated / empty shard: one error naming it
            self._key_to_file = read_weight_map(self.path)
            self.kind = "safetensors"
        elif (self.path / SAFE_SINGLE).exists():
            self.kind = "safetensors"
            header = check_safetensors(self.path / SAFE_SINGLE)
            self._key_to_file = {k: SAFE_SINGLE for k in sorted(header) if k != "__metadata__"}  # as safe_open
        elif (self.path / BIN_INDEX).exists() or (self.path / BIN_SINGLE).exists():
            if not allow_pickle:
                raise RlvrLinearError(
                    f"{self.path}: only pickled .bin weights found; pickle can run code, so it is refused "
                    "unless you pass --allow-pickle (it is then loaded with weights_only=True)"
                )
            self.kind = "pickle"
            if (self.path / BIN_INDEX).exists():
                self._key_to_file = read_weight_map(self.path, BIN_INDEX)
            else:
                sd = self._load_bin(BIN_SINGLE)
                self._key_to_file = {k: BIN_SINGLE for k in sd}
        elif verl_shards.is_shard_dir(self.path):
            if not allow_pickle:
                raise RlvrLinearError(
                    f"{self.path}: verl FSDP shards (model_world_size_W_rank_R.pt) are pickles, which can run code, "
                    "so they are refused unless you pass --allow-pickle (they are then loaded with weights_only=True "
                    "and only DTensor classes allowed)"
                )
            self.kind = "verl-fsdp"
            self._fsdp = verl_shards.FsdpShards(self.path)
            first = self._fsdp.files[0].name
            self._key_to_file = {k: first for k in self._fsdp.keys()}
        else:
            raise RlvrLinearError(f"{self.path}: no model weights found")

    # -- internals -------------------------------------------------------------------------------
    def _load_bin(self, fname: str) -> dict[str, torch.Tensor]:
        if fname not in self._pickled:
            sd = load_pickled_weights(self.path / fname)  # the restricted loader: tensors only, nothing runs
            bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
            if bad is not None:
                raise RlvrLinearError(f"{self.path / fname}: {bad!r} is a {type(sd[bad]).__name__}, not a tensor")
            self._pickled[fname] = sd
        return self._pickled[fname]

    def _handle(self, fname: str):
        h = self._handles.get(fname)
        if h is None:
            try:
                h = safe_open(self.path / fname, framework="pt")
            except Exception as e:  # noqa: BLE001 - SafetensorError, OSError: re-raised naming the file
                raise RlvrLinearError(f"{self.path / fname}: cannot read ({type(e).__name__}: {e})") from None
            self._handles[fname] = h
        return h

    # -- public API --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._key_to_file)

    def __contains__(self, name: str) -> bool:
        return name in self._key_to_file

    def file_of(self, name: str) -> str:
        return self._key_to_file[name]

    def _check(self, name: str) -> str:
        if name not in self._key_to_file:
            raise RlvrLinearError(f"{self.path}: tensor {name!r} is missing from this checkpoint")
        return self._key_to_file[name]

    def get(self, name: str) -> torch.Tensor:
        fname = self._check(name)
        if self.kind == "verl-fsdp":
            return self._fsdp.get(name)
        if self.kind == "pickle":
            return self._load_bin(fname)[name]
        return self._handle(fname).get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        fname = self._check(name)
        if self.kind == "verl-fsdp":
            return self._fsdp.shape(name)
        if self.kind == "pickle":
            return tuple(self._load_bin(fname)[name].shape)
        return tuple(self._handle(fname).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        fname = self._check(name)
        if self.kind == "verl-fsdp":
            return self._fsdp.dtype(name)
        if self.kind == "pickle":
            return self._load_bin(fname)[name].dtype
        return SAFETENSORS_DTYPES[self._handle(fname).get_slice(name).get_dtype()]

    def numel(self, name: str) -> int:
        n = 1
        for s in self.shape(name):
            n *= s
        return n

    def get_flat(self, name: str, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Return the tensor flattened, optionally gathered at flat ``index`` (a LongTensor or a slice)."""
        t = self.get(name).reshape(-1)
        if index is None:
            return t
        return t[index]

    def config(self) -> dict:
        cfg = verl_shards.config_dir(self.path) / "config.json"
        return json.loads(cfg.read_text()) if cfg.exists() else {}

    def close(self) -> None:
        self._handles.clear()
        self._pickled.clear()
        if self.kind == "verl-fsdp":
            self._fsdp.close()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: safetensors dtype codes (header ``dtype`` field) -> torch dtypes
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


# --------------------------------------------------------------------------------------------------
# Trajectories


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a run. ``remote`` (a :class:`~rlvr_linear.io.hub.HubSource`) marks one not fetched yet:
    ``path`` is then its ``hf://`` label, and :meth:`Trajectory.local_path` fetches it."""

    step: int
    path: Path | str
    remote: object | None = field(default=None, compare=False, repr=False)


class Trajectory:
    """An ordered sequence of checkpoints of one run, with lazy tensor readers."""

    def __init__(self, checkpoints: Sequence[Checkpoint], allow_pickle: bool = False):
        if not checkpoints:
            raise RlvrLinearError("no checkpoints found")
        steps = [c.step for c in checkpoints]
        dup = sorted({s for s in steps if steps.count(s) > 1})
        if dup:
            raise RlvrLinearError(f"duplicate checkpoint steps: {dup}")
        if steps != sorted(steps):
            raise RlvrLinearError(f"checkpoint steps are not in increasing order: {steps}")
        check_distinct([c.path for c in checkpoints], [f"step {c.step}" for c in checkpoints])
        self.checkpoints = list(checkpoints)
        self.allow_pickle = allow_pickle
        self._readers: dict[int, TensorReader] = {}

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    @property
    def paths(self) -> Sequence[Path]:
        """The local folders; a Hub checkpoint is fetched when its entry is first read (iterate to stream)."""
        return _LocalPaths(self)

    def local_path(self, i: int) -> Path:
        """The local folder of checkpoint ``i``, fetching a Hub checkpoint (once) if needed."""
        c = self.checkpoints[i]
        if c.remote is not None:
            c = Checkpoint(c.step, find_model_dir(c.remote.fetch()))
            self.checkpoints[i] = c
        return Path(c.path)

    def __len__(self) -> int:
        return len(self.checkpoints)

    def reader(self, i: int) -> TensorReader:
        if i not in self._readers:
            self._readers[i] = TensorReader(self.local_path(i), allow_pickle=self.allow_pickle)
        return self._readers[i]

    def readers(self) -> list[TensorReader]:
        return [self.reader(i) for i in range(len(self))]

    def keys(self) -> list[str]:
        return self.reader(0).keys()

    def subset(self, indices: Iterable[int]) -> Trajectory:
        return Trajectory([self.checkpoints[i] for i in indices], allow_pickle=self.allow_pickle)

    def until(self, step: int) -> Trajectory:
        return Trajectory([c for c in self.checkpoints if c.step <= step], allow_pickle=self.allow_pickle)

    def validate(self, min_checkpoints: int = 1, check_architecture: bool = True) -> None:
        """Check that every checkpoint has the same tensor names, shapes and architecture."""
        if len(self) < min_checkpoints:
            raise RlvrLinearError(
                f"this needs at least {min_checkpoints} checkpoints, found {len(self)} ({self.steps})"
            )
        ref = self.reader(0)
        ref_keys = set(ref.keys())
        ref_cfg = ref.config()
        for i in range(1, len(self)):
            r = self.reader(i)
            name = f"checkpoint step {self.checkpoints[i].step} ({r.path})"
            keys = set(r.keys())
            if keys != ref_keys:
                missing = sorted(ref_keys - keys)
                extra = sorted(keys - ref_keys)
                msg = f"{name}: tensor names differ from step {self.checkpoints[0].step}"
                if missing:
                    msg += f"; missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"
                if extra:
                    msg += f"; unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}"
                raise RlvrLinearError(msg)
            for k in ref.keys():
                if r.shape(k) != ref.shape(k):
                    raise RlvrLinearError(f"{name}: tensor {k!r} has shape {r.shape(k)}, expected {ref.shape(k)}")
            if check_architecture:
                cfg = r.config()
                for field in ("model_type", "architectures", "hidden_size", "num_hidden_layers", "vocab_size"):
                    if field in ref_cfg and field in cfg and cfg[field] != ref_cfg[field]:
                        raise RlvrLinearError(f"{name}: config {field}={cfg[field]!r} differs from {ref_cfg[field]!r}")

    def stack(self, name: str, index: torch.Tensor | slice | None = None, dtype=torch.float64) -> torch.Tensor:
        """Values of tensor ``name`` (flattened, optionally at ``index``) at every step: shape (T, n)."""
        rows = [self.reader(i).get_flat(name, index).to(dtype) for i in range(len(self))]
        return torch.stack(rows)

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()


def check_distinct(paths: Sequence[str | Path], labels: Sequence[str]) -> None:
    """Refuse the same checkpoint given twice (same resolved path, or the same folder through a link / mount)."""
    seen: list[tuple[Path, str, tuple[int, int] | None]] = []
    for p, label in zip(paths, labels):
        rp = Path(p).resolve()
        try:
            st = rp.stat()
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        for q, other, qid in seen:
            if rp == q or (ident is not None and ident == qid):
                raise RlvrLinearError(
                    f"the same checkpoint {Path(p)} is given as {other} and as {label}; the inputs must be "
                    "different checkpoints"
                )
        seen.append((rp, label, ident))


class _LocalPaths(Sequence):
    """``Trajectory.paths``: a lazy sequence, so that looping over it fetches one Hub checkpoint at a time."""

    def __init__(self, trajectory: Trajectory):
        self._t = trajectory

    def __len__(self) -> int:
        return len(self._t)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._t.local_path(i % n)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr([c.path for c in self._t.checkpoints])


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint at ``step`` in our run layout (``step_000040``); :func:`step_of_path` reads
    it back."""
    return f"step_{int(step):06d}"


def _step_of(name: str) -> int | None:
    for pat in _STEP_PATTERNS:
        m = pat.match(name)
        if m:
            return int(m.group(1))
    return None


def step_of_path(path: str | Path) -> int | None:
    """The training step encoded in a checkpoint path (``step_N``, ``checkpoint-N``, ``global_step_N``).

    Climbs out of verl's ``global_step_N/actor/huggingface`` layout; any other name gives None. For a Hub source
    ``hf://ORG/REPO@REV[/FOLDER]`` the step comes from the folder or else the revision (``step_N``, ``stepN``, ...).
    """
    if _is_hub(path):
        from .hub import HubSource, step_of_name

        src = HubSource.parse(path)
        parts = [q for q in src.subfolder.split("/") if q and q not in ("actor", "huggingface")]
        steps = [step_of_name(n) for n in (*parts[-1:], src.revision or "")]
        return next((s for s in steps if s is not None), None)
    p = Path(path).resolve()
    while p.name in ("huggingface", "actor") and p.parent != p:
        p = p.parent
    return _step_of(p.name)


def parse_step_path(spec: str) -> Checkpoint:
    if "=" not in spec:
        raise RlvrLinearError(f"expected STEP=PATH, got {spec!r}")
    s, p = spec.split("=", 1)
    try:
        step = int(s)
    except ValueError:
        raise RlvrLinearError(f"expected an integer step in {spec!r}") from None
    if _is_hub(p):
        from .hub import HubSource

        return Checkpoint(step, p, remote=HubSource.parse(p))
    return Checkpoint(step, find_model_dir(p))


def discover(source: str | Path | Sequence[str], allow_pickle: bool = False) -> Trajectory:
    """Find the checkpoints of a run.

    ``source`` is a run directory (ours, TRL's or verl's), a Hub repository ``hf://ORG/REPO`` (steps from
    its ``step_N``-like revisions or subfolders, see :mod:`rlvr_linear.io.hub`; each fetched when first read)
    or a list of ``STEP=PATH`` strings. Checkpoints come back sorted by step.
    """
    if isinstance(source, (list, tuple)):
        if len(source) == 1 and "=" not in str(source[0]):
            return discover(source[0], allow_pickle)
        cps = [parse_step_path(str(s)) for s in source]
        return Trajectory(cps, allow_pickle=allow_pickle)
    if _is_hub(source):
        from .hub import list_checkpoints

        cps = [Checkpoint(step, str(src), remote=src) for step, src in list_checkpoints(source)]
        return Trajectory(cps, allow_pickle=allow_pickle)
    root = Path(source)
    if re.fullmatch(r"-?\d+=.+", str(source)) and not root.exists():  # one STEP=PATH: a trajectory of one checkpoint
        return discover([str(source)], allow_pickle)
    if not root.is_dir():
        raise RlvrLinearError(f"{root}: not a directory")
    manifest = root / "manifest.json"
    cps: list[Checkpoint] = []
    if manifest.exists():
        check_regular(manifest)
        data = json.loads(manifest.read_text())
        for entry in data.get("checkpoints", []):
            cps.append(Checkpoint(int(entry["step"]), find_model_dir(contained(root, entry["path"], manifest))))
    else:
        for child in root.iterdir():
            step = _step_of(child.name) if child.is_dir() else None
            if step is None:
                continue
            try:
                d = find_model_dir(child, check_files=False)
            except RlvrLinearError:
                continue  # e.g. a TRL checkpoint still being written
            cps.append(Checkpoint(step, check_regular_files(d)))
    if not cps:
        raise RlvrLinearError(
            f"{root}: no checkpoints found (looked for manifest.json, step_N/, checkpoint-N/, "
            "global_step_N/actor/huggingface/)"
        )
    cps.sort(key=lambda c: c.step)
    return Trajectory(cps, allow_pickle=allow_pickle)
