"""What a study will run and roughly how long it takes, printed before the first stage starts.

The costs are rough per-unit seconds on 2 free CPU cores; they only set expectations (nothing reads the estimate).
"""

from __future__ import annotations

from .config import StudyConfig

#: rough seconds per unit on 2 free CPU cores: (RL step, SFT step, greedy eval of 100 problems)
_COSTS = {"tiny-quick": (0.1, 0.03, 0.1), "tiny": (0.4, 0.08, 0.3), "other": (60.0, 6.0, 20.0)}


def _cost_key(cfg: StudyConfig) -> str:
    if cfg.model == "tiny":
        return "tiny-quick" if cfg.base_recipe else "tiny"
    return "other"


def plan(cfg: StudyConfig, stages: list[str]) -> list[dict]:
    """One row per stage: what it runs and a rough time estimate (seconds, 2 free CPU cores)."""
    rl, sft, ev = _COSTS[_cost_key(cfg)]
    T, S = cfg.rl_steps, len(cfg.seeds)
    saves = T // cfg.save_every + 1
    ev_run = saves * ev * cfg.eval_problems / 100
    rows = []
    for st in stages:
        if st == "baseline":
            what, sec = f"{S} RL run(s) x {T} steps (save every {cfg.save_every})", S * (T * rl + ev_run)
        elif st == "linearity":
            what, sec = (
                f"weights + log-prob R² of {S} seed(s), {S} SFT run(s) x {T} steps, forecast",
                S * (T * sft + ev_run + 10),
            )
        elif st == "robustness":
            n = sum(1 for r in cfg.robustness if r != "grpo")
            what, sec = f"{len(cfg.robustness)} settings ({n} new runs x {T} steps)", n * (T * rl + ev_run + 3)
        elif st == "mechanism":
            n = (len(cfg.mechanism_snrs) + int(cfg.mechanism_zero_signal) + 1) * len(cfg.mechanism_seeds)
            what, sec = f"{n} SFT runs x {T} steps (SNRs {cfg.mechanism_snrs} dB)", n * (T * sft + ev_run + 2)
        elif st == "weight_extrapolation":
            n = len(cfg.wx_t1_fractions) * cfg.wx_max_targets * S
            what, sec = (
                f"<= {n} extrapolated models, greedy on {cfg.wx_eval_problems}",
                2 * n * ev * cfg.wx_eval_problems / 100,
            )
        elif st == "logit_extrapolation":
            what = f"{S} seed(s): avg@{cfg.logit_k} on {cfg.logit_problems} test problems, alpha {cfg.logit_alpha}"
            sec = S * 3 * ev * cfg.logit_k * cfg.logit_problems / 100
        elif st == "regrounding":
            n = len(cfg.reground_specs) * S
            what = f"{n} re-grounded RL runs x {T} steps ({', '.join(cfg.reground_specs)})"
            sec = n * (T * rl + ev_run) + (n + S) * len(cfg.budget_fractions) * ev * cfg.reground_eval_problems / 100
        else:
            what, sec = "report.html + results.json", 3
        rows.append({"stage": st, "what": what, "estimate_s": round(sec + 3, 0)})
    return rows


def print_plan(cfg: StudyConfig, stages: list[str], done: set[str]) -> float:
    rows = plan(cfg, stages)
    print(f"study plan: mode {cfg.mode}, model {cfg.model}, seeds {cfg.seeds}, {cfg.rl_steps} steps per run")
    total = 0.0
    for r in rows:
        status = "done, reused" if r["stage"] in done else f"~{r['estimate_s']:.0f} s"
        if r["stage"] not in done:
            total += r["estimate_s"]
        print(f"  {r['stage']:<21} {r['what']:<70} {status}")
    print(f"  estimated total: ~{total / 60:.1f} min (2 free CPU cores; a busy machine is slower)")
    return total
