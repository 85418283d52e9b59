"""Two ``rlvr-linear train`` processes at once must not collapse (each was once ~60x slower on 2 cores).

Runs ``rlvr-linear train --preset tiny --steps N`` alone, then two copies started together, and prints the ratio
of the slower of the pair's wall times to the lone run's (goal: <= 2.5; 2.0 is a fair share of the cores).
Writes ``bench/results/two_processes.json``.

    python bench/two_processes.py --steps 40            # the cached tiny base (made first if missing)
    python bench/two_processes.py --steps 40 --cold     # each process also makes the base, in a fresh cache

``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are removed from the children's environment (unless
``--keep-env``), so the default thread policy of :mod:`rlvr_linear.runtime.threads` is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env(cache: Path | None, keep: bool) -> dict:
    env = dict(os.environ)
    if not keep:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(k, None)
    if cache is not None:
        env["RLVR_LINEAR_CACHE"] = str(cache)
    return env


def _cmd(exe: list[str], out: Path, steps: int, extra: list[str]) -> list[str]:
    return [*exe, "train", "--preset", "tiny", "--steps", str(steps), "--save-every", str(steps), "-o", str(out),
            *extra]  # fmt: skip


def _start(cmd: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, float, object]:
    f = open(log, "w")  # noqa: SIM115 - closed in _finish
    return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT), time.perf_counter(), f


def _finish(p: subprocess.Popen, t0: float, f, log: Path) -> float:
    rc = p.wait()
    wall = time.perf_counter() - t0
    f.close()
    if rc != 0:
        sys.exit(f"error: {' '.join(map(str, p.args))} exited with {rc}; log: {log}\n{log.read_text()[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="RL steps per run (default 40)")
    ap.add_argument("--cold", action="store_true", help="build the tiny base in each run (fresh cache dirs)")
    ap.add_argument("--keep-env", action="store_true", help="keep OMP_NUM_THREADS / MKL_NUM_THREADS for the children")
    ap.add_argument("--extra", default="", help="more arguments for `rlvr-linear train`, e.g. '--threads 2'")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "two_processes.json"))
    args = ap.parse_args(argv)
    exe = [sys.executable, "-m", "rlvr_linear"]
    extra = args.extra.split()
    work = Path(tempfile.mkdtemp(prefix="two_processes-"))
    try:
        if not args.cold and "--model" not in extra:  # the cached tiny base, built (or installed) once, untimed
            subprocess.run([*exe, "base", "--preset", "tiny"], env=_env(None, args.keep_env), check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        cache = (lambda name: work / f"cache-{name}") if args.cold else (lambda name: None)

        p = _start(_cmd(exe, work / "alone", args.steps, extra), _env(cache("alone"), args.keep_env), work / "a.log")
        alone = _finish(*p, work / "a.log")
        print(f"alone: {alone:.1f} s", flush=True)
        pair = [
            _start(
                _cmd(exe, work / f"pair{i}", args.steps, extra),
                _env(cache(f"pair{i}"), args.keep_env),
                work / f"p{i}.log",
            )  # fmt: skip
            for i in range(2)
        ]
        walls = [_finish(*p, work / f"p{i}.log") for i, p in enumerate(pair)]
        ratio = max(walls) / alone
        print(f"together: {walls[0]:.1f} s and {walls[1]:.1f} s; ratio (slower / alone) {ratio:.2f}", flush=True)
        res = {
            "command": f"rlvr-linear train --preset tiny --steps {args.steps} --save-every {args.steps} "
            + " ".join(extra),
            "cold_base": args.cold,
            "env_kept": args.keep_env,
            "alone_s": round(alone, 2),
            "together_s": [round(w, 2) for w in walls],
            "ratio": round(ratio, 3),
            "goal": "<= 2.5",
            "ok": ratio <= 2.5,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {out}")
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
