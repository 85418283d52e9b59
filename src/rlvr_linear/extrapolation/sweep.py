"""The sweep over targets (paper Fig. 5): extrapolate to several targets, score each, keep the best, plot.

The candidates are built by the engine (:mod:`.weights`) and scored by an evaluator (default
:func:`rlvr_linear.evaluation.evaluation.evaluate`); only the current best candidate stays on disk while sweeping, so a
sweep over many targets needs the disk of two models. Kept apart from the engine because it is the one part that runs
models: the engine itself only streams tensors.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import RlvrLinearError
from ..io import atomic_dir, write_json
from ..io.checkpoints import Trajectory, check_distinct, discover, find_model_dir, step_of_path
from .rules import alpha_from_steps, check_alpha, target_from_alpha
from .weights import DEFAULT_SHARD_BYTES, extrapolate_fit, extrapolate_two_point, select_checkpoints


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
    (default :func:`rlvr_linear.evaluation.evaluation.evaluate`; it may return a number or an ``EvalResult``).
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
            from ..evaluation.evaluation import evaluate as evaluate_fn
        except ImportError as e:
            raise RlvrLinearError(f"rlvr_linear.evaluation.evaluation is not available ({e})") from None
    from ..evaluation.tasks import get_task

    get_task(task)  # fail early on an unknown task
    eval_kwargs = dict(eval_kwargs or {})

    # candidates: (target, alpha, build(path))
    cands: list[tuple[float | None, float, Callable[[Path], Path]]] = []
    common = dict(norms=norms, dtype=dtype, force=force, max_shard_bytes=max_shard_bytes, allow_pickle=allow_pickle)
    if run is None:
        a_dir, b_dir = find_model_dir(base), find_model_dir(second)
        check_distinct([a_dir, b_dir], ["--base", "--second"])
        a = base_step if base_step is not None else step_of_path(a_dir)
        b = second_step if second_step is not None else step_of_path(b_dir)
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
            check_alpha(al, force)

            def build(p: Path, al=al) -> Path:
                return extrapolate_two_point(
                    a_dir, b_dir, p, alpha=al, base_step=a, second_step=b, progress=False, **common
                )

            cands.append((tgt, al, build))
        ref_path, ref_step, method = b_dir, b, "two-point"
        inputs = [a_dir, b_dir]
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
            check_alpha(al, force, what=f"horizon for target {tgt:g}")

            def build(p: Path, tgt=tgt) -> Path:
                return extrapolate_fit(sel, p, target_step=tgt, fit="all", rank=rank, progress=False, **common)

            cands.append((tgt, al, build))
        ref_path, ref_step = sel.paths[-1], float(sel.steps[-1])
        inputs = [c.path for c in sel.checkpoints]
        method = "least-squares" if rank is None else f"rank-{rank}"
    cands.sort(key=lambda c: c[1])
    seen: set[float] = set()
    cands = [c for c in cands if not (round(c[1], 12) in seen or seen.add(round(c[1], 12)))]

    def evaluate_path(p: Path) -> tuple[float, dict]:
        return _score(evaluate_fn(str(p), task, split=split, n_problems=n_problems, k=k, greedy=True, **eval_kwargs))

    rows: list[SweepRow] = []
    best = -1
    out = Path(out)
    with atomic_dir(out, overwrite, kind="sweep", inputs=inputs) as tmp:
        work = tmp / ".candidates"
        best_dir: Path | None = None
        for tgt, al, build in tqdm(cands, desc="sweep", unit="model", disable=None if progress else True):
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
