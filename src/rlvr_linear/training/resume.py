"""A run's ``resume/`` folder: the optimizer moments and the random state of its last save (safetensors + JSON, no
pickle), written with every save and read back when the run resumes.

The random state is torch's CPU generator (and each CUDA device's), numpy's and Python's global generators. Restored
at the start of the first resumed step, it makes a resumed run sample exactly what the run that never stopped
sampled, so on one CPU thread the two end with the same weights, bit for bit.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_dir, read_json, write_json


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)``: the optimizer's state tensors (``"<param id>.<name>"``) and the rest as JSON."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "scalars": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta["scalars"][f"{pid}.{k}"] = v.item() if torch.is_tensor(v) else v
    return tensors, meta


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """Load what :func:`optimizer_to_tensors` returned into ``opt``."""
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = torch.tensor(float(v)) if k == "step" else v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, meta)``: the generators' states, for ``safetensors`` and JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update((f"cuda.{i}", s) for i, s in enumerate(torch.cuda.get_rng_state_all()))
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": [version, list(internal), gauss_next]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA only when the device count is the same)."""
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


def write_resume(folder: Path, step: int, optimizer: torch.optim.Optimizer) -> None:
    """``folder`` (replaced atomically): ``optimizer.safetensors``, ``rng.safetensors`` and ``state.json``."""
    from safetensors.torch import save_file

    tensors, meta = optimizer_to_tensors(optimizer)
    rng, rng_meta = rng_state()
    with atomic_dir(folder, overwrite=True, kind="train-state") as tmp:
        save_file(tensors or {"_empty": torch.zeros(1)}, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        write_json(tmp / "state.json", {"step": step, "optimizer": meta, "rng": rng_meta})


def read_resume(folder: Path, step: int, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """Load the optimizer moments saved at ``step`` into ``optimizer``; returns the random state to restore (for
    :func:`set_rng_state`), or None when ``folder`` holds another step or no random state (an older run)."""
    from safetensors.torch import load_file

    st = read_json(folder / "state.json")
    if st["step"] != step:
        return None
    tensors = load_file(str(folder / "optimizer.safetensors"))
    tensors.pop("_empty", None)
    optimizer_from_tensors(optimizer, tensors, st["optimizer"])
    return (load_file(str(folder / "rng.safetensors")), st["rng"]) if "rng" in st else None
