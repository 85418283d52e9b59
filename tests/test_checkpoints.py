import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io import atomic_dir, write_json
from rlvr_linear.io.checkpoints import (
    Checkpoint,
    TensorReader,
    Trajectory,
    discover,
    find_model_dir,
    step_of_path,
)
from rlvr_linear.io.writer import ShardedWriter, copy_model_files
from rlvr_linear.models.testing import make_pico_dir, make_trajectory


def _linear(n, w, s, i):
    return w + 1e-3 * s


def test_discover_our_trl_and_verl_layouts(tmp_path):
    ours = make_trajectory(tmp_path / "ours", [0, 10, 20], _linear)
    assert discover(ours).steps == [0, 10, 20]
    trl, verl = tmp_path / "trl", tmp_path / "verl"
    for s in (0, 10, 20):
        shutil.copytree(ours / f"step_{s:06d}", trl / f"checkpoint-{s}")
        shutil.copytree(ours / f"step_{s:06d}", verl / f"global_step_{s}" / "actor" / "huggingface")
    (trl / "runs").mkdir()  # unrelated folders are ignored
    assert discover(trl).steps == [0, 10, 20]
    v = discover(verl)
    assert v.steps == [0, 10, 20] and v.paths[1].name == "huggingface"
    assert step_of_path(v.paths[2]) == 20
    explicit = discover([f"20={ours / 'step_000020'}", f"0={ours / 'step_000000'}"][::-1])
    assert explicit.steps == [0, 20]


def test_trajectory_order_and_duplicates(tmp_path):
    d = make_pico_dir(tmp_path / "m")
    with pytest.raises(RlvrLinearError, match="duplicate checkpoint steps: \\[5\\]"):
        Trajectory([Checkpoint(5, d), Checkpoint(5, d)])
    with pytest.raises(RlvrLinearError, match="not in increasing order"):
        Trajectory([Checkpoint(5, d), Checkpoint(1, d)])
    with pytest.raises(RlvrLinearError, match="the same checkpoint .* given as step 0 and as step 1"):
        Trajectory([Checkpoint(0, d), Checkpoint(1, d)])
    d2 = make_pico_dir(tmp_path / "m2")
    with pytest.raises(RlvrLinearError, match="at least 3 checkpoints, found 2"):
        Trajectory([Checkpoint(0, d), Checkpoint(1, d2)]).validate(min_checkpoints=3)
    with pytest.raises(RlvrLinearError, match="expected STEP=PATH"):
        discover(["a", "b"])


def test_validate_names_the_offending_checkpoint_and_tensor(tmp_path):
    run = make_trajectory(tmp_path / "run", [0, 10, 20], _linear)
    w = run / "step_000010" / "model.safetensors"
    sd = load_file(w)
    sd["model.norm.weight"] = torch.ones(7)
    save_file(sd, str(w), metadata={"format": "pt"})
    with pytest.raises(RlvrLinearError, match="step 10 .*'model.norm.weight' has shape \\(7,\\), expected \\(16,\\)"):
        discover(run).validate()
    del sd["model.norm.weight"]
    save_file(sd, str(w), metadata={"format": "pt"})
    with pytest.raises(RlvrLinearError, match="step 10 .*missing \\['model.norm.weight'\\]"):
        discover(run).validate()


def test_architecture_mismatch(tmp_path):
    run = make_trajectory(tmp_path / "run", [0, 10, 20], _linear)
    cfg = run / "step_000020" / "config.json"
    c = json.loads(cfg.read_text())
    c["num_hidden_layers"] = 3
    cfg.write_text(json.dumps(c))
    with pytest.raises(RlvrLinearError, match="step 20 .*num_hidden_layers=3 differs from 2"):
        discover(run).validate()


def test_pickle_is_refused_without_the_flag(tmp_path):
    d = make_pico_dir(tmp_path / "m")
    sd = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(RlvrLinearError, match="--allow-pickle"):
        TensorReader(d)
    r = TensorReader(d, allow_pickle=True)
    k = next(iter(sd))
    assert torch.equal(r.get(k), sd[k]) and r.shape(k) == tuple(sd[k].shape)


def test_sharded_writer_round_trip_and_reader(tmp_path):
    tensors = {f"t{i}": torch.randn(64, 8).to(torch.bfloat16) for i in range(5)}
    w = ShardedWriter(tmp_path / "out", max_shard_bytes=2 * 64 * 8 * 2)
    for k, v in tensors.items():
        w.add(k, v)
    files = w.finalize()
    assert len(files) == 3 and (tmp_path / "out" / "model.safetensors.index.json").exists()
    r = TensorReader(tmp_path / "out")
    assert sorted(r.keys()) == sorted(tensors)
    for k, v in tensors.items():
        assert torch.equal(r.get(k), v) and r.dtype(k) == torch.bfloat16 and r.numel(k) == 512
        assert torch.equal(r.get_flat(k, torch.tensor([3, 100])), v.reshape(-1)[[3, 100]])
    one = ShardedWriter(tmp_path / "one")
    one.add("a", torch.zeros(3))
    assert one.finalize() == ["model.safetensors"]


def test_copy_model_files_and_find_model_dir(tmp_path):
    d = make_pico_dir(tmp_path / "m")
    copy_model_files(d, tmp_path / "c")
    names = {p.name for p in (tmp_path / "c").iterdir()}
    assert {"config.json", "tokenizer.json", "generation_config.json"} <= names
    assert "model.safetensors" not in names
    with pytest.raises(RlvrLinearError, match="no model weights found"):
        find_model_dir(tmp_path / "c")
    with pytest.raises(RlvrLinearError, match="no such file or directory"):
        find_model_dir(tmp_path / "nope")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("killed mid-write")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        write_json(tmp / "r.json", {"a": 1})
    assert json.loads((out / "r.json").read_text()) == {"a": 1}
    with pytest.raises(RlvrLinearError, match="already exists"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == [".rlvr-linear.json", "new"]  # the content and our marker


def test_one_json_cleaner(tmp_path):
    import math
    from pathlib import Path

    import numpy as np

    from rlvr_linear import study
    from rlvr_linear.io import jsonable

    obj = {1: (np.float32(0.5), np.int64(3), math.nan, np.float64(math.inf)), "a": np.arange(2), "p": Path("/x")}
    assert jsonable(obj) == {"1": [0.5, 3, None, None], "a": [0, 1], "p": Path("/x")}
    assert jsonable(obj, paths=True)["p"] == "/x"
    assert study.jsonable is jsonable  # the study uses the one cleaner, no copy of its own
    # write_json's hook: numpy values and paths converted, non-finite numpy floats written as JSON's NaN
    write_json(tmp_path / "r.json", {"i": np.int32(2), "f": np.float16(math.nan), "a": np.ones(2), "p": Path("/y")})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=str) == {
        "i": 2,
        "f": "NaN",
        "a": [1.0, 1.0],
        "p": "/y",
    }
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(tmp_path / "bad.json", {"o": object()})


def test_step_dir_name_round_trips_through_step_of_path(tmp_path):
    from rlvr_linear.io.checkpoints import step_dir_name, step_of_path

    assert step_dir_name(40) == "step_000040" and step_dir_name(1_234_567) == "step_1234567"
    for s in (0, 7, 560, 1_000_000):
        assert step_of_path(tmp_path / step_dir_name(s)) == s


def test_copy_file_is_atomic_follows_the_umask_and_names_the_file_on_error(tmp_path):
    import os
    import stat

    from rlvr_linear.errors import RlvrLinearError
    from rlvr_linear.io import copy_file

    src = tmp_path / "fig.png"
    src.write_bytes(bytes(range(256)) * 100)
    old = os.umask(0o027)
    try:
        dst = copy_file(src, tmp_path / "out" / "sub" / "fig.png")
    finally:
        os.umask(old)
    assert dst.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    assert sorted(p.name for p in dst.parent.iterdir()) == ["fig.png"]  # no temporary file left
    (tmp_path / "adir").mkdir()  # a folder where the file should go: one line naming it, no temporary file left
    with pytest.raises(RlvrLinearError, match=r"adir: cannot write"):
        copy_file(src, tmp_path / "adir")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".adir.tmp")] == []


def test_writing_under_a_file_names_the_path_instead_of_raising_oserror(tmp_path):
    from rlvr_linear.errors import RlvrLinearError
    from rlvr_linear.io import write_json

    (tmp_path / "afile").write_text("x")
    with pytest.raises(RlvrLinearError, match=r"afile is a file, not a folder$"):  # names the file in the way
        write_json(tmp_path / "afile" / "sub" / "r.json", {"a": 1})
    assert (tmp_path / "afile").read_text() == "x"


def test_write_npz_is_atomic_follows_the_umask_and_refuses_pickled_objects(tmp_path):
    import os
    import stat

    import numpy as np

    from rlvr_linear.errors import RlvrLinearError
    from rlvr_linear.io import write_npz

    old = os.umask(0o022)
    try:
        p = write_npz(tmp_path / "s" / "scores.npz", greedy=np.array([1.0, 0.0]), ids=np.array(["a", "b"]))
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    with np.load(p, allow_pickle=False) as z:
        assert z["greedy"].tolist() == [1.0, 0.0] and z["ids"].tolist() == ["a", "b"]
    with pytest.raises(RlvrLinearError, match=r"bad\.npz: array 'x' holds Python objects"):
        write_npz(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["s"]
