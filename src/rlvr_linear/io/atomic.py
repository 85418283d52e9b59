"""Atomic writes: every model directory and result file appears whole or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import RlvrLinearError
from .jsonable import jsonable
from .lock import locked
from .outputs import MARKER, check_output, make_dirs, marker, remove_created

#: temporary names carry the writer's pid and host (``.NAME.tmp-PID@HOST-XXXXXXXX``) so that the next writer can
#: tell the leftovers of a dead process from the work of a live one
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)@(?P<host>[^/]+?)(?:-[A-Za-z0-9_]{8})?$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "localhost"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(out: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders and files (``.NAME.tmp-PID@HOST-*``, ``.NAME.old-PID@HOST``) that dead processes
    on this host left next to ``out``; a live process's (or another host's) are kept. Returns what was removed."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    host = _host()
    for child in out.parent.glob(f".{glob.escape(out.name)}.*-*@*"):
        m = _TMP_RE.match(child.name)
        if not m or m["name"] != out.name or m["host"] != host or int(m["pid"]) == os.getpid():
            continue
        if not _pid_alive(int(m["pid"])):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child)
    return removed


def check_parents(out: str | os.PathLike) -> None:
    """Refuse an output path under a file (``-o afile/w``): one line naming the file, before anything is made."""
    for parent in Path(out).parents:
        if parent.exists():
            if not parent.is_dir():
                raise RlvrLinearError(f"{parent} is a file, not a folder")
            return


def _chmod_dir(path: Path) -> None:
    os.chmod(path, 0o777 & ~_umask())  # mkdtemp makes 0700; our outputs are ordinary folders


def _follow_umask(root: Path) -> None:
    """Give every file and folder under ``root`` the umask's modes (safetensors, mkstemp write 0600 files)."""
    mask = _umask()
    for d, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o777 & ~mask)
        for name in files:
            f = os.path.join(d, name)
            if not os.path.islink(f):
                os.chmod(f, (0o777 if os.stat(f).st_mode & 0o111 else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_dir(
    out: str | os.PathLike,
    overwrite: bool = False,
    *,
    kind: str = "output",
    inputs: Iterable[str | os.PathLike] = (),
    managed: bool = False,
    wait: bool = False,
) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success rename it to ``out``.

    On any exception the temporary directory is removed and ``out`` is untouched; after a kill it stays as
    ``.NAME.tmp-PID@HOST-XXXXXXXX`` and the next ``atomic_dir`` for the same ``out`` removes it (once that pid is
    gone). With ``overwrite`` an existing ``out`` is replaced only after the new content is complete, and only if
    :func:`~rlvr_linear.io.outputs.check_overwrite` allows it (an output of ours of this ``kind``, none of the
    command's ``inputs``; ``managed``: a cache of the package's own). The folder follows the umask and gets the
    marker file (``kind``), unless ``managed``. The whole write holds ``out``'s lock
    (:func:`~rlvr_linear.io.lock.locked`; ``wait``: wait for another writer instead of refusing).
    """
    out = Path(out)
    check_parents(out)
    with locked(out, wait=wait):
        check_output(out, overwrite, kind=kind, inputs=inputs, managed=managed)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        tag = f"{os.getpid()}@{_host()}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{tag}-", dir=out.parent))
        try:
            _chmod_dir(tmp)
            yield tmp
            if not managed:
                write_json(tmp / MARKER, marker(kind))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _follow_umask(tmp)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{tag}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, kind: str) -> Iterator[Path]:
    """A folder written in place (``eval -o``, ``study -o``, a re-grounding work dir): hold its lock for the
    ``with`` block and create it if missing (then marked as ``kind``). If the block fails, the folders made here are
    removed again unless they hold results (:func:`~rlvr_linear.io.outputs.remove_created`)."""
    out = Path(out)
    with locked(out):
        created = make_dirs(out)
        try:
            if created:
                mark_output(out, kind)
            yield out
        except BaseException:
            remove_created(created)
            raise


def mark_output(folder: str | os.PathLike, kind: str) -> Path:
    """Write the marker file (:data:`~rlvr_linear.io.outputs.MARKER`) of an output of ``kind`` into ``folder``, unless
    it has one."""
    path = Path(folder) / MARKER
    return path if path.exists() else write_json(path, marker(kind))


def _temp_file(path: Path) -> tuple[int, str]:
    """A temporary file next to ``path`` named like atomic_dir's folders (a dead writer's is removed next time)."""
    remove_stale_temps(path)
    return tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}@{_host()}-", dir=path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    return 0o666 & ~_umask()


def _write_atomically(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write a file through ``write(f)`` (``f`` opened with ``mode``: text or ``"wb"``) into a temporary file next to
    ``path``, then rename it into place.

    The file gets the user's umask (``mkstemp`` creates 0600); an I/O error (a full disk) becomes one clear line
    naming ``path``, and no temporary file is left behind.
    """
    path = Path(path)
    check_parents(path)
    try:  # the folder, or the temp file in it, cannot be made (a file in the way, read-only, full disk)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_file(path)
    except OSError as e:
        raise RlvrLinearError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise RlvrLinearError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write JSON atomically (temp file in the same directory, then rename)."""

    def write(f: IO[str]) -> None:
        json.dump(obj, f, indent=indent, default=_json_default)
        f.write("\n")

    return _write_atomically(path, write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return _write_atomically(path, lambda f: f.write(text))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write a binary file atomically."""
    return _write_atomically(path, lambda f: f.write(data), mode="wb")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically (the content only: ``dst`` follows the umask, as every output)."""

    def write(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return _write_atomically(dst, write, mode="wb")


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Write numpy arrays to a compressed ``.npz`` atomically (no pickle: object arrays are refused)."""
    import numpy as np

    def write(f: IO[bytes]) -> None:
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})

    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise RlvrLinearError(f"{path}: array {k!r} holds Python objects; only numeric / string arrays are saved")
    return _write_atomically(path, write, mode="wb")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _json_default(o: Any) -> Any:
    """``json.dump``'s hook for what it cannot write itself: numpy values and paths (non-finite floats kept)."""
    out = jsonable(o, finite=False, paths=True)
    if out is o:
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return out
