"""Decoder-only language models (GPT-2, Llama, SmolLM2 from a GGUF ...) behind the chat API, as
llama.cpp's server serves them: the messages rendered with the model's own chat template.

The template is `chat.Chat`'s (the same rendering and tokenization as `mmt chat`), so a one-turn
request prompts the model exactly as the terminal chat does; the worker then batches these prompts
like any other (serve/worker.py). Such a model reads text only: image, audio and video parts are a
400 that says so. Its answers are not stripped, as `mmt chat` prints them.
"""

from __future__ import annotations

from typing import Any

from ..chat import Chat, Message
from ..config import ConfigError
from ..models.lm import DecoderLM
from .common import APIError
from .schemas import ChatMessage, TextPart

PART_NAMES = {"image_url": "images (image_url)", "input_audio": "audio (input_audio)", "video_url": "video (video_url)"}


def is_chat_lm(model: Any) -> bool:
    return isinstance(model, DecoderLM)


class ChatTemplatePrompter:
    """OpenAI messages -> prompt ids through the model's chat template (`chat.Chat.prompt_ids`)."""

    def __init__(self, model: DecoderLM) -> None:
        self.chat = Chat(model)  # checks the tokenizer and the chat template, with messages naming what is missing
        if not model.eos_ids:  # the worker ends answers at EOS: without one each would run to max_tokens
            raise ConfigError(f"this {type(model).__name__} has no eos_token_id in its config: serving needs one")

    def prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        """The templated conversation with the generation prompt; APIError 400 for media or a bad role order."""
        try:
            return self.chat.prompt_ids([_message(i, m) for i, m in enumerate(messages)])
        except ConfigError as e:  # the template's raise_exception, e.g. roles that do not alternate
            raise APIError(400, str(e), param="messages") from None


def _message(i: int, m: ChatMessage) -> Message:
    """One message as the template takes it: {"role", "content"} with the text parts joined."""
    if isinstance(m.content, list):
        media = [p.type for p in m.content if not isinstance(p, TextPart)]
        if media:
            raise APIError(400, f"messages[{i}]: this model is a text-only language model: it takes no "
                           f"{PART_NAMES.get(media[0], media[0])}, only text", param="messages")
        text = "".join(p.text for p in m.content)
    else:
        text = m.content or ""
    return {"role": "system" if m.role == "developer" else m.role, "content": text}
