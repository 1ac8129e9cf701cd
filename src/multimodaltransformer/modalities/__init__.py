"""Per-modality processors (raw input -> tensors) and encoders (tensors -> token features)."""

from .image import ImageProcessor, MediaError, ViTConfig, ViTEncoder, load_image
from .text import LSTMTextConfig, LSTMTextEncoder, TextTokenizer

__all__ = ["ImageProcessor", "MediaError", "ViTConfig", "ViTEncoder", "load_image", "LSTMTextConfig", "LSTMTextEncoder",
           "TextTokenizer"]
