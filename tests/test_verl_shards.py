"""verl FSDP shards read in place: real DTensor shards written by a 2-process gloo group, as verl names them."""

import datetime
import json
import os
import shlex
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlvr_linear.errors import RlvrLinearError
from rlvr_linear.io.checkpoints import TensorReader, discover, find_model_dir
from rlvr_linear.io.verl_shards import FsdpShards, load_shard, shard_files
from rlvr_linear.models.testing import make_trajectory

STEPS = [0, 10, 20, 30]
WORLD = 2
pytestmark = pytest.mark.slow  # two spawned torch processes write the shards (~15-45 s on a busy 2-core machine)


def _noisy(n, w, s, i):
    g = torch.Generator().manual_seed(2000 + i)
    return w + 1e-3 * s + 1e-3 * torch.randn(w.shape, generator=g)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _odd_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"uneven": torch.randn(5, 3, generator=g), "cols": torch.randn(3, 6, generator=g),
            "rep": torch.randn(4, generator=g), "hsdp": torch.randn(6, 2, generator=g)}  # fmt: skip


def _save_shards(rank: int, port: int, jobs: list[tuple[str, str]], odd_dir: str) -> None:
    """In each of WORLD processes: shard every tensor of each (safetensors file, actor dir) with
    distribute_tensor(Shard(0)) on a 1-D ("fsdp",) mesh and torch.save the rank's state dict as verl does."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("fsdp",))
        for weights, actor in jobs:
            sd = load_file(weights)
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]  # tied: model.state_dict() has both names
            local = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in sd.items()}
            torch.save(local, Path(actor) / f"model_world_size_{WORLD}_rank_{rank}.pt")
            torch.save({"state": {}, "param_groups": []}, Path(actor) / f"optim_world_size_{WORLD}_rank_{rank}.pt")
        # other placements: uneven Shard(0), Shard(1), Replicate, and HSDP's 2-D ("ddp", "fsdp") mesh
        odd = _odd_tensors()
        mesh2 = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("ddp", "fsdp"))
        local = {
            "uneven": distribute_tensor(odd["uneven"], mesh, [Shard(0)]),
            "cols": distribute_tensor(odd["cols"], mesh, [Shard(1)]),
            "rep": distribute_tensor(odd["rep"], mesh, [Replicate()]),
            "hsdp": distribute_tensor(odd["hsdp"], mesh2, [Replicate(), Shard(0)]),
        }
        torch.save(local, Path(odd_dir) / f"model_world_size_{WORLD}_rank_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``local``: merged HF checkpoints; ``verl``: the same weights as verl FSDP shards only (no merged copy)."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("verl")
    local = make_trajectory(root / "local", STEPS, _noisy)
    jobs = []
    for s in STEPS:
        actor = root / "verl" / f"global_step_{s}" / "actor"
        hf = actor / "huggingface"
        hf.mkdir(parents=True)
        for f in (local / f"step_{s:06d}").iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, hf / f.name)  # config and tokenizer only
        (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": WORLD}))
        jobs.append((str(local / f"step_{s:06d}" / "model.safetensors"), str(actor)))
    (root / "verl" / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
    odd = root / "odd"
    odd.mkdir()
    mp.spawn(_save_shards, args=(_free_port(), jobs, str(odd)), nprocs=WORLD, join=True)
    return {"local": local, "verl": root / "verl", "odd": odd}


def test_discover_and_gather_equal_the_unsharded_weights(runs):
    traj = discover(runs["verl"], allow_pickle=True)
    assert traj.steps == STEPS and traj.paths[1] == runs["verl"] / "global_step_10" / "actor"
    assert not any(f.suffix == ".safetensors" for f in runs["verl"].rglob("*"))
    ref = TensorReader(runs["local"] / "step_000020")
    with TensorReader(runs["verl"] / "global_step_20", allow_pickle=True) as r:
        assert r.kind == "verl-fsdp" and sorted(r.keys()) == sorted(ref.keys())  # the tied lm_head is dropped
        assert r.config()["model_type"] == "qwen2"
        for k in ref.keys():
            assert r.shape(k) == ref.shape(k) and r.dtype(k) == ref.dtype(k)
            assert torch.equal(r.get(k), ref.get(k)), k
    assert find_model_dir(runs["verl"] / "global_step_0" / "actor" / "huggingface").name == "actor"


def test_other_placements_and_meshes(runs):
    sh = FsdpShards(runs["odd"])
    assert sh.world_size == WORLD and sorted(sh.keys()) == ["cols", "hsdp", "rep", "uneven"]
    for k, v in _odd_tensors().items():
        assert sh.shape(k) == tuple(v.shape)
        assert torch.equal(sh.get(k), v), k
    sd = load_shard(runs["odd"] / f"model_world_size_{WORLD}_rank_1.pt")
    assert tuple(sd["uneven"].to_local().shape) == (2, 3)  # torch.chunk: 3 + 2 rows


def test_r2_and_extrapolation_equal_those_of_the_unsharded_run(runs, tmp_path):
    from rlvr_linear.cli import main  # (imported here: the spawned writers import this module; keep it light)
    from rlvr_linear.linearity import analyze_weights

    local = analyze_weights(discover(runs["local"]))
    sharded = analyze_weights(discover(runs["verl"], allow_pickle=True))
    assert sharded.summary() == local.summary() and sharded.steps == STEPS
    all_l = analyze_weights(discover(runs["local"]), sample="all", chunk=64)
    all_v = analyze_weights(discover(runs["verl"], allow_pickle=True), sample="all", chunk=64)
    assert all_v.summary() == all_l.summary()
    for name, src, extra in (("local", runs["local"], []), ("verl", runs["verl"], ["--allow-pickle"])):
        assert main(["analyze", "weights", str(src), *extra, "-o", str(tmp_path / f"w-{name}")]) == 0
        args = ["extrapolate", "weights", "--run", str(src), "--target-step", "50", *extra]
        assert main([*args, "-o", str(tmp_path / f"x-{name}")]) == 0
    assert (tmp_path / "w-verl" / "weights_per_tensor.csv").read_text() == (
        tmp_path / "w-local" / "weights_per_tensor.csv"
    ).read_text()
    x, ref = (load_file(tmp_path / f"x-{n}" / "model.safetensors") for n in ("verl", "local"))
    assert x.keys() == ref.keys() and all(torch.equal(x[k], ref[k]) for k in x)
    for f in ("config.json", "tokenizer.json", "rlvr_linear_tokenizer.json"):
        assert (tmp_path / "x-verl" / f).read_text() == (tmp_path / "x-local" / f).read_text()
    assert not (tmp_path / "x-verl" / "fsdp_config.json").exists()
    # two-point extrapolation straight from two sharded checkpoints (steps from the global_step_N names)
    two = ["extrapolate", "weights", "--base", str(runs["verl"] / "global_step_10"), "--allow-pickle"]
    two += ["--second", str(runs["verl"] / "global_step_20"), "--alpha", "2"]
    assert main([*two, "-o", str(tmp_path / "tp")]) == 0
    a, b = (load_file(runs["local"] / f"step_0000{s}" / "model.safetensors") for s in (10, 20))
    tp = load_file(tmp_path / "tp" / "model.safetensors")
    k = "model.layers.1.self_attn.q_proj.weight"
    assert torch.allclose(tp[k], a[k] + 2 * (b[k] - a[k]), atol=1e-6)


def test_pickle_flag_and_refusals(runs, tmp_path, capsys):
    from rlvr_linear.cli import main

    assert main(["analyze", "weights", str(runs["verl"]), "-o", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "verl FSDP shards (model_world_size_W_rank_R.pt) are pickles" in err and "--allow-pickle" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"w": torch.zeros(2), "when": datetime.date(2025, 1, 1)}, bad / "model_world_size_1_rank_0.pt")
    with pytest.raises(RlvrLinearError, match=r"model_world_size_1_rank_0.pt: refused: .*datetime.date"):
        TensorReader(bad, allow_pickle=True)
    v10 = str(runs["verl"] / "global_step_10")
    for cmd in (
        ["eval", v10, "--n-problems", "2"],
        ["generate", v10, "--prompt", "1+1=", "--greedy"],
        ["analyze", "logprobs", str(runs["verl"]), "--task", "arithmetic", "-o", str(tmp_path / "lp")],
    ):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert "/actor: verl FSDP shards" in err and "are pickles" in err and "unless you pass --allow-pickle" in err
        if cmd[0] != "analyze":  # (analyze's trajectory check refuses the shards before any model is loaded)
            assert "global_step_10/actor: verl FSDP shards only; " in err and "verl's model merger" in err, err
    assert not (tmp_path / "lp").exists()
    part = tmp_path / "part"
    shutil.copytree(runs["odd"], part)
    (part / f"model_world_size_{WORLD}_rank_1.pt").unlink()
    with pytest.raises(RlvrLinearError, match=r"incomplete verl checkpoint: .* missing for ranks \[1\]"):
        shard_files(part)


def test_whole_model_commands_equal_those_of_the_unsharded_run(runs, tmp_path, capsys):
    """load_model / eval / generate / analyze logprobs+activations on shards only == on the merged checkpoints."""
    from rlvr_linear.cli import main
    from rlvr_linear.evaluation.evaluation import evaluate
    from rlvr_linear.io.loading import load_model
    from rlvr_linear.linearity import analyze_activations

    v20, l20 = runs["verl"] / "global_step_20", runs["local"] / "step_000020"
    model, tok = load_model(v20, allow_pickle=True)
    ref = load_file(l20 / "model.safetensors")
    sd = model.state_dict()
    assert set(ref) <= set(sd) and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert torch.equal(sd["lm_head.weight"], ref["model.embed_tokens.weight"])  # tied: follows the embedding
    assert tok.get_vocab() == load_model(l20)[1].get_vocab()
    del model
    kw = dict(task="arithmetic", n_problems=16, k=2, max_new_tokens=12, keep_samples=True)
    ev, el = evaluate(v20, allow_pickle=True, **kw), evaluate(l20, **kw)
    assert ev.greedy_samples == el.greedy_samples and any(ev.greedy_samples)
    assert (ev.greedy_correct == el.greedy_correct).all() and (ev.correct == el.correct).all()
    assert ev.samples == el.samples  # sampled decoding with the same seed: identical too
    # CLIs: eval (one checkpoint and the logit-extrapolated pair), generate
    outs = {}
    for name, a, b, extra in (
        ("verl", v20, runs["verl"] / "global_step_10", ["--allow-pickle"]),
        ("local", l20, runs["local"] / "step_000010", []),
    ):
        ev_args = ["eval", str(a), "--n-problems", "8", "-k", "0", "--max-new-tokens", "12", *extra]
        assert main([*ev_args, "--logit-extrapolate", str(b), str(a), "--alpha", "2"]) == 0
        gen = ["generate", str(a), "--prompt", "12+7=", "--prompt", "3+", "--greedy", "--max-new-tokens", "10"]
        assert main([*gen, *extra, "-o", str(tmp_path / f"g-{name}.jsonl")]) == 0
        outs[name] = capsys.readouterr().out.replace(a.name, "A").replace(f"g-{name}", "g")
    assert outs["verl"] == outs["local"] and "greedy" in outs["verl"] and "logit-extrapolated(alpha=2)" in outs["verl"]
    g = [[json.loads(ln)["completion"] for ln in (tmp_path / f"g-{n}.jsonl").read_text().splitlines()] for n in outs]
    assert g[0] == g[1] and len(g[0]) == 2
    # analyze logprobs: probes sampled from step 0 and scored at every step
    for name, src, extra in (("verl", runs["verl"], ["--allow-pickle"]), ("local", runs["local"], [])):
        lp = ["analyze", "logprobs", str(src), "--task", "arithmetic", "--n-prompts", "4", "--k", "2", *extra]
        assert main([*lp, "--max-new-tokens", "8", "--device", "cpu", "-o", str(tmp_path / f"lp-{name}")]) == 0
    lv, ll = (json.loads((tmp_path / f"lp-{n}" / "logprobs.json").read_text()) for n in ("verl", "local"))
    assert lv["r2"] == ll["r2"] and lv["null"] == ll["null"] and lv["counts"] == ll["counts"]
    assert lv["counts"]["tokens"] > 0
    probes = (tmp_path / "lp-verl" / "probes.jsonl").read_text()
    assert probes == (tmp_path / "lp-local" / "probes.jsonl").read_text()
    act = [
        analyze_activations(discover(src, allow_pickle=ap), tmp_path / "lp-local" / "probes.jsonl", device="cpu")
        for src, ap in ((runs["verl"], True), (runs["local"], False))
    ]
    assert act[0].summary() == act[1].summary()


def test_reground_extrapolates_a_shard_only_trained_checkpoint(runs, tmp_path, capsys):
    """A trainer that writes verl shards only: reground reads them with --allow-pickle, as the merged copy."""
    from rlvr_linear.cli import main

    start = runs["local"] / "step_000000"

    def trainer(src, prefix):  # the fake trainer "trains" by copying a saved checkpoint (a shell, run explicitly)
        script = f'test -d "$1" && mkdir -p "$2" && cp -r {shlex.quote(str(src))} "$2/{prefix}$3"'
        return f"bash -c {shlex.quote(script)} _ {{model}} {{out}} {{steps}}"

    copies = {
        "verl": trainer(runs["verl"] / "global_step_10", "global_step_"),
        "local": trainer(runs["local"] / "step_000010", "checkpoint-"),
    }
    args = ["--model", str(start), "--m", "10", "--n", "10", "--cycles", "1"]
    refused = ["reground", "--cmd", copies["verl"], *args, "-w", str(tmp_path / "no")]
    assert main(refused) == 2
    assert "global_step_10/actor: verl FSDP shards" in capsys.readouterr().err
    for name, cmd in copies.items():
        extra = ["--allow-pickle"] if name == "verl" else []
        assert main(["reground", "--cmd", cmd, *args, *extra, "-w", str(tmp_path / name)]) == 0
    x, ref = (load_file(tmp_path / n / "cycle_01" / "extrapolated" / "model.safetensors") for n in ("verl", "local"))
    assert x.keys() == ref.keys() and all(torch.equal(x[k], ref[k]) for k in x)
    a, b = load_file(start / "model.safetensors"), load_file(runs["local"] / "step_000010" / "model.safetensors")
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(x[k], a[k] + 2 * (b[k] - a[k]), atol=1e-6)  # alpha = (M + N) / M = 2


def test_lm_eval_adapter_reads_shards_with_allow_pickle(runs):
    pytest.importorskip("lm_eval")
    from rlvr_linear.extrapolation.lm_eval_adapter import ExtrapolatedLM

    pair = [str(runs["verl"] / f"global_step_{s}") for s in (10, 20)]
    with pytest.raises(RlvrLinearError, match=r"global_step_10/actor: verl FSDP shards only; .*--allow-pickle"):
        ExtrapolatedLM(models="|".join(pair), alpha=2, device="cpu")
    lm = ExtrapolatedLM(models="|".join(pair), alpha=2, device="cpu", allow_pickle="True")  # as --model_args gives it
    ref = ExtrapolatedLM(models="|".join(str(runs["local"] / f"step_0000{s}") for s in (10, 20)), alpha=2, device="cpu")
    prompts, responses = ["12+7=", "3+4="], ["19", "7"]
    got, want = (m.gen.score(prompts, responses) for m in (lm, ref))
    assert [a.tolist() for a in got] == [a.tolist() for a in want] and len(got[0]) == 2
    kw = dict(greedy=True, max_new_tokens=8)
    assert lm.gen.generate(prompts, **kw) == ref.gen.generate(prompts, **kw)
