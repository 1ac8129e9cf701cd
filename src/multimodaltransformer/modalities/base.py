"""What a modality is to the rest of the library, and the registry of them.

A `Modality` bundles, for one kind of media (image, audio, ...): the manifest field and config key
that name it, the model keyword of a batch of it (the ecosystem's name: `pixel_values`,
`input_features`), its config dataclass, and how to build its processor (raw file -> stored
tensor -> batch) and its encoder (batch -> (B, N, C) tokens for the fusion). The model, the data
pipeline and the server loop over `MODALITIES`; adding one is a file under modalities/ that
calls `register`, plus a config entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor, nn


class MediaError(ValueError):
    """A media input cannot be used (unreadable, wrong kind, too long ...); the message names it."""


@dataclass(frozen=True, eq=False)
class MediaBytes:
    """An encoded image or audio file held in memory. `name` ("DIR/shard-000001.tar/KEY.png") names it in
    errors and is its str(), so caches keyed by str(ex.image) stay unique and short."""

    data: bytes = field(repr=False)
    name: str

    def __str__(self) -> str:
        return self.name


class Processor(Protocol):
    def prepare(self, source: Any, name: str | None = None) -> Tensor:
        """A raw input (path, bytes, array) -> the compact tensor a dataset caches; MediaError if unusable."""

    def collate(self, items: list[Tensor]) -> Tensor:
        """Prepared tensors -> the batch the encoder reads."""


@dataclass(frozen=True)
class Modality:
    name: str  # the manifest field and the model config key
    input_key: str  # the keyword of a batch of it in the model's calls
    config: type  # its config dataclass
    build_processor: Callable[[Any], Processor]
    build_encoder: Callable[[Any], nn.Module]  # -> module: batch -> (B, N, media_dim)
    media_dim: Callable[[Any], int]
    num_tokens: Callable[[Any], int]  # N
    # the keyword of its padding mask (B, frames), True at real frames, where a batch pads its items
    # to the longest (the processor's `frame_mask`); its encoder then takes it (audio)
    mask_key: str | None = None


MODALITIES: dict[str, Modality] = {}


def register(modality: Modality) -> Modality:
    MODALITIES[modality.name] = modality
    return modality


def mask_keys() -> dict[str, str]:
    """Padding-mask keyword -> modality name, e.g. {"feature_attention_mask": "audio"} (Qwen2-Audio's name)."""
    return {m.mask_key: m.name for m in MODALITIES.values() if m.mask_key}


def input_keys() -> dict[str, str]:
    """Model keyword -> modality name, e.g. {"pixel_values": "image", "input_features": "audio"}."""
    return {m.input_key: m.name for m in MODALITIES.values()}
