"""Which folders rlvr-linear wrote, and which of them ``--overwrite`` may replace.

Every folder the package writes carries a small marker file, :data:`MARKER` (``.rlvr-linear.json``: the kind of
output, the command, the version). ``--overwrite`` replaces only such a folder, and never

* an input of the same command, nor a folder that holds one (paths compared resolved);
* a part of a training run (a folder whose parent holds the run's ``manifest.json``: its checkpoints, its resume
  state), except by the trainer writing that run;
* a training run, a checkpoint or a trainer's state by an output of another kind.

Anything else is refused with one line naming the folder and why. Also here: the folders a command made, so that
a failed command leaves none of them behind (:func:`make_dirs`, :func:`remove_created`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..errors import RlvrLinearError

#: the marker file in every folder rlvr-linear writes
MARKER = ".rlvr-linear.json"
#: kinds of output that only a writer of the same kind replaces (a run's trainer, its checkpoints, its resume state)
PROTECTED = {"run": "training run", "checkpoint": "checkpoint", "train-state": "trainer state"}
#: kinds the trainer writes inside its own run directory (it holds the run's lock)
RUN_PARTS = ("checkpoint", "train-state")
#: checkpoint folder names: ours, TRL's, verl's
_STEP_NAME = re.compile(r"^(?:step_|step-|checkpoint-|global_step_)\d+$")


def marker(kind: str) -> dict:
    """The marker's content for an output of ``kind`` (``run``, ``checkpoint``, ``analysis``, ``extrapolation``...)."""
    from .. import __version__

    argv = sys.argv[1:3] if sys.argv and Path(sys.argv[0]).name in ("rlvr-linear", "__main__.py") else []
    command = " ".join(a for a in argv if not a.startswith("-")) or None
    return {"written_by": "rlvr-linear", "kind": kind, "command": command, "version": __version__}


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder``; None if it has none. A run written before markers existed (``manifest.json`` with
    its checkpoints) counts as kind ``run``; an unreadable marker as kind None."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        try:
            rec = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):
            return {"kind": None}
        return rec if isinstance(rec, dict) else {"kind": None}
    return {"kind": "run"} if run_manifest(folder) is not None else None


def run_manifest(folder: str | os.PathLike) -> dict | None:
    """The ``manifest.json`` of a training run in ``folder`` (ours: it lists checkpoints), else None."""
    try:
        data = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("checkpoints"), list) else None


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(p))


def check_overwrite(
    out: str | os.PathLike,
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike] = (),
    managed: bool = False,
    ours: Callable[[Path], bool] | None = None,
) -> None:
    """Refuse to replace the existing ``out`` unless it is an output of ours that may go (see the module doc).

    ``kind``: what the writer writes. ``inputs``: the command's input paths (``hf://`` sources are skipped).
    ``managed``: ``out`` is a folder the package manages itself (the base-model cache): only the inputs are checked.
    ``ours``: for a file output (no marker inside), tells whether the existing file is one of ours.
    """
    out = Path(out)
    r = _resolved(out)
    for inp in inputs:
        if str(inp).startswith("hf:/"):
            continue
        ri = _resolved(inp)
        if ri == r:
            raise RlvrLinearError(f"{out} is an input of this command; refusing to --overwrite it")
        if r in ri.parents:
            raise RlvrLinearError(f"{out} holds {inp}, an input of this command; refusing to --overwrite it")
        if ri in r.parents and not out.is_dir():
            raise RlvrLinearError(f"{out} is inside {inp}, an input of this command; refusing to --overwrite it")
    if managed:
        return
    run = run_manifest(r.parent)
    if run is not None:
        if kind in RUN_PARTS:
            return  # the trainer replacing a part of its own run
        listed = {str(c.get("path")) for c in run["checkpoints"] if isinstance(c, dict)}
        what = "a checkpoint of" if r.name in listed or _STEP_NAME.match(r.name) else "inside"
        raise RlvrLinearError(f"{out} is {what} the run {out.parent}; refusing to --overwrite it")
    if not out.is_dir():
        if ours is not None and ours(out):
            return
        raise RlvrLinearError(f"{out} was not written by rlvr-linear; refusing to --overwrite it")
    rec = read_marker(out)
    if rec is None:
        raise RlvrLinearError(f"{out} was not written by rlvr-linear (no {MARKER}); refusing to --overwrite it")
    have = rec.get("kind")
    if have in PROTECTED and have != kind:
        by = f" (rlvr-linear {rec['command']})" if rec.get("command") else ""
        raise RlvrLinearError(
            f"{out} holds a {PROTECTED[have]}{by}; refusing to --overwrite it with another kind of output"
        )


def check_output(out: str | os.PathLike, overwrite: bool, **check) -> None:
    """An existing ``out`` is an error unless ``overwrite`` and :func:`check_overwrite` allow replacing it."""
    out = Path(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise RlvrLinearError(f"{out} already exists (pass --overwrite to replace it)")
    check_overwrite(out, **check)


def make_dirs(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made (outermost first), for :func:`remove_created`."""
    folder = Path(os.path.abspath(folder))
    missing = [p for p in [folder, *folder.parents] if not (p.exists() or p.is_symlink())]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
    return list(reversed(missing))


def _prune(d: Path) -> bool:
    """Remove ``d`` if nothing is in it but our marker and folders that hold nothing; True if it is gone."""
    try:
        entries = list(os.scandir(d))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    keep = False
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            keep |= not _prune(Path(e.path))
        elif e.name != MARKER:
            keep = True
    if keep:
        return False
    try:
        (d / MARKER).unlink(missing_ok=True)
        os.rmdir(d)
    except OSError:
        return False
    return True


def remove_created(created: Sequence[str | os.PathLike]) -> None:
    """After a failure: remove each folder of ``created`` (made by this command) that holds nothing of value (no
    file but our marker, at any depth); one holding results is kept."""
    for d in sorted((Path(c) for c in created), key=lambda p: len(p.parts), reverse=True):
        _prune(d)
