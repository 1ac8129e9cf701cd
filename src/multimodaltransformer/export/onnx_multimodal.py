"""ONNX: the library's multimodal model (`MultimodalTransformerModel`) as three graphs and a map.

The layout is the one transformers.js / onnx-community use for vision-language models: the media
and the text are embedded by their own graphs, and one decoder with a KV cache reads embeddings.

  vision_encoder.onnx        pixel_values (B, 3, H, W) -> image_features (B, N, C): the image
                             encoder, then the fusion's projection + type embedding (and null
                             tokens, or the resampler): exactly what the decoder reads
  embed_tokens.onnx          input_ids (B, T) -> inputs_embeds (B, T, C) (no positions: the decoder adds them)
  decoder_model_merged.onnx  inputs_embeds (B, T, C), attention_mask (B, P+T), position_ids (B, T),
                             [encoder_hidden_states (B, M, C): cross / gated fusion only],
                             past_key_values.{i}.key|value (B, G, P, D), P >= 0
                             -> logits (B, T, V), present.{i}.key|value (B, G, P+T, D)

Prefix fusions (early, resampler): the prefill's inputs_embeds are [image_features;
embed_tokens(prompt)] with attention_mask [ones(N); prompt mask]. Cross-attention fusions (cross,
gated): image_features go in as encoder_hidden_states at every step (prefill and decode: the
cross-attention K/V are recomputed each step, not cached; the simplest graph, M is small). The
decoder graph runs `MultimodalLM.decode_step` itself over a growing cache (`ConcatKV`), so the
masks and positions are the PyTorch model's. Beside them: config.json (this library's model config,
which rebuilds the image processor and the prompt layout) + tokenizer.json, and export.json.
Legend: B batch, N image tokens, M memory tokens, T new tokens, P past tokens, G key/value heads,
D head dim, C decoder dim, V vocab.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..fusion import uses_cross_attention
from ..models.base import write_config
from ..models.multimodal import MultimodalTransformerModel
from ..modalities.text import encode_prompt
from ..nn.cache import DecodeCache, LayerCache
from . import ExportError
from .onnx import OPSET, ConcatKV
from .onnx import write as write_decoder_lm

VISION_FILE, EMBED_FILE, DECODER_FILE = "vision_encoder.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx"
# graph fusion is let through here but refused by the vision check in _export_vision
GENERATIVE_FUSIONS = ("early", "cross", "gated", "resampler", "graph")


class VisionEncoder(nn.Module):
    """pixel_values -> the fusion's output for the decoder (its prefix or its memory)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.fusion = model.image_encoder, model.fusion

    def forward(self, pixel_values: Tensor) -> Tensor:
        out = self.fusion(self.encoder(pixel_values))
        return out.prefix if out.prefix is not None else out.memory  # (B, N, C)


class EmbedTokens(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)  # (B, T, C)


class MultimodalDecoderWithPast(nn.Module):
    """forward(inputs_embeds, attention_mask, position_ids, [encoder_hidden_states], *past) -> (logits, *present)."""

    def __init__(self, model: nn.Module, cross: bool) -> None:
        super().__init__()
        self.model, self.cross = model, cross

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor, *rest: Tensor
                ) -> tuple[Tensor, ...]:
        context, past = (rest[0], rest[1:]) if self.cross else (None, rest)
        P, T = past[0].shape[2], inputs_embeds.shape[1]
        layers = [LayerCache(ConcatKV.of(past[2 * i], past[2 * i + 1])) for i in range(len(past) // 2)]
        # the PyTorch decode step: causal over past + new slots, padding hidden, positions as given
        logits = self.model.decode_step(inputs_embeds, position_ids, attention_mask.bool(), P, context,
                                        cache=DecodeCache(layers, P + T))
        return (logits, *[t for layer in layers for t in (layer.self_attn.k, layer.self_attn.v)])


def write(model: nn.Module, out: Path, dtype: str) -> None:
    """`--format onnx`: the multimodal model in the layout above, a decoder LM in optimum's (onnx.py)."""
    if isinstance(model, MultimodalTransformerModel):
        check_exportable(model, dtype)
        return write_multimodal(model, out)
    return write_decoder_lm(model, out, dtype)


def check_exportable(model: nn.Module, dtype: str) -> None:
    """What the ONNX layout above can hold, refused by name otherwise."""
    cfg = model.config
    if dtype != "f32":
        raise ExportError(f"--format onnx of a multimodal model takes --dtype f32 (not {dtype}): the vision "
                          "encoder is written in float32 only")
    if cfg.image is None:
        raise ExportError("model.image is None: the multimodal ONNX export needs an image encoder")
    if cfg.media:
        raise ExportError(f"model.media {sorted(cfg.media)}: only the image encoder is exported to ONNX")
    if cfg.fusion.type not in GENERATIVE_FUSIONS:
        raise ExportError(f"fusion.type {cfg.fusion.type!r} does not feed the decoder (no generation): the ONNX "
                          f"export takes {GENERATIVE_FUSIONS}")
    if model.tokenizer is None:
        raise ExportError("the model has no tokenizer.json: the ONNX export needs one for its prompts")


def write_multimodal(model: nn.Module, out: Path) -> None:
    """OUT/vision_encoder.onnx, embed_tokens.onnx, decoder_model_merged.onnx, config.json, tokenizer.json,
    export.json."""
    check_exportable(model, "f32")
    out.mkdir(parents=True, exist_ok=True)
    cross = uses_cross_attention(model.config.fusion)
    probe = model.new_cache(1, 1)  # the self-attention cache's shape, as generation allocates it
    depth, (_, G, _, D) = len(probe.layers), probe.layers[0].self_attn.k.shape
    names = _io_names(depth, cross)
    _export_vision(model, out / VISION_FILE)
    _export(EmbedTokens(model), (torch.ones(2, 3, dtype=torch.long),), out / EMBED_FILE, ["input_ids"],
            ["inputs_embeds"], {"input_ids": {0: "batch_size", 1: "sequence_length"},
                                "inputs_embeds": {0: "batch_size", 1: "sequence_length"}})
    _export_decoder(model, cross, G, D, depth, names, out / DECODER_FILE)
    write_config(model, out)  # config.json (ours: rebuilds the processor) + tokenizer.json
    (out / "export.json").write_text(json.dumps(layout(model, cross, G, D, depth, names), indent=2) + "\n")


def _io_names(depth: int, cross: bool) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(depth) for kv in ("key", "value")]
    extra = ["encoder_hidden_states"] if cross else []
    return ["inputs_embeds", "attention_mask", "position_ids", *extra, *past], ["logits", *present]


def _export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: list[str], outputs: list[str],
            axes: dict[str, dict[int, str]]) -> None:
    """The TorchScript exporter (see onnx.py for why not dynamo), warnings silenced."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)


def _export_vision(model: nn.Module, path: Path) -> None:
    """Traced at batch 2, then checked at batch 3 under onnxruntime (when installed): a trace can record
    something other than what PyTorch computes (graph fusion's message passing differs, cause not yet
    found), and a wrong vision graph must not ship."""
    size = model.config.image.image_size
    _export(VisionEncoder(model), (torch.zeros(2, 3, size, size),), path, ["pixel_values"], ["image_features"],
            {"pixel_values": {0: "batch_size"}, "image_features": {0: "batch_size"}})
    try:
        import onnxruntime
    except ImportError:
        return
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"pixel_values": pixels.numpy()})[0]
    with torch.no_grad():
        diff = (torch.from_numpy(got) - VisionEncoder(model)(pixels)).abs().max().item()
    if diff > 1e-3:
        raise ExportError(f"the image encoder + {model.config.fusion.type} fusion do not export to ONNX "
                          f"faithfully: onnxruntime differs from PyTorch by {diff:.3g} on vision_encoder.onnx")


def _export_decoder(model: nn.Module, cross: bool, G: int, D: int, depth: int,
                    names: tuple[list[str], list[str]], path: Path) -> None:
    """Traced with a past of 2 and 3 new tokens (and 5 memory tokens); every batch/sequence axis dynamic."""
    B, P, T, C = 2, 2, 3, model.config.decoder.dim
    past = [torch.zeros(B, G, P, D) for _ in range(2 * depth)]
    extra = [torch.zeros(B, 5, C)] if cross else []
    args = (torch.zeros(B, T, C), torch.ones(B, P + T, dtype=torch.long), torch.arange(P, P + T).expand(B, T),
            *extra, *past)
    inputs, outputs = names
    axes = {"inputs_embeds": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "encoder_hidden_states": {0: "batch_size", 1: "encoder_sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    axes = {k: v for k, v in axes.items() if k in inputs or k in outputs}
    axes |= {n: {0: "batch_size", 2: "past_sequence_length"} for n in inputs if n.startswith("past_")}
    axes |= {n: {0: "batch_size", 2: "total_sequence_length"} for n in outputs[1:]}
    _export(MultimodalDecoderWithPast(model, cross), args, path, inputs, outputs, axes)


def layout(model: nn.Module, cross: bool, G: int, D: int, depth: int, names: tuple[list[str], list[str]]
           ) -> dict[str, Any]:
    """export.json: how the three graphs join, what to feed at prefill and at each decode step."""
    cfg, tok = model.config, model.tokenizer
    processor = model.image_processor
    return {
        "format": "onnx", "kind": "multimodal", "opset": OPSET, "dtype": "f32", "fusion": cfg.fusion.type,
        "layout": "vision_encoder + embed_tokens + decoder_model_merged (inputs_embeds), as transformers.js VLMs",
        "vision_encoder": {"file": VISION_FILE, "inputs": ["pixel_values"], "outputs": ["image_features"],
                           "pixel_values": f"[batch, 3, {processor.image_size}, {processor.image_size}] float32",
                           "image_features": f"[batch, {_image_tokens(model)}, {cfg.decoder.dim}] in the decoder's "
                                             "space (after the fusion's projection and type embedding)"},
        "image_processor": {"size": processor.image_size, "resample": "bicubic", "mean": processor.mean,
                            "std": processor.std, "formula": "(rgb_uint8 / 255 - mean) / std, channels first"},
        "embed_tokens": {"file": EMBED_FILE, "inputs": ["input_ids"], "outputs": ["inputs_embeds"]},
        "decoder": {"file": DECODER_FILE, "inputs": names[0], "outputs": names[1]},
        "num_layers": depth, "num_key_value_heads": G, "head_dim": D, "max_seq_len": cfg.decoder.max_seq_len,
        "past_shape": "[batch, num_key_value_heads, past_sequence_length, head_dim]; past may be 0",
        "prefill": ("inputs_embeds = embed_tokens(prompt), attention_mask = the prompt's (left padding), "
                    "encoder_hidden_states = image_features, empty past" if cross else
                    "inputs_embeds = concat(image_features, embed_tokens(prompt)) on the sequence axis, "
                    "attention_mask = concat(ones(image tokens), prompt mask), empty past"),
        "decode": ("inputs_embeds = embed_tokens(new token), attention_mask grown by one, position_ids = last + 1, "
                   "past = present" + (", encoder_hidden_states = image_features again" if cross else "")),
        "position_ids": "cumsum(attention_mask) - 1, clipped at 0 (image prefix tokens count)",
        "prompt_format": "<bos> [text \\n] prompt <sep>; the answer follows and ends at <eos>",
        "example_prompt": {"prompt": "what is this?", "input_ids": encode_prompt(tok, "what is this?")},
        "special_token_ids": {k: tok.special_ids[k] for k in ("pad", "bos", "eos", "sep", "unk")},
        "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
        "not_exported": "task classification / matching / contrastive heads (generation only)",
    }


def _image_tokens(model: nn.Module) -> int:
    with torch.no_grad():
        size = model.config.image.image_size
        return int(VisionEncoder(model)(torch.zeros(1, 3, size, size)).shape[1])
