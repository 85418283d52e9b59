import pytest

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.evaluation.tasks import ArithmeticCoTTask, Problem, get_task
from rlvr_linear.io.tokenizer import build_char_tokenizer

P = Problem("12+7+45", "12+7+45=", "64")


def test_reference_writes_every_partial_sum_then_the_marker():
    t = get_task("arithmetic-cot")
    assert isinstance(t, ArithmeticCoTTask)
    assert t.reference(P) == "12+7=19\n19+45=64\nanswer: 64"
    assert t.score(t.reference(P), P) == 1.0
    minus = get_task("arithmetic-cot:ops=-,min_terms=3,max_terms=3")
    q = Problem("5-9-3", "5-9-3=", "-7")
    assert minus.reference(q) == "5-9=-4\n-4-3=-7\nanswer: -7"
    assert minus.score(minus.reference(q), q) == 1.0


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("12+7=19\n19+45=64\nanswer: 64", 1.0),  # correct
        ("12+7=19\n19+45=65\nanswer: 65", 0.0),  # wrong final answer
        ("12+7=20\n20+45=99\nanswer: 64", 1.0),  # right final answer after wrong partial sums: only the answer counts
        ("answer:64", 1.0),  # no chain at all: still only the final answer is checked
        ("Answer: 64\n", 1.0),
        ("answer: 63\nanswer: 64", 1.0),  # the last marker is the final answer
        ("answer: 64\nanswer: 63", 0.0),
        ("12+7=19\n19+45=64", 0.0),  # malformed: no marker, even though the last partial sum is right
        ("12+7=19\n19+45=64\nanswer:", 0.0),  # malformed: marker without a number
        ("answer: 64abc", 0.0),  # malformed: the number runs into letters
        ("answer: 6 4", 0.0),
        ("64", 0.0),
        ("", 0.0),
        ("\\boxed{64}", 0.0),
    ],
)
def test_only_the_final_answer_is_verified(completion, expected):
    assert ArithmeticCoTTask().score(completion, P) == expected


def test_reward_function_scores_through_trl_signature():
    t = get_task("arithmetic-cot")
    rf = t.reward_function()
    got = rf(["12+7+45="] * 3, ["12+7=1\n1+45=64\nanswer: 64", "answer: 65", "garbage"], answer=["64"] * 3)
    assert got == [1.0, 0.0, 0.0]


def test_reference_lengths_are_20_to_80_char_tokens_and_fit_the_generation_budget():
    t = get_task("arithmetic-cot")
    tok = build_char_tokenizer()
    problems = t.problems("validation", 1000)
    lengths = [len(tok(t.reference(p), add_special_tokens=False)["input_ids"]) for p in problems]
    assert 20 <= min(lengths) and max(lengths) + 1 <= 80  # + EOS
    assert max(lengths) + 1 <= t.max_new_tokens(chat=False) <= 80
    terms = {p.prompt.count("+") + 1 for p in problems}
    assert terms == {3, 4, 5}
    assert all(int(x) <= 99 for p in problems for x in p.id.split("+"))
    for p in problems[:200]:
        assert int(p.answer) == eval(p.id)  # noqa: S307 - digits and + only
        assert p.prompt == p.id + "="


def test_splits_are_disjoint_reproducible_and_the_test_split_holds_2000_problems():
    t = get_task("arithmetic-cot")
    test = t.problems("test", 2500)
    assert len({p.id for p in test}) == 2500
    train = {p.id for p in t.problems("train", 5000)}
    val = {p.id for p in t.problems("validation", 2000)}
    assert not (train & val) and not (train & {p.id for p in test}) and not (val & {p.id for p in test})
    assert [p.id for p in t.problems("test", 2500)] == [p.id for p in test]  # same seed, same problems, same order
    assert [p.id for p in t.problems("test", 20, seed=1)] != [p.id for p in t.problems("test", 20, seed=2)]


def test_bad_options_and_exhausted_spaces_raise_clear_errors():
    with pytest.raises(RlvrLinearError, match="bad arithmetic-cot options"):
        get_task("arithmetic-cot:ops=*")
    with pytest.raises(RlvrLinearError, match="bad arithmetic-cot options"):
        get_task("arithmetic-cot:min_terms=4,max_terms=3")
    with pytest.raises(RlvrLinearError, match="give a number of problems"):
        get_task("arithmetic-cot").problems("train", None)
    small = get_task("arithmetic-cot:digits=1,min_terms=2,max_terms=2")  # 100 expressions in all
    with pytest.raises(RlvrLinearError, match="could not draw 50 distinct test problems"):
        small.problems("test", 50)


def test_the_tiny_cot_preset_loads_the_shipped_base_which_writes_chains(tmp_path):
    import json

    from rlvr_linear.evaluation.evaluation import evaluate
    from rlvr_linear.evaluation.tasks import COT_MARKER
    from rlvr_linear.io.loading import load_model
    from rlvr_linear.models.base_model import (
        ASSETS,
        BASE_PRESETS,
        TinyBaseConfig,
        recipe_key,
        shipped_bases,
        verify_base_dir,
    )
    from rlvr_linear.training.grpo import PRESETS, TrainConfig, resolve_model

    entry = shipped_bases()["tiny-cot"]
    assert entry["recipe_key"] == recipe_key(TinyBaseConfig(**BASE_PRESETS["tiny-cot"]))
    assert verify_base_dir(ASSETS / "tiny-cot", entry["sha256"]) == []
    cfg = TrainConfig(**PRESETS["tiny-cot"])
    assert (cfg.model, cfg.task) == ("tiny-cot", "arithmetic-cot")
    d = resolve_model(cfg.model, cache_dir=tmp_path, progress=False)
    assert d == tmp_path / f"tiny-{entry['recipe_key']}"
    rec = json.loads((d / "rlvr_linear_base.json").read_text())
    assert rec["recipe"]["task"] == "arithmetic-cot" and rec["params"] == 801_408
    assert 0.2 <= rec["val_greedy"] <= 0.4 and 20 <= rec["val_mean_response_tokens"] <= 80  # headroom, long replies
    model, tok = load_model(d)
    task = get_task("arithmetic-cot")
    res = evaluate((model, tok), task, split="validation", n_problems=16, k=0, keep_samples=True)
    # the warmed-up base writes the chain: one line per partial sum, then the marker and a number
    assert sum(t.count("\n") >= 2 and task.extract(t) is not None for t in res.greedy_samples) >= 14
    assert all(COT_MARKER in t for t in res.greedy_samples[:4])
