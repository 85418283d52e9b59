"""TRL on CPU: let TRL's fused LM head score only the positions that have a label (the completion tokens).

Why: TRL 1.16's fused LM head (``trl.trainer.utils.add_fused_lm_head``, used by ``GRPOTrainer`` for log-probs and
entropies) asks ``_use_triton(device)`` whether to project only the labelled positions ("compact") or every position
of the batch. Off CUDA/XPU it projects every position, to keep tile shapes fixed for compiled backends such as
Neuron. On CPU nothing is compiled, and in a GRPO batch most positions are prompt: SmolLM2's 64 sequences of ~115
tokens hold ~2,200 completion tokens among ~7,400 positions, so the 49,152-wide head, its log-softmax and the entropy
run on 3.3x the rows they need (the cost is measured in docs/smollm2.md). Inside :func:`compact_fused_lm_head` the
compact choice is made on CPU too; TRL's kernel choice (``trl.kernels.chunked_logprob._use_triton``) is untouched,
and the labelled positions get the same log-probs and entropies (up to the last bits of fp32 matmul blocking).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def compact_fused_lm_head(enabled: bool = True) -> Iterator[bool]:
    """While active, TRL's fused LM head projects only labelled positions on CPU; yields whether it is patched."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # no TRL: nothing to patch
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:  # another TRL version: leave it alone
        yield False
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield True
    finally:
        trl_utils._use_triton = original
