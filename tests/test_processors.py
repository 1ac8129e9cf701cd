"""Logits processors and GenerationConfig: each processor equals its transformers counterpart exactly."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as hf

from multimodaltransformer.generation import (GenerationConfig, MinNewTokens, NoRepeatNGram, RepetitionPenalty,
                                              Temperature, TopK, TopP, build_processors)

V = 50


def inputs(seed: int = 0, n: int = 4, t: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 8, (n, t), generator=g)  # a small alphabet, so tokens and n-grams repeat
    return ids, torch.randn(n, V, generator=g) * 3


def check(ours, ref, ids, scores) -> None:
    expected = ref(ids, scores.clone())
    got = ours(ids, scores.clone())
    assert torch.equal(got, expected)


@pytest.mark.parametrize("penalty", [1.3, 0.6])
def test_repetition_penalty(penalty):
    ids, scores = inputs()
    check(RepetitionPenalty(penalty), hf.RepetitionPenaltyLogitsProcessor(penalty), ids, scores)
    pad = torch.tensor([0, 3, 0, 7])  # left padding is not penalised
    check(RepetitionPenalty(penalty, pad), hf.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=pad),
          ids, scores)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_no_repeat_ngram(n):
    for seed in range(3):
        ids, scores = inputs(seed)
        check(NoRepeatNGram(n), hf.NoRepeatNGramLogitsProcessor(n), ids, scores)
    short, scores = inputs(0, t=2)
    check(NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3), short, scores)


def test_no_repeat_ngram_bans_the_completing_token():
    ids = torch.tensor([[1, 2, 3, 1, 2]])
    out = NoRepeatNGram(3)(ids, torch.zeros(1, 5))
    assert out[0, 3] == float("-inf") and torch.isfinite(out[0, [0, 1, 2, 4]]).all()


@pytest.mark.parametrize("t", [5, 8, 9])
def test_min_new_tokens(t):
    ids, scores = inputs(t=t)
    eos = torch.tensor([3, 7])
    check(MinNewTokens(5, 4, eos), hf.MinNewTokensLengthLogitsProcessor(5, 4, eos), ids, scores)


def test_sampling_warpers():
    ids, scores = inputs()
    check(Temperature(0.7), hf.TemperatureLogitsWarper(0.7), ids, scores)
    for k, keep in [(1, 1), (5, 1), (3, 4), (V + 10, 1)]:
        check(TopK(k, keep), hf.TopKLogitsWarper(k, min_tokens_to_keep=keep), ids, scores)
    for p, keep in [(0.1, 1), (0.5, 1), (0.9, 3), (0.0, 1)]:
        check(TopP(p, keep), hf.TopPLogitsWarper(p, min_tokens_to_keep=keep), ids, scores)


def test_build_order_matches_transformers():
    eos = torch.tensor([1, 2])
    cfg = GenerationConfig(do_sample=True, temperature=0.5, top_k=7, top_p=0.8, repetition_penalty=1.1,
                           no_repeat_ngram_size=2, min_new_tokens=3)
    assert [type(p) for p in build_processors(cfg, 4, eos)] == [
        RepetitionPenalty, NoRepeatNGram, MinNewTokens, Temperature, TopK, TopP]
    beams = build_processors(GenerationConfig(do_sample=True, num_beams=3, top_k=1, top_p=0.5), 4, eos)
    assert [p.k for p in beams if isinstance(p, TopK)] == [3] and beams[-1].min_keep == 3  # n_eos + 1 survive
    assert build_processors(GenerationConfig(top_k=5, temperature=0.5), 4, eos) == []  # warpers: sampling only
    assert build_processors(GenerationConfig(min_new_tokens=3), 4, torch.tensor([], dtype=torch.long)) == []


def test_config_validation_and_modes():
    assert GenerationConfig().mode == "greedy" and GenerationConfig().top_k == 50  # transformers' defaults
    assert GenerationConfig(do_sample=True).mode == "sample"
    assert GenerationConfig(num_beams=2, do_sample=True).mode == "beam"
    assert GenerationConfig(num_beams=4, num_return_sequences=2).expand == 4
    assert GenerationConfig(do_sample=True, num_return_sequences=3).expand == 3
    for bad in [{"temperature": 0.0}, {"top_p": 1.5}, {"num_beams": 0}, {"max_new_tokens": -1},
                {"repetition_penalty": 0.0}, {"early_stopping": "yes"}, {"top_k": -1},
                {"num_return_sequences": 2}, {"num_beams": 2, "num_return_sequences": 3}]:
        with pytest.raises(ValueError):
            GenerationConfig(**bad)
    with pytest.raises(TypeError, match="unknown generation option"):
        GenerationConfig.from_kwargs(beams=3)
    assert GenerationConfig.from_kwargs(GenerationConfig(num_beams=3), max_new_tokens=4).num_beams == 3
