import json

import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import ArithmeticTask, Problem, extract_boxed, get_task


def test_arithmetic_splits_are_disjoint_and_reproducible():
    t = get_task("arithmetic")
    train = {p.id for p in t.problems("train")}
    val = {p.id for p in t.problems("validation")}
    test = {p.id for p in t.problems("test")}
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == 100 * 100
    assert [p.id for p in t.problems("test", 20, seed=3)] == [p.id for p in t.problems("test", 20, seed=3)]
    assert [p.id for p in t.problems("test", 20, seed=3)] != [p.id for p in t.problems("test", 20, seed=4)]


def test_arithmetic_answers_and_options():
    t = get_task("arithmetic:digits=1,terms=3,ops=+-*")
    assert (t.digits, t.terms, t.ops) == (1, 3, "+-*")
    for p in t.problems("train", 50):
        assert int(p.answer) == eval(p.prompt.rstrip("="))
        assert p.prompt.endswith("=")
    big = get_task("arithmetic:digits=4,terms=3")  # too large to enumerate: sampled
    ps = big.problems("validation", 30)
    assert len({p.id for p in ps}) == 30


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("46", 1.0),
        ("46\n12", 1.0),
        (" 46 ", 1.0),
        ("45", 0.0),
        ("", 0.0),
        ("abc", 0.0),
        ("4 6", 0.0),
        ("so 23+23 = 46", 1.0),
        ("\\boxed{46}", 1.0),
        ("\\boxed{4x}", 0.0),
        ("-46", 0.0),
    ],
)
def test_arithmetic_verifier(completion, expected):
    t = ArithmeticTask()
    assert t.score(completion, Problem("23+23", "23+23=", "46")) == expected


def test_reward_function_follows_trl_signature():
    t = get_task("arithmetic")
    f = t.reward_function()
    out = f(prompts=["1+1=", "2+2="], completions=["2", [{"role": "assistant", "content": "5"}]], answer=["2", "4"])
    assert out == [1.0, 0.0]


def test_reasoning_gym_adapter_scores_with_its_own_scorer():
    t = get_task("rg:basic_arithmetic")
    ps = t.problems("test", 5)
    assert len(ps) == 5
    assert all(t.score(p.answer, p) == 1.0 for p in ps)
    assert all(t.score("no idea", p) == 0.0 for p in ps)
    train_ids = {p.id for p in t.problems("train", 40)}
    assert not train_ids & {p.id for p in ps}


def test_file_benchmark_math_verify(tmp_path):
    f = tmp_path / "bench.jsonl"
    rows = [{"problem": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}"}, {"problem": "2+2?", "answer": "4"}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    t = get_task(str(f))
    ps = t.problems("test")
    assert [p.answer for p in ps] == ["\\frac{3}{4}", "4"]
    assert t.score("so the answer is \\boxed{0.75}", ps[0]) == 1.0
    assert t.score("\\boxed{\\frac{6}{8}}", ps[0]) == 1.0
    assert t.score("\\boxed{5}", ps[1]) == 0.0
    assert t.score("4", ps[1]) == 0.0  # no \boxed{} answer
    # no chat template: the bare prompt; a chat template gets the prompt and the \boxed{} instruction
    assert t.render(ps[0], None) == ps[0].prompt == "What is 1/2 + 1/4?"
    assert "\\boxed{}" in t.instruction

    class ChatTokenizer:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt and [m["role"] for m in messages] == ["user"]
            return "<user>" + messages[0]["content"] + "<assistant>"

    assert t.render(ps[0], ChatTokenizer()) == f"<user>What is 1/2 + 1/4? {t.instruction}<assistant>"


def test_bad_tasks(tmp_path):
    with pytest.raises(RlvrLinearError, match="unknown task 'nope'"):
        get_task("nope")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RlvrLinearError, match="holds no problems"):
        get_task(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    with pytest.raises(RlvrLinearError, match="lacks a 'problem' or 'answer'"):
        get_task(str(bad))
    with pytest.raises(RlvrLinearError, match="unknown split"):
        get_task("arithmetic").problems("dev", 3)
    with pytest.raises(RlvrLinearError, match="bad arithmetic options"):
        get_task("arithmetic:terms=1")


def test_extract_boxed_nested():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_boxed("none") is None


class _ChatTokenizer:
    """A stand-in with a chat template: renders each message as ``<role>content`` (what apply_chat_template returns)."""

    chat_template = "stand-in"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


def test_system_message_option_reaches_the_rendered_prompt_and_the_training_rows():
    from rlvr_linear.training.grpo import TrainConfig, _rows

    default, empty = get_task("arithmetic"), get_task("arithmetic:system=")
    p = default.problems("train", 1)[0]
    assert default.system is None and empty.system == ""
    assert default.render(p, _ChatTokenizer()) == f"<user>{p.prompt} Reply with only the number.<assistant>"
    assert empty.render(p, _ChatTokenizer()) == f"<system><user>{p.prompt} Reply with only the number.<assistant>"
    assert get_task("arithmetic-cot-chat:system=hi").messages(p)[0] == {"role": "system", "content": "hi"}
    # training rows hold the same conversation that evaluation renders
    rows = _rows(empty, TrainConfig(steps=1, prompts_per_step=2), chat=True)
    q = next(x for x in empty.problems("train", None) if x.id == rows[0]["problem_id"])
    assert rows[0]["prompt"] == empty.messages(q) == [
        {"role": "system", "content": ""}, {"role": "user", "content": q.prompt + " Reply with only the number."}
    ]
