"""Audio: WAV loading, resampling, the log-mel front end vs transformers' WhisperFeatureExtractor (atol 1e-4),
and the Whisper audio encoder's fixed positions.

Real speech comes from the Debian package pocketsphinx-testdata (LibriVox clips, 16 kHz PCM WAV):
`apt-get install -y pocketsphinx-testdata`.
"""

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as hf
from transformers.audio_utils import mel_filter_bank
from transformers.models.whisper.modeling_whisper import sinusoids

from multimodaltransformer.modalities import (AudioEncoder, AudioEncoderConfig, AudioProcessor, AudioProcessorConfig,
                                              MediaError, load_audio, mel_filterbank, resample)
from multimodaltransformer.nn import TransformerConfig

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CLIPS = sorted(LIBRIVOX.glob("*.wav")) if LIBRIVOX.is_dir() else []
needs_speech = pytest.mark.skipif(not CLIPS, reason=f"no LibriVox clips in {LIBRIVOX}: "
                                  "apt-get install -y pocketsphinx-testdata")
ATOL = 1e-4  # log-mel parity with WhisperFeatureExtractor (measured 0.0)


def chirp(seconds: float, rate: int = 16000, f0: float = 80.0, f1: float = 7500.0) -> torch.Tensor:
    """A linear sweep f0 -> f1 with a little noise: every mel bin gets energy at some point."""
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    x = 0.6 * torch.sin(2 * math.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t ** 2))
    return (x + 0.01 * torch.randn(len(t), generator=torch.Generator().manual_seed(0), dtype=torch.float64)).float()


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2) -> Path:
    """samples (N,) or (N, channels) in [-1, 1] -> a PCM WAV of `width` bytes per sample."""
    x = samples if samples.ndim == 2 else samples[:, None]
    if width == 1:
        data = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.clip(np.round(x * 2 ** 23), -2 ** 23, 2 ** 23 - 1).astype("<i4")
        data = ints.view(np.uint8).reshape(*ints.shape, 4)[..., :3].tobytes()
    else:
        scale = 2 ** (8 * width - 1)
        data = np.clip(np.round(x * scale), -scale, scale - 1).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filterbank_matches_transformers(n_mels):
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0, max_frequency=8000.0,
                          sampling_rate=16000, norm="slaney", mel_scale="slaney")  # (F, M), float64
    ours = mel_filterbank(n_mels, 400, 16000)
    assert ours.shape == (n_mels, 201) and np.abs(ours.numpy() - ref.T).max() < 1e-8


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_feature_extractor_on_a_chirp(n_mels):
    """A batch with a short chirp (padded to 30 s) and a 31 s one (trimmed); each has its own 80 dB floor."""
    audio = [chirp(3.0), chirp(31.0, f0=50.0, f1=8000.0)]
    ours = AudioProcessor(AudioProcessorConfig(n_mels=n_mels))(audio)
    ref = hf.WhisperFeatureExtractor(feature_size=n_mels)([a.numpy() for a in audio], sampling_rate=16000,
                                                           return_tensors="pt").input_features
    assert ours.shape == ref.shape == (2, n_mels, 3000)
    assert (ours - ref).abs().max().item() < ATOL


@needs_speech
def test_log_mel_matches_feature_extractor_on_speech():
    processor, fe = AudioProcessor(), hf.WhisperFeatureExtractor()
    for clip in CLIPS:
        x = load_audio(clip)
        ref = fe(x.numpy(), sampling_rate=16000, return_tensors="pt").input_features
        assert (processor(clip) - ref).abs().max().item() < ATOL


@needs_speech
def test_load_audio_reads_the_clip_exactly():
    with wave.open(str(CLIPS[0])) as w:
        ints = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    x = load_audio(CLIPS[0])
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(ints / 32768.0).float())


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_and_stereo_are_read(tmp_path, width):
    t = np.arange(1600) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 660 * t)
    x = load_audio(write_wav(tmp_path / "a.wav", np.stack([left, right], axis=1), width=width))
    assert x.shape == (1600,)
    step = max(2.0 / 2 ** (8 * width - 1), 1e-7)  # one quantisation step, or float32's resolution
    assert np.abs(x.numpy() - (left + right) / 2).max() < step


def test_load_audio_resamples_to_16k(tmp_path):
    t = np.arange(8000) / 8000
    x = load_audio(write_wav(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 300 * t), rate=8000))
    ref = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert x.shape == (16000,) and np.abs(x.numpy() - ref)[1600:-1600].max() < 1e-3


@pytest.mark.parametrize("orig", [8000, 22050, 44100, 48000])
def test_resample_keeps_a_tone_and_removes_what_is_above_nyquist(orig):
    t = torch.arange(orig, dtype=torch.float64) / orig
    y = resample(torch.sin(2 * math.pi * 440 * t).float(), orig, 16000)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(16000, dtype=torch.float64) / 16000)
    assert y.shape == (16000,) and (y - ref)[1600:-1600].abs().max() < 1e-4
    if orig > 16000:  # a 10 kHz tone cannot exist at 16 kHz: it must be filtered, not aliased to 6 kHz
        alias = resample(torch.sin(2 * math.pi * 10000 * t).float(), orig, 16000)
        assert alias[1600:-1600].pow(2).mean().sqrt() < 1e-3
    assert resample(torch.randn(2, 3, orig // 10), orig, 16000).shape == (2, 3, 1600)


def test_processor_takes_paths_and_resamples_arrays(tmp_path):
    x = chirp(2.0, rate=16000)
    path = write_wav(tmp_path / "a.wav", x.numpy())
    processor = AudioProcessor()
    by_path, by_array = processor(path), processor(load_audio(path))
    assert torch.equal(by_path, by_array)
    at_8k = processor(resample(x, 16000, 8000), sampling_rate=8000)
    assert at_8k.shape == (1, 80, 3000)


def test_missing_audio_file_is_named(tmp_path):
    with pytest.raises(MediaError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00", b"not audio at all" * 10])
def test_corrupt_wav_is_named(tmp_path, content):
    (tmp_path / "bad.wav").write_bytes(content)
    with pytest.raises(MediaError, match="bad.wav"):
        load_audio(tmp_path / "bad.wav")


def test_wav_without_samples_is_named(tmp_path):
    with pytest.raises(MediaError, match="empty.wav"):
        load_audio(write_wav(tmp_path / "empty.wav", np.zeros((0, 1))))


def test_unreadable_other_formats_are_named(tmp_path):
    """Without `soundfile` the error says to install it; with it, that this file cannot be decoded."""
    (tmp_path / "a.flac").write_bytes(b"fLaC" + bytes(40))
    with pytest.raises(MediaError, match="a.flac"):
        load_audio(tmp_path / "a.flac")


def test_processor_rejects_multichannel_arrays():
    with pytest.raises(ValueError, match="mono"):
        AudioProcessor()(torch.zeros(2, 16000))


def test_encoder_positions_are_whisper_sinusoids_and_frozen():
    enc = AudioEncoder(AudioEncoderConfig(TransformerConfig(dim=48, depth=1, heads=3, position="learned",
                                                            max_seq_len=15)))
    table = enc.transformer.position.weight
    assert torch.allclose(table, sinusoids(15, 48), atol=1e-6) and not table.requires_grad
    assert enc(torch.randn(2, 80, 30)).shape == (2, 15, 48)
    with pytest.raises(ValueError, match="position"):
        AudioEncoderConfig(TransformerConfig(dim=48, depth=1, heads=3, position="sinusoidal"))
