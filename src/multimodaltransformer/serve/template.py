"""Chat messages -> the model's prompt: the last user turn is the question, earlier turns context.

Our models are trained on `<bos> [text \\n] prompt <sep>` (data/collate.py). A conversation maps
onto it as: prompt = the text of the last user message; text = the system message and the
earlier turns as "user: ... / assistant: ..." lines (none for a single question, so a one-turn
chat gives exactly the prompt `mmt generate` builds). The image may come in any user message;
the model takes one per conversation. A speech model takes one audio clip instead (serve/speech.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .schemas import AudioPart, ChatMessage, ImagePart, InputAudio, TextPart


class TemplateError(ValueError):
    """The messages cannot be turned into a prompt (an HTTP 400 naming the problem)."""


@dataclass
class Conversation:
    prompt: str
    context: str | None
    image_url: str | None
    audio: InputAudio | None  # a speech model's input (serve/speech.py)

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def _text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return " ".join(p.text for p in message.content if isinstance(p, TextPart))


def build_conversation(messages: list[ChatMessage], require_prompt: bool = True) -> Conversation:
    """`require_prompt` False: the last user message may hold only media (a clip to transcribe)."""
    if messages[-1].role != "user":
        raise TemplateError(f"the last message must come from the user, not {messages[-1].role!r}")
    images = [p.image_url.url for m in messages if isinstance(m.content, list) for p in m.content
              if isinstance(p, ImagePart)]
    if len(images) > 1:
        raise TemplateError(f"this model takes one image per conversation, got {len(images)}")
    for i, m in enumerate(messages):
        if m.role != "user" and isinstance(m.content, list) and any(not isinstance(p, TextPart) for p in m.content):
            raise TemplateError(f"messages[{i}]: only user messages may carry images or audio")
    audio = [p.input_audio for m in messages if isinstance(m.content, list) for p in m.content
             if isinstance(p, AudioPart)]
    if len(audio) > 1:
        raise TemplateError(f"one audio clip per conversation, got {len(audio)}")
    prompt = _text(messages[-1]).strip()
    if not prompt and require_prompt:
        raise TemplateError("the last user message has no text: ask something")
    lines = []
    for m in messages[:-1]:
        text = _text(m).strip()
        if text:
            role = "system" if m.role in ("system", "developer") else m.role
            lines.append(f"{role}: {text}")
    return Conversation(prompt, "\n".join(lines) or None, images[0] if images else None, audio[0] if audio else None)
