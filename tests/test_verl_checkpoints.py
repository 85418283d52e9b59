"""Checkpoints written by verl itself: its FSDPCheckpointManager saving FSDP1 and FSDP2 models in 2-process gloo groups.

verl pins an older transformers than ours, so it is not in .venv's site-packages but in a side directory
(``.venv/verl-side``, ``make install``; or ``RLVR_LINEAR_VERL_SIDE``) that the writers append to ``sys.path``.
"""

import json
import os
import socket
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import Shard

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import discover
from rlvr_linear.io.verl_shards import FsdpShards, config_dir, load_shard, shard_files
from rlvr_linear.models.testing import make_pico_model, save_model

WORLD = 2
SEED = 3
SAVES = [1, 2, 3, 5]  # optimizer steps after which the writers save a checkpoint
SIDE = Path(os.environ.get("RLVR_LINEAR_VERL_SIDE") or Path(sys.prefix) / "verl-side")
pytestmark = [
    pytest.mark.slow,  # spawned torch processes import verl and train (~20-40 s a group on a busy 2-core machine)
    pytest.mark.skipif(
        not (SIDE / "verl").is_dir(),
        reason=f"verl is not installed in {SIDE} (make install puts it there; or set RLVR_LINEAR_VERL_SIDE)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(step: int, rank: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randint(4, vocab, (2, 12), generator=g)


def _wrap(model, fsdp: int):
    """Shard the model as verl's FSDP engine does: each decoder layer, then the root, on a 1-D ("fsdp",) mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("fsdp",))
    if fsdp == 2:
        from verl.utils.fsdp_utils import apply_fsdp2

        apply_fsdp2(model, {"mesh": mesh}, {})
        return model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from verl.utils.fsdp_utils import get_fsdp_wrap_policy

    policy = get_fsdp_wrap_policy(model)
    return FSDP(model, auto_wrap_policy=policy, device_id=torch.device("cpu"), device_mesh=mesh)


def _train_and_save(rank: int, port: int, side: str, fsdp: int, root: str) -> None:
    """In each of WORLD processes: wrap the pico model, train with AdamW and, after each step in SAVES, save with
    verl's FSDPCheckpointManager to ``root/verl/global_step_N/actor``; rank 0 also saves the gathered full state
    dict to ``root/ref/step_N.safetensors``."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    torch.set_num_threads(1)
    sys.path.append(side)  # after site-packages: our transformers, not the one verl's requirements pin
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

        model, tok = make_pico_model("llama", seed=SEED)
        model = _wrap(model.train(), fsdp)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        manager = FSDPCheckpointManager(model, opt, None, tok)
        for step in range(1, max(SAVES) + 1):
            ids = _batch(step, rank, len(tok))
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            if step in SAVES:
                manager.save_checkpoint(f"{root}/verl/global_step_{step}/actor", global_step=step)
                full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
                if rank == 0:
                    Path(root, "ref").mkdir(exist_ok=True)
                    save_file({k: v.clone() for k, v in full.items()}, f"{root}/ref/step_{step}.safetensors")
                dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module", params=[1, 2], ids=["fsdp1", "fsdp2"])
def run(request, tmp_path_factory):
    """``root/verl``: verl's checkpoints after the SAVES steps; ``root/ref``: the full state dicts."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp(f"fsdp{request.param}")
    mp.spawn(_train_and_save, args=(_free_port(), str(SIDE), request.param, str(root)), nprocs=WORLD, join=True)
    return request.param, root


def _ref(root: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(root / "ref" / f"step_{step}.safetensors")


def test_layout_is_what_the_reader_expects(run):
    fsdp, root = run
    actor = root / "verl" / "global_step_3" / "actor"
    kinds = ("model", "optim", "extra_state")
    assert sorted(f.name for f in actor.iterdir()) == sorted(
        ["fsdp_config.json", "huggingface"] + [f"{k}_world_size_{WORLD}_rank_{r}.pt" for k in kinds for r in (0, 1)]
    )
    assert json.loads((actor / "fsdp_config.json").read_text()) == {"FSDP_version": fsdp, "world_size": WORLD}
    assert shard_files(actor) == {r: actor / f"model_world_size_{WORLD}_rank_{r}.pt" for r in (0, 1)}
    assert config_dir(actor) == actor / "huggingface"
    cfg = json.loads((actor / "huggingface" / "config.json").read_text())
    assert (cfg["model_type"], cfg["tie_word_embeddings"]) == ("llama", True)
    assert (actor / "huggingface" / "tokenizer.json").exists()
    shard = load_shard(actor / f"model_world_size_{WORLD}_rank_1.pt")
    t = shard["model.layers.0.mlp.up_proj.weight"]  # (32, 16): rows 16-31 on rank 1
    assert type(t).__name__ == "DTensor" and tuple(t.placements) == (Shard(0),) and t.shape == (32, 16)
    assert t.device_mesh.mesh_dim_names == ("fsdp",) and t.to_local().shape == (16, 16)
    assert discover(root / "verl", allow_pickle=True).steps == SAVES


def test_shards_gather_to_the_full_state_dict(run):
    fsdp, root = run
    ref = _ref(root, 3)
    init = make_pico_model("llama", seed=SEED)[0].state_dict()
    sh = FsdpShards(root / "verl" / "global_step_3" / "actor")
    assert sorted(sh.keys()) == sorted(k for k in ref if k != "lm_head.weight")  # the tied copy is dropped
    for k in sh.keys():
        got = sh.get(k)
        assert got.dtype == ref[k].dtype == torch.float32 and torch.equal(got, ref[k]), k
        assert not torch.equal(got, init[k]), k  # trained: not the initial values


def test_load_model_equals_the_full_state_dict_and_needs_allow_pickle(run):
    from rlvr_linear.io.loading import load_model

    fsdp, root = run
    actor = root / "verl" / "global_step_5" / "actor"
    with pytest.raises(RlvrLinearError) as e:
        load_model(actor)
    assert str(e.value) == (
        f"{actor}: verl FSDP shards only; they are pickles, which can run code, so loading them is refused unless "
        "you pass --allow-pickle (they are then read with weights_only=True and only DTensor classes allowed), "
        "or merge them: add hf_model to verl's actor_rollout_ref.actor.checkpoint.save_contents, or run "
        "verl's model merger"
    )
    model, tok = load_model(actor, allow_pickle=True)
    sd, ref = model.state_dict(), _ref(root, 5)
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert tok.get_vocab() == make_pico_model("llama", seed=SEED)[1].get_vocab()


def test_weight_r2_equals_that_of_hf_checkpoints(run, tmp_path):
    from rlvr_linear.cli import main

    fsdp, root = run
    model, tok = make_pico_model("llama", seed=SEED)
    hf = tmp_path / "hf"
    for s in SAVES:
        model.load_state_dict(_ref(root, s))
        save_model(model, tok, hf / f"step_{s:06d}")
    assert discover(hf).steps == SAVES
    assert main(["analyze", "weights", str(root / "verl"), "--allow-pickle", "-o", str(tmp_path / "w-verl")]) == 0
    assert main(["analyze", "weights", str(hf), "-o", str(tmp_path / "w-hf")]) == 0
    got, want = (json.loads((tmp_path / f"w-{n}" / "weights.json").read_text()) for n in ("verl", "hf"))
    assert got["r2"] == want["r2"] and got["null"] == want["null"]
    assert got["counts"] == want["counts"] and got["counts"]["kept"] > 0
    per_element = []  # {(tensor, flat index): (R², null R²)}: the tensors come in model order from verl, sorted from HF
    for n in ("verl", "hf"):
        z = np.load(tmp_path / f"w-{n}" / "weights_r2.npz")
        names = z["tensor_names"][z["tensor_id"]]
        per_element.append(dict(zip(zip(names, z["flat_index"]), zip(z["r2"], z["null_r2"]))))
    assert per_element[0] == per_element[1] and len(per_element[0]) == got["counts"]["kept"]


TRAINER = textwrap.dedent(
    """
    import os, socket, sys
    from pathlib import Path

    import torch
    import torch.multiprocessing as mp


    def train(rank, port, args):
        import torch.distributed as dist
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from transformers import AutoModelForCausalLM

        from rlvr_linear.io.tokenizer import load_tokenizer

        torch.set_num_threads(1)
        sys.path.append(os.environ["RLVR_LINEAR_VERL_SIDE"])
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
        from verl.utils.fsdp_utils import apply_fsdp2

        path, out = args["actor_rollout_ref.model.path"], args["trainer.default_local_dir"]
        steps = int(args["trainer.total_training_steps"])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
        tok = load_tokenizer(path)
        apply_fsdp2(model, {"mesh": init_device_mesh("cpu", (2,), mesh_dim_names=("fsdp",))}, {})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(1, steps + 1):
            ids = torch.randint(4, len(tok), (2, 12), generator=torch.Generator().manual_seed(1000 * step + rank))
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
        manager = FSDPCheckpointManager(model, opt, None, tok)
        manager.save_checkpoint(f"{out}/global_step_{steps}/actor", global_step=steps)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if rank == 0:
            ref = Path(os.environ["REF_DIR"], f"cycle_{os.environ['REGROUND_CYCLE']}.safetensors")
            save_file({k: v.clone() for k, v in full.items()}, str(ref))
            Path(out, "latest_checkpointed_iteration.txt").write_text(str(steps))
        dist.destroy_process_group()


    if __name__ == "__main__":
        args = dict(a.split("=", 1) for a in sys.argv[1:])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(train, args=(port, args), nprocs=2, join=True)
    """
)


def test_reground_extrapolates_what_verl_saved(tmp_path, monkeypatch):
    """Two cycles of a verl-style command whose trainer saves with verl's FSDPCheckpointManager (FSDP2)."""
    from rlvr_linear.extrapolation.params import is_norm_param
    from rlvr_linear.training.reground_driver import reground_driver

    script = tmp_path / "main_ppo.py"
    script.write_text(TRAINER)
    monkeypatch.setenv("RLVR_LINEAR_VERL_SIDE", str(SIDE))
    monkeypatch.setenv("REF_DIR", str(tmp_path))
    cmd = (
        f"{sys.executable} {script} actor_rollout_ref.model.path={{model}} trainer.total_training_steps={{steps}} "
        "trainer.save_freq={steps} trainer.default_local_dir={out} trainer.resume_mode=disable"
    )
    model, tok = make_pico_model("llama", seed=SEED)
    start = save_model(model, tok, tmp_path / "start")
    work = tmp_path / "work"
    m, n = 2, 2
    summary = reground_driver(cmd, start, m, n, 2, work, allow_pickle=True)
    assert summary["effective_step"] == 2 * (m + n)
    inputs = [start, work / "cycle_01" / "extrapolated"]
    for k, model_dir in enumerate(inputs, 1):
        actor = (work / f"cycle_{k:02d}" / "train" / f"global_step_{m}" / "actor").resolve()
        assert summary["history"][k - 1]["checkpoint"] == str(actor) and shard_files(actor)
        a = load_file(model_dir / "model.safetensors")
        b = load_file(tmp_path / f"cycle_{k}.safetensors")  # the trainer's gathered full weights
        x = load_file(work / f"cycle_{k:02d}" / "extrapolated" / "model.safetensors")
        assert x.keys() == a.keys() == b.keys() - {"lm_head.weight"}
        for key, w in x.items():
            assert not torch.equal(a[key], b[key]), key
            want = b[key] if is_norm_param(key) else a[key] + (m + n) / m * (b[key] - a[key])  # norms: copied
            assert torch.allclose(w, want, rtol=0, atol=1e-6), key
