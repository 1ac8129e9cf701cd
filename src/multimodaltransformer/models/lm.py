"""Decoder-only language models (GPT-2, Llama ...): token embeddings -> causal stack -> LM head.

One class for every family: what differs is configuration (positions, norm, activation, GQA,
biases, tied head) and the weight mapping in hub/. Families subclass `DecoderLMConfig` only to
give their defaults and their saved `model_type`. Legend: B batch, T length, L cache slots,
C dim, V vocab.
"""

from __future__ import annotations

from typing import Any

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import TransformerConfig, TransformerStack, causal_padding_mask
from ..nn.cache import DecodeCache
from ..nn.sequence import Embedded, causal_mask
from .base import PretrainedModel
from ..objectives import IGNORE_INDEX
from .core import ModelOutput

CHAT_TEMPLATE_FILE = "chat_template.jinja"


@dataclass
class DecoderLMConfig:
    """What every decoder-only LM needs; a family subclass sets the defaults and `model_type`."""

    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vocab_size: int = 32000
    tie_embeddings: bool = True
    bos_token_id: int | None = None
    # one id or several (Llama 3 stops at <|end_of_text|> and <|eot_id|>)
    eos_token_id: int | list[int] | None = None


def read_chat_template(directory: Path) -> str | None:
    """chat_template.jinja (ours, and transformers >= 4.43), else tokenizer_config.json's `chat_template`."""
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text()).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


class DecoderLM(PretrainedModel):
    """`model(input_ids, attention_mask=None).logits` (B, T, V), as HF `*ForCausalLM`.

    It is also, with no wrapper, both the decoder a composed multimodal model drives (`embed_tokens`,
    `hidden`, `head`) and a model the generation engine decodes (`embed`, `new_cache`,
    `decode_step`: generation/interface.py). `chat_template` (a Jinja string, or None) travels
    with the model for `chat.Chat`.
    """

    num_media_tokens = 0  # text only

    config_class = DecoderLMConfig

    def __init__(self, config: DecoderLMConfig) -> None:
        super().__init__(config)
        C = config.transformer.dim
        self.tok_embed = nn.Embedding(config.vocab_size, C)
        self.transformer = TransformerStack(config.transformer)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embed.weight
        self.chat_template: str | None = None

    @property
    def eos_ids(self) -> list[int]:
        eos = self.config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        """Positions default to 0..T-1 whatever the padding (as in HF); `labels` are shifted here."""
        T = input_ids.shape[1]
        if T > self.config.transformer.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.transformer.max_seq_len}")
        mask = causal_padding_mask(attention_mask, T, device=input_ids.device)
        h = self.transformer(self.tok_embed(input_ids), mask, positions=position_ids)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX)
        return ModelOutput(loss, logits)

    # ---- the decoder interface (models/composed.py puts media embeddings in front of the text) ----
    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        return self.tok_embed(input_ids)  # (B, T, C)

    def hidden(self, x: Tensor, positions: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None,
               context: Tensor | None = None, context_mask: Tensor | None = None,
               cache: DecodeCache | None = None) -> Tensor:
        """Embeddings x (B, T, C) at positions (B, T) -> final hidden states (B, T, C)."""
        if context is not None:
            raise ValueError(f"{type(self).__name__} has no cross-attention layers: it reads media only as a prefix")
        return self.transformer(x, mask, input_pos, positions=positions, cache=cache)

    def head(self, h: Tensor) -> Tensor:
        return self.lm_head(h)  # (B, T, V)

    # ---- the generation interface (generation/interface.py) ------------------------------------
    @property
    def max_seq_len(self) -> int:
        return self.config.transformer.max_seq_len

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return self.config.eos_token_id

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, **media: Any) -> Embedded:
        if any(v is not None for v in media.values()):
            raise ValueError(f"{type(self).__name__} is a text-only LM: it takes no {sorted(media)}")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return Embedded(self.tok_embed(input_ids), mask)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        return self.transformer.new_cache(batch, max_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: DecodeCache) -> Tensor:
        """Logits of the last position only (B, 1, V): generation needs no others, and the prompt's
        full (B, S, V) logits would be the largest tensor of the call."""
        T = x.shape[1]
        input_pos = torch.arange(start, start + T, device=x.device)
        if T == 1:  # one new token at the newest slot: it may see every real slot, which key_mask marks
            mask = key_mask[:, None, None, :]  # (B, 1, 1, L), a view
        else:  # the prompt: causal over real slots, padded queries see themselves (no NaN rows)
            mask = causal_mask(key_mask, start, T, key_mask.shape[1])
        return self.head(self.hidden(x, positions, mask, input_pos, cache=cache)[:, -1:])

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        """`transformers`-style generate (greedy, sampling, beams, processors; see generation/):
        prompt + new tokens; finished rows are padded with the first EOS, as the reference does."""
        from ..generation import generate

        return generate(self, input_ids, attention_mask, **{"max_new_tokens": 20, **kwargs})

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors (+ tokenizer.json, chat_template.jinja when present)."""
        super().save_pretrained(directory)
        if self.chat_template is not None:
            (Path(directory) / CHAT_TEMPLATE_FILE).write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "DecoderLM":
        model = super().from_pretrained(directory, map_location)
        model.chat_template = read_chat_template(Path(directory))
        return model
