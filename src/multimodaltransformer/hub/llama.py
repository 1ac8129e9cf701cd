"""Llama checkpoints (`model_type: llama`) -> `models.llama.Llama`.

The layout is already ours (Linear weights (out, in), separate q/k/v), so the table only renames;
what needs care is the config: rope theta (`rope_parameters` in transformers 5, `rope_theta` before),
GQA, biases, and a head that is tied when the checkpoint says so or carries no lm_head.
"""

from __future__ import annotations

from typing import Any

from ..models.llama import Llama, LlamaConfig
from ..nn import TransformerConfig
from .mapping import CheckpointError, WeightTable, first_int, reject_options

FAMILY = "llama"
MODEL = Llama
PREFIXES = ("model.", "")  # LlamaForCausalLM saves "model.layers.0..." (and "lm_head.weight"), LlamaModel "layers.0..."


def rope_theta(hf: dict[str, Any]) -> float:
    """The RoPE base; only the default (unscaled) RoPE is implemented."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise CheckpointError(f"{FAMILY}: rope_type {kind!r} is not supported (only 'default')")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], names: set[str]) -> LlamaConfig:
    reject_options(hf, FAMILY, hidden_act="silu", pretraining_tp=1)
    C, H = hf.get("hidden_size", 4096), hf.get("num_attention_heads", 32)
    if hf.get("head_dim") not in (None, C // H):
        raise CheckpointError(f"{FAMILY}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads "
                              f"= {C // H} is not supported")
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise CheckpointError(f"{FAMILY}: attention_bias={bias} with mlp_bias={hf.get('mlp_bias')} is not supported")
    stack = TransformerConfig(
        dim=C, depth=hf.get("num_hidden_layers", 32), heads=H, kv_heads=hf.get("num_key_value_heads") or H,
        mlp_dim=hf.get("intermediate_size", 11008), bias=bias, activation="swiglu", norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6), position="rope", rope_base=rope_theta(hf),
        max_seq_len=hf.get("max_position_embeddings", 2048))
    eos = hf.get("eos_token_id")
    return LlamaConfig(stack, vocab_size=hf.get("vocab_size", 32000),
                       tie_embeddings=hf.get("tie_word_embeddings", "lm_head.weight" not in names),
                       bos_token_id=first_int(hf.get("bos_token_id")),
                       eos_token_id=list(eos) if isinstance(eos, list) else eos)


def weight_map(cfg: LlamaConfig) -> WeightTable:
    table: WeightTable = {"tok_embed.weight": "embed_tokens.weight", "transformer.ln_f.weight": "norm.weight"}
    names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
             "attn.out_proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.fc1": "mlp.up_proj",
             "mlp.fc2": "mlp.down_proj", "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
    params = ["weight", "bias"] if cfg.transformer.bias else ["weight"]
    for i in range(cfg.transformer.depth):
        for ours, hf in names.items():
            for p in params if not ours.startswith("ln_") else ["weight"]:
                table[f"transformer.blocks.{i}.{ours}.{p}"] = f"layers.{i}.{hf}.{p}"
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = "lm_head.weight"
    return table
