"""Models assembled from encoders, fusion and a decoder, and the pretrained families built on the nn blocks."""

from .base import PretrainedModel
from .bert import BERT, BERTConfig, mean_pool
from .clip import CLIP, CLIPConfig, CLIPOutput, CLIPTextConfig, CLIPTextEncoder
from .decoder import DecoderConfig, GPTDecoder
from .gpt2 import GPT2, GPT2Config
from .multimodal import ModelOutput, MultimodalTransformer, MultimodalTransformerModel
from .vit import VisionTransformer, VisionTransformerConfig

__all__ = [
    "DecoderConfig", "GPTDecoder", "ModelOutput", "MultimodalTransformer", "MultimodalTransformerModel",
    "PretrainedModel", "BERT", "BERTConfig", "mean_pool", "CLIP", "CLIPConfig", "CLIPOutput", "CLIPTextConfig",
    "CLIPTextEncoder", "GPT2", "GPT2Config", "VisionTransformer", "VisionTransformerConfig",
]
