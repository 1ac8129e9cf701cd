"""ONNX: a decoder LM in the layout `optimum` writes, so onnxruntime (and tools made for optimum) run it.

OUT/decoder_model_merged.onnx takes `input_ids` (B, T), `attention_mask` (B, P+T), `position_ids`
(B, T) and `past_key_values.{i}.key|value` (B, G, P, D), P >= 0, and returns `logits` (B, T, V)
and `present.{i}.key|value` (B, G, P+T, D); beside it config.json (Hugging Face's), generation_config.json,
the tokenizer files and export.json (how the pieces join). Legend: B batch, T new tokens, P past
tokens, G key/value heads, D head dim, V vocab.

The model's attention writes into a preallocated `DecodeCache` at `input_pos`; ONNX wants the past
in and the present out, so `DecoderWithPast` hands the stack a cache whose `update` concatenates
(`ConcatKV`) and returns the grown buffers. It is exported with the TorchScript exporter
(`dynamo=False`): it traces the concatenation with symbolic batch/sequence/past axes in one pass,
while the dynamo exporter needs `Dim` constraints on every past tensor and specialises a past of
length 0 (an empty tensor) to a constant; the traced graph handles P = 0 because it was traced with P > 0.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..models.lm import DecoderLM
from ..nn.cache import DecodeCache, KVCache, LayerCache
from ..nn.sequence import causal_mask
from . import ExportError
from .hf import family_of, write_config_files

DECODER_FILE = "decoder_model_merged.onnx"
OPSET = 17  # SDPA, LayerNormalization; accepted by onnxruntime >= 1.14
DTYPES = {"f32": torch.float32, "f16": torch.float16}


class ConcatKV(KVCache):
    """A KVCache that grows: `update` appends the new keys/values to the past (ONNX's past -> present)."""

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, G, P+T, D)
        return self.k, self.v


class DecoderWithPast(nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), flat as ONNX wants."""

    def __init__(self, lm: DecoderLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        P, T = past[0].shape[2], input_ids.shape[1]
        layers = [LayerCache(ConcatKV.of(past[2 * i], past[2 * i + 1])) for i in range(len(past) // 2)]
        input_pos = torch.arange(P, P + T, device=input_ids.device)
        # causal over past + new keys, padding hidden; a padded query sees itself (no NaN rows)
        mask = causal_mask(attention_mask.bool(), P, T, P + T)  # (B, 1, T, P+T)
        h = self.lm.transformer(self.lm.embed_tokens(input_ids), mask, input_pos, positions=position_ids,
                                cache=DecodeCache(layers, P + T))
        present = [t for layer in layers for t in (layer.self_attn.k, layer.self_attn.v)]
        return (self.lm.head(h), *present)


def io_names(depth: int) -> tuple[list[str], list[str]]:
    """optimum's input and output names for `depth` layers."""
    past = [f"past_key_values.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def write(model: nn.Module, out: Path, dtype: str) -> None:
    """OUT/decoder_model_merged.onnx + config.json, generation_config.json, tokenizer files, export.json."""
    if not isinstance(model, DecoderLM):
        raise ExportError(f"ONNX export of a {type(model).__name__} is not implemented: only decoder-only LMs "
                          "(gpt2, llama families), in optimum's decoder_model_merged layout, and the "
                          "library's MultimodalTransformerModel (onnx_multimodal.py)")
    if dtype not in DTYPES:
        raise ExportError(f"--format onnx takes --dtype f32 or f16, not {dtype}")
    family_of(model)  # the config.json below needs a Hugging Face family
    out.mkdir(parents=True, exist_ok=True)
    export_decoder(model.to(DTYPES[dtype]), out / DECODER_FILE)
    write_config_files(model, out, dtype)
    s = model.config.transformer
    inputs, outputs = io_names(s.depth)
    layout = {
        "format": "onnx", "layout": "optimum decoder_model_merged (text-generation-with-past)", "opset": OPSET,
        "dtype": dtype, "decoder": {"file": DECODER_FILE, "inputs": inputs, "outputs": outputs},
        "num_layers": s.depth, "num_key_value_heads": s.kv_heads or s.heads, "head_dim": s.dim // s.heads,
        "past_shape": "[batch, num_key_value_heads, past_sequence_length, head_dim]; past may be 0",
        "attention_mask": "[batch, past_sequence_length + sequence_length], 1 = real token (left padding)",
        "position_ids": "[batch, sequence_length]: cumsum(attention_mask) - 1, clipped at 0",
        "eos_token_id": model.config.eos_token_id, "bos_token_id": model.config.bos_token_id}
    (out / "export.json").write_text(json.dumps(layout, indent=2) + "\n")


def export_decoder(model: DecoderLM, path: Path) -> None:
    """Trace `DecoderWithPast` with a past of 2 and 3 new tokens; every batch/sequence axis dynamic."""
    s = model.config.transformer
    G, D, B, P, T = s.kv_heads or s.heads, s.dim // s.heads, 2, 2, 3
    p = next(model.parameters())
    past = [torch.zeros(B, G, P, D, dtype=p.dtype) for _ in range(2 * s.depth)]
    ids = torch.ones(B, T, dtype=torch.long)
    args = (ids, torch.ones(B, P + T, dtype=torch.long), torch.arange(P, P + T).expand(B, T), *past)
    inputs, outputs = io_names(s.depth)
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes |= {n: {0: "batch_size", 2: "past_sequence_length"} for n in inputs[3:]}
    axes |= {n: {0: "batch_size", 2: "total_sequence_length"} for n in outputs[1:]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(DecoderWithPast(model).eval(), args, str(path), dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
