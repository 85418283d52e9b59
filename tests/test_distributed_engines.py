"""The callbacks under real data-parallel engines, gloo processes on CPU: DDP, FSDP2 (``fully_shard``; 2 and 4
processes), FSDP1 (``FullyShardedDataParallel``, ``use_orig_params=True``) and DeepSpeed ZeRO-3 (its CPU
accelerator).

transformers' Trainer cannot shard on CPU (accelerate wraps the model in DDP there, whatever ``fsdp`` says), so the
engines are set up directly and a hand-written loop calls the callbacks' hooks as the Trainer does. Each engine's
run is compared with the same run in one process on the whole batch: the re-grounding jump, the optimizer reset,
the monitor's numbers and the sketch.
"""

import json
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # each engine: two spawned torch processes (~10-40 s on a busy 2-core machine)

RUNS = [("ddp", 2), ("fsdp2", 2), ("fsdp2", 4), ("fsdp1", 2), ("zero3", 2)]  # (engine, processes)
M, N, STEPS, LR = 3, 2, 5, 1e-2
# Adam's eps large enough that a step is smooth in the gradient: with a tiny eps the first steps are sign(g), and the
# float rounding by which the engines' reduced gradients differ flips the sign of near-zero ones (a full lr apart)
EPS = 1e-3
TEXTS = ["1+2=3 and 4+5=9", "7+1=8 and 2+2=4", "3+3=6 and 9+0=9", "5+4=9 and 1+1=2"]  # equal lengths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int, engine: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # fmt: skip
    if engine == "zero3":
        os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world)


def _wrap(engine: str, model, world: int, use_orig_params: bool = True):
    """(the model the callbacks see, a step function loss -> None)."""
    if engine in ("single", "ddp"):
        wrapped = model if engine == "single" else torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
        return wrapped, opt, lambda loss: (loss.backward(), opt.step(), opt.zero_grad())
    if engine == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
        return model, opt, lambda loss: (loss.backward(), opt.step(), opt.zero_grad())
    if engine == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        wrapped = FSDP(model, use_orig_params=use_orig_params, device_id=torch.device("cpu"))
        opt = torch.optim.AdamW(wrapped.parameters(), lr=LR, eps=EPS, weight_decay=0.0)
        return wrapped, opt, lambda loss: (loss.backward(), opt.step(), opt.zero_grad())
    import deepspeed

    cfg = {
        "train_micro_batch_size_per_gpu": len(TEXTS) // world,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 unless told; the other runs do not clip
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "eps": EPS, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_model_persistence_threshold": 0},  # fmt: skip
    }
    engine_, opt, _, _ = deepspeed.initialize(model=model, config=cfg, model_parameters=model.parameters())
    return engine_, opt, lambda loss: (engine_.backward(loss), engine_.step())


def _moments_zero(opt) -> bool:
    """True if the innermost optimizer holds no state, or only zero tensors (DeepSpeed's reset zeroes in place)."""
    while getattr(opt, "optimizer", None) is not None and opt.optimizer is not opt:
        opt = opt.optimizer
    return all(not torch.is_tensor(v) or not bool(v.count_nonzero()) for st in opt.state.values() for v in st.values())


def _run(rank: int, world: int, port: int, engine: str, out_dir: str) -> None:
    """Train the pico Llama STEPS steps (this rank's rows of the batch) with a jump every M steps, the monitor at
    every step and a sketch every 2 steps; write what the test compares."""
    from rlvr_linear.linearity import Probe
    from rlvr_linear.models.testing import make_pico_model
    from rlvr_linear.training.distributed import gathered_params
    from rlvr_linear.training.monitor import LinearityMonitor
    from rlvr_linear.training.regrounding import ReGroundingCallback
    from rlvr_linear.training.sketch_callback import SketchCallback

    torch.set_num_threads(1)
    if engine != "single":
        _init(rank, world, port, engine)
    model, tok = make_pico_model("llama", seed=0)
    model.train()
    ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS])
    rows = ids if engine == "single" else ids.chunk(world)[rank]
    wrapped, opt, step = _wrap(engine, model, world)
    rg = ReGroundingCallback(M, N, optimizer_state="reset")
    mon = LinearityMonitor(every=1)
    probes = [Probe("1+2=", "3"), Probe("1+2=", "4 and"), Probe("4+4=", "8")]
    sk = SketchCallback(Path(out_dir) / f"sketch_{engine}{world}", probes)
    state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=rank == 0)
    rg.on_train_begin(None, state, None, model=wrapped)
    mon.on_train_begin(None, state, None, model=wrapped)
    sk.on_train_begin(None, state, None, model=wrapped, processing_class=tok)
    full = lambda: {n: w.detach().clone() for n, w in gathered_params(wrapped)}  # noqa: E731
    anchor, seen = full(), {}
    for _ in range(STEPS):
        step(wrapped(input_ids=rows, labels=rows).loss)
        state.global_step += 1
        if state.global_step == M:
            seen["before"] = full()
        rg.on_step_end(None, state, None, model=wrapped, optimizer=opt)
        if state.global_step == M:
            seen["after"], seen["reset"] = full(), _moments_zero(opt)
        mon.on_step_end(None, state, None, model=wrapped)
        if state.global_step % 2 == 0:
            sk.on_save(None, state, None, model=wrapped, processing_class=tok)
    result = {"final": full(), "anchor": anchor, **seen, "jumps": rg.jumps, "alpha": rg.history[0]["alpha"],
              "monitor": [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in mon.history]}  # fmt: skip
    torch.save(result, Path(out_dir) / f"{engine}{world}_r{rank}.pt")
    if engine != "single":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _refuse_flat(rank: int, world: int, port: int, out_dir: str) -> None:
    """FSDP1 with use_orig_params=False: each callback refuses with one line (written per rank)."""
    from rlvr_linear.errors import RlvrLinearError
    from rlvr_linear.models.testing import make_pico_model
    from rlvr_linear.training.monitor import LinearityMonitor
    from rlvr_linear.training.regrounding import ReGroundingCallback
    from rlvr_linear.training.sketch_callback import SketchCallback

    torch.set_num_threads(1)
    _init(rank, world, port, "fsdp1")
    model, _ = make_pico_model("llama", seed=0)
    wrapped, _, _ = _wrap("fsdp1", model, world, use_orig_params=False)
    state = SimpleNamespace(global_step=0, log_history=[], is_world_process_zero=rank == 0)
    errors = []
    for cb in (ReGroundingCallback(M, N), LinearityMonitor(every=1), SketchCallback(Path(out_dir) / "sk")):
        try:
            cb.on_train_begin(None, state, None, model=wrapped)
            errors.append(None)
        except RlvrLinearError as e:
            errors.append(str(e))
    Path(out_dir, f"flat_r{rank}.json").write_text(json.dumps(errors))
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run(0, 1, 0, "single", str(out))
    return out, torch.load(out / "single1_r0.pt", weights_only=True)


def _spawn(fn, *args, world: int = 2) -> None:
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(world, _free_port(), *args), nprocs=world, join=True)


@pytest.mark.parametrize(("engine", "world"), RUNS, ids=[f"{e}-{w}" for e, w in RUNS])
def test_engine_matches_single_process(engine, world, single, tmp_path):
    if engine == "zero3":
        pytest.importorskip("deepspeed")
    from rlvr_linear.extrapolation.params import is_norm_param
    from rlvr_linear.linearity.sketch import Sketch, SketchReader

    _spawn(_run, engine, str(tmp_path), world=world)
    r0, *rest = (torch.load(tmp_path / f"{engine}{world}_r{r}.pt", weights_only=True) for r in range(world))
    one_dir, one = single
    # the jump: W' = W_a + alpha (W - W_a) on the gathered weights (norms copied), alpha = (M + N) / M
    assert all(r["jumps"] == 1 for r in rest) and r0["jumps"] == one["jumps"] == 1 and r0["alpha"] == (M + N) / M
    for name, w in r0["before"].items():
        a, after = r0["anchor"][name], r0["after"][name]
        want = w if is_norm_param(name) else a + r0["alpha"] * (w - a)
        assert torch.allclose(after, want, rtol=0, atol=1e-6), name
    # the optimizer's state is zero on every rank after the reset jump
    assert all(r["reset"] is True for r in (r0, *rest)) and one["reset"] is True
    # the whole run: ranks agree exactly, and equal the single-process run to float rounding
    assert set(r0["final"]) == set(one["final"])
    for name, w in one["final"].items():
        assert all(torch.equal(r0["final"][name], r["final"][name]) for r in rest), name
        assert torch.allclose(r0["final"][name], w, rtol=0, atol=1e-5), name
    # the monitor: the same numbers on every rank, equal to the single-process monitor's
    assert all(r["monitor"] == r0["monitor"] for r in rest) and len(r0["monitor"]) == STEPS - 1
    for got, want in zip(r0["monitor"], one["monitor"], strict=True):
        assert got.keys() == want.keys()
        for k, v in want.items():
            assert math.isclose(got[k], v, rel_tol=1e-4, abs_tol=1e-6), (got["step"], k, got[k], v)
    # the sketch written from the sharded weights equals the one written from the whole model
    sk, ref = Sketch(tmp_path / f"sketch_{engine}{world}"), Sketch(one_dir / "sketch_single1")
    assert sk.steps == ref.steps == [0, 2, 4]
    assert sk.meta["tensors"] == ref.meta["tensors"] and sk.meta["model"] == ref.meta["model"]
    for s in ref.steps:
        with SketchReader(sk, s) as got, SketchReader(ref, s) as want:
            assert got.keys() == want.keys()
            for name in want.keys():
                assert torch.allclose(got.values(name), want.values(name), rtol=0, atol=1e-5), (s, name)
            assert np.allclose(got.logprobs(), want.logprobs(), rtol=0, atol=1e-5), s


def test_fsdp1_flat_parameters_are_refused(tmp_path):
    _spawn(_refuse_flat, str(tmp_path))
    flat = ("FSDP1 with use_orig_params=False exposes flattened parameters only; use FSDP2 (fsdp_version: 2) or set "
            "use_orig_params=True")  # fmt: skip
    for r in (0, 1):
        assert json.loads(Path(tmp_path, f"flat_r{r}.json").read_text()) == [f"re-grounding: {flat}", flat, flat]
