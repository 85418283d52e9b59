"""CPU cost of ``analyze_weights(sample="all")``, in process CPU seconds (robust to a shared machine's load).

Builds once (kept in ``--workdir``) a synthetic bf16 trajectory with ``bench/weight_r2.py``'s builder, warms
the page cache, then runs the all-mode analysis in fresh subprocesses (one worker process, one thread) and
reports, per run, the child's user + system CPU seconds (``RUSAGE_CHILDREN``), the wall time, the CPU seconds
per 1M parameters x T checkpoints and the child's peak RSS. ``--kernel`` also times the fused kernel alone on the
blocks held in memory (no reads, no null), which bounds what the kernel costs within the whole.

Usage::

    python bench/all_mode_cpu.py --workdir /tmp/allcpu --params 40e6 --repeat 3
    python bench/all_mode_cpu.py --workdir /tmp/allcpu --kernel
    python bench/all_mode_cpu.py --workdir /tmp/allcpu --src /tmp/old/src --src .   # before / after, alternating

With several ``--src``, the results must be identical but for the sign-flip null's fields (null R² summary,
drift-to-noise null median, null sample size), which are printed per version.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import weight_r2 as W  # noqa: E402


def _child(run: Path, out: Path, kernel: bool) -> None:
    import numpy as np
    import torch

    from rlvr_linear import linearity as L
    from rlvr_linear.io.checkpoints import discover
    from rlvr_linear.linearity import kernel as K

    traj = discover(run)
    res: dict = {}
    if kernel:  # the fused kernel alone, on a tensor's blocks in memory (bf16 bits), after one warm-up call
        x = np.asarray(traj.steps, dtype=np.float64)
        xc, sxx = L._check_steps(x)
        name = max(L.weight_keys(traj), key=lambda k: int(np.prod(traj.reader(0).shape(k))))
        y = np.stack([traj.reader(i).get(name).reshape(-1).view(torch.int16).numpy().view(np.uint16)
                      for i in range(len(traj.steps))])  # fmt: skip
        fk = K.fused_kernel()
        h = L.Dist()
        keep = np.empty(1 << 16, dtype=np.bool_)
        proto = K.tracking_proto(y.dtype)
        blocks = [np.ascontiguousarray(y[:, a : a + (1 << 16)]) for a in range(0, y.shape[1], 1 << 16)]
        fk(blocks[0], True, proto, xc, 1 / sxx, 1e-4, 4, h.counts, 1e4, h.counts, 1e4, 0.7, keep)
        t0, c0 = time.perf_counter(), time.process_time()
        for b in blocks:
            fk(b, True, proto, xc, 1 / sxx, 1e-4, 4, h.counts, 1e4, h.counts, 1e4, 0.7, keep[: b.shape[1]])
        res["kernel_cpu_s"] = time.process_time() - c0
        res["kernel_wall_s"] = time.perf_counter() - t0
        res["kernel_params"] = int(y.shape[1])
        res["kept"] = int(h.n)
    else:
        K.fused_kernel()  # (numba's import and cached compile: counted apart)
        t0, c0 = time.perf_counter(), time.process_time()
        r = L.analyze_weights(traj, sample="all", workers=1, threads=1)
        res["wall_s"] = time.perf_counter() - t0
        res["analyze_cpu_s"] = time.process_time() - c0
        res["result"] = r.to_json()
        res["r2_total"], res["dnr_total"] = r.r2.total, r.dnr.total
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (Linux: KiB)
    out.write_text(json.dumps(res))


def _observed(result: dict) -> dict:
    """A result without its sign-flip null fields (which a change of the null's float summation order or of
    its drawn sample may change): what must be identical across versions."""
    out = {k: v for k, v in result.items() if k not in ("null", "above_null")}
    out["drift_to_noise"] = {k: v for k, v in result["drift_to_noise"].items() if k != "null_median"}
    out["counts"] = {k: v for k, v in result["counts"].items() if k != "null_sample"}
    return out


def _null(result: dict) -> dict:
    """The null fields of a result (compared and printed apart)."""
    return {**result["null"], "dnr_null_median": result["drift_to_noise"]["null_median"],
            "null_sample": result["counts"]["null_sample"]}  # fmt: skip


def run_child(run: Path, out: Path, kernel: bool = False, src: str | None = None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if src:  # another checkout's package (e.g. `git archive HEAD~1 src | tar -x -C /tmp/old`)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", str(run), "--out", str(out)] + (["--kernel"] if kernel else [])
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out.read_text())
    res["proc_user_s"] = after.ru_utime - before.ru_utime
    res["proc_sys_s"] = after.ru_stime - before.ru_stime
    res["proc_wall_s"] = wall
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="where the checkpoints are (built there if missing)")
    ap.add_argument("--params", type=float, default=40e6, help="model size to build (default 4e7)")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--repeat", type=int, default=3, help="analysis runs (default 3)")
    ap.add_argument("--kernel", action="store_true", help="also time the fused kernel alone")
    ap.add_argument(
        "--src", action="append", default=None,
        help="a src/ folder of another checkout to run instead of the installed package (repeatable: the runs "
        "alternate between them, and their results must be identical); '.' is the installed package",
    )  # fmt: skip
    ap.add_argument("--out", help="write the runs as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(Path(args.child), Path(args.out), args.kernel)
        return
    if not args.workdir:
        ap.error("--workdir is required")
    run = Path(args.workdir) / "run"
    if not (run / "manifest.json").exists():
        shape = W.llama_shape(args.params)
        W.build(run, shape, [100 * i for i in range(args.steps)], 200_000_000)
    files = W.weight_files(run)
    for f in files:  # warm the page cache
        with open(f, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass
    tmp = Path(args.workdir) / "child.json"
    srcs = args.src or ["."]
    runs, ref, nulls = [], None, {}
    for _ in range(args.repeat):
        for src in srcs:  # alternating: the machine's load hits each alike
            r = run_child(run, tmp, src=None if src == "." else src)
            r["src"] = src
            runs.append(r)
            res = (_observed(r["result"]), r["r2_total"], r["dnr_total"])
            if ref is not None and res != ref:
                raise SystemExit(f"error: results of {src} differ from those of {srcs[0]}")
            ref = res
            nulls.setdefault(src, _null(r["result"]))
            n, a = r["result"]["counts"]["sampled"], r["analyze_cpu_s"]
            cpu, med = r["proc_user_s"] + r["proc_sys_s"], r["result"]["r2"]["median"]
            print(f"{src}: analyze_weights {a:.2f} cpu s = {a / (n / 1e6):.4f} per 1M params x {args.steps} "
                  f"({n / 1e6:.1f}M params, wall {r['wall_s']:.2f} s); whole process {cpu:.2f} cpu s "
                  f"(user {r['proc_user_s']:.2f}, sys {r['proc_sys_s']:.2f}); peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"r2 median {med}")  # fmt: skip
    if len(srcs) > 1:
        print("observed results identical across", ", ".join(srcs), "(all but the null fields)")
        for src in srcs:
            nl = nulls[src]
            print(f"{src}: null n {nl['n']}, median {nl['median']}, mean {nl['mean']}, share > 0.7 "
                  f"{nl['share_gt_0.7']}, drift-to-noise null median {nl['dnr_null_median']}")  # fmt: skip
        if len({json.dumps(v, sort_keys=True) for v in nulls.values()}) == 1:
            print("null fields identical too")
    for src in srcs:
        best = min(r["analyze_cpu_s"] for r in runs if r.get("src") == src)
        print(f"{src}: best {best:.2f} cpu s = {best / (n / 1e6):.4f} per 1M params x {args.steps}")
    if args.kernel:
        for src in srcs:
            k = run_child(run, tmp, kernel=True, src=None if src == "." else src)
            k["src"] = src
            runs.append(k)
            per = k["kernel_cpu_s"] / (k["kernel_params"] / 1e6)
            print(f"{src}: kernel alone {k['kernel_cpu_s']:.3f} cpu s on {k['kernel_params'] / 1e6:.1f}M params "
                  f"= {per:.4f} per 1M params x {args.steps}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
