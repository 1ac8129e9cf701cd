"""GGUF files (llama.cpp's single-file format) of the llama family -> `models.llama.Llama`.

A GGUF carries the config as metadata (`llama.*`), the tokenizer as metadata (`tokenizer.ggml.*`,
`tokenizer.chat_template`) and the tensors under llama.cpp's names. Three things differ from a
Hugging Face checkpoint, and are undone here as transformers' GGUF loader does:
  * tensors may be quantised (Q4_K, Q8_0 ...): `gguf.quants.dequantize` turns them into fp32;
  * llama.cpp reorders the rows of q and k, per head, from the half-split RoPE layout (pairs
    (i, i + D/2), HF's and ours) to the interleaved one (pairs (2i, 2i + 1)): `unpermute`;
  * there is no tokenizer.json: `tokenizer_from_gguf` rebuilds one from the vocabulary, merges
    (or scores) and token types.
The `gguf` package is imported here only, when a .gguf file is read.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from torch import Tensor

from ..models.base import load_state_strict
from ..models.llama import Llama, LlamaConfig
from ..nn import TransformerConfig
from .mapping import CheckpointError, WeightTable, map_weights

FAMILY = "gguf"
CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types (1 normal, 2 unknown, 6 byte)
# `tokenizer.ggml.pre` values whose text split is Llama 3's (as transformers' GGUF_PRE_TOKENIZER_SPLITS);
# any other byte-level vocabulary is split with GPT-2's regex.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx"}


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(metadata, tensors): every tensor dequantised to fp32 in torch layout ((out, in) for matrices)."""
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError(f"{path}: reading GGUF files needs the `gguf` package (pip install gguf)") from e
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file: {e}") from e
    meta = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"{path}: tensor {t.name!r} is {t.tensor_type.name}, which gguf cannot "
                                  f"dequantise: {e}") from e
        tensors[t.name] = torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: the reader maps the file
    return meta, tensors


def config_from_gguf(meta: dict[str, Any], names: set[str], source: Path) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported (only 'llama')")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise CheckpointError(f"{source}: GGUF metadata lacks 'llama.{key}'")
        return value

    C, H = get("embedding_length"), get("attention.head_count")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if get(key, C // H) != C // H:
            raise CheckpointError(f"{source}: llama.{key}={meta[f'llama.{key}']} differs from the head dim "
                                  f"{C // H}; not supported")
    if meta.get("llama.rope.scaling.type", "none") != "none":
        raise CheckpointError(f"{source}: rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
    stack = TransformerConfig(
        dim=C, depth=get("block_count"), heads=H, kv_heads=get("attention.head_count_kv", H),
        mlp_dim=get("feed_forward_length"), bias=False, activation="swiglu", norm="rmsnorm",
        norm_eps=get("attention.layer_norm_rms_epsilon", 1e-5), position="rope",
        rope_base=get("rope.freq_base", 10000.0), max_seq_len=get("context_length", 2048))
    # llama.cpp stops at end-of-generation tokens: eos, and eot where the chat format has one (Llama 3)
    eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
    eos = list(dict.fromkeys(eos))
    return LlamaConfig(stack, vocab_size=get("vocab_size", len(meta.get("tokenizer.ggml.tokens", ()))),
                       tie_embeddings="output.weight" not in names,
                       bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                       eos_token_id=eos[0] if len(eos) == 1 else eos or None)


def unpermute(w: Tensor, heads: int) -> Tensor:
    """Undo llama.cpp's q/k row order: within each head, rows (2i, 2i + 1) go back to (i, i + D/2)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def weight_map(cfg: LlamaConfig) -> WeightTable:
    s = cfg.transformer
    table: WeightTable = {"tok_embed.weight": "token_embd.weight", "transformer.ln_f.weight": "output_norm.weight"}
    for i in range(s.depth):
        ours, g = f"transformer.blocks.{i}.", f"blk.{i}."
        table |= {
            ours + "attn.q_proj.weight": (g + "attn_q.weight", partial(unpermute, heads=s.heads)),
            ours + "attn.k_proj.weight": (g + "attn_k.weight", partial(unpermute, heads=s.kv_heads or s.heads)),
            ours + "attn.v_proj.weight": g + "attn_v.weight",
            ours + "attn.out_proj.weight": g + "attn_output.weight",
            ours + "mlp.gate.weight": g + "ffn_gate.weight",
            ours + "mlp.fc1.weight": g + "ffn_up.weight",
            ours + "mlp.fc2.weight": g + "ffn_down.weight",
            ours + "ln_1.weight": g + "attn_norm.weight",
            ours + "ln_2.weight": g + "ffn_norm.weight",
        }
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = "output.weight"
    return table


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet byte-level vocabularies are spelled in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def _merges(meta: dict[str, Any], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The file's merges, else the ones a sentencepiece vocabulary implies (best score first, as transformers)."""
    if "tokenizer.ggml.merges" in meta:
        return [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]  # type: ignore[misc]
    scores = dict(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"]))
    found = []
    for token, score in scores.items():
        pairs = [(token[:j], token[j:]) for j in range(1, len(token))]
        pairs = sorted((p for p in pairs if p[0] in vocab and p[1] in vocab), key=lambda p: (vocab[p[0]], vocab[p[1]]))
        found += [(a, b, score) for a, b in pairs]
    found.sort(key=lambda p: (p[2], len(p[0]), len(p[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def _byte_level_bpe(meta: dict[str, Any], tokens: list[str], types: list[int]) -> tuple[Tokenizer, list[str]]:
    """GPT-2 style BPE (transformers' GPT2Tokenizer): tokens outside the byte alphabet are respelled in it."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()): i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, _merges(meta, vocab), continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    if meta.get("tokenizer.ggml.pre") in LLAMA3_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # a "control" token spelled outside the byte alphabet is a llama.cpp mislabel; transformers skips it too
    return tok, [t for t, k in zip(tokens, types) if k == CONTROL and set(t) <= alphabet]


def _sentencepiece_bpe(meta: dict[str, Any], tokens: list[str], types: list[int]) -> tuple[Tokenizer, list[str]]:
    """Sentencepiece BPE with byte fallback (transformers' LlamaTokenizer): "▁" marks spaces."""
    vocab = {t: i for i, t in enumerate(tokens)}
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    tok = Tokenizer(models.BPE(vocab, _merges(meta, vocab), fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] if prefix else steps)
    special = [t for t, k in zip(tokens, types) if k == CONTROL]
    if "tokenizer.ggml.unknown_token_id" in meta:
        special.append(tokens[meta["tokenizer.ggml.unknown_token_id"]])
    return tok, special


def tokenizer_from_gguf(meta: dict[str, Any], source: Path) -> Tokenizer:
    """Byte-level BPE (`tokenizer.ggml.model` gpt2) or sentencepiece BPE (llama), as transformers builds them:
    control tokens become special tokens, user-defined ones added tokens, and BOS/EOS are added when the
    file says so (add_bos_token defaults to true for sentencepiece vocabularies, as in llama.cpp)."""
    kind, tokens = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise CheckpointError(f"{source}: GGUF metadata lacks 'tokenizer.ggml.tokens'")
    builders = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}
    if kind not in builders:
        raise CheckpointError(f"{source}: GGUF tokenizer model {kind!r} is not supported ({sorted(builders)})")
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok, special = builders[kind](meta, tokens, types)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    bos = meta.get("tokenizer.ggml.bos_token_id") if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") else None
    eos = meta.get("tokenizer.ggml.eos_token_id") if meta.get("tokenizer.ggml.add_eos_token", False) else None
    if bos is not None or eos is not None:
        def sequence(name: str, type_id: int) -> list[str]:  # e.g. ["<s>:0", "$A:0"]
            parts = [tokens[i] for i in (bos,) if i is not None] + [name] + [tokens[i] for i in (eos,) if i is not None]
            return [f"{p}:{type_id}" for p in parts]

        tok.post_processor = processors.TemplateProcessing(
            single=sequence("$A", 0), pair=sequence("$A", 0) + sequence("$B", 1),
            special_tokens=[(tokens[i], i) for i in dict.fromkeys((bos, eos)) if i is not None])
    return tok


def load_gguf(path: str | Path) -> Llama:
    """A llama-family GGUF file -> `Llama` in fp32 with `.tokenizer` and `.chat_template` (from the metadata)."""
    path = Path(path)
    meta, state = read_gguf(path)
    cfg = config_from_gguf(meta, set(state), path)
    model = Llama(cfg)
    table = weight_map(cfg)
    used = {src if isinstance(src, str) else src[0] for src in table.values()}
    unused = sorted(set(state) - used)
    if unused:  # biases, rope frequency factors ...: refuse rather than compute something else
        raise CheckpointError(f"{path}: GGUF tensors {unused[:8]} have no place in a llama model")
    load_state_strict(model, map_weights(FAMILY, table, state, model, path), path)
    model.tokenizer = tokenizer_from_gguf(meta, path)
    model.chat_template = meta.get("tokenizer.chat_template")
    return model.eval()
