"""Inputs cannot run code or reach outside what was given.

* ``reground --cmd`` runs the trainer without a shell: paths reach it as single arguments, exactly as they are;
* pickled weights load only with ``--allow-pickle``, in every command, and then only tensors (``weights_only``);
* a name read from a checkpoint (shard index, manifest) or a ``hf://`` source never leads out of its folder;
* property tests: the shard-index resolver and the safetensors header reader, on arbitrary input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_checks import cli_out_err as _cli
from cli_checks import one_error_line as _one_error_line
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import (
    SAFE_INDEX,
    TensorReader,
    check_safetensors,
    discover,
    find_model_dir,
    read_safetensors_header,
    read_weight_map,
)
from rlvr_linear.io.hub import HubSource
from rlvr_linear.io.loading import load_model
from rlvr_linear.io.verl_shards import shard_files
from rlvr_linear.models.testing import make_pico_dir
from rlvr_linear.training.reground_driver import render_command, split_command

# --------------------------------------------------------------------------------------------------
# reground --cmd: no shell

TRAINER = r"""
import json, os, shutil, sys
from pathlib import Path
with open(os.environ["ARGV_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
model, steps, out = sys.argv[-3:]
shutil.copytree(model, Path(out) / f"checkpoint-{steps}")
"""

#: a model folder name with everything a shell would act on (and a placeholder, which must stay as it is)
HOSTILE = "m $(touch INJECTED) `touch INJECTED2` \"dq\" 'sq' {out} ${HOME} end"


def test_reground_paths_reach_the_trainer_unchanged_and_nothing_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a shell would have created INJECTED
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("ARGV_LOG", str(log))
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    start = make_pico_dir(tmp_path / HOSTILE)
    py = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    templates = [
        f"{py} x=${{oc.env:HOME}} {{model}} {{steps}} {{out}}",  # as documented; ${...} is not ours, and no shell
        f'{py} x=${{oc.env:HOME}} --model "{{model}}" \'{{steps}}\' "{{out}}"',  # the usual habit: quoted
    ]
    for i, cmd in enumerate(templates):
        work = tmp_path / f"work {i} $(touch INJECTED3)"
        rc, out, err = _cli(capsys, "reground", "--model", start, "--m", 2, "--n", 2, "--cycles", 1, "-w", work,
                            "--cmd", cmd)  # fmt: skip
        assert rc == 0, err
        argv = json.loads(log.read_text().splitlines()[i])
        want = [str(start.resolve()), "2", str(work.resolve() / "cycle_01" / "train")]
        assert argv == ["x=${oc.env:HOME}", *([] if i == 0 else ["--model"]), *want]
        assert (work / "cycle_01" / "extrapolated" / "model.safetensors").exists()
    assert not [p for p in tmp_path.rglob("INJECTED*")]


def test_reground_refuses_shell_syntax_and_missing_programs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = make_pico_dir(tmp_path / "start")
    py = shlex.quote(sys.executable)
    for cmd, what in (
        (f"{py} t.py {{model}} {{steps}} {{out}} > log.txt", "'>'"),
        (f"{py} t.py {{model}} {{steps}} {{out}}; touch INJECTED", "';'"),
        (f"{py} t.py {{model}} {{steps}} {{out}} && touch INJECTED", "'&&'"),
        (f"{py} t.py --x=$(touch INJECTED) {{model}} {{steps}} {{out}}", "'('"),
    ):
        rc, _, err = _cli(capsys, "reground", "--model", start, "--m", 2, "--n", 2, "--cycles", 1, "-w",
                          tmp_path / "w", "--cmd", cmd)  # fmt: skip
        line = _one_error_line(err)
        assert rc == 2 and "runs without a shell" in line and what in line and "bash -c" in line, line
    rc, _, err = _cli(capsys, "reground", "--model", start, "--m", 2, "--n", 2, "--cycles", 1, "-w", tmp_path / "w",
                      "--cmd", "no-such-trainer-here {model} {steps} {out}")  # fmt: skip
    line = _one_error_line(err)
    assert rc == 2 and "'no-such-trainer-here' is not an executable program" in line, line
    assert not (tmp_path / "INJECTED").exists() and not (tmp_path / "log.txt").exists()
    # quoting groups words only; a backslash-newline continues the line; ${VAR} is not substituted nor expanded
    assert split_command("a 'b c' \"d;e\" \\\n f ${oc.env:X}") == ["a", "b c", "d;e", "f", "${oc.env:X}"]
    argv = render_command("t {model}/x --o={out} {cycle}{steps}", model="/a {out}", steps=3, out="/o", cycle=2)
    assert argv == ["t", "/a {out}/x", "--o=/o", "23"]


# --------------------------------------------------------------------------------------------------
# Pickled weights: one guard, everywhere


class _Evil:
    """Pickles as ``os.system(cmd)``: what a malicious ``pytorch_model.bin`` holds."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _bin_model(src: Path, dst: Path, payload: dict | None = None) -> Path:
    """A copy of model folder ``src`` with its weights as ``pytorch_model.bin`` only (or ``payload`` pickled)."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    torch.save(payload if payload is not None else sd, dst / "pytorch_model.bin")
    return dst


def _commands(a: Path, b: Path, c: Path, out: Path) -> list[list]:
    return [
        ["eval", a, "--n-problems", 2, "-k", 0, "--max-new-tokens", 2],
        ["generate", a, "--prompt", "1+1=", "--greedy", "--max-new-tokens", 3],
        ["analyze", "logprobs", f"0={a}", f"10={b}", f"20={c}", "--task", "arithmetic", "-o", out / "lp"],
        ["analyze", "weights", f"0={a}", f"10={b}", f"20={c}", "-o", out / "w"],
        ["extrapolate", "weights", "--base", a, "--second", b, "--alpha", 2, "-o", out / "x"],
    ]


def test_pickled_weights_are_refused_by_every_command_without_the_flag(tmp_path, capsys):
    safe = make_pico_dir(tmp_path / "safe")
    a, b, c = (_bin_model(safe, tmp_path / f"bin{i}") for i in range(3))
    for cmd in _commands(a, b, c, tmp_path / "out"):
        rc, _, err = _cli(capsys, *cmd)
        line = _one_error_line(err)
        assert rc == 2 and "pickle" in line and "--allow-pickle" in line and str(a) in line, (cmd, line)
    assert not (tmp_path / "out").exists()
    # with the flag: the same model as from the safetensors, through the one restricted loader
    (m_bin, _), (m_safe, _) = load_model(a, allow_pickle=True), load_model(safe)
    for (k, v), (k2, v2) in zip(m_bin.state_dict().items(), m_safe.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    texts = []
    for d, extra in ((a, ["--allow-pickle"]), (safe, [])):
        rc, out, err = _cli(capsys, "generate", d, "--prompt", "1+1=", "--greedy", "--max-new-tokens", 4, *extra)
        assert rc == 0, err
        texts.append(out)
    assert texts[0] == texts[1] and "1+1=" in texts[0]
    with pytest.raises(RlvrLinearError, match="--allow-pickle"):  # training starts from the same loader
        from rlvr_linear.io.loading import load_causal_lm

        load_causal_lm(a)


def test_a_malicious_pickle_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    safe = make_pico_dir(tmp_path / "safe")
    evil = {"model.embed_tokens.weight": torch.zeros(2), "x": _Evil(f"touch {shlex.quote(str(marker))}")}
    a, b, c = (_bin_model(safe, tmp_path / f"evil{i}", evil) for i in range(3))
    for cmd in _commands(a, b, c, tmp_path / "out"):
        rc, _, err = _cli(capsys, *cmd, "--allow-pickle")
        line = _one_error_line(err)
        assert rc == 2 and f"{a / 'pytorch_model.bin'}: refused: it needs posix.system" in line, (cmd, line)
        assert "False" not in err and "weights_only=False" not in err, err  # never the advice to load it anyway
    assert not marker.exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Names read from checkpoints stay inside their folder


def _indexed(tmp_path: Path, name: str, entry) -> tuple[Path, str]:
    """A pico model whose weights live outside its folder and whose shard index names them with ``entry(d, f)``."""
    d = make_pico_dir(tmp_path / name)
    outside = tmp_path / f"{name}-outside.safetensors"
    (d / "model.safetensors").rename(outside)
    e = entry(d, outside)
    keys = list(load_file(outside))
    (d / SAFE_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": {k: e for k in keys}}))
    return d, e


def _link(d: Path, outside: Path) -> str:
    (d / "link.safetensors").symlink_to(outside)
    return "link.safetensors"


@pytest.mark.parametrize(
    "entry",
    [lambda d, f: f"../{f.name}", lambda d, f: str(f), _link, lambda d, f: f"./sub/../../{f.name}"],
    ids=["dotdot", "absolute", "symlink-out", "dotdot-inside"],
)
def test_a_shard_index_cannot_name_files_outside_the_checkpoint(tmp_path, capsys, entry):
    a, ea = _indexed(tmp_path, "a", entry)
    b, _ = _indexed(tmp_path, "b", entry)
    c = make_pico_dir(tmp_path / "c")
    want = f"{a / SAFE_INDEX}: refused the entry {ea!r}: "
    with pytest.raises(RlvrLinearError) as e:
        TensorReader(a)
    assert str(e.value).startswith(want) and "\n" not in str(e.value)
    for cmd in (
        ["extrapolate", "weights", "--base", a, "--second", b, "--alpha", 2, "-o", tmp_path / "x"],
        ["analyze", "weights", f"0={a}", f"10={b}", f"20={c}", "-o", tmp_path / "w"],
        ["eval", a, "--n-problems", 1, "-k", 0, "--max-new-tokens", 1],
    ):
        rc, _, err = _cli(capsys, *cmd)
        assert rc == 2 and _one_error_line(err).startswith(f"error: {want}"), (cmd, err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()


def test_manifests_config_files_and_verl_shards_cannot_lead_outside(tmp_path, capsys):
    elsewhere = make_pico_dir(tmp_path / "elsewhere")
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"checkpoints": [{"step": 0, "path": "../elsewhere"}]}))
    with pytest.raises(RlvrLinearError, match=re.escape(f"{run / 'manifest.json'}: refused the entry '../elsewhere'")):
        discover(run)
    # a config / tokenizer file that links out is not copied into an extrapolated model
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    a, b = make_pico_dir(tmp_path / "a"), make_pico_dir(tmp_path / "b", seed=1)
    for d in (a, b):
        (d / "added_tokens.json").symlink_to(secret)
    rc, _, err = _cli(capsys, "extrapolate", "weights", "--base", a, "--second", b, "--alpha", 2, "-o", tmp_path / "x")
    line = _one_error_line(err)
    assert rc == 2 and "refused the entry 'added_tokens.json': it points outside the folder" in line, line
    assert not (tmp_path / "x").exists()
    # a verl shard that links out of its folder
    actor = tmp_path / "verl" / "actor"
    actor.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, tmp_path / "shard.pt")
    (actor / "model_world_size_1_rank_0.pt").symlink_to(tmp_path / "shard.pt")
    with pytest.raises(RlvrLinearError, match="refused the entry 'model_world_size_1_rank_0.pt': it points outside"):
        shard_files(actor)
    assert elsewhere.exists()


def _add_revision(cache: Path, repo_id: str, files: dict[str, Path], ref: str) -> Path:
    """One commit of ``repo_id`` laid out as huggingface_hub does (blobs, snapshot links, a ref); its snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(ref.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    for rel, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(Path(*[".."] * (len(Path(rel).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snap


def test_hub_sources_stay_in_the_hub_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    src = make_pico_dir(tmp_path / "src")
    snap = _add_revision(cache, "org/run", {f.name: f for f in src.iterdir()}, "step_10")
    from rlvr_linear.io.writer import ShardedWriter  # a sharded revision: index and shards are links to blobs

    sharded = tmp_path / "sharded"
    shutil.copytree(src, sharded)
    (sharded / "model.safetensors").unlink()
    w = ShardedWriter(sharded, max_shard_bytes=4096)
    for k, v in load_file(src / "model.safetensors").items():
        w.add(k, v)
    assert len(w.finalize()) > 1
    _add_revision(cache, "org/run", {f.name: f for f in sharded.iterdir()}, "step_20")
    evil = make_pico_dir(tmp_path / "evil")  # where hf://org/run@step_10/../../../../evil used to land
    assert (snap / "../../../../evil").resolve() == evil
    (snap / "sub").symlink_to(evil, target_is_directory=True)  # a folder in the snapshot that links out
    with TensorReader("hf://org/run@step_10") as r, TensorReader("hf://org/run@step_20") as r20:
        assert r.keys() == r20.keys() and all(torch.equal(r.get(k), r20.get(k)) for k in r.keys())

    touched = []

    def no_access(*a, **k):
        touched.append(a)
        raise AssertionError("the Hub cache or network was touched")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_access)
    bad = {
        "hf://org/run@step_10/../../../../evil": "subfolder '../../../../evil': a '..' component",
        "hf://org/run@..%2F..%2F..%2Fevil": "revision '../../../evil': a '..' component",
        "hf://../evil": "repository id '../evil' is not ORG/REPO",
        "hf://org/r..un": "repository id 'org/r..un' is not ORG/REPO",
    }
    for source, why in bad.items():
        with pytest.raises(RlvrLinearError, match=re.escape(why)):
            find_model_dir(source)
        rc, _, err = _cli(capsys, "eval", source, "--n-problems", 1, "-k", 0, "--max-new-tokens", 1)
        assert rc == 2 and "not a Hub source" in _one_error_line(err) and why in err, err
    for fields, why in ((("org/run", "step_10", "/abs"), "an absolute path"), (("org/run", "a\x00b"), "NUL")):
        with pytest.raises(RlvrLinearError, match=why):
            HubSource(*fields)
    assert touched == []  # refused before any access to the cache or the network
    monkeypatch.undo()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RlvrLinearError, match=r"refused the entry 'sub': it points outside the folder \(a link to "):
        find_model_dir("hf://org/run@step_10/sub")


# --------------------------------------------------------------------------------------------------
# Property tests

_PARTS = ["..", ".", "", "model.safetensors", "inner.safetensors", "link_out", "sub", "x" * 300, "a\x00b", "/"]
_NAMES = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),  # lone surrogates
    st.lists(st.sampled_from(_PARTS), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(_PARTS), min_size=1, max_size=4).map(lambda p: "/" + "/".join(p)),
    st.integers(),
    st.none(),
    st.just("y" * 5000),
)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """A checkpoint folder with a real file, a subfolder, and a link to a file outside it."""
    root = tmp_path_factory.mktemp("index")
    d = root / "ckpt"
    (d / "sub").mkdir(parents=True)
    (d / "inner.safetensors").write_bytes(b"x")
    (root / "outside.safetensors").write_bytes(b"y")
    (d / "link_out").symlink_to(root / "outside.safetensors")
    return d


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=_NAMES)
@example(name="../outside.safetensors")
@example(name="sub/../../outside.safetensors")
@example(name="link_out")
@example(name="sub/../inner.safetensors")
def test_property_shard_index_names_resolve_inside_or_are_refused(index_dir, name):
    index = index_dir / SAFE_INDEX
    index.write_text(json.dumps({"weight_map": {"t": name}}))
    try:
        wm = read_weight_map(index_dir)
    except RlvrLinearError as e:
        msg = str(e)
        assert msg.startswith(f"{index}: ") and "\n" not in msg, msg
        event("refused")
        return
    event("resolved")
    real = Path(os.path.realpath(index_dir / wm["t"]))
    root = Path(os.path.realpath(index_dir))
    assert real != root and real.is_relative_to(root), (name, real)


_DTYPES = [torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool]


@st.composite
def _safetensors_bytes(draw) -> bytes:
    """Arbitrary bytes; a real file, then cut or with bytes changed or appended; or a made-up header and data."""
    kind = draw(st.sampled_from(["bytes", "mutated", "header"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "header":
        leaf = st.one_of(st.integers(-5, 50), st.text(max_size=6), st.booleans(), st.none(), st.floats())
        json_value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c))
        entry = st.fixed_dictionaries(
            {"dtype": st.sampled_from(["F32", "BF16", "U8", "BOOL", "F4", "Q9", 3]),
             "shape": st.lists(st.integers(-1, 4), max_size=3) | json_value,
             "data_offsets": st.lists(st.integers(-2, 40), min_size=0, max_size=3) | json_value}
        )  # fmt: skip
        header = draw(st.dictionaries(st.text(max_size=5), entry | json_value, max_size=3) | json_value)
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + draw(st.binary(max_size=64))
    shapes = draw(st.lists(st.lists(st.integers(0, 3), max_size=2), max_size=3))
    tensors = {f"t{i}": torch.ones(shape, dtype=_DTYPES[i % len(_DTYPES)]) for i, shape in enumerate(shapes)}
    with tempfile.TemporaryDirectory() as t:
        save_file(tensors, f"{t}/m.safetensors", metadata={"format": "pt"})
        data = bytearray(Path(f"{t}/m.safetensors").read_bytes())
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "flip", "append", "length"]))
        if op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "flip" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        else:
            data[:8] = struct.pack("<Q", draw(st.sampled_from([0, 1, 2**31, 2**63, 2**64 - 1, len(data)])))
    return bytes(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_safetensors_bytes())
@example(data=struct.pack("<Q", 100_000) + b"[" * 100_000)  # deep nesting: RecursionError in json
@example(data=struct.pack("<Q", 2**64 - 1) + b"{}")  # a length no file holds
@example(data=struct.pack("<Q", 9) + b'{"a": 1}' + b" ")  # an entry that is not an object
@example(data=struct.pack("<Q", 12) + b'{"a": NaN}  ')
def test_property_safetensors_header_is_parsed_or_refused_in_one_line(tmp_path, data):
    f = tmp_path / "model.safetensors"
    f.write_bytes(data)
    try:
        header = check_safetensors(f)
    except RlvrLinearError as e:
        msg = str(e)
        assert msg.startswith(f"{f}: ") and "\n" not in msg, msg
        event("refused")
        fd = os.open(f, os.O_RDONLY)
        try:  # the positioned reader (row reads) refuses it too, with the errors its callers handle
            with pytest.raises((ValueError, OSError)):
                read_safetensors_header(fd)
        finally:
            os.close(fd)
        return
    event("parsed")  # a correct parse: the header of the file, consistent with its size, and safetensors agrees
    n = struct.unpack("<Q", data[:8])[0]
    assert header == json.loads(data[8 : 8 + n])
    spans = sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")
    assert sum(e - b for b, e in spans) == len(data) - 8 - n
    fd = os.open(f, os.O_RDONLY)
    try:
        assert read_safetensors_header(fd) == (8 + n, header)
    finally:
        os.close(fd)
    with safe_open(str(f), framework="pt") as st_file:
        assert sorted(st_file.keys()) == sorted(k for k in header if k != "__metadata__")
        for k in st_file.keys():
            assert list(st_file.get_tensor(k).shape) == header[k]["shape"]


def test_train_starts_from_pickled_weights_only_with_the_flag(tmp_path, capsys):
    a = _bin_model(make_pico_dir(tmp_path / "safe"), tmp_path / "bin")
    args = ["train", "--model", a, "--task", "arithmetic", "--steps", 2, "--save-every", 2, "--prompts-per-step", 2,
            "--samples-per-prompt", 2, "--max-new-tokens", 4, "--eval-problems", 2, "--threads", 1]  # fmt: skip
    rc, _, err = _cli(capsys, *args, "-o", tmp_path / "refused")
    assert rc == 2 and "--allow-pickle" in _one_error_line(err) and not (tmp_path / "refused").exists()
    rc, _, err = _cli(capsys, *args, "--allow-pickle", "-o", tmp_path / "run")
    assert rc == 0, err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["allow_pickle"] is True
    assert (tmp_path / "run" / "step_000002" / "model.safetensors").exists()  # what it writes is never a pickle


def test_legacy_format_pickles_load_restricted_or_are_refused(tmp_path, capsys):
    """torch's pre-zip format cannot be memory mapped: it is read whole, with the same restricted unpickler."""
    safe = make_pico_dir(tmp_path / "safe")
    sd = load_file(safe / "model.safetensors")
    legacy = _bin_model(safe, tmp_path / "legacy")
    torch.save(sd, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert (legacy / "pytorch_model.bin").read_bytes()[:4] != b"PK\x03\x04"  # really the legacy format
    (m_bin, _), (m_safe, _) = load_model(legacy, allow_pickle=True), load_model(safe)
    for (k, v), (k2, v2) in zip(m_bin.state_dict().items(), m_safe.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    marker = tmp_path / "PWNED"
    torch.save({"x": _Evil(f"touch {marker}")}, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    rc, _, err = _cli(capsys, "eval", legacy, "--n-problems", 2, "-k", 0, "--allow-pickle")
    line = _one_error_line(err)
    assert rc == 2 and line.startswith(f"error: {legacy / 'pytorch_model.bin'}: refused: it needs posix.system")
    assert "False" not in err and not marker.exists()
