"""One writer per output: an exclusive OS file lock on ``PARENT/.NAME.lock`` while a command writes ``PARENT/NAME``.

The lock is ``fcntl.flock`` on a sibling file, so it exists before the output does, survives ``atomic_dir``'s rename
and dies with its process: a killed writer never leaves a stale lock (its lock *file* may stay; the next writer
takes it over). The holder writes its pid into the file, so a second writer is told who holds it. A thread that
already holds a lock may take it again (nested writers of one command do not block themselves); another thread,
or another process, is refused (or waits, with ``wait=True``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import RlvrLinearError

#: the locks this process holds, per thread: lock file -> how many nested ``locked`` hold it
_held = threading.local()


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of ``out``: ``PARENT/.NAME.lock``, the parent resolved (every spelling of ``out`` meets)."""
    out = Path(os.path.abspath(out))  # ``-o .`` locks the folder by its name
    return Path(os.path.realpath(out.parent)) / f".{out.name}.lock"


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones made here (outermost first)."""
    missing = [p for p in [folder, *folder.parents] if not p.exists() and not p.is_symlink()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir()
    return list(reversed(missing))


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file (it writes it just after locking: wait a moment for it)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            text = os.pread(fd, 32, 0).decode().strip()
            if text:
                return str(int(text))
        time.sleep(0.01)
    return "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(path: Path, out: Path, wait: bool, made: list[Path]) -> int:
    """Lock ``path`` (created if missing) and write our pid into it; returns the open descriptor."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # its folder was removed (by a writer that made it and ended): make it again
            made.extend(_make_parents(path.parent))
            continue
        except NotADirectoryError:
            raise RlvrLinearError(f"{out.parent}: not a directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            pid = _holder(fd)
            stale = not _same_file(fd, path)  # its holder was releasing it: try the new file
            os.close(fd)
            if stale:
                continue
            raise RlvrLinearError(f"{out} is being written by another rlvr-linear process (pid {pid})") from None
        if not _same_file(fd, path):  # the previous holder removed this file as it released it: lock the new one
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # the pid is for messages only (a full disk may refuse even that)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


@contextlib.contextmanager
def locked(out: str | os.PathLike, wait: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock of ``out`` for the ``with`` block; yields the lock file.

    Another process (or thread) holding it: :class:`~rlvr_linear.errors.RlvrLinearError` ``OUT is being written by
    another rlvr-linear process (pid N)``, or, with ``wait``, block until it is free. ``out``'s parent folders are
    created if missing, and those made here are removed again on release if they are still empty.
    """
    out = Path(out)
    made = _make_parents(Path(os.path.abspath(out)).parent)
    path = lock_path(out)
    inner = out / ".rlvr-linear.lock"  # the lock file when the parent is not ours to write in
    held: dict[Path, list] = _held.__dict__.setdefault("locks", {})
    mine = next((p for p in (path, Path(os.path.realpath(inner))) if p in held), None)
    if mine is not None:  # this thread holds it already: a nested writer of the same command
        path = mine
        held[path][1] += 1
        try:
            yield path
        finally:
            held[path][1] -= 1
        return
    try:
        try:
            fd = _acquire(path, out, wait, made)
        except PermissionError:  # the parent is not ours to write in: lock inside an existing output folder
            if not out.is_dir():
                raise
            path = Path(os.path.realpath(inner))
            fd = _acquire(path, out, wait, made)
        held[path] = [fd, 1]
        try:
            yield path
        finally:
            del held[path]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # while still locked: a waiter on this file sees it gone and retries
            os.close(fd)
    finally:
        for d in reversed(made):
            try:
                os.rmdir(d)
            except OSError:
                break
