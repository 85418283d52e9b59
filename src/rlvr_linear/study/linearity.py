"""Stage ``linearity`` (paper §1, §2a): weight and token log-prob R² with nulls, RL vs SFT, the forecast; with its
verdict rule and the bar for "the paper's regime"."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from .common import _Ctx, _mean_numbers, _num, _probes, _r2_numbers, _weight_analysis
from .paper import PAPER

#: the linearity verdict's RL-vs-SFT margin: "yes" needs the RL weight median R² above SFT's by more than this
SFT_MARGIN = 0.1


def _verdict_linearity(rl_w: dict, sft_w: dict) -> tuple[str, str]:
    """yes: RL weight median R² >= 0.7, > its null median + 0.05, and > SFT median + :data:`SFT_MARGIN`; partly: RL
    above its null and above SFT (any margin); no: otherwise."""
    m, nm, sm = rl_w["median"], rl_w["null_median"], sft_w["median"]
    if None in (m, nm, sm):
        return "no", "the R² medians could not be computed"
    if m >= 0.7 and m > nm + 0.05 and m > sm + SFT_MARGIN:
        rep = "yes"
    elif m > nm and m > sm:
        rep = "partly"
    else:
        rep = "no"
    return rep, (f"RL weights: median R² {m:.3f} (null {nm:.3f}) vs SFT {sm:.3f}; paper RL 0.84 vs SFT 0.42.")


#: the bar for "the paper's regime" (set with the regime map, docs/regime.md): weight and log-prob R² medians >= these,
#: each >= its null + PAPER_MARGIN, on every seed
PAPER_REGIME = {"weights": 0.8, "logprobs": 0.75}
PAPER_MARGIN = 0.3


def paper_regime(per_seed: list[dict]) -> bool:
    """True when every seed's RL weight and log-prob R² medians clear :data:`PAPER_REGIME` and their nulls by 0.3."""
    for r in per_seed:
        for kind, bar in PAPER_REGIME.items():
            x = r[f"rl_{kind}"]
            if x["median"] is None or x["null_median"] is None:
                return False
            if x["median"] < bar or x["median"] < x["null_median"] + PAPER_MARGIN:
                return False
    return True


def stage_linearity(ctx: _Ctx) -> dict:
    from ..io.checkpoints import discover
    from ..linearity import analyze_logprobs, forecast
    from ..reporting import plots

    c = ctx.cfg
    d = ctx.stage_dir("linearity")
    seed = c.seeds[0]
    rl_run = ctx.out / "runs" / f"rl_seed{seed}"
    probes = _probes(ctx)
    bar = tqdm(total=5 * len(c.seeds) + 1, desc="linearity", disable=None if ctx.progress else True)
    per_seed, sft_ends = [], []
    for sd in c.seeds:
        # the first seed keeps its full results and figures; the others only their numbers
        sub = d if sd == seed else d / f"seed{sd}"
        run = ctx.out / "runs" / f"rl_seed{sd}"
        w = _weight_analysis(run, sub / "rl_weights")
        bar.update()
        lp = analyze_logprobs(discover(run), probes)
        lp.save(sub / "rl_logprobs")
        bar.update()
        s_run, s_man = ctx.sft_run(f"sft_seed{sd}", ctx.sft_config(sd))
        bar.update()
        sw_ = _weight_analysis(s_run, sub / "sft_weights")
        bar.update()
        slp = analyze_logprobs(discover(s_run), probes)
        slp.save(sub / "sft_logprobs")
        bar.update()
        sft_ends.append(s_man["checkpoints"][-1]["val_accuracy"])
        per_seed.append(
            {
                "seed": sd,
                "rl_weights": _r2_numbers(w.to_json()),
                "rl_logprobs": _r2_numbers(lp.to_json()),
                "sft_weights": _r2_numbers(sw_.to_json()),
                "sft_logprobs": _r2_numbers(slp.to_json()),
            }
        )
        if sd == seed:
            rl_w, sft_w = w, sw_
    traj = discover(rl_run)
    fit_until = traj.steps[(len(traj.steps) - 1) // 2]
    fc = forecast(traj, fit_until, probes=probes)
    fc.save(d / "forecast")
    bar.update()
    bar.close()
    rw, rl_l = (_mean_numbers([r[k] for r in per_seed]) for k in ("rl_weights", "rl_logprobs"))
    sw, sl = (_mean_numbers([r[k] for r in per_seed]) for k in ("sft_weights", "sft_logprobs"))
    in_regime = paper_regime(per_seed)
    ov = fc.overall()
    fc_num = {
        "fit_steps": fc.fit_steps,
        "later_steps": fc.later_steps,
        "weights_rel_err_last": _num(ov["rel_err"][-1], 6),
        "weights_naive_rel_err_last": _num(ov["naive_rel_err"][-1], 6),
        "weights_ratio_to_naive": [_num(v) for v in ov["ratio_to_naive"]],
    }
    if fc.logprobs:
        fc_num["logprob_mae"] = [_num(v) for v in fc.logprobs["mae"]]
        fc_num["logprob_naive_mae"] = [_num(v) for v in fc.logprobs["naive_mae"]]
    rl_arr = rl_w.r2.array() if rl_w.r2.values is not None else None
    sft_arr = sft_w.r2.array() if sft_w.r2.values is not None else None
    figs = []
    if rl_arr is not None and sft_arr is not None:
        figs.append(
            plots.plot_r2_compare(
                d / "rl_vs_sft_weights.png",
                {f"RL (median {rw['median']:.2f})": rl_arr, f"SFT (median {sw['median']:.2f})": sft_arr},
                title="Weight R²: RL vs SFT (same base, steps, checkpoints)",
            )
        )
    for f in [
        "rl_weights/weights_r2_hist.png",
        "rl_weights/weights_heatmap.png",
        "rl_weights/weights_examples.png",
        "rl_logprobs/logprobs_r2_hist.png",
        "rl_logprobs/logprobs_examples.png",
        "forecast/forecast.png",
    ]:
        if (d / f).exists():
            figs.append(d / f)
    rep, verdict = _verdict_linearity(rw, sw)
    verdict += (
        f" Log-probs: median R² {rl_l['median']:.3f} (null {rl_l['null_median']:.3f}). Mean over {len(c.seeds)} "
        f"seed(s); the paper's regime (weights >= 0.8, log-probs >= 0.75, each >= null + 0.3, every seed): "
        f"{'reached' if in_regime else 'not reached'}."
        if rl_l["median"] is not None and rl_l["null_median"] is not None
        else ""
    )
    return {
        "title": "Linearity of weights and token log-probs; RL vs SFT",
        "seeds": list(c.seeds),
        "numbers": {
            "checkpoints": traj.steps,
            "rl_weights": rw,
            "rl_logprobs": rl_l,
            "sft_weights": sw,
            "sft_logprobs": sl,
            "per_seed": per_seed,
            "paper_regime": in_regime,
            "forecast_seed": seed,
            "sft_val_accuracy_end": _num(float(np.mean(sft_ends))),
            "probes": len(probes),
            "forecast": fc_num,
            "weight_sampling": rl_w.config.get("sample"),
        },
        "paper": PAPER["linearity"],
        "reproduced": rep,
        "verdict": verdict,
        "figures": [ctx.rel(f) for f in figs],
    }
