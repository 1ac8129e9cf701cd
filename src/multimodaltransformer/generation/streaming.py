"""Streaming: text deltas as tokens are produced, with stop strings.

`Detokenizer` turns a growing list of ids into text deltas. Byte-level BPE splits multi-byte
characters across tokens, so a prefix of the ids can decode to a trailing U+FFFD; such a delta is
held back until the character completes (or the stream ends). Each decode covers only the ids
since the last emitted delta (plus that delta's ids, for context), so the cost per token stays flat.
`StopStrings` holds back text that might begin a stop string and cuts the stream at the first
one, which is not emitted. `stream(model, input_ids, ...)` combines both with the decoding loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .interface import as_generative
from .config import GenerationConfig
from .generate import prepare, split_options, token_steps

REPLACEMENT = "\ufffd"


def decode_fn(tokenizer: Any, skip_special_tokens: bool = True) -> Callable[[list[int]], str]:
    """ids -> text without any stripping, for our TextTokenizer, a `tokenizers.Tokenizer`, or an HF tokenizer."""
    raw = getattr(tokenizer, "tokenizer", tokenizer)  # TextTokenizer wraps a tokenizers.Tokenizer (and strips)
    if not hasattr(raw, "decode"):
        raise TypeError(f"{type(tokenizer).__name__} cannot decode token ids")
    return lambda ids: raw.decode(ids, skip_special_tokens=skip_special_tokens)


class Detokenizer:
    """push(id) -> the text that id completes ("" while a character is still partial); flush() at the end."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decoded to the last emitted delta (kept as context)
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) <= len(before) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(before):]


class StopStrings:
    """feed(delta) -> text safe to emit; `stopped` once a stop string appeared (it and what follows are cut)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if not self.stops:
            return delta
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.pending = self.pending[:min(hits)], ""
            return out
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(self.pending)) + 1)
                    if self.pending.endswith(s[:k])), default=0)  # longest tail that may begin a stop string
        out, self.pending = self.pending[:len(self.pending) - hold], self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def stream(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None, *, tokenizer: Any = None,
           stop: Sequence[str] | str | None = None, skip_special_tokens: bool = True,
           generation_config: GenerationConfig | None = None, **kwargs: Any) -> Iterator[str]:
    """Yield text deltas for one prompt (1, T) as greedy search or sampling produces tokens.

    `kwargs` are generation options and media inputs, as for `generate` (beam search cannot stream).
    Generation ends at EOS, the token budget, or the first of the `stop` strings (not emitted);
    the deltas concatenate to the decoded text of the new tokens (cut at the stop string).
    `tokenizer` defaults to the model's.
    """
    options, media = split_options(kwargs)
    cfg = GenerationConfig.from_kwargs(generation_config, **options)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or cfg.expand != 1:
        raise ValueError("stream decodes one prompt (1, T) into one sequence: no batches, beams or "
                         "num_return_sequences > 1")
    model = as_generative(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("stream needs a tokenizer: the model has none attached, pass tokenizer=")
    detok = Detokenizer(decode_fn(tokenizer, skip_special_tokens))
    stops = StopStrings([stop] if isinstance(stop, str) else list(stop or []))
    with torch.inference_mode():
        plan = prepare(model, input_ids, attention_mask, cfg, media)
    if plan.session is None:
        return
    steps = token_steps(plan)
    try:
        eos = set(plan.eos.tolist())
        while True:
            with torch.inference_mode():
                item = next(steps, None)
            if item is None:
                break
            token = int(item[0][0])
            if token in eos:
                break
            text = stops.feed(detok.push(token))
            if text:
                yield text
            if stops.stopped:
                return
    finally:  # also when the caller stops early: free the cache, undo the fast path
        steps.close()
        plan.session.close()
    text = stops.feed(detok.flush())
    if not stops.stopped:
        text += stops.flush()
    if text:
        yield text
