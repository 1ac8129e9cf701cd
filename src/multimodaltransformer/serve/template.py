"""Chat messages -> the model's prompt: the last user turn is the question, earlier turns context.

Our models are trained on `<bos> [text \\n] prompt <sep>` (data/collate.py). A conversation maps
onto it as: prompt = the text of the last user message; text = the system message and the
earlier turns as "user: ... / assistant: ..." lines (none for a single question, so a one-turn
chat gives exactly the prompt `mmt generate` builds). The image, audio clip and video may each come
in any user message, one of each per conversation. A speech model takes one audio clip (serve/speech.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..chat import context_text
from .schemas import AudioPart, ChatMessage, ImagePart, InputAudio, TextPart, VideoPart


class TemplateError(ValueError):
    """The messages cannot be turned into a prompt (an HTTP 400 naming the problem)."""


@dataclass
class Conversation:
    prompt: str
    context: str | None
    image_url: str | None
    audio: InputAudio | None  # a speech model's input (serve/speech.py)
    video_url: str | None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def _text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return " ".join(p.text for p in message.content if isinstance(p, TextPart))


def _parts(messages: list[ChatMessage], kind: type) -> list:
    """Every content part of type `kind` in the messages, in order."""
    return [p for m in messages if isinstance(m.content, list) for p in m.content if isinstance(p, kind)]


def build_conversation(messages: list[ChatMessage], require_prompt: bool = True) -> Conversation:
    """`require_prompt` False: the last user message may hold only media (a clip to transcribe)."""
    if messages[-1].role != "user":
        raise TemplateError(f"the last message must come from the user, not {messages[-1].role!r}")
    for i, m in enumerate(messages):
        if m.role != "user" and isinstance(m.content, list) and any(not isinstance(p, TextPart) for p in m.content):
            raise TemplateError(f"messages[{i}]: only user messages may carry images, audio or video")
    images, audio, videos = (_parts(messages, kind) for kind in (ImagePart, AudioPart, VideoPart))
    for parts, what in ((images, "image"), (audio, "audio clip"), (videos, "video")):
        if len(parts) > 1:
            raise TemplateError(f"this model takes one {what} per conversation, got {len(parts)}")
    prompt = _text(messages[-1]).strip()
    if not prompt and require_prompt:
        raise TemplateError("the last user message has no text: ask something")
    earlier = [{"role": "system" if m.role in ("system", "developer") else m.role, "content": _text(m)}
               for m in messages[:-1]]
    return Conversation(prompt, context_text(earlier), images[0].image_url.url if images else None,
                        audio[0].input_audio if audio else None, videos[0].video_url.url if videos else None)
