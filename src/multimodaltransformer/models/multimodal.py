"""The multimodal model: image encoder -> fusion -> GPT decoder, with save/load.

`MultimodalTransformer` is the config (the seeds' name), `MultimodalTransformerModel` the module.
Legend: B batch, N image tokens, T text tokens, S = N + T, C decoder dim, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..fusion import EarlyFusion
from ..modalities.image import ImageProcessor, ViTConfig, ViTEncoder
from ..modalities.text import TOKENIZER_FILE, TextTokenizer
from .base import WEIGHTS_FILE, load_state_strict, read_model_config, write_model_dir
from .decoder import DecoderConfig, GPTDecoder

IGNORE_INDEX = -100


@dataclass
class MultimodalTransformer:
    """Config of the whole model; serialised as `config.json` next to the weights."""

    image: ViTConfig | None = field(default_factory=ViTConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    label_smoothing: float = 0.0
    model_type: str = "multimodaltransformer"

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        media = self.image.num_patches if self.image else 0
        if media >= self.decoder.max_seq_len:
            raise ValueError(
                f"decoder.max_seq_len {self.decoder.max_seq_len} leaves no room for text after {media} image tokens")

    @property
    def num_media_tokens(self) -> int:
        return self.image.num_patches if self.image else 0


class ModelOutput(NamedTuple):
    loss: Tensor | None
    logits: Tensor  # (B, T, V), aligned with input_ids


def causal_mask(mask: Tensor, q_start: int, q_len: int, k_len: int) -> Tensor:
    """Boolean attention mask (B, 1, q_len, k_len) for queries at absolute q_start.. over keys 0..k_len.

    A query sees earlier keys whose `mask` (B, >=k_len) is True, and always itself, so
    padded rows never become all-masked (which would give NaN).
    """
    q = torch.arange(q_start, q_start + q_len, device=mask.device)[:, None]
    k = torch.arange(k_len, device=mask.device)[None, :]
    allowed = (k <= q) & mask[:, None, None, :k_len]
    return allowed | (k == q)


def segment_mask(segments: Tensor, n_prefix: int) -> Tensor:
    """Mask (B, 1, S, S) for packed rows: prefix tokens, then text segments 1..K (0 = padding).

    Each segment sees the shared prefix (the image) and, causally, its own tokens only, so K
    examples packed behind one image train exactly as K separate sequences would.
    """
    S = segments.shape[1]
    idx = torch.arange(S, device=segments.device)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None, :]
    allowed = (idx[None, :] <= idx[:, None]) & (same | (idx < n_prefix)[None, None, :])
    return (allowed | torch.eye(S, dtype=torch.bool, device=segments.device))[:, None]


class MultimodalTransformerModel(nn.Module):
    """Image (optional) + text -> next-token logits; `generate` decodes greedily with a KV cache.

    Parts may be injected (e.g. stub encoders in tests); those not given are built from `config`.
    """

    def __init__(self, config: MultimodalTransformer | None = None, *,
                 image_encoder: nn.Module | None = None, fusion: nn.Module | None = None,
                 decoder: GPTDecoder | None = None) -> None:
        super().__init__()
        if isinstance(config, type):  # the seeds write MultimodalTransformerModel(MultimodalTransformer)
            config = config()
        self.config = config = config or MultimodalTransformer()
        self.decoder = decoder or GPTDecoder(config.decoder)
        if config.image is not None:
            self.image_encoder = image_encoder or ViTEncoder(config.image)
            self.fusion = fusion or EarlyFusion(config.image.dim, config.decoder.dim)
        else:
            self.image_encoder = self.fusion = None
        self.tokenizer: TextTokenizer | None = None
        self.image_processor = ImageProcessor(config.image.image_size) if config.image else None

    # ---- forward -------------------------------------------------------------------------
    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None,
              pixel_values: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decoder input embeddings (B, S, C) and key mask (B, S) with any image tokens in front."""
        text = self.decoder.embed(input_ids)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.image_encoder is None:
            if pixel_values is not None:
                raise ValueError("this model has no image encoder but pixel_values were given")
            return text, mask
        if pixel_values is None:
            raise ValueError("this model needs pixel_values (B, 3, H, W)")
        return self.fusion(self.image_encoder(pixel_values), text, mask)

    def forward(self, batch: Mapping[str, Any] | None = None, *, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                labels: Tensor | None = None, segment_ids: Tensor | None = None, **_: Any) -> ModelOutput:
        """Call as `model(batch)` with a dict from the collator, or with keyword tensors.

        `labels` (B, T) are aligned with `input_ids` (IGNORE_INDEX where no loss); the shift
        happens here, as in Hugging Face models. `segment_ids` (B, T), from the packing
        collator, mark several examples that share one image (0 = padding): positions restart
        and attention stays within each example.
        """
        if batch is not None:
            return self.forward(**{k: v for k, v in batch.items() if isinstance(v, Tensor)})
        if input_ids is None:
            raise ValueError("input_ids are required")
        if segment_ids is not None:
            attention_mask = segment_ids > 0
        x, mask = self.embed(input_ids, attention_mask, pixel_values)
        S = x.shape[1]
        if segment_ids is None:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            attn = causal_mask(mask, 0, S, S)
        else:
            n = S - input_ids.shape[1]
            segments = torch.cat([segment_ids.new_zeros(segment_ids.shape[0], n), segment_ids], dim=1)
            idx = torch.arange(S, device=x.device).expand_as(segments)
            starts = torch.cat([torch.ones_like(segments[:, :1], dtype=torch.bool),
                                segments[:, 1:] != segments[:, :-1]], dim=1)
            seg_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values
            positions = torch.where(idx < n, idx, idx - seg_start + n)  # each segment restarts after the prefix
            positions = positions.masked_fill((idx >= n) & (segments == 0), 0)  # padding
            attn = segment_mask(segments, n)
        if int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"sequence of {int(positions.max()) + 1} positions exceeds max_seq_len {self.max_seq_len}")
        logits = self.decoder(x, positions, attn)
        logits = logits[:, S - input_ids.shape[1]:]  # text positions only
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)
        return ModelOutput(loss, logits)

    # ---- incremental decoding (used by generation/) ----------------------------------------
    @property
    def max_seq_len(self) -> int:
        """Positions the decoder can address, image tokens included."""
        return self.config.decoder.max_seq_len

    @property
    def num_media_tokens(self) -> int:
        """Tokens the image adds in front of the text."""
        return self.config.num_media_tokens

    @property
    def label_smoothing(self) -> float:
        return self.config.label_smoothing

    def setup_caches(self, batch: int, max_len: int) -> None:
        self.decoder.transformer.setup_caches(batch, max_len)

    def clear_caches(self) -> None:
        self.decoder.transformer.clear_caches()

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int) -> Tensor:
        """Run embeddings x (B, T, C) at absolute slots start..start+T through the cached decoder.

        key_mask (B, L) marks the cache slots holding real tokens; returns logits (B, T, V).
        """
        T, L = x.shape[1], key_mask.shape[1]
        input_pos = torch.arange(start, start + T, device=x.device)
        return self.decoder(x, positions, causal_mask(key_mask, start, T, L), input_pos=input_pos)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 pixel_values: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Prompt ids (B, T) -> prompt + new tokens (B, T + new); see `generation.generate`."""
        from ..generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)

    # ---- save / load -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (+ tokenizer.json when a tokenizer is attached)."""
        directory = write_model_dir(self, directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"
                        ) -> "MultimodalTransformerModel":
        directory = Path(directory)
        model = cls(read_model_config(directory, MultimodalTransformer))
        state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
        load_state_strict(model, state, directory / WEIGHTS_FILE)
        if (directory / TOKENIZER_FILE).is_file():
            model.tokenizer = TextTokenizer.from_pretrained(directory)
        return model.to(map_location).eval()
