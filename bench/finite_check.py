"""Cost of the full NaN / Inf pass in paper-sampling mode (``analyze_weights(check_finite=...)``).

Paper mode reads every tensor whole to gather its 0.1% sample; the finiteness check looks at every element read
(two max-reductions over the bits of each 8 MB piece). This times ``analyze_weights`` with the check on and off,
alternating, on a synthetic bf16 trajectory (default 14 checkpoints x 8.4M parameters, page cache warm), and
writes ``bench/results/finite_check.json``.

    python bench/finite_check.py [--repeats 9] [--checkpoints 14] [--tensors 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from rlvr_linear.io.checkpoints import discover
from rlvr_linear.linearity import analyze_weights

ROOT = Path(__file__).resolve().parent.parent


def make_trajectory(root: Path, T: int, n_tensors: int, side: int = 1024) -> int:
    g = torch.Generator().manual_seed(0)
    w0 = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(side, side, generator=g) for i in range(n_tensors)}
    for t in range(T):
        d = root / f"step_{t * 10:06d}"
        d.mkdir(parents=True)
        sd = {k: (v + 1e-2 * t * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in w0.items()}
        from safetensors.torch import save_file

        save_file(sd, str(d / "model.safetensors"))
        (d / "config.json").write_text("{}")
    return n_tensors * side * side


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--checkpoints", type=int, default=14)
    ap.add_argument("--tensors", type=int, default=8, help="1024 x 1024 bf16 tensors per checkpoint")
    ap.add_argument("-o", "--out", default=str(ROOT / "bench" / "results" / "finite_check.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "traj"
        params = make_trajectory(root, args.checkpoints, args.tensors)
        analyze_weights(discover(str(root)))  # warm the page cache
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for key, check in (("off", False), ("on", True)):
                t0 = time.perf_counter()
                analyze_weights(discover(str(root)), check_finite=check)
                times[key].append(round(time.perf_counter() - t0, 4))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    res = {
        "params_per_checkpoint": params,
        "checkpoints": args.checkpoints,
        "dtype": "bf16",
        "seconds_off": times["off"],
        "seconds_on": times["on"],
        "median_off": med["off"],
        "median_on": med["on"],
        "overhead": round(med["on"] / med["off"] - 1, 4),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"paper mode, {args.checkpoints} x {params:,} bf16: median {med['off']:.3f} s without the finiteness pass, "
          f"{med['on']:.3f} s with it ({100 * res['overhead']:+.1f}%); wrote {out}")  # fmt: skip
    return res


if __name__ == "__main__":
    main()
