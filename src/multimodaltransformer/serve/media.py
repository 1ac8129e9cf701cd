"""Media from requests, decoded defensively: data URLs, size limits, decompression bombs, SSRF.

Audio comes base64-encoded inside the request (`input_audio`), under the same size limit.

A request's image is a `data:image/...;base64,` URL, its video a `data:video/...;base64,` URL
(or an animated GIF / PNG / WebP: PIL reads their frames). Remote `http(s)://` URLs are refused
unless their host is on the allow list (`--allow-remote-media`), and then fetched with a time
and size limit and no redirects; `file:` and every other scheme are always refused, so a
request can never make the server read its own disk or reach its network. Image headers are
read first: declared dimensions beyond `max_pixels` are refused before any pixel is decoded;
a video's frames are held to the same limit (modalities/video.py `VideoLimits`).
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.request
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from PIL import Image
from torch import Tensor

from ..modalities.audio import decode_audio
from ..modalities.base import MediaError
from ..modalities.image import load_image
from ..modalities.video import VideoProcessor

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


class MediaRejected(ValueError):
    """The media in a request cannot be used; the message says why (an HTTP 400)."""


@dataclass
class MediaPolicy:
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image (or audio clip)
    max_video_bytes: int = 50 * 1024 * 1024  # encoded size of one video
    max_pixels: int = 40_000_000  # declared width x height (of an image, or of each video frame)
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # remote hosts that may be fetched
    fetch_timeout_s: float = 10.0


def _b64decode(data: str, max_bytes: int, what: str = "image", where: str = "data URL") -> bytes:
    if len(data) > (max_bytes * 4) // 3 + 4:  # refused before decoding; the exact check follows
        raise MediaRejected(f"{what} larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaRejected(f"invalid base64 in {where} ({e})") from None
    if len(raw) > max_bytes:
        raise MediaRejected(f"{what} larger than {max_bytes} bytes")
    return raw


def audio_bytes(data: str, policy: MediaPolicy) -> bytes:
    """The bytes of an `input_audio` part (base64 in the request itself: never fetched)."""
    raw = _b64decode(data, policy.max_bytes, "audio", "input_audio.data")
    if not raw:
        raise MediaRejected("input_audio.data is empty")
    return raw


def input_audio(data: str, fmt: str, policy: MediaPolicy, sampling_rate: int, max_seconds: float) -> Tensor:
    """An `input_audio` part -> a mono (N,) float32 waveform at `sampling_rate`, or MediaRejected:
    a clip longer than `max_seconds` (the model's window) is refused, not silently cut."""
    try:
        return decode_audio(audio_bytes(data, policy), fmt, sampling_rate, max_seconds=max_seconds + 0.01)
    except MediaError as e:
        raise MediaRejected(f"input_audio: {e}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could lead to a host not on the list
        raise MediaRejected("remote media answered with a redirect; redirects are not followed")


def _fetch(url: str, policy: MediaPolicy, max_bytes: int, what: str) -> bytes:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in policy.allowed_hosts:
        raise MediaRejected(f"remote media from {host or url!r} is not allowed (the server allows: "
                            f"{sorted(policy.allowed_hosts) or 'data: URLs only'})")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "multimodaltransformer"}),
                         timeout=policy.fetch_timeout_s) as r:
            data = r.read(max_bytes + 1)
    except MediaRejected:
        raise
    except Exception as e:  # network errors of every kind are the client's URL problem
        raise MediaRejected(f"could not fetch {url}: {e}") from None
    if len(data) > max_bytes:
        raise MediaRejected(f"remote {what} larger than {max_bytes} bytes")
    return data


def _url_bytes(url: str, policy: MediaPolicy, what: str, types: tuple[str, ...], max_bytes: int) -> bytes:
    """The bytes a data URL holds or an allowed remote URL serves, or MediaRejected. `types` are the
    MIME types a data URL may declare; one ending in "/" is a prefix ("image/": every image type)."""
    scheme = urlsplit(url[:16]).scheme.lower()
    if scheme == "data":
        expected = ", ".join(t + "*" if t.endswith("/") else t for t in types)
        m = _DATA_URL.match(url)
        if m is None:
            raise MediaRejected(f"malformed {what} data URL: expected data:<type>;base64,<data> with type {expected}")
        mime = (m.group("mime") or "").lower()
        if not any(mime.startswith(t) if t.endswith("/") else mime == t for t in types):
            raise MediaRejected(f"data URL of type {mime or 'unknown'!r}: expected {expected} for the {what}")
        if not m.group("b64"):
            raise MediaRejected(f"{what} data URL is not base64-encoded")
        data = _b64decode(url[m.end():], max_bytes, what, f"{what} data URL")
        if not data:
            raise MediaRejected(f"{what} data URL is empty")
        return data
    if scheme in ("http", "https"):
        return _fetch(url, policy, max_bytes, what)
    raise MediaRejected(f"{what} URL scheme {scheme or url[:16]!r} is not supported: send a data: URL")


def image_bytes(url: str, policy: MediaPolicy) -> bytes:
    """The encoded bytes an image URL refers to, or MediaRejected."""
    return _url_bytes(url, policy, "image", ("image/",), policy.max_bytes)


# animated images are clips too: modalities/video.py reads their frames with PIL
VIDEO_TYPES = ("video/", "image/gif", "image/apng", "image/png", "image/webp")


def video_bytes(url: str, policy: MediaPolicy) -> bytes:
    """The encoded bytes a `video_url` refers to (MP4, WebM ... or an animated image), or MediaRejected."""
    return _url_bytes(url, policy, "video", VIDEO_TYPES, policy.max_video_bytes)


def decode_image(data: bytes, policy: MediaPolicy) -> Image.Image:
    """Bytes -> an RGB image, refusing non-images, truncated files and decompression bombs
    (modalities/image.py decodes; its errors become a 400)."""
    try:
        return load_image(data, "in the request", max_pixels=policy.max_pixels)
    except MediaError as e:
        raise MediaRejected(str(e)) from None


def decode_video(data: bytes, processor: VideoProcessor, policy: MediaPolicy) -> Tensor:
    """Bytes -> the processor's (T, 3, H, W) uint8 frames, refusing unreadable files, still images and
    clips over the processor's limits, with frames held to `max_pixels` too (errors become a 400)."""
    limits = replace(processor.limits, max_pixels=min(processor.limits.max_pixels, policy.max_pixels))
    try:
        return replace(processor, limits=limits).prepare(data, "video_url")
    except MediaError as e:
        raise MediaRejected(str(e)) from None
