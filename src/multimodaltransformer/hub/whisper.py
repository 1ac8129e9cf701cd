"""Whisper checkpoints (`model_type: whisper`) -> `models.whisper.Whisper`.

HF names the pre-LN norms self_attn_layer_norm / encoder_attn_layer_norm / final_layer_norm and
keeps the encoder's sinusoidal table as `embed_positions.weight`. Whisper's k_proj has no bias: ours
is filled with zeros, which changes nothing, since a key bias b adds the same q.b to every score of
a row and softmax ignores it (its gradient is zero too, so it stays zero when fine-tuning).
`scale_embedding` is ignored, as HF's Whisper ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor

from ..models.whisper import Whisper, WhisperConfig
from ..modalities.audio import AudioEncoderConfig
from ..nn import TransformerConfig
from .mapping import CheckpointError, WeightTable, activation, first_int, reject_options

FAMILY = "whisper"
MODEL = Whisper
PREFIXES = ("model.", "")  # WhisperForConditionalGeneration saves "model.encoder...", WhisperModel "encoder..."

_DEFAULTS = dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, decoder_layers=4,
                 decoder_attention_heads=6, decoder_ffn_dim=1536, num_mel_bins=80, max_source_positions=1500,
                 max_target_positions=448, vocab_size=51865, activation_function="gelu", dropout=0.0,
                 decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, tie_word_embeddings=True)


def config_from_hf(hf: dict[str, Any], names: set[str]) -> WhisperConfig:
    reject_options(hf, FAMILY, use_weighted_layer_sum=False)
    c = _DEFAULTS | hf

    def stack(side: str, max_len: int, cross: bool) -> TransformerConfig:
        return TransformerConfig(dim=c["d_model"], depth=c[f"{side}_layers"], heads=c[f"{side}_attention_heads"],
                                 mlp_dim=c[f"{side}_ffn_dim"], activation=activation(c["activation_function"], FAMILY),
                                 norm_eps=1e-5, dropout=c["dropout"], position="learned", max_seq_len=max_len,
                                 cross_attention=cross)

    return WhisperConfig(
        encoder=AudioEncoderConfig(stack("encoder", c["max_source_positions"], False), n_mels=c["num_mel_bins"]),
        decoder=stack("decoder", c["max_target_positions"], True),
        vocab_size=c["vocab_size"], tie_embeddings=c["tie_word_embeddings"],
        decoder_start_token_id=c["decoder_start_token_id"], eos_token_id=first_int(c["eos_token_id"]),
        pad_token_id=first_int(c["pad_token_id"]))


def _zeros_like_rows(w: Tensor) -> Tensor:
    """k_proj.weight (C, C) -> the zero bias (C,) Whisper's key projection does without."""
    return w.new_zeros(w.shape[0])


def _attention(table: WeightTable, ours: str, hf: str) -> None:
    for n in ("q", "k", "v", "out"):
        table[f"{ours}.{n}_proj.weight"] = f"{hf}.{n}_proj.weight"
        table[f"{ours}.{n}_proj.bias"] = f"{hf}.{n}_proj.bias"
    table[f"{ours}.k_proj.bias"] = (f"{hf}.k_proj.weight", _zeros_like_rows)  # no k_proj.bias in Whisper


def _layers(table: WeightTable, ours: str, hf: str, depth: int, cross: bool) -> None:
    modules = {"ln_1": "self_attn_layer_norm", "ln_2": "final_layer_norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}
    if cross:
        modules["ln_cross"] = "encoder_attn_layer_norm"
    for i in range(depth):
        o, h = f"{ours}.blocks.{i}", f"{hf}.layers.{i}"
        for a, b in modules.items():
            table[f"{o}.{a}.weight"], table[f"{o}.{a}.bias"] = f"{h}.{b}.weight", f"{h}.{b}.bias"
        _attention(table, f"{o}.attn", f"{h}.self_attn")
        if cross:
            _attention(table, f"{o}.cross_attn", f"{h}.encoder_attn")


def weight_map(cfg: WhisperConfig) -> WeightTable:
    table: WeightTable = {
        "encoder.conv1.weight": "encoder.conv1.weight", "encoder.conv1.bias": "encoder.conv1.bias",
        "encoder.conv2.weight": "encoder.conv2.weight", "encoder.conv2.bias": "encoder.conv2.bias",
        "encoder.transformer.position.weight": "encoder.embed_positions.weight",
        "encoder.transformer.ln_f.weight": "encoder.layer_norm.weight",
        "encoder.transformer.ln_f.bias": "encoder.layer_norm.bias",
        "tok_embed.weight": "decoder.embed_tokens.weight",
        "decoder.stack.position.weight": "decoder.embed_positions.weight",
        "decoder.stack.ln_f.weight": "decoder.layer_norm.weight",
        "decoder.stack.ln_f.bias": "decoder.layer_norm.bias",
    }
    _layers(table, "encoder.transformer", "encoder", cfg.encoder.transformer.depth, cross=False)
    _layers(table, "decoder.stack", "decoder", cfg.decoder.depth, cross=True)
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = "proj_out.weight"
    return table


def _added_tokens(directory: Path) -> dict[str, int]:
    """Special tokens (<|endoftext|>, <|startoftranscript|>, languages, tasks, timestamps ...) -> ids,
    from added_tokens.json (older exports) or tokenizer_config.json's added_tokens_decoder."""
    added = directory / "added_tokens.json"
    if added.is_file():
        return {str(k): int(v) for k, v in json.loads(added.read_text()).items()}
    options = directory / "tokenizer_config.json"
    if options.is_file():
        decoder = json.loads(options.read_text()).get("added_tokens_decoder", {})
        return {entry["content"]: int(i) for i, entry in decoder.items()}
    return {}


def tokenizer_from_files(directory: Path) -> Tokenizer | None:
    """Byte-level BPE from vocab.json + merges.txt, with the special tokens at their checkpoint ids.

    No post-processor: the prompt (<|startoftranscript|>, language, task ...) is the caller's choice.
    """
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    if not (vocab_file.is_file() and merges_file.is_file()):
        return None
    vocab, merges = models.BPE.read_file(str(vocab_file), str(merges_file))
    special = _added_tokens(directory)
    clash = {t: i for t, i in special.items() if t in vocab and vocab[t] != i}
    if clash:
        raise CheckpointError(f"{directory}: special tokens {sorted(clash)[:4]} have other ids in vocab.json")
    taken = {i: t for t, i in vocab.items()}
    reused = [(t, i) for t, i in special.items() if i in taken and taken[i] != t]
    if reused:
        raise CheckpointError(f"{directory}: special token ids {reused[:4]} are already used in vocab.json")
    tok = Tokenizer(models.BPE(vocab | special, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in sorted(special.items(),
                                                                                            key=lambda kv: kv[1])])
    return tok
