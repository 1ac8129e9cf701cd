"""Building blocks written once and shared by every encoder and decoder."""

from .attention import MultiHeadAttention, causal_mask, causal_padding_mask, padding_mask
from .cache import DecodeCache, KVCache, LayerCache
from .blocks import MLP, QuickGELU, RMSNorm, TransformerBlock, TransformerConfig, build_activation, build_norm
from .position import (ALiBi, LearnedPosition, PositionalEncoding, RotaryPosition, SinusoidalPosition,
                       apply_rotary, build_position)
from .resnet import ResNet, ResNetConfig, ResNetOutput
from .transformer import (EncoderDecoderConfig, EncoderOutput, Transformer, TransformerDecoder,
                          TransformerEncoder, TransformerStack)

__all__ = [
    "DecodeCache", "KVCache", "LayerCache", "MultiHeadAttention", "causal_mask", "causal_padding_mask", "padding_mask",
    "MLP", "QuickGELU", "RMSNorm", "TransformerBlock", "TransformerConfig", "build_activation", "build_norm",
    "ALiBi", "LearnedPosition", "PositionalEncoding", "RotaryPosition", "SinusoidalPosition", "apply_rotary",
    "build_position",
    "ResNet", "ResNetConfig", "ResNetOutput",
    "EncoderDecoderConfig", "EncoderOutput", "Transformer", "TransformerDecoder", "TransformerEncoder",
    "TransformerStack",
]
