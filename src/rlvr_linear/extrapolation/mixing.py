"""The logit-mixing formulas of output-space extrapolation, the filters and the sampler, and the compatibility
checks of the models that are mixed. The decoder that runs them is :mod:`.logits`.

K causal LMs that share one tokenizer run in lockstep, each with its own KV cache. At every step
the next-token logits are mixed,

    l_mix = sum_i w_i * l_i                      (K checkpoints, weights w)
    l_mix = (1 - alpha) * l_a + alpha * l_b      (two checkpoints a, b: weights [1 - alpha, alpha])
          = l_a + alpha * (l_b - l_a),

then divided by the temperature, filtered by top-k and top-p (the top token is always kept) and
sampled (or the argmax is taken); the chosen token is fed to every model. This is paper §4.1.

alpha conventions, side by side (checkpoints at steps a < b, target step T)
-------------------------------------------------------------------------

===========================  ===============================================  =======================
convention                   formula                                          relation to paper alpha
===========================  ===============================================  =======================
paper (this package)         W = W_a + alpha (W_b - W_a), l = l_a + alpha      alpha = (T - a)/(b - a)
                             (l_b - l_a); alpha = 0 -> a, alpha = 1 -> b
ExPO (Zheng et al.)          theta = theta_b + alpha_ExPO (theta_b - theta_a)  alpha_ExPO = alpha - 1
proxy-tuning / DExperts      l = l_base + c (l_expert - l_anti)               c = alpha - 1, with
                                                                              base = expert = b,
                                                                              anti-expert = a
===========================  ===============================================  =======================

E.g. the paper's run (a = 200, b = 1400, T = 2000) has alpha = 1.5, ExPO alpha 0.5, DExperts c = 0.5.

Mixing logits or log-probs gives the same distribution: log p_i = l_i - LSE(l_i), so
sum_i w_i log p_i = l_mix - sum_i w_i LSE(l_i) differs from l_mix by one constant per position,
which ``log_softmax`` (and the temperature division) removes. This holds for every alpha, including
alpha > 1 and negative weights. :func:`mix_logits` therefore accepts either.

Sampling (:func:`_sample_rows`) is inverse-CDF sampling of the filtered distribution with uniforms that the
decoder draws per row from a generator seeded by :func:`_row_seed`, so that a row's tokens do not depend on the
batch it is decoded in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RlvrLinearError

# --------------------------------------------------------------------------------------------------
# Formulas


def pair_weights(alpha: float) -> list[float]:
    """Weights ``[1 - alpha, alpha]`` of checkpoints (a, b): ``l = l_a + alpha (l_b - l_a)``."""
    return [1.0 - float(alpha), float(alpha)]


def mix_logits(logits_list: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_i w_i * logits_i`` in float32 (a new tensor); log-probs may be passed instead of logits.

    The sum is formed as ``w_0 l_0 + w_1 l_1 + ...`` so that one-hot weights reproduce a model's
    logits exactly (``0 * l_a + 1 * l_b == l_b`` bit for bit).
    """
    if len(logits_list) != len(weights) or not logits_list:
        raise RlvrLinearError(f"got {len(logits_list)} logit tensors for {len(weights)} weights")
    first = logits_list[0]
    out = torch.mul(first.float() if first.dtype != torch.float32 else first, float(weights[0]))
    for lg, w in zip(logits_list[1:], weights[1:]):
        if lg.shape != first.shape:
            raise RlvrLinearError(f"logit shapes differ: {tuple(first.shape)} vs {tuple(lg.shape)}")
        out.add_(lg.to(device=out.device, dtype=torch.float32), alpha=float(w))
    return out


def filter_logits(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering of ``scores`` (..., V); removed entries become ``-inf``.

    Top-p keeps the smallest set of most likely tokens whose probability (renormalised after top-k)
    reaches ``top_p``; the most likely token is always kept. Returns a new tensor.
    """
    _check_filters(top_k, top_p)
    scores = scores.clone()
    vocab = scores.shape[-1]
    if top_k and top_k < vocab:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores.masked_fill_(scores < kth, float("-inf"))
    if top_p < 1.0:
        sp, si = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sp, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
        remove = before >= top_p
        remove[..., 0] = False
        scores.scatter_(-1, si, sp.masked_fill(remove, float("-inf")))
    return scores


def mixed_log_probs(
    logits_list: Sequence[torch.Tensor],
    weights: Sequence[float],
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """The sampling distribution (log-probs, ``-inf`` where filtered) for the given per-model logits.

    ``log_softmax(filter(mix_logits(logits, w) / temperature))``: exactly what the decoder samples from.
    """
    mixed = mix_logits(logits_list, weights)
    if temperature <= 0:
        raise RlvrLinearError("temperature must be > 0 for a distribution (use greedy decoding for T = 0)")
    mixed.div_(temperature)
    return torch.log_softmax(filter_logits(mixed, top_k, top_p), dim=-1)


def _check_filters(top_k: int, top_p: float) -> None:
    if top_k < 0:
        raise RlvrLinearError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise RlvrLinearError(f"top_p must be in (0, 1], got {top_p}")


def _sample_rows(scores: torch.Tensor, u: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Draw one token per row of ``scores`` (B, V; already divided by temperature) by inverse CDF.

    ``u`` (B,) are uniforms in [0, 1). Equivalent to sampling from ``softmax(filter_logits(scores))``,
    but works on the sorted probabilities, where the kept set is a prefix, so nothing is scattered back.
    """
    probs = torch.softmax(scores, dim=-1)
    vocab = probs.shape[-1]
    if (top_k and top_k < vocab) or top_p < 1.0:
        sp, si = torch.sort(probs, dim=-1, descending=True)
        cum = sp.cumsum(-1)
        n_keep = torch.full((probs.shape[0],), vocab, dtype=torch.long, device=probs.device)
        if top_k and top_k < vocab:
            n_keep.fill_(top_k)
        if top_p < 1.0:
            # top-p on the top-k renormalised distribution: mass before a token < top_p * kept mass
            kept_mass = cum.gather(1, (n_keep - 1)[:, None])
            n_p = ((cum - sp) < top_p * kept_mass).sum(-1).clamp_(min=1)
            n_keep = torch.minimum(n_keep, n_p)
        total = cum.gather(1, (n_keep - 1)[:, None])
        j = torch.searchsorted(cum, u[:, None] * total, right=True).squeeze(1)
        j = torch.minimum(j, n_keep - 1)
        return si.gather(1, j[:, None]).squeeze(1)
    cum = probs.cumsum(-1)
    j = torch.searchsorted(cum, u[:, None] * cum[:, -1:], right=True).squeeze(1)
    return j.clamp_(max=vocab - 1)


# --------------------------------------------------------------------------------------------------
# Compatibility checks


def _vocab_size(model) -> int | None:
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return getattr(cfg, "vocab_size", None)


def check_vocab(models: Sequence) -> int:
    """All models must have the same ``config.vocab_size`` and output-embedding size; returns it."""
    sizes = []
    for m in models:
        out = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
        n_out = out.weight.shape[0] if out is not None and hasattr(out, "weight") else None
        sizes.append((_vocab_size(m), n_out))
    for i, s in enumerate(sizes[1:], 1):
        if s != sizes[0]:
            raise RlvrLinearError(
                f"vocabulary size mismatch: model 0 has vocab_size={sizes[0][0]} (logits {sizes[0][1]}), "
                f"model {i} has vocab_size={s[0]} (logits {s[1]}); logit extrapolation needs one shared vocabulary"
            )
    return sizes[0][1] or sizes[0][0] or 0


def check_tokenizers(tokenizers: Sequence) -> None:
    """All tokenizers must map the same strings to the same ids (``get_vocab()``) and agree on special tokens."""
    ref = tokenizers[0].get_vocab()
    for i, tok in enumerate(tokenizers[1:], 1):
        v = tok.get_vocab()
        if v != ref:
            diff = sorted(set(v.items()) ^ set(ref.items()), key=str)[:3]
            raise RlvrLinearError(
                f"tokenizer mismatch: tokenizer {i} differs from tokenizer 0 ({len(v)} vs {len(ref)} entries; "
                f"e.g. {diff}); logit extrapolation needs one shared tokenizer"
            )
        for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if getattr(tok, attr, None) != getattr(tokenizers[0], attr, None):
                raise RlvrLinearError(
                    f"tokenizer mismatch: {attr} is {getattr(tok, attr, None)} in tokenizer {i} "
                    f"but {getattr(tokenizers[0], attr, None)} in tokenizer 0"
                )


def _row_seed(seed: int, row: int) -> int:
    """Seed of row ``row``'s generator: a fixed 63-bit mix of (seed, row)."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(row) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % (1 << 64)
    x ^= x >> 32
    return x & ((1 << 63) - 1)
