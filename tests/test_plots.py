"""plots: every function writes one PNG of the expected size, atomically, and copes with empty input."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from rlvr_linear.reporting import plots


def _png(path, width, height):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.shape[:2] == (height, width)
    assert img[..., :3].std() > 0  # not a blank canvas
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_r2_histogram_from_values_and_from_counts(tmp_path):
    rng = np.random.default_rng(0)
    r2, null = rng.beta(8, 2, 1000), rng.uniform(0, 1, 1000)
    p = plots.plot_r2_histogram(tmp_path / "a.png", r2, null, title="t", summary="median 0.8")
    assert p == tmp_path / "a.png"
    _png(p, 700, 450)
    counts = np.histogram(r2, bins=10_000, range=(0, 1))[0]
    edges = np.linspace(0, 1, 10_001)
    _png(plots.plot_r2_histogram(tmp_path / "b.png", (counts, edges), None), 700, 450)
    assert plots._hist((counts, edges), 50)[0].tolist() == np.histogram(r2, bins=50, range=(0, 1))[0].tolist()


def test_r2_histogram_empty(tmp_path):
    _png(plots.plot_r2_histogram(tmp_path / "e.png", np.zeros(0), np.zeros(0)), 700, 450)


def test_heatmap_with_blank_cells(tmp_path):
    m = np.array([[0.9, 0.8, np.nan], [0.5, np.nan, 0.1]])
    _png(plots.plot_heatmap(tmp_path / "h.png", m, ["layer 0", "embedding"], ["Q", "K", "V"]), 390, 260)


def test_trajectories_and_empty(tmp_path):
    steps = np.arange(0, 1400, 100)
    series = [
        {"values": 0.01 * i + 1e-5 * steps, "slope": 1e-5, "intercept": 0.01 * i, "label": f"p{i}"} for i in range(4)
    ]
    _png(plots.plot_trajectories(tmp_path / "t.png", steps, series, title="x"), 1260, 580)
    _png(plots.plot_trajectories(tmp_path / "t0.png", steps, []), 420, 290)


def test_layer_medians(tmp_path):
    _png(
        plots.plot_layer_medians(
            tmp_path / "l.png", ["emb", "layer 0", "layer 1"], [0.9, 0.8, np.nan], [0.45, 0.44, 0.46], q1=[0.8] * 3,
            q3=[0.95] * 3,
        ),
        600,
        400,
    )  # fmt: skip


@pytest.mark.parametrize("ours", [[1e-9, 2e-9, None], [0.1, 0.2, 0.3]])
def test_forecast_errors(tmp_path, ours):
    panels = [{"ours": ours, "naive": [0.1, 0.2, 0.3], "ylabel": "rel err", "title": "w"}]
    panels.append({"ours": [0.01, 0.02, 0.03], "naive": [0.02, 0.04, 0.06], "ylabel": "MAE", "title": "lp"})
    _png(plots.plot_forecast_errors(tmp_path / "f.png", [300, 400, 500], panels, fit_until=200), 1100, 400)
