"""Stage ``mechanism`` (paper Fig. 3): SFT with token-level random-sign noise vs SNR, active-parameter weighted R²;
with its verdict rule (an inverted U above vanilla SFT)."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .common import _ci, _Ctx, _weight_analysis, active_weighted
from .paper import PAPER

#: the stage's title (also of its "not run (budget)" result, study.run.not_run_result)
TITLE = "Mechanism: token-level random-sign noise in SFT"


def _verdict_mechanism(curve: list[dict], sft: float | None) -> tuple[str, str]:
    """On the weighted median R² (mean over seeds) of the SNR grid ordered from high to low SNR, zero signal last:
    yes: the maximum is at an interior SNR (not the highest SNR, not zero signal) and exceeds vanilla SFT by > 0.02;
    partly: some noisy setting exceeds vanilla SFT by > 0.02 but the shape is not an inverted U; no: otherwise."""
    vals = [p["weighted_median"]["mean"] for p in curve]
    if sft is None or any(v is None for v in vals) or len(vals) < 3:
        return "no", "not enough points to judge the shape"
    i = int(np.argmax(vals))
    peak = vals[i]
    interior = 0 < i < len(vals) - 1
    txt = (
        f"peak weighted median R² {peak:.3f} at {curve[i]['label']} vs vanilla SFT {sft:.3f}; "
        "paper: inverted U peaking at -10 dB (0.582) vs SFT 0.426."
    )
    if interior and peak > sft + 0.02:
        return "yes", txt
    if peak > sft + 0.02:
        return "partly", txt
    return "no", txt


def stage_mechanism(ctx: _Ctx) -> dict:
    from ..reporting import plots

    c = ctx.cfg
    d = ctx.stage_dir("mechanism")
    settings: list[tuple[str, dict]] = [
        (f"{s:g} dB", {"noise_snr_db": float(s)}) for s in sorted(c.mechanism_snrs, reverse=True)
    ]
    if c.mechanism_zero_signal:
        settings.append(("zero-signal", {"zero_signal": True}))
    jobs = [("vanilla SFT", {})] + settings
    results: dict[str, list[dict]] = {lab: [] for lab, _ in jobs}
    n_runs = len(jobs) * len(c.mechanism_seeds)
    bar = tqdm(total=n_runs, desc="mechanism SFT runs", disable=None if ctx.progress else True)
    for seed in c.mechanism_seeds:
        for lab, kw in jobs:
            tag = lab.replace(" ", "").replace("-", "m").replace(".", "p")
            # vanilla SFT is the linearity stage's SFT run (same config): trained once
            name = f"sft_seed{seed}" if not kw else f"mech_{tag}_seed{seed}"
            run, man = ctx.sft_run(name, ctx.sft_config(seed, **kw))
            w = _weight_analysis(run)
            aw = active_weighted(w)
            results[lab].append({"seed": seed, **aw, "median": w.to_json()["r2"]["median"],
                                 "val_accuracy_end": man["checkpoints"][-1]["val_accuracy"]})  # fmt: skip
            bar.update()
    bar.close()
    curve = []
    for lab, _ in jobs:
        rs = results[lab]
        curve.append(
            {
                "label": lab,
                "weighted_median": _ci([r["weighted_median"] for r in rs]),
                "weighted_mean": _ci([r["weighted_mean"] for r in rs]),
                "val_accuracy_end": _ci([r["val_accuracy_end"] for r in rs]),
                "per_seed": rs,
            }
        )
    sft_pt, noisy = curve[0], curve[1:]
    fig = plots.plot_snr_curve(
        d / "mechanism.png",
        [p["label"] for p in noisy],
        [p["weighted_median"]["mean"] for p in noisy],
        [p["weighted_mean"]["mean"] for p in noisy],
        sft_median=sft_pt["weighted_median"]["mean"],
        sft_mean=sft_pt["weighted_mean"]["mean"],
        paper=PAPER["mechanism"],
        title=f"Active-parameter weighted R² vs token-level SNR ({len(c.mechanism_seeds)} seed(s), {c.rl_steps} steps)",
    )
    rep, verdict = _verdict_mechanism(noisy, sft_pt["weighted_median"]["mean"])
    return {
        "title": TITLE,
        "seeds": c.mechanism_seeds,
        "numbers": {"vanilla_sft": sft_pt, "curve": noisy},
        "paper": PAPER["mechanism"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(fig)],
    }
