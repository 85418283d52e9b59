"""A real lm-evaluation-harness run: ``rlvr-linear-extrapolated`` at alpha = 1 scores what lm-eval's ``hf`` scores."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # installed by the dev extra (rlvr-linear[lm-eval])

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import rlvr_linear.extrapolation.lm_eval_adapter  # noqa: E402,F401 - registers rlvr-linear-extrapolated
from rlvr_linear.io.loading import load_model  # noqa: E402
from rlvr_linear.models.testing import make_trajectory  # noqa: E402

DOCS = [
    {"question": "1+2=", "choices": ["3", "4", "12"], "label": 0, "answer": "3"},
    {"question": "5+5=", "choices": ["55", "10", "0"], "label": 1, "answer": "10"},
    {"question": "7-2=", "choices": ["9", "4", "5"], "label": 2, "answer": "5"},
    {"question": "2*3=", "choices": ["6", "5", "23"], "label": 0, "answer": "6"},
]


def _task_yaml(name: str, data: str, kind: str) -> str:
    head = (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\ndoc_to_text: '{{question}}'\n"
    )
    if kind == "loglikelihood":
        return head + (
            "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
            "metric_list:\n  - metric: acc\n"
        )
    return head + (
        "output_type: generate_until\ndoc_to_target: answer\n"
        "generation_kwargs:\n  until: ['\\n', '>']\n  do_sample: false\n  max_gen_toks: 6\n"
        "metric_list:\n  - metric: exact_match\n"
    )


def _weights(name, w, step, i):
    return w * 3 * (1 + 0.1 * i) + 0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(i))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    run = make_trajectory(root / "run", [0, 10], _weights)  # scaled up: prompt-dependent greedy text
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    tasks = root / "tasks"
    tasks.mkdir()
    for kind in ("loglikelihood", "generate"):
        (tasks / f"rl_{kind}.yaml").write_text(_task_yaml(f"rl_{kind}", str(data), kind))
    return run, TaskManager(include_path=str(tasks), include_defaults=False), tasks


def _run(model, model_args, tm):
    return simple_evaluate(
        model=model, model_args=model_args, tasks=["rl_loglikelihood", "rl_generate"], task_manager=tm,
        batch_size=1, device="cpu", log_samples=True, bootstrap_iters=0, random_seed=0,
    )  # fmt: skip


def _loglikelihoods(out) -> list[float]:
    return [float(r[0][0]) for s in out["samples"]["rl_loglikelihood"] for r in s["resps"]]


def test_extrapolated_at_alpha_1_scores_what_hf_scores(setup):
    from lm_eval.models.huggingface import HFLM

    run, tm, _ = setup
    a, b = run / "step_000000", run / "step_000010"
    model, tok = load_model(b)  # the char tokenizer passed as an object: AutoTokenizer would mangle it
    ref = _run(HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu"), None, tm)
    ours = _run("rlvr-linear-extrapolated", f"model_a={a},model_b={b},alpha=1", tm)
    for task, metric in (("rl_loglikelihood", "acc,none"), ("rl_generate", "exact_match,none")):
        assert ours["results"][task][metric] == ref["results"][task][metric]
        assert len(ours["samples"][task]) == len(DOCS)
    ll_ref, ll_ours = _loglikelihoods(ref), _loglikelihoods(ours)
    assert len(ll_ref) == sum(len(d["choices"]) for d in DOCS)
    # the same log-likelihood for every choice: W_a + 1 * (W_b - W_a) equals W_b up to float rounding (bit-equal on
    # some CPUs, one ulp apart on others), so the scores agree to rounding, far below the alpha = 0 gap checked below
    assert ll_ours == pytest.approx(ll_ref, rel=1e-6, abs=1e-5)
    gen_ref = [s["resps"][0][0] for s in ref["samples"]["rl_generate"]]
    assert [s["resps"][0][0] for s in ours["samples"]["rl_generate"]] == gen_ref
    assert len(set(gen_ref)) == len(DOCS) and "" in gen_ref  # distinct texts; one cut at the stop string '>'

    # and alpha matters: at alpha = 0 it is checkpoint A's scores
    a_model, a_tok = load_model(a)
    ref_a = _run(HFLM(pretrained=a_model, tokenizer=a_tok, batch_size=1, device="cpu"), None, tm)
    assert _loglikelihoods(ref_a) != pytest.approx(ll_ref, abs=1e-3)


@pytest.mark.slow  # lm-eval's command line indexes all its built-in tasks first (~15 s)
def test_command_line(setup, tmp_path, monkeypatch):
    from rlvr_linear.extrapolation.lm_eval_adapter import main

    run, tm, tasks = setup
    monkeypatch.chdir(tmp_path)
    margs = f"model_a={run / 'step_000000'},model_b={run / 'step_000010'},alpha=1.5"
    main(["--model", "rlvr-linear-extrapolated", "--model_args", margs, "--tasks", "rl_loglikelihood",
          "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4", "--output_path", "out"])  # fmt: skip
    (res,) = list((tmp_path / "out").rglob("results_*.json"))
    got = json.loads(res.read_text())["results"]["rl_loglikelihood"]
    want = simple_evaluate(
        model="rlvr-linear-extrapolated", model_args=margs, tasks=["rl_loglikelihood"], task_manager=tm,
        batch_size=4, device="cpu", bootstrap_iters=0,
    )["results"]["rl_loglikelihood"]  # fmt: skip
    assert got["acc,none"] == want["acc,none"]
