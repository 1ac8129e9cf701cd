"""Llama: our model from a tiny random HF checkpoint matches LlamaForCausalLM at fp32 (logits, greedy tokens)."""

import json

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.hub import CheckpointError, llama
from multimodaltransformer.models import Llama

V = 101


def tiny(**kw) -> hf.LlamaForCausalLM:
    """GQA (4 query heads, 2 key/value heads), a non-default RoPE base, no biases, untied head by default."""
    torch.manual_seed(0)
    cfg = hf.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                         intermediate_size=96, vocab_size=V, max_position_embeddings=64, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None, **kw)
    return perturb(hf.LlamaForCausalLM(cfg))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = tiny()
    return ref, save(ref, tmp_path_factory.mktemp("llama"))


def test_config_reads_rope_base_gqa_and_head(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    assert isinstance(ours, Llama)
    s = ours.config.transformer
    assert (s.rope_base, s.kv_heads, s.bias, s.norm, s.activation) == (50000.0, 2, False, "rmsnorm", "swiglu")
    assert not ours.config.tie_embeddings and ours.lm_head.weight is not ours.tok_embed.weight


def test_logits_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, V, (3, 17))
    with torch.no_grad():
        diff = max_diff(ours(input_ids=ids, attention_mask=None).logits, ref(input_ids=ids).logits)
    assert diff < ATOL, diff


def test_right_padding_matches_at_real_tokens(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask).logits
        b = ref(input_ids=ids, attention_mask=mask).logits
    assert max_diff(a[0], b[0]) < ATOL and max_diff(a[1, :5], b[1, :5]) < ATOL


def test_greedy_tokens_equal_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, V, (2, 6))
    expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            pad_token_id=0)
    assert torch.equal(ours.generate(ids, max_new_tokens=24), expected)


def test_generation_stops_at_any_eos_id(checkpoint):
    _, path = checkpoint
    ours = load_pretrained(path)
    ids = torch.randint(0, V, (1, 6))
    free = ours.generate(ids, max_new_tokens=10)[0, 6:].tolist()
    stop = free[3]
    out = ours.generate(ids, max_new_tokens=10, eos_token_id=[V - 1 if stop != V - 1 else 0, stop])[0, 6:].tolist()
    assert out == free[:free.index(stop) + 1]


def test_tied_head_follows_the_config(tmp_path):
    ref = tiny(tie_word_embeddings=True)
    ours = load_pretrained(save(ref, tmp_path))
    assert ours.lm_head.weight is ours.tok_embed.weight
    ids = torch.randint(0, V, (1, 9))
    with torch.no_grad():
        assert max_diff(ours(input_ids=ids).logits, ref(input_ids=ids).logits) < ATOL


def test_older_configs_and_unsupported_options():
    legacy = {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 500000.0, "eos_token_id": [7, 9]}
    cfg = llama.config_from_hf(legacy, {"model.embed_tokens.weight"})
    assert cfg.transformer.rope_base == 500000.0 and cfg.eos_token_id == [7, 9] and cfg.tie_embeddings
    with pytest.raises(CheckpointError, match="rope_type 'llama3' is not supported"):
        llama.config_from_hf({**legacy, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, set())
    with pytest.raises(CheckpointError, match="head_dim 32"):
        llama.config_from_hf({**legacy, "head_dim": 32}, set())


def test_convert_round_trip_keeps_type_and_chat_template(checkpoint, tmp_path):
    ref, path = checkpoint
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    a = load_pretrained(path)
    assert a.chat_template == template
    out = convert(path, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mmt-llama"
    b = load_pretrained(out)
    assert isinstance(b, Llama) and b.chat_template == template
    ids = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)
