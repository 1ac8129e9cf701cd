"""What the model worker decodes: a `Job` (one request: its prompt, media, settings and where its
results go) and a `Row` (one decoded sequence of a job, with its sampling state, detokenizer and
stop strings)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..generation import GenerationConfig
from ..generation.processors import build_processors
from ..generation.streaming import Detokenizer, StopStrings

# emit(choice index, text delta or None, finish reason or None, error message or None)
Emit = Callable[[int, str | None, str | None, str | None], None]


@dataclass
class Job:
    """One request: a prompt (1, T), its image, its generation settings and where results go."""

    input_ids: Tensor  # (1, T)
    pixel_values: Tensor | None  # (1, 3, H, W)
    emit: Emit
    media: dict[str, Tensor] = field(default_factory=dict)  # other modalities by keyword: input_features ...
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    n: int = 1
    num_beams: int = 1
    length_penalty: float = 1.0
    stops: list[str] = field(default_factory=list)
    deadline: float = float("inf")  # time.monotonic() limit
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: list[int] = field(default_factory=list)
    strip: bool = True  # strip the answer's ends (our models answer after <sep>); a chat LM's text is kept as is

    @property
    def inputs(self) -> dict[str, Tensor]:
        """Every media input of the job by model keyword."""
        return ({"pixel_values": self.pixel_values} if self.pixel_values is not None else {}) | self.media

    @property
    def has_media(self) -> bool:
        return bool(self.inputs)

    @property
    def signature(self) -> tuple:
        """Jobs of one signature prefill together: the same inputs of the same shapes."""
        return tuple(sorted((k, tuple(v.shape)) for k, v in self.inputs.items()))


class Row:
    """One decoded sequence of a job (a job with n > 1 has n rows)."""

    def __init__(self, job: Job, index: int, cfg: GenerationConfig, eos: Tensor, decode: Callable) -> None:
        self.job, self.index = job, index
        self.history = job.input_ids[0].tolist()
        self.prompt_len = len(self.history)
        self.processors = build_processors(cfg, self.prompt_len, eos, None)
        self.generator = None
        if cfg.do_sample:
            self.generator = torch.Generator().manual_seed(
                job.seed + index if job.seed is not None else int(torch.randint(2**62, ()).item()))
        self.detok, self.stops = Detokenizer(decode), StopStrings(job.stops)
        self.produced = 0
        self.finish: str | None = None
        self.eos_hit = False
        self.held = ""  # trailing whitespace held back: the answer is stripped, as TextTokenizer.decode does
        self.started = False

    def trim(self, text: str, final: bool = False) -> str:
        """The part of `text` to emit so the whole answer comes out stripped at both ends."""
        if not self.job.strip:
            return text
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        text = self.held + text
        if final:
            self.held = ""
            return text.rstrip()
        body = text.rstrip()
        self.held = text[len(body):]
        return body
