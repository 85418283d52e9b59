"""PNG figures (matplotlib, Agg): flat ``plot_*`` functions that take arrays and write one file each.

Figures are built on ``matplotlib.figure.Figure`` (no pyplot state) and written atomically (temp file in
the same directory, then rename). Every function returns the path it wrote.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _hist(data, bins: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(counts, edges)`` from raw values or from a ``(counts, edges)`` pair (rebinned to ``bins``)."""
    if data is None:
        return None
    if isinstance(data, tuple):
        counts, edges = np.asarray(data[0], dtype=np.float64), np.asarray(data[1], dtype=np.float64)
        if counts.size % bins == 0 and counts.size != bins:
            counts = counts.reshape(bins, -1).sum(axis=1)
            edges = np.linspace(edges[0], edges[-1], bins + 1)
        return counts, edges
    v = np.asarray(data, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return np.histogram(v, bins=bins, range=(0.0, 1.0))[0].astype(np.float64), np.linspace(0.0, 1.0, bins + 1)


def plot_r2_histogram(
    path: str | Path,
    r2,
    null_r2=None,
    *,
    bins: int = 50,
    threshold: float = 0.7,
    title: str = "R²",
    xlabel: str = "R² of value vs step",
    summary: str | None = None,
) -> Path:
    """Density histogram of R² with the null distribution overlaid and a dashed line at ``threshold``.

    ``r2`` / ``null_r2``: 1-D arrays of values in [0, 1], or ``(counts, edges)`` pairs (histograms over [0, 1]).
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    obs, nul = _hist(r2, bins), _hist(null_r2, bins)
    empty = obs is None or obs[0].sum() == 0
    if not empty:
        c, e = obs
        ax.bar(e[:-1], c / c.sum() / np.diff(e), width=np.diff(e), align="edge", color="tab:blue", alpha=0.75,
               label=f"observed (n={int(c.sum())})")  # fmt: skip
    if nul is not None and nul[0].sum() > 0:
        c, e = nul
        ax.stairs(c / c.sum() / np.diff(e), e, color="tab:red", linewidth=1.8, label="null (sign-flipped increments)")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"R² = {threshold}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    if empty:
        ax.text(0.5, 0.5, "no eligible values", ha="center", va="center", transform=ax.transAxes)
    if summary:
        ax.text(0.02, 0.97, summary, ha="left", va="top", transform=ax.transAxes, fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})  # fmt: skip
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmap(
    path: str | Path,
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    cbar_label: str = "mean R²",
    vmin: float = 0.0,
    vmax: float = 1.0,
    annotate: bool | None = None,
) -> Path:
    """Heatmap of ``matrix`` (rows x columns); NaN cells stay blank. Annotates cells when there are <= 40 rows."""
    m = np.asarray(matrix, dtype=np.float64)
    h = min(2 + 0.3 * m.shape[0], 40)
    fig = Figure(figsize=(1.2 + 0.9 * m.shape[1], h))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(m.shape[1]), labels=list(col_labels), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), labels=list(row_labels), fontsize=8)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label)
    if annotate is None:
        annotate = m.shape[0] <= 40
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[i, j] < (vmin + vmax) / 2 else "black")  # fmt: skip
    fig.tight_layout()
    return _save(fig, path)


def plot_trajectories(
    path: str | Path,
    steps: Sequence[float],
    series: Sequence[dict],
    *,
    title: str = "",
    ylabel: str = "value",
    ncols: int = 3,
) -> Path:
    """Small multiples of trajectories with their fitted lines.

    Each item of ``series``: ``values`` (T,), optional ``slope`` / ``intercept`` (line ``intercept + slope *
    step``) and ``label``.
    """
    x = np.asarray(steps, dtype=np.float64)
    n = max(1, len(series))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(series) :]:
        ax.set_axis_off()
    if not series:
        axes[0].set_axis_on()
        axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center", transform=axes[0].transAxes)
    for ax, s in zip(axes, series):
        ax.plot(x, np.asarray(s["values"], dtype=np.float64), "o", markersize=3.5, color="tab:blue")
        if s.get("slope") is not None:
            ax.plot(x, s["intercept"] + s["slope"] * x, "-", color="tab:red", linewidth=1.2)
        ax.set_title(str(s.get("label", "")), fontsize=7)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_medians(
    path: str | Path,
    labels: Sequence[str],
    median: Sequence[float],
    null_median: Sequence[float] | None = None,
    *,
    q1: Sequence[float] | None = None,
    q3: Sequence[float] | None = None,
    title: str = "",
    ylabel: str = "median R²",
) -> Path:
    """Median R² per layer (with an optional IQR band) next to the null median."""
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(6, 0.35 * len(labels) + 2), 4))
    ax = fig.subplots()
    if q1 is not None and q3 is not None:
        ax.fill_between(x, np.asarray(q1, float), np.asarray(q3, float), color="tab:blue", alpha=0.2, label="IQR")
    ax.plot(x, np.asarray(median, float), "o-", color="tab:blue", label="median R²")
    if null_median is not None:
        ax.plot(x, np.asarray(null_median, float), "s--", color="tab:red", label="null median")
    ax.axhline(0.7, color="k", linestyle=":", linewidth=1)
    ax.set_xticks(x, labels=list(labels), rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_forecast_errors(
    path: str | Path,
    steps: Sequence[float],
    panels: Sequence[dict],
    *,
    fit_until: float | None = None,
    title: str = "Forecast error: linear fit vs no further change",
) -> Path:
    """Error vs step, ours vs the naive predictor; one panel per item (``ours``, ``naive``, ``ylabel``, ``title``).

    The y axis is logarithmic when every value is positive and they span more than two decades.
    """
    x = np.asarray(steps, dtype=np.float64)
    fig = Figure(figsize=(5.5 * len(panels), 4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, p in zip(axes, panels):
        ours = np.asarray([np.nan if v is None else v for v in p["ours"]], dtype=np.float64)
        naive = np.asarray([np.nan if v is None else v for v in p["naive"]], dtype=np.float64)
        ax.plot(x, ours, "o-", color="tab:blue", label="linear fit")
        ax.plot(x, naive, "s--", color="tab:gray", label="naive (no further change)")
        both = np.concatenate([ours, naive])
        both = both[np.isfinite(both)]
        if both.size and both.min() > 0 and both.max() / both.min() > 100:
            ax.set_yscale("log")
        if fit_until is not None:
            ax.set_title(f"{p.get('title', '')} (fit on steps <= {fit_until})", fontsize=9)
        else:
            ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(p.get("ylabel", "error"))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Study figures (rlvr_linear.study)


def plot_curves(
    path: str | Path,
    series: dict,
    *,
    xlabel: str = "step",
    ylabel: str = "value",
    title: str = "",
    hlines: Sequence[float] | None = None,
) -> Path:
    """Line plot of several curves: ``series[label] = (x, y, band)`` with ``band`` None or ``(lo, hi)`` arrays.

    ``hlines`` are drawn as dashed grey horizontal lines (e.g. accuracy thresholds).
    """
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for i, (label, (x, y, band)) in enumerate(series.items()):
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray([np.nan if v is None else v for v in y], dtype=np.float64)
        ax.plot(xs, ys, "o-" if i == 0 else ".-", label=str(label), linewidth=2.0 if i == 0 else 1.2, markersize=4)
        if band is not None:
            ax.fill_between(xs, np.asarray(band[0], float), np.asarray(band[1], float), alpha=0.2)
    for h in hlines or []:
        ax.axhline(h, color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_r2_compare(path: str | Path, groups: dict, *, bins: int = 50, title: str = "", threshold: float = 0.7) -> Path:
    """Overlaid density histograms (step outlines) of several R² samples: ``groups[label] = values``."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    edges = np.linspace(0.0, 1.0, bins + 1)
    for label, v in groups.items():
        v = np.asarray(v, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            c = np.histogram(v, bins=edges)[0].astype(np.float64)
            ax.stairs(c / c.sum() / np.diff(edges), edges, linewidth=1.8, label=f"{label} (n={v.size})")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"R² = {threshold}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("R² of value vs step")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_r2_settings(path: str | Path, labels: Sequence[str], panels: dict, *, title: str = "") -> Path:
    """The paper's Figure 2 layout: per setting a dot at the median and a line over the IQR, one panel per kind.

    ``panels[name] = [(q1, median, q3, null_median), ...]`` (one tuple per label; None values are skipped).
    """
    fig = Figure(figsize=(5 * len(panels), 0.45 * len(labels) + 1.8))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    y = np.arange(len(labels))[::-1]
    for ax, (name, rows) in zip(axes, panels.items()):
        for yi, (q1, med, q3, nul) in zip(y, rows):
            if q1 is not None and q3 is not None:
                ax.plot([q1, q3], [yi, yi], "-", color="tab:blue", linewidth=2)
            if med is not None:
                ax.plot([med], [yi], "o", color="tab:blue")
                ax.text(med, yi + 0.18, f"{med:.2f}", ha="center", fontsize=7)
            if nul is not None:
                ax.plot([nul], [yi], "s", color="tab:red", markersize=4)
        ax.axvline(0.7, color="k", linestyle="--", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_yticks(y, labels=list(labels), fontsize=8)
        ax.set_xlabel("R²")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_snr_curve(
    path: str | Path,
    labels: Sequence[str],
    weighted_median: Sequence[float | None],
    weighted_mean: Sequence[float | None],
    *,
    sft_median: float | None = None,
    sft_mean: float | None = None,
    paper: dict | None = None,
    title: str = "",
) -> Path:
    """Weighted median / mean R² per SNR setting (categorical x axis), vanilla SFT as dotted lines, paper values grey.

    ``paper`` (optional): ``snr_db`` labels and ``weighted_median_r2`` values, drawn where the labels match ours.
    """
    x = np.arange(len(labels))
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()

    def arr(v):
        return np.asarray([np.nan if a is None else a for a in v], dtype=np.float64)

    ax.plot(x, arr(weighted_median), "o-", color="tab:blue", label="ours: weighted median R²")
    ax.plot(x, arr(weighted_mean), "s--", color="tab:green", label="ours: weighted mean R²")
    if sft_median is not None:
        ax.axhline(sft_median, color="tab:blue", linestyle=":", label=f"ours: vanilla SFT median {sft_median:.3f}")
    if sft_mean is not None:
        ax.axhline(sft_mean, color="tab:green", linestyle=":", label=f"ours: vanilla SFT mean {sft_mean:.3f}")
    if paper:
        lookup = {str(k).replace(" dB", ""): v for k, v in zip(paper["snr_db"], paper["weighted_median_r2"])}
        pv = [lookup.get(lab.replace(" dB", ""), np.nan) for lab in labels]
        ax.plot(x, pv, "x-", color="0.55", label="paper: weighted median R² (measured)")
        if paper.get("sft_baseline_median") is not None:
            ax.axhline(paper["sft_baseline_median"], color="0.55", linestyle=":", linewidth=0.8)
    ax.set_xticks(x, labels=list(labels), fontsize=8)
    ax.set_xlabel("token-level SNR")
    ax.set_ylabel("active-parameter weighted R²")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_extrapolation(
    path: str | Path,
    real_curve: tuple[Sequence[float], Sequence[float]],
    curves: dict,
    *,
    title: str = "",
    ylabel: str = "validation greedy accuracy",
) -> Path:
    """Accuracy of extrapolated models vs target step (one curve per t1, with CI error bars) over the real RL curve.

    ``curves[label] = (targets, means, [(lo, hi), ...])``; ``real_curve = (steps, accuracy)``.
    """
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    ax.plot(real_curve[0], real_curve[1], "k.-", linewidth=2, label="real RL checkpoints")
    for label, (xs, ys, cis) in curves.items():
        ys = np.asarray([np.nan if v is None else v for v in ys], dtype=np.float64)
        lo = np.asarray([np.nan if c[0] is None else c[0] for c in cis], dtype=np.float64)
        hi = np.asarray([np.nan if c[1] is None else c[1] for c in cis], dtype=np.float64)
        ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt="o-", capsize=3, label=f"extrapolated, {label}")
    ax.set_xlabel("target step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
