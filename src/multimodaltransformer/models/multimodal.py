"""The library's own multimodal model, built from one config: `MultimodalTransformer` is the config
(the seeds' name), `MultimodalTransformerModel` the module. The config names every part (a ViT
image encoder, further modalities under `media`, the fusion, a GPT decoder, the heads); the module
builds them and hands them to `MultimodalLM` (core.py), which does everything else. Each modality
(modalities/: image, audio ...) has its encoder and its own entry into the fusion (a projection and
a type embedding).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..fusion import FusionConfig, build_fusion, decoder_overrides, num_prefix_tokens
from ..modalities.base import MODALITIES
from ..modalities.image import ViTConfig, build_image_encoder, image_processor
from ..modalities.text import TOKENIZER_FILE, TextTokenizer
from .base import WEIGHTS_FILE, load_state_strict, read_model_config
from .core import ModelOutput, MultimodalLM
from .decoder import DecoderConfig, GPTDecoder
from .heads import HeadsConfig

__all__ = ["HeadsConfig", "ModelOutput", "MultimodalTransformer", "MultimodalTransformerModel"]

@dataclass
class MultimodalTransformer:
    """Config of the whole model; serialised as `config.json` next to the weights."""

    image: ViTConfig | None = field(default_factory=ViTConfig)
    # further modalities by name, each its modality's config: {"audio": {"dim": 128, "seconds": 8, ...}}
    # (the image stays at the top level, where every checkpoint since the first keeps it)
    media: dict[str, Any] = field(default_factory=dict)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    label_smoothing: float = 0.0
    model_type: str = "multimodaltransformer"

    def __post_init__(self) -> None:
        from ..config import from_dict

        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for name, cfg in list(self.media.items()):
            if name == "image" or name not in MODALITIES:
                raise ValueError(f"model.media.{name}: not a modality of model.media (choose from "
                                 f"{sorted(set(MODALITIES) - {'image'})}; the image is model.image)")
            spec = MODALITIES[name]
            self.media[name] = cfg if isinstance(cfg, spec.config) else from_dict(spec.config, cfg, f"media.{name}")
        if self.num_media_tokens >= self.decoder.max_seq_len:
            raise ValueError(f"decoder.max_seq_len {self.decoder.max_seq_len} leaves no room for text after "
                             f"{self.num_media_tokens} media tokens")

    @property
    def modalities(self) -> dict[str, Any]:
        """Every media modality of the model by name, image first, with its config."""
        return ({"image": self.image} if self.image is not None else {}) | self.media

    @property
    def num_media_tokens(self) -> int:
        """Prefix tokens the media add in front of the text (0 for cross-attention and late fusion)."""
        return sum(num_prefix_tokens(self.fusion, MODALITIES[name].num_tokens(cfg))
                   for name, cfg in self.modalities.items())


class MultimodalTransformerModel(MultimodalLM):
    """Image (optional), other media (optional) + text -> next-token logits, task-head logits and
    contrastive embeddings, all parts built from `config`.

    Parts may be injected (e.g. stub encoders in tests); those not given are built from `config`.
    """

    def __init__(self, config: MultimodalTransformer | None = None, *,
                 image_encoder: nn.Module | None = None, fusion: nn.Module | None = None,
                 decoder: GPTDecoder | None = None) -> None:
        if isinstance(config, type):  # the seeds write MultimodalTransformerModel(MultimodalTransformer)
            config = config()
        config = config or MultimodalTransformer()
        decoder = decoder or GPTDecoder(replace(config.decoder, **decoder_overrides(config.fusion)))
        C = config.decoder.dim
        if config.image is not None:
            image_encoder = image_encoder or build_image_encoder(config.image)  # a ViT or a CNN
            fusion = fusion or build_fusion(config.fusion, config.image.media_dim, C)
        else:
            image_encoder = fusion = None
        media = {}
        for name, cfg in config.media.items():
            if config.fusion.type in ("late", "joint", "graph"):
                raise ValueError(f"model.media.{name}: {config.fusion.type} fusion reads images only; "
                                 "use early, cross, gated or resampler fusion")
            spec = MODALITIES[name]
            media[name] = (spec.build_encoder(cfg), build_fusion(config.fusion, spec.media_dim(cfg), C))
            if getattr(cfg, "frozen", False):
                media[name][0].requires_grad_(False)
        if config.fusion.type == "joint" and config.heads.contrastive_dim is None:
            raise ValueError("fusion.type joint (a dual encoder) needs heads.contrastive_dim")
        ctc_dim = None
        if config.heads.ctc_weight > 0:  # one class per token, and CTC's blank (the last)
            if "audio" not in config.media:
                raise ValueError("heads.ctc_weight needs an audio encoder (model.media.audio)")
            ctc_dim = MODALITIES["audio"].media_dim(config.media["audio"])
        region_input = None
        if config.image is None and "video" in config.media:  # region heads on the clip's space-time tokens
            video = config.media["video"]
            region_input = {"dim": video.dim, "modality": "video", "sampled_frames": video.frames,
                            "frames_per_step": video.tubelet if video.attention == "divided" else video.frames}
        super().__init__(decoder, config.fusion, config.heads, C, image_encoder=image_encoder, fusion=fusion,
                         image_dim=config.image.media_dim if config.image else None, media=media, ctc_dim=ctc_dim,
                         vocab_size=config.decoder.vocab_size, region_input=region_input)
        self.config = config
        self.image_processor = image_processor(config.image) if config.image else None
        self.media_processors = {name: MODALITIES[name].build_processor(cfg) for name, cfg in config.media.items()}

    @property
    def max_seq_len(self) -> int:
        return self.config.decoder.max_seq_len

    @property
    def num_media_tokens(self) -> int:
        return self.config.num_media_tokens

    @property
    def label_smoothing(self) -> float:
        return self.config.label_smoothing

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
