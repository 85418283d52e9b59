"""Supervised fine-tuning on a task's reference answers, saving the same run layout as :mod:`.grpo`.

The run directory (``RUN/step_000000`` .. ``RUN/step_N``, ``manifest.json``, ``metrics.jsonl``, ``config.yaml``) is
what :func:`rlvr_linear.io.checkpoints.discover` and every analysis read, so an SFT trajectory can be analysed exactly
like an RL one (paper §2, Figure 2 row a: SFT is far less linear than RL).

**Token-level random-sign noise** (the paper's Figure 3 mechanism experiment; the paper does not print its formula,
this is our definition). For every answer token t (the answer characters and the closing EOS) of every example the
cross-entropy ``CE_t = -log p(y_t | x, y_<t)`` is weighted by

    w_t = (s + σ ε_t) / sqrt(s² + σ²),      ε_t ∈ {−1, +1} i.i.d. fair signs, fresh every step,

with signal ``s = 1`` and noise ``σ = 10^(−SNR_dB / 20)``, so that ``SNR = s² / σ²`` (``SNR_dB = 10 log10(s²/σ²)``).
*Zero signal* is ``s = 0, σ = 1`` (``w_t = ε_t``: pure random-sign updates). Since ``E[ε] = 0`` and ``ε² = 1``,

    E[w_t] = s / sqrt(s² + σ²),      E[w_t²] = 1,

so the expected squared weight (hence the typical per-step update size) is the same at every SNR, while the mean
(the *signal*) shrinks as the noise grows. The loss of one step is

    L = Σ_t w_t CE_t / (number of answer tokens in the batch).

Vanilla SFT (``noise_snr_db=None``, ``zero_signal=False``) is ``w_t = 1``. The signs come from a ``torch.Generator``
seeded with ``seed`` (independent of the data-order RNG), so a run is reproducible.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_json, write_text
from ..io.atomic import mark_output
from ..io.checkpoints import step_dir_name
from ..io.lock import locked
from ..io.outputs import MARKER, check_overwrite
from ..io.validate import check_fields, flag, integer, number, text
from ..runtime.threads import use as threads_use
from .optimizers import check_optimizer

#: what every SFTConfig field accepts (checked where the config is built)
SFT_FIELD_RULES = {
    "model": text(), "task": text(), "steps": integer(1), "save_every": integer(1), "learning_rate": number(gt=0),
    "batch_size": integer(1), "optimizer": text(), "weight_decay": number(ge=0), "max_grad_norm": number(ge=0),
    "seed": integer(0, 2**32 - 1), "noise_snr_db": number(optional=True), "zero_signal": flag(),
    "eval_problems": integer(1), "threads": integer(1, optional=True),
}  # fmt: skip


@dataclass
class SFTConfig:
    """Every knob of a supervised run (same run layout as :class:`.grpo.TrainConfig`)."""

    model: str = "tiny"  #: ``tiny``, ``smollm2-135m`` or an HF model directory (the starting point, step 0)
    task: str = "arithmetic"  #: task name (``rlvr_linear.evaluation.tasks.get_task``); targets are ``Problem.answer``
    steps: int = 200  #: optimizer steps
    save_every: int = 20  #: save a checkpoint every K steps (step 0 is always saved)
    learning_rate: float = 3e-4  #: constant learning rate, no warm-up
    batch_size: int = 16  #: problems per optimizer step
    optimizer: str = "adamw"  #: adamw | sgd
    weight_decay: float = 0.0  #: AdamW / SGD weight decay
    max_grad_norm: float = 1.0  #: gradient clipping (as in the RL runs)
    seed: int = 0  #: data order and noise signs
    noise_snr_db: float | None = None  #: token-level random-sign noise at this SNR in dB (None: no noise)
    zero_signal: bool = False  #: s = 0, σ = 1: pure random-sign weights (overrides ``noise_snr_db``)
    eval_problems: int = 200  #: validation problems for the greedy accuracy at every save
    threads: int | None = None  #: torch CPU threads (default: leave as is)

    def __post_init__(self):
        check_fields(self, SFT_FIELD_RULES)
        check_optimizer(self.optimizer)

    @property
    def noise_label(self) -> str:
        """``none`` | ``zero-signal`` | ``<SNR> dB``."""
        if self.zero_signal:
            return "zero-signal"
        return "none" if self.noise_snr_db is None else f"{self.noise_snr_db:g} dB"

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(asdict(self), sort_keys=False)


def signal_noise(snr_db: float | None, zero_signal: bool = False) -> tuple[float, float]:
    """``(s, σ)``: ``(1, 10^(−snr_db/20))``; ``(0, 1)`` for zero signal; ``(1, 0)`` without noise."""
    if zero_signal:
        return 0.0, 1.0
    if snr_db is None:
        return 1.0, 0.0
    return 1.0, 10.0 ** (-float(snr_db) / 20.0)


def noise_weights(
    shape: tuple[int, ...] | torch.Size,
    snr_db: float | None,
    zero_signal: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-token loss weights ``w = (s + σ ε) / sqrt(s² + σ²)`` with fair random signs ε (float32, ``shape``).

    Without noise (``snr_db=None`` and not ``zero_signal``) every weight is 1.
    """
    s, sigma = signal_noise(snr_db, zero_signal)
    if sigma == 0.0:
        return torch.ones(shape)
    eps = torch.randint(0, 2, tuple(shape), generator=generator).float() * 2.0 - 1.0
    return (s + sigma * eps) / math.sqrt(s * s + sigma * sigma)


def weighted_sft_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_t w_t CE_t / #answer tokens`` over the positions whose (shifted) label is not -100.

    ``logits`` (B, L, V) predict the next token; ``labels`` (B, L) hold -100 outside the answer; ``weights`` (B, L-1)
    (one per shifted label position; ignored where the label is -100). ``weights=None`` is plain mean CE.
    """
    lg = logits[:, :-1].float()
    y = labels[:, 1:]
    mask = y != -100
    ce = torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), y.clamp(min=0).reshape(-1), reduction="none"
    ).view_as(y)
    w = torch.ones_like(ce) if weights is None else weights.to(ce)
    n = mask.sum().clamp(min=1)
    return (w * ce * mask).sum() / n


def _prepare_run(run: Path, overwrite: bool, inputs: list[str]) -> None:
    if run.exists() and any(p.name != MARKER for p in run.iterdir()):
        if not overwrite:
            raise RlvrLinearError(f"{run} exists and is not empty; use --overwrite to replace it")
        check_overwrite(run, kind="run", inputs=inputs)
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    mark_output(run, "run")


def train_sft(cfg: SFTConfig, run: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Supervised training with optional token-level random-sign noise; writes the RL run layout. Returns the manifest.

    Each step draws ``batch_size`` training problems (``random.Random(seed)``, with replacement), builds
    ``base_model.sft_batch(task.render(p), p.answer)`` (loss on answer + EOS only), weights every answer token with
    :func:`noise_weights` and takes one optimizer step on :func:`weighted_sft_loss` (grad-norm clipped). Checkpoints
    ``step_N`` are saved every ``save_every`` steps with their validation greedy accuracy in ``manifest.json``;
    ``metrics.jsonl`` has one line per step (loss, plain CE, mean weight). The run directory is locked meanwhile.
    """
    with locked(run):
        return _train_sft(cfg, Path(run), overwrite, progress)


def _train_sft(cfg: SFTConfig, run: Path, overwrite: bool, progress: bool) -> dict:
    from ..evaluation.evaluation import evaluate
    from ..evaluation.tasks import get_task
    from ..io.tokenizer import load_tokenizer
    from .grpo import BASE_NAMES, resolve_model, save_checkpoint

    if cfg.threads:
        threads_use(cfg.threads)
    _prepare_run(run, overwrite, [] if cfg.model in BASE_NAMES else [cfg.model])
    task = get_task(cfg.task)
    base_dir = resolve_model(cfg.model, progress=progress)
    from ..io.loading import load_causal_lm

    tok = load_tokenizer(base_dir)
    torch.manual_seed(cfg.seed)
    model = load_causal_lm(base_dir, dtype=torch.float32)  # (pickled weights are refused)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    try:
        pool = task.problems("train", None)
    except (RlvrLinearError, TypeError):
        pool = task.problems("train", min(cfg.steps * cfg.batch_size, 20000))
    val = task.problems("validation", cfg.eval_problems)
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    manifest: dict = {
        "kind": "sft",
        "config": asdict(cfg),
        "base_model": str(base_dir),
        "task": task.name,
        "noise": {"label": cfg.noise_label, "signal": signal_noise(cfg.noise_snr_db, cfg.zero_signal)[0],
                  "sigma": signal_noise(cfg.noise_snr_db, cfg.zero_signal)[1]},
        "checkpoints": [],
    }  # fmt: skip
    write_text(run / "config.yaml", cfg.to_yaml())
    (run / "metrics.jsonl").unlink(missing_ok=True)
    t0 = time.time()
    losses: list[float] = []

    def save(step: int) -> None:
        name = step_dir_name(step)
        save_checkpoint(model, tok, run / name)
        model.eval()
        acc = evaluate((model, tok), task, problems=val, k=0, batch_size=256).greedy_accuracy
        model.train()
        entry = {
            "step": step,
            "path": name,
            "mean_reward": None,
            "mean_loss": (sum(losses) / len(losses)) if losses else None,
            "val_accuracy": acc,
            "wall_time": round(time.time() - t0, 2),
        }
        losses.clear()
        manifest["checkpoints"].append(entry)
        manifest["wall_time"] = entry["wall_time"]
        write_json(run / "manifest.json", manifest)

    save(0)
    model.train()
    desc = f"SFT ({cfg.noise_label} noise)"
    bar = tqdm(range(1, cfg.steps + 1), desc=desc, disable=None if progress else True, dynamic_ncols=True)
    from ..models.base_model import sft_batch

    with open(run / "metrics.jsonl", "a") as metrics:
        for step in bar:
            batch = [pool[rng.randrange(len(pool))] for _ in range(cfg.batch_size)]
            x, y, m = sft_batch(tok, [task.render(p, tok) for p in batch], [task.reference(p) for p in batch])
            logits = model(input_ids=x, attention_mask=m).logits
            w = noise_weights((x.shape[0], x.shape[1] - 1), cfg.noise_snr_db, cfg.zero_signal, gen)
            loss = weighted_sft_loss(logits, y, w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            with torch.no_grad():
                ce = weighted_sft_loss(logits.detach(), y).item()
                mask = y[:, 1:] != -100
                wmean = float(w[mask].mean()) if mask.any() else float("nan")
            losses.append(ce)
            rec = {"step": step, "loss": loss.item(), "ce": ce, "weight_mean": wmean, "grad_norm": float(gnorm)}
            metrics.write(json.dumps(rec) + "\n")
            if step % cfg.save_every == 0 or step == cfg.steps:
                save(step)
            bar.set_postfix(ce=f"{ce:.3f}", val_acc=f"{manifest['checkpoints'][-1]['val_accuracy']:.3f}")
    bar.close()
    manifest["finished"] = True
    write_json(run / "manifest.json", manifest)
    return manifest
