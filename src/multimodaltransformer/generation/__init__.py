"""Decoding, composed: a session that owns the KV cache, logits processors, a search strategy
(greedy, sampling, beam) and a stopping rule; `generate` returns ids, `stream` yields text.

Works on any model with the generation interface (interface.py): the multimodal models, plain
decoder LMs (GPT2, Llama ...) and Whisper offer it themselves; `batching.py` is the server's running batch.
"""

from .interface import as_generative
from .config import GenerationConfig
from .generate import generate
from .processors import (MinNewTokens, NoRepeatNGram, RepetitionPenalty, Temperature, TopK, TopP,
                         build_processors)
from .streaming import Detokenizer, StopStrings, stream

__all__ = ["Detokenizer", "GenerationConfig", "MinNewTokens", "NoRepeatNGram", "RepetitionPenalty",
           "StopStrings", "Temperature", "TopK", "TopP", "as_generative", "build_processors", "generate", "stream"]
