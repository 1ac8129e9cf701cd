"""`generate`: prompt ids -> prompt + new tokens, composed of a session (cache), processors and a strategy.

`prepare` turns the arguments into a `Plan` (config, special ids, processors, the decoding
session with the prompt already computed); `generate` runs greedy search, sampling or beam search
on it; `stream` (streaming.py) runs the same plan one token at a time.
Prompts in a batch are left-padded (attention_mask 0 on the left); positions count from each
row's first real token. Legend: B prompts, N = B x expand decoded rows, T padded prompt length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .interface import as_generative, default_special_ids
from .beam import beam_search
from .config import GenerationConfig, eos_list
from .processors import Processor, build_processors
from .search import sample_steps
from .session import CachedSession, UncachedSession

_OPTIONS = {f.name for f in dataclasses.fields(GenerationConfig)}


@dataclass
class Plan:
    cfg: GenerationConfig
    session: CachedSession | UncachedSession | None  # None: nothing to generate (no budget or no room)
    prompt: Tensor  # (N, T) prompt rows as decoded (each prompt repeated `cfg.expand` times)
    max_new_tokens: int  # after capping to the positions the model has left
    eos: Tensor  # (E,) ids that end a row (may be empty)
    pad: int
    processors: list[Processor]
    generator: torch.Generator | None


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Generation options vs. media inputs (pixel_values ...) among keyword arguments."""
    options = {k: v for k, v in kwargs.items() if k in _OPTIONS}
    media = {k: v for k, v in kwargs.items() if k not in _OPTIONS and v is not None}
    bad = sorted(k for k, v in media.items() if not isinstance(v, Tensor))
    if bad:
        raise TypeError(f"unknown generation option(s) {bad}; options are {sorted(_OPTIONS)}, "
                        "other keyword arguments must be input tensors (pixel_values ...)")
    return options, media


def prepare(model: Any, input_ids: Tensor, attention_mask: Tensor | None, cfg: GenerationConfig,
            media: dict[str, Tensor]) -> Plan:
    """Validate, pick special ids and processors, and run the prompt (the session's prefill)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    device = input_ids.device
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    default_eos, default_pad = default_special_ids(model)
    eos_ids = eos_list(default_eos if cfg.eos_token_id is None else cfg.eos_token_id)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else default_pad
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0  # transformers pads with the first EOS id
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)

    # The decoder has max_seq_len positions: the budget stops where they run out.
    n_media = model.num_media_tokens if media else 0
    longest = int(mask.sum(-1).max()) if input_ids.numel() else 0
    room = model.max_seq_len - n_media - longest
    if room < 0:
        raise ValueError(f"prompt of {longest} tokens (+{n_media} media) exceeds max_seq_len {model.max_seq_len}")
    max_new = min(cfg.max_new_tokens, room)

    expand = cfg.expand
    B, T = input_ids.shape
    rows = torch.arange(B, device=device).repeat_interleave(expand)
    prompt = input_ids[rows]
    pad_lengths = None
    if not bool(mask.all()):
        pad_lengths = mask.int().argmax(-1)[rows]  # left padding per row (skipped by the repetition penalty)
    processors = build_processors(cfg, T, eos, pad_lengths)
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    session: CachedSession | UncachedSession | None = None
    if max_new == 0:
        pass
    elif cfg.use_cache:
        session = CachedSession(model, input_ids, mask, media, max_new, expand, compile=cfg.compile)
    else:
        session = UncachedSession(model, input_ids, mask, media, expand)
    return Plan(cfg, session, prompt, max_new, eos, pad, processors, generator)


def token_steps(plan: Plan) -> Iterator[tuple[Tensor, Tensor]]:
    """Greedy / sampling steps: yields (tokens (N,), ids (N, T + max_new)) per step; closes the session."""
    N, T = plan.prompt.shape
    ids = torch.empty(N, T + plan.max_new_tokens, dtype=torch.long, device=plan.prompt.device)
    ids[:, :T] = plan.prompt
    try:
        for tokens in sample_steps(plan.session, ids, T, plan.max_new_tokens, plan.processors, plan.eos, plan.pad,
                                   plan.cfg.do_sample, plan.generator):
            yield tokens, ids
    finally:
        plan.session.close()


def run(plan: Plan) -> Tensor:
    """Decode the plan to completion: (B * num_return_sequences, T + n)."""
    cfg, T = plan.cfg, plan.prompt.shape[1]
    if plan.session is None:  # no room or no budget: the prompt is the answer
        return plan.prompt
    if cfg.mode == "beam":
        try:
            fill = plan.pad if (plan.pad or not plan.eos.numel()) else int(plan.eos[0])  # transformers' `pad or eos`
            return beam_search(plan.session, plan.prompt, cfg.num_beams, plan.max_new_tokens, plan.processors,
                               plan.eos, fill, length_penalty=cfg.length_penalty,
                               early_stopping=cfg.early_stopping, num_return_sequences=cfg.num_return_sequences,
                               do_sample=cfg.do_sample, generator=plan.generator)
        finally:
            plan.session.close()
    steps, ids = 0, plan.prompt
    for _, ids in token_steps(plan):
        steps += 1
    return ids[:, :T + steps]


def generate(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None, *,
             generation_config: GenerationConfig | None = None, **kwargs: Any) -> Tensor:
    """Prompt ids (B, T) -> prompt + new tokens (B * num_return_sequences, T + n), as transformers' generate.

    `kwargs` are GenerationConfig fields (max_new_tokens, do_sample, num_beams, ...; they override
    `generation_config`) and the model's media inputs (pixel_values ...). `model` is a multimodal
    model or any decoder LM (GPT2 ...). Rows that end early are padded with pad_token_id;
    `use_cache=False` recomputes the sequence each step (the reference path).
    """
    options, media = split_options(kwargs)
    cfg = GenerationConfig.from_kwargs(generation_config, **options)
    model = as_generative(model)
    with torch.inference_mode():
        out = run(prepare(model, input_ids, attention_mask, cfg, media))
    return out.clone()  # a normal tensor: inference-mode tensors cannot enter autograd later
