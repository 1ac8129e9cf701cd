"""Checkpoints that a crash can never leave half-written.

A checkpoint is a directory `step-N/` holding the model (config.json, model.safetensors,
tokenizer.json), optimizer.safetensors (every optimizer tensor, the RNG states) and
trainer_state.json (counters, grad scaler, Python/NumPy RNG states, data positions). It is
written under a temporary name and renamed into place, so `step-N/` either exists complete or
not at all; keep_last rotates old ones. No pickle anywhere.

Under torchrun, rank 0 writes (ddp: every rank holds the same tensors). Under FSDP every rank
writes its shard of the model and optimizer into the temporary directory (see distributed.py),
rank 0 renames it once all are done; `load_latest` reads sharded checkpoints in any process count.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..models.base import load_state_strict, write_config
from .distributed import Dist, barrier, is_sharded, load_sharded, save_sharded
from ..models.multimodal import MultimodalTransformerModel

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"
_STEP_RE = re.compile(r"^step-(\d+)$")


def atomic_dir_write(final: Path, write: Any) -> None:
    """Call write(tmp_dir), then rename tmp_dir to `final` (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_sharded_into(model: torch.nn.Module, opt: torch.optim.Optimizer, weights: dict[str, torch.Tensor],
                       tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Full tensors -> this rank's shards of the FSDP model's parameters and optimizer state."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    def shard_like(like: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        if isinstance(like, DTensor):
            return distribute_tensor(full.to(like.dtype), like.device_mesh, like.placements)
        return full.to(like.device)

    own = model.state_dict()
    with torch.no_grad():
        for name, value in own.items():
            if name not in weights:
                continue  # a tied alias
            target = value.to_local() if isinstance(value, DTensor) else value
            target.copy_(shard_like(value, weights[name]).to_local() if isinstance(value, DTensor) else weights[name])
    params = [p for g in opt.param_groups for p in g["params"]]
    for name in list(tensors):
        idx = int(name.split(".", 1)[0])
        p = params[idx]
        if tensors[name].shape == p.shape and tensors[name].dim() > 0:
            tensors[name] = shard_like(p, tensors[name])
    _load_optimizer(opt, tensors, meta)


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in {**tensors, **meta["scalars"]}.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _rng_tensors() -> dict[str, torch.Tensor]:
    rng = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    return rng


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda = tensors.pop("rng.cuda", None)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def save_checkpoint(ckpt_dir: Path, step: int, model: MultimodalTransformerModel,
                    opt: torch.optim.Optimizer, trainer_state: dict[str, Any], keep_last: int,
                    d: Dist | None = None) -> Path:
    d = d or Dist()
    final = ckpt_dir / f"step-{step}"
    sharded = d.enabled and any(hasattr(p, "to_local") for p in model.parameters())

    def write(tmp: Path) -> None:
        tensors, meta = _optimizer_tensors(opt)
        if sharded:
            save_sharded(tmp, "model", model.state_dict(), d)
            save_sharded(tmp, "optimizer", tensors, d)
            barrier(d)  # every shard is on disk before rank 0 publishes the directory
            if not d.main:
                return
            write_config(model, tmp)
            tensors = {}
        else:
            model.save_pretrained(tmp)
        save_file({**{k: v for k, v in tensors.items()}, **_rng_tensors()}, str(tmp / OPTIM_FILE))
        # trainer_state.json is written last: its presence marks a complete checkpoint
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step, "optimizer": meta,
                                                  "sharded": d.world if sharded else 0}))

    if sharded:
        tmp = ckpt_dir / f".tmp-{final.name}-shared"
        if d.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(d)
        write(tmp)
        if d.main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    elif d.main:
        atomic_dir_write(final, write)
    if d.main:
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def clean_partial(ckpt_dir: Path) -> None:
    """Remove temporary directories a killed run left behind (never a complete checkpoint)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer state, full model tensors, optimizer + RNG tensors) of one checkpoint, in one
    process, whether it was written whole or sharded by N FSDP processes."""
    state = json.loads((path / STATE_FILE).read_text())
    extra = load_file(str(path / OPTIM_FILE))
    if is_sharded(path, "model"):
        return state, load_sharded(path, "model"), {**load_sharded(path, "optimizer"), **extra}
    return state, load_file(str(path / "model.safetensors")), extra


def load_latest(ckpt_dir: Path, model: MultimodalTransformerModel, opt: torch.optim.Optimizer,
                d: Dist | None = None) -> dict[str, Any] | None:
    """Restore the newest readable checkpoint; fall back to older ones with a warning. None if none.
    Works for any process count; under FSDP each rank keeps its shard of the full tensors."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state, weights, tensors = read_checkpoint(path)
            _set_rng(tensors)
            meta = state.pop("optimizer")
            if any(hasattr(p, "to_local") for p in model.parameters()):
                _load_sharded_into(model, opt, weights, tensors, meta)
            else:
                load_state_strict(model, weights, path / "model.safetensors")
                _load_optimizer(opt, tensors, meta)
            state["path"] = str(path)
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: try an older one
            warnings.warn(f"checkpoint {path} is unreadable ({e}); trying an older one", stacklevel=2)
    return None


def rng_state() -> dict[str, Any]:
    """Python's and NumPy's global rng states, as JSON-able lists (a checkpoint's state.json)."""
    np_state = np.random.get_state()
    return {"python_rng": random.getstate(), "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def restore_rng(state: dict[str, Any]) -> None:
    def as_tuple(x: Any) -> Any:
        return tuple(as_tuple(v) for v in x) if isinstance(x, list) else x

    random.setstate(as_tuple(state["python_rng"]))
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
