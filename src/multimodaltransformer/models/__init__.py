"""Models assembled from encoders, fusion and a decoder."""

from .decoder import DecoderConfig, GPTDecoder
from .multimodal import ModelOutput, MultimodalTransformer, MultimodalTransformerModel

__all__ = ["DecoderConfig", "GPTDecoder", "ModelOutput", "MultimodalTransformer", "MultimodalTransformerModel"]
