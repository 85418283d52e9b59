"""Activation linearity: :func:`collect_activations`, :func:`analyze_activations`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import RlvrLinearError
from ..io import write_npz
from ..io.checkpoints import Trajectory
from .probes import (
    Probe,
    _as_probes,
    _batches,
    _device,
    _left_pad,
    _trajectory_tokenizer,
    encode_probes,
    load_for_scoring,
)
from .reader import _check_finite
from .sampling import sample_indices
from .stats import (
    PAPER_SEED,
    Dist,
    JsonResult,
    _above_null,
    _fit_tn,
    _null_tn,
    _summary_line,
    _summary_text,
    stable_key,
)

# --------------------------------------------------------------------------------------------------
# Activations


@torch.no_grad()
def collect_activations(
    model,
    encoded: list[tuple[list[int], list[int]]],
    token: np.ndarray,
    channel: np.ndarray,
    batch_size: int = 8,
    pad_id: int = 0,
) -> np.ndarray:
    """Residual-stream values ``hidden_states[l][response token, channel]`` for the given pairs.

    ``token`` indexes the concatenated response tokens of all probes; ``hidden_states`` is what HF returns
    with ``output_hidden_states=True`` (embeddings, then after each block). Returns (layers + 1, n) float32;
    only the sampled entries are kept.
    """
    dev = next(model.parameters()).device
    lens = np.array([len(r) for _, r in encoded])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    probe = np.searchsorted(np.cumsum(lens), token, side="right")
    offset = token - starts[probe]
    out: np.ndarray | None = None
    row_of = np.full(len(encoded), -1)
    for batch in _batches(encoded, batch_size):
        ids, mask, pos = _left_pad(encoded, batch, pad_id, dev)
        L = ids.shape[1]
        hs = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        if out is None:
            out = np.zeros((len(hs), token.size), dtype=np.float32)
        row_of[:] = -1
        row_of[batch] = np.arange(len(batch))
        sel = np.flatnonzero(row_of[probe] >= 0)
        if sel.size == 0:
            continue
        rows = torch.as_tensor(row_of[probe[sel]], device=dev)
        cols = torch.as_tensor(L - lens[probe[sel]] + offset[sel], device=dev)
        ch = torch.as_tensor(channel[sel], device=dev)
        for layer, h in enumerate(hs):
            out[layer, sel] = h[rows, cols, ch].float().cpu().numpy()
    return out if out is not None else np.zeros((0, token.size), np.float32)


@dataclass
class ActivationLinearity(JsonResult):
    """Result of :func:`analyze_activations`."""

    steps: list[int]
    values: np.ndarray  #: (T, layers + 1, n) float32 sampled activations
    token: np.ndarray  #: (n,) index into the concatenated response tokens
    channel: np.ndarray  #: (n,) hidden channel
    layers: list[dict]  #: per hidden-state index: counts, r2 and null summaries
    r2: Dist
    null: Dist
    config: dict

    def summary(self) -> dict:
        s_r2, s_null = self.r2.summary(), self.null.summary()
        return {
            "kind": "activations",
            "steps": self.steps,
            "n_checkpoints": len(self.steps),
            "config": self.config,
            "r2": s_r2,
            "null": s_null,
            "above_null": _above_null(s_r2, s_null),
            "layers": self.layers,
        }

    def save(self, out_dir: str | Path) -> None:
        from ..reporting import plots

        out, s = self._save_json(out_dir, "activations")
        write_npz(
            out / "activations.npz", steps=np.asarray(self.steps), values=self.values, token=self.token,
            channel=self.channel,
        )  # fmt: skip
        med = [np.nan if x["r2"]["median"] is None else x["r2"]["median"] for x in s["layers"]]
        q1 = [np.nan if x["r2"]["q1"] is None else x["r2"]["q1"] for x in s["layers"]]
        q3 = [np.nan if x["r2"]["q3"] is None else x["r2"]["q3"] for x in s["layers"]]
        nmed = [np.nan if x["null"]["median"] is None else x["null"]["median"] for x in s["layers"]]
        plots.plot_layer_medians(
            out / "activations_per_layer.png",
            [x["label"] for x in s["layers"]],
            med,
            nmed,
            q1=q1,
            q3=q3,
            title="Residual-stream activation R² per layer",
        )
        plots.plot_r2_histogram(
            out / "activations_r2_hist.png",
            self.r2.array(),
            self.null.array(),
            title="Activation R² (all layers)",
            summary=_summary_text(s["r2"], s["null"]),
        )

    def summary_line(self) -> str:
        s = self.to_json()
        total = self.values.shape[1] * self.values.shape[2]
        return _summary_line("activations", s["r2"], s["null"], s["r2"]["n"], total)


def analyze_activations(
    trajectory: Trajectory,
    probes: Sequence[Probe] | str | Path,
    pairs_per_layer: int = 20_000,
    batch_size: int = 8,
    min_abs_change: float = 0.0,
    seed: int = PAPER_SEED,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> ActivationLinearity:
    """R² of residual-stream activations vs step on the probes' response tokens.

    Up to ``pairs_per_layer`` (response token, channel) pairs are drawn once (seeded) and read at every
    hidden state of every checkpoint (the same pairs for all layers; memory T x layers x pairs floats).
    Pairs whose range is ``<= min_abs_change`` (default: exactly constant) are dropped and counted.
    """
    trajectory.validate(min_checkpoints=3)
    probes = _as_probes(probes)
    dev = _device(device)
    tok = _trajectory_tokenizer(trajectory)
    enc = encode_probes(tok, probes)
    n_tok = sum(len(r) for _, r in enc)
    if n_tok == 0:
        raise RlvrLinearError("the probes have no response tokens")
    vals, token, channel = [], None, None
    for path in tqdm(trajectory.paths, desc="activations", disable=None if progress else True):
        model = load_for_scoring(path, dev, dtype, trajectory.allow_pickle)
        if token is None:
            hidden = int(model.config.hidden_size)
            flat = sample_indices(n_tok * hidden, min(pairs_per_layer, n_tok * hidden), seed)
            token, channel = flat // hidden, flat % hidden
        vals.append(collect_activations(model, enc, token, channel, batch_size, tok.pad_token_id or 0))
        del model
    values = np.stack(vals)  # (T, layers+1, n)
    _check_finite(values.reshape(values.shape[0], -1), trajectory.steps, "activations")
    x = np.asarray(trajectory.steps, dtype=np.float64)
    r2_all, null_all = Dist(keep=True), Dist(keep=True)
    layers = []
    idx = np.arange(token.size)
    for layer in range(values.shape[1]):
        y = values[:, layer].astype(np.float64)
        keep = (y.max(0) - y.min(0)) > min_abs_change
        yk = y[:, keep]
        fit = _fit_tn(yk, x)
        null_r2 = _fit_tn(_null_tn(yk, idx[keep], stable_key(f"activations.{layer}", seed)), x).r2
        d_r2, d_null = Dist(keep=True), Dist(keep=True)
        d_r2.add(fit.r2)
        d_null.add(null_r2)
        r2_all.merge(d_r2)
        null_all.merge(d_null)
        label = "embeddings" if layer == 0 else f"layer {layer - 1}"
        layers.append(
            {
                "hidden_state": layer,
                "label": label,
                "pairs": int(token.size),
                "kept": int(keep.sum()),
                "filtered_constant": int((~keep).sum()),
                "r2": d_r2.summary(),
                "null": d_null.summary(),
            }
        )
    config = {"pairs_per_layer": pairs_per_layer, "seed": seed, "min_abs_change": min_abs_change, "tokens": n_tok}
    return ActivationLinearity(trajectory.steps, values, token, channel, layers, r2_all, null_all, config)
