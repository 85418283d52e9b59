"""The safetensors header as this package reads it itself (framing checks, positioned row reads): parsed, validated.

A file is ``n`` (8 bytes, little endian), ``n`` bytes of UTF-8 JSON, then the data. The JSON object maps each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (byte offsets into the data) and may hold
``"__metadata__"`` (strings to strings). :func:`parse_header` accepts a header only when it describes a consistent
file: known dtypes, shapes of non-negative integers, each tensor's bytes exactly its shape times its dtype's size,
and the tensors covering the data end to end without gaps or overlaps. Anything else is a ``ValueError`` with one
line saying what is wrong (the callers add the file's name).
"""

from __future__ import annotations

import json
import math

#: safetensors' own limit on the header's size
MAX_HEADER_BYTES = 100_000_000

#: bits per element of each safetensors dtype code
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "I64": 64, "U64": 64,
    "F64": 64,
}  # fmt: skip


def header_length(head: bytes, file_size: int) -> int:
    """The header's byte count ``n`` from the file's first 8 bytes (``head``), checked against the file's size."""
    if len(head) < 8:
        raise ValueError(f"empty or truncated safetensors file ({file_size} bytes, no header)")
    n = int.from_bytes(head[:8], "little")
    if n > file_size - 8:
        raise ValueError(
            f"truncated safetensors file (the header says {n} bytes of metadata, the file has {file_size})"
        )
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"not a safetensors file (a header of {n} bytes, over the {MAX_HEADER_BYTES} allowed)")
    return n


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _tensor_bytes(name: str, info: object) -> tuple[int, int]:
    """``(begin, end)`` of one tensor's data, after checking its entry; ValueError naming the tensor."""
    if not isinstance(info, dict):
        raise ValueError(f"tensor {name!r}: its entry is not a JSON object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ValueError(f"tensor {name!r}: unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"tensor {name!r}: the shape is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise ValueError(f"tensor {name!r}: data_offsets is not a pair of integers")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if not 0 <= begin <= end or bits % 8 or bits // 8 != end - begin:
        raise ValueError(f"tensor {name!r}: data_offsets {offsets} do not hold a {dtype} tensor of shape {shape}")
    return begin, end


def parse_header(raw: bytes, file_size: int) -> dict:
    """The header (a dict, as in the file) from its ``raw`` bytes, validated against the file's size."""
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ValueError(f"not a safetensors file (unreadable header: {reason})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (the header is not a JSON object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("not a safetensors file (__metadata__ is not a map of strings)")
    spans = sorted((*_tensor_bytes(k, v), k) for k, v in header.items() if k != "__metadata__")
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(f"not a safetensors file (tensor {name!r} starts at byte {begin} of the data, not {pos})")
        pos = end
    need = 8 + len(raw) + pos
    if need != file_size:
        how = "truncated" if need > file_size else "has trailing bytes"
        raise ValueError(f"{how} safetensors file (its tensors need {need} bytes, the file has {file_size})")
    return header
