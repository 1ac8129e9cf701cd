"""Composition from pretrained parts (the LLaVA / ClipCap recipe): image encoder -> projector -> LM.

Any image encoder `load_pretrained` reads (Hugging Face ViT or CLIP, ours, an EfficientNet-Lite, or
the image encoder (ViT or CNN) of a trained multimodal model) feeds its patch tokens (a CNN: its
final feature map, row by row) through a projector into any decoder LM it reads (GPT-2, Llama ...),
as a prefix to the text. Components can be frozen, and the LM can carry LoRA
adapters. The sources are read once; a saved composed model carries its parts' configs and
rebuilds without them. Legend: B batch, N image tokens, C dims.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..config import ConfigError, from_dict, to_dict
from ..fusion import EarlyFusion, FusionConfig
from ..modalities.image import ImageProcessor, ViTConfig, build_image_encoder
from ..modalities.text import TextTokenizer
from ..nn.lora import LoRAConfig, apply_lora, merge_lora
from .base import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, load_state_strict
from .core import MultimodalLM
from .efficientnet import EfficientNet, EfficientNetConfig
from .heads import HeadsConfig
from .multimodal import MultimodalTransformerModel
from .vit import VisionTransformer, VisionTransformerConfig

Component = Literal["vision", "projector", "language"]


@dataclass
class ComposedConfig:
    vision_source: str | None = None  # a directory load_pretrained reads (HF vit/clip, ours, a trained model);
    # None: a text-only model (fine-tuning a pretrained LM on text, the seeds' GPT-2 recipe)
    language_source: str | None = None  # a decoder LM directory (HF gpt2, ours)
    projector: Literal["linear", "mlp"] = "mlp"
    freeze: list[Component] = field(default_factory=lambda: ["vision"])
    lora: LoRAConfig | None = None  # adapters on the language model
    separator: str = "\n"  # ends the prompt; must be one token of the LM's tokenizer
    label_smoothing: float = 0.0
    # Filled in when the parts are read; a saved model rebuilds from these alone.
    vision: dict[str, Any] | None = None
    language: dict[str, Any] | None = None
    special_ids: dict[str, int] | None = None
    image: dict[str, Any] | None = None  # ImageProcessor fields
    # A CNN source (EfficientNet): the side of the square input (None: the resolution its weights
    # were trained at), and an average pool of its feature map to pool x pool tokens (None: h x w
    # tokens, 7 x 7 at 224 px). Fewer, coarser tokens make every LM step cheaper.
    image_size: int | None = None
    vision_pool: int | None = None
    # The context this model uses (None: the LM's own). SmolLM2's 8192 positions would make the
    # server's batched KV cache (2 x context slots a row) and every decode step over it huge.
    max_seq_len: int | None = None
    model_type: Literal["mmt-composed"] = "mmt-composed"


class VisionTokens(nn.Module):
    """Patch tokens (B, N, C) of the image encoder; the [CLS] token of HF-style ViTs is dropped."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.encoder.patch_tokens(pixel_values)  # the one ViT (nn/vit.py), whichever its configuration


class FeatureMapTokens(nn.Module):
    """A CNN's final feature map (B, C, h, w) -> tokens (B, h*w, C), row-major; with `pool`, averaged
    down to a pool x pool grid first (B, pool*pool, C)."""

    def __init__(self, network: nn.Module, image_size: int, pool: int | None = None) -> None:
        super().__init__()
        self.network, self.image_size, self.pool = network, image_size, pool

    def patch_tokens(self, pixel_values: Tensor) -> Tensor:
        x = self.network.features(pixel_values)  # (B, C, h, w)
        if self.pool is not None:
            x = F.adaptive_avg_pool2d(x, self.pool)  # (B, C, pool, pool)
        return x.flatten(2).transpose(1, 2)


def _efficientnet_parts(model: EfficientNet, config: ComposedConfig) -> tuple[nn.Module, dict[str, Any], ImageProcessor]:
    """The network without its classifier, and a processor that resizes the whole image (no centre
    crop: a small photo keeps its edges) and normalises as the weights expect (`preprocess`)."""
    net_cfg = dataclasses.replace(model.config, num_classes=0, id2label={})
    network = EfficientNet(net_cfg)
    network.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")})
    size = config.image_size or net_cfg.image_size
    pre = net_cfg.preprocess
    proc = ImageProcessor(size, tuple(pre.mean), tuple(pre.std))  # type: ignore[arg-type]
    vcfg = {"kind": "efficientnet", "image_size": size, "pool": config.vision_pool, "network": to_dict(net_cfg)}
    return FeatureMapTokens(network, size, config.vision_pool), vcfg, proc


def _vision_parts(model: nn.Module, config: ComposedConfig) -> tuple[nn.Module, dict[str, Any], ImageProcessor]:
    """(encoder, its config with a `kind`, image processor) from whatever load_pretrained returned."""
    from .clip import CLIP

    source = str(config.vision_source)
    if isinstance(model, EfficientNet):
        return _efficientnet_parts(model, config)
    if config.image_size is not None or config.vision_pool is not None:
        raise ConfigError(f"compose: image_size and vision_pool apply to a CNN vision source (EfficientNet), "
                          f"not to {source}")
    if isinstance(model, MultimodalTransformerModel) and model.image_encoder is not None:
        enc = model.image_encoder
        return enc, {"kind": "vit-encoder", **to_dict(enc.cfg)}, model.image_processor
    if isinstance(model, CLIP):
        model = model.vision_model
    if isinstance(model, VisionTransformer):
        proc = _hf_image_processor(Path(source), model.config.image_size)
        return model, {"kind": "vision-transformer", **to_dict(model.config)}, proc
    raise ConfigError(f"{source}: {type(model).__name__} is not an image encoder (use a ViT, CLIP, an "
                      "EfficientNet or a trained multimodal model)")


def _hf_image_processor(directory: Path, size: int) -> ImageProcessor:
    """Mean/std from a Hugging Face preprocessor_config.json when there is one."""
    file = directory / "preprocessor_config.json"
    if file.is_file():
        raw = json.loads(file.read_text())
        return ImageProcessor(size, tuple(raw.get("image_mean", (0.5,) * 3)), tuple(raw.get("image_std", (0.5,) * 3)))
    return ImageProcessor(size)


def _build_vision(cfg: dict[str, Any]) -> nn.Module:
    kind, rest = cfg["kind"], {k: v for k, v in cfg.items() if k != "kind"}
    if kind == "vit-encoder":
        return build_image_encoder(from_dict(ViTConfig, rest, "vision"))  # a trained model's ViT or CNN
    if kind == "efficientnet":
        network = EfficientNet(from_dict(EfficientNetConfig, rest["network"], "vision.network"))
        return FeatureMapTokens(network, rest["image_size"], rest["pool"])
    return VisionTransformer(from_dict(VisionTransformerConfig, rest, "vision"))


def _build_language(cfg: dict[str, Any]) -> nn.Module:
    from .gpt2 import GPT2
    from .llama import Llama

    cls = {c.config_class.model_type: c for c in (GPT2, Llama)}.get(cfg.get("model_type", ""))
    if cls is None or not hasattr(cls, "config_class"):
        raise ConfigError(f"language: unknown decoder LM model_type {cfg.get('model_type')!r}")
    return cls(from_dict(cls.config_class, cfg, "language"))


class ComposedModel(MultimodalLM):
    """Same interface as MultimodalTransformerModel (forward, generate, save_pretrained), composed of
    pretrained parts: VisionTokens over an image encoder, an early-fusion projector, a DecoderLM."""

    def __init__(self, config: ComposedConfig, vision: nn.Module | None, language: nn.Module,
                 tokenizer: TextTokenizer | None = None, image_processor: ImageProcessor | None = None) -> None:
        for name in ("tok_embed", "transformer", "lm_head"):
            if not hasattr(language, name):
                raise ConfigError(f"language: {type(language).__name__} is not a decoder LM (no {name})")
        dim = language.tok_embed.weight.shape[1]
        image_encoder = fusion = None
        n_media = 0
        if vision is not None:
            image_encoder = VisionTokens(vision)
            was_training = image_encoder.training
            with torch.no_grad():  # in eval mode: a probe must not move BatchNorm's running statistics
                probe = torch.zeros(1, 3, *(2 * [self._image_size(vision)]))
                n_media, media_dim = image_encoder.eval()(probe).shape[1:]
            image_encoder.train(was_training)
            fusion = EarlyFusion(int(media_dim), dim, config.projector)
        # the DecoderLM is the decoder itself: it offers the decoder interface (embed_tokens, hidden, head)
        super().__init__(language, FusionConfig("early", projector=config.projector), HeadsConfig(), dim,
                         image_encoder=image_encoder, fusion=fusion)
        self.config = config
        self.tokenizer = tokenizer
        self._num_media = int(n_media)
        if vision is not None:
            self.image_processor = image_processor or ImageProcessor(**(config.image or {}))
        parts = {"vision": self.image_encoder, "projector": self.fusion, "language": self.decoder}
        for name in config.freeze:
            if parts[name] is not None:
                parts[name].requires_grad_(False)
        if config.lora is not None:
            apply_lora(self.decoder, config.lora)

    @staticmethod
    def _image_size(vision: nn.Module) -> int:
        if isinstance(vision, FeatureMapTokens):
            return vision.image_size
        cfg = getattr(vision, "config", None) or vision.cfg
        return cfg.image_size

    @property
    def max_seq_len(self) -> int:
        lm = self.decoder.config.transformer.max_seq_len
        return min(lm, self.config.max_seq_len) if self.config.max_seq_len else lm

    @property
    def num_media_tokens(self) -> int:
        return self._num_media

    @property
    def label_smoothing(self) -> float:
        return self.config.label_smoothing

    def train(self, mode: bool = True) -> "ComposedModel":
        super().train(mode)
        if "vision" in self.config.freeze and self.image_encoder is not None:  # a frozen encoder keeps eval behaviour (BatchNorm, dropout)
            self.image_encoder.eval()
        return self

    def merge_lora(self) -> "ComposedModel":
        """Fold the LoRA adapters into the LM's weights (for export); the config drops `lora`."""
        merge_lora(self)
        self.config = dataclasses.replace(self.config, lora=None)
        return self

    @classmethod
    def assemble(cls, config: ComposedConfig, vision: nn.Module | None, language: nn.Module) -> "ComposedModel":
        """The parts loaded from `vision_source` and `language_source` (hub.compose loads them), assembled."""
        vcfg, proc = None, None
        if vision is not None:
            vision, vcfg, proc = _vision_parts(vision, config)
        hf_tok = getattr(language, "tokenizer", None)
        if hf_tok is None:
            raise ConfigError(f"{config.language_source}: the language model has no tokenizer files")
        eos = getattr(language.config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) and eos else eos  # the first EOS ends our targets
        if eos is None:
            raise ConfigError(f"{config.language_source}: the language model names no eos_token_id")
        tok = TextTokenizer.for_language_model(hf_tok, eos, separator=config.separator)
        config = dataclasses.replace(
            config, vision=vcfg, language=to_dict(language.config), special_ids=tok.special_ids,
            image={"image_size": proc.image_size, "mean": proc.mean, "std": proc.std} if proc else None)
        model = cls(config, vision, language, tok, proc)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "ComposedModel":
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a saved composed model")
        config = from_dict(ComposedConfig, json.loads((directory / CONFIG_FILE).read_text()), CONFIG_FILE)
        if config.language is None or config.special_ids is None:
            raise ConfigError(f"{directory / CONFIG_FILE}: a saved composed model needs language and special_ids")
        from tokenizers import Tokenizer

        tok = TextTokenizer(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), config.special_ids)
        vision = _build_vision(config.vision) if config.vision is not None else None
        model = cls(config, vision, _build_language(config.language), tok)
        state = load_file(str(directory / WEIGHTS_FILE))
        # saved before the LM became the decoder itself (it was wrapped as decoder.lm)
        state = {k.replace("decoder.lm.", "decoder.", 1) if k.startswith("decoder.lm.") else k: v
                 for k, v in state.items()}
        load_state_strict(model, state, directory / WEIGHTS_FILE)
        return model.to(map_location).eval()
