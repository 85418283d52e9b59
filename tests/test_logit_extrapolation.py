import json

import numpy as np
import pytest
import torch

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.extrapolation import logits as lx
from rlvr_linear.extrapolation import mixing
from rlvr_linear.extrapolation.logit_scoring import resolve_weights, score
from rlvr_linear.extrapolation.logits import ExtrapolatedGenerator
from rlvr_linear.extrapolation.mixing import check_tokenizers, filter_logits, mix_logits, mixed_log_probs, pair_weights
from rlvr_linear.extrapolation.rules import alpha_from_steps
from rlvr_linear.io.checkpoints import step_of_path
from rlvr_linear.io.tokenizer import build_char_tokenizer
from rlvr_linear.models.testing import make_pico_model, save_model

PROMPTS = ["12+34=", "What is 7*8? ", "1", "abc de"]  # mixed lengths -> left padding


def lively(seed: int, std: float = 0.3):
    """A pico model with larger random weights, so greedy decoding is varied (not one repeated token)."""
    model, tok = make_pico_model(seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model, tok


@pytest.fixture(scope="module")
def trio():
    (a, tok), (b, _), (c, _) = lively(0), lively(1), lively(2)
    return a, b, c, tok


def hf_greedy(model, tok, prompts, max_new_tokens):
    """Reference: HF generate with EOS disabled; returns (new ids (B, T), per-step log-softmax (B, T, V))."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=None,
            pad_token_id=tok.pad_token_id,
        )
    return out.sequences[:, enc["input_ids"].shape[1] :], torch.stack(out.logits, 1).log_softmax(-1)


def naive_decode(models, weights, tok, prompt, steps):
    """Reference without KV caches (DExperts style): re-run the whole sequence every step, argmax of the mix."""
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            x = torch.tensor([ids + out])
            lg = [m(input_ids=x).logits[0, -1] for m in models]
            mixed = sum(w * g for w, g in zip(weights, lg))
            out.append(int(mixed.argmax()))
    return out


# --------------------------------------------------------------------------------------------------
# Formulas


def test_pair_weights_and_alpha_from_steps():
    assert pair_weights(1.5) == [-0.5, 1.5]
    assert alpha_from_steps(200, 1400, 2000) == pytest.approx(1.5)
    assert alpha_from_steps(0, 500, 1000) == pytest.approx(2.0)
    with pytest.raises(RlvrLinearError, match="two different steps"):
        alpha_from_steps(100, 100, 300)


def test_mix_logits_formula_and_exact_one_hot():
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    for alpha in (0.0, 0.5, 1.5, 2.0, -0.5):
        torch.testing.assert_close(mix_logits([la, lb], pair_weights(alpha)), la + alpha * (lb - la))
    assert torch.equal(mix_logits([la, lb], [0.0, 1.0]), lb)  # bit-exact: alpha = 1 is model b
    assert torch.equal(mix_logits([la, lb], [1.0, 0.0]), la)
    with pytest.raises(RlvrLinearError, match="2 logit tensors for 3 weights"):
        mix_logits([la, lb], [0.2, 0.3, 0.5])


@pytest.mark.parametrize("weights", [[0.5, 0.5], [-0.5, 1.5], [-1.0, 2.0], [1.5, -0.5], [0.2, -0.7, 1.5]])
def test_mixing_logits_equals_mixing_log_probs(weights):
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(4, 60, generator=g) * 3 + 2 * i for i in range(len(weights))]
    logps = [lg.log_softmax(-1) for lg in logits]
    a = mix_logits(logits, weights).log_softmax(-1)
    b = mix_logits(logps, weights).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # also after temperature and filtering (the full sampling distribution)
    torch.testing.assert_close(
        mixed_log_probs(logits, weights, 0.6, 10, 0.9), mixed_log_probs(logps, weights, 0.6, 10, 0.9), atol=1e-5, rtol=0
    )


def test_filter_logits_top_k_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(filter_logits(scores, top_k=2)).tolist() == [[True, True, False, False, False]]
    # top-p 0.7: 0.5 < 0.7 -> need 0.2 too (0.7 reached)
    assert torch.isfinite(filter_logits(scores, top_p=0.7)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(scores, top_p=0.71)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(scores, top_p=0.01)).sum() == 1  # top token always kept
    # top-p is applied to the top-k renormalised distribution: top-3 mass 0.85, 0.5/0.85 = 0.59 < 0.6
    assert torch.isfinite(filter_logits(scores, top_k=3, top_p=0.6)).sum() == 2
    with pytest.raises(RlvrLinearError, match="top_p must be in"):
        filter_logits(scores, top_p=0.0)


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.8), (7, 0.9)])
def test_inverse_cdf_sampler_matches_filtered_distribution(top_k, top_p):
    g = torch.Generator().manual_seed(2)
    row = torch.randn(1, 30, generator=g) * 2
    N = 20000
    u = (torch.arange(N, dtype=torch.float32) + 0.5) / N  # evenly spaced quantiles
    toks = mixing._sample_rows(row.expand(N, -1).clone(), u, top_k, top_p)
    freq = torch.bincount(toks, minlength=30).float() / N
    probs = filter_logits(row, top_k, top_p).softmax(-1)[0]
    assert (freq - probs).abs().max() < 2.0 / N + 1e-4
    assert set(toks.tolist()) == set(torch.nonzero(probs > 0).squeeze(1).tolist())


# --------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("alpha,which", [(1.0, 1), (0.0, 0)])
def test_alpha_one_is_model_b_and_zero_is_model_a(trio, alpha, which):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, alpha, tok)
    out = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=12, eos_token_ids=[], output_scores=True)
    ref_ids, ref_lp = hf_greedy([a, b][which], tok, PROMPTS, 12)
    assert out.sequences == ref_ids.tolist()
    assert len(set(out.sequences[0])) > 2  # the models are lively
    for i in range(len(PROMPTS)):
        torch.testing.assert_close(out.log_probs[i], ref_lp[i], atol=1e-5, rtol=0)
    assert out.finish_reasons == ["length"] * len(PROMPTS)


def test_extrapolation_matches_naive_decoding_without_cache(trio):
    a, b, c, tok = trio
    for models, weights in (([a, b], pair_weights(1.5)), ([a, b, c], [0.2, -0.7, 1.5])):
        gen = ExtrapolatedGenerator(models, weights, tok)
        out = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=10, eos_token_ids=[])
        for p, seq in zip(PROMPTS, out.sequences):
            assert seq == naive_decode(models, weights, tok, p, 10)
    # extrapolation changes the output relative to both endpoints
    ext = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok).generate(PROMPTS, greedy=True, max_new_tokens=10)
    assert ext != ExtrapolatedGenerator.from_pair(a, b, 1.0, tok).generate(PROMPTS, greedy=True, max_new_tokens=10)


def test_batched_equals_one_by_one_greedy(trio):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    batched = gen.generate(PROMPTS, greedy=True, max_new_tokens=15, batch_size=64)
    single = [gen.generate([p], greedy=True, max_new_tokens=15)[0] for p in PROMPTS]
    assert batched == single
    assert gen.generate(PROMPTS, greedy=True, max_new_tokens=15, batch_size=3) == batched
    assert gen.generate(PROMPTS, n=3, greedy=True, max_new_tokens=15) == [x * 3 for x in batched]


def test_seeded_sampling_reproducible_and_batch_invariant(trio):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    kw = dict(temperature=0.8, top_p=0.9, top_k=20, max_new_tokens=12)
    s1 = gen.generate(PROMPTS, n=3, seed=7, **kw)
    assert [len(x) for x in s1] == [3] * len(PROMPTS)
    assert gen.generate(PROMPTS, n=3, seed=7, **kw) == s1
    assert gen.generate(PROMPTS, n=3, seed=7, batch_size=2, **kw) == s1  # batch size does not matter
    assert gen.generate(PROMPTS, n=3, seed=8, **kw) != s1
    assert len(set(s1[0])) > 1  # the n samples differ


def test_eos_and_pruning_do_not_change_outputs(trio):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    free = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[]).sequences
    eos = free[1][3]  # a token that ends row 1 after 4 tokens
    with_eos = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[eos])
    for f, s, r in zip(free, with_eos.sequences, with_eos.finish_reasons):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert s == f[:cut]
        assert r == ("eos" if eos in f else "length")
    assert with_eos.sequences[1] == free[1][:4]
    assert {"eos", "length"} == set(with_eos.finish_reasons)
    gen.prune = False
    unpruned = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[eos])
    assert unpruned.sequences == with_eos.sequences
    # sampling: rows finishing early (and leaving the batch) do not change the other rows
    kw = dict(n=2, temperature=1.0, max_new_tokens=12, seed=3, eos_token_ids=[eos])
    unpruned = gen.generate_ids(PROMPTS, **kw)
    gen.prune = True
    pruned = gen.generate_ids(PROMPTS, **kw)
    assert pruned.sequences == unpruned.sequences
    assert pruned.finish_reasons == unpruned.finish_reasons
    assert "eos" in pruned.finish_reasons


def test_finished_rows_leave_the_caches(trio, monkeypatch):
    a, b, _, tok = trio
    caches = []
    real = lx._new_cache

    def spy(model):
        caches.append(real(model))
        return caches[-1]

    monkeypatch.setattr(lx, "_new_cache", spy)
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    free = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[]).sequences
    caches.clear()
    gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[free[1][3]])
    assert len(caches) == 2
    assert all(c.layers[0].keys.shape[0] < len(PROMPTS) for c in caches)
    caches.clear()
    gen.prune = False
    gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, eos_token_ids=[free[1][3]])
    assert all(c.layers[0].keys.shape[0] == len(PROMPTS) for c in caches)


def test_stop_strings(trio):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok, eos_token_ids=[])
    free = gen.generate(PROMPTS, greedy=True, max_new_tokens=15)
    stop = free[1][0][4:6]  # a 2-char string that occurs in row 1
    out = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=15, stop=[stop])
    texts = gen.generate(PROMPTS, greedy=True, max_new_tokens=15, stop=[stop])
    for f, t, seq, r in zip(free, texts, out.sequences, out.finish_reasons):
        cut = f[0].find(stop)
        assert t[0] == (f[0] if cut < 0 else f[0][:cut])
        assert r == ("length" if cut < 0 else "stop")
        if cut >= 0:
            assert len(seq) == cut + len(stop)  # char tokenizer: stops right after the stop string
    assert out.finish_reasons[1] == "stop"


def test_next_token_log_probs(trio):
    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    lp = gen.next_token_log_probs(PROMPTS, temperature=0.7, top_k=5)
    assert lp.shape == (len(PROMPTS), len(tok))
    assert (torch.isfinite(lp).sum(-1) == 5).all()
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(PROMPTS)))
    full = gen.next_token_log_probs(PROMPTS)
    ids = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        la, lb = a(input_ids=torch.tensor([ids])).logits[0, -1], b(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(full[0], (la + 1.5 * (lb - la)).log_softmax(-1), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Scoring


def test_score_alpha_one_equals_single_model(trio):
    a, b, _, tok = trio
    responses = ["56", "hello world", "", "x"]
    got = score([a, b], [0.0, 1.0], tok, PROMPTS, responses, batch_size=3)
    assert [len(x) for x in got] == [2, 11, 0, 1]
    for p, r, g in zip(PROMPTS, responses, got):
        if not r:
            continue
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = tok(r, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = b(input_ids=torch.tensor([p_ids + r_ids])).logits[0].log_softmax(-1)
        ref = lp[len(p_ids) - 1 : -1].gather(-1, torch.tensor(r_ids)[:, None]).squeeze(-1).numpy()
        np.testing.assert_allclose(g, ref, atol=1e-5)
        assert g.dtype == np.float32


def test_score_round_trips_decoding(trio):
    a, b, c, tok = trio
    gen = ExtrapolatedGenerator([a, b, c], [0.2, -0.7, 1.5], tok)
    out = gen.generate_ids(PROMPTS, greedy=True, max_new_tokens=8, eos_token_ids=[], output_scores=True)
    got = gen.score(PROMPTS, out.sequences, batch_size=2)
    for seq, lp, g in zip(out.sequences, out.log_probs, got):
        ref = lp.gather(-1, torch.tensor(seq)[:, None]).squeeze(-1).numpy()
        np.testing.assert_allclose(g, ref, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Validation


def test_vocab_mismatch_is_a_clear_error(trio):
    a, _, _, tok = trio
    other, _ = make_pico_model(seed=5)
    other.resize_token_embeddings(len(tok) + 8)
    with pytest.raises(RlvrLinearError, match=r"vocabulary size mismatch: model 0 has vocab_size=100"):
        ExtrapolatedGenerator.from_pair(a, other, 1.5, tok)


def test_tokenizer_mismatch_is_a_clear_error(trio, tmp_path):
    a, b, _, tok = trio
    small = build_char_tokenizer("0123456789+=")
    with pytest.raises(RlvrLinearError, match="tokenizer mismatch: tokenizer 1 differs from tokenizer 0"):
        check_tokenizers([tok, small])
    check_tokenizers([tok, build_char_tokenizer()])  # same vocabulary: fine
    save_model(a, tok, tmp_path / "a")
    save_model(b, small, tmp_path / "b")
    with pytest.raises(RlvrLinearError, match="tokenizer mismatch"):
        ExtrapolatedGenerator.from_dirs(tmp_path / "a", tmp_path / "b", alpha=1.5)
    big = build_char_tokenizer("".join(chr(c) for c in range(32, 300)))
    with pytest.raises(RlvrLinearError, match="the tokenizer has 272 tokens but the models' vocabulary has 100"):
        ExtrapolatedGenerator.from_pair(a, b, 1.5, big)


def test_from_dirs_and_from_steps(trio, tmp_path):
    a, b, _, tok = trio
    save_model(a, tok, tmp_path / "step_200")
    save_model(b, tok, tmp_path / "step_1400")
    gen = ExtrapolatedGenerator.from_dirs(tmp_path / "step_200", tmp_path / "step_1400", alpha=1.5)
    ref = ExtrapolatedGenerator.from_steps(a, b, 200, 1400, 2000, tok)
    assert gen.weights == ref.weights == [-0.5, 1.5] and gen.alpha == 1.5
    assert gen.generate(PROMPTS, greedy=True, max_new_tokens=8) == ref.generate(PROMPTS, greedy=True, max_new_tokens=8)
    with pytest.raises(RlvrLinearError, match="two different steps"):
        ExtrapolatedGenerator.from_steps(a, b, 5, 5, 10, tok)


def test_step_of_path_and_resolve_weights():
    assert step_of_path("runs/x/step_000040") == 40
    assert step_of_path("out/checkpoint-1400") == 1400
    assert step_of_path("verl/global_step_200/actor/huggingface") == 200
    assert step_of_path("models/final") is None
    assert resolve_weights(["step_200", "step_1400"], target_step=2000) == pytest.approx([-0.5, 1.5])
    assert resolve_weights(["m1", "m2"], target_step=1000, steps=[0, 500]) == pytest.approx([-1.0, 2.0])
    assert resolve_weights(["m"]) == [1.0]
    assert resolve_weights(["a", "b", "c"], weights=[0.2, 0.3, 0.5]) == [0.2, 0.3, 0.5]
    with pytest.raises(RlvrLinearError, match="cannot infer the training step of m2"):
        resolve_weights(["step_1", "m2"], target_step=3)
    with pytest.raises(RlvrLinearError, match="alpha needs two models"):
        resolve_weights(["m"], alpha=1.5)
    with pytest.raises(RlvrLinearError, match="with 3 models give explicit weights"):
        resolve_weights(["a", "b", "c"], alpha=1.5)
    with pytest.raises(RlvrLinearError, match="got 2 weights for 3 models"):
        resolve_weights(["a", "b", "c"], weights=[0.5, 0.5])


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_generate_round_trip(trio, tmp_path, capsys):
    a, b, _, tok = trio
    da, db = save_model(a, tok, tmp_path / "step_100"), save_model(b, tok, tmp_path / "step_200")
    out = tmp_path / "gen.jsonl"
    argv = ["generate", str(da), str(db), "--target-step", "300", "--greedy", "--max-new-tokens", "6"]
    rc = main([*argv, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n", "2", "-o", str(out)])
    assert rc == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    expect = ExtrapolatedGenerator.from_pair(a, b, 2.0, tok).generate(PROMPTS[:2], greedy=True, max_new_tokens=6)
    assert [(r["prompt_index"], r["sample"]) for r in recs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["completion"] for r in recs] == [expect[0][0]] * 2 + [expect[1][0]] * 2
    printed = capsys.readouterr().out
    assert "weights: -1, 2 (alpha = 2)" in printed and repr(expect[0][0]) in printed
    # one model: plain decoding; task mode scores completions
    assert main(["generate", str(db), "--task", "arithmetic", "--n-problems", "2", "--greedy", "-o", str(out)]) == 2
    assert main(["generate", str(db), "--task", "arithmetic", "--n-problems", "2", "--greedy", "--max-new-tokens",
                 "4", "-o", str(out), "--overwrite"]) == 0  # fmt: skip
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 2 and all(r["correct"] in (0.0, 1.0) and "answer" in r for r in recs)
    assert "accuracy:" in capsys.readouterr().out
    # errors exit 2 with one line
    assert main(["generate", str(db), "--alpha", "1.5", "--prompt", "1"]) == 2
    assert "error: alpha needs two models" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# lm-evaluation-harness adapter, against a minimal stand-in for lm_eval (the real run is in tests/test_lm_eval.py)


def test_lm_eval_adapter_with_stub(trio, tmp_path, monkeypatch):
    import sys
    import types

    from rlvr_linear import extrapolation

    class LM:
        def __init__(self):
            self.cache_hook = types.SimpleNamespace(add_partial=lambda *a: None)

    registry = {}
    names = ("lm_eval", "lm_eval.api", "lm_eval.api.model", "lm_eval.api.registry", "lm_eval.models")
    mods = {name: types.ModuleType(name) for name in names}
    mods["lm_eval.api.model"].LM = LM
    mods["lm_eval.api.registry"].register_model = lambda name: (lambda cls: registry.setdefault(name, cls))
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.delitem(sys.modules, "rlvr_linear.extrapolation.lm_eval_adapter", raising=False)
    monkeypatch.delattr(extrapolation, "lm_eval_adapter", raising=False)  # loaded already when test_lm_eval ran
    from rlvr_linear.extrapolation import lm_eval_adapter

    a, b, _, tok = trio
    da, db = save_model(a, tok, tmp_path / "step_100"), save_model(b, tok, tmp_path / "step_200")
    lm = registry["rlvr-linear-extrapolated"](model_a=str(da), model_b=str(db), target_step=250, device="cpu")
    assert isinstance(lm, lm_eval_adapter.ExtrapolatedLM) and lm.gen.weights == [-0.5, 1.5]
    ref = ExtrapolatedGenerator.from_pair(a, b, 1.5, tok)
    req = lambda *args: types.SimpleNamespace(args=args)
    free = ref.generate(PROMPTS, greedy=True, max_new_tokens=10)
    stop = free[1][0][4:6]
    got = lm.generate_until([req(p, {"until": [stop], "max_gen_toks": 10, "do_sample": False}) for p in PROMPTS])
    assert got == [f[0].split(stop)[0] for f in free]
    ll = lm.loglikelihood([req(PROMPTS[0], "56"), req("", "ab")])
    s = ref.score([PROMPTS[0], [tok.eos_token_id]], ["56", "ab"])
    assert ll[0][0] == pytest.approx(float(s[0].sum()), abs=1e-5)
    assert ll[1][0] == pytest.approx(float(s[1].sum()), abs=1e-5)
    greedy_cont = free[0][0][:3]
    assert lm.loglikelihood([req(PROMPTS[0], greedy_cont)])[0][1] is True
    assert lm.loglikelihood_rolling([req("ab")])[0] == pytest.approx(ll[1][0], abs=1e-5)


def test_alpha_one_matches_hf_generator_and_plugs_into_evaluate(trio):
    from rlvr_linear.evaluation.evaluation import HFGenerator, evaluate

    a, b, _, tok = trio
    gen = ExtrapolatedGenerator.from_pair(a, b, 1.0, tok)
    kw = dict(greedy=True, max_new_tokens=10, stop=["?"])
    assert gen.generate(PROMPTS, **kw) == HFGenerator(b, tok).generate(PROMPTS, **kw)
    ours = evaluate(gen, "arithmetic", n_problems=4, k=2, max_new_tokens=6)
    ref = evaluate((b, tok), "arithmetic", n_problems=4, k=2, max_new_tokens=6)
    assert ours.greedy_accuracy == ref.greedy_accuracy and ours.correct.shape == (4, 2)
