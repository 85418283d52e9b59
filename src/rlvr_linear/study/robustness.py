"""Stage ``robustness`` (paper Fig. 2): weight / log-prob R² across algorithms, optimizers, learning rates and
group sizes; with its verdict rule (contrast settings shown, not counted)."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..io import read_json
from .common import _Ctx, _probes, _r2_numbers, _weight_analysis
from .config import CONTRAST_SETTINGS, ROBUSTNESS_SETTINGS, SGD_LR_FACTOR
from .paper import PAPER

#: the stage's title (also of its "not run (budget)" result, study.run.not_run_result)
TITLE = "Robustness across algorithms, optimizers, learning rates and group sizes"


def _verdict_robustness(rows: list[dict]) -> tuple[str, str]:
    """yes: every setting's weight median R² >= 0.7 and above its null median; partly: every setting above its null
    median; no: otherwise. Contrast rows (``CONTRAST_SETTINGS``) are shown but not counted."""
    rows = [r for r in rows if r.get("setting") not in CONTRAST_SETTINGS]
    above = [r["weights"]["median"] is not None and r["weights"]["median"] > r["weights"]["null_median"] for r in rows]
    strong = [r["weights"]["median"] is not None and r["weights"]["median"] >= 0.7 for r in rows]
    meds = ", ".join(f"{r['label']} {r['weights']['median']:.2f}" for r in rows if r["weights"]["median"] is not None)
    rep = "yes" if all(above) and all(strong) else "partly" if all(above) else "no"
    return rep, f"weight median R² per setting: {meds}; paper: 0.72-0.84 across its settings."


def stage_robustness(ctx: _Ctx) -> dict:
    from ..io.checkpoints import discover
    from ..linearity import analyze_logprobs
    from ..reporting import plots

    c = ctx.cfg
    d = ctx.stage_dir("robustness")
    seed = c.seeds[0]
    probes = _probes(ctx)
    rows = []
    for name in tqdm(c.robustness, desc="robustness settings", disable=None if ctx.progress else True):
        label, over = ROBUSTNESS_SETTINGS[name]
        ov = over(c.learning_rate, c.optimizer)
        tcfg = ctx.train_config(seed, **ov)
        run = ctx.out / "runs" / f"rl_seed{seed}" if tcfg == ctx.train_config(seed) else ctx.rl_run(
            f"robust_{name}", tcfg)[0]  # fmt: skip
        w = _weight_analysis(run)
        lp = analyze_logprobs(discover(run), probes)
        man = read_json(run / "manifest.json")
        rows.append(
            {
                "setting": name,
                "label": label,
                "overrides": ov,
                "weights": _r2_numbers(w.to_json()),
                "logprobs": _r2_numbers(lp.to_json()),
                "val_accuracy_end": man["checkpoints"][-1]["val_accuracy"],
                "run": ctx.rel(run),
            }
        )
    fig = plots.plot_r2_settings(
        d / "robustness.png",
        [r["label"] for r in rows],
        {
            "weights": [(r["weights"]["q1"], r["weights"]["median"], r["weights"]["q3"], r["weights"]["null_median"])
                        for r in rows],
            "token log-probs": [(r["logprobs"]["q1"], r["logprobs"]["median"], r["logprobs"]["q3"],
                                 r["logprobs"]["null_median"]) for r in rows],
        },
        title=f"R² median and IQR per setting (seed {seed}, {c.rl_steps} steps); squares: null median",
    )  # fmt: skip
    rep, verdict = _verdict_robustness(rows)
    return {
        "title": TITLE,
        "seeds": [seed],
        "numbers": {"settings": rows, "sgd_lr_factor": SGD_LR_FACTOR, "baseline_optimizer": c.optimizer},
        "paper": PAPER["robustness"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }
