import json
import math

import numpy as np
import pytest
import torch

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import discover
from rlvr_linear.training.sft import SFTConfig, noise_weights, signal_noise, train_sft, weighted_sft_loss


def test_signal_noise_definition():
    assert signal_noise(None) == (1.0, 0.0)
    assert signal_noise(None, zero_signal=True) == (0.0, 1.0)
    assert signal_noise(5.0, zero_signal=True) == (0.0, 1.0)
    s, sigma = signal_noise(-10.0)
    assert s == 1.0 and sigma == pytest.approx(10**0.5)
    s, sigma = signal_noise(20.0)
    assert sigma == pytest.approx(0.1)
    assert 10 * math.log10(s**2 / sigma**2) == pytest.approx(20.0)


@pytest.mark.parametrize("snr", [10.0, 0.0, -10.0, -20.0])
def test_noise_weights_exact_values_and_moments(snr):
    g = torch.Generator().manual_seed(0)
    w = noise_weights((400, 500), snr, generator=g)
    s, sigma = 1.0, 10 ** (-snr / 20)
    norm = math.sqrt(s * s + sigma * sigma)
    # only the two values (s ± σ)/sqrt(s² + σ²) occur
    vals = np.unique(w.numpy().round(5))
    assert np.allclose(sorted(vals), sorted({round((s - sigma) / norm, 5), round((s + sigma) / norm, 5)}))
    # E[w] = s / sqrt(s² + σ²), E[w²] = 1 (200k draws: standard error ~ sigma/norm/450)
    assert float(w.mean()) == pytest.approx(s / norm, abs=0.01)
    assert float((w**2).mean()) == pytest.approx(1.0, abs=0.01)
    # the same generator seed gives the same signs
    w2 = noise_weights((400, 500), snr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(w, w2)


def test_noise_weights_zero_signal_and_none():
    w = noise_weights((100, 100), None, zero_signal=True, generator=torch.Generator().manual_seed(1))
    assert set(np.unique(w.numpy()).tolist()) == {-1.0, 1.0}
    assert abs(float(w.mean())) < 0.03
    assert torch.equal(noise_weights((3, 4), None), torch.ones(3, 4))


def test_weighted_sft_loss_matches_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 5, 6, -100]])
    w = torch.tensor([[9.0, 9.0, 0.5, -1.0, 2.0], [9.0, 1.5, -0.5, 3.0, 9.0]])[:, :4]
    # shifted: position j predicts labels[:, j+1]
    lp = torch.log_softmax(logits[:, :-1], -1)
    y = labels[:, 1:]
    terms = []
    for b in range(2):
        for j in range(4):
            if y[b, j] != -100:
                terms.append(w[b, j] * -lp[b, j, y[b, j]])
    expected = torch.stack(terms).sum() / len(terms)
    assert weighted_sft_loss(logits, labels, w).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    assert weighted_sft_loss(logits, labels).item() == pytest.approx(plain.item(), rel=1e-6)


def test_config_errors():
    with pytest.raises(RlvrLinearError, match="unknown optimizer 'lion'"):
        SFTConfig(optimizer="lion")
    with pytest.raises(RlvrLinearError, match=r"steps must be an integer >= 1 \(got 0\)"):
        SFTConfig(steps=0)
    assert SFTConfig(noise_snr_db=-5).noise_label == "-5 dB"
    assert SFTConfig(zero_signal=True).noise_label == "zero-signal"


def _cfg(model, **kw):
    base = dict(model=str(model), task="arithmetic:digits=1", steps=12, save_every=4, learning_rate=3e-3,
                batch_size=16, eval_problems=5, seed=0, threads=1)  # fmt: skip
    base.update(kw)
    return SFTConfig(**base)


def test_sft_run_layout_is_discoverable_and_loss_decreases(tmp_path, pico_dir):
    run = tmp_path / "sft"
    man = train_sft(_cfg(pico_dir), run, progress=False)
    assert man["finished"] and man["kind"] == "sft"
    assert [c["step"] for c in man["checkpoints"]] == [0, 4, 8, 12]
    assert all(c["val_accuracy"] is not None for c in man["checkpoints"])
    traj = discover(run)
    assert traj.steps == [0, 4, 8, 12]
    traj.validate(min_checkpoints=4)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 13))
    assert all(r["weight_mean"] == 1.0 for r in recs)  # no noise: every weight is 1
    assert recs[-1]["ce"] < recs[0]["ce"]
    assert (run / "config.yaml").exists()
    # a non-empty run directory is refused without overwrite
    with pytest.raises(RlvrLinearError, match="exists and is not empty"):
        train_sft(_cfg(pico_dir), run, progress=False)


def _zero_signal_means(pico_dir, steps, batch_size=16, seed=0):
    """The per-step mean of the zero-signal weights, replayed from train_sft's seeded draws (problems, then signs)."""
    import random

    from rlvr_linear.evaluation.tasks import get_task
    from rlvr_linear.io.tokenizer import load_tokenizer
    from rlvr_linear.models.base_model import sft_batch
    from rlvr_linear.training.sft import noise_weights

    task, tok = get_task("arithmetic:digits=1"), load_tokenizer(pico_dir)
    pool = task.problems("train", None)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        batch = [pool[rng.randrange(len(pool))] for _ in range(batch_size)]
        x, y, _m = sft_batch(tok, [task.render(p, tok) for p in batch], [task.reference(p) for p in batch])
        w = noise_weights((x.shape[0], x.shape[1] - 1), None, True, gen)
        assert set(w.unique().tolist()) == {-1.0, 1.0}
        out.append(float(w[y[:, 1:] != -100].mean()))
    return out


def test_sft_noise_run_records_noise(tmp_path, pico_dir):
    man = train_sft(_cfg(pico_dir, steps=4, zero_signal=True), tmp_path / "z", progress=False)
    assert man["noise"] == {"label": "zero-signal", "signal": 0.0, "sigma": 1.0}
    recs = [json.loads(line) for line in (tmp_path / "z" / "metrics.jsonl").read_text().splitlines()]
    # the recorded mean is exactly that of the seeded random signs over each step's target tokens
    assert [r["weight_mean"] for r in recs] == pytest.approx(_zero_signal_means(pico_dir, steps=4), abs=1e-7)
    assert all(r["weight_mean"] != 1.0 for r in recs)
