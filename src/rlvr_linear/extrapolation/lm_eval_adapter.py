"""lm-evaluation-harness backend for logit extrapolation: ``--model rlvr-linear-extrapolated``.

lm-eval finds the model once this module is imported; from the command line, run lm-eval through it::

    pip install 'rlvr-linear[lm-eval]'
    python -m rlvr_linear.extrapolation.lm_eval_adapter --model rlvr-linear-extrapolated \\
        --model_args model_a=run/step_000200,model_b=run/step_001400,target_step=2000 --tasks gsm8k

(every ``lm_eval`` option works; a model path may also be a Hub checkpoint ``hf://ORG/REPO@REV``).

Model args (``key=value``, comma separated; lists use ``|``):

* ``model_a``, ``model_b`` — two HF model dirs; or ``models=dir1|dir2|dir3`` for K models;
* exactly one of ``alpha`` (paper alpha), ``target_step`` (with ``steps=a|b`` or steps read from the
  directory names) or ``weights=w1|w2|...``; a single model needs none;
* ``dtype`` (float32), ``device`` (cuda if available), ``batch_size`` (16), ``max_gen_toks`` (256),
  ``add_special_tokens`` (False), ``seed`` (0);
* ``allow_pickle=True`` to read verl FSDP shard folders (``global_step_N/actor``; weights_only=True).

``generate_until`` decodes with :class:`~rlvr_linear.extrapolation.logits.ExtrapolatedGenerator`
(greedy unless ``do_sample``), ``loglikelihood`` / ``loglikelihood_rolling`` use its teacher-forced
scorer. ``loglikelihood_rolling`` scores the whole text after one prefix token (EOS, else BOS) in a
single window: texts longer than the models' context are not split.

This module imports only when ``lm_eval`` is installed (the optional extra ``rlvr-linear[lm-eval]``).
"""

from __future__ import annotations

try:
    import lm_eval.models  # noqa: F401 - lm-eval's own models ("hf", ...): its registry loads them only while empty
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rlvr_linear.extrapolation.lm_eval_adapter needs lm-evaluation-harness: pip install 'rlvr-linear[lm-eval]'"
    ) from e

import sys
from collections import defaultdict

import torch

from ..errors import RlvrLinearError
from .logit_scoring import resolve_weights
from .logits import ExtrapolatedGenerator


def _split(value, conv=str) -> list | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [conv(v) for v in value]
    return [conv(v) for v in str(value).split("|") if str(v).strip()]


@register_model("rlvr-linear-extrapolated")
class ExtrapolatedLM(LM):
    """An ``lm_eval`` LM whose next-token logits are ``sum_i w_i l_i`` over K checkpoints."""

    def __init__(
        self,
        model_a: str | None = None,
        model_b: str | None = None,
        models: str | None = None,
        alpha: float | None = None,
        target_step: float | None = None,
        steps: str | None = None,
        weights: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 16,
        max_gen_toks: int = 256,
        add_special_tokens: bool = False,
        seed: int = 0,
        allow_pickle: bool | str = False,
        generator: ExtrapolatedGenerator | None = None,
        **_ignored,
    ) -> None:
        super().__init__()
        if generator is None:
            paths = _split(models) or [p for p in (model_a, model_b) if p]
            if not paths:
                raise RlvrLinearError("rlvr-linear-extrapolated needs model_a[,model_b] or models=dir1|dir2|...")
            w = resolve_weights(
                paths,
                alpha=None if alpha is None else float(alpha),
                target_step=None if target_step is None else float(target_step),
                steps=_split(steps, int),
                weights=_split(weights, float),
            )
            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            pickle_ok = str(allow_pickle).lower() in ("1", "true", "yes")
            generator = ExtrapolatedGenerator.load(
                paths, w, dtype=getattr(torch, str(dtype)), device=dev, allow_pickle=pickle_ok
            )
        generator.add_special_tokens = bool(add_special_tokens)
        self.gen = generator
        self.tokenizer = generator.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "rlvr-linear")).replace("/", "__")

    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return int(tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # -- helpers ----------------------------------------------------------------------------------------
    def _encode(self, text: str, special: bool | None = None) -> list[int]:
        special = self.gen.add_special_tokens if special is None else special
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm_eval's TemplateLM: encode(context + continuation) split at len(encode(context))."""
        if context == "":
            return [self.prefix_token_id], self._encode(continuation, special=False)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._encode(context + continuation)
        ctx = self._encode(context)
        return ctx, whole[len(ctx) :]

    # -- the three request types --------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*req.args) for req in requests]
        logps, greedy = self.gen._score([c for c, _ in pairs], [x for _, x in pairs], self.batch_size)
        out = [(float(lp.sum()), bool(g.all())) for lp, g in zip(logps, greedy)]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [self._encode(req.args[0], special=False) for req in requests]
        logps = self.gen.score([[self.prefix_token_id]] * len(texts), texts, self.batch_size)
        out = [float(lp.sum()) for lp in logps]
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[repr(sorted(dict(req.args[1]).items(), key=lambda kv: kv[0]))].append(i)
        for idx in groups.values():
            kw = dict(requests[idx[0]].args[1])
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kw.get("temperature", 0.0) or 0.0)
            greedy = not kw.get("do_sample", False) or temperature <= 0
            texts = self.gen.generate(
                [requests[i].args[0] for i in idx],
                1,
                temperature=temperature if not greedy else 1.0,
                top_p=float(kw.get("top_p", 1.0) or 1.0),
                top_k=int(kw.get("top_k", 0) or 0),
                max_new_tokens=int(kw.get("max_gen_toks", self.max_gen_toks)),
                greedy=greedy,
                seed=self.seed,
                batch_size=self.batch_size,
                stop=until,
            )
            for i, t in zip(idx, texts):
                results[i] = t[0]
                self.cache_hook.add_partial("generate_until", requests[i].args, t[0])
        return results  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with our model registered:
    ``python -m rlvr_linear.extrapolation.lm_eval_adapter ARGS``."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
