"""Benchmark: streamed per-tensor weight R² (ours) vs the seed repo's load-everything approach.

Builds T bf16 checkpoints of a random Llama-like model (sharded safetensors, weights drifting linearly
plus noise), then runs, each in a fresh subprocess so that peak RSS is measured separately:

* ``read``  — a plain sequential read of every weight file (16 MiB blocks): the bandwidth ceiling;
* ``seed``  — the seed's approach: every checkpoint's full state dict in memory (``safetensors.load_file``),
  then the same sampled indices, filters and R² as ours;
* ``ours``  — ``analyze_weights(sample="paper")``: one tensor at a time across checkpoints (the T copies of
  a tensor read concurrently by 4 reader threads, tensors in on-disk order);
* ``all``   — ``analyze_weights(sample="all")``: every parameter, streamed in chunks (a reader thread loads
  the next runs of chunks, 1 MiB per checkpoint with one scatter read each, while ``--threads`` threads
  analyse; the sign-flip null on a 1/256 subsample per tensor;
  ``--workers`` processes share the blocks, default: the library's, 2 from 50M parameters on).

Before each run the weight files are dropped from the page cache (``posix_fadvise(DONTNEED)``, no root
needed) unless ``--warm``. Peak memory: ``ru_maxrss`` and ``VmHWM`` of the worker (``VmHWM`` belongs to the
worker's own address space; ``ru_maxrss`` can inherit the parent's peak across fork/exec).

Usage::

    python bench/weight_r2.py --small            # ~20M params, 14 checkpoints, < 60 s
    python bench/weight_r2.py                    # ~300M params (the full benchmark)
    python bench/weight_r2.py --params 1e9 --workdir /big/disk
    python bench/weight_r2.py --threads 2        # --all analysed by 2 threads
    python bench/weight_r2.py --workers 1        # --all in one process (the default is 2 from 50M params)

Writes ``bench/results/weight_r2.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB = 32000


def llama_shape(params: float) -> dict:
    """Hidden size, layers and MLP width of a Llama-like model with about ``params`` parameters (untied head)."""
    for h in range(256, 8193, 128):
        inter = -(-int(8 * h / 3) // 64) * 64
        per_layer = 4 * h * h + 3 * h * inter + 2 * h
        layers = round((params - 2 * VOCAB * h - h) / per_layer)
        if 1 <= layers <= max(2, h // 48):
            total = 2 * VOCAB * h + h + layers * per_layer
            return {"hidden": h, "layers": layers, "intermediate": inter, "vocab": VOCAB, "params": total}
    raise SystemExit(f"cannot shape a model with {params:.3g} parameters")


def tensor_specs(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, inter, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (h, h)),
            (p + "self_attn.v_proj.weight", (h, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (inter, h)),
            (p + "mlp.up_proj.weight", (inter, h)),
            (p + "mlp.down_proj.weight", (h, inter)),
        ]
    return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def build(run: Path, shape: dict, steps: list[int], shard_bytes: int) -> None:
    """W_i = W_0 + i * D + N_i in bf16 (D: per-parameter drift, N_i: fresh noise), regenerated per checkpoint."""
    import torch
    from transformers import LlamaConfig

    from rlvr_linear.io.writer import ShardedWriter

    cfg = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=max(1, shape["hidden"] // 64),
        num_key_value_heads=max(1, shape["hidden"] // 64),
        tie_word_embeddings=False,
    )
    specs = tensor_specs(shape)
    for i, step in enumerate(steps):
        d = run / f"step_{step:06d}"
        w = ShardedWriter(d, max_shard_bytes=shard_bytes)
        for t, (name, shp) in enumerate(specs):
            g = torch.Generator().manual_seed(t)
            norm = name.endswith("norm.weight")
            w0 = torch.ones(shp) if norm else 0.02 * torch.randn(shp, generator=g)
            drift = 2e-4 * torch.randn(shp, generator=g)
            noise = 1.5e-4 * torch.randn(shp, generator=torch.Generator().manual_seed(10_000 * (i + 1) + t))
            w.add(name, (w0 + i * drift + noise).to(torch.bfloat16))
        w.finalize()
        cfg.save_pretrained(d)
    (run / "manifest.json").write_text(
        json.dumps({"checkpoints": [{"step": s, "path": f"step_{s:06d}"} for s in steps]}, indent=2)
    )


def weight_files(run: Path) -> list[Path]:
    return sorted(run.glob("step_*/*.safetensors"))


def drop_cache(files: list[Path]) -> bool:
    ok = hasattr(os, "posix_fadvise")
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            if ok:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return ok


# --------------------------------------------------------------------------------------------------
# Workers (fresh processes)


def _peak() -> dict:
    hwm = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "vm_hwm_mb": hwm}


def worker(mode: str, run: Path, out: Path, chunk: int, threads: int | None = None, workers: int | None = None) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    from rlvr_linear import linearity as L
    from rlvr_linear.io.checkpoints import discover

    res: dict = {"mode": mode}
    t0 = time.perf_counter()
    if mode == "read":
        n = 0
        for f in weight_files(run):
            with open(f, "rb", buffering=0) as fh:
                while True:
                    b = fh.read(16 << 20)
                    if not b:
                        break
                    n += len(b)
        res["bytes"] = n
    elif mode == "seed":
        from safetensors.torch import load_file

        traj = discover(run)
        sds = []
        for p in traj.paths:  # the seed: every checkpoint's whole state dict in memory
            sd = {}
            for f in sorted(p.glob("*.safetensors")):
                sd.update(load_file(str(f)))
            sds.append(sd)
        x = np.asarray(traj.steps, dtype=np.float64)
        r2 = []
        for name in L.weight_keys(traj):
            numel = sds[0][name].numel()
            idx = torch.from_numpy(L.sample_indices(numel, L.paper_sample_size(numel), L.tensor_seed(name)))
            y = torch.stack([sd[name].reshape(-1)[idx].to(torch.float64) for sd in sds]).numpy()
            thr = L.default_min_abs_change(sds[0][name].dtype)
            keep = ((y.max(0) - y.min(0)) > thr) & (L.n_unique(y) >= L.MIN_UNIQUE)
            r2.append(L.linear_fit(y[:, keep].T, x).r2)
        np.save(out.with_suffix(".npy"), np.concatenate(r2))
    elif mode in ("ours", "all"):
        res_ = L.analyze_weights(
            discover(run),
            sample="paper" if mode == "ours" else "all",
            chunk=chunk,
            threads=threads,
            workers=None if mode == "ours" else workers,
        )
        s = res_.to_json()
        res.update({"median": s["r2"]["median"], "null_median": s["null"]["median"], "kept": s["counts"]["kept"]})
        res.update({"null_sample": s["counts"]["null_sample"], "null_fraction": s["config"]["null_fraction"]})
        res["sampled"] = s["counts"]["sampled"]
        res["r2_total"], res["r2_counts_sum"] = res_.r2.total, int(res_.r2.counts @ np.arange(res_.r2.bins))
        if mode == "ours":
            np.save(out.with_suffix(".npy"), res_.r2.array())
    res["wall_s"] = time.perf_counter() - t0
    res.update(_peak())
    out.write_text(json.dumps(res))


def run_worker(
    mode: str, run: Path, tmp: Path, chunk: int, warm: bool, threads: int | None = None, workers: int | None = None
) -> dict:
    cold = False if warm else drop_cache(weight_files(run))
    out = tmp / f"{mode}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, __file__, "--worker", mode, "--run", str(run), "--out", str(out), "--chunk", str(chunk)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(out.read_text())
    res["page_cache"] = "dropped" if cold else "warm"
    w, hwm, mx = res["wall_s"], res["vm_hwm_mb"], res["ru_maxrss_mb"]
    print(f"  {mode:5s} {w:7.2f} s   VmHWM {hwm:8.1f} MB   ru_maxrss {mx:8.1f} MB")
    return res


def fastest_read(total: int, runs: dict) -> dict:
    """The fastest full read of the checkpoint files measured in the run, and --all's share of it.

    ``read`` (one file after another, 16 MiB ``read()`` calls) is not always the fastest way this disk delivers the
    files: ``seed`` (``safetensors.load_file``, memory-mapped, then the sampled analysis) also reads every byte, and its
    bytes / wall time (a lower bound of its read rate) has exceeded ``read``'s several times over. The ceiling is the
    faster of the two.
    """
    rates = {m: total / runs[m]["wall_s"] for m in ("read", "seed") if runs.get(m, {}).get("wall_s")}
    mode = max(rates, key=rates.get)
    return {
        "fastest_read_mode": mode,
        "fastest_read_mb_s": rates[mode] / 1e6,
        "all_mode_share_of_fastest_read": (total / runs["all"]["wall_s"]) / rates[mode],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, default=300e6, help="model size (default 3e8)")
    ap.add_argument("--small", action="store_true", help="~20M parameters (runs in < 60 s)")
    ap.add_argument("--steps", type=int, default=14, help="checkpoints (default 14: 0, 100, ..., 1300)")
    ap.add_argument("--shard-mb", type=float, help="shard size in MB (default 200; 16 with --small)")
    ap.add_argument("--chunk", type=int, default=1 << 16, help="elements per chunk for --all (default 2^16)")
    ap.add_argument("--threads", type=int, help="analysis threads for --all (default: the library's, 1)")
    ap.add_argument("--workers", type=int, help="processes for --all (default: the library's, 2 from 50M params)")
    ap.add_argument("--workdir", help="where to write the checkpoints (default: a temp dir, removed after)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--warm", action="store_true", help="do not drop the files from the page cache between runs")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "weight_r2.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.run), Path(args.out), args.chunk, args.threads, args.workers)
        return

    params = 20e6 if args.small else args.params
    shard_mb = args.shard_mb or (16 if args.small else 200)
    shape = llama_shape(params)
    steps = [100 * i for i in range(args.steps)]
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_weight_r2_"))
    run, tmp = base / "run", base / "results"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        print(f"model: {shape['params'] / 1e6:.1f}M params (hidden {shape['hidden']}, {shape['layers']} layers), "
              f"{len(steps)} bf16 checkpoints, {shard_mb:g} MB shards -> {run}")  # fmt: skip
        t0 = time.perf_counter()
        if not (run / "manifest.json").exists():
            build(run, shape, steps, int(shard_mb * 1e6))
        build_s = time.perf_counter() - t0
        files = weight_files(run)
        total = sum(f.stat().st_size for f in files)
        print(f"built in {build_s:.1f} s: {len(files)} files, {total / 1e6:.0f} MB")
        r = {
            m: run_worker(m, run, tmp, args.chunk, args.warm, args.threads, args.workers)
            for m in ("read", "seed", "ours", "all")
        }
        import numpy as np

        a, b = np.load(tmp / "ours.npy"), np.load(tmp / "seed.npy")
        diff = float(np.abs(a - b).max()) if a.shape == b.shape and a.size else None
        same = diff is not None and diff < 1e-12
        read_bw = total / r["read"]["wall_s"]
        all_bw = total / r["all"]["wall_s"]
        base_mb = r["read"]["vm_hwm_mb"]  # same imports, no analysis: the interpreter + torch baseline
        extra = {m: r[m]["vm_hwm_mb"] - base_mb for m in ("seed", "ours", "all")}
        summary = {
            "peak_rss_ratio_seed_over_ours": r["seed"]["vm_hwm_mb"] / r["ours"]["vm_hwm_mb"],
            "baseline_rss_mb": base_mb,
            "peak_rss_above_baseline_mb": extra,
            "peak_rss_above_baseline_ratio_seed_over_ours": extra["seed"] / max(extra["ours"], 1e-9),
            "wall_ratio_seed_over_ours": r["seed"]["wall_s"] / r["ours"]["wall_s"],
            "r2_agree_1e-12": same,
            "r2_max_abs_diff": diff,
            "sequential_read_mb_s": read_bw / 1e6,
            "all_mode_effective_mb_s": all_bw / 1e6,
            "all_mode_share_of_read_bandwidth": all_bw / read_bw,
            "all_mode_params_per_s": r["all"]["sampled"] * len(steps) / r["all"]["wall_s"],
            **fastest_read(total, r),
        }
        result = {
            "benchmark": "weight_r2",
            "size": "small" if args.small else "full",
            "model": shape,
            "checkpoints": len(steps),
            "dtype": "bfloat16",
            "files": len(files),
            "bytes": total,
            "shard_mb": shard_mb,
            "chunk": args.chunk,
            "build_s": build_s,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch_threads": 1},
            "all_mode_threads": args.threads,
            "all_mode_workers": args.workers,
            "runs": r,
            "summary": summary,
        }
        from rlvr_linear.io import write_json

        write_json(args.out, result)
        s = summary
        print(f"peak RSS (VmHWM) seed / ours: {s['peak_rss_ratio_seed_over_ours']:.1f}x "
              f"({r['seed']['vm_hwm_mb']:.0f} MB vs {r['ours']['vm_hwm_mb']:.0f} MB); above the {base_mb:.0f} MB "
              f"import baseline: {extra['seed']:.0f} MB vs {extra['ours']:.0f} MB "
              f"({s['peak_rss_above_baseline_ratio_seed_over_ours']:.1f}x); --all {extra['all']:.0f} MB")  # fmt: skip
        print(f"wall time seed / ours: {s['wall_ratio_seed_over_ours']:.2f}x "
              f"({r['seed']['wall_s']:.1f} s vs {r['ours']['wall_s']:.1f} s); "
              f"same R²: {same} (max |diff| {diff:.1e})")  # fmt: skip
        print(f"--all: {s['all_mode_effective_mb_s']:.0f} MB/s effective vs {s['sequential_read_mb_s']:.0f} MB/s "
              f"sequential read ({100 * s['all_mode_share_of_read_bandwidth']:.0f}%), "
              f"{s['all_mode_params_per_s'] / 1e6:.1f}M values/s")  # fmt: skip
        print(f"--all vs the fastest full read of the same files in this run ({s['fastest_read_mode']}: "
              f"{s['fastest_read_mb_s']:.0f} MB/s): {100 * s['all_mode_share_of_fastest_read']:.0f}%")  # fmt: skip
        print(f"wrote {args.out}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
