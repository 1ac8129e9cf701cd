"""Models assembled from encoders, fusion and a decoder, and the pretrained families built on the nn blocks."""

from .base import PretrainedModel
from .bert import BERT, BERTConfig, mean_pool
from .clip import CLIP, CLIPConfig, CLIPOutput, CLIPTextConfig, CLIPTextEncoder
from .decoder import DecoderConfig, GPTDecoder
from .gpt2 import GPT2, GPT2Config
from .heads import HeadsConfig
from .llama import Llama, LlamaConfig
from .lm import DecoderLM, DecoderLMConfig
from .core import MultimodalLM
from .multimodal import ModelOutput, MultimodalTransformer, MultimodalTransformerModel
from .resnet import ResNetClassifier, ResNetClassifierConfig, ResNetOutput
from .vit import VisionTransformer, VisionTransformerConfig
from .whisper import Whisper, WhisperConfig, WhisperOutput

__all__ = [
    "DecoderConfig", "GPTDecoder", "HeadsConfig", "ModelOutput", "MultimodalLM", "MultimodalTransformer",
    "MultimodalTransformerModel",
    "PretrainedModel", "BERT", "BERTConfig", "mean_pool", "CLIP", "CLIPConfig", "CLIPOutput", "CLIPTextConfig",
    "CLIPTextEncoder", "DecoderLM", "DecoderLMConfig", "GPT2", "GPT2Config", "Llama", "LlamaConfig",
    "ResNetClassifier", "ResNetClassifierConfig", "ResNetOutput",
    "VisionTransformer", "VisionTransformerConfig",
    "Whisper", "WhisperConfig", "WhisperOutput",
]
