"""Run a command (an argv list, no shell) in its own process group that ends when we end, however we end.

The re-grounding driver launches trainers that may run for hours. If the driver were killed, a trainer left
running would keep writing into a cycle folder that the re-run retrains in. So each command runs under a
small supervisor (``python -m rlvr_linear.runtime.procgroup PARENT_PID GRACE ARGV...``) that

* leads a new session and process group, holding the command and everything it starts;
* asks Linux to send it SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``, also after ``kill -9`` of
  the parent), and ends the whole group on SIGTERM / SIGINT / SIGHUP: SIGTERM first, SIGKILL after a grace;
* exits with the command's status (re-raising its signal, so the caller sees ``-SIG``).

On SIGINT / SIGTERM the caller (:func:`run_group`) ends the group the same way and re-raises. Elsewhere than
Linux the parent-death signal is unavailable; the group is still ended on SIGINT / SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

#: seconds between SIGTERM and SIGKILL when a group is ended
GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """``prctl(PR_SET_PDEATHSIG, sig)`` (Linux; a no-op elsewhere). Kept across exec of ordinary binaries."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def end_group(pgid: int, grace: float = GRACE_SECONDS, alive=None) -> None:
    """SIGTERM the process group ``pgid``, then SIGKILL whatever is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < grace:
        if alive is not None and not alive():
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_group(argv: Sequence[str], env: dict | None = None, grace: float = GRACE_SECONDS) -> int:
    """Run ``argv`` (no shell) under the supervisor; returns its exit status (``-SIG`` if a signal ended it).

    SIGINT / SIGTERM to us end the command's whole process group, then propagate (KeyboardInterrupt / the
    default SIGTERM action); if we are killed outright, the supervisor ends the group itself.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlvr_linear.runtime.procgroup", str(os.getpid()), str(grace), *argv],
        env=env,
        start_new_session=True,  # (no preexec_fn: unsafe with threads; the supervisor sets its own death signal)
    )
    main_thread = threading.current_thread() is threading.main_thread()
    old = {}

    def on_signal(sig, frame):
        end_group(proc.pid, grace, alive=lambda: proc.poll() is None)
        signal.signal(sig, old.get(sig, signal.SIG_DFL))
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), sig)

    if main_thread:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    try:
        return proc.wait()
    except BaseException:
        end_group(proc.pid, grace, alive=lambda: proc.poll() is None)
        raise
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _supervise(parent: int, grace: float, argv: list[str]) -> int:
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before we could ask to be told
        return 1
    child = None

    def on_signal(sig, frame):
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # the group signal below reaches us too
        end_group(os.getpgrp(), grace, alive=lambda: child is not None and child.poll() is None)
        os._exit(128 + sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)
    try:
        child = subprocess.Popen(argv)  # no shell: each argument reaches the program exactly as given
    except OSError as e:  # not found, not executable: as a shell would, say so and exit 127 / 126
        print(f"{argv[0]}: cannot run it ({e.strerror or e})", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    rc = child.wait()
    if rc < 0:  # pass the command's fatal signal on
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


if __name__ == "__main__":
    sys.exit(_supervise(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]))
