"""What every family mapping shares: the error type, option checks, and applying a weight table.

A weight table maps each of our state-dict names to its source in the checkpoint: a tensor name,
or (name, transform) when the layout differs (a transpose, a slice of a packed tensor, a reshape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Union

from torch import Tensor, nn

from ..config import ConfigError
from ..models.base import tied_aliases
from ..nn.blocks import Activation

Source = Union[str, tuple[str, Callable[[Tensor], Tensor]]]
WeightTable = dict[str, Source]


class CheckpointError(ConfigError):
    """A checkpoint is unusable (unknown family, unsupported option, missing or mis-shaped tensor)."""


# Hugging Face `hidden_act` / `activation_function` names -> ours.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu", "swish": "silu",
}


def activation(name: str, family: str) -> Activation:
    if name not in ACTIVATIONS:
        raise CheckpointError(f"{family}: activation {name!r} is not supported (known: {sorted(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def reject_options(hf: dict[str, Any], family: str, **supported: Any) -> None:
    """Fail on config options we do not implement, rather than load a model that computes something else."""
    for key, value in supported.items():
        if key in hf and hf[key] != value:
            raise CheckpointError(f"{family}: config option {key}={hf[key]!r} is not supported (only {value!r})")


def first_int(value: Any) -> int | None:
    """HF token ids may be an int or a list of ints."""
    return value[0] if isinstance(value, list) and value else value if isinstance(value, int) else None


def transpose(t: Tensor) -> Tensor:
    return t.t()


def map_weights(family: str, table: WeightTable, state: dict[str, Tensor], model: nn.Module,
                source: str | Path, prefixes: Iterable[str] = ("",)) -> dict[str, Tensor]:
    """Fill every tensor of `model` from `state` through `table`; errors name the checkpoint tensor.

    Checkpoint names are tried under each of `prefixes` (a head model saves "bert.embeddings...",
    the base model "embeddings..."). Tensors the table does not use (heads, buffers) are ignored.
    """
    own = model.state_dict()
    unfilled = sorted(set(own) - tied_aliases(model) - set(table))
    if unfilled:
        raise CheckpointError(f"{family}: the weight mapping leaves {unfilled[:8]} unfilled")
    out = {}
    for ours, src in table.items():
        name, fn = (src, None) if isinstance(src, str) else src
        key = next((p + name for p in prefixes if p + name in state), None)
        if key is None:
            raise CheckpointError(f"{family} checkpoint {source}: missing tensor {name!r} (for {ours})")
        t = state[key]
        try:
            mapped = fn(t) if fn is not None else t
        except (RuntimeError, IndexError, ValueError) as e:
            raise CheckpointError(f"{family} checkpoint {source}: tensor {key!r} of shape {tuple(t.shape)} "
                                  f"cannot be mapped to {ours}: {e}") from e
        if mapped.shape != own[ours].shape:
            raise CheckpointError(f"{family} checkpoint {source}: tensor {key!r} has shape {tuple(t.shape)}, "
                                  f"which does not fit {ours} of shape {tuple(own[ours].shape)}")
        out[ours] = mapped.contiguous()
    return out
