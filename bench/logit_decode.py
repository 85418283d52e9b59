"""Throughput of extrapolated (two-model) decoding vs single-model HF ``generate``.

Both decode the same left-padded batch greedily for exactly ``--new-tokens`` tokens (EOS disabled),
from random-init Llama models (no hub). Reported: tokens/second of

* ``hf_generate``: one model, ``model.generate(do_sample=False)``;
* ``engine_k1``: our engine with that one model (engine overhead vs HF);
* ``extrapolated_k2``: our engine with two models, ``l = l_a + alpha (l_b - l_a)``.

``ratio = extrapolated_k2 / hf_generate`` (two forward passes per token, so 0.5 is the ceiling when
the forward pass dominates; target >= 0.45).

    OMP_NUM_THREADS=1 python bench/logit_decode.py --small      # ~5M params, < 60 s on 1 CPU thread
    python bench/logit_decode.py                                # ~30M params
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from rlvr_linear.extrapolation.logits import ExtrapolatedGenerator
from rlvr_linear.io import write_json
from rlvr_linear.io.tokenizer import build_char_tokenizer

SIZES = {
    # ~5M params: embeddings 2.1M (tied) + 4 layers x 0.8M
    "small": dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2),  # fmt: skip
    # ~30M params
    "default": dict(vocab_size=16384, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=4),  # fmt: skip
}


def build(size: str, seed: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=512, tie_word_embeddings=True,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device).eval()


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="~5M-param models (quick)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per engine (default 3 small / 5)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "logit_decode.json"))
    args = ap.parse_args()
    size = "small" if args.small else "default"
    repeats = args.repeats or (3 if args.small else 5)
    dev = args.device

    model_a, model_b = build(size, 0, dev), build(size, 1, dev)
    n_params = sum(p.numel() for p in model_a.parameters())
    tok = build_char_tokenizer()  # ids only: prompts are random token ids; the model vocabulary is larger
    g = torch.Generator().manual_seed(0)
    V = SIZES[size]["vocab_size"]
    lens = torch.randint(16, 49, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(4, V, (n,), generator=g).tolist() for n in lens]

    width = max(lens)
    input_ids = torch.zeros((args.batch, width), dtype=torch.long)
    attn = torch.zeros((args.batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    input_ids, attn = input_ids.to(dev), attn.to(dev)
    T = args.new_tokens

    def hf():
        with torch.inference_mode():
            return model_a.generate(input_ids=input_ids, attention_mask=attn, max_new_tokens=T, min_new_tokens=T,
                                    do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True)  # fmt: skip

    one = ExtrapolatedGenerator([model_a], [1.0], tok)
    two = ExtrapolatedGenerator.from_pair(model_a, model_b, 1.5, tok)
    kw = dict(greedy=True, max_new_tokens=T, batch_size=args.batch, eos_token_ids=[])
    engines = {
        "hf_generate": hf,
        "engine_k1": lambda: one.generate_ids(prompts, **kw),
        "extrapolated_k2": lambda: two.generate_ids(prompts, **kw),
    }
    # correctness: our single-model path reproduces HF greedy tokens
    same = one.generate_ids(prompts, **kw).sequences == hf()[:, width:].tolist()
    for fn in engines.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(repeats):  # interleaved, so background load hits every engine alike
        for k, fn in engines.items():
            times[k].append(timed(fn, dev))
    n_tok = args.batch * T
    tps = {k: n_tok / statistics.median(v) for k, v in times.items()}
    ratio = tps["extrapolated_k2"] / tps["hf_generate"]
    res = {
        "size": size,
        "params_per_model": n_params,
        "batch": args.batch,
        "new_tokens": T,
        "prompt_lengths": lens,
        "repeats": repeats,
        "device": dev if not dev.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "engine_k1_matches_hf_tokens": same,
        "ratio_extrapolated_vs_hf": round(ratio, 4),
        "target_ratio": 0.45,
    }
    for k, v in tps.items():
        print(f"{k:16s} {v:9.1f} tok/s  (median of {repeats}: {statistics.median(times[k]):.3f} s)")
    print(f"engine_k1 tokens == HF tokens: {same}")
    print(f"ratio extrapolated(2 models) / HF generate(1 model): {ratio:.3f}  (target >= 0.45, limit 0.5)")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
