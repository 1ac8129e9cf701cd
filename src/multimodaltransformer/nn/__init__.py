"""Building blocks written once and shared by every encoder and decoder."""

from .attention import KVCache, MultiHeadAttention
from .blocks import MLP, Transformer, TransformerBlock, TransformerConfig

__all__ = ["KVCache", "MultiHeadAttention", "MLP", "Transformer", "TransformerBlock", "TransformerConfig"]
