"""Data parallelism under `torchrun`: process group, gradient averaging, FSDP, sharded checkpoints.

`torchrun --nproc_per_node N -m multimodaltransformer train CONFIG` sets RANK / WORLD_SIZE /
LOCAL_RANK; `init_distributed` joins the group (gloo on CPU, NCCL on GPU). Then:

  ddp   every process holds the whole model; after each step's backward the gradients are
        averaged with one flattened all-reduce. (We do not wrap in DistributedDataParallel: the
        objectives call several model entry points, not just forward(), and a stream may leave
        parameters unused; averaging after accumulation keeps unused gradients None, exactly as
        in one process, so 1 x batch 8 and 2 x batch 4 follow the same trajectory.)
  fsdp  parameters, gradients and optimizer state are sharded over the processes (FSDP2
        `fully_shard`, one unit per Transformer block + the rest), for models that do not fit.

FSDP checkpoints are sharded: every rank writes its own shard of each tensor (dim 0, in rank
order); `load_sharded` concatenates them, so one process can read a checkpoint N wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

SHARD_INDEX = "shards.json"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return Dist(rank, world, local, dev)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: Tensor, d: Dist) -> Tensor:
    """Sum over processes (in place on a copy); the identity in one process."""
    if d.enabled:
        x = x.clone()
        dist.all_reduce(x)
    return x


def average_gradients(params: Iterable[nn.Parameter], d: Dist) -> None:
    """Average gradients over processes with one all-reduce per dtype.

    A parameter whose gradient is None on every process stays None (AdamW then skips it, as
    one process would); one that some processes used gets zeros where it was unused.
    """
    if not d.enabled:
        return
    params = [p for p in params if p.requires_grad]
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=d.device)
    dist.all_reduce(present)
    used = [p for p, n in zip(params, present.tolist()) if n > 0]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in used:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        flat /= d.world
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def gather_rows(x: Tensor, d: Dist) -> Tensor:
    """Concatenate every process's rows (B_r, ...) in rank order, keeping the gradient path to
    this process's rows (open_clip's gather_with_grad): each rank then computes the loss over
    the global batch, and the all-gather's backward sums the gradients back to their owners."""
    if not d.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def broadcast_object(obj: object, d: Dist) -> object:
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_objects(obj: object, d: Dist) -> list[object]:
    """Every process's `obj`, in rank order (a one-item list in one process)."""
    if not d.enabled:
        return [obj]
    out: list[object] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# FSDP


def fully_shard_model(model: nn.Module, blocks: list[nn.Module]) -> None:
    """FSDP2: each Transformer block is one unit (gathered just before it runs, freed after),
    `model` the root unit holding the rest (embeddings, heads, projections)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block)
    fully_shard(model)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def save_sharded(directory: Path, name: str, tensors: dict[str, Tensor], d: Dist) -> None:
    """Each rank writes `name-RANK-of-WORLD.safetensors` with its local shard of every tensor
    (FSDP shards dim 0); rank 0 adds the index with every tensor's full shape."""
    local, seen = {}, set()
    for k, v in tensors.items():
        t = _local(v)
        if t.numel() and t.data_ptr() in seen:
            continue  # a tied alias (safetensors refuses shared storage; the tie is rebuilt on load)
        seen.add(t.data_ptr())
        local[k] = t.detach().contiguous().cpu()
    tensors = {k: v for k, v in tensors.items() if k in local}
    save_file(local, str(directory / f"{name}-{d.rank:05d}-of-{d.world:05d}.safetensors"))
    if d.main:
        index = {"world": d.world, "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        (directory / f"{name}.{SHARD_INDEX}").write_text(json.dumps(index))


def is_sharded(directory: Path, name: str) -> bool:
    return (directory / f"{name}.{SHARD_INDEX}").is_file()


def load_sharded(directory: Path, name: str) -> dict[str, Tensor]:
    """The full tensors of a sharded save, in one process: the ranks' dim-0 shards concatenated."""
    index = json.loads((directory / f"{name}.{SHARD_INDEX}").read_text())
    world = index["world"]
    parts = [load_file(str(directory / f"{name}-{r:05d}-of-{world:05d}.safetensors")) for r in range(world)]
    full = {}
    for key, shape in index["shapes"].items():
        chunks = [p[key] for p in parts if key in p]
        t = chunks[0] if len(shape) == 0 else torch.cat([c.reshape(-1, *shape[1:]) for c in chunks])
        if list(t.shape) != shape:
            raise ValueError(f"{directory}: tensor {key!r} reassembles to {tuple(t.shape)}, expected {tuple(shape)}")
        full[key] = t
    return full
