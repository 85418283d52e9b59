"""Output-space (logit) extrapolation: decode with a weighted sum of K checkpoints' logits.

K causal LMs that share one tokenizer run in lockstep, each with its own KV cache. At every step
the next-token logits are mixed, ``l_mix = sum_i w_i l_i`` (two checkpoints: ``l_a + alpha (l_b - l_a)``),
then divided by the temperature, filtered by top-k and top-p (the top token is always kept) and
sampled (or the argmax is taken); the chosen token is fed to every model. This is paper §4.1. The formulas,
the alpha conventions and the sampler are in :mod:`.mixing`; scoring records and the front end's weights are in
:mod:`.logit_scoring`.

Decoding engine (:class:`ExtrapolatedGenerator`)
-----------------------------------------------
* Prompts are repeated ``n`` times (prompt-major rows), split into chunks of ``batch_size`` rows,
  left padded; every model gets the same ``attention_mask`` and ``position_ids = cumsum(mask) - 1``.
* One ``DynamicCache`` per model; rows that finish (EOS or a stop string) leave the batch: their
  rows are dropped from every cache (``Cache.batch_select_indices``), from the mask and from the
  position counters. ``prune=False`` keeps them (feeding their tokens but ignoring them); outputs
  are identical, which the tests check.
* Sampling randomness is keyed by row: row ``r`` (= prompt index * n + sample index) draws its
  uniforms from its own ``torch.Generator`` seeded from ``(seed, r)``, and a token is drawn by
  inverse-CDF sampling of the filtered distribution. Results therefore do not depend on
  ``batch_size``, on pruning, or on other rows finishing early.
* Token ids are returned by :meth:`ExtrapolatedGenerator.generate_ids`; :meth:`~ExtrapolatedGenerator.generate`
  decodes them (special tokens skipped) and cuts each text at the first stop string.

The generator also teacher-forces given responses (:meth:`ExtrapolatedGenerator.score`) and returns, per response
token, ``log_softmax(l_mix)[token]`` (temperature 1, no filtering).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RlvrLinearError
from ..evaluation.evaluation import cut_at_stop
from .mixing import (
    _check_filters,
    _row_seed,
    _sample_rows,
    check_tokenizers,
    check_vocab,
    mix_logits,
    mixed_log_probs,
    pair_weights,
)
from .rules import alpha_from_steps

#: uniforms drawn per row generator call (amortises the per-row Python call over this many steps)
_RNG_BLOCK = 64


# --------------------------------------------------------------------------------------------------
# HF plumbing (transformers 4.56 .. 5.x)


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


class _Runner:
    """Calls one HF causal LM with a KV cache, returning the last-position logits (B, V)."""

    def __init__(self, model):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        keep = [k for k in ("logits_to_keep", "num_logits_to_keep") if k in params]
        self.keep_kw = keep[0] if keep else None
        self.device = next(model.parameters()).device

    def __call__(self, input_ids, attention_mask, position_ids, cache, keep: int = 1) -> torch.Tensor:
        kw = {self.cache_kw: cache}
        if self.keep_kw is not None:
            kw[self.keep_kw] = keep
        dev = self.device
        out = self.model(
            input_ids=input_ids.to(dev, non_blocking=True),
            attention_mask=attention_mask.to(dev, non_blocking=True),
            position_ids=position_ids.to(dev, non_blocking=True),
            use_cache=cache is not None,
            **kw,
        )
        return out.logits[:, -keep:, :]


# --------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class DecodeOutput:
    """Result of :meth:`ExtrapolatedGenerator.generate_ids` (rows are prompt-major: prompt i, sample j -> i*n+j).

    Attributes:
        sequences: generated token ids per row, including the EOS token when one ended the row.
        finish_reasons: ``"eos"``, ``"stop"`` (a stop string appeared) or ``"length"`` per row.
        log_probs: with ``output_scores=True``, per row a float32 (len, V) tensor: ``log_softmax`` of the
            mixed logits at each generated position (temperature 1, before filtering); else None.
    """

    sequences: list[list[int]]
    finish_reasons: list[str]
    log_probs: list[torch.Tensor] | None = None


class ExtrapolatedGenerator:
    """Decode with ``l = sum_i w_i l_i`` over K causal LMs sharing one tokenizer (Generator protocol).

    Args:
        models: HF causal LMs (same vocabulary); put in eval mode.
        weights: one float per model; ``[1 - alpha, alpha]`` for two checkpoints (see :func:`pair_weights`).
        tokenizer: the shared tokenizer (needs a pad token; EOS ends a row).
        device: move every model there; default: the device of the first model's parameters. Mixing
            and sampling happen on this device; models on other devices get their inputs moved.
        eos_token_ids: ids that end a row; default: the tokenizer's EOS plus the first model's
            ``generation_config.eos_token_id``.
        add_special_tokens: passed to the tokenizer when encoding prompts (False: chat templates
            already contain BOS; set True for raw prompts of tokenizers that expect BOS).
        prune: drop finished rows from the batch and the KV caches (faster; same outputs).
        progress: show a tqdm bar over batches in :meth:`generate` / :meth:`generate_ids`.
    """

    def __init__(
        self,
        models: Sequence,
        weights: Sequence[float],
        tokenizer,
        device: str | torch.device | None = None,
        *,
        eos_token_ids: Sequence[int] | None = None,
        add_special_tokens: bool = False,
        prune: bool = True,
        progress: bool = False,
    ):
        models = list(models)
        if not models:
            raise RlvrLinearError("ExtrapolatedGenerator needs at least one model")
        if len(weights) != len(models):
            raise RlvrLinearError(f"got {len(models)} models but {len(weights)} weights")
        if not all(np.isfinite(float(w)) for w in weights):
            raise RlvrLinearError(f"weights must be finite numbers, got {list(weights)}")
        vocab = check_vocab(models)
        if vocab and len(tokenizer) > vocab:
            raise RlvrLinearError(
                f"tokenizer mismatch: the tokenizer has {len(tokenizer)} tokens but the models' vocabulary has {vocab}"
            )
        if device is not None:
            models = [m.to(device) for m in models]
        self.models = [m.eval() for m in models]
        self.weights = [float(w) for w in weights]
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(models[0].parameters()).device
        self.vocab_size = vocab
        self.add_special_tokens = add_special_tokens
        self.prune = prune
        self.progress = progress
        self._runners = [_Runner(m) for m in self.models]
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise RlvrLinearError("the tokenizer has neither a pad token nor an EOS token")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if eos_token_ids is None:
            ids: list[int] = []
            if tokenizer.eos_token_id is not None:
                ids.append(int(tokenizer.eos_token_id))
            gen = getattr(self.models[0], "generation_config", None)
            g_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
            for e in [g_eos] if isinstance(g_eos, int) else list(g_eos or []):
                if int(e) not in ids:
                    ids.append(int(e))
            eos_token_ids = ids
        self.eos_token_ids = [int(e) for e in eos_token_ids]

    # -- constructors ---------------------------------------------------------------------------------
    @classmethod
    def from_pair(cls, model_a, model_b, alpha: float, tokenizer, **kw) -> ExtrapolatedGenerator:
        """Two checkpoints: ``l = l_a + alpha (l_b - l_a)`` (alpha = 1 is model b, alpha > 1 extrapolates)."""
        return cls([model_a, model_b], pair_weights(alpha), tokenizer, **kw)

    @classmethod
    def from_steps(
        cls, model_a, model_b, step_a: int, step_b: int, target_step: float, tokenizer, **kw
    ) -> ExtrapolatedGenerator:
        """Checkpoints at ``step_a`` and ``step_b`` extrapolated to ``target_step`` (alpha = (T - a)/(b - a))."""
        return cls.from_pair(model_a, model_b, alpha_from_steps(step_a, step_b, target_step), tokenizer, **kw)

    @classmethod
    def from_dirs(
        cls,
        dir_a: str | Path,
        dir_b: str | Path,
        *,
        alpha: float,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        **kw,
    ) -> ExtrapolatedGenerator:
        """Load two HF model directories with :func:`rlvr_linear.io.loading.load_model` and pair them."""
        return cls.load(
            [dir_a, dir_b], pair_weights(alpha), dtype=dtype, device=device, allow_pickle=allow_pickle, **kw
        )

    @classmethod
    def load(
        cls,
        dirs: Sequence[str | Path],
        weights: Sequence[float],
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        allow_pickle: bool = False,
        **kw,
    ) -> ExtrapolatedGenerator:
        """Load K model directories (tokenizers must match) and mix them with ``weights``.

        ``allow_pickle`` lets verl FSDP shard folders load (see :func:`rlvr_linear.io.loading.load_model`).
        """
        from ..io.loading import load_model

        if len(dirs) != len(weights):
            raise RlvrLinearError(f"got {len(dirs)} model directories but {len(weights)} weights")
        loaded = [load_model(d, dtype=dtype, device=device or "cpu", allow_pickle=allow_pickle) for d in dirs]
        check_tokenizers([t for _, t in loaded])
        return cls([m for m, _ in loaded], weights, loaded[0][1], device=device, **kw)

    @property
    def alpha(self) -> float | None:
        """The paper's alpha for a two-model generator whose weights sum to 1, else None."""
        if len(self.weights) == 2 and abs(sum(self.weights) - 1.0) < 1e-9:
            return self.weights[1]
        return None

    # -- encoding -------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of each prompt (strings are tokenized; id lists pass through). Empty prompts get BOS."""
        out: list[list[int]] = []
        strs = [p for p in prompts if isinstance(p, str)]
        enc = iter(self.tokenizer(strs, add_special_tokens=self.add_special_tokens)["input_ids"] if strs else [])
        for p in prompts:
            ids = list(next(enc)) if isinstance(p, str) else [int(x) for x in p]
            if not ids:
                if self.tokenizer.bos_token_id is None:
                    raise RlvrLinearError("empty prompt and the tokenizer has no BOS token to start from")
                ids = [int(self.tokenizer.bos_token_id)]
            out.append(ids)
        return out

    def _pad_left(self, seqs: Sequence[Sequence[int]], extra: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids (B, L) and a mask (B, L + extra) whose last ``extra`` columns are 1 (on CPU)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width + extra), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s) :] = torch.as_tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids, mask

    # -- the Generator protocol -----------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 16,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int = 64,
        stop: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> list[list[str]]:
        """``n`` decoded completions per prompt (special tokens skipped, cut before the first stop string).

        ``progress`` (default: the generator's ``progress``) shows a tqdm bar over batches; it is accepted
        because ``rlvr_linear.evaluation.evaluation.evaluate`` passes it.
        """
        out = self.generate_ids(
            prompts,
            n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            seed=seed,
            batch_size=batch_size,
            stop=stop,
            progress=progress,
        )
        texts = self.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        if stop:
            texts = [cut_at_stop(t, stop) for t in texts]
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]

    @torch.inference_mode()
    def generate_ids(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        n: int = 1,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 16,
        greedy: bool = False,
        seed: int = 0,
        batch_size: int = 64,
        stop: Sequence[str] | None = None,
        eos_token_ids: Sequence[int] | None = None,
        output_scores: bool = False,
        progress: bool | None = None,
    ) -> DecodeOutput:
        """Decode token ids. ``prompts`` are strings or token-id lists; returns ``n`` rows per prompt.

        ``temperature <= 0`` means greedy. ``eos_token_ids`` overrides the generator's EOS set
        (``[]`` disables EOS, e.g. for benchmarks). Greedy decoding with ``n > 1`` decodes each prompt
        once and repeats the result.
        """
        if n < 1 or batch_size < 1 or max_new_tokens < 0:
            raise RlvrLinearError(
                f"need n >= 1, batch_size >= 1 and max_new_tokens >= 0 (got {n}, {batch_size}, {max_new_tokens})"
            )
        _check_filters(top_k, top_p)
        greedy = greedy or temperature <= 0
        stop = [s for s in (stop or []) if s]
        eos = self.eos_token_ids if eos_token_ids is None else [int(e) for e in eos_token_ids]
        prompt_ids = self.encode(prompts)
        reps = 1 if greedy else n
        rows = [(p, i * reps + j) for i, p in enumerate(prompt_ids) for j in range(reps)]
        seqs: list[list[int]] = []
        reasons: list[str] = []
        scores: list[torch.Tensor] = []
        chunks = range(0, len(rows), batch_size)
        if self.progress if progress is None else progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="extrapolated decoding", unit="batch", disable=None)
        for start in chunks:
            chunk = rows[start : start + batch_size]
            s, r, sc = self._decode_chunk(
                [p for p, _ in chunk],
                [k for _, k in chunk],
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                max_new_tokens=max_new_tokens,
                greedy=greedy,
                seed=seed,
                stop=stop,
                eos=eos,
                output_scores=output_scores,
            )
            seqs += s
            reasons += r
            scores += sc
        if reps != n:  # greedy: repeat each prompt's single decode n times
            seqs = [list(s) for s in seqs for _ in range(n)]
            reasons = [r for r in reasons for _ in range(n)]
            scores = [x for x in scores for _ in range(n)]
        return DecodeOutput(seqs, reasons, scores if output_scores else None)

    def _decode_chunk(
        self,
        prompt_ids: list[list[int]],
        row_keys: list[int],
        *,
        temperature: float,
        top_p: float,
        top_k: int,
        max_new_tokens: int,
        greedy: bool,
        seed: int,
        stop: list[str],
        eos: list[int],
        output_scores: bool,
    ) -> tuple[list[list[int]], list[str], list[torch.Tensor]]:
        B = len(prompt_ids)
        T = max_new_tokens
        if T == 0:
            return [[] for _ in range(B)], ["length"] * B, [torch.zeros(0, self.vocab_size) for _ in range(B)]
        dev = self.device
        ids, mask = self._pad_left(prompt_ids, extra=T)
        L = ids.shape[1]
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask[:, :L].cumsum(-1) - 1).clamp_(min=0)
        next_pos = mask[:, :L].sum(-1)  # position of the next token of each row
        caches = [_new_cache(m) for m in self.models]
        logits = [run(ids, mask[:, :L], pos, c)[:, -1, :] for run, c in zip(self._runners, caches)]
        self._check_logits(logits)

        out = torch.full((B, T), self.pad_token_id, dtype=torch.long, device=dev)
        lengths = torch.full((B,), T, dtype=torch.long, device=dev)
        reason_code = torch.zeros((B,), dtype=torch.long, device=dev)  # 0 length, 1 eos, 2 stop
        rows = torch.arange(B, device=dev)  # original index of each active row
        alive = torch.ones(B, dtype=torch.bool, device=dev)
        eos_t = torch.tensor(eos, dtype=torch.long, device=dev) if eos else None
        check_done = eos_t is not None or bool(stop)
        max_stop = max((len(s) for s in stop), default=0)
        score_steps: list[tuple[torch.Tensor, torch.Tensor]] = []

        rngs = None
        if not greedy:
            rngs = [torch.Generator().manual_seed(_row_seed(seed, k)) for k in row_keys]
            u_block = torch.empty((B, _RNG_BLOCK))

        for t in range(T):
            mixed = mix_logits(logits, self.weights)
            if output_scores:
                score_steps.append((rows.cpu(), torch.log_softmax(mixed, -1).cpu()))
            if greedy:
                tok = mixed.argmax(-1)
            else:
                if t % _RNG_BLOCK == 0:  # refill the per-row uniforms of the rows still active
                    for r in rows.tolist():
                        u_block[r] = torch.rand(_RNG_BLOCK, generator=rngs[r])
                    u_dev = u_block.to(dev)
                if temperature != 1.0:
                    mixed.div_(temperature)
                tok = _sample_rows(mixed, u_dev[rows, t % _RNG_BLOCK], top_k, top_p)
            if self.prune:
                out[rows, t] = tok
            else:
                out[:, t] = torch.where(alive, tok, out[:, t])
            if t == T - 1:
                break
            if check_done:
                done = torch.isin(tok, eos_t) if eos_t is not None else torch.zeros_like(alive)
                if eos_t is not None:
                    reason_code[rows[done & alive]] = 1
                if stop:
                    hit = self._stop_hits(out, rows, alive, t, stop, max_stop)
                    reason_code[rows[hit & ~done & alive]] = 2
                    done = done | hit
                done &= alive
                if bool(done.any()):
                    lengths[rows[done]] = t + 1
                    alive &= ~done
                    if not bool(alive.any()):
                        break
                    if self.prune:
                        keep = alive.nonzero().squeeze(1)
                        rows, tok, alive = rows[keep], tok[keep], alive[keep]
                        mask, next_pos = mask[keep], next_pos[keep]
                        for c in caches:
                            c.batch_select_indices(keep)
            step_ids = tok[:, None]
            step_pos = next_pos[:, None]
            step_mask = mask[:, : L + t + 1]
            logits = [run(step_ids, step_mask, step_pos, c)[:, -1, :] for run, c in zip(self._runners, caches)]
            next_pos += 1

        out_c, len_c, code_c = out.cpu(), lengths.tolist(), reason_code.tolist()
        seqs = [out_c[i, : len_c[i]].tolist() for i in range(B)]
        reasons = [("length", "eos", "stop")[c] for c in code_c]
        scores: list[torch.Tensor] = []
        if output_scores:
            V = score_steps[0][1].shape[-1]
            full = torch.full((B, len(score_steps), V), float("nan"))
            for t, (r, ls) in enumerate(score_steps):
                full[r, t] = ls
            scores = [full[i, : len_c[i]].clone() for i in range(B)]
        return seqs, reasons, scores

    def _stop_hits(self, out, rows, alive, t, stop, max_stop) -> torch.Tensor:
        """Rows whose recent tokens contain a stop string (decodes a short tail window per active row)."""
        w = max_stop + 8
        tail = out[rows, max(0, t + 1 - w) : t + 1].cpu().tolist()
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        alive_l = alive.tolist()
        hit = [a and any(s in x for s in stop) for a, x in zip(alive_l, texts)]
        return torch.tensor(hit, dtype=torch.bool, device=alive.device)

    def _check_logits(self, logits: list[torch.Tensor]) -> None:
        dims = [lg.shape[-1] for lg in logits]
        if len(set(dims)) > 1:
            raise RlvrLinearError(f"vocabulary size mismatch: the models return logits of sizes {dims}")

    # -- inspection and scoring -------------------------------------------------------------------------
    @torch.inference_mode()
    def next_token_log_probs(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """(B, V) log-probs of the next token after each prompt under the sampling distribution
        (mixed logits / temperature, top-k / top-p filtered to ``-inf``). For inspection."""
        ids, mask = self._pad_left(self.encode(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        logits = [run(ids, mask, pos, None)[:, -1, :] for run in self._runners]
        self._check_logits(logits)
        return mixed_log_probs(logits, self.weights, temperature, top_k, top_p)

    def score(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        responses: Sequence[str] | Sequence[Sequence[int]],
        batch_size: int = 16,
    ) -> list[np.ndarray]:
        """Teacher-forced per-token log-probs of ``responses`` under the mixed distribution.

        For response token y_j: ``log_softmax(sum_i w_i l_i(prompt, y_<j))[y_j]`` (temperature 1, no filtering).
        """
        return self._score(prompts, responses, batch_size)[0]

    @torch.inference_mode()
    def _score(self, prompts, responses, batch_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-token log-probs and whether each token was the argmax of the mixed logits."""
        if len(prompts) != len(responses):
            raise RlvrLinearError(f"got {len(prompts)} prompts but {len(responses)} responses")
        p_ids = self.encode(prompts)
        r_strs = [r for r in responses if isinstance(r, str)]
        r_enc = iter(self.tokenizer(r_strs, add_special_tokens=False)["input_ids"] if r_strs else [])
        r_ids = [list(next(r_enc)) if isinstance(r, str) else [int(x) for x in r] for r in responses]
        logps: list[np.ndarray] = []
        greedy: list[np.ndarray] = []
        for s in range(0, len(p_ids), batch_size):
            P, R = p_ids[s : s + batch_size], r_ids[s : s + batch_size]
            max_r = max(len(r) for r in R)
            if max_r == 0:
                logps += [np.zeros(0, dtype=np.float32) for _ in R]
                greedy += [np.zeros(0, dtype=bool) for _ in R]
                continue
            ids, mask = self._pad_left([p + r for p, r in zip(P, R)])
            ids, mask = ids.to(self.device), mask.to(self.device)
            pos = (mask.cumsum(-1) - 1).clamp_(min=0)
            keep = max_r + 1
            logits = [run(ids, mask, pos, None, keep=keep)[:, :-1, :] for run in self._runners]
            self._check_logits(logits)
            lp = torch.log_softmax(mix_logits(logits, self.weights), dim=-1)  # (B, max_r, V)
            targets = ids[:, -max_r:]
            tok_lp = lp.gather(-1, targets[..., None]).squeeze(-1).cpu().numpy()
            is_max = (lp.argmax(-1) == targets).cpu().numpy()
            for i, r in enumerate(R):
                logps.append(tok_lp[i, max_r - len(r) :].astype(np.float32))
                greedy.append(is_max[i, max_r - len(r) :])
        return logps, greedy
