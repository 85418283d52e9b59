"""The bare GRPO step (rlvr_linear.training.grpo_step) and the micro-batch rule of the TRL path, on pico Llama
models."""

import pytest
import torch

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import Problem, Task
from rlvr_linear.models.testing import make_pico_model
from rlvr_linear.training.grpo import TrainConfig, micro_batch_size
from rlvr_linear.training.grpo_step import (
    Rollout,
    completion_mask,
    group_advantages,
    grpo_step,
    matmul_gflops,
    policy_gradient,
    sample_groups,
    step_flops,
)


def test_completion_mask_keeps_tokens_up_to_the_first_eos():
    comp = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert completion_mask(comp, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert completion_mask(comp, [2, 7]).tolist()[0] == [1, 1, 1, 0, 0]
    assert completion_mask(torch.tensor([[7, 2]]), [2, 7]).tolist() == [[1, 0]]


def test_group_advantages_are_trl_group_scaling():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()  # unbiased, as torch.std and TRL
    assert torch.allclose(adv[:4], (torch.tensor([1.0, 0, 0, 0]) - 0.25) / (std + 1e-4))
    assert adv[4:].abs().max() == 0  # a group with equal rewards carries no signal


def test_step_flops_counts_2n_per_forward_token_and_6n_per_trained_token():
    assert step_flops(10, prefill_tokens=3, generated_tokens=4, trained_tokens=7) == 2 * 10 * 7 + 6 * 10 * 7


def _rollout(model, tok, prompts, group=3, new=6, seed=0):
    torch.manual_seed(seed)
    return sample_groups(model, tok, prompts, group, new)


def test_sampled_rollout_is_left_padded_and_masked_after_eos():
    model, tok = make_pico_model("llama")
    roll = _rollout(model, tok, ["1+2=", "13+24+5="])
    assert roll.ids.shape[0] == 6 and roll.prompt_len == len("13+24+5=")
    assert roll.prompt_mask[:3].sum(1).tolist() == [4, 4, 4] and roll.prompt_mask[3:].sum(1).tolist() == [8, 8, 8]
    assert roll.prompt_mask[0, :4].tolist() == [0, 0, 0, 0]  # left padding
    comp = roll.ids[:, roll.prompt_len :]
    assert torch.equal(roll.completion_mask, completion_mask(comp, [tok.eos_token_id]))
    assert roll.texts[0] == tok.decode(comp[0][roll.completion_mask[0].bool()], skip_special_tokens=True)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_micro_batched_gradient_equals_the_whole_batch_gradient():
    """Sorting, trimming padding columns and accumulating micro-batches must not change the gradient."""
    model, tok = make_pico_model("llama")
    model.train()
    roll = _rollout(model, tok, ["1+2=", "13+24+5=", "7="], group=4, new=8)
    adv = torch.linspace(-1.5, 1.5, 12)
    model.zero_grad()
    loss_full, pos_full = policy_gradient(model, roll, adv, None)
    g_full = _grads(model).clone()
    model.zero_grad()
    loss_mb, pos_mb = policy_gradient(model, roll, adv, 5)
    assert loss_mb == pytest.approx(loss_full, rel=1e-4, abs=1e-6)  # fp32 sums in another order
    assert torch.allclose(_grads(model), g_full, rtol=1e-4, atol=1e-6)
    assert pos_mb <= pos_full  # micro-batches of similar lengths compute fewer padding positions


def test_policy_gradient_matches_the_grpo_loss_written_out():
    """loss = mean_i sum_t -A_i log p_it / n_i, with log p from an untrimmed full-vocabulary log-softmax."""
    model, tok = make_pico_model("llama")
    model.train()
    roll = _rollout(model, tok, ["1+2=", "13+24+5="], group=2, new=5)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    model.zero_grad()
    got, _ = policy_gradient(model, roll, adv, 3)
    full = torch.cat([roll.prompt_mask, roll.completion_mask], 1)
    pos = (full.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=roll.ids, attention_mask=full, position_ids=pos).logits
    L = roll.prompt_len
    logp = torch.log_softmax(logits[:, L - 1 : -1], -1).gather(-1, roll.ids[:, L:, None]).squeeze(-1)
    cm = roll.completion_mask.float()
    want = (-(adv[:, None] * logp * cm).sum(1) / cm.sum(1)).mean()
    assert got == pytest.approx(float(want), abs=1e-6)  # terms of both signs cancel: an absolute tolerance


class _HasDigit(Task):
    name = "has-digit"

    def score(self, completion, problem):
        return float(any(c.isdigit() for c in completion))


def test_grpo_step_updates_weights_and_counts_tokens():
    model, tok = make_pico_model("llama")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    probs = [Problem("a", "1+2=", "3"), Problem("b", "13+4=", "17")]
    torch.manual_seed(3)
    st = grpo_step(model, opt, tok, _HasDigit(), probs, group=4, max_new_tokens=6, micro_batch=3)
    assert st.prompt_tokens == 4 * 4 + 4 * 5
    assert 8 <= st.generated_tokens <= 8 * 6 and st.mean_completion_len == st.generated_tokens / 8
    assert st.trained_positions >= st.prompt_tokens + st.generated_tokens
    assert st.step_s >= st.gen_s + st.train_s
    assert 0 < st.gen_cpu_s and 0 < st.train_cpu_s and st.step_cpu_s >= st.gen_cpu_s + st.train_cpu_s + st.opt_cpu_s
    if 0 < st.mean_reward < 1:  # some group had a spread of rewards: the step must have moved the weights
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_matmul_rate_on_both_clocks_is_a_plausible_cpu_rate():
    wall, cpu = matmul_gflops(256, 0.3), matmul_gflops(256, 0.3, clock="cpu")
    assert 0.5 < wall < 2000 and 0.5 < cpu < 2000  # GFLOP/s of 1-2 cores of any recent x86 / ARM CPU


def test_micro_batch_rule_of_the_trl_path():
    cfg = TrainConfig(prompts_per_step=8, samples_per_prompt=8)
    assert micro_batch_size(cfg, 800_000) == 64  # small models: one pass, as before
    assert micro_batch_size(cfg, 134_515_008) == 16  # SmolLM2: gradient accumulation over 4 micro-batches
    assert micro_batch_size(TrainConfig(prompts_per_step=2, samples_per_prompt=4), 10**9) == 8
    assert micro_batch_size(TrainConfig(prompts_per_step=8, samples_per_prompt=8, micro_batch=0), 10**9) == 64
    assert micro_batch_size(TrainConfig(prompts_per_step=8, samples_per_prompt=8, micro_batch=32), 10) == 32
    with pytest.raises(RlvrLinearError, match="must divide the batch of 64"):
        micro_batch_size(TrainConfig(prompts_per_step=8, samples_per_prompt=8, micro_batch=24), 10)


def test_rollout_dataclass_prompt_len():
    r = Rollout(torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 4), ["", ""])
    assert r.prompt_len == 3


def test_compact_fused_lm_head_gives_trl_the_same_log_probs_and_entropies():
    """trl_cpu: TRL's fused head scoring only labelled positions on CPU = scoring every position, then masking."""
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from rlvr_linear.runtime.trl_cpu import compact_fused_lm_head

    model, tok = make_pico_model("llama")
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(4, len(tok), (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :5] = -100  # the prompt: only the last 4 positions are scored
    original = trl_utils._use_triton
    outs = {}
    for compact in (False, True):
        with compact_fused_lm_head(compact) as patched:
            assert patched is compact and (trl_utils._use_triton(torch.device("cpu")) is compact)
            out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            outs[compact] = (out.log_probs, out.entropy)
    assert trl_utils._use_triton is original  # restored
    scored = labels[:, 1:] != -100
    for full, compact in zip(outs[False], outs[True]):
        assert torch.allclose(full[scored], compact[scored], atol=1e-5)
        assert compact[~scored].abs().max() == 0
