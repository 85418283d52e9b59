"""Which tensors an extrapolation moves, and the small parsers of its options (dtype, shard size).

The norm-parameter rule is defined here once; the weight engine (:mod:`.weights`) and the re-grounding jump
(:mod:`rlvr_linear.training.regrounding`) both use it, so that a checkpoint written by ``rlvr-linear extrapolate``
and a jump inside training treat the same tensors as norms.

Parameter policy (paper, §5.1): a tensor whose lower-cased name contains ``layernorm``, ``rmsnorm``, ``norm`` or
``ln_`` is a norm parameter and is **copied from the newest input** unless ``norms="extrapolate"``; non-float
tensors and known buffers are always copied.
"""

from __future__ import annotations

import torch

from ..errors import RlvrLinearError

#: a tensor is a norm parameter when its lower-cased name contains one of these (the seed's rule)
NORM_MARKERS = ("layernorm", "rmsnorm", "ln_", "norm")
#: the two norm policies: copy norms from the newest input (the paper) or move them like the other weights
NORM_POLICIES = ("copy", "extrapolate")
#: float tensors that are buffers, not trainable parameters (copied like the seed's non-trainable keys)
BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "position_ids", ".attn.bias", ".attn.masked_bias")

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def is_norm_param(name: str) -> bool:
    """True for norm parameters by the seed's rule (lower-cased name contains a :data:`NORM_MARKERS` entry)."""
    low = name.lower()
    return any(m in low for m in NORM_MARKERS)


def tensor_policy(name: str, dtype: torch.dtype, norms: str = "copy") -> tuple[str, str]:
    """``("extrapolated" | "copied", reason)`` for one tensor under the paper's rule."""
    if not dtype.is_floating_point:
        return "copied", "non-float tensor"
    if name.endswith(BUFFER_SUFFIXES):
        return "copied", "buffer, not a trainable parameter"
    if is_norm_param(name):
        if norms == "copy":
            return "copied", "norm parameter (paper rule; --norms extrapolate to change)"
        return "extrapolated", "norm parameter (norms='extrapolate')"
    return "extrapolated", "weight"


def check_norms(norms: str) -> None:
    """Refuse a norm policy other than ``"copy"`` or ``"extrapolate"``."""
    if norms not in NORM_POLICIES:
        raise RlvrLinearError(f"norms must be 'copy' or 'extrapolate', got {norms!r}")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"fp16"``/``"fp32"`` (or the torch names, or a ``torch.dtype``) -> ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise RlvrLinearError(f"unknown dtype {dtype!r}; choose bf16, fp16 or fp32")
    return _DTYPES[key]


def parse_size(text: str | int) -> int:
    """``"512MB"``, ``"2GiB"``, ``"100KB"`` or a plain byte count -> bytes (powers of 1024 for every unit)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace("IB", "B")
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "B": 1}
    num, mult = s, 1
    for unit, factor in units.items():
        if s.endswith(unit):
            num, mult = s[: -len(unit)].strip(), factor
            break
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise RlvrLinearError(f"cannot parse size {text!r} (examples: 512MB, 2GB, 1000000)") from None
    if value <= 0:
        raise RlvrLinearError(f"size must be positive, got {text!r}")
    return value
