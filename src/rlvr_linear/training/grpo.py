"""RLVR training with TRL's ``GRPOTrainer`` that saves a checkpoint *trajectory*.

A run directory looks like::

    RUN/
      config.yaml            the TrainConfig used
      manifest.json          step -> path, mean reward, validation accuracy, wall time
      metrics.jsonl          one line per optimizer step (TRL's logs)
      step_000000/           the starting model (weights-only HF directory)
      step_000020/ ...       every ``save_every`` steps
      resume/                optimizer moments, data position, random state of the last save (safetensors + JSON)
      sketch/                with ``sketch``: weight sample and probe log-probs of every save (rlvr-linear sketch)

Runs on CPU here and unchanged on GPU (accelerate; ``use_vllm`` for vLLM generation). A killed run
resumes from its last save: same weights, optimizer moments, data position and random state.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..errors import RlvrLinearError
from ..evaluation.evaluation import SAMPLING_RULES, evaluate
from ..evaluation.tasks import get_task
from ..io import atomic_dir, locked, mark_output, outputs, read_json, write_json, write_text
from ..io.checkpoints import find_model_dir, step_dir_name
from ..io.tokenizer import MARKER, load_tokenizer
from ..io.validate import Rule, check_fields, choice, flag, integer, mapping, number, read_yaml_mapping, show, text
from ..models.base_model import ensure_base
from ..runtime.threads import SMALL_MODEL_PARAMS, for_model
from ..runtime.threads import use as threads_use
from ..runtime.trl_cpu import compact_fused_lm_head
from .optimizers import check_optimizer
from .resume import read_resume, set_rng_state, write_resume

ALGORITHMS = {
    # name: (TRL loss_type, importance_sampling_level, scale_rewards)
    "grpo": ("grpo", "token", "group"),
    "dapo": ("dapo", "token", "group"),
    "dr_grpo": ("dr_grpo", "token", "none"),
    "gspo": ("grpo", "sequence", "group"),
    "bnpo": ("bnpo", "token", "group"),
}

#: the GRPOConfig fields that :func:`train` sets itself -> the TrainConfig field (or rule) they come from;
#: ``grpo_extra`` may not set them
GRPO_OWN_FIELDS = {
    **dict.fromkeys(["per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation"],
                    "micro_batch"),
    **dict.fromkeys(["loss_type", "importance_sampling_level", "scale_rewards"], "algorithm"),
    **{k: k for k in ["learning_rate", "weight_decay", "temperature", "top_p", "epsilon", "epsilon_high", "beta",
                      "max_grad_norm", "seed", "bf16", "use_vllm"]},
    "num_generations": "samples_per_prompt", "max_completion_length": "max_new_tokens", "optim": "optimizer",
    "max_steps": "steps", "data_seed": "seed", "lr_scheduler_type": "the constant learning rate",
    "warmup_steps": "the constant learning rate",
    **dict.fromkeys(["output_dir", "logging_steps", "save_strategy", "report_to", "use_cpu", "shuffle_dataset",
                     "disable_tqdm", "dataloader_num_workers", "activation_checkpointing"], "the trajectory layout"),
}  # fmt: skip


def _reground_spec(v):
    """``"M,N"``, ``"M,auto"`` or ``"auto"`` with M >= 1, N >= 0 (the ``--reground`` flag); else ValueError."""
    if not isinstance(v, str):
        raise TypeError
    s = v.replace(" ", "")
    if s != "auto":
        m, n = s.split(",")
        if int(m) < 1 or (n != "auto" and int(n) < 0):
            raise ValueError
    return v


#: what every TrainConfig field accepts (checked where the config is built)
FIELD_RULES: dict[str, Rule] = {
    "model": text(), "task": text(), "steps": integer(1), "save_every": integer(1), "algorithm": text(),
    "learning_rate": number(gt=0), "optimizer": text(), "weight_decay": number(ge=0),
    "prompts_per_step": integer(1), "samples_per_prompt": integer(2), **SAMPLING_RULES,
    "epsilon": number(ge=0, le=1), "epsilon_high": number(ge=0), "beta": number(ge=0), "max_grad_norm": number(ge=0),
    "seed": integer(0, 2**32 - 1), "eval_every": integer(1, optional=True), "eval_problems": integer(1),
    "reground": Rule("'M,N', 'M,auto' or 'auto' (M >= 1, N >= 0)", _reground_spec, optional=True),
    "reground_norms": choice(["copy", "extrapolate"]), "reground_optimizer": choice(["keep", "reset"]),
    "reground_max_n": integer(0, optional=True),
    "monitor": flag(), "monitor_every": integer(1, optional=True), "bf16": flag(), "use_vllm": flag(), "sketch": flag(),
    "allow_pickle": flag(), "threads": integer(1, optional=True), "micro_batch": integer(0, optional=True),
    "grpo_extra": mapping(),
}  # fmt: skip


@dataclass
class TrainConfig:
    """Every knob of an RLVR run. Load from YAML with :meth:`from_yaml`; CLI flags override fields."""

    model: str = "tiny"  #: ``tiny`` (embedded default), ``tiny-cot``, ``smollm2-135m``, or an HF model directory
    task: str = "arithmetic"  #: task name (see ``rlvr_linear.evaluation.tasks.get_task``)
    steps: int = 200  #: optimizer steps
    save_every: int = 20  #: save a weights-only checkpoint every K steps (step 0 is always saved)
    algorithm: str = "grpo"  #: grpo | dapo | dr_grpo | gspo (sequence-level importance sampling) | bnpo
    learning_rate: float = 3e-4  #: constant learning rate, no warm-up (as the paper's verl recipe)
    optimizer: str = "adamw"  #: adamw | sgd
    weight_decay: float = 0.0  #: AdamW / SGD weight decay
    prompts_per_step: int = 16  #: distinct prompts per optimizer step
    samples_per_prompt: int = 8  #: group size G (rollouts per prompt)
    max_new_tokens: int | None = None  #: completion length (default: the task's)
    temperature: float = 1.0  #: sampling temperature during training
    top_p: float = 1.0  #: nucleus sampling during training
    epsilon: float = 0.2  #: lower clip range
    epsilon_high: float = 0.28  #: upper clip range ("clip-higher", paper §7.2)
    beta: float = 0.0  #: KL coefficient (paper: no KL)
    max_grad_norm: float = 1.0  #: gradient clipping (paper: 1.0)
    seed: int = 0  #: data order, sampling and init of anything random
    eval_every: int | None = None  #: validation greedy accuracy every K steps (default: save_every)
    eval_problems: int = 200  #: validation problems per evaluation
    reground: str | None = None  #: "M,N": jump N steps after every M gradient steps (ReGroundingCallback)
    reground_norms: str = "copy"  #: norm policy of the jump: copy | extrapolate
    reground_optimizer: str = "keep"  #: optimizer state after a jump: keep | reset
    reground_max_n: int | None = None  #: "M,auto" / "auto" re-grounding: cap on the automatic N (default 5 M)
    monitor: bool = False  #: LinearityMonitor: log drift-to-noise, R² vs null, forecast error ratio and h*
    monitor_every: int | None = None  #: monitor record interval in steps (default: save_every); "auto" M too
    sketch: bool = False  #: write a trajectory sketch to RUN/sketch at every save (weights + log-probs of task probes)
    allow_pickle: bool = False  #: start from pickled weights (.bin, verl .pt shards), read with weights_only=True
    bf16: bool = False  #: bf16 training (leave off on CPU: 6-22x slower without AVX-512/AMX)
    use_vllm: bool = False  #: generate with vLLM (GPU)
    threads: int | None = None  #: torch threads (default: OMP_NUM_THREADS, else 1 under 20M params, all cores above)
    micro_batch: int | None = None  #: sequences per forward/backward pass (gradient accumulation over one generation
    #: batch; 0: the whole batch; default: the whole batch under 20M parameters, 16 above; must divide the batch)
    grpo_extra: dict = field(default_factory=dict)  #: extra GRPOConfig fields, passed through

    def __post_init__(self):
        check_fields(self, FIELD_RULES)
        if self.algorithm not in ALGORITHMS:
            raise RlvrLinearError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        check_optimizer(self.optimizer)
        batch = self.prompts_per_step * self.samples_per_prompt
        if self.micro_batch and batch % self.micro_batch:
            raise RlvrLinearError(
                f"micro_batch must divide the batch of {batch} sequences (prompts_per_step x samples_per_prompt) "
                f"(got {self.micro_batch})"
            )
        own = {k: GRPO_OWN_FIELDS[k] for k in self.grpo_extra if k in GRPO_OWN_FIELDS}
        if own:
            k, src = next(iter(own.items()))
            how = f"from the field {src}" if src in FIELD_RULES else f"itself ({src})"
            raise RlvrLinearError(f"grpo_extra cannot set {k} (got {show(self.grpo_extra[k])}): train sets it {how}")
        if self.grpo_extra:
            from trl import GRPOConfig  # here only: trl takes seconds to import

            unknown = sorted(set(self.grpo_extra) - {f.name for f in fields(GRPOConfig) if f.init})
            if unknown:
                raise RlvrLinearError(f"grpo_extra: unknown GRPOConfig fields {show(unknown)}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """The config of a YAML file (every value checked, errors name the file), then ``overrides`` (not None)."""
        p = Path(path)
        data = read_yaml_mapping(p, "TrainConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RlvrLinearError(f"{p}: unknown config fields {unknown}")
        try:
            cfg = cls(**data)
        except RlvrLinearError as e:
            raise RlvrLinearError(f"{p}: {e}") from None
        over = {k: v for k, v in overrides.items() if v is not None}
        return replace(cfg, **over) if over else cfg

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(asdict(self), sort_keys=False)


PRESETS: dict[str, dict] = {
    # the embedded default: tiny char-level Qwen2 on 2-digit addition, at the regime map's paper-like point that
    # fits the default study's budget (SGD at lr 3e-3, 128 responses per step, 560 steps, 15 checkpoints; weight and
    # log-prob R² clear the paper's bar on 3 seeds; docs/regime.md); ~0.25 s/step on one core
    "tiny": dict(model="tiny", task="arithmetic", steps=560, save_every=40, learning_rate=3e-3, optimizer="sgd"),
    # AdamW at 3e-5 over the same horizon: the default until the map's seeds 1 and 2 (misses the bar on two seeds)
    "tiny-adamw": dict(model="tiny", task="arithmetic", steps=560, save_every=40, learning_rate=3e-5),
    # v0.1's default, kept as a contrast: 10x the rate over 200 steps, where the paper's linearity does not appear
    "tiny-fast": dict(model="tiny", task="arithmetic", steps=200, save_every=20, learning_rate=3e-4),
    # the long-response variant: the tiny base warmed up on chain-of-thought arithmetic (21-54 response tokens, only
    # the final answer rewarded); AdamW at 3e-5 over 560 steps, as the regime map's long-response points
    "tiny-cot": dict(model="tiny-cot", task="arithmetic-cot", steps=560, save_every=40, learning_rate=3e-5),
    # the real-model preset: SmolLM2-135M-Instruct (paper-like lr, small batch; ~50 s/step on 2 CPU cores)
    "smollm2": dict(
        model="smollm2-135m",
        task="arithmetic",
        steps=30,
        save_every=5,
        learning_rate=1e-5,
        prompts_per_step=8,
        samples_per_prompt=8,
        max_new_tokens=16,
        eval_problems=100,
    ),
    # the real model on a task with headroom and long replies: arithmetic-cot-chat (base greedy 0.20 on
    # 200 validation problems, ~27-token replies, up to 48), 150 steps and 15 checkpoints; docs/smollm2.md.
    # Sampling at T = 0.7, top-p 0.95: at T = 1 the base's sampled accuracy is 0.023 (64 validation problems x 4),
    # so most groups of 8 carry no learning signal; at T = 0.7 it is 0.102. lr x steps = 1.5e-3, the paper's
    # 1e-6 x 1,400 = 1.4e-3.
    "smollm2-cot": dict(
        model="smollm2-135m",
        task="arithmetic-cot-chat",
        steps=150,
        save_every=10,
        learning_rate=1e-5,
        prompts_per_step=8,
        samples_per_prompt=8,
        temperature=0.7,
        top_p=0.95,
        eval_problems=100,
    ),
    # the 100-minute real-model experiment (docs/smollm2.md, setting S4): arithmetic with an empty system message
    # (prompts ~27 tokens instead of ~67), replies <= 16 tokens, 8 prompts x 4 samples at T 0.7, AdamW at 1e-6 (the
    # setting rule's rate: 1e-5 and 3e-6 learn the format in 30 steps), 150 steps, 15 checkpoints, a sketch at each
    "smollm2-arith": dict(
        model="smollm2-135m",
        task="arithmetic:system=",
        steps=150,
        save_every=10,
        learning_rate=1e-6,
        optimizer="adamw",
        prompts_per_step=8,
        samples_per_prompt=4,
        max_new_tokens=16,
        temperature=0.7,
        top_p=0.95,
        eval_problems=200,
        sketch=True,
    ),
}


# --------------------------------------------------------------------------------------------------
# Saving the trajectory


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """A weights-only HF checkpoint (safetensors, config, tokenizer), written atomically."""
    with atomic_dir(out, overwrite=True, kind="checkpoint") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        src = getattr(tokenizer, "name_or_path", "")
        if src and (Path(src) / MARKER).exists():
            (tmp / MARKER).write_text((Path(src) / MARKER).read_text())


class TrajectoryCallback(TrainerCallback):
    """Saves ``RUN/step_N`` every ``save_every`` steps, updates the manifest, logs metrics, shows progress."""

    def __init__(
        self,
        run: Path,
        cfg: TrainConfig,
        task,
        tokenizer,
        step_offset: int = 0,
        manifest: dict | None = None,
        progress: bool = True,
    ):
        self.run, self.cfg, self.task, self.tok = run, cfg, task, tokenizer
        self.offset = step_offset
        self.manifest = manifest or {"checkpoints": []}
        self.rewards: list[float] = []
        self.t0 = time.time() - self.manifest.get("wall_time", 0.0)
        self.val = self.task.problems("validation", cfg.eval_problems)
        self.bar = tqdm(
            total=cfg.steps, initial=step_offset, desc="RL", dynamic_ncols=True, disable=None if progress else True
        )
        self.plain = progress and self.bar.disable  # no terminal: a plain line per checkpoint instead of the bar
        self.last_acc = self.manifest["checkpoints"][-1].get("val_accuracy") if self.manifest["checkpoints"] else None
        self.optimizer = None
        self.regrounder = None
        self.monitor = None
        self.sketch = None  # a SketchCallback, recording at every save
        self.rng = None  # a resumed run: the random state of the save it resumes from, restored at its first step

    def step(self, state) -> int:
        return self.offset + state.global_step

    def evaluate(self, model) -> float:
        was_training = model.training
        acc = evaluate((model.eval(), self.tok), self.task, problems=self.val, k=0, batch_size=256).greedy_accuracy
        model.train(was_training)
        return acc

    def save(self, model, step: int, reward: float | None) -> None:
        name = step_dir_name(step)
        save_checkpoint(model, self.tok, self.run / name)
        if self.sketch is not None:  # what was just saved (touches no random state)
            self.sketch.record(model, step, self.tok, source=str(self.run / name))
            times = self.manifest.setdefault("sketch_seconds", {})  # per step recorded (a resumed run adds to it)
            times.update({str(k): round(v, 3) for k, v in self.sketch.record_seconds.items()})
        eval_every = self.cfg.eval_every or self.cfg.save_every
        if step % eval_every == 0:  # (evaluation seeds torch: the samples that follow depend on it)
            acc = self.evaluate(model)
        elif step == self.cfg.steps:  # off the grid: no trace on the random state, so a longer run can continue
            with torch.random.fork_rng():
                acc = self.evaluate(model)
        else:
            acc = None
        if acc is not None:
            self.last_acc = acc
        entry = {
            "step": step,
            "path": name,
            "mean_reward": reward,
            "val_accuracy": acc,
            "wall_time": round(time.time() - self.t0, 2),
        }
        if self.regrounder is not None:
            entry["effective_step"] = self.regrounder.effective_steps
        if self.monitor is not None:
            self.manifest["monitor"] = self.monitor.history
        if self.regrounder is not None:
            self.manifest["reground_history"] = self.regrounder.history
        if self.optimizer is not None:
            write_resume(self.run / "resume", step, self.optimizer)
        self.manifest["checkpoints"] = [c for c in self.manifest["checkpoints"] if c["step"] != step] + [entry]
        self.manifest["wall_time"] = entry["wall_time"]
        write_json(self.run / "manifest.json", self.manifest)
        if self.plain:
            r = "-" if reward is None else f"{reward:.3f}"
            a = "-" if acc is None else f"{acc:.3f}"
            line = f"RL step {step}/{self.cfg.steps}: mean reward {r}, val greedy {a}, {entry['wall_time']:.0f} s"
            print(line, file=sys.stderr, flush=True)

    # TrainerCallback hooks ---------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.optimizer = optimizer
        if self.offset == 0:
            self.save(model, 0, None)
            self.t0 = time.time()

    def on_step_begin(self, args, state, control, **kw):
        if self.rng is not None:  # after the data loader drew its seed, before the first sample
            set_rng_state(*self.rng)
            self.rng = None

    def on_log(self, args, state, control, logs=None, model=None, **kw):
        # TRL logs every step (logging_steps=1) after on_step_end: record, then save with this step's reward
        if not logs or "reward" not in logs:
            return
        step = self.step(state)
        rec = {"step": step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        if self.regrounder is not None:
            rec["effective_step"] = self.regrounder.effective_steps
        with open(self.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.rewards.append(float(logs["reward"]))
        post = {"reward": f"{self.rewards[-1]:.3f}"}
        if step % self.cfg.save_every == 0 or step == self.cfg.steps:
            reward = sum(self.rewards) / len(self.rewards)
            self.rewards = []
            self.save(model, step, reward)
        if self.last_acc is not None:
            post["val_acc"] = f"{self.last_acc:.3f}"
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(post)

    def on_train_end(self, args, state, control, **kw):
        self.bar.close()


# --------------------------------------------------------------------------------------------------
# Models


BASE_NAMES = ("tiny", "tiny-cot", "smollm2-135m", "smollm2")  #: base models known by name, not by folder


def resolve_model(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """``tiny`` / ``tiny-cot`` (shipped) / ``smollm2-135m`` (converted once and cached) or an HF model directory."""
    if name in BASE_NAMES:
        return ensure_base(name, cache_dir=cache_dir, progress=progress)
    return find_model_dir(name)


#: sequences per forward/backward pass of a large model: TRL's whole 64-sequence SmolLM2 batch peaked at 18.8 GB RSS,
#: micro-batches of 16 (with the changes below) at 6.9 GB, and the step got no slower (docs/smollm2.md)
LARGE_MODEL_MICRO_BATCH = 16


def micro_batch_size(cfg: TrainConfig, n_params: int) -> int:
    """Sequences per forward/backward pass: ``cfg.micro_batch``, else the whole batch for small models, 16 above.

    TRL gets ``per_device_train_batch_size`` = this, ``gradient_accumulation_steps`` = ``steps_per_generation`` =
    batch / this: one generation of the whole batch per optimizer step (so no old log-probs are recomputed: the
    samples are on-policy), its loss and gradient accumulated over the micro-batches.
    """
    total = cfg.prompts_per_step * cfg.samples_per_prompt
    if cfg.micro_batch is not None:
        mb = cfg.micro_batch or total
    else:
        mb = total if n_params < SMALL_MODEL_PARAMS else min(total, LARGE_MODEL_MICRO_BATCH)
    if mb < 1 or total % mb:
        raise RlvrLinearError(
            f"micro_batch {mb} must divide the batch of {total} sequences (prompts_per_step x samples_per_prompt)"
        )
    return mb


def _rows(task, cfg: TrainConfig, chat: bool) -> list[dict]:
    need = cfg.steps * cfg.prompts_per_step
    try:
        pool = task.problems("train", None)
    except (RlvrLinearError, TypeError):
        pool = task.problems("train", min(need, 20000))
    rng = random.Random(cfg.seed)
    rows: list[dict] = []
    while len(rows) < need:
        order = list(range(len(pool)))
        rng.shuffle(order)
        for i in order:
            p = pool[i]
            prompt = task.messages(p) if chat else task.render(p)
            rows.append({"prompt": prompt, "answer": p.answer, "problem_id": p.id})
    return rows[:need]


def train(cfg: TrainConfig, run: str | Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Run RLVR training and write the trajectory to ``run``. Returns the manifest.

    If ``run`` holds a run with the same config, training resumes from its last save (weights, optimizer moments,
    data position, random state: on one thread the result equals an uninterrupted run's, bit for bit); a larger
    ``steps`` continues a finished run, the same ``steps`` returns it as it is. Known limit: a resumed ``--reground``
    run starts a new re-grounding segment at the resume point (the anchor is not saved) and counts effective steps
    from there.
    ``run`` is locked while training; ``overwrite`` replaces only a run of ours (:func:`.outputs.check_overwrite`).
    """
    with locked(run):
        return _train_locked(cfg, Path(run), overwrite, progress)


def _train_locked(cfg: TrainConfig, run: Path, overwrite: bool, progress: bool) -> dict:
    import shutil

    if cfg.threads:
        threads_use(cfg.threads)
    manifest = None
    offset = 0
    if (run / "manifest.json").exists() and not overwrite:
        manifest = read_json(run / "manifest.json")
        saved = TrainConfig(
            **{k: v for k, v in manifest["config"].items() if k in {f.name for f in fields(TrainConfig)}}
        )
        diff = config_changes(asdict(saved), asdict(cfg))
        diff.pop("steps", None)  # more steps continue the run (finished or not) from its last save
        if diff:
            raise RlvrLinearError(f"{run} holds a run with a different config {diff}; use --overwrite to start over")
        offset = manifest["checkpoints"][-1]["step"] if manifest["checkpoints"] else 0
        if cfg.steps < offset:
            raise RlvrLinearError(f"{run} holds {offset} steps, more than steps={cfg.steps}; use --overwrite instead")
        if cfg.steps != saved.steps or (offset == cfg.steps and not manifest.get("finished")):
            manifest.update(config=asdict(cfg), finished=offset == cfg.steps)
            write_json(run / "manifest.json", manifest)
            write_text(run / "config.yaml", cfg.to_yaml())
        if offset == cfg.steps:
            print(f"run {run} is already complete ({cfg.steps} steps); nothing to do")
            return manifest
        print(f"resuming {run} from step {offset}" + (f" (now {cfg.steps} steps)" if cfg.steps != saved.steps else ""))
        _trim_metrics(run / "metrics.jsonl", offset)
    elif run.exists() and any(p.name != outputs.MARKER for p in run.iterdir()):
        if not overwrite:
            raise RlvrLinearError(f"{run} exists and is not an unfinished run; use --overwrite to replace it")
        outputs.check_overwrite(run, kind="run", inputs=[] if cfg.model in BASE_NAMES else [cfg.model])
        shutil.rmtree(run)
    created = [p for p in [run, *run.parents] if not p.exists()]
    run.mkdir(parents=True, exist_ok=True)
    try:
        mark_output(run, "run")  # unless marked already
        return _train_in(cfg, run, manifest, offset, progress)
    except BaseException:
        if not (run / "manifest.json").exists():  # nothing to resume: leave no folder we created behind
            for d in created:
                shutil.rmtree(d, ignore_errors=True)
        raise


def config_changes(saved: dict, new: dict) -> dict:
    """``{field: (saved value, new value)}`` for the fields that differ; NaN equals NaN (also inside dicts, lists)."""
    return {k: (v, new.get(k)) for k, v in saved.items() if not _same(v, new.get(k))}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _trim_metrics(path: Path, step: int) -> None:
    """Keep each step's metrics once, in order, up to the resumed ``step`` (a killed run logged past its last save)."""
    if not path.exists():
        return
    recs: dict[int, str] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            recs[rec["step"]] = line  # the last record of a step is the one the saved weights followed
    write_text(path, "".join(recs[k] + "\n" for k in sorted(recs)))


def _train_in(cfg: TrainConfig, run: Path, manifest: dict | None, offset: int, progress: bool) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from ..io.loading import load_causal_lm

    task = get_task(cfg.task)
    base_dir = resolve_model(cfg.model, progress=progress)
    start_dir = run / step_dir_name(offset) if offset else base_dir
    tok = load_tokenizer(start_dir)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model = load_causal_lm(start_dir, dtype=dtype, allow_pickle=cfg.allow_pickle)
    if not cfg.threads:
        for_model(model)  # 1 thread for small models, all cores for large (unless --threads / OMP_NUM_THREADS)
    chat = bool(getattr(tok, "chat_template", None))
    if manifest is None:
        manifest = {"config": asdict(cfg), "base_model": str(base_dir), "task": cfg.task, "checkpoints": []}
        write_text(run / "config.yaml", cfg.to_yaml())
        (run / "metrics.jsonl").unlink(missing_ok=True)

    rows = _rows(task, cfg, chat)[offset * cfg.prompts_per_step :]
    loss_type, is_level, scale = ALGORITHMS[cfg.algorithm]
    n_params = sum(p.numel() for p in model.parameters())
    mb = micro_batch_size(cfg, n_params)
    accum = cfg.prompts_per_step * cfg.samples_per_prompt // mb
    extra = dict(cfg.grpo_extra)
    # TRL's default recomputes every forward inside the backward (about 1/3 more compute); a large model's memory is
    # bounded by the micro-batches instead (docs/smollm2.md). Small models keep TRL's default, as before.
    extra.setdefault("gradient_checkpointing", n_params < SMALL_MODEL_PARAMS)
    # transformers >= 5.2x added FSDP's ``activation_checkpointing`` (default on for some setups); older releases in
    # our range (>= 4.56) do not know the field
    if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)}:
        extra["activation_checkpointing"] = False
    gcfg = GRPOConfig(
        output_dir=str(run / ".trainer"),
        per_device_train_batch_size=mb,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_generations=cfg.samples_per_prompt,
        max_completion_length=cfg.max_new_tokens or task.max_new_tokens(chat),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=cfg.weight_decay,
        optim="sgd" if cfg.optimizer == "sgd" else "adamw_torch",
        max_steps=cfg.steps - offset,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        loss_type=loss_type,
        importance_sampling_level=is_level,
        scale_rewards=scale,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed + offset,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=cfg.bf16,
        use_cpu=not torch.cuda.is_available(),
        use_vllm=cfg.use_vllm,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    cb = TrajectoryCallback(run, cfg, task, tok, step_offset=offset, manifest=manifest, progress=progress)
    callbacks = [cb]
    monitor = rg = None
    if cfg.monitor or (cfg.reground and cfg.reground.replace(" ", "").split(",")[-1] == "auto"):
        from .monitor import LinearityMonitor

        monitor = cb.monitor = LinearityMonitor(every=cfg.monitor_every or cfg.save_every)
    if cfg.sketch:
        from .sketch_callback import train_sketch

        cb.sketch = train_sketch(run / "sketch", run / step_dir_name(0), cfg.task, max_new_tokens=cfg.max_new_tokens)
    if cfg.reground:
        from .regrounding import ReGroundingCallback

        spec = f"{monitor.every},auto" if cfg.reground.strip() == "auto" else cfg.reground
        rg = ReGroundingCallback.from_spec(
            spec, norms=cfg.reground_norms, optimizer_state=cfg.reground_optimizer, monitor=monitor,
            max_n=cfg.reground_max_n,
        )  # fmt: skip
        cb.regrounder = rg
        callbacks.insert(0, rg)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[task.reward_function()],
        args=gcfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=callbacks,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for c in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(c)
    if monitor is not None:
        monitor.install(trainer)  # first: its keys reach metrics.jsonl and any reporting callback
        if rg is not None:  # record pre-jump weights, in effective steps
            monitor.coordinate = lambda state: state.global_step + rg.extrapolated_steps
    if offset and (run / "resume" / "state.json").exists():
        trainer.create_optimizer_and_scheduler(num_training_steps=gcfg.max_steps)
        cb.rng = read_resume(run / "resume", offset, trainer.optimizer)
    # large model on CPU: TRL's fused LM head scores only the completion positions (trl_cpu.py); small ones as before
    with compact_fused_lm_head(n_params >= SMALL_MODEL_PARAMS):
        trainer.train()
    manifest = cb.manifest
    manifest["finished"] = True
    write_json(run / "manifest.json", manifest)
    return manifest


def summarize(manifest: dict) -> str:
    cps = manifest["checkpoints"]
    accs = [(c["step"], c["val_accuracy"]) for c in cps if c.get("val_accuracy") is not None]
    first, last = accs[0] if accs else (0, math.nan), accs[-1] if accs else (0, math.nan)
    return (
        f"{len(cps)} checkpoints, steps {cps[0]['step']}..{cps[-1]['step']}; validation greedy accuracy "
        f"{first[1]:.3f} (step {first[0]}) -> {last[1]:.3f} (step {last[0]}); wall {manifest.get('wall_time', 0):.0f} s"
    )
