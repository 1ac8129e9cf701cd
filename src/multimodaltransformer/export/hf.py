"""Hugging Face directories: a GPT-2 or Llama `DecoderLM` as config.json + model.safetensors + tokenizer
files that `transformers.AutoModelForCausalLM.from_pretrained` loads with equal logits.

The weights go through the import tables of hub/gpt2.py and hub/llama.py backwards, so there is one
mapping per family, not two: a plain name is renamed, and a transformed one (GPT-2's Conv1D
transposes, its packed c_attn) is inverted by pushing an index probe through the import transform
(`_invert`). The config is written by a small function per family and checked by reading it back
through the family's own `config_from_hf`: a model the format cannot express (a GPT-2 stack with
RoPE, say) is refused by name. Other models of this library (the multimodal model, composed
models) are written in this library's own layout (`save_pretrained`), which `load_pretrained` reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..hub import gpt2, llama
from ..hub.mapping import ACTIVATIONS, WeightTable
from ..models.gpt2 import GPT2
from ..models.llama import Llama
from ..models.lm import CHAT_TEMPLATE_FILE, DecoderLM
from . import ExportError

DTYPES = {"f32": torch.float32, "f16": torch.float16}
TORCH_DTYPE_NAMES = {"f32": "float32", "f16": "float16"}
# our activation -> the first Hugging Face name that maps to it (gelu_tanh -> "gelu_new", GPT-2's own)
HF_ACTIVATIONS = {ours: hf for hf, ours in reversed(ACTIVATIONS.items())}


def family_of(model: nn.Module) -> ModuleType:
    """The hub/ mapping module of a decoder LM we can write as Hugging Face's, else an ExportError."""
    if isinstance(model, GPT2):
        return gpt2
    if isinstance(model, Llama):
        return llama
    raise ExportError(f"a {type(model).__name__} has no Hugging Face equivalent here: the Hugging Face and "
                      "ONNX (optimum layout) exports take decoder-only LMs of the gpt2 and llama families")


def write(model: nn.Module, out: Path, dtype: str) -> None:
    """A Hugging Face directory for GPT-2 / Llama; this library's layout for its other models."""
    if dtype not in DTYPES:
        raise ExportError(f"--format hf takes --dtype f32 or f16, not {dtype}")
    if not isinstance(model, DecoderLM):
        if not hasattr(model, "save_pretrained"):
            raise ExportError(f"a {type(model).__name__} cannot be saved (no save_pretrained)")
        model.to(DTYPES[dtype]).save_pretrained(out)  # config.json + model.safetensors (+ tokenizer.json)
        return
    family = family_of(model)
    out.mkdir(parents=True, exist_ok=True)
    write_config_files(model, out, dtype)
    state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in hf_state(model, family).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def write_config_files(model: DecoderLM, out: Path, dtype: str = "f32") -> dict[str, Any]:
    """config.json, generation_config.json and the tokenizer files (shared with the ONNX export)."""
    family = family_of(model)
    hf = hf_config(model, family)
    hf["torch_dtype"] = TORCH_DTYPE_NAMES.get(dtype, "float32")
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    generation = {"bos_token_id": hf.get("bos_token_id"), "eos_token_id": hf.get("eos_token_id"),
                  "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_tokenizer_files(model, out)
    return hf


def hf_config(model: DecoderLM, family: ModuleType) -> dict[str, Any]:
    """config.json of the family, checked by reading it back with the family's importer."""
    cfg = model.config
    hf = (_gpt2_config if family is gpt2 else _llama_config)(cfg)
    back = family.config_from_hf(hf, set(family.weight_map(cfg)))
    differ = [f"{name}: ours {a!r}, as {family.FAMILY} {b!r}" for name, a, b in _fields(cfg, back) if a != b]
    if differ:
        raise ExportError(f"{type(model).__name__} cannot be written as a Hugging Face {family.FAMILY} model: "
                          + "; ".join(differ))
    return hf


def _fields(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(name, a, b) for the fields that decide the computation (dropout and token ids are not checked)."""
    ta, tb = (dataclasses.replace(c.transformer, mlp_dim=c.transformer.hidden_dim, mlp_ratio=0.0, dropout=0.0,
                                  embed_dropout=0.0) for c in (a, b))
    rows = [(f"transformer.{f.name}", getattr(ta, f.name), getattr(tb, f.name)) for f in dataclasses.fields(ta)]
    return rows + [(n, getattr(a, n), getattr(b, n)) for n in ("vocab_size", "tie_embeddings")]


def _common(cfg: Any, architecture: str, model_type: str) -> dict[str, Any]:
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": cfg.vocab_size,
            "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id}


def _gpt2_config(cfg: Any) -> dict[str, Any]:
    s = cfg.transformer
    activation = HF_ACTIVATIONS.get(s.activation, s.activation)  # an unknown one fails the read-back check
    return _common(cfg, "GPT2LMHeadModel", "gpt2") | {
        "n_embd": s.dim, "n_layer": s.depth, "n_head": s.heads, "n_inner": s.hidden_dim,
        "n_positions": s.max_seq_len, "n_ctx": s.max_seq_len, "activation_function": activation,
        "layer_norm_epsilon": s.norm_eps, "resid_pdrop": s.dropout, "embd_pdrop": s.embed_dropout,
        "attn_pdrop": s.dropout, "scale_attn_weights": True}


def _llama_config(cfg: Any) -> dict[str, Any]:
    s = cfg.transformer
    return _common(cfg, "LlamaForCausalLM", "llama") | {
        "hidden_size": s.dim, "num_hidden_layers": s.depth, "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads or s.heads, "head_dim": s.dim // s.heads,
        "intermediate_size": s.hidden_dim, "hidden_act": "silu", "rms_norm_eps": s.norm_eps,
        "max_position_embeddings": s.max_seq_len, "attention_bias": s.bias, "mlp_bias": s.bias,
        # transformers >= 5 reads rope_parameters, older versions rope_theta
        "rope_theta": s.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": s.rope_base}}


def hf_state(model: DecoderLM, family: ModuleType) -> dict[str, Tensor]:
    """Our state dict under the family's Hugging Face names (the `*ForCausalLM` prefix included)."""
    prefix = family.PREFIXES[0]  # "transformer." / "model.": the head model's base; the head itself has none
    return {(name if name.startswith("lm_head") else prefix + name): t
            for name, t in invert_table(family.weight_map(model.config), model.state_dict()).items()}


def invert_table(table: WeightTable, own: dict[str, Tensor]) -> dict[str, Tensor]:
    """An import table (our name -> checkpoint name + transform) run backwards: checkpoint name -> tensor."""
    by_source: dict[str, list[tuple[str, Callable[[Tensor], Tensor] | None]]] = {}
    for ours, src in table.items():
        name, fn = (src, None) if isinstance(src, str) else src
        by_source.setdefault(name, []).append((ours, fn))
    return {name: _invert(name, entries, own) for name, entries in by_source.items()}


def _invert(name: str, entries: list[tuple[str, Callable[[Tensor], Tensor] | None]],
            own: dict[str, Tensor]) -> Tensor:
    """The checkpoint tensor that the import transforms of `entries` turn into our tensors.

    Import transforms only move elements (transpose, slice of a packed tensor, reshape): applied to
    an index probe of a candidate checkpoint shape, they say where each of our elements came from.
    """
    if len(entries) == 1 and entries[0][1] is None:
        return own[entries[0][0]].detach().clone()
    values = torch.cat([own[ours].detach().reshape(-1) for ours, _ in entries])
    for shape in _candidate_shapes(tuple(own[entries[0][0]].shape), len(entries)):
        probe = torch.arange(math.prod(shape)).reshape(shape)
        try:
            picked = [probe if fn is None else fn(probe) for _, fn in entries]
        except (RuntimeError, IndexError, ValueError):
            continue
        if any(p.shape != own[ours].shape for p, (ours, _) in zip(picked, entries)):
            continue
        where = torch.cat([p.reshape(-1) for p in picked])
        if where.numel() == probe.numel() and torch.equal(where.sort().values, probe.reshape(-1)):
            out = torch.empty(probe.numel(), dtype=values.dtype)
            out[where] = values
            return out.reshape(shape)
    raise ExportError(f"cannot invert the import mapping of checkpoint tensor {name!r} "
                      f"(from {[ours for ours, _ in entries]})")


def _candidate_shapes(shape: tuple[int, ...], parts: int) -> list[tuple[int, ...]]:
    """Our shape or its transpose, one dimension multiplied by the number of packed parts."""
    out: list[tuple[int, ...]] = []
    for base in (shape, shape[::-1]):
        for d in range(len(base)) if parts > 1 else [0]:
            cand = base[:d] + (base[d] * parts,) + base[d + 1:] if parts > 1 else base
            if cand not in out:
                out.append(cand)
    return out


def write_tokenizer_files(model: DecoderLM, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja): what AutoTokenizer reads."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return
    tok = getattr(tok, "tokenizer", tok)  # the TextTokenizer training wraps a tokenizers.Tokenizer in
    tok.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                              "model_max_length": model.max_seq_len}
    for key, ids in (("bos_token", model.config.bos_token_id), ("eos_token", model.eos_ids[:1] or None)):
        token_id = ids[0] if isinstance(ids, list) else ids
        if token_id is not None and tok.id_to_token(token_id) is not None:
            config[key] = tok.id_to_token(token_id)
    if model.chat_template is not None:
        config["chat_template"] = model.chat_template
        (out / CHAT_TEMPLATE_FILE).write_text(model.chat_template)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
