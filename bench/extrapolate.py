"""Benchmark: streaming weight extrapolation vs the seed's whole-model approach (peak RSS, time, bit-identity).

A random bf16 Llama-like model is saved twice (A, and B = A + noise). Each method then runs in a fresh
subprocess (peak RSS = ``ru_maxrss`` of that process):

* ``ours``: :func:`rlvr_linear.extrapolation.weights.extrapolate_two_point` (one tensor at a time);
* ``seed``: the seed repo's ``acceleration/weight_extrapolation.py`` logic - both checkpoints loaded in fp32
  through ``AutoModelForCausalLM.from_pretrained``, ``w0 + alpha * (wt - w0)`` on the state dict for trainable
  non-norm parameters (norms / non-trainable keys copied from B), cast to bf16, loaded into the bf16 base
  model and written with ``save_pretrained``.

Then the two outputs are compared tensor by tensor (bitwise), and our peak RSS is checked against the target
``3 x largest tensor (fp32) + 1 GB``. Results go to ``bench/results/extrapolate.json``.

    OMP_NUM_THREADS=1 python bench/extrapolate.py --small          # ~30M params, < 60 s
    OMP_NUM_THREADS=1 python bench/extrapolate.py                  # ~500M params (default)
    OMP_NUM_THREADS=1 python bench/extrapolate.py --params 1.5e9
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

HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------------------------------------------
# child processes (``python bench/extrapolate.py --child '{"kind": ..., ...}'``); each prints one JSON line


def child_ours(a: str, b: str, out: str, alpha: float) -> dict:
    import torch

    from rlvr_linear.extrapolation.weights import extrapolate_two_point

    torch.set_num_threads(1)
    base_rss = _vmrss_mb()
    t0 = time.perf_counter()
    extrapolate_two_point(a, b, out, alpha=alpha, progress=False)
    secs = time.perf_counter() - t0
    return {"seconds": secs, **_memory(base_rss)}


def child_seed(a: str, b: str, out: str, alpha: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rlvr_linear.io.tokenizer import load_tokenizer

    torch.set_num_threads(1)
    norm_markers = ["layernorm", "rmsnorm", "ln_", "norm"]
    base_rss = _vmrss_mb()
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(a, dtype=torch.float32)
    second = AutoModelForCausalLM.from_pretrained(b, dtype=torch.float32)
    sd_b = second.state_dict()
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    merged = {}
    with torch.no_grad():
        for k, w0 in base.state_dict().items():
            if k not in sd_b:
                merged[k] = w0.to(torch.bfloat16)
            elif k in trainable and not any(m in k.lower() for m in norm_markers):
                merged[k] = (w0 + alpha * (sd_b[k] - w0)).to(torch.bfloat16)
            else:
                merged[k] = sd_b[k].to(torch.bfloat16)
    del second, sd_b
    base = base.to(torch.bfloat16)
    base.load_state_dict(merged)
    base.save_pretrained(out)
    load_tokenizer(b).save_pretrained(out)
    secs = time.perf_counter() - t0
    return {"seconds": secs, **_memory(base_rss)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _vmrss_mb() -> float:
    return _status_mb("VmRSS")


def _memory(base_rss: float) -> dict:
    """Peak RSS two ways. ``ru_maxrss`` survives execve on Linux, so it is only clean because the parent
    process stays small (it never imports torch); ``VmHWM`` is per address space and is the cross-check."""
    import resource

    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mb": _status_mb("VmHWM"),
        "rss_after_imports_mb": base_rss,
    }


def child_make(root: str, params: float, small: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    a, b, info = make_pair(llama_config(params, small), Path(root))
    return {**info, "a": str(a), "b": str(b), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------------------
# parent


def llama_config(params: float, small: bool):
    from transformers import LlamaConfig

    if small:  # ~31M: embeddings dominate, like real models at scale
        dims = dict(hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2)
        layers = 4
    else:
        dims = dict(hidden_size=1280, intermediate_size=3456, num_attention_heads=20, num_key_value_heads=4)
        h, i, kv = 1280, 3456, 4 * 64
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
        layers = max(1, round((params - 2 * 32000 * h) / per_layer))
    return LlamaConfig(
        vocab_size=32000,
        num_hidden_layers=layers,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **dims,
    )


def make_pair(cfg, root: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """Random bf16 model A and B = A + noise, written with safetensors (generated tensor by tensor)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    from rlvr_linear.io.tokenizer import build_char_tokenizer, save_char_tokenizer

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd_a, sd_b = {}, {}
    for k, shape in shapes.items():
        if "norm" in k:
            w = 1.0 + 0.05 * torch.randn(shape, generator=g)
        else:
            w = 0.02 * torch.randn(shape, generator=g)
        sd_a[k] = w.to(torch.bfloat16)
        sd_b[k] = (w + 1e-3 * torch.randn(shape, generator=g)).to(torch.bfloat16)
        del w
    tok = build_char_tokenizer()
    paths = []
    for name, sd in (("step_000000", sd_a), ("step_001400", sd_b)):
        d = root / name
        d.mkdir(parents=True)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        cfg.dtype = "bfloat16"
        cfg.save_pretrained(d)
        save_char_tokenizer(tok, d)
        paths.append(d)
    n = sum(int(torch.Size(s).numel()) for s in shapes.values())
    largest = max(shapes, key=lambda k: torch.Size(shapes[k]).numel())
    info = {
        "params": n,
        "tensors": len(shapes),
        "largest_tensor": largest,
        "largest_tensor_numel": int(torch.Size(shapes[largest]).numel()),
        "checkpoint_bytes": (paths[0] / "model.safetensors").stat().st_size,
    }
    return paths[0], paths[1], info


def run_child(spec: dict) -> dict:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{spec['kind']} child failed with status {proc.returncode}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_seconds"] = wall
    return res


def child_compare(out_a: str, out_b: str) -> dict:
    import torch

    from rlvr_linear.io.checkpoints import TensorReader

    ra, rb = TensorReader(out_a), TensorReader(out_b)
    ka, kb = set(ra.keys()), set(rb.keys())
    mismatched = []
    for k in sorted(ka & kb):
        x, y = ra.get(k), rb.get(k)
        same = x.dtype == y.dtype and x.shape == y.shape
        if same:
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(x.element_size())
            same = torch.equal(x.view(bits), y.view(bits)) if bits else torch.equal(x, y)
        if not same:
            mismatched.append(k)
    return {
        "keys_only_in_ours": sorted(ka - kb),
        "keys_only_in_seed": sorted(kb - ka),
        "tensors_compared": len(ka & kb),
        "tensors_differing": mismatched,
        "bit_identical": not mismatched and ka == kb,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="~30M-parameter model (runs in well under a minute)")
    ap.add_argument("--params", type=float, default=5e8, help="approximate parameter count (default 5e8)")
    ap.add_argument("--alpha", type=float, default=2000 / 1400, help="alpha (default 2000/1400, the seed's)")
    ap.add_argument("--workdir", help="where to write the checkpoints (default: a temp dir, removed at the end)")
    ap.add_argument("--out", default=str(HERE / "results" / "extrapolate.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:  # every heavy step runs in its own process, so the parent stays tiny (see run_child)
        spec = json.loads(args.child)
        fn = {"make": child_make, "ours": child_ours, "seed": child_seed, "compare": child_compare}[spec.pop("kind")]
        print(json.dumps(fn(**spec)))
        return 0

    from rlvr_linear.io import write_json

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="rlvr_bench_extrap_"))
    try:
        t0 = time.perf_counter()
        info = run_child({"kind": "make", "root": str(work / "run"), "params": args.params, "small": args.small})
        a, b = Path(info["a"]), Path(info["b"])
        print(
            f"model: {info['params'] / 1e6:.1f}M params, {info['tensors']} tensors, "
            f"checkpoint {info['checkpoint_bytes'] / 2**20:.0f} MiB, largest {info['largest_tensor']} "
            f"({info['largest_tensor_numel'] / 1e6:.1f}M); built in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        results = {}
        for kind in ("ours", "seed"):
            spec = {"kind": kind, "a": str(a), "b": str(b), "out": str(work / f"out_{kind}"), "alpha": args.alpha}
            results[kind] = r = run_child(spec)
            print(
                f"{kind:>5}: {r['seconds']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MiB (VmHWM {r['vmhwm_mb']:.0f} MiB; "
                f"after imports {r['rss_after_imports_mb']:.0f} MiB)",
                flush=True,
            )
        cmp = run_child({"kind": "compare", "out_a": str(work / "out_ours"), "out_b": str(work / "out_seed")})
        target_mb = 3 * info["largest_tensor_numel"] * 4 / 2**20 + 1024
        ours, seed = results["ours"], results["seed"]
        summary = {
            "peak_rss_ratio_seed_over_ours": seed["peak_rss_mb"] / ours["peak_rss_mb"],
            "time_ratio_seed_over_ours": seed["seconds"] / ours["seconds"],
            "ours_peak_rss_mb": ours["peak_rss_mb"],
            "ours_peak_above_imports_mb": ours["peak_rss_mb"] - ours["rss_after_imports_mb"],
            "seed_peak_above_imports_mb": seed["peak_rss_mb"] - seed["rss_after_imports_mb"],
            "target_rss_mb": target_mb,
            "within_target": ours["peak_rss_mb"] <= target_mb,
            "bit_identical": cmp["bit_identical"],
        }
        print(
            f"peak RSS above the import baseline: ours {summary['ours_peak_above_imports_mb']:.0f} MiB, "
            f"seed {summary['seed_peak_above_imports_mb']:.0f} MiB"
        )
        print(
            f"peak RSS: seed/ours = {summary['peak_rss_ratio_seed_over_ours']:.2f}x; "
            f"time: seed/ours = {summary['time_ratio_seed_over_ours']:.2f}x"
        )
        print(
            f"ours peak RSS {ours['peak_rss_mb']:.0f} MiB vs target 3 x largest fp32 tensor + 1 GiB = "
            f"{target_mb:.0f} MiB: {'OK' if summary['within_target'] else 'OVER'}"
        )
        print(
            f"outputs bit-identical tensor by tensor: {cmp['bit_identical']} ({cmp['tensors_compared']} tensors"
            + (f", differing: {cmp['tensors_differing'][:5]}" if cmp["tensors_differing"] else "")
            + ")"
        )
        write_json(
            args.out,
            {
                "benchmark": "weight extrapolation, streaming (ours) vs seed (two fp32 models via from_pretrained)",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "small": args.small,
                "alpha": args.alpha,
                "model": info,
                "results": results,
                "comparison": cmp,
                "summary": summary,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "torch": info["torch"],
                    "python": platform.python_version(),
                    "threads": 1,
                },
            },
        )
        print(f"wrote {args.out}")
        return 0 if cmp["bit_identical"] else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
