"""Video: the reader (any container PyAV / FFmpeg decodes, animated GIF / PNG / WebP, a folder of
frames), the processor (a fixed number of frames sampled uniformly, resized, normalised), the
space-time encoder, and their registration as the "video" modality (`pixel_values_videos`, the
name Hugging Face's video LMs use).

The encoder is the image ViT (nn/vit.py) run on every frame, with a temporal attention sub-layer
in front of each block (TimeSformer's divided space-time attention, Bertasius et al. 2021): a
patch attends over time to the same patch of the other frames (RoPE over the frame index), then
over space within its frame. Its output projections and the time embedding start at zero, so a
pretrained image encoder loaded into it (`load_image_encoder`) starts unchanged, frame by frame;
tubelets of several frames start from their central frame (ViViT's initialisation, Arnab et al.
2021). `attention: mean` is the baseline that cannot see time: frames encoded alone, averaged.
Legend: B batch, T frames, T' = T / tubelet time steps, N patches a frame, C model dim.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from ..nn import TransformerConfig
from ..nn.attention import MultiHeadAttention
from ..nn.blocks import build_norm
from ..nn.position import RotaryPosition
from ..nn.vit import ViT, VisionTransformerConfig
from .base import MediaBytes, MediaError, Modality, register
from .image import ImageProcessor, ViTConfig, load_image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
ANIMATED_SUFFIXES = (".gif", ".png", ".apng", ".webp")  # PIL reads their frames; the rest go to PyAV


@dataclass(frozen=True)
class VideoLimits:
    """What a video may hold before it is refused, checked from its header where it says, else while
    decoding: no untrusted clip can make the reader decode or keep more than this."""

    max_pixels: int = 3840 * 2160  # per frame
    max_frames: int = 10_000
    max_seconds: float = 600.0
    max_voxels: int = 2_000_000_000  # width x height x frames

    def check_frame(self, name: str, w: int, h: int, frames: int) -> None:
        if w <= 0 or h <= 0:
            raise MediaError(f"video {name} has frames of {w}x{h} pixels")
        if w * h > self.max_pixels:
            raise MediaError(f"video {name} is {w}x{h} pixels a frame, over the limit of {self.max_pixels}")
        if frames > self.max_frames:
            raise MediaError(f"video {name} has over {self.max_frames} frames, the limit")
        if w * h * frames > self.max_voxels:
            raise MediaError(f"video {name} is {w}x{h} x {frames} frames, over the limit of {self.max_voxels} "
                             f"pixels in all")


def _resized(im: Image.Image, size: int | None) -> np.ndarray:
    im = im.convert("RGB")
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def _frames_folder(folder: Path, size: int | None, limits: VideoLimits) -> list[np.ndarray]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise MediaError(f"video folder {folder} holds no frames ({', '.join(FRAME_SUFFIXES)} files)")
    if len(files) > limits.max_frames:
        raise MediaError(f"video folder {folder} has {len(files)} frames, over the limit of {limits.max_frames}")
    return [_resized(load_image(p, max_pixels=limits.max_pixels), size) for p in files]


def _frames_pil(fp: Any, name: str, size: int | None, limits: VideoLimits) -> list[np.ndarray] | None:
    """An animated GIF / PNG / WebP's frames; None when PIL does not know the file (PyAV's turn)."""
    try:
        im = Image.open(fp)
    except (UnidentifiedImageError, OSError):
        return None
    with im:
        n = getattr(im, "n_frames", 1)
        limits.check_frame(name, *im.size, n)
        frames = []
        try:
            for k in range(n):
                im.seek(k)
                frames.append(_resized(im, size))
        except (OSError, EOFError, ValueError) as e:
            raise MediaError(f"cannot read video {name}: frame {len(frames)} is damaged ({e})") from e
    return frames


def _frames_av(fp: Any, name: str, size: int | None, limits: VideoLimits, pick: int | None) -> list[np.ndarray]:
    try:
        import av
    except ImportError as e:
        raise MediaError(f"reading video {name} needs PyAV: pip install av (or multimodaltransformer[video])") from e
    try:
        with av.open(fp, mode="r") as container:
            if not container.streams.video:
                raise MediaError(f"{name} holds no video stream")
            stream = container.streams.video[0]
            seconds = float(container.duration / av.time_base) if container.duration else 0.0
            if seconds > limits.max_seconds:
                raise MediaError(f"video {name} lasts {seconds:.0f} s, over the limit of {limits.max_seconds:.0f} s")
            limits.check_frame(name, stream.codec_context.width, stream.codec_context.height, stream.frames or 1)
            # a header that says how many frames: keep only those sampled (memory stays ~pick frames)
            keep = set(sample_indices(stream.frames, pick)) if pick and stream.frames > 1 else None
            frames, count = [], 0
            for frame in container.decode(stream):
                count += 1
                limits.check_frame(name, frame.width, frame.height, count)
                if keep is None or count - 1 in keep:
                    frames.append(_resized(frame.to_image(), size))
            if keep is not None and len(frames) != len(keep):  # the header was wrong: sample what came
                if hasattr(fp, "seek"):
                    fp.seek(0)
                return _frames_av(fp, name, size, limits, None)
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:  # corrupt, truncated, not a media file
        reason = getattr(e, "strerror", None) or str(e)
        raise MediaError(f"cannot read video {name}: {reason}") from e
    return frames


def load_video(source: str | Path | bytes | MediaBytes, name: str | None = None, size: int | None = None,
               limits: VideoLimits = VideoLimits(), pick: int | None = None) -> list[np.ndarray]:
    """Every frame of a video, as (H, W, 3) uint8 arrays (resized to size x size when `size` is
    given), or with `pick`, `pick` frames sampled uniformly (`sample_indices`); MediaError, naming
    the file, when it cannot be read, holds no frames or one (a still image is not a video), or
    exceeds `limits`."""
    if isinstance(source, MediaBytes):
        source, name = source.data, name or source.name
    if isinstance(source, bytes):
        name = name or "<bytes>"
        frames = _frames_pil(io.BytesIO(source), name, size, limits)
        if frames is None:
            frames = _frames_av(io.BytesIO(source), name, size, limits, pick)
    else:
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            frames = _frames_folder(path, size, limits)
        elif not path.is_file():
            raise MediaError(f"video file not found: {path}")
        else:
            frames = _frames_pil(path, name, size, limits) if path.suffix.lower() in ANIMATED_SUFFIXES else None
            if frames is None:
                frames = _frames_av(str(path), name, size, limits, pick)
    if not frames:
        raise MediaError(f"video {name} has no frames")
    if len(frames) == 1:
        raise MediaError(f"{name} has a single frame: a still image, not a video (give it as an image)")
    return [frames[i] for i in sample_indices(len(frames), pick)] if pick and len(frames) != pick else frames


def sample_indices(total: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over `total` frames: the middle of each of n equal segments."""
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


@dataclass
class VideoProcessor:
    """A video -> `num_frames` frames sampled uniformly, resized to `image_size`, normalised as images."""

    image_size: int = 64
    num_frames: int = 8
    limits: VideoLimits = VideoLimits()

    def prepare(self, source: Any, name: str | None = None) -> Tensor:
        """A video (path, folder of frames, bytes) -> (T, 3, H, W) uint8, the form datasets cache."""
        frames = np.stack(load_video(source, name, self.image_size, self.limits, pick=self.num_frames))
        return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()

    def collate(self, videos: list[Tensor]) -> Tensor:
        """Prepared videos -> `pixel_values_videos` (B, T, 3, H, W)."""
        return ImageProcessor(self.image_size).normalize(torch.stack(videos))


@dataclass
class VideoConfig(ViTConfig):
    """The video modality: the image ViT's layout per frame (ViTConfig), `frames` sampled a clip,
    `tubelet` consecutive frames a token, divided space-time attention or the frame mean."""

    frames: int = 8
    tubelet: int = 1
    attention: Literal["divided", "mean"] = "divided"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder != "vit":
            raise ValueError(f"the video encoder is a ViT over frames: encoder {self.encoder!r} is for images only")
        if self.attention not in ("divided", "mean"):
            raise ValueError(f"video attention must be 'divided' or 'mean', got {self.attention!r}")
        if self.frames < 1 or self.tubelet < 1 or self.frames % self.tubelet:
            raise ValueError(f"video frames ({self.frames}) must be a positive multiple of tubelet ({self.tubelet})")
        if self.position != "none" or self.embed_norm:
            raise ValueError("a video encoder places its patches by patch_positions (and time by RoPE): leave "
                             "position 'none' and embed_norm off")
        if (self.dim // self.heads) % 2:
            raise ValueError(f"video attention needs an even head dim (RoPE over time), got {self.dim // self.heads}")

    @property
    def steps(self) -> int:  # T'
        return self.frames // self.tubelet

    @property
    def num_tokens(self) -> int:
        return self.num_patches * (self.steps if self.attention == "divided" else 1)

    def vit_config(self) -> VisionTransformerConfig:
        stack = TransformerConfig(**{f.name: getattr(self, f.name) for f in fields(TransformerConfig)})
        return VisionTransformerConfig(stack, self.image_size, self.patch_size, self.channels, stem=self.stem,
                                       cls_token=False, patch_positions=self.patch_positions, pooler="none")


class TemporalAttention(nn.Module):
    """x + Attn(LN(x)) over time for each patch, RoPE on the frame index; zero-initialised output."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.attn = MultiHeadAttention(cfg.dim, cfg.heads, cfg.bias, cfg.dropout)
        self.rope = RotaryPosition(cfg.dim // cfg.heads, cfg.rope_base)
        nn.init.zeros_(self.attn.out_proj.weight)
        if self.attn.out_proj.bias is not None:
            nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, N, C = x.shape
        t = x.transpose(1, 2).reshape(B * N, T, C)
        t = self.attn(self.norm(t), rotary=self.rope.rotary(torch.arange(T, device=x.device)))
        return x + t.view(B, N, T, C).transpose(1, 2)


class VideoEncoder(ViT):
    """pixel_values_videos (B, T, 3, H, W) -> (B, T' N, C) space-time tokens, time-major (or (B, N, C),
    the frames' mean, with `attention: mean`). Its image parts carry the image ViT's parameter names."""

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__(cfg.vit_config())
        self.cfg = cfg
        C, k = cfg.dim, cfg.tubelet
        self.tubelet = None
        if k > 1:  # k frames' patch embeddings -> one token, starting as the central frame's
            self.tubelet = nn.Linear(k * C, C)
            with torch.no_grad():
                self.tubelet.weight.zero_()
                self.tubelet.weight[:, (k // 2) * C:(k // 2 + 1) * C] = torch.eye(C)
                self.tubelet.bias.zero_()
        self.temporal = None
        if cfg.attention == "divided":
            self.time_embed = nn.Parameter(torch.zeros(1, cfg.steps, 1, C))
            self.temporal = nn.ModuleList(TemporalAttention(cfg) for _ in range(cfg.depth))

    def load_image_encoder(self, image_encoder: nn.Module) -> None:
        """Start from a trained image encoder of the same layout (a ViTEncoder): its stem, positions,
        blocks and norm; the temporal parts stay as initialised (zero: a static clip's tokens are then
        the image encoder's tokens of its frame)."""
        missing, unexpected = self.load_state_dict(image_encoder.state_dict(), strict=False)
        if unexpected or any(not k.startswith(("tubelet.", "temporal.", "time_embed")) for k in missing):
            raise ValueError(f"not an image encoder of this layout: missing {missing}, unexpected {unexpected}")

    def forward(self, pixel_values_videos: Tensor) -> Tensor:
        cfg, x = self.cfg, pixel_values_videos
        size = cfg.image_size
        if x.dim() != 5 or x.shape[1] != cfg.frames or x.shape[2:] != (cfg.channels, size, size):
            raise ValueError(f"pixel_values_videos must be (batch, {cfg.frames} frames, {cfg.channels}, {size}, "
                             f"{size}), got {tuple(x.shape)}")
        B, T = x.shape[:2]
        x = self.patch_embed(x.flatten(0, 1)).flatten(2).transpose(1, 2)  # (B T, N, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        N, C = x.shape[1:]
        x = x.reshape(B, T, N, C)
        if self.tubelet is not None:
            k = cfg.tubelet
            x = self.tubelet(x.reshape(B, T // k, k, N, C).permute(0, 1, 3, 2, 4).reshape(B, T // k, N, k * C))
        steps = x.shape[1]
        if self.temporal is not None:
            x = x + self.time_embed
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.blocks):
            if self.temporal is not None:
                x = self.temporal[i](x)
            x = block(x.reshape(B * steps, N, C)).reshape(B, steps, N, C)
        x = self.transformer.ln_f(x)
        return x.reshape(B, steps * N, C) if self.temporal is not None else x.mean(1)


VIDEO = register(Modality("video", "pixel_values_videos", VideoConfig,
                          lambda cfg: VideoProcessor(cfg.image_size, cfg.frames), VideoEncoder,
                          lambda cfg: cfg.dim, lambda cfg: cfg.num_tokens))
