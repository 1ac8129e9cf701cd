"""Per-modality processors (raw input -> tensors) and encoders (tensors -> token features)."""

from .audio import (AudioEncoder, AudioEncoderConfig, AudioProcessor, AudioProcessorConfig, load_audio,
                    mel_filterbank, resample)
from .image import ImageProcessor, MediaError, ViTConfig, ViTEncoder, load_image
from .text import LSTMTextConfig, LSTMTextEncoder, TextTokenizer

__all__ = ["AudioEncoder", "AudioEncoderConfig", "AudioProcessor", "AudioProcessorConfig", "load_audio",
           "mel_filterbank", "resample",
           "ImageProcessor", "MediaError", "ViTConfig", "ViTEncoder", "load_image", "LSTMTextConfig", "LSTMTextEncoder",
           "TextTokenizer"]
