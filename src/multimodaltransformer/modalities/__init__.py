"""Per-modality processors (raw input -> tensors) and encoders (tensors -> token features), keyed by
name in `MODALITIES` (base.py): image (image.py), audio (audio.py), video (video.py); text is the decoder's own (text.py)."""

from .audio import (AudioConfig, AudioEncoder, AudioEncoderConfig, AudioProcessor, AudioProcessorConfig, load_audio,
                    mel_filterbank, resample)
from .base import MODALITIES, MediaBytes, MediaError, Modality, input_keys
from .image import ImageProcessor, ViTConfig, ViTEncoder, load_image
from .text import LSTMTextConfig, LSTMTextEncoder, TextTokenizer
from .video import VideoConfig, VideoEncoder, VideoProcessor, load_video

__all__ = ["MODALITIES", "MediaBytes", "Modality", "input_keys", "AudioConfig", "AudioEncoder", "AudioEncoderConfig", "AudioProcessor", "AudioProcessorConfig", "load_audio",
           "mel_filterbank", "resample",
           "ImageProcessor", "MediaError", "ViTConfig", "ViTEncoder", "load_image", "LSTMTextConfig", "LSTMTextEncoder",
           "TextTokenizer", "VideoConfig", "VideoEncoder", "VideoProcessor", "load_video"]
