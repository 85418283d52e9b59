"""Trajectory sketches: ``rlvr-linear sketch`` on every run layout, the analyses of a sketch equal to those of the
checkpoints, incremental re-runs, refusals, the size per checkpoint, and the TRL / ``train --sketch`` callback."""

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr_linear.advisor import advise
from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import TensorReader
from rlvr_linear.linearity import PAPER_FRACTION, PAPER_MIN_SAMPLES, Probe, paper_sample_size, write_probes
from rlvr_linear.linearity.sketch import Sketch, open_run, sketch_bytes
from rlvr_linear.models.testing import make_pico_dir, make_trajectory
from rlvr_linear.training.sketch_callback import TRAIN_PROBE_PROMPTS

STEPS = [0, 10, 20, 30]
#: no spaces: a TRL checkpoint's copy of the pico char tokenizer splits spaces differently (no rlvr-linear marker)
PROBES = [Probe("1+2=", "3"), Probe("12+5=", "17ok"), Probe("7+7=", "14"), Probe("40+2=", "42because")]


def _moving(n, w, s, i):
    """A drift plus noise."""
    g = torch.Generator().manual_seed(100 + i)
    return w + 1.5e-2 * s + 2e-3 * torch.randn(w.shape, generator=g)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sketch")
    make_trajectory(root / "run", STEPS + [40], _moving)
    write_probes(root / "probes.jsonl", PROBES)
    return root


def _rc(capsys, argv):
    """Exit status and the error lines (stderr also carries progress bars); the error is stderr's last line."""
    rc = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert not errors or lines[-1] == errors[-1]
    return rc, errors


def _json(path):
    return json.loads(Path(path).read_text())


def _same_analysis(a: Path, b: Path, kind: str) -> None:
    """Two result folders hold the same numbers: the JSON, the CSV, every npz array."""
    assert _json(a / f"{kind}.json") == _json(b / f"{kind}.json")
    for f in a.glob("*.csv"):
        assert list(csv.reader(f.open())) == list(csv.reader((b / f.name).open()))
    for f in a.glob("*.npz"):
        x, y = np.load(f), np.load(b / f.name)
        assert sorted(x.files) == sorted(y.files)
        for k in x.files:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_analyses_of_a_sketch_equal_those_of_the_checkpoints(run, tmp_path, capsys):
    r, probes = run / "run", str(run / "probes.jsonl")
    assert main(["sketch", str(r), "--probes", probes]) == 0  # default: RUN/sketch
    sk = Sketch(r / "sketch")
    assert sk.steps == STEPS + [40] and sk.has_probes and (sk.fraction, sk.seed) == (PAPER_FRACTION, 42)
    for name, argv in (("weights", []), ("logprobs", ["--probes", probes])):
        more = ["--min-change", "0.01"] if name == "logprobs" else []  # (more positions than 0.2 gives here)
        assert main(["analyze", name, str(r), "-o", str(tmp_path / f"{name}_ckpt"), *argv, *more]) == 0
        two = ["--workers", "2"] if name == "weights" else []  # (a sketch is read in this process)
        assert main(["analyze", name, str(r / "sketch"), "-o", str(tmp_path / f"{name}_sketch"), *more, *two]) == 0
        _same_analysis(tmp_path / f"{name}_ckpt", tmp_path / f"{name}_sketch", name)
    w = _json(tmp_path / "weights_sketch" / "weights.json")
    assert w["counts"]["kept"] > 500 and w["null"]["median"] is not None  # a real null, equal as a whole above
    lp = _json(tmp_path / "logprobs_sketch" / "logprobs.json")
    assert lp["counts"]["sampled"] >= 8 and lp["counts"]["tokens"] == 16
    # the same probes given as a file are accepted; advise on the sketch: the same backtests
    assert main(["analyze", "logprobs", str(r / "sketch"), "--probes", probes, "-o", str(tmp_path / "lp2")]) == 0
    a, b = advise(str(r), probes=probes), advise(str(r / "sketch"), probes=probes)
    ja, jb = a.to_json(), b.to_json()
    ja["config"].pop("paths"), jb["config"].pop("paths")
    assert ja == jb and "logprobs" in jb["spaces"]


def test_sketch_refusals_name_the_sketch(run, tmp_path, capsys):
    r = run / "run"
    sk = tmp_path / "sk"
    assert main(["sketch", str(r), "-o", str(sk)]) == 0  # weights only
    rc, err = _rc(capsys, ["analyze", "weights", str(sk), "--all", "-o", str(tmp_path / "w")])
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {sk}: a trajectory sketch holds a sample")
    rc, err = _rc(capsys, ["analyze", "activations", str(sk), "--task", "arithmetic", "-o", str(tmp_path / "a")])
    assert rc == 2 and err == [f"error: {sk} is a trajectory sketch (a weight sample and log-probs); analyze "
                               "activations needs the checkpoints"]  # fmt: skip
    rc, err = _rc(capsys, ["analyze", "logprobs", str(sk), "-o", str(tmp_path / "l")])
    assert rc == 2 and err == [f"error: {sk}: a trajectory sketch holds the log-probs of its own probes; it was "
                               "written without probes"]  # fmt: skip
    rc, err = _rc(capsys, ["analyze", "logprobs", str(r), "-o", str(tmp_path / "l")])  # a run needs probes
    assert rc == 2 and err == ["error: analyze logprobs needs --task or --probes (or a trajectory sketch as RUN)"]
    rc, err = _rc(capsys, ["analyze", "weights", str(sk), "--fraction", "0.5", "-o", str(tmp_path / "w")])
    assert (
        rc == 2 and err[-1].startswith(f"error: {sk}: tensor ") and "fraction 0.001, min samples 50, seed 42" in err[-1]
    )
    # extending it with other settings or probes is refused; nothing was added
    for extra, what in ((["--seed", "7"], "seed 42, not 7"), (["--probes", str(run / "probes.jsonl")], "no log-probs")):
        rc, err = _rc(capsys, ["sketch", str(r), "-o", str(sk), *extra])
        assert rc == 2 and len(err) == 1 and what in err[0], err
    assert Sketch(sk).steps == STEPS + [40]


def test_disagreeing_checkpoints_are_refused_naming_the_file(run, tmp_path, capsys):
    r = run / "run"
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["sketch", str(r), "-o", str(a)]) == 0
    assert main(["sketch", str(r), "-o", str(b), "--seed", "7"]) == 0
    shutil.copy(b / "step_000010.safetensors", a / "step_000010.safetensors")  # other indices, same step
    bad = a / "step_000010.safetensors"
    rc, err = _rc(capsys, ["analyze", "weights", str(a), "-o", str(tmp_path / "w")])
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}: its sampling (fraction 0.001, min samples "
                                                            "50, seed 7) differs from the sketch's")  # fmt: skip
    # a step file with a tensor missing, its fingerprint intact
    ok = tmp_path / "ok"
    assert main(["sketch", str(r), "-o", str(ok)]) == 0
    f = ok / "step_000020.safetensors"
    from safetensors import safe_open

    with safe_open(f, "pt") as h:
        meta, tensors = h.metadata(), {k: h.get_tensor(k) for k in h.keys()}
    gone = sorted(tensors)[0]
    tensors.pop(gone)
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(
        RlvrLinearError, match=re.escape(f"{f}: its tensors differ from the sketch's; missing ['{gone}']")
    ):
        Sketch(ok)
    f.unlink()  # a checkpoint listed but gone
    with pytest.raises(RlvrLinearError, match=re.escape(f"{f}: missing (step 20 is listed in {ok / 'sketch.json'})")):
        open_run(ok)
    meta = _json(b / "sketch.json")
    del meta["sampling"]
    (b / "sketch.json").write_text(json.dumps(meta))
    with pytest.raises(RlvrLinearError, match=re.escape(f"{b / 'sketch.json'}: malformed sketch manifest (KeyError")):
        Sketch(b)
    (ok / "indices.safetensors").write_bytes((b / "indices.safetensors").read_bytes())
    with pytest.raises(RlvrLinearError, match=re.escape(f"{ok / 'indices.safetensors'}: missing, or not the indices")):
        Sketch(ok)


def test_incremental_rerun_reads_only_new_checkpoints_of_a_trl_tree(run, tmp_path, monkeypatch, capsys):
    """TRL's checkpoint-N folders; the old ones deleted (save_total_limit) before the re-run."""
    trl = tmp_path / "trl"
    for s in STEPS[:3]:
        shutil.copytree(run / "run" / f"step_{s:06d}", trl / f"checkpoint-{s}")
    probes = str(run / "probes.jsonl")
    assert main(["sketch", str(trl), "-o", str(tmp_path / "sk"), "--probes", probes]) == 0
    shutil.rmtree(trl / "checkpoint-0")
    shutil.rmtree(trl / "checkpoint-10")
    shutil.copytree(run / "run" / "step_000030", trl / "checkpoint-30")
    opened, loaded = [], []
    orig_init = TensorReader.__init__

    def spy_init(self, path, *a, **k):
        opened.append(Path(path).name)
        orig_init(self, path, *a, **k)

    import rlvr_linear.linearity.sketch_writer as writer_mod

    orig_load, orig_get, got = writer_mod.load_for_scoring, TensorReader.get, []
    monkeypatch.setattr(TensorReader, "__init__", spy_init)
    monkeypatch.setattr(TensorReader, "get", lambda self, name: got.append(name) or orig_get(self, name))
    monkeypatch.setattr(writer_mod, "load_for_scoring", lambda p, *a: loaded.append(Path(p).name) or orig_load(p, *a))
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "sk").glob("step_*.safetensors")}
    assert main(["sketch", str(trl), "-o", str(tmp_path / "sk")]) == 0  # (keeps its probes)
    assert "sketched 1 new checkpoint(s) (weights and log-probs), 3 already there: 4 in" in capsys.readouterr().out
    assert set(opened) == {"checkpoint-30"} and loaded == ["checkpoint-30"]  # its header, and the model scored
    assert got == []  # the weight sample came from the loaded model: the weights were read once
    assert {f: (tmp_path / "sk" / f).stat().st_mtime_ns for f in before} == before
    monkeypatch.undo()
    # the sketch of checkpoints that no longer exist together still gives the numbers of the whole run
    ours = tmp_path / "ours"
    for s in STEPS:
        shutil.copytree(run / "run" / f"step_{s:06d}", ours / f"step_{s:06d}")
    for src in (ours, tmp_path / "sk"):
        assert main(["analyze", "weights", str(src), "-o", str(tmp_path / f"w_{src.name}")]) == 0
        assert main(["analyze", "logprobs", str(src), "--probes", probes, "-o", str(tmp_path / f"l_{src.name}")]) == 0
    _same_analysis(tmp_path / "w_ours", tmp_path / "w_sk", "weights")
    _same_analysis(tmp_path / "l_ours", tmp_path / "l_sk", "logprobs")


def _step_files_equal(a: Path, b: Path, steps) -> None:
    for s in steps:
        x, y = load_file(a / f"step_{s:06d}.safetensors"), load_file(b / f"step_{s:06d}.safetensors")
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), (s, k)


def test_verl_trees_hf_and_native_shards(run, tmp_path):
    ours, probes = run / "run", str(run / "probes.jsonl")
    hf, native = tmp_path / "verl-hf", tmp_path / "verl-native"
    for s in STEPS:
        src = ours / f"step_{s:06d}"
        shutil.copytree(src, hf / f"global_step_{s}" / "actor" / "huggingface")
        actor = native / f"global_step_{s}" / "actor"
        (actor / "huggingface").mkdir(parents=True)
        for f in src.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, actor / "huggingface" / f.name)
        sd = load_file(src / "model.safetensors")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied: model.state_dict() has both names
        torch.save(sd, actor / "model_world_size_1_rank_0.pt")  # one rank: plain tensors
    ref = tmp_path / "sk_ours"
    assert main(["sketch", *(f"{s}={ours / f'step_{s:06d}'}" for s in STEPS), "-o", str(ref), "--probes", probes]) == 0
    for src, extra in ((hf, []), (native, ["--allow-pickle"])):
        assert main(["sketch", str(src), "-o", str(tmp_path / f"sk_{src.name}"), "--probes", probes, *extra]) == 0
        _step_files_equal(ref, tmp_path / f"sk_{src.name}", STEPS)
        assert Sketch(tmp_path / f"sk_{src.name}").probes == PROBES


def test_hub_source_is_fetched_once(run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from rlvr_linear.io.hub import HubSource

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for s in STEPS:
        _add_revision(cache, "org/run", run / "run" / f"step_{s:06d}", f"step_{s}")
    fetched = []
    orig = HubSource.fetch
    monkeypatch.setattr(HubSource, "fetch", lambda self, *a, **k: fetched.append(str(self)) or orig(self, *a, **k))
    rc, err = _rc(capsys, ["sketch", "hf://org/run"])
    assert rc == 2 and err == ["error: give the sketch folder with -o SKETCH (RUN is not one local run directory)"]
    assert main(["sketch", "hf://org/run", "-o", str(tmp_path / "sk")]) == 0
    assert fetched == [f"hf://org/run@step_{s}" for s in STEPS]
    sk = _json(tmp_path / "sk" / "sketch.json")
    assert [c["source"] for c in sk["checkpoints"]] == fetched
    fetched.clear()
    assert main(["sketch", "hf://org/run", "-o", str(tmp_path / "sk")]) == 0
    assert fetched == []  # nothing new: nothing fetched
    ours = tmp_path / "ours"
    for s in STEPS:
        shutil.copytree(run / "run" / f"step_{s:06d}", ours / f"step_{s:06d}")
    for src in (ours, tmp_path / "sk"):
        assert main(["analyze", "weights", str(src), "-o", str(tmp_path / f"w_{src.name}")]) == 0
    _same_analysis(tmp_path / "w_ours", tmp_path / "w_sk", "weights")


def _add_revision(cache: Path, repo_id: str, folder: Path, ref: str) -> None:
    """One commit of ``repo_id`` laid out as huggingface_hub's cache does (blobs, snapshot links, a ref)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(ref.encode()).hexdigest()
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / f.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)


@pytest.mark.parametrize("dtype, itemsize", [(None, 4), (torch.bfloat16, 2)])
def test_bytes_per_checkpoint(tmp_path, dtype, itemsize):
    run = make_trajectory(tmp_path / "run", [0, 1], lambda n, w, s, i: w + 1e-2 * s, dtype=dtype)
    assert main(["sketch", str(run)]) == 0
    sk = Sketch(run / "sketch")
    numels = [t.numel for t in sk.tensors]
    ks = [paper_sample_size(n, PAPER_FRACTION, PAPER_MIN_SAMPLES) for n in numels]
    assert [t.samples for t in sk.tensors] == ks and all(t.dtype == (dtype or torch.float32) for t in sk.tensors)
    f = sk.path / "step_000001.safetensors"
    header = 8 + int.from_bytes(f.read_bytes()[:8], "little")
    assert f.stat().st_size - header == sum(ks) * itemsize == sketch_bytes(numels, itemsize, 0.001, 50)
    assert all(v.dtype == (dtype or torch.float32) for v in load_file(f).values())


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_with_probes_the_weights_are_read_once_and_sampled_from_the_scored_model(tmp_path, dtype, monkeypatch):
    """Scoring probes loads each checkpoint as a model (fp32); the weight sample is taken from it, cast back to the
    stored dtype: bit for bit the file's values (bf16 too), and no tensor is read from the file a second time."""
    from rlvr_linear.io.checkpoints import TensorReader
    from rlvr_linear.linearity import Probe, write_probes

    run = make_trajectory(tmp_path / "run", [0, 1, 2], lambda n, w, s, i: w + 1e-2 * s, dtype=dtype)
    probes = tmp_path / "p.jsonl"
    write_probes(probes, [Probe("1+2=", "3"), Probe("1+2=", "4 5"), Probe("7+1=", "8")])
    orig_get, got = TensorReader.get, []
    monkeypatch.setattr(TensorReader, "get", lambda self, name: got.append(name) or orig_get(self, name))
    assert main(["sketch", str(run), "--probes", str(probes)]) == 0
    assert got == []
    monkeypatch.undo()
    sk = Sketch(run / "sketch")
    for s in (0, 1, 2):
        vals = load_file(sk.path / f"step_{s:06d}.safetensors")
        with TensorReader(run / f"step_{s:06d}") as reader:
            for t in sk.tensors:
                want = reader.get(t.name).reshape(-1)[torch.from_numpy(sk.indices(t.name))]
                assert want.dtype == (dtype or torch.float32) and torch.equal(vals[t.name], want), (s, t.name)


def test_smollm2_135m_sketch_fits_the_budget():
    """SmolLM2-135M's shapes (its config: 30 layers, hidden 576, MLP 1536, 9 / 3 heads of 64, vocab 49152, tied)."""
    h, m, kv, vocab, layers = 576, 1536, 3 * 64, 49152, 30
    per_layer = [h * h, kv * h, kv * h, h * h, m * h, m * h, h * m, h, h]
    numels = [vocab * h] + per_layer * layers + [h]
    assert sum(numels) == 134_515_008  # the model's 134.5M parameters
    for itemsize in (2, 4):  # bf16, fp32
        b = sketch_bytes(numels, itemsize, PAPER_FRACTION, PAPER_MIN_SAMPLES)
        # per parameter: fraction x itemsize, plus at most min_samples values for each small tensor
        assert (
            PAPER_FRACTION * sum(numels) * itemsize
            <= b
            <= itemsize * (PAPER_FRACTION * sum(numels) + PAPER_MIN_SAMPLES * len(numels))
        )
        assert b < 10e6 / 15  # 15 checkpoints in under 10 MB (the budget: 10 MB per checkpoint)
    assert sketch_bytes(numels, 2, 0.01, 50) < 3e6  # --fraction 0.01: still small


def _trl_run(pico: Path, out: Path, callbacks) -> None:
    """A few GRPO steps of TRL on the pico model, saving checkpoint-2 and checkpoint-4 (bf16 autocast: TRL's
    default mixed precision)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from rlvr_linear.io.tokenizer import load_tokenizer

    rows = [{"prompt": f"{a}+{a + 1}="} for a in range(8)]

    def reward(completions, **kw):
        return [float(any(c.isdigit() for c in x)) for x in completions]

    args = GRPOConfig(output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      steps_per_generation=1, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                      max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1, report_to="none",
                      use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0,
                      save_only_model=True)  # fmt: skip
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(pico)),
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(pico),
        callbacks=callbacks,
    )
    trainer.train()


def test_callback_in_a_trl_run_equals_the_sketch_of_its_checkpoints(tmp_path):
    from rlvr_linear.training.sketch_callback import SketchCallback

    pico = make_pico_dir(tmp_path / "pico")
    write_probes(tmp_path / "probes.jsonl", PROBES)
    cb = SketchCallback(tmp_path / "cb", probes=tmp_path / "probes.jsonl")
    _trl_run(pico, tmp_path / "trl", [cb])
    live = Sketch(tmp_path / "cb")
    assert live.steps == [0, 2, 4] and cb.seconds > 0
    assert [c["source"] for c in live.checkpoints] == ["live model"] + [
        f"{tmp_path / 'trl'}/checkpoint-{s}" for s in (2, 4)
    ]
    assert (
        main(["sketch", str(tmp_path / "trl"), "-o", str(tmp_path / "cmd"), "--probes", str(tmp_path / "probes.jsonl")])
        == 0
    )
    cmd = Sketch(tmp_path / "cmd")
    assert cmd.steps == [2, 4]  # (TRL saves no checkpoint-0)
    assert live.meta["tensors"] == cmd.meta["tensors"] and live.meta["model"] == cmd.meta["model"]
    assert live.meta["indices_sha256"] == cmd.meta["indices_sha256"] and live.fingerprint() == cmd.fingerprint()
    _step_files_equal(live.path, cmd.path, [2, 4])  # the weights and the log-probs, bit for bit
    # step 0: the model the run started from
    assert main(["sketch", f"0={pico}", "-o", str(tmp_path / "base"), "--probes", str(tmp_path / "probes.jsonl")]) == 0
    _step_files_equal(live.path, tmp_path / "base", [0])


def test_train_sketch_equals_the_sketch_command(tmp_path, pico_dir, monkeypatch, capsys):
    from rlvr_linear.evaluation.tasks import TASKS, ArithmeticTask
    from rlvr_linear.training.grpo import TrainConfig, train

    class HasDigitTask(ArithmeticTask):
        def score(self, completion, problem):
            return float(any(ch.isdigit() for ch in completion))

    monkeypatch.setitem(TASKS, "has-digit", HasDigitTask)
    task = "has-digit:digits=2"
    cfg = TrainConfig(model=str(pico_dir), task=task, steps=4, save_every=2, prompts_per_step=2, samples_per_prompt=4,
                      max_new_tokens=8, eval_problems=8, learning_rate=1e-2, threads=1, sketch=True)  # fmt: skip
    run = tmp_path / "run"
    manifest = train(cfg, run, progress=False)
    assert list(manifest["sketch_seconds"]) == ["0", "2", "4"]  # the time of each record
    live = Sketch(run / "sketch")
    assert live.steps == [0, 2, 4] and live.has_probes and live.meta["probes"]["origin"]["task"] == task
    capsys.readouterr()
    assert len(live.probes) <= TRAIN_PROBE_PROMPTS * 4 and all(len(e[1]) <= 8 for e in live.encoded())  # reply cap
    same = ["--task", task, "--n-prompts", str(TRAIN_PROBE_PROMPTS), "--max-new-tokens", "8"]  # the in-run settings
    assert main(["sketch", str(run), *same]) == 0  # kept, nothing to add
    assert "sketched 0 new checkpoint(s) (weights and log-probs), 3 already there" in capsys.readouterr().out
    assert main(["sketch", str(run), "-o", str(tmp_path / "cmd"), *same]) == 0
    cmd = Sketch(tmp_path / "cmd")
    assert cmd.probes == live.probes and cmd.meta["probes"]["origin"] == live.meta["probes"]["origin"]
    _step_files_equal(live.path, cmd.path, [0, 2, 4])
    rc, err = _rc(capsys, ["sketch", str(run), "--task", task, "--k", "2"])
    assert rc == 2 and "its probes were made by" in err[-1]
