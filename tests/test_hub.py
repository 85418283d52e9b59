"""Hub sources (hf://ORG/REPO, hf://ORG/REPO@REV), offline, against a Hub cache this file lays out itself."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file

from rlvr_linear.cli import main
from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import TensorReader, discover, find_model_dir, step_of_path
from rlvr_linear.io.hub import HubSource, is_hub_source, list_checkpoints, step_of_name
from rlvr_linear.io.loading import load_model
from rlvr_linear.linearity import analyze_weights
from rlvr_linear.models.testing import make_trajectory

STEPS = [0, 10, 20, 30]


def _noisy(n, w, s, i):
    g = torch.Generator().manual_seed(1000 + i)
    return w + 1e-3 * s + 1e-3 * torch.randn(w.shape, generator=g)


def add_revision(cache: Path, repo_id: str, files: dict[str, Path], refs: list[str]) -> str:
    """Lay out one commit of ``repo_id`` as huggingface_hub does: blobs/<sha256>, snapshots/<commit>/<file>
    (relative symlinks to the blobs) and refs/<name> holding the commit hash. Returns the commit hash."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(json.dumps(sorted((k, str(v)) for k, v in files.items())).encode()).hexdigest()
    snap = repo / "snapshots" / commit
    for rel, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*([".."] * (len(Path(rel).parts) + 1)), "blobs", blob.name))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


def _files(d: Path, prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{f.name}": f for f in sorted(d.iterdir()) if f.is_file()}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local run, and the same run in a Hub cache: as step_N branches of org/run, as step folders of
    org/folders, and as Pythia-style stepN tags of org/pythia. Offline."""
    run = make_trajectory(tmp_path / "run", STEPS, _noisy)
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for s in STEPS:
        add_revision(cache, "org/run", _files(run / f"step_{s:06d}"), [f"step_{s}"])
        add_revision(cache, "org/pythia", _files(run / f"step_{s:06d}"), [f"step{s}"])
    add_revision(cache, "org/run", _files(run / "step_000030") | {"optimizer.pt": run / "manifest.json"}, ["main"])
    folders = {}
    for s in STEPS:
        folders |= _files(run / f"step_{s:06d}", f"step_{s}/")
    add_revision(cache, "org/folders", folders | {"README.md": run / "manifest.json"}, ["main"])
    return run, cache


def test_parse_and_step_names():
    s = HubSource.parse("hf://org/repo@refs%2Fpr%2F1/global_step_5/actor")
    assert (s.repo_id, s.revision, s.subfolder) == ("org/repo", "refs/pr/1", "global_step_5/actor")
    assert str(s) == "hf://org/repo@refs%2Fpr%2F1/global_step_5/actor"
    assert HubSource.parse("hf:/org/repo") == HubSource("org/repo")  # what pathlib makes of hf://
    assert str(HubSource.parse("hf://org/repo@step_10")) == "hf://org/repo@step_10"
    assert is_hub_source("hf://a/b") and not is_hub_source("runs/a")
    named = ("hf://o/r@step_7", "hf://o/r@v1/global_step_9/actor/huggingface", "hf://o/r@step100", "hf://o/r")
    assert [step_of_path(p) for p in named] == [7, 9, 100, None]
    with pytest.raises(RlvrLinearError, match="not a Hub source; expected hf://ORG/REPO"):
        HubSource.parse("hf://just-a-name")
    assert [step_of_name(n) for n in ("step_5", "step143000", "step-7", "global_step_9", "checkpoint-3", "main")] == [
        5, 143000, 7, 9, 3, None,
    ]  # fmt: skip


def test_only_weights_config_and_tokenizer_are_fetched():
    listing = [
        "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "config.json",
        "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "rlvr_linear_tokenizer.json", "chat_template.jinja", "optimizer.pt", "pytorch_model.bin",
        "training_args.bin", "README.md", "step_1/model.safetensors", "step_1/config.json",
    ]  # fmt: skip
    allow, ignore = HubSource("o/r").patterns()
    got = list(filter_repo_objects(listing, allow_patterns=allow, ignore_patterns=ignore))
    assert got == listing[:10]
    allow, ignore = HubSource("o/r", subfolder="step_1").patterns()
    assert list(filter_repo_objects(listing, allow_patterns=allow, ignore_patterns=ignore)) == listing[-2:]


def test_discover_revisions_streams_one_checkpoint_at_a_time(hub):
    run, cache = hub
    traj = discover("hf://org/run")
    assert traj.steps == STEPS
    assert [c.path for c in traj.checkpoints] == [f"hf://org/run@step_{s}" for s in STEPS]
    assert all(c.remote is not None for c in traj.checkpoints)
    p1 = traj.paths[1]  # fetches step 10 only
    assert [c.remote is None for c in traj.checkpoints] == [False, True, False, False]
    assert p1.parent.parent.name == "models--org--run" and p1.parent.name == "snapshots"
    assert load_file(p1 / "model.safetensors").keys() == load_file(run / "step_000010" / "model.safetensors").keys()
    seen = []
    for i, p in enumerate(traj.paths):  # iterating fetches lazily
        seen.append(sum(c.remote is None for c in traj.checkpoints))
        assert p == traj.checkpoints[i].path
    assert seen == [2, 2, 3, 4]
    assert discover("hf://org/pythia").steps == STEPS
    assert traj.paths == list(traj.paths) and traj.paths != [p1]


def test_subfolders_and_single_revisions(hub):
    run, _ = hub
    traj = discover("hf://org/folders")
    assert traj.steps == STEPS and [c.path for c in traj.checkpoints][1] == "hf://org/folders/step_10"
    assert traj.paths[2].name == "step_20"
    ref = TensorReader(run / "step_000020")
    with TensorReader("hf://org/folders/step_20") as r:
        assert r.keys() == ref.keys()
        assert all(torch.equal(r.get(k), ref.get(k)) for k in ref.keys())
    d = find_model_dir("hf://org/run@step_20")
    assert d.name != "step_20" and (d / "model.safetensors").read_bytes() == (
        run / "step_000020" / "model.safetensors"
    ).read_bytes()
    main_dir = find_model_dir("hf://org/run")  # main: step 30's files and an optimizer.pt
    assert (main_dir / "model.safetensors").read_bytes() == (run / "step_000030" / "model.safetensors").read_bytes()
    model, tok = load_model("hf://org/run@step_10")
    assert tok.decode(tok("12+3")["input_ids"]) == "12+3" and model.config.num_hidden_layers == 2
    explicit = discover(["0=hf://org/run@step_0", "20=hf://org/folders/step_20", f"30={run / 'step_000030'}"])
    assert explicit.steps == [0, 20, 30] and explicit.paths[2] == run / "step_000030"


def test_offline_errors_name_the_source(hub):
    with pytest.raises(RlvrLinearError, match="hf://org/run@step_99: cannot fetch from the Hub"):
        find_model_dir("hf://org/run@step_99")
    with pytest.raises(RlvrLinearError, match="hf://org/missing: not in the Hugging Face cache and HF_HUB_OFFLINE"):
        discover("hf://org/missing")
    with pytest.raises(RlvrLinearError, match="hf://org/run/nowhere: no folder 'nowhere'"):
        find_model_dir("hf://org/run/nowhere")
    with pytest.raises(RlvrLinearError, match="hf://org/run@step_10: no checkpoints found"):
        list_checkpoints("hf://org/run@step_10")


def _strip_paths(obj):
    if isinstance(obj, dict):
        return {k: _strip_paths(v) for k, v in obj.items() if k not in ("path", "paths", "checkpoints", "source")}
    if isinstance(obj, list):
        return [_strip_paths(v) for v in obj]
    return obj


def test_analyze_weights_and_extrapolate_on_the_hub_equal_local(hub, tmp_path):
    run, _ = hub
    local, remote = analyze_weights(discover(run)), analyze_weights(discover("hf://org/run"))
    assert remote.summary() == local.summary() and remote.steps == STEPS
    for src, name in ((str(run), "local"), ("hf://org/run", "hub"), ("hf://org/folders", "folders")):
        assert main(["analyze", "weights", src, "-o", str(tmp_path / f"w-{name}")]) == 0
        x_args = ["extrapolate", "weights", "--run", src, "--target-step", "50"]
        assert main([*x_args, "-o", str(tmp_path / f"x-{name}")]) == 0
    ref_w = json.loads((tmp_path / "w-local" / "weights.json").read_text())
    ref_x = load_file(tmp_path / "x-local" / "model.safetensors")
    for name in ("hub", "folders"):
        w = json.loads((tmp_path / f"w-{name}" / "weights.json").read_text())
        assert _strip_paths(w) == _strip_paths(ref_w) and w["steps"] == STEPS
        x = load_file(tmp_path / f"x-{name}" / "model.safetensors")
        assert x.keys() == ref_x.keys() and all(torch.equal(x[k], ref_x[k]) for k in x)
        assert (tmp_path / f"x-{name}" / "rlvr_linear_tokenizer.json").exists()
    # two-point extrapolation from two revisions, the steps read from the revision names: target 30 is alpha 2
    args = ["extrapolate", "weights", "--base", "hf://org/run@step_10", "--second", "hf://org/run@step_20"]
    assert main([*args, "--target-step", "30", "-o", str(tmp_path / "tp")]) == 0
    assert json.loads((tmp_path / "tp" / "extrapolation.json").read_text())["alpha"] == 2
    a, b = (load_file(run / f"step_0000{s}" / "model.safetensors") for s in (10, 20))
    tp = load_file(tmp_path / "tp" / "model.safetensors")
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(tp[k], a[k] + 2 * (b[k] - a[k]), atol=1e-6)


def test_cli_reports_a_missing_hub_repo(hub, tmp_path, capsys):
    shutil.rmtree(hub[1] / "models--org--pythia")
    assert main(["analyze", "weights", "hf://org/pythia", "-o", str(tmp_path / "w")]) == 2
    assert "error: hf://org/pythia: not in the Hugging Face cache" in capsys.readouterr().err


def test_eval_takes_hub_trajectories_and_checkpoints(hub, tmp_path, capsys):
    run, _ = hub
    common = ["--n-problems", "3", "-k", "0", "--max-new-tokens", "2"]
    assert main(["eval", "hf://org/pythia", "hf://org/run@step_10", *common, "-o", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert [ln.split(":  ")[0] for ln in out.splitlines() if "greedy" in ln] == [
        *(f"hf://org/pythia@step{s}" for s in STEPS), "hf://org/run@step_10",
    ]  # fmt: skip
    assert main(["eval", str(run / "step_000010"), *common, "-o", str(tmp_path / "ev2")]) == 0
    assert (tmp_path / "ev2" / "step_000010.json").read_text() == (
        tmp_path / "ev" / "hf:____org__run@step_10.json"
    ).read_text()
    a, b = np.load(tmp_path / "ev2" / "step_000010.npz"), np.load(tmp_path / "ev" / "hf:____org__run@step_10.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_online_listing_uses_the_hub_api_and_falls_back_to_the_cache(hub, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import GitRefInfo, GitRefs, RepoFile, RepoFolder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def refs(self, repo_id, **kw):
        calls.append(("refs", repo_id))
        info = [GitRefInfo(name=n, ref=f"refs/heads/{n}", target_commit="0" * 40) for n in ("main", "step_5", "step2")]
        return GitRefs(branches=info, converts=[], tags=[GitRefInfo(name="global_step_9", ref="", target_commit="")])

    def tree(self, repo_id, path_in_repo=None, revision=None, **kw):
        calls.append(("tree", repo_id, path_in_repo, revision))
        return [RepoFolder(path="ckpt/checkpoint-40", oid="x"), RepoFile(path="ckpt/README.md", size=1, oid="y")]

    monkeypatch.setattr(HfApi, "list_repo_refs", refs)
    monkeypatch.setattr(HfApi, "list_repo_tree", tree)
    got = [(s, str(src)) for s, src in list_checkpoints("hf://org/anything")]
    assert got == [(2, "hf://org/anything@step2"), (5, "hf://org/anything@step_5"), (9, "hf://org/anything@global_step_9")]
    got = [(s, str(src)) for s, src in list_checkpoints("hf://org/anything@v1/ckpt")]
    assert got == [(40, "hf://org/anything@v1/ckpt/checkpoint-40")]
    assert calls[-1] == ("tree", "org/anything", "ckpt", "v1")

    def unreachable(self, repo_id, **kw):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(HfApi, "list_repo_refs", unreachable)
    assert [s for s, _ in list_checkpoints("hf://org/run")] == STEPS  # the cached refs
    with pytest.raises(RlvrLinearError, match="hf://org/nowhere: cannot list the repository's revisions"):
        list_checkpoints("hf://org/nowhere")
