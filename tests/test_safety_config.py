"""Every config value is checked once, where the config is built: a bad value is one ``error:`` line naming the field,
the value and what is allowed (exit 2), before anything is written."""

import ast
import inspect
import json
import math
from dataclasses import fields

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.study.config import MODES, StudyConfig
from rlvr_linear.training import grpo
from rlvr_linear.training.grpo import FIELD_RULES, GRPO_OWN_FIELDS, PRESETS, TrainConfig
from rlvr_linear.training.sft import SFTConfig


def _run(capsys, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


BAD_TRAIN_FLAGS = [
    (["--lr", "nan"], "learning_rate must be a finite number > 0 (got nan)"),
    (["--lr", "inf"], "learning_rate must be a finite number > 0 (got inf)"),
    (["--lr", "-1"], "learning_rate must be a finite number > 0 (got -1.0)"),
    (["--beta", "nan"], "beta must be a finite number >= 0 (got nan)"),
    (["--temperature", "0"], "temperature must be a finite number > 0 (got 0.0)"),
    (["--threads", "-1"], "threads must be an integer >= 1 (got -1)"),
    (["--top-p", "0"], "top_p must be a finite number in (0, 1] (got 0.0)"),
    (["--top-p", "2"], "top_p must be a finite number in (0, 1] (got 2.0)"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1 (got 0)"),
    (["--epsilon", "-1"], "epsilon must be a finite number in [0, 1] (got -1.0)"),
    (["--steps", "0"], "steps must be an integer >= 1 (got 0)"),
    (["--samples-per-prompt", "1"], "samples_per_prompt must be an integer >= 2 (got 1)"),
    (["--reground", "x,y"], "reground must be 'M,N', 'M,auto' or 'auto' (M >= 1, N >= 0) (got 'x,y')"),
    (["--grpo-extra", '{"learning_rate": 1}'], "grpo_extra cannot set learning_rate (got 1): train sets it from the "
                                               "field learning_rate"),
    (["--grpo-extra", '{"num_generations": 4}'], "grpo_extra cannot set num_generations (got 4): train sets it from "
                                                 "the field samples_per_prompt"),
    (["--grpo-extra", '{"max_steps": 9}'], "grpo_extra cannot set max_steps (got 9): train sets it from the field "
                                           "steps"),
    (["--grpo-extra", '{"seed": 1}'], "grpo_extra cannot set seed (got 1): train sets it from the field seed"),
    (["--grpo-extra", '{"temperature": 0.5}'], "grpo_extra cannot set temperature (got 0.5): train sets it from the "
                                               "field temperature"),
    (["--grpo-extra", '{"output_dir": "x"}'], "grpo_extra cannot set output_dir (got 'x'): train sets it itself (the "
                                              "trajectory layout)"),
    (["--grpo-extra", '{"no_such_field": 1}'], "grpo_extra: unknown GRPOConfig fields ['no_such_field']"),
]  # fmt: skip


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS)
def test_a_bad_train_flag_is_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    rc, err = _run(capsys, ["train", "-o", "run", *flags])
    assert (rc, err) == (2, [f"error: {message}"])
    assert list(tmp_path.iterdir()) == []  # no run folder: nothing to resume


BAD_YAML = [
    ("steps: ten\n", "config.yaml: steps must be an integer >= 1 (got 'ten')"),
    ("steps: 2.5\n", "config.yaml: steps must be an integer >= 1 (got 2.5)"),
    ("steps: true\n", "config.yaml: steps must be an integer >= 1 (got True)"),
    ("steps:\n", "config.yaml: steps must be an integer >= 1 (got None)"),
    ('learning_rate: "abc"\n', "config.yaml: learning_rate must be a finite number > 0 (got 'abc')"),
    ("learning_rate: .nan\n", "config.yaml: learning_rate must be a finite number > 0 (got nan)"),
    ("monitor: maybe\n", "config.yaml: monitor must be true or false (got 'maybe')"),
    ("grpo_extra: [1]\n", "config.yaml: grpo_extra must be a mapping with string keys (got [1])"),
    ("- steps\n- 10\n", "config.yaml: expected a mapping of TrainConfig fields (name: value lines), got list"),
    ("steps: [1\n", "config.yaml: not valid YAML at line 2, column 1 (expected ',' or ']', but got '<stream end>')"),
    ("1: 2\n", "config.yaml: field names must be strings, got [1]"),
    ("stepz: 7\n", "config.yaml: unknown config fields ['stepz']"),
]


@pytest.mark.parametrize("text, message", BAD_YAML)
def test_a_bad_yaml_config_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(text)
    rc, err = _run(capsys, ["train", "--config", "config.yaml", "-o", "run"])
    assert (rc, err) == (2, [f"error: {message}"])
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_binary_config_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"steps: \xff\xfe\n")
    rc, err = _run(capsys, ["train", "--config", str(f), "-o", str(tmp_path / "run")])
    assert (rc, err) == (2, [f"error: {f}: not a text file (not UTF-8)"])


def test_a_flag_is_not_blamed_on_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 3e-4\nsteps: 7\n")  # 3e-4 is a string to YAML 1.1: read as the number
    cfg = TrainConfig.from_yaml(f, seed=3)
    assert (cfg.learning_rate, cfg.steps, cfg.seed) == (3e-4, 7, 3) and isinstance(cfg.learning_rate, float)
    with pytest.raises(RlvrLinearError, match=r"^temperature must be a finite number > 0 \(got 0.0\)$"):
        TrainConfig.from_yaml(f, temperature=0.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "M", "--temperature", "0"], "temperature must be a finite number > 0 (got 0.0)"),
        (["eval", "M", "--top-p", "2"], "top_p must be a finite number in (0, 1] (got 2.0)"),
        (["eval", "M", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1 (got 0)"),
        (["eval", "M", "--threads", "-1"], "threads must be an integer >= 1 (got -1)"),
        (["generate", "M", "--prompt", "1", "--top-p", "0"], "top_p must be a finite number in (0, 1] (got 0.0)"),
        (["generate", "M", "--prompt", "1", "--temperature", "nan"], "temperature must be a finite number > 0 "
                                                                     "(got nan)"),
        (["generate", "M", "--prompt", "1", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1 (got 0)"),
    ],
)  # fmt: skip
def test_bad_sampling_options_of_eval_and_generate(capsys, tmp_path, pico_dir, argv, message):
    out = tmp_path / ("out.jsonl" if argv[0] == "generate" else "ev")
    argv = [str(pico_dir) if a == "M" else a for a in argv] + (["-o", str(out)])
    rc, err = _run(capsys, argv)
    assert (rc, err) == (2, [f"error: {message}"])
    assert not out.exists()


def test_sft_and_study_configs_check_their_values():
    with pytest.raises(RlvrLinearError, match=r"^learning_rate must be a finite number > 0 \(got nan\)$"):
        SFTConfig(learning_rate=math.nan)
    with pytest.raises(RlvrLinearError, match=r"^batch_size must be an integer >= 1 \(got True\)$"):
        SFTConfig(batch_size=True)
    with pytest.raises(RlvrLinearError, match=r"^seeds must be a non-empty list of integers in \[0, 4294967295\]"):
        StudyConfig.for_mode("quick", seeds=[])
    with pytest.raises(RlvrLinearError, match=r"^wx_t1_fractions must be a list of finite numbers in \(0, 1\]"):
        StudyConfig.for_mode("quick", wx_t1_fractions=[1.5])
    with pytest.raises(RlvrLinearError, match=r"^learning_rate must be a finite number > 0 \(got -0.1\)$"):
        StudyConfig.for_mode("quick", learning_rate=-0.1)


def test_every_config_field_has_a_rule():
    from rlvr_linear.study.config import STUDY_FIELD_RULES
    from rlvr_linear.training.sft import SFT_FIELD_RULES

    assert set(FIELD_RULES) == {f.name for f in fields(TrainConfig)}
    assert set(SFT_FIELD_RULES) == {f.name for f in fields(SFTConfig)}
    assert set(STUDY_FIELD_RULES) == {f.name for f in fields(StudyConfig)} - {"mode"}  # mode: its own check first


def test_every_shipped_setting_still_builds():
    for name, preset in PRESETS.items():
        assert TrainConfig(**preset).steps == preset["steps"], name
    for mode in MODES:
        StudyConfig.for_mode(mode)
    StudyConfig.for_mode("default", model="smollm2-135m")
    SFTConfig()


def test_grpo_own_fields_are_the_fields_train_sets():
    """``GRPO_OWN_FIELDS`` is exactly what ``train`` passes to ``GRPOConfig`` (read from the source); TRL knows them."""
    from trl import GRPOConfig

    calls = [n for n in ast.walk(ast.parse(inspect.getsource(grpo)))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "GRPOConfig"]  # fmt: skip
    assert len(calls) == 1
    # set only where this transformers release knows the field (older ones in our range do not)
    conditional = {"activation_checkpointing"}
    assert 'extra["activation_checkpointing"] = False' in inspect.getsource(grpo)
    assert {k.arg for k in calls[0].keywords if k.arg} == set(GRPO_OWN_FIELDS) - conditional
    assert set(GRPO_OWN_FIELDS) <= {f.name for f in fields(GRPOConfig)}  # the pinned release knows them all
    assert {v for v in GRPO_OWN_FIELDS.values() if v in FIELD_RULES} <= {f.name for f in fields(TrainConfig)}


# --------------------------------------------------------------------------------------------------
# The YAML loader, for any document: a config, or one RlvrLinearError naming the file

_SCALARS = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=10)
    | st.sampled_from([1, 2, 8, 0.5, 3e-4, "3e-4", "grpo", "sgd", "copy", "keep", "5,5", "2,auto", "auto", "tiny"])
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS | st.just({}) | st.just({"num_iterations": 2}),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5,
)
_FIELDS = st.fixed_dictionaries({}, optional={f.name: _VALUES for f in fields(TrainConfig)})
_DOCS = _FIELDS | st.dictionaries(st.text(max_size=6), _VALUES, max_size=3) | _VALUES  # field names, others, any


def _check_loader(path):
    try:
        cfg = TrainConfig.from_yaml(path)
    except RlvrLinearError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
        return
    for f in fields(TrainConfig):  # a config that builds holds only allowed values, and writes a config that builds
        v = getattr(cfg, f.name)
        assert (v is None and FIELD_RULES[f.name].optional) or FIELD_RULES[f.name].accept(v) == v
    assert not isinstance(cfg.steps, bool) and cfg.steps >= 1 and math.isfinite(cfg.learning_rate)
    path.write_text(cfg.to_yaml())
    TrainConfig.from_yaml(path)


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_DOCS)
def test_yaml_loader_builds_a_config_or_names_the_file(tmp_path, doc):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    _check_loader(path)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("steps:_lr0123456789.-[]{},'\" \n\t#&*!|>%@`abcnaTrue")),
                    max_size=40))  # fmt: skip
def test_yaml_loader_on_any_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _check_loader(path)


def test_grpo_extra_with_a_known_field_builds(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({"grpo_extra": {"num_iterations": 2}, "steps": 3}))
    assert TrainConfig.from_yaml(f).grpo_extra == {"num_iterations": 2}
