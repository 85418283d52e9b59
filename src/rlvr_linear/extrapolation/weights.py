"""Weight-space extrapolation: predict a future checkpoint from observed ones, tensor by tensor.

The engine: every predictor writes ``W(target) = W_first + sum_i c_i (W_i - W_first)`` for the selected
checkpoints, one tensor at a time (no checkpoint is ever loaded whole), with the coefficients ``c`` from a rule of
:mod:`.rules` (``two-point``, ``least-squares``, ``rank-r``; the maths and the convention mapping are there):

* :func:`extrapolate_two_point` (the paper, §5.1): ``W = W_a + alpha * (W_b - W_a)``,
  ``alpha = (T - a) / (b - a)``. ``alpha = 1`` gives B, ``alpha = 0`` gives A, ``alpha > 1`` extrapolates.
  ExPO's alpha and the proxy-tuning coefficient are ``alpha - 1``; mergekit ``task_arithmetic`` with
  ``base_model: A`` and ``weight: alpha`` (``normalize: false``) computes the same formula.
* :func:`extrapolate_fit`: the least-squares line over the checkpoints that :func:`select_checkpoints` keeps
  (``fit="all"`` or ``"last-K"``), or with ``rank=R`` the rank-R trajectory for tensors with ndim >= 2, whose T x T
  Gram matrix of deltas is streamed here in flat chunks (:func:`_gram`). 1-D tensors use the line.

Parameter policy (:mod:`.params`, paper §5.1): norm parameters are **copied from the newest input** (B, or the last
selected checkpoint) unless ``norms="extrapolate"``; non-float tensors and known buffers are always copied from it.
Arithmetic is fp32; each result is cast to the newest input's dtype for that tensor (or ``dtype``).

Memory: about three fp32 copies of the largest tensor plus one output shard buffer
(``max_shard_bytes``, 512 MiB by default). Readers are closed after every tensor so that memory-mapped
pages of the inputs do not accumulate in the resident set. The sweep over targets (evaluate, keep the best, plot)
is :mod:`.sweep`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import RlvrLinearError
from ..io import atomic_dir, read_json, verl_shards, write_json
from ..io.checkpoints import TensorReader, Trajectory, check_distinct, discover, find_model_dir, step_of_path
from ..io.writer import ShardedWriter, copy_model_files
from .params import check_norms, parse_dtype, tensor_policy
from .rules import Rule, alpha_from_steps, check_alpha, get_rule, target_from_alpha

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


# --------------------------------------------------------------------------------------------------
# Small helpers


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
    from ..io.tokenizer import MARKER

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
    from .. import __version__

    src = job.readers[-1]
    config = verl_shards.config_dir(src.path) / "config.json"
    if not config.is_file():
        raise RlvrLinearError(
            f"{src.path}: no config.json, so the extrapolated weights could not be loaded as a model; nothing written"
        )
    keys = src.keys()
    tensors: dict[str, dict] = {}
    t0 = time.time()
    from ..runtime.threads import for_params

    for_params(sum(src.numel(k) for k in keys))  # all cores for a large model unless --threads / OMP_NUM_THREADS
    with atomic_dir(out, overwrite, kind="extrapolation", inputs=[r.path for r in job.readers]) as tmp:
        copy_model_files(src.path, tmp)
        keep_char_tokenizer([r.path for r in job.readers], tmp)
        if job.dtype is not None:
            _patch_config_dtype(tmp, job.dtype)
        writer = ShardedWriter(tmp, job.max_shard_bytes)
        for name in tqdm(keys, desc=job.desc, unit="tensor", disable=None if job.progress else True):
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
    check_norms(norms)
    alpha = float(alpha)
    check_alpha(alpha, force)
    a_dir, b_dir = find_model_dir(base), find_model_dir(second)
    check_distinct([a_dir, b_dir], ["--base", "--second"])
    a_step = base_step if base_step is not None else step_of_path(a_dir)
    b_step = second_step if second_step is not None else step_of_path(b_dir)
    readers = [TensorReader(a_dir, allow_pickle), TensorReader(b_dir, allow_pickle)]
    labels = [_label("base checkpoint", a_dir, a_step), _label("second checkpoint", b_dir, b_step)]
    _check_compatible(readers, labels)
    target = None
    if a_step is not None and b_step is not None and a_step != b_step:
        target = target_from_alpha(a_step, b_step, alpha)
    rule = get_rule("two-point")
    coefs = rule.coefficients((0.0, 1.0), alpha)  # alpha itself is the target on steps (0, 1)
    meta = {
        "method": rule.method,
        "formula": rule.formula,
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
        coefficients=lambda name: (coefs.deltas, coefs.info),
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
        got = f"the run has {len(trajectory)} ({trajectory.steps})" if fit == "all" else f"got fit={fit!r}"
        raise RlvrLinearError(f"a fit needs at least 2 checkpoints, {got}")
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
    rank-R trajectory for tensors with ndim >= 2 (1-D tensors use the line); see :mod:`.rules`.
    ``fit`` selects the checkpoints (``"all"`` or ``"last-K"``). Norms, non-float tensors and the config
    come from the newest selected checkpoint. The horizon ``(target - first) / (last - first)`` obeys the
    same (0, 20] limit as alpha unless ``force``.
    """
    check_norms(norms)
    rule: Rule = get_rule("least-squares") if rank is None else get_rule("rank-r", rank=int(rank))
    traj = trajectory if isinstance(trajectory, Trajectory) else discover(trajectory, allow_pickle=allow_pickle)
    sel = select_checkpoints(traj, fit)
    steps = [float(s) for s in sel.steps]
    horizon = alpha_from_steps(steps[0], steps[-1], float(target_step))
    what = f"horizon (target {target_step:g} - {steps[0]:g}) / ({steps[-1]:g} - {steps[0]:g})"
    check_alpha(horizon, force, what=what)
    readers = [TensorReader(p, allow_pickle) for p in sel.paths]
    labels = [_label("checkpoint", p, s) for p, s in zip(sel.paths, sel.steps)]
    _check_compatible(readers, labels)
    target = float(target_step)
    w = get_rule("least-squares").coefficients(steps, target).weights

    def coefficients(name: str) -> tuple[list[float], dict]:
        gram = _gram(readers, name) if rule.needs_gram and len(readers[0].shape(name)) >= 2 else None
        c = rule.coefficients(steps, target, gram)
        return c.deltas, c.info

    method = rule.method
    meta = {
        "method": method,
        "formula": rule.formula,
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
