"""Media from requests, decoded defensively: data URLs, size limits, decompression bombs, SSRF.

Audio comes base64-encoded inside the request (`input_audio`), under the same size limit.

A request's image is a `data:image/...;base64,` URL. Remote `http(s)://` URLs are refused
unless their host is on the allow list (`--allow-remote-media`), and then fetched with a time
and size limit and no redirects; `file:` and every other scheme are always refused, so a
request can never make the server read its own disk or reach its network. Image headers are
read first: declared dimensions beyond `max_pixels` are refused before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from PIL import Image
from torch import Tensor

from ..modalities.audio import decode_audio
from ..modalities.base import MediaError
from ..modalities.image import load_image

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)


class MediaRejected(ValueError):
    """The media in a request cannot be used; the message says why (an HTTP 400)."""


@dataclass
class MediaPolicy:
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image
    max_pixels: int = 40_000_000  # declared width x height
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)  # remote hosts that may be fetched
    fetch_timeout_s: float = 10.0


def _b64decode(data: str, max_bytes: int, what: str = "image", where: str = "data URL") -> bytes:
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise MediaRejected(f"{what} larger than {max_bytes} bytes")
    try:
        return base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaRejected(f"invalid base64 in {where} ({e})") from None


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


def _fetch(url: str, policy: MediaPolicy) -> bytes:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in policy.allowed_hosts:
        raise MediaRejected(f"remote media from {host or url!r} is not allowed (the server allows: "
                            f"{sorted(policy.allowed_hosts) or 'data: URLs only'})")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "multimodaltransformer"}),
                         timeout=policy.fetch_timeout_s) as r:
            data = r.read(policy.max_bytes + 1)
    except MediaRejected:
        raise
    except Exception as e:  # network errors of every kind are the client's URL problem
        raise MediaRejected(f"could not fetch {url}: {e}") from None
    if len(data) > policy.max_bytes:
        raise MediaRejected(f"remote image larger than {policy.max_bytes} bytes")
    return data


def image_bytes(url: str, policy: MediaPolicy) -> bytes:
    """The encoded bytes an image URL refers to, or MediaRejected."""
    scheme = urlsplit(url[:16]).scheme.lower()
    if scheme == "data":
        m = _DATA_URL.match(url)
        if m is None:
            raise MediaRejected("malformed data URL: expected data:image/<type>;base64,<data>")
        mime = (m.group("mime") or "").lower()
        if not mime.startswith("image/"):
            raise MediaRejected(f"data URL of type {mime or 'unknown'!r}: expected an image/* type")
        if not m.group("b64"):
            raise MediaRejected("data URL is not base64-encoded")
        return _b64decode(url[m.end():], policy.max_bytes)
    if scheme in ("http", "https"):
        return _fetch(url, policy)
    raise MediaRejected(f"image URL scheme {scheme or url[:16]!r} is not supported: send a data: URL")


def decode_image(data: bytes, policy: MediaPolicy) -> Image.Image:
    """Bytes -> an RGB image, refusing non-images, truncated files and decompression bombs
    (modalities/image.py decodes; its errors become a 400)."""
    try:
        return load_image(data, "in the request", max_pixels=policy.max_pixels)
    except MediaError as e:
        raise MediaRejected(str(e)) from None
