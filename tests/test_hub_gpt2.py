"""GPT-2: our model from a tiny random HF checkpoint matches GPT2LMHeadModel at fp32."""

import json

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.models import GPT2


def tiny(**kw) -> hf.GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_embd=48, n_head=3, n_layer=2, vocab_size=97, n_positions=40, bos_token_id=None,
                        eos_token_id=None, **kw)
    return perturb(hf.GPT2LMHeadModel(cfg))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = tiny()
    return ref, save(ref, tmp_path_factory.mktemp("gpt2"))


def test_logits_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    assert isinstance(ours, GPT2)
    ids = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        assert max_diff(ours(input_ids=ids).logits, ref(input_ids=ids).logits) < ATOL


def test_right_padding_matches_at_real_tokens(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = ref(input_ids=ids, attention_mask=mask).logits
    assert max_diff(a[0], b[0]) < ATOL and max_diff(a[1, :5], b[1, :5]) < ATOL


def test_greedy_tokens_equal_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, 97, (2, 5))
    expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(ours.generate(ids, max_new_tokens=8), expected)


def test_untied_lm_head(tmp_path):
    ref = tiny(tie_word_embeddings=False)
    ours = load_pretrained(save(ref, tmp_path))
    assert ours.lm_head.weight is not ours.tok_embed.weight
    ids = torch.randint(0, 97, (1, 7))
    with torch.no_grad():
        assert max_diff(ours(input_ids=ids).logits, ref(input_ids=ids).logits) < ATOL


def test_loss_matches_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert abs(ours(input_ids=ids, labels=ids).loss.item() - ref(input_ids=ids, labels=ids).loss.item()) < ATOL


def test_tokenizer_from_vocab_and_merges_matches_transformers(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world, said the fox"],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.model.save(str(tmp_path))  # vocab.json + merges.txt, the original GPT-2 file layout
    save(tiny(), tmp_path)
    ours = load_pretrained(tmp_path).tokenizer
    ref = hf.GPT2Tokenizer.from_pretrained(str(tmp_path))  # reads the same vocab.json + merges.txt
    for text in ["the lazy fox", " hello  world!", "naïve café ☕"]:
        assert ours.encode(text).ids == ref(text)["input_ids"]
        assert ours.decode(ours.encode(text).ids) == text


def test_convert_round_trip(checkpoint, tmp_path):
    ref, path = checkpoint
    out = convert(path, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mmt-gpt2"
    a, b = load_pretrained(path), load_pretrained(out)
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
    assert b.lm_head.weight is b.tok_embed.weight
