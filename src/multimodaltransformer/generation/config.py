"""`GenerationConfig`: every decoding option in one dataclass, with the meaning `transformers` gives it.

Defaults follow `transformers.GenerationConfig` (top_k=50 applies when sampling; length_penalty 1.0
divides a finished beam's log-probability by its generated length), except `max_new_tokens`,
which keeps this library's default of 32. Special ids: `eos_token_id=None` means the model's own
(its tokenizer's or config's), `[]` means none; `pad_token_id=None` means the model's pad id,
else the first EOS id (as transformers does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

SearchMode = Literal["greedy", "sample", "beam"]


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is masked until this many tokens are generated
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50  # sampling only; None or 0 disables
    top_p: float = 1.0  # sampling only
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum log p / generated_len ** length_penalty
    early_stopping: bool | Literal["never"] = False  # beams: True stops once num_beams hypotheses finished
    num_return_sequences: int = 1  # beams: best n of num_beams; sampling: n samples per prompt
    repetition_penalty: float = 1.0  # CTRL penalty on every token already in the row (prompt included)
    no_repeat_ngram_size: int = 0  # no n-gram of this size occurs twice in a row (prompt included)
    suppress_tokens: list[int] | None = None  # never generated (Whisper's suppress list)
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    seed: int | None = None  # sampling: a private torch.Generator seeded with this (None: torch's global RNG)
    use_cache: bool = True  # False: recompute the whole sequence per token (the reference path)
    compile: bool = False  # torch.compile the one-token decode step (pays off on a GPU)

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"generation option {field}={getattr(self, field)!r}: {why}")

        for name in ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "must be an integer >= 0")
        for name in ("num_beams", "num_return_sequences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be an integer >= 1")
        if not self.temperature > 0:
            raise bad("temperature", "must be > 0")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise bad("top_k", "must be an integer >= 0 or None")
        if not 0.0 <= self.top_p <= 1.0:
            raise bad("top_p", "must be in [0, 1]")
        if not self.repetition_penalty > 0:
            raise bad("repetition_penalty", "must be > 0")
        if self.early_stopping not in (True, False, "never"):
            raise bad("early_stopping", 'must be True, False or "never"')
        if self.num_return_sequences > 1 and self.num_beams == 1 and not self.do_sample:
            raise bad("num_return_sequences", "greedy search returns one sequence per prompt "
                      "(use num_beams >= num_return_sequences, or do_sample=True)")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise bad("num_return_sequences", f"must be <= num_beams ({self.num_beams})")

    @property
    def mode(self) -> SearchMode:
        if self.num_beams > 1:
            return "beam"
        return "sample" if self.do_sample else "greedy"

    @property
    def expand(self) -> int:
        """Rows decoded per prompt: the beams, or the samples returned."""
        return max(self.num_beams, self.num_return_sequences)

    @classmethod
    def from_kwargs(cls, base: "GenerationConfig | None" = None, **kwargs: Any) -> "GenerationConfig":
        """`base` (or the defaults) with the given fields replaced; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(base or cls(), **kwargs)


def eos_list(eos_token_id: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """One id, several, or none -> a list of ids."""
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
