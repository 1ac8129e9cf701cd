"""Pretrained checkpoints: `load_pretrained(dir)` for Hugging Face directories and our own, `convert`.

Each family is a module with the same small interface, so adding one (Llama, Whisper ...) is a
new mapping file plus an entry in FAMILIES:
  MODEL                      our nn.Module class, built from its config dataclass;
  PREFIXES                   prefixes a head model puts before the base model's tensor names;
  config_from_hf(hf, names)  config.json dict (+ the checkpoint's tensor names) -> our config;
  weight_map(cfg)            our tensor name -> checkpoint tensor name (+ transform);
  tokenizer_from_files(dir)  optional: a tokenizer from legacy vocab files when there is no tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..models.base import TOKENIZER_FILE, load_state_strict
from ..models.bert import BERT
from ..models.clip import CLIP
from ..models.composed import ComposedConfig, ComposedModel
from ..models.gpt2 import GPT2
from ..models.llama import Llama
from ..models.lm import DecoderLM, read_chat_template
from ..models.core import MultimodalLM
from ..models.efficientnet import EfficientNet
from ..models.multimodal import MultimodalTransformerModel
from ..models.resnet import ResNetClassifier
from ..models.t2i import TextToImage
from ..models.vit import VisionTransformer
from ..models.vqvae import VQVAE
from ..models.whisper import Whisper
from . import bert, clip, gpt2, llama, resnet, vit, whisper
from .ctranslate2 import is_ctranslate2, whisper_to_hf
from .mapping import CheckpointError, map_weights

__all__ = ["CheckpointError", "FAMILIES", "OWN_MODELS", "compose", "convert", "load_model", "load_pretrained"]

# Hugging Face `model_type` -> mapping module.
FAMILIES: dict[str, ModuleType] = {"gpt2": gpt2, "bert": bert, "vit": vit, "clip": clip, "whisper": whisper,
                                 "llama": llama, "resnet": resnet}
# Our own `model_type` -> model class with `from_pretrained`.
OWN_MODELS: dict[str, Any] = {
    "multimodaltransformer": MultimodalTransformerModel, "mmt-gpt2": GPT2, "mmt-bert": BERT,
    "mmt-vit": VisionTransformer, "mmt-clip": CLIP, "mmt-composed": ComposedModel,
    "mmt-whisper": Whisper, "mmt-llama": Llama, "mmt-resnet": ResNetClassifier,
    "mmt-efficientnet": EfficientNet, "mmt-vqvae": VQVAE, "mmt-t2i": TextToImage,
}


def read_config(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: not a model directory")
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return raw


def _read_one(file: Path) -> dict[str, Tensor]:
    if file.suffix == ".safetensors":
        return load_file(str(file))
    return torch.load(file, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects


def read_weights(directory: Path) -> dict[str, Tensor]:
    """model.safetensors, else pytorch_model.bin (weights only), each possibly sharded with an index."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return _read_one(directory / name)
        index = directory / f"{name}.index.json"
        if index.is_file():
            state: dict[str, Tensor] = {}
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                state |= _read_one(directory / shard)
            return state
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def read_tokenizer(directory: Path, family: ModuleType | None = None) -> Tokenizer | None:
    if (directory / TOKENIZER_FILE).is_file():
        return Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    from_files = getattr(family, "tokenizer_from_files", None)
    return from_files(directory) if from_files is not None else None


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A Hugging Face directory (config.json + weights) or one of ours -> this library's model, in eval mode.

    The tokenizer, when the directory has one, is attached as `model.tokenizer`. A single .gguf file
    (llama family) loads too, with its tokenizer and chat template (hub/gguf.py), and so does a .pth
    state dict of EfficientNet-Lite (hub/efficientnet.py; any other .pth is a CheckpointError).
    """
    directory = Path(path)
    if directory.suffix == ".gguf" and directory.is_file():
        from .gguf import load_gguf

        return load_gguf(directory).to(map_location)
    if directory.suffix == ".pth" and directory.is_file():
        from .efficientnet import load_pth

        return load_pth(directory).to(map_location)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a model directory")
    if is_ctranslate2(directory):  # faster-whisper's format: renamed to Hugging Face's, then mapped
        raw, state = whisper_to_hf(directory)
        return _from_family(directory, raw, state, whisper, map_location)
    raw = read_config(directory)
    model_type = raw.get("model_type")
    if model_type in OWN_MODELS:
        return OWN_MODELS[model_type].from_pretrained(directory, map_location=map_location)
    family = FAMILIES.get(model_type)
    if family is None:
        raise CheckpointError(f"{directory / 'config.json'}: unknown model_type {model_type!r}; supported: "
                              f"{sorted(FAMILIES)} (Hugging Face) and {sorted(OWN_MODELS)} (ours)")
    return _from_family(directory, raw, read_weights(directory), family, map_location)


def _from_family(directory: Path, raw: dict[str, Any], state: dict[str, Tensor], family: ModuleType,
                 map_location: str | torch.device) -> nn.Module:
    """Our model of a Hugging Face family from its config dict and HF-named tensors."""
    try:
        cfg = family.config_from_hf(raw, set(state))
    except (TypeError, ValueError) as e:  # a config our dataclasses reject (e.g. dim not divisible by heads)
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{family.FAMILY} config {directory / 'config.json'}: {e}") from e
    model = family.MODEL(cfg)
    weights = map_weights(family.FAMILY, family.weight_map(cfg), state, model, directory, family.PREFIXES)
    load_state_strict(model, weights, directory)
    model.tokenizer = read_tokenizer(directory, family)
    if isinstance(model, DecoderLM):
        model.chat_template = read_chat_template(directory)
    return model.to(map_location).eval()


def load_model(path: str | Path, device: str = "auto", speech: bool = False, chat: bool = False,
               embed: bool = False) -> nn.Module:
    """A model that answers prompts (ours: trained or composed by this library; with `speech`, a
    Whisper model too, which transcribes; with `chat`, a decoder LM with a chat template, which
    chats in text; with `embed`, a CLIP or BERT/MiniLM, which embeds: as `mmt serve` serves them)
    on `device` ("auto": cuda if available), tokenizer checked. `path` may be a `package:NAME`
    source (hub/packages.py)."""
    from ..config import ConfigError
    from .packages import resolve_model_source

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(resolve_model_source(str(path)), map_location=device)
    lm = chat and isinstance(model, DecoderLM)
    encoder = embed and isinstance(model, (CLIP, BERT))
    if not (isinstance(model, MultimodalLM) or speech and isinstance(model, Whisper) or lm or encoder):
        raise ConfigError(f"{path}: a {type(model).__name__} does not answer prompts about images; "
                          "use a model trained or composed by this library")
    if lm and not model.chat_template:
        raise ConfigError(f"{path}: this {type(model).__name__} has no chat template (tokenizer_config.json, "
                          "chat_template.jinja or the GGUF's tokenizer.chat_template): text chat needs one")
    if model.tokenizer is None:
        from ..data.manifest import DataError

        raise DataError(f"{path}: no tokenizer next to the model (tokenizer.json; Whisper: or vocab.json + merges.txt)")
    return model


def compose(config: ComposedConfig) -> ComposedModel:
    """A model of pretrained parts: the image encoder of `vision_source` (optional), a projector and
    the decoder LM of `language_source`, each read by `load_pretrained` (a `package:NAME` source: the
    model file an installed package ships, hub/packages.py)."""
    from ..config import ConfigError
    from .packages import resolve_model_source

    if not config.language_source:
        raise ConfigError("compose: give language_source (a decoder LM directory)")
    vision = load_pretrained(resolve_model_source(config.vision_source)) if config.vision_source else None
    return ComposedModel.assemble(config, vision, load_pretrained(resolve_model_source(config.language_source)))


def convert(path: str | Path, out: str | Path) -> Path:
    """Write any supported checkpoint in this library's format: config.json + model.safetensors + tokenizer.json.
    `path` may be a `package:NAME` source (the GGUF an installed package ships)."""
    from .packages import resolve_model_source

    model = load_pretrained(resolve_model_source(str(path)))
    model.save_pretrained(out)
    return Path(out)
