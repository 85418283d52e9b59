"""Evaluation: greedy accuracy, avg@k and unbiased pass@k, per-problem correctness, paired bootstrap CIs.

Protocol (paper §7.3): k samples per problem at temperature 0.6, top-p 0.95; avg@k = mean over problems
of c/n; pass@k = 1 − C(n−c, k)/C(n, k), computed in the numerically stable product form
``1 − Π_{i=n−c+1}^{n} (1 − k/i)`` for every k from 1 to n. Greedy accuracy is reported beside them.

Anything with the *Generator* protocol can be evaluated: an attribute ``tokenizer`` and a method
``generate(prompts, n=1, *, temperature, top_p, top_k, max_new_tokens, greedy, seed, batch_size, stop)``
returning ``n`` decoded completions per prompt. :class:`HFGenerator` wraps one HF model;
``rlvr_linear.extrapolation.logits.ExtrapolatedGenerator`` decodes with several checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_json, write_npz
from ..io.loading import load_model
from ..io.validate import integer, number
from .tasks import Problem, Task, get_task

#: the decoding options, checked where a command's flags or a config become values (eval, generate, train)
SAMPLING_RULES = {"temperature": number(gt=0), "top_p": number(gt=0, le=1), "max_new_tokens": integer(1, optional=True)}

# --------------------------------------------------------------------------------------------------
# Metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k)/C(n, k), in the stable product form."""
    if k < 1 or k > n:
        raise RlvrLinearError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(correct: np.ndarray) -> dict[int, float]:
    """Mean pass@k over problems for every k in 1..n, from a (problems x n) boolean matrix."""
    n = correct.shape[1]
    counts = correct.sum(1)
    return {k: float(np.mean([pass_at_k(n, int(c), k) for c in counts])) for k in range(1, n + 1)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap over problems of mean(b) − mean(a); ``a``/``b`` are per-problem scores on the same problems."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise RlvrLinearError(f"paired bootstrap needs two equal-length score vectors, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    d = b - a
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    boots = d[idx].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "diff": float(d.mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "level": level,
        "n_problems": len(d),
        "p_b_not_better": float((boots <= 0).mean()),
    }


def gain_ci(a: np.ndarray, b: np.ndarray, nd: int = 4) -> dict:
    """:func:`paired_bootstrap` of ``b`` over ``a`` as the case records write it: ``{"mean", "lo", "hi"}`` rounded
    to ``nd`` decimals (None where not finite)."""
    r = paired_bootstrap(a, b)

    def num(x: float) -> float | None:
        return round(x, nd) if math.isfinite(x) else None

    return {"mean": num(r["diff"]), "lo": num(r["ci_low"]), "hi": num(r["ci_high"])}


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample std and a Student-t confidence interval (``scipy.stats.t``, n - 1 degrees of freedom) over seeds."""
    v = np.asarray(list(values), float)
    if len(v) == 0:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "std": 0.0, "ci_low": m, "ci_high": m, "n": 1}
    s = float(v.std(ddof=1))
    # Student t quantile with n - 1 degrees of freedom, for any n and level
    t = float(stats.t.ppf(0.5 + level / 2, len(v) - 1))
    h = t * s / math.sqrt(len(v))
    return {"mean": m, "std": s, "ci_low": m - h, "ci_high": m + h, "n": len(v)}


# --------------------------------------------------------------------------------------------------
# Generation


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """``text`` cut before the first occurrence of any stop string."""
    if not stop:
        return text
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class HFGenerator:
    """The Generator protocol over one HF causal LM (batched ``model.generate``)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, path, dtype=torch.float32, allow_pickle: bool = False) -> HFGenerator:
        return cls(*load_model(path, dtype=dtype, allow_pickle=allow_pickle))

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 16,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int = 64,
        stop: list[str] | None = None,
        progress: bool = False,
    ) -> list[list[str]]:
        tok, model = self.tokenizer, self.model
        tok.padding_side = "left"
        flat = [p for p in prompts for _ in range(n)]
        out: list[str] = []
        torch.manual_seed(seed)
        device = next(model.parameters()).device
        bar = tqdm(total=len(flat), desc="generate", disable=None if progress else True, leave=False)
        for s in range(0, len(flat), batch_size):
            chunk = flat[s : s + batch_size]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            if greedy:
                kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k or None)
            ids = model.generate(**enc, **kw)
            texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out.extend(cut_at_stop(t, stop) for t in texts)
            bar.update(len(chunk))
        bar.close()
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]


def as_generator(model, dtype=torch.float32, allow_pickle: bool = False):
    """Accept a model directory, a ``(model, tokenizer)`` pair, or a Generator."""
    if hasattr(model, "generate") and hasattr(model, "tokenizer"):
        return model
    if isinstance(model, (tuple, list)) and len(model) == 2:
        return HFGenerator(*model)
    if isinstance(model, (str, Path)):
        return HFGenerator.from_dir(model, dtype=dtype, allow_pickle=allow_pickle)
    raise RlvrLinearError(f"cannot evaluate an object of type {type(model).__name__}")


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    task: str
    split: str
    problem_ids: list[str]
    k: int
    greedy_correct: np.ndarray | None = None  # (problems,)
    correct: np.ndarray | None = None  # (problems, k) bool
    samples: list[list[str]] | None = field(default=None, repr=False)
    greedy_samples: list[str] | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def greedy_accuracy(self) -> float | None:
        return None if self.greedy_correct is None else float(self.greedy_correct.mean())

    @property
    def avg_at_k(self) -> float | None:
        return None if self.correct is None else float(self.correct.mean())

    @property
    def pass_at_k(self) -> dict[int, float]:
        return {} if self.correct is None else pass_at_k_table(self.correct)

    def per_problem(self, metric: str = "avg") -> np.ndarray:
        """Per-problem score: ``avg`` (c/k over samples) or ``greedy`` (0/1)."""
        if metric == "greedy":
            if self.greedy_correct is None:
                raise RlvrLinearError("this result has no greedy evaluation")
            return self.greedy_correct.astype(float)
        if self.correct is None:
            raise RlvrLinearError("this result has no sampled evaluation (k = 0)")
        return self.correct.mean(1)

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "split": self.split,
            "n_problems": len(self.problem_ids),
            "k": self.k,
            "greedy_accuracy": self.greedy_accuracy,
            f"avg@{self.k}": self.avg_at_k,
            "pass@k": {str(k): v for k, v in self.pass_at_k.items()},
            **self.meta,
        }

    def save(self, out_dir: str | Path, name: str = "eval") -> None:
        """Write ``name.json`` (metrics) and ``name.npz`` (per-problem correctness matrix)."""
        out_dir = Path(out_dir)
        write_json(out_dir / f"{name}.json", self.to_json())
        arrays = {"problem_ids": np.array(self.problem_ids)}
        if self.correct is not None:
            arrays["correct"] = self.correct
        if self.greedy_correct is not None:
            arrays["greedy_correct"] = self.greedy_correct
        write_npz(out_dir / f"{name}.npz", **arrays)


def default_max_new_tokens(task: Task, tokenizer) -> int:
    chat = bool(getattr(tokenizer, "chat_template", None))
    return task.max_new_tokens(chat) if hasattr(task, "max_new_tokens") else (64 if chat else 16)


def evaluate(
    model,
    task: str | Task,
    split: str = "test",
    n_problems: int = 200,
    k: int = 8,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int | None = None,
    greedy: bool = True,
    seed: int = 0,
    batch_size: int = 64,
    problems: list[Problem] | None = None,
    progress: bool = False,
    keep_samples: bool = False,
    allow_pickle: bool = False,
) -> EvalResult:
    """Evaluate ``model`` (directory, ``(model, tokenizer)`` or Generator) on ``n_problems`` of ``task``.

    ``allow_pickle`` lets a directory of verl FSDP shards load (see :func:`rlvr_linear.io.loading.load_model`).
    """
    if k < 0:
        raise RlvrLinearError(f"k must be >= 1 (or 0 for greedy only), got {k}")
    if k == 0 and not greedy:
        raise RlvrLinearError("nothing to evaluate: k = 0 and greedy disabled")
    task = get_task(task)
    gen = as_generator(model, allow_pickle=allow_pickle)
    probs = problems if problems is not None else task.problems(split, n_problems)
    if not probs:
        raise RlvrLinearError("no problems to evaluate")
    prompts = [task.render(p, gen.tokenizer) for p in probs]
    mnt = max_new_tokens or default_max_new_tokens(task, gen.tokenizer)
    res = EvalResult(task=task.name, split=split, problem_ids=[p.id for p in probs], k=k)
    res.meta.update({"temperature": temperature, "top_p": top_p, "max_new_tokens": mnt, "seed": seed})
    common = dict(max_new_tokens=mnt, batch_size=batch_size, seed=seed, progress=progress)
    if greedy:
        outs = gen.generate(prompts, 1, greedy=True, **common)
        texts = [o[0] for o in outs]
        res.greedy_correct = np.array([task.score(t, p) > 0.5 for t, p in zip(texts, probs)])
        if keep_samples:
            res.greedy_samples = texts
    if k > 0:
        outs = gen.generate(prompts, k, temperature=temperature, top_p=top_p, **common)
        res.correct = np.array([[task.score(t, p) > 0.5 for t in o] for o, p in zip(outs, probs)])
        if keep_samples:
            res.samples = outs
    return res
