import pytest

from multimodaltransformer.modalities import TextTokenizer


def test_round_trip_and_specials(tokenizer, tmp_path):
    text = "is there a small red circle left of the blue square?"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert len(ids) <= len(text.split()) + 2  # trained merges make dataset words single tokens
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == text
    assert len({tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.sep_id}) == 4
    tokenizer.save_pretrained(tmp_path)
    again = TextTokenizer.from_pretrained(tmp_path)
    assert again.encode(text) == ids and again.eos_id == tokenizer.eos_id


def test_unseen_text_still_round_trips(tokenizer):
    text = "多模态 Ünïcode and emoji 🙂"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_vocab_too_small_is_explained():
    with pytest.raises(ValueError, match="must exceed 262"):
        TextTokenizer.train(["a b c"], vocab_size=200)
