"""GGUF: a llama-family `Llama` as one llama.cpp file (F32, F16 or Q8_0 matrices; norms stay F32), with
the config, the byte-level BPE tokenizer and the chat template in the metadata.

The tensors go through hub/gguf.py's import table backwards (`invert_table`: llama.cpp's names, and
its interleaved q/k row order re-applied by inverting `unpermute`), so this library's GGUF loader and
transformers' read the file back. The metadata keys are the ones hub/gguf.py reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..hub import gguf as gguf_import
from ..models.llama import Llama
from . import ExportError
from .hf import invert_table

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp token types


def write(model: nn.Module, out: Path, dtype: str) -> None:
    """One .gguf file at `out` (the caller renames it into place)."""
    import gguf

    if not isinstance(model, Llama):
        raise ExportError(f"GGUF export takes llama-family models (Llama, SmolLM2 ...), not a {type(model).__name__}: "
                          "this library's GGUF reader, and transformers', map the llama architecture")
    s = model.config.transformer
    if s.bias:
        raise ExportError("GGUF export: a llama model with biases has no place for them in llama.cpp's llama tensors")
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ExportError("GGUF export needs the model's tokenizer (tokenizer.json): llama.cpp reads it from the file")
    w = gguf.GGUFWriter(str(out), "llama")
    _write_config(w, model, dtype)
    _write_tokenizer(w, getattr(tok, "tokenizer", tok), model)
    Q = gguf.GGMLQuantizationType
    for name, t in invert_table(gguf_import.weight_map(model.config), model.state_dict()).items():
        a = t.float().numpy()
        kind = Q.F32 if a.ndim == 1 or dtype == "f32" else Q.F16 if dtype == "f16" or a.shape[-1] % 32 else Q.Q8_0
        w.add_tensor(name, gguf.quants.quantize(a, kind) if kind != Q.F32 else a, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_config(w: Any, model: Llama, dtype: str) -> None:
    """The `llama.*` keys hub/gguf.py's `config_from_gguf` reads."""
    import gguf

    s, cfg = model.config.transformer, model.config
    w.add_name(type(model).__name__)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])
    w.add_block_count(s.depth)
    w.add_context_length(s.max_seq_len)
    w.add_embedding_length(s.dim)
    w.add_feed_forward_length(s.hidden_dim)
    w.add_head_count(s.heads)
    w.add_head_count_kv(s.kv_heads or s.heads)
    w.add_rope_freq_base(s.rope_base)
    w.add_layer_norm_rms_eps(s.norm_eps)
    w.add_rope_dimension_count(s.dim // s.heads)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.bos_token_id is not None:
        w.add_bos_token_id(cfg.bos_token_id)
    eos = model.eos_ids
    if eos:
        w.add_eos_token_id(eos[0])
    if len(eos) == 2:  # Llama 3: <|end_of_text|> and <|eot_id|>; llama.cpp names the second eot
        w.add_eot_token_id(eos[1])
    elif len(eos) > 2:
        raise ExportError(f"GGUF export: {len(eos)} EOS ids {eos}; GGUF holds an eos and an eot id")
    if model.chat_template is not None:
        w.add_chat_template(model.chat_template)


def _write_tokenizer(w: Any, tok: Any, model: Llama) -> None:
    """A byte-level BPE tokenizer (GPT-2's, SmolLM2's, Llama 3's) as `tokenizer.ggml.*`."""
    spec = json.loads(tok.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError("GGUF export writes byte-level BPE tokenizers only (GPT-2 style, as SmolLM2's); "
                          f"this one is {spec['model']['type']} with pre-tokenizer "
                          f"{(spec.get('pre_tokenizer') or {}).get('type')}")
    vocab = tok.get_vocab(with_added_tokens=True)
    V = model.config.vocab_size
    if max(vocab.values()) >= V:
        raise ExportError(f"GGUF export: the tokenizer has ids up to {max(vocab.values())}, the model {V} embeddings")
    tokens, types = [f"[PAD{i}]" for i in range(V)], [UNUSED] * V  # padding rows, as llama.cpp's converter
    for token, i in vocab.items():
        tokens[i], types[i] = token, NORMAL
    for added in spec.get("added_tokens", []):
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    pre = "llama-bpe" if "Split" in json.dumps(spec.get("pre_tokenizer")) else "gpt2"
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    bos = model.config.bos_token_id
    w.add_add_bos_token(bos is not None and tok.encode("a").ids[:1] == [bos])
