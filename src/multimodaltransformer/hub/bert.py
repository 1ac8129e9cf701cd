"""BERT checkpoints (`model_type: bert`, MiniLM included) -> `models.bert.BERT`.

BERT is post-LN: attention.output.LayerNorm follows the attention residual (our ln_1) and
output.LayerNorm the MLP residual (our ln_2); embeddings.LayerNorm is the stack's embed norm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..models.bert import BERT, BERTConfig
from ..nn import TransformerConfig
from .mapping import WeightTable, activation, reject_options

FAMILY = "bert"
MODEL = BERT
PREFIXES = ("bert.", "")  # BertFor* heads save "bert.embeddings...", BertModel "embeddings..."


def config_from_hf(hf: dict[str, Any], names: set[str]) -> BERTConfig:
    reject_options(hf, FAMILY, position_embedding_type="absolute", is_decoder=False, add_cross_attention=False)
    dropout = hf.get("hidden_dropout_prob", 0.1)
    stack = TransformerConfig(
        dim=hf.get("hidden_size", 768), depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072), activation=activation(hf.get("hidden_act", "gelu"), FAMILY),
        norm_eps=hf.get("layer_norm_eps", 1e-12), norm_first=False, position="learned",
        max_seq_len=hf.get("max_position_embeddings", 512), embed_norm=True, final_norm=False,
        dropout=dropout, embed_dropout=dropout)
    pad = hf.get("pad_token_id")
    return BERTConfig(stack, vocab_size=hf.get("vocab_size", 30522), type_vocab_size=hf.get("type_vocab_size", 2),
                      pad_token_id=0 if pad is None else pad,
                      pooler=any(n.endswith("pooler.dense.weight") for n in names))


def weight_map(cfg: BERTConfig) -> WeightTable:
    table: WeightTable = {
        "word_embed.weight": "embeddings.word_embeddings.weight",
        "type_embed.weight": "embeddings.token_type_embeddings.weight",
        "transformer.position.weight": "embeddings.position_embeddings.weight",
        "transformer.ln_embed.weight": "embeddings.LayerNorm.weight",
        "transformer.ln_embed.bias": "embeddings.LayerNorm.bias",
    }
    for i in range(cfg.transformer.depth):
        ours, hf = f"transformer.blocks.{i}.", f"encoder.layer.{i}."
        names = {
            "attn.q_proj": "attention.self.query", "attn.k_proj": "attention.self.key",
            "attn.v_proj": "attention.self.value", "attn.out_proj": "attention.output.dense",
            "ln_1": "attention.output.LayerNorm", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
            "ln_2": "output.LayerNorm",
        }
        for a, b in names.items():
            table[f"{ours}{a}.weight"], table[f"{ours}{a}.bias"] = f"{hf}{b}.weight", f"{hf}{b}.bias"
    if cfg.pooler:
        table |= {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
    return table


def tokenizer_from_files(directory: Path) -> Tokenizer | None:
    """WordPiece from vocab.txt with BERT's normaliser and [CLS] A [SEP] (B [SEP]) template."""
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        return None
    options = directory / "tokenizer_config.json"
    opts = json.loads(options.read_text()) if options.is_file() else {}
    lower = opts.get("do_lower_case", True)
    tok = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=opts.get("unk_token", "[UNK]")))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=opts.get("tokenize_chinese_chars", True),
        strip_accents=opts.get("strip_accents"), lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = opts.get("cls_token", "[CLS]"), opts.get("sep_token", "[SEP]")
    specials = [opts.get(k, d) for k, d in (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"),
                                              ("sep_token", "[SEP]"), ("mask_token", "[MASK]"))]
    tok.add_special_tokens([s for s in specials if tok.token_to_id(s) is not None])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok
