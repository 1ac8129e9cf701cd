"""Chat with a decoder LM: its chat template, and the answer streamed as text deltas by the generation engine.

`Chat(model).send(text)` renders the conversation with the model's Jinja chat template (as HF
`apply_chat_template(messages, add_generation_prompt=True)` does), prefills it, and yields the
answer piece by piece. `ImageChat(model, image)` talks about one image with a model that sees
images (trained or composed by this library), prompted as `mmt serve` prompts it: the question,
after the earlier turns as "role: text" lines. `run_terminal_chat` is the REPL behind `mmt chat`.
Each turn re-runs the whole conversation (no KV cache across turns); when it no longer fits the
model's context, the oldest exchanges are forgotten.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

from .config import ConfigError
from .generation import GenerationConfig
from .generation.streaming import stream

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclass
class SamplingOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling (with temperature > 0): keep the fewest tokens whose mass reaches top_p
    seed: int | None = None

    def generation_config(self, eos_ids: list[int]) -> GenerationConfig:
        """The engine's options for these: greedy at temperature 0, else softmax(logits / T) within
        top_p (no top-k, unlike the engine's transformers-style default of 50)."""
        sample = self.temperature > 0
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sample,
                                temperature=self.temperature if sample else 1.0, top_k=0, top_p=self.top_p,
                                seed=self.seed, eos_token_id=eos_ids)

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


def render_chat_template(template: str, messages: list[Message], add_generation_prompt: bool = True,
                         **variables: Any) -> str:
    """Render a Hugging Face chat template with the environment `apply_chat_template` uses (sandboxed
    Jinja, trim_blocks/lstrip_blocks, loop controls, tojson, raise_exception, strftime_now)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **variables)
    except jinja2.TemplateError as e:
        raise ConfigError(f"chat template: {e}") from e


class Chat:
    """A conversation with a decoder LM (`load_pretrained` of a Llama/GPT-2 ... with a tokenizer and a chat template).

    `send(text)` yields the answer as text deltas and records both turns; `reset()` forgets them.
    Generation stops at the model's EOS ids or after `options.max_new_tokens`.
    """

    strip_leading = False  # drop the answer's leading spaces (ImageChat: our models answer after <sep>)

    def __init__(self, model: Any, system: str | None = None, options: SamplingOptions | None = None,
                 template: str | None = None) -> None:
        name = type(model).__name__
        if not hasattr(model, "eos_ids") or not hasattr(model, "lm_head"):
            raise ConfigError(f"a {name} is not a decoder language model: chat needs one (Llama, GPT-2 ...)")
        if getattr(model, "tokenizer", None) is None:
            raise ConfigError(f"this {name} has no tokenizer: chat needs one")
        self.template = template or getattr(model, "chat_template", None)
        if not self.template:
            raise ConfigError(f"this {name} has no chat template (tokenizer_config.json, chat_template.jinja or "
                              "the GGUF's tokenizer.chat_template): chat needs one")
        self.model, self.tokenizer, self.system = model, model.tokenizer, system
        self.options = options or SamplingOptions()
        self.generation = self.options.generation_config(list(model.eos_ids))
        tokens = {"bos_token": model.config.bos_token_id, "eos_token": next(iter(model.eos_ids), None)}
        self.variables = {k: self.tokenizer.id_to_token(i) for k, i in tokens.items() if i is not None}
        self.messages: list[Message] = []

    def reset(self) -> None:
        self.messages = []

    @property
    def history(self) -> list[Message]:
        """The conversation the template sees: the system message (if any), then the turns."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def prompt_ids(self, messages: list[Message] | None = None) -> list[int]:
        """The rendered conversation (default: the history), tokenized as HF does (the template writes any BOS)."""
        messages = self.history if messages is None else messages
        text = render_chat_template(self.template, messages, add_generation_prompt=True, **self.variables)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _fit(self) -> list[int]:
        return self._fit_within(self.model.config.transformer.max_seq_len)

    def _fit_within(self, max_len: int) -> list[int]:
        """Prompt ids that leave room for the answer in `max_len`, forgetting the oldest exchanges if needed."""
        alone = len(self.prompt_ids(self.history[:-len(self.messages)] + self.messages[-1:]))
        if alone >= max_len:  # the new message does not fit even on its own: refuse it, keep the history
            self.messages.pop()
            raise ConfigError(f"the message makes a prompt of {alone} tokens; the model's context is {max_len}")
        ids = self.prompt_ids()
        while len(ids) + self.options.max_new_tokens > max_len and len(self.messages) > 1:
            del self.messages[:2]  # the oldest user message and its answer
            ids = self.prompt_ids()
        return ids

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and stream the answer as text deltas (the generation engine's
        `stream`: its cache, sampling and detokenizer); the answer joins the history."""
        self.messages.append({"role": "user", "content": text})
        ids = self._fit()
        device = next(self.model.parameters()).device
        answer = ""
        try:
            with closing(stream(self.model, torch.tensor([ids], device=device), tokenizer=self.tokenizer,
                                generation_config=self.generation, **self._media())) as deltas:
                for delta in deltas:
                    delta = delta if answer or not self.strip_leading else delta.lstrip()
                    answer += delta
                    yield delta
        finally:  # also on interruption: the partial answer stays in the history
            self.messages.append({"role": "assistant", "content": answer})

    def _media(self) -> dict[str, torch.Tensor]:
        """Media inputs of every turn (none: a text chat)."""
        return {}

    def ask(self, text: str) -> str:
        """`send` without streaming: the whole answer."""
        return "".join(self.send(text))


def context_text(messages: list[Message]) -> str | None:
    """Earlier turns as the text a multimodal model reads before the question: "role: content" lines
    (the serving template formats a request's history the same way)."""
    lines = [f"{m['role']}: {m['content'].strip()}" for m in messages if m["content"].strip()]
    return "\n".join(lines) or None


class ImageChat(Chat):
    """A conversation about one image with a model that sees images (`image_processor`, no chat
    template): each turn is `<bos> [earlier turns] question <sep>` after the image's tokens, as
    `mmt serve` builds it from the same messages, answered by the generation engine's `stream`."""

    strip_leading = True

    def __init__(self, model: Any, image: str | Path, system: str | None = None,
                 options: SamplingOptions | None = None) -> None:
        from .modalities.image import load_image

        name = type(model).__name__
        if getattr(model, "image_processor", None) is None or not hasattr(model, "num_media_tokens"):
            raise ConfigError(f"a {name} takes no images: --image needs a model trained or composed by this library")
        if getattr(model, "tokenizer", None) is None:
            raise ConfigError(f"this {name} has no tokenizer: chat needs one")
        self.model, self.tokenizer, self.system = model, model.tokenizer, system
        self.options = options or SamplingOptions()
        self.generation = self.options.generation_config([self.tokenizer.eos_id])
        device = next(model.parameters()).device
        self.pixel_values = model.image_processor(load_image(image))[None].to(device)  # (1, 3, H, W)
        self.messages = []

    def prompt_ids(self, messages: list[Message] | None = None) -> list[int]:
        """The last message as the question, the ones before it as context."""
        from .modalities.text import encode_prompt

        messages = self.history if messages is None else messages
        return encode_prompt(self.tokenizer, messages[-1]["content"], context_text(messages[:-1]))

    def _fit(self) -> list[int]:
        return self._fit_within(self.model.max_seq_len - self.model.num_media_tokens)

    def _media(self) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values}


def run_terminal_chat(model: Any, system: str | None = None, options: SamplingOptions | None = None,
                      stdin: IO[str] | None = None, stdout: IO[str] | None = None,
                      image: str | Path | None = None) -> None:
    """Read a line, stream the answer (about `image`, with a model that sees images). /reset starts
    over, /exit (or EOF, Ctrl-C at the prompt) leaves; Ctrl-C during an answer stops that answer."""
    chat = ImageChat(model, image, system, options) if image is not None else Chat(model, system, options)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        print("/reset starts a new conversation, /exit (or Ctrl-D) leaves", file=stdout)
    while True:
        try:
            line = input(">>> ") if interactive else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print(file=stdout)
            break
        if not interactive and not line:  # EOF
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            chat.reset()
            print("(new conversation)", file=stdout, flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}: /reset, /exit", file=stdout, flush=True)
            continue
        try:
            for delta in chat.send(line):
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        except ConfigError as e:  # a message too long for the context: say so, keep chatting
            stdout.write(f"({e})")
        stdout.write("\n")
        stdout.flush()
