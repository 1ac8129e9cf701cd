"""Checkpoints that a crash can never leave half-written.

A checkpoint is a directory `step-N/` holding the model (config.json, model.safetensors,
tokenizer.json), optimizer.safetensors (every optimizer tensor) and trainer_state.json
(counters, RNG states, data position). It is written under a temporary name and renamed
into place, so `step-N/` either exists complete or not at all. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..models.base import load_state_strict
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


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in {**tensors, **meta["scalars"]}.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckpt_dir: Path, step: int, model: MultimodalTransformerModel,
                    opt: torch.optim.Optimizer, trainer_state: dict[str, Any], keep_last: int) -> Path:
    final = ckpt_dir / f"step-{step}"

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tensors, meta = _optimizer_tensors(opt)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / OPTIM_FILE))
        # trainer_state.json is written last: its presence marks a complete checkpoint
        (tmp / STATE_FILE).write_text(json.dumps({**trainer_state, "step": step, "optimizer": meta}))

    atomic_dir_write(final, write)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_latest(ckpt_dir: Path, model: MultimodalTransformerModel, opt: torch.optim.Optimizer
                ) -> dict[str, Any] | None:
    """Restore the newest readable checkpoint; fall back to older ones with a warning. None if none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            state = json.loads((path / STATE_FILE).read_text())
            load_state_strict(model, load_file(str(path / "model.safetensors")), path / "model.safetensors")
            tensors = load_file(str(path / OPTIM_FILE))
            torch.set_rng_state(tensors.pop("rng.torch"))
            _load_optimizer(opt, tensors, state.pop("optimizer"))
            state["path"] = str(path)
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: try an older one
            warnings.warn(f"checkpoint {path} is unreadable ({e}); trying an older one", stacklevel=2)
    return None
