"""Streaming: text deltas that concatenate to the decoded text, multi-byte characters, stop strings."""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from hub_utils import perturb
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn

from multimodaltransformer import load_pretrained
from multimodaltransformer.nn import KVCache
from multimodaltransformer.generation import Detokenizer, StopStrings, generate, stream

TEXT = "naïve café ☕ 日本語 — ok"


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """Byte-level BPE that never saw the non-ASCII characters: they split into byte tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog, said the fox"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_multibyte_characters_split_across_tokens(bpe):
    ids = bpe.encode(TEXT).ids
    partial = [bpe.decode(ids[:i]) for i in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial)  # the test data does split characters


def test_detokenizer_emits_whole_characters(bpe):
    ids = bpe.encode(TEXT).ids
    detok = Detokenizer(bpe.decode)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) < len(ids)  # some tokens had to wait for the rest of their character


def test_stop_strings_hold_back_possible_starts():
    s = StopStrings(["END", "\n\n"])
    assert s.feed("abcE") == "abc"  # "E" may start "END"
    assert s.feed("Nx") == "ENx" and not s.stopped
    assert s.feed("y\n") == "y"
    assert s.feed("\nzzz") == "" and s.stopped
    s = StopStrings(["world"])
    assert s.feed("hello wo") == "hello " and s.feed("rld and more") == "" and s.stopped
    assert StopStrings([]).feed("anything") == "anything"


class Scripted(nn.Module):
    """The generation interface, emitting a fixed list of token ids whatever the input."""

    num_media_tokens = 0
    max_seq_len = 512

    def __init__(self, script: list[int], vocab: int, tokenizer) -> None:
        super().__init__()
        self.script, self.vocab, self.tokenizer, self.step = script, vocab, tokenizer, 0

    def embed_tokens(self, ids):
        return torch.zeros(*ids.shape, 1)

    def embed(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return torch.zeros(*input_ids.shape, 1), mask, None

    def new_cache(self, batch, max_len, context_len=None):
        self.step = 0
        return None

    def decode_step(self, x, positions, key_mask, start, context=None, *, cache):
        logits = torch.zeros(x.shape[0], x.shape[1], self.vocab)
        logits[:, -1, self.script[min(self.step, len(self.script) - 1)]] = 1.0
        self.step += 1
        return logits


def test_stream_multibyte_and_stop_string(bpe):
    eos = bpe.token_to_id("<eos>")
    text = f"{TEXT} STOP more"
    model = Scripted(bpe.encode(text).ids + [eos], bpe.get_vocab_size(), bpe)
    prompt = torch.tensor([[5, 6, 7]])
    deltas = list(stream(model, prompt, max_new_tokens=100, eos_token_id=eos))
    assert "".join(deltas) == text and not any(d.endswith("\ufffd") for d in deltas)
    assert len(deltas) > 3  # streamed, not one block at the end
    cut = list(stream(model, prompt, max_new_tokens=100, eos_token_id=eos, stop=["STOP", "zzz"]))
    assert "".join(cut) == f"{TEXT} "
    assert "".join(stream(model, prompt, max_new_tokens=4, eos_token_id=eos)) == bpe.decode(bpe.encode(text).ids[:4])


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(bpe, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2-tok")
    bpe.model.save(str(path))  # vocab.json + merges.txt: the GPT-2 tokenizer files
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_embd=32, n_head=2, n_layer=2, vocab_size=bpe.get_vocab_size(), n_positions=64,
                        bos_token_id=None, eos_token_id=None)
    perturb(hf.GPT2LMHeadModel(cfg), scale=0.5).save_pretrained(path)
    model = load_pretrained(path)
    assert model.tokenizer is not None
    return model


@pytest.mark.parametrize("kw", [{}, {"do_sample": True, "seed": 0}, {"do_sample": True, "seed": 1, "top_k": 0},
                                {"repetition_penalty": 1.5, "no_repeat_ngram_size": 2}])
def test_stream_concatenates_to_the_decoded_generation(gpt2_with_tokenizer, kw):
    model = gpt2_with_tokenizer
    prompt = torch.tensor([model.tokenizer.encode("the quick").ids])
    ids = generate(model, prompt, max_new_tokens=30, eos_token_id=[], **kw)[0, prompt.shape[1]:].tolist()
    deltas = list(stream(model, prompt, max_new_tokens=30, eos_token_id=[], **kw))
    assert "".join(deltas) == model.tokenizer.decode(ids)
    assert not any(d.endswith("\ufffd") for d in deltas[:-1])


def test_stream_closes_the_cache_when_abandoned(gpt2_with_tokenizer):
    model = gpt2_with_tokenizer
    it = stream(model, torch.tensor([[1, 2, 3]]), max_new_tokens=30, eos_token_id=[])
    next(it)
    it.close()  # the session owns the cache (nothing on the modules) and the fast path is undone
    assert not any(isinstance(v, KVCache) for m in model.modules() for v in vars(m).values())
    assert not any("forward" in vars(m) for m in model.modules())


def test_stream_multimodal_model(tiny_model, tokenizer):
    from multimodaltransformer.data.collate import prompt_batch

    ids, mask = prompt_batch(tokenizer, ["describe the image."])
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=10)
    text = "".join(stream(tiny_model, ids, mask, pixel_values=px, max_new_tokens=10))
    assert text.strip() == tokenizer.decode(out[0, ids.shape[1]:].tolist())


def test_stream_rejects_what_it_cannot_stream(gpt2_with_tokenizer):
    model = gpt2_with_tokenizer
    with pytest.raises(ValueError, match="one prompt"):
        next(stream(model, torch.tensor([[1, 2], [3, 4]])))
    with pytest.raises(ValueError, match="one prompt"):
        next(stream(model, torch.tensor([[1, 2]]), num_beams=2))
    tok, model.tokenizer = model.tokenizer, None
    try:
        with pytest.raises(ValueError, match="tokenizer"):
            next(stream(model, torch.tensor([[1, 2]])))
    finally:
        model.tokenizer = tok
