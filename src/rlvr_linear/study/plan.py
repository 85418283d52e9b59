"""What a study will run and how long it should take, printed before the first stage starts.

Each stage's estimate counts its units of work (RL and SFT steps, evaluated problems, sampled replies, probe
scorings, checkpoint loads and saves, weight-R² passes) and prices them with per-model unit costs measured on this
machine's CPU in one thread (:data:`UNIT_COSTS`, each with its source). The estimate is wall time on a free core;
nothing reads it but the user (and the "not run (budget)" results, which quote one skipped run's cost).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import StudyConfig


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of the study's work for one model, measured with ``threads`` torch threads."""

    rl_step: float  #: one RL optimizer step (sampling the batch + training), without evaluation and saving
    sft_step: float  #: one SFT step of the study's batch
    greedy: float  #: greedy evaluation, per problem
    sample: float  #: one sampled reply (avg@k); logit-extrapolated decoding runs two models (x2)
    load: float  #: loading one checkpoint (each evaluation, probe-scoring pass, extrapolated model)
    save: float  #: saving one checkpoint; writing one extrapolated model (the same bytes)
    probe: float  #: teacher-forced log-probs of one probe reply on one checkpoint
    weights: float  #: weight R² (the study's sampling) or the forecast's weight pass, per checkpoint
    threads: int  #: torch threads of the measurements
    source: str  #: where the numbers come from
    n_params: int = 0  #: the model's size (roughly), for the thread policy (:mod:`rlvr_linear.runtime.threads`)


#: per-model unit costs, one thread: process CPU seconds (on a free core that is the wall time), but wall seconds for
#: load and save (disk work the CPU clock does not see)
UNIT_COSTS = {
    # the shipped tiny base (0.8 M parameters): RL step bench/results/train_step_threads1.json (TRL step, 16 x 8,
    # wall); the rest bench/results/study_units_tiny.json (python bench/study_units.py --model tiny --weights)
    "tiny": UnitCosts(
        rl_step=0.271,
        sft_step=0.0458,
        greedy=0.00062,
        sample=0.00082,
        load=0.0781,
        save=0.0327,
        probe=0.00087,
        weights=0.0536,
        threads=1,
        source="bench/results/train_step_threads1.json (RL step), bench/results/study_units_tiny.json (the rest)",
        n_params=800_000,
    ),
    # the quick mode's smaller base (64 wide, 2 layers): not measured; the tiny numbers halved (a CI smoke test)
    "tiny-quick": UnitCosts(
        rl_step=0.14,
        sft_step=0.023,
        greedy=0.0003,
        sample=0.0004,
        load=0.02,
        save=0.0075,
        probe=0.0004,
        weights=0.027,
        threads=1,
        source="rough: the tiny base's costs halved (not measured)",
        n_params=100_000,
    ),
    # SmolLM2-135M-Instruct on arithmetic-cot-chat (8 x 8, <= 48 new tokens): RL step = mean of TRL's step in
    # bench/results/train_step_smollm2.json (90.4 CPU s) and train_step_smollm2_repeat.json (83.5);
    # greedy = docs/smollm2.md's 200 validation problems in 2 min 17 s (one model load included);
    # the rest bench/results/study_units_smollm2-135m.json (python bench/study_units.py --weights)
    "smollm2-135m": UnitCosts(
        rl_step=86.95,
        sft_step=8.221,
        greedy=0.685,
        sample=0.4257,
        load=0.3055,
        save=0.4956,
        probe=0.2671,
        weights=0.8635,
        threads=1,
        source=(
            "bench/results/train_step_smollm2.json + _repeat.json (RL step), docs/smollm2.md (greedy), "
            "bench/results/study_units_smollm2-135m.json (the rest)"
        ),
        n_params=134_515_008,
    ),
    # the real-model protocol's setting (preset smollm2-arith, docs/smollm2.md S4: 8 x 4, <= 16 new tokens): RL step =
    # TRL's CPU seconds per step in bench/results/train_step_smollm2_S4.json; greedy and sample (16 new tokens, T 0.7)
    # bench/results/eval_units_smollm2-arith.json (python bench/eval_units.py, step 70 of seed 0); the rest as SmolLM2
    # on arithmetic-cot-chat (the same model: loads, saves, probe scoring, weight passes)
    "smollm2-arith": UnitCosts(
        rl_step=20.58,
        sft_step=8.221,
        greedy=0.1443,
        sample=0.2318,
        load=0.3055,
        save=0.4956,
        probe=0.2671,
        weights=0.8635,
        threads=1,
        source=(
            "bench/results/train_step_smollm2_S4.json (RL step), bench/results/eval_units_smollm2-arith.json (greedy, "
            "sample), bench/results/study_units_smollm2-135m.json (the rest)"
        ),
        n_params=134_515_008,
    ),
}


def duration(sec: float) -> str:
    """``~2.9 h`` from an hour on, ``~12 min`` below."""
    return f"~{sec / 3600:.1f} h" if sec >= 3600 else f"~{sec / 60:.0f} min"


def unit_costs(cfg: StudyConfig) -> tuple[str, UnitCosts]:
    """The cost key and costs of a study's model: tiny (or tiny-quick with a base recipe) or SmolLM2-135M (also
    for an HF directory: its costs scale with its size, which the plan does not know)."""
    if cfg.model == "tiny":
        key = "tiny-quick" if cfg.base_recipe else "tiny"
    else:
        key = "smollm2-arith" if cfg.preset == "smollm2-arith" else "smollm2-135m"
    return key, UNIT_COSTS[key]


def _saves(cfg: StudyConfig) -> int:
    """Checkpoints of one run: step 0, every ``save_every`` steps and the last step."""
    return cfg.rl_steps // cfg.save_every + 1 + int(cfg.rl_steps % cfg.save_every != 0)


def _run_evals(cfg: StudyConfig, u: UnitCosts) -> float:
    """A run's checkpoints: saved, each with a greedy evaluation on ``eval_problems``; one model load."""
    return u.load + _saves(cfg) * (u.save + cfg.eval_problems * u.greedy)


def rl_run_s(cfg: StudyConfig, u: UnitCosts) -> float:
    return cfg.rl_steps * u.rl_step + _run_evals(cfg, u)


def sft_run_s(cfg: StudyConfig, u: UnitCosts) -> float:
    return cfg.rl_steps * u.sft_step + _run_evals(cfg, u)


def _analysis_s(cfg: StudyConfig, u: UnitCosts, logprobs: bool = True) -> float:
    """Weight R² of one run, and its token log-prob R² (every checkpoint scores every probe)."""
    n = _saves(cfg)
    probes = cfg.probe_prompts * cfg.probe_samples
    return n * u.weights + (n * (u.load + probes * u.probe) if logprobs else 0.0)


def _wx_counts(cfg: StudyConfig) -> tuple[int, int]:
    """(real checkpoints evaluated, extrapolated models) per seed, as the stage plans them."""
    from .common import snap
    from .weight_extrapolation import wx_targets

    T, se = cfg.rl_steps, cfg.save_every
    steps = list(range(0, T + 1, se))
    t0s = sorted({snap(f * T, se, lo=0, hi=T - 2 * se) for f in cfg.wx_base_fractions})
    t1s = sorted({snap(f * T, se, lo=se, hi=T - se) for f in cfg.wx_t1_fractions})
    windows = {(t0, t1): wx_targets(t1, steps, cfg.wx_max_alpha, cfg.wx_max_targets, t0=t0)
               for t0 in t0s for t1 in t1s if t1 > t0}  # fmt: skip
    real = {s for (_, t1), ts in windows.items() for s in [t1, *ts]}
    return len(real), sum(len(ts) for ts in windows.values())


def skipped_cost(cfg: StudyConfig, stage: str) -> float:
    """Seconds of one run of a stage the protocol leaves out: an RL run (robustness, re-grounding) or an SFT run
    (mechanism), with its analysis."""
    _, u = unit_costs(cfg)
    if stage == "mechanism":
        return round(sft_run_s(cfg, u) + _analysis_s(cfg, u, logprobs=False))
    return round(rl_run_s(cfg, u) + (_analysis_s(cfg, u) if stage == "robustness" else 0.0))


def _stage(cfg: StudyConfig, u: UnitCosts, st: str) -> tuple[str, float]:
    T, S = cfg.rl_steps, len(cfg.seeds)
    probes = cfg.probe_prompts * cfg.probe_samples
    if st == "baseline":
        return f"{S} RL run(s) x {T} steps (save every {cfg.save_every})", S * rl_run_s(cfg, u)
    if st == "trajectory":
        # 16 greedy evaluations per run (4 real checkpoints, 6 weight-extrapolated, 3 logit-extrapolated x 2), avg@k
        # of 3 models (t1, the two-point alpha 1.5 case, its real target), every checkpoint scored on the probes, the
        # weight passes (paper, all, 2 forecasts) and the extrapolated models written
        n = _saves(cfg)
        sec = 16 * cfg.trajectory_problems * u.greedy + 3 * cfg.trajectory_k * cfg.trajectory_problems * u.sample
        sec += n * (u.load + probes * u.probe + 4 * u.weights) + 6 * u.save
        return f"{S} run(s): linearity, forecast, extrapolation on {cfg.trajectory_problems} test problems", S * sec
    if st == "linearity":
        sec = u.load + probes * u.sample  # the probes: base-model replies
        sec += S * (_analysis_s(cfg, u) + sft_run_s(cfg, u) + _analysis_s(cfg, u))
        sec += _analysis_s(cfg, u)  # the forecast: the weight pass and the log-probs once more
        return f"weights + log-prob R² of {S} seed(s), {S} SFT run(s) x {T} steps, forecast", sec
    if st == "robustness":
        n = sum(1 for r in cfg.robustness if r != "grpo")
        sec = n * rl_run_s(cfg, u) + len(cfg.robustness) * _analysis_s(cfg, u)
        return f"{len(cfg.robustness)} settings ({n} new runs x {T} steps)", sec
    if st == "mechanism":
        n = len(cfg.mechanism_snrs) + int(cfg.mechanism_zero_signal)  # vanilla SFT is the linearity stage's
        m = len(cfg.mechanism_seeds)
        sec = n * m * sft_run_s(cfg, u) + (n + 1) * m * _analysis_s(cfg, u, logprobs=False)
        return f"{n * m} SFT runs x {T} steps (SNRs {cfg.mechanism_snrs} dB)", sec
    if st == "weight_extrapolation":
        real, extra = _wx_counts(cfg)
        sec = S * ((real + extra) * (u.load + cfg.wx_eval_problems * u.greedy) + extra * u.save)
        return f"{S * extra} extrapolated models + {S * real} real checkpoints, greedy on {cfg.wx_eval_problems}", sec
    if st == "logit_extrapolation":
        sec = S * (3 * u.load + 3 * cfg.logit_k * cfg.logit_problems * u.sample)  # last RL once, extrapolated x2
        return f"{S} seed(s): avg@{cfg.logit_k} on {cfg.logit_problems} test problems, alpha {cfg.logit_alpha}", sec
    if st == "regrounding":
        n = len(cfg.reground_specs) * S
        sec = n * rl_run_s(cfg, u)
        sec += (n + S) * len(cfg.budget_fractions) * (u.load + cfg.reground_eval_problems * u.greedy)
        return f"{n} re-grounded RL runs x {T} steps ({', '.join(cfg.reground_specs)})", sec
    return "report.html + results.json", 3.0


def plan(cfg: StudyConfig, stages: list[str]) -> list[dict]:
    """One row per stage: what it runs and its estimated seconds (0 for a stage the protocol leaves out)."""
    _, u = unit_costs(cfg)
    skips = cfg.budget_skips()
    rows = []
    for st in stages:
        if st in skips:
            rows.append({"stage": st, "what": f"not run (budget): {skips[st]}", "estimate_s": 0.0, "skipped": True})
            continue
        what, sec = _stage(cfg, u, st)
        rows.append({"stage": st, "what": what, "estimate_s": float(round(sec + 3, 0)), "skipped": False})
    return rows


def print_plan(cfg: StudyConfig, stages: list[str], done: set[str]) -> float:
    """Print the plan; returns the estimated seconds of what is left to run."""
    import torch

    key, u = unit_costs(cfg)
    rows = plan(cfg, stages)
    print(f"study plan: mode {cfg.mode}, model {cfg.model}, seeds {cfg.seeds}, {cfg.rl_steps} steps per run, "
          f"{cfg.optimizer} lr {cfg.learning_rate:g} x {cfg.prompts_per_step * cfg.samples_per_prompt} responses")
    total = 0.0
    for r in rows:
        if r["stage"] in done:
            status = "done, reused"
        elif r["skipped"]:
            status = "-"
        else:
            status = f"~{r['estimate_s']:.0f} s"
            total += r["estimate_s"]
        print(f"  {r['stage']:<21} {r['what']:<70} {status}")
    from ..runtime.threads import choose

    threads = choose(u.n_params or None, cfg.threads) or torch.get_num_threads()  # None: OMP_NUM_THREADS in force
    print(f"  estimated total: {duration(total)} ({total:.0f} s) on a free core")
    print(f"  unit costs ({key}): measured with {u.threads} thread(s); this study uses {threads}; {u.source}")
    if threads != u.threads:
        print("  (more threads than measured: expect less time; a busy machine takes longer)")
    return total
