"""GPT-2 checkpoints (`model_type: gpt2`) -> `models.gpt2.GPT2`.

GPT-2 stores Linear layers as Conv1D, weight (in, out): every matrix is transposed, and
c_attn packs q, k, v along its output dimension.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from ..models.gpt2 import GPT2, GPT2Config
from ..nn import TransformerConfig
from .mapping import WeightTable, activation, first_int, reject_options, transpose

FAMILY = "gpt2"
MODEL = GPT2
PREFIXES = ("transformer.", "")  # GPT2LMHeadModel saves "transformer.h.0...", GPT2Model "h.0..."


def config_from_hf(hf: dict[str, Any], names: set[str]) -> GPT2Config:
    reject_options(hf, FAMILY, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                   add_cross_attention=False)
    C = hf.get("n_embd", 768)
    stack = TransformerConfig(
        dim=C, depth=hf.get("n_layer", 12), heads=hf.get("n_head", 12), mlp_dim=hf.get("n_inner") or 4 * C,
        activation=activation(hf.get("activation_function", "gelu_new"), FAMILY),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned", max_seq_len=hf.get("n_positions", 1024),
        dropout=hf.get("resid_pdrop", 0.1), embed_dropout=hf.get("embd_pdrop", 0.1))
    return GPT2Config(stack, vocab_size=hf.get("vocab_size", 50257),
                      tie_embeddings=hf.get("tie_word_embeddings", True),
                      eos_token_id=first_int(hf.get("eos_token_id", 50256)))


def weight_map(cfg: GPT2Config) -> WeightTable:
    C = cfg.transformer.dim
    table: WeightTable = {
        "tok_embed.weight": "wte.weight",
        "transformer.position.weight": "wpe.weight",
        "transformer.ln_f.weight": "ln_f.weight",
        "transformer.ln_f.bias": "ln_f.bias",
    }
    for i in range(cfg.transformer.depth):
        ours, hf = f"transformer.blocks.{i}.", f"h.{i}."
        for j, n in enumerate("qkv"):  # c_attn: (C, 3C) = [q | k | v]
            table[ours + f"attn.{n}_proj.weight"] = (hf + "attn.c_attn.weight", lambda w, j=j: w[:, j * C:(j + 1) * C].t())
            table[ours + f"attn.{n}_proj.bias"] = (hf + "attn.c_attn.bias", lambda b, j=j: b[j * C:(j + 1) * C])
        table |= {
            ours + "attn.out_proj.weight": (hf + "attn.c_proj.weight", transpose),
            ours + "attn.out_proj.bias": hf + "attn.c_proj.bias",
            ours + "ln_1.weight": hf + "ln_1.weight", ours + "ln_1.bias": hf + "ln_1.bias",
            ours + "ln_2.weight": hf + "ln_2.weight", ours + "ln_2.bias": hf + "ln_2.bias",
            ours + "mlp.fc1.weight": (hf + "mlp.c_fc.weight", transpose),
            ours + "mlp.fc1.bias": hf + "mlp.c_fc.bias",
            ours + "mlp.fc2.weight": (hf + "mlp.c_proj.weight", transpose),
            ours + "mlp.fc2.bias": hf + "mlp.c_proj.bias",
        }
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = "lm_head.weight"
    return table


def tokenizer_from_files(directory: Path) -> Tokenizer | None:
    """Byte-level BPE from vocab.json + merges.txt, as HF's GPT2TokenizerFast builds it."""
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        return None
    options = directory / "tokenizer_config.json"
    prefix_space = json.loads(options.read_text()).get("add_prefix_space", False) if options.is_file() else False
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok
