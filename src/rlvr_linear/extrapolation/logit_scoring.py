"""The front end of logit extrapolation: teacher-forced scores, the mixing weights of the command line, and
one record per decoded completion.

:func:`score` is the functional form of :meth:`~rlvr_linear.extrapolation.logits.ExtrapolatedGenerator.score`;
:func:`resolve_weights` turns ``--alpha`` / ``--target-step`` / ``--weights`` into one weight per model (the steps
come from the directory names through :func:`rlvr_linear.io.checkpoints.step_of_path`, the one step parser);
:func:`generate_records` decodes free prompts or a task's problems and scores each completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import RlvrLinearError
from ..io.checkpoints import step_of_path
from .logits import ExtrapolatedGenerator
from .mixing import pair_weights
from .rules import alpha_from_steps


def score(
    models: Sequence,
    weights: Sequence[float],
    tokenizer,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    responses: Sequence[str] | Sequence[Sequence[int]],
    batch_size: int = 16,
    *,
    device: str | torch.device | None = None,
    add_special_tokens: bool = False,
) -> list[np.ndarray]:
    """Teacher-forced log-probs of ``responses`` given ``prompts`` under the extrapolated distribution.

    For response token y_j: ``log_softmax(sum_i w_i l_i(prompt, y_<j))[y_j]`` (temperature 1, no
    filtering). Prompt and response are tokenized separately and concatenated (strings or id lists
    are accepted). Returns one float32 array of length ``len(response_ids)`` per pair.
    """
    gen = ExtrapolatedGenerator(models, weights, tokenizer, device=device, add_special_tokens=add_special_tokens)
    return gen.score(prompts, responses, batch_size)


# --------------------------------------------------------------------------------------------------
# Front-end helpers (used by ``rlvr-linear generate``)


def resolve_weights(
    paths: Sequence[str | Path],
    *,
    alpha: float | None = None,
    target_step: float | None = None,
    steps: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> list[float]:
    """Mixing weights for ``len(paths)`` models from exactly one of ``alpha``, ``target_step`` or ``weights``.

    One model: ``[1.0]`` (no option allowed). Two models: ``alpha`` gives ``[1 - alpha, alpha]``;
    ``target_step`` uses ``steps = (a, b)`` or, when absent, the steps in the directory names
    (``step_N``, ``checkpoint-N``, ``global_step_N``). More models need explicit ``weights``.
    """
    k = len(paths)
    options = (("alpha", alpha), ("target step", target_step), ("weights", weights))
    given = [name for name, v in options if v is not None]
    if len(given) > 1:
        raise RlvrLinearError(f"give only one of alpha, target step or weights (got {', '.join(given)})")
    if steps is not None and target_step is None:
        raise RlvrLinearError("steps are only used together with a target step")
    if weights is not None:
        if len(weights) != k:
            raise RlvrLinearError(f"got {len(weights)} weights for {k} models")
        return [float(w) for w in weights]
    if k == 1:
        if given:
            raise RlvrLinearError(f"{given[0]} needs two models (one model is decoded as is)")
        return [1.0]
    if k != 2:
        raise RlvrLinearError(f"with {k} models give explicit weights (one per model)")
    if alpha is not None:
        return pair_weights(alpha)
    if target_step is None:
        raise RlvrLinearError("two models need alpha, a target step or weights")
    if steps is None:
        found = [step_of_path(p) for p in paths]
        if None in found:
            bad = paths[found.index(None)]
            raise RlvrLinearError(
                f"cannot infer the training step of {bad} from its name (expected step_N, checkpoint-N or "
                "global_step_N); pass the steps explicitly"
            )
        steps = found
    if len(steps) != 2:
        raise RlvrLinearError(f"expected two steps (a, b), got {list(steps)}")
    return pair_weights(alpha_from_steps(int(steps[0]), int(steps[1]), target_step))


def generate_records(
    gen: ExtrapolatedGenerator,
    *,
    prompts: Sequence[str] | None = None,
    task=None,
    n_problems: int = 8,
    split: str = "test",
    problem_seed: int = 0,
    n: int = 1,
    **decode_kw,
) -> list[dict]:
    """Decode free prompts or ``n_problems`` problems of a task (drawn with ``problem_seed``); one record
    per completion (``decode_kw`` go to :meth:`ExtrapolatedGenerator.generate`).

    Records hold ``prompt_index``, ``sample``, ``prompt`` and ``completion``; for a task also
    ``problem_id``, ``answer`` and ``correct`` (the task's 0/1 score).
    """
    from ..evaluation.tasks import get_task

    problems = None
    if task is not None:
        task = get_task(task)
        problems = task.problems(split, n_problems, seed=problem_seed)
        prompts = [task.render(p, gen.tokenizer) for p in problems]
    if not prompts:
        raise RlvrLinearError("nothing to decode: give prompts or a task")
    outs = gen.generate(list(prompts), n, **decode_kw)
    recs = []
    for i, (prompt, comps) in enumerate(zip(prompts, outs)):
        for j, c in enumerate(comps):
            rec = {"prompt_index": i, "sample": j, "prompt": prompt, "completion": c}
            if problems is not None:
                p = problems[i]
                rec.update(problem_id=p.id, answer=p.answer, correct=float(task.score(c, p)))
            recs.append(rec)
    return recs
