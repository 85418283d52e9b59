"""Weight-space extrapolation: predict a future checkpoint from observed ones, tensor by tensor.

Three predictors, all streamed one tensor at a time (no checkpoint is ever loaded whole):

* **two-point** (the paper, §5.1): ``W = W_a + alpha * (W_b - W_a)`` with ``alpha = (T - a) / (b - a)``.
  ``alpha = 1`` gives B, ``alpha = 0`` gives A, ``alpha > 1`` extrapolates. Convention mapping:
  ExPO's alpha and the proxy-tuning coefficient are ``alpha - 1``; mergekit ``task_arithmetic`` with
  ``base_model: A`` and ``weight: alpha`` (``normalize: false``) computes the same formula.
* **least squares** over the selected checkpoints ``(s_i, W_i)``: per parameter, the line
  ``y = c + m s`` fitted to all points, evaluated at the target ``tau``. Closed form: the prediction is
  a fixed linear combination of the checkpoints (one row of the hat matrix)

      W(tau) = sum_i w_i W_i,   w_i = 1/T + (tau - s_mean) (s_i - s_mean) / sum_j (s_j - s_mean)^2,

  with ``sum_i w_i = 1``. It is computed as ``W_first + sum_i w_i (W_i - W_first)`` to avoid cancellation;
  with two checkpoints it is exactly the two-point rule.
* **rank-R trajectory** (RELEX-style, arXiv 2605.21468), per tensor with ndim >= 2: stack the deltas
  ``D = [W_t - W_first]_t`` (T x n, the first row is zero), take the top-R SVD ``D ~ C V`` through the
  T x T Gram matrix ``G = D D^T = U S^2 U^T`` (``C = U_R S_R``, ``V = S_R^-1 U_R^T D``), fit every
  coefficient column of ``C`` linearly over the steps and predict ``W = W_first + C(tau) V``. Since the
  linear fit is the hat row ``w`` above, ``C(tau) = C^T w`` and the prediction collapses to

      W(tau) = W_first + (U_R U_R^T w)^T D,

  i.e. the least-squares weights projected onto the top-R left singular vectors (no division by
  singular values, no sign ambiguity). 1-D tensors (biases, norms) use the plain least-squares line.
  What holds: for ``R >= rank(D)`` (``R >= T - 1`` always suffices because the first row of D is zero) the
  projector acts as the identity on the part of ``w`` that ``D^T`` sees, so rank-R equals the plain
  least-squares fit exactly - the intercept does not break this because a fit with intercept is still
  linear in the data. For smaller R it filters the directions in which the trajectory is not low-rank.
  (Unlike RELEX we include the first checkpoint, with coefficient 0, as a point of the coefficient fit.)

Parameter policy (paper, §5.1): a tensor whose lower-cased name contains ``layernorm``, ``rmsnorm``,
``norm`` or ``ln_`` is a norm parameter and is **copied from the newest input** (B, or the last selected
checkpoint) unless ``norms="extrapolate"``; non-float tensors and known buffers are always copied from it.
Arithmetic is fp32; each result is cast to the newest input's dtype for that tensor (or ``dtype``).

Memory: about three fp32 copies of the largest tensor plus one output shard buffer
(``max_shard_bytes``, 512 MiB by default). Readers are closed after every tensor so that memory-mapped
pages of the inputs do not accumulate in the resident set.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .checkpoints import (
    ShardedWriter,
    TensorReader,
    Trajectory,
    check_distinct,
    copy_model_files,
    discover,
    find_model_dir,
    step_of_path,
)
from .errors import RlvrLinearError
from .io import atomic_dir, read_json, write_json

#: a tensor is a norm parameter when its lower-cased name contains one of these (the seed's rule)
NORM_MARKERS = ("layernorm", "rmsnorm", "ln_", "norm")
#: float tensors that are buffers, not trainable parameters (copied like the seed's non-trainable keys)
BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "position_ids", ".attn.bias", ".attn.masked_bias")
#: alphas outside (0, MAX_ALPHA] are refused unless ``force``
MAX_ALPHA = 20.0
#: default output shard size: small, because one shard is buffered in memory before it is written
DEFAULT_SHARD_BYTES = 512 * 1024**2
#: elements per chunk when streaming the Gram matrix of a large tensor (rank-R)
GRAM_CHUNK = 1 << 22
#: config fields that must agree between inputs
ARCH_FIELDS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)
METADATA_FILE = "extrapolation.json"

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


# --------------------------------------------------------------------------------------------------
# Small helpers


def alpha_from_steps(base_step: float, second_step: float, target_step: float) -> float:
    """``alpha = (T - a) / (b - a)``: the two-point coefficient that reaches step T from steps a and b."""
    if second_step == base_step:
        raise RlvrLinearError(
            f"base step and second step are both {base_step}; extrapolation needs two different steps"
        )
    return (target_step - base_step) / (second_step - base_step)


def target_from_alpha(base_step: float, second_step: float, alpha: float) -> float:
    """``T = a + alpha * (b - a)``: the step that ``alpha`` reaches from steps a and b (inverse of alpha_from_steps)."""
    return base_step + alpha * (second_step - base_step)


def is_norm_param(name: str) -> bool:
    """True for norm parameters by the seed's rule (lower-cased name contains a :data:`NORM_MARKERS` entry)."""
    low = name.lower()
    return any(m in low for m in NORM_MARKERS)


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


#: kept for callers of the old name
step_from_path = step_of_path


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


def least_squares_weights(steps: Sequence[float], target: float) -> np.ndarray:
    """Hat-matrix row ``w`` with ``sum_i w_i y_i`` = least-squares line through ``(steps, y)`` at ``target``."""
    s = np.asarray(steps, dtype=np.float64)
    if len(s) < 2:
        raise RlvrLinearError(f"a least-squares line needs at least 2 checkpoints, got {len(s)}")
    c = s - s.mean()
    sxx = float(c @ c)
    if sxx == 0.0:
        raise RlvrLinearError(f"all checkpoints have the same step {s[0]:g}; cannot fit a line")
    return 1.0 / len(s) + (target - s.mean()) * c / sxx


def fit_line(steps: Sequence[float], values: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised least squares for ``values`` of shape (T, n): returns ``(slope, intercept)``, each (n,)."""
    s = np.asarray(steps, dtype=np.float64)
    y = values.double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=np.float64)
    c = s - s.mean()
    sxx = float(c @ c)
    if sxx == 0.0:
        raise RlvrLinearError("all checkpoints have the same step; cannot fit a line")
    slope = (c @ y) / sxx
    return slope, y.mean(0) - slope * s.mean()


def _check_alpha(alpha: float, force: bool, what: str = "alpha") -> None:
    if not math.isfinite(alpha):
        raise RlvrLinearError(f"{what} must be a finite number, got {alpha}")
    if (alpha <= 0 or alpha > MAX_ALPHA) and not force:
        raise RlvrLinearError(
            f"{what}={alpha:g} is outside (0, {MAX_ALPHA:g}]; alpha <= 0 goes back past the base checkpoint and "
            f"large alphas usually break the model (paper Fig. 5 peaks at alpha 1.3-3); pass --force to allow it"
        )


def _label(role: str, path: Path, step: int | float | None) -> str:
    return f"{role}{'' if step is None else f' (step {step:g})'} at {path}"


def _check_compatible(readers: Sequence[TensorReader], labels: Sequence[str]) -> None:
    """Same tensor names, shapes and architecture in every input; errors name the offending key/field."""
    ref, ref_label = readers[-1], labels[-1]
    ref_keys = ref.keys()
    ref_set = set(ref_keys)
    ref_cfg = ref.config()
    for r, label in zip(readers[:-1], labels[:-1]):
        cfg = r.config()
        for f in ARCH_FIELDS:
            if f in cfg and f in ref_cfg and cfg[f] != ref_cfg[f]:
                raise RlvrLinearError(
                    f"architecture mismatch: config {f} is {cfg[f]!r} in the {label} but {ref_cfg[f]!r} in the "
                    f"{ref_label}"
                )
        keys = set(r.keys())
        only_here = [k for k in r.keys() if k not in ref_set]
        only_ref = [k for k in ref_keys if k not in keys]
        if only_here or only_ref:
            parts = []
            if only_ref:
                parts.append(f"tensor {only_ref[0]!r} is in the {ref_label} but not in the {label}")
            if only_here:
                parts.append(f"tensor {only_here[0]!r} is in the {label} but not in the {ref_label}")
            n = len(only_here) + len(only_ref)
            more = f" ({n} mismatched names in all)" if n > 1 else ""
            raise RlvrLinearError("mismatched tensors: " + "; ".join(parts) + more)
        for k in ref_keys:
            if r.shape(k) != ref.shape(k):
                raise RlvrLinearError(
                    f"shape mismatch for tensor {k!r}: {list(r.shape(k))} in the {label} but {list(ref.shape(k))} "
                    f"in the {ref_label}"
                )


def _release(readers: Sequence[TensorReader]) -> None:
    """Drop memory-mapped safetensors handles so touched pages leave the resident set (cheap to reopen)."""
    for r in readers:
        if r.kind == "safetensors":
            r.close()


def _patch_config_dtype(model_dir: Path, dtype: torch.dtype) -> None:
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        return
    cfg = read_json(cfg_path)
    name = str(dtype).removeprefix("torch.")
    cfg["dtype"] = name
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = name
    write_json(cfg_path, cfg)


# --------------------------------------------------------------------------------------------------
# The streaming engine


@dataclass
class _Job:
    """One extrapolation: inputs (oldest first; the last one is the source of copies) and how to combine them."""

    readers: list[TensorReader]
    labels: list[str]
    #: coefficients c_i (i >= 1) of ``W = W_0 + sum_i c_i (W_i - W_0)`` for one tensor, plus extra log fields
    coefficients: Callable[[str], tuple[list[float], dict]]
    norms: str
    dtype: torch.dtype | None
    meta: dict
    max_shard_bytes: int
    progress: bool
    desc: str = "extrapolate"


def _combine(readers: Sequence[TensorReader], name: str, coefs: Sequence[float]) -> torch.Tensor:
    """``W_0 + sum_i c_i (W_i - W_0)`` in fp32; for two inputs exactly ``w0 + alpha * (w1 - w0)``."""
    w0 = readers[0].get(name).to(torch.float32, copy=True)
    acc: torch.Tensor | None = None
    for r, c in zip(readers[1:], coefs):
        d = r.get(name).to(torch.float32, copy=True)
        d.sub_(w0).mul_(float(c))
        acc = d if acc is None else acc.add_(d)
        del d
    if acc is None:
        return w0
    return acc.add_(w0)


#: tokenizer files of an HF model directory (replaced together, never mixed from two sources)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")  # fmt: skip


def keep_char_tokenizer(inputs: Sequence[Path], out: Path) -> None:
    """Keep our char tokenizer in ``out`` when the newest input lost its marker file.

    A trainer (TRL, verl) saves the tokenizer it loaded: reloaded through ``AutoTokenizer`` our char tokenizer
    becomes a ``Qwen2Tokenizer`` that drops whitespace, and is saved without the marker. If ``out`` (copied from
    the newest input) lacks the marker but an older input (the base, the anchor) has it, every tokenizer file is
    taken from that input instead.
    """
    from .tokenizer import MARKER

    if (out / MARKER).exists():
        return
    for d in inputs:
        if (Path(d) / MARKER).exists():
            for name in (*TOKENIZER_FILES, MARKER):
                (out / name).unlink(missing_ok=True)
                if (Path(d) / name).exists():
                    shutil.copyfile(Path(d) / name, out / name)
            return


def _run(job: _Job, out: str | Path, overwrite: bool) -> Path:
    from . import __version__

    src = job.readers[-1]
    keys = src.keys()
    tensors: dict[str, dict] = {}
    t0 = time.time()
    from .threads import for_params

    for_params(sum(src.numel(k) for k in keys))  # all cores for a large model unless --threads / OMP_NUM_THREADS
    with atomic_dir(out, overwrite) as tmp:
        copy_model_files(src.path, tmp)
        keep_char_tokenizer([r.path for r in job.readers], tmp)
        if job.dtype is not None:
            _patch_config_dtype(tmp, job.dtype)
        writer = ShardedWriter(tmp, job.max_shard_bytes)
        for name in tqdm(keys, desc=job.desc, unit="tensor", disable=not job.progress):
            src_dtype = src.dtype(name)
            policy, reason = tensor_policy(name, src_dtype, job.norms)
            out_dtype = job.dtype if (job.dtype is not None and src_dtype.is_floating_point) else src_dtype
            entry: dict[str, Any] = {"policy": policy, "reason": reason, "shape": list(src.shape(name))}
            if policy == "copied":
                t = src.get(name).to(out_dtype, copy=True)
            else:
                coefs, extra = job.coefficients(name)
                entry.update(extra)
                t32 = _combine(job.readers, name, coefs)
                if not torch.isfinite(t32).all():
                    raise RlvrLinearError(
                        f"tensor {name!r}: extrapolation produced NaN/Inf values (check the inputs for non-finite "
                        "values, or use a smaller alpha)"
                    )
                t = t32.to(out_dtype)
                del t32
                if not torch.isfinite(t).all():
                    raise RlvrLinearError(
                        f"tensor {name!r}: values overflow {str(out_dtype).removeprefix('torch.')} after "
                        "extrapolation (NaN/Inf); use a smaller alpha or --dtype fp32"
                    )
            entry["dtype"] = str(out_dtype).removeprefix("torch.")
            tensors[name] = entry
            writer.add(name, t)
            del t
            _release(job.readers)
        files = writer.finalize()
        counts: dict[str, int] = {}
        for e in tensors.values():
            counts[e["policy"]] = counts.get(e["policy"], 0) + 1
        meta = {
            **job.meta,
            "norms": job.norms,
            "dtype": None if job.dtype is None else str(job.dtype).removeprefix("torch."),
            "weight_files": files,
            "counts": counts,
            "seconds": round(time.time() - t0, 3),
            "rlvr_linear_version": __version__,
            "tensors": tensors,
        }
        write_json(tmp / METADATA_FILE, meta)
    return Path(out)


# --------------------------------------------------------------------------------------------------
# Public API


def extrapolate_two_point(
    base: str | Path,
    second: str | Path,
    out: str | Path,
    *,
    alpha: float,
    norms: str = "copy",
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    force: bool = False,
    metadata: dict | None = None,
    base_step: float | None = None,
    second_step: float | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    allow_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``W = W_base + alpha * (W_second - W_base)`` (paper §5.1) as a complete HF model dir at ``out``.

    Args:
        base, second: checkpoint directories A (older) and B (newer).
        alpha: ``(T - a) / (b - a)`` (see :func:`alpha_from_steps`); refused outside (0, 20] unless ``force``.
        norms: ``"copy"`` (paper: norm parameters come from B) or ``"extrapolate"``.
        dtype: output dtype of float tensors; default: each tensor's dtype in B.
        overwrite: replace an existing ``out`` (only once the new one is complete).
        metadata: extra fields stored under ``"metadata"`` in ``out/extrapolation.json``.
        base_step, second_step: recorded in ``extrapolation.json`` (inferred from the paths when omitted).
        max_shard_bytes: output shard size; one shard is buffered in memory.
    """
    if norms not in ("copy", "extrapolate"):
        raise RlvrLinearError(f"norms must be 'copy' or 'extrapolate', got {norms!r}")
    alpha = float(alpha)
    _check_alpha(alpha, force)
    a_dir, b_dir = find_model_dir(base), find_model_dir(second)
    check_distinct([a_dir, b_dir], ["--base", "--second"])
    a_step = base_step if base_step is not None else step_from_path(a_dir)
    b_step = second_step if second_step is not None else step_from_path(b_dir)
    readers = [TensorReader(a_dir, allow_pickle), TensorReader(b_dir, allow_pickle)]
    labels = [_label("base checkpoint", a_dir, a_step), _label("second checkpoint", b_dir, b_step)]
    _check_compatible(readers, labels)
    target = None
    if a_step is not None and b_step is not None and a_step != b_step:
        target = target_from_alpha(a_step, b_step, alpha)
    meta = {
        "method": "two-point",
        "formula": "W = W_base + alpha * (W_second - W_base)",
        "alpha": alpha,
        "base_step": a_step,
        "second_step": b_step,
        "target_step": target,
        "inputs": [
            {"role": "base", "path": str(a_dir), "step": a_step},
            {"role": "second", "path": str(b_dir), "step": b_step},
        ],
        "metadata": metadata or {},
    }
    job = _Job(
        readers=readers,
        labels=labels,
        coefficients=lambda name: ([alpha], {}),
        norms=norms,
        dtype=parse_dtype(dtype),
        meta=meta,
        max_shard_bytes=max_shard_bytes,
        progress=progress,
    )
    try:
        return _run(job, out, overwrite)
    finally:
        for r in readers:
            r.close()


def select_checkpoints(trajectory: Trajectory, fit: str | int = "all") -> Trajectory:
    """``fit="all"`` keeps every checkpoint; ``"last-K"`` (or the int K) keeps the K newest (K >= 2)."""
    if fit == "all":
        k = len(trajectory)
    elif isinstance(fit, int):
        k = fit
    elif isinstance(fit, str) and fit.startswith("last-") and fit[5:].isdigit():
        k = int(fit[5:])
    else:
        raise RlvrLinearError(f"fit must be 'all' or 'last-K' (e.g. last-4), got {fit!r}")
    if k < 2:
        raise RlvrLinearError(f"a fit needs at least 2 checkpoints, got fit={fit!r}")
    if k > len(trajectory):
        raise RlvrLinearError(
            f"fit={fit!r} needs {k} checkpoints but the run has {len(trajectory)} ({trajectory.steps})"
        )
    return trajectory.subset(range(len(trajectory) - k, len(trajectory)))


def _gram(readers: Sequence[TensorReader], name: str, chunk: int | None = None) -> torch.Tensor:
    """``G = D D^T`` (float64) for ``D = [W_t - W_0]_t``, streamed over flat chunks of the tensor."""
    chunk = chunk or GRAM_CHUNK
    n = readers[0].numel(name)
    g = torch.zeros(len(readers), len(readers), dtype=torch.float64)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        d = torch.stack([r.get_flat(name, sl).to(torch.float64) for r in readers])
        d -= d[0].clone()
        g += d @ d.T
        del d
        _release(readers)
    return g


def rank_r_weights(gram: torch.Tensor | np.ndarray, w: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    """Project least-squares weights onto the top-``rank`` eigenvectors of the Gram matrix.

    Returns ``(beta, energy)``: ``W(tau) = W_first + sum_i beta_i (W_i - W_first)`` and the share of
    ``||D||^2`` in the kept components.
    """
    g = gram.numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram, dtype=np.float64)
    evals, evecs = np.linalg.eigh(g)  # ascending
    r = min(rank, len(evals))
    u = evecs[:, -r:]
    total = float(np.clip(evals, 0, None).sum())
    energy = float(np.clip(evals[-r:], 0, None).sum() / total) if total > 0 else 1.0
    return u @ (u.T @ w), energy


def extrapolate_fit(
    trajectory: Trajectory | str | Path | Sequence[str],
    out: str | Path,
    *,
    target_step: float,
    fit: str | int = "all",
    rank: int | None = None,
    norms: str = "copy",
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    force: bool = False,
    metadata: dict | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    allow_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """Predict the weights at ``target_step`` from several checkpoints and write an HF model dir at ``out``.

    ``rank=None``: per-parameter least-squares line over the selected checkpoints. ``rank=R``: RELEX-style
    rank-R trajectory for tensors with ndim >= 2 (1-D tensors use the line); see the module docstring.
    ``fit`` selects the checkpoints (``"all"`` or ``"last-K"``). Norms, non-float tensors and the config
    come from the newest selected checkpoint. The horizon ``(target - first) / (last - first)`` obeys the
    same (0, 20] limit as alpha unless ``force``.
    """
    if norms not in ("copy", "extrapolate"):
        raise RlvrLinearError(f"norms must be 'copy' or 'extrapolate', got {norms!r}")
    if rank is not None and int(rank) < 1:
        raise RlvrLinearError(f"rank must be >= 1, got {rank}")
    traj = trajectory if isinstance(trajectory, Trajectory) else discover(trajectory, allow_pickle=allow_pickle)
    sel = select_checkpoints(traj, fit)
    steps = [float(s) for s in sel.steps]
    horizon = alpha_from_steps(steps[0], steps[-1], float(target_step))
    what = f"horizon (target {target_step:g} - {steps[0]:g}) / ({steps[-1]:g} - {steps[0]:g})"
    _check_alpha(horizon, force, what=what)
    readers = [TensorReader(p, allow_pickle) for p in sel.paths]
    labels = [_label("checkpoint", p, s) for p, s in zip(sel.paths, sel.steps)]
    _check_compatible(readers, labels)
    w = least_squares_weights(steps, float(target_step))
    lsq = [float(x) for x in w[1:]]

    def coefficients(name: str) -> tuple[list[float], dict]:
        if rank is None or len(readers[0].shape(name)) < 2:
            return lsq, ({"fit": "least-squares line"} if rank is not None else {})
        beta, energy = rank_r_weights(_gram(readers, name), w, int(rank))
        return [float(x) for x in beta[1:]], {"fit": f"rank-{rank}", "energy": round(energy, 6)}

    method = "least-squares" if rank is None else f"rank-{rank}"
    meta = {
        "method": method,
        "formula": (
            "W = W_first + sum_i w_i (W_i - W_first), w = least-squares hat row at target"
            if rank is None
            else "W = W_first + (U_R U_R^T w)^T D, D = [W_i - W_first], U_R = top-R eigenvectors of D D^T"
        ),
        "fit": fit if isinstance(fit, str) else f"last-{fit}",
        "rank": rank,
        "target_step": float(target_step),
        "alpha": horizon,  # the horizon (target - first) / (last - first), comparable to two-point alpha
        "steps": sel.steps,
        "least_squares_weights": [float(x) for x in w],
        "inputs": [{"role": "checkpoint", "path": str(p), "step": s} for p, s in zip(sel.paths, sel.steps)],
        "metadata": metadata or {},
    }
    job = _Job(
        readers=readers,
        labels=labels,
        coefficients=coefficients,
        norms=norms,
        dtype=parse_dtype(dtype),
        meta=meta,
        max_shard_bytes=max_shard_bytes,
        progress=progress,
        desc=f"extrapolate ({method})",
    )
    try:
        return _run(job, out, overwrite)
    finally:
        for r in readers:
            r.close()


# --------------------------------------------------------------------------------------------------
# Sweep over targets (paper Fig. 5)


@dataclass
class SweepRow:
    """One candidate of a sweep."""

    target_step: float | None  #: predicted step (None when the input steps are unknown)
    alpha: float  #: two-point alpha, or the horizon (target - first) / (last - first) for fits
    accuracy: float  #: validation score (greedy accuracy, else avg@k)
    path: str | None = None  #: kept model directory, if any
    eval: dict = field(default_factory=dict)  #: the evaluator's full result (``to_json()``), when available


@dataclass
class SweepResult:
    rows: list[SweepRow]
    best: int  #: index into ``rows``
    reference: float | None  #: score of the newest input checkpoint (alpha = 1), if evaluated
    reference_step: float | None
    out: str
    method: str

    @property
    def best_row(self) -> SweepRow:
        return self.rows[self.best]

    def table(self) -> str:
        lines = [f"{'':2}{'target':>10} {'alpha':>8} {'accuracy':>9}"]
        for i, r in enumerate(self.rows):
            tgt = "-" if r.target_step is None else f"{r.target_step:g}"
            mark = "* " if i == self.best else "  "
            lines.append(f"{mark}{tgt:>10} {r.alpha:>8.3f} {r.accuracy:>9.4f}")
        if self.reference is not None:
            step = "" if self.reference_step is None else f" (step {self.reference_step:g})"
            lines.append(f"  reference: newest input checkpoint{step} = {self.reference:.4f}")
        b = self.best_row
        lines.append(f"best: alpha {b.alpha:.3f}, accuracy {b.accuracy:.4f} -> {b.path}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        d = asdict(self)
        d["best_row"] = asdict(self.best_row)
        return d


def _score(result: Any) -> tuple[float, dict]:
    """Accuracy from an evaluator's return value: a number, or an EvalResult (greedy accuracy, else avg@k)."""
    if isinstance(result, (int, float)):
        return float(result), {}
    info = result.to_json() if hasattr(result, "to_json") else {}
    acc = getattr(result, "greedy_accuracy", None)
    if acc is None:
        acc = getattr(result, "avg_at_k", None)
        if isinstance(acc, dict):
            acc = acc[max(acc)] if acc else None
    if acc is None:
        raise RlvrLinearError("the evaluator returned neither greedy_accuracy nor avg_at_k")
    return float(acc), info


def _fmt_step(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def plot_sweep(result: SweepResult, path: str | Path, title: str | None = None) -> Path:
    """Accuracy vs target step (or alpha), peak marked with a filled marker (like paper Fig. 5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step = all(r.target_step is not None for r in result.rows)
    xs = [r.target_step if by_step else r.alpha for r in result.rows]
    ys = [r.accuracy for r in result.rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(xs, ys, "-o", color="C0", mfc="white", label=result.method)
    ax.plot([xs[result.best]], [ys[result.best]], "o", color="C0", ms=9, label="peak")
    if result.reference is not None:
        lab = "newest input" + ("" if result.reference_step is None else f" (step {_fmt_step(result.reference_step)})")
        ax.axhline(result.reference, ls="--", color="gray", lw=1, label=lab)
        if by_step and result.reference_step is not None:
            ax.axvline(result.reference_step, ls=":", color="gray", lw=1)
    ax.set_xlabel("target step" if by_step else "alpha")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "weight-space extrapolation sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def sweep(
    out: str | Path,
    *,
    task: Any,
    base: str | Path | None = None,
    second: str | Path | None = None,
    run: Trajectory | str | Path | Sequence[str] | None = None,
    fit: str | int = "all",
    rank: int | None = None,
    targets: Sequence[float] | None = None,
    alphas: Sequence[float] | None = None,
    base_step: float | None = None,
    second_step: float | None = None,
    n_problems: int = 200,
    k: int = 0,
    split: str = "validation",
    keep_all: bool = False,
    reference: bool = True,
    norms: str = "copy",
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
    force: bool = False,
    evaluate_fn: Callable[..., Any] | None = None,
    eval_kwargs: dict | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    allow_pickle: bool = False,
    progress: bool = True,
) -> SweepResult:
    """Extrapolate to several targets (or alphas), score each on ``split``, keep the best (paper Fig. 5).

    Inputs: two checkpoints (``base``/``second``, two-point rule) or a ``run`` with ``fit``/``rank``.
    Each candidate is evaluated with ``evaluate_fn(path, task, split=, n_problems=, k=, greedy=True)``
    (default :func:`rlvr_linear.evaluation.evaluate`; it may return a number or an ``EvalResult``).
    Writes ``out/sweep.json``, ``out/sweep.png`` and ``out/best/`` (or ``out/target_<T>/`` for every
    candidate with ``keep_all``). Only the current best candidate is kept on disk while sweeping.
    Ties go to the smaller alpha.
    """
    if (targets is None) == (alphas is None):
        raise RlvrLinearError("give exactly one of targets or alphas")
    if (run is None) == (base is None or second is None):
        raise RlvrLinearError("give either base and second checkpoints, or a run to fit")
    if evaluate_fn is None:
        try:
            from .evaluation import evaluate as evaluate_fn
        except ImportError as e:
            raise RlvrLinearError(f"rlvr_linear.evaluation is not available ({e})") from None
    from .tasks import get_task

    get_task(task)  # fail early on an unknown task
    eval_kwargs = dict(eval_kwargs or {})

    # candidates: (target, alpha, build(path))
    cands: list[tuple[float | None, float, Callable[[Path], Path]]] = []
    common = dict(norms=norms, dtype=dtype, force=force, max_shard_bytes=max_shard_bytes, allow_pickle=allow_pickle)
    if run is None:
        a_dir, b_dir = find_model_dir(base), find_model_dir(second)
        check_distinct([a_dir, b_dir], ["--base", "--second"])
        a = base_step if base_step is not None else step_from_path(a_dir)
        b = second_step if second_step is not None else step_from_path(b_dir)
        if targets is not None:
            if a is None or b is None:
                raise RlvrLinearError(
                    "cannot infer the checkpoint steps from the directory names; pass base_step and second_step "
                    "(--base-step/--second-step) or use alphas"
                )
            pairs = [(float(t), alpha_from_steps(a, b, float(t))) for t in targets]
        else:
            pairs = [(None if a is None or b is None else target_from_alpha(a, b, float(x)), float(x)) for x in alphas]
        for tgt, al in pairs:
            _check_alpha(al, force)

            def build(p: Path, al=al) -> Path:
                return extrapolate_two_point(
                    a_dir, b_dir, p, alpha=al, base_step=a, second_step=b, progress=False, **common
                )

            cands.append((tgt, al, build))
        ref_path, ref_step, method = b_dir, b, "two-point"
    else:
        traj = run if isinstance(run, Trajectory) else discover(run, allow_pickle=allow_pickle)
        sel = select_checkpoints(traj, fit)
        s0, s1 = float(sel.steps[0]), float(sel.steps[-1])
        tlist = (
            [float(t) for t in targets]
            if targets is not None
            else [target_from_alpha(s0, s1, float(x)) for x in alphas]
        )
        for tgt in tlist:
            al = alpha_from_steps(s0, s1, tgt)
            _check_alpha(al, force, what=f"horizon for target {tgt:g}")

            def build(p: Path, tgt=tgt) -> Path:
                return extrapolate_fit(sel, p, target_step=tgt, fit="all", rank=rank, progress=False, **common)

            cands.append((tgt, al, build))
        ref_path, ref_step = sel.paths[-1], float(sel.steps[-1])
        method = "least-squares" if rank is None else f"rank-{rank}"
    cands.sort(key=lambda c: c[1])
    seen: set[float] = set()
    cands = [c for c in cands if not (round(c[1], 12) in seen or seen.add(round(c[1], 12)))]

    def evaluate_path(p: Path) -> tuple[float, dict]:
        return _score(evaluate_fn(str(p), task, split=split, n_problems=n_problems, k=k, greedy=True, **eval_kwargs))

    rows: list[SweepRow] = []
    best = -1
    out = Path(out)
    with atomic_dir(out, overwrite) as tmp:
        work = tmp / ".candidates"
        best_dir: Path | None = None
        for tgt, al, build in tqdm(cands, desc="sweep", unit="model", disable=not progress):
            name = f"target_{_fmt_step(tgt)}" if tgt is not None else f"alpha_{al:g}"
            cand_dir = (tmp if keep_all else work) / name
            build(cand_dir)
            acc, info = evaluate_path(cand_dir)
            rows.append(SweepRow(tgt, al, acc, str(out / name) if keep_all else None, info))
            if best < 0 or acc > rows[best].accuracy:
                if not keep_all and best_dir is not None:
                    shutil.rmtree(best_dir)
                best, best_dir = len(rows) - 1, cand_dir
            elif not keep_all:
                shutil.rmtree(cand_dir)
        if not keep_all:
            os.replace(best_dir, tmp / "best")
            shutil.rmtree(work, ignore_errors=True)
            rows[best].path = str(out / "best")
        ref_acc = evaluate_path(ref_path)[0] if reference else None
        result = SweepResult(rows, best, ref_acc, ref_step, str(out), method)
        info = {"task": str(task), "split": split, "n_problems": n_problems, "k": k}
        write_json(tmp / "sweep.json", {**result.to_json(), **info})
        plot_sweep(result, tmp / "sweep.png", title=f"{method} extrapolation on {task} ({split})")
    return result
