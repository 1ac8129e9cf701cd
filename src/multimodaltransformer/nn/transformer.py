"""Stacks of blocks: the generic `TransformerStack`, encoder-only, decoder-only and encoder-decoder.

`TransformerStack` applies the configured positional encoding, an optional embedding norm, the
blocks and an optional final norm. `TransformerEncoder` / `TransformerDecoder` add the masks
(padding; causal + padding) and `Transformer` is the encoder-decoder of Vaswani et al. (2017),
called as the seeds do: `Transformer(d_model, nhead, num_layers)(src, tgt)`.
Legend: B batch, S source length, T target length, L cache slots, C model dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import causal_padding_mask, padding_mask
from .cache import DecodeCache, KVCache, LayerCache
from .blocks import TransformerBlock, TransformerConfig, build_norm
from .position import build_position


class EncoderOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor | None = None  # (B, C'), when the model has a pooler


class TransformerStack(nn.Module):
    """positions -> [embed norm] -> blocks -> [final norm]; (B, T, C) -> (B, T, C). Masks come from the caller."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.position = build_position(cfg.position, dim=cfg.dim, heads=cfg.heads, max_len=cfg.max_seq_len,
                                       rope_base=cfg.rope_base)
        self.ln_embed = build_norm(cfg.norm, cfg.dim, cfg.norm_eps) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.embed_dropout)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.ln_f = build_norm(cfg.norm, cfg.dim, cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.checkpointing = False  # training: recompute each block's activations in backward (memory for time)

    def forward(self, x: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None, *,
                positions: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, cache: DecodeCache | None = None) -> Tensor:
        """x (B, T, C) embeddings; mask (bool, True = attend) over keys; returns (B, T, C).

        positions (T,) or (B, T) default to `input_pos` (cache slots) or 0..T-1.
        context (B, S, C) feeds the cross-attention sub-layers (None on cached decode steps).
        With `cache` (from `new_cache`) and `input_pos`, keys and values are written at those
        slots and attention runs over all `cache.length` of them.
        """
        if positions is None:
            positions = input_pos if input_pos is not None else torch.arange(x.shape[1], device=x.device)
        x = self.position.embed(x, positions)
        if self.ln_embed is not None:
            x = self.ln_embed(x)
        x = self.drop(x)
        rotary = self.position.rotary(positions)
        if cache is not None and input_pos is None:
            raise ValueError("a cache needs input_pos (the slots the new positions are written at)")
        keys = torch.arange(cache.length, device=x.device) if cache is not None else positions
        bias = self.position.bias(positions, keys)
        if bias is not None:  # ALiBi: fold the bias into the mask; masked entries become -inf
            bias = bias.to(x.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        recompute = self.checkpointing and self.training and torch.is_grad_enabled() and input_pos is None
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, mask=mask, input_pos=input_pos, rotary=rotary, context=context,
                               context_mask=context_mask, use_reentrant=False)
            else:
                x = block(x, mask=mask, input_pos=input_pos, rotary=rotary, context=context, context_mask=context_mask,
                          cache=None if cache is None else cache.layers[i])
        return self.ln_f(x)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        """Empty caches of `max_len` self-attention slots, and of `context_len` context tokens for the
        cross-attention sub-layers (None: no context this time; they are skipped, a text-only pass)."""
        p = next(self.parameters())
        layers = []
        for block in self.blocks:
            a, cross = block.attn, block.cross_attn
            layers.append(LayerCache(
                KVCache(batch, a.kv_heads, max_len, a.head_dim, p.dtype, p.device),
                None if cross is None or context_len is None else
                KVCache(batch, cross.kv_heads, context_len, cross.head_dim, p.dtype, p.device)))
        return DecodeCache(layers, max_len)


class TransformerEncoder(nn.Module):
    """Encoder-only (bidirectional) stack: (B, S, C) with an optional (B, S) padding mask -> (B, S, C)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.stack = TransformerStack(cfg)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.stack(x, None if attention_mask is None else padding_mask(attention_mask))


class TransformerDecoder(nn.Module):
    """Decoder-only (causal) stack, with cross attention to `memory` when `cfg.cross_attention`.

    Full sequences: `forward(x, memory, attention_mask)`. Cached decoding: `new_cache`, then a
    prefill and single-token steps with `input_pos` and the cache (memory only at prefill; its K/V
    are cached).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.stack = TransformerStack(cfg)

    def forward(self, x: Tensor, memory: Tensor | None = None, attention_mask: Tensor | None = None,
                memory_attention_mask: Tensor | None = None, input_pos: Tensor | None = None,
                cache: DecodeCache | None = None) -> Tensor:
        """x (B, T, C); memory (B, S, C); attention_mask (B, T) or, when cached, (B, L) over cache slots."""
        if input_pos is None:
            mask = causal_padding_mask(attention_mask, x.shape[1], device=x.device)
        else:
            if cache is None:
                raise ValueError("input_pos given but no cache: pass cache=new_cache(...)")
            slots = torch.arange(cache.length, device=x.device)
            mask = slots[None, :] <= input_pos[:, None]  # (T, L)
            if attention_mask is not None:
                mask = mask & padding_mask(attention_mask)
        memory_mask = None if memory_attention_mask is None else padding_mask(memory_attention_mask)
        return self.stack(x, mask, input_pos, context=memory, context_mask=memory_mask, cache=cache)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        return self.stack.new_cache(batch, max_len, context_len)


@dataclass
class EncoderDecoderConfig:
    """Encoder and decoder stacks; the decoder cross-attends to the encoder output."""

    encoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(dim=512, depth=6, heads=8))
    decoder: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim=512, depth=6, heads=8, cross_attention=True))

    def __post_init__(self) -> None:
        if not self.decoder.cross_attention:
            raise ValueError("decoder.cross_attention must be true in an encoder-decoder")
        if self.encoder.dim != self.decoder.dim:
            raise ValueError(f"encoder.dim {self.encoder.dim} must equal decoder.dim {self.decoder.dim}")


class Transformer(nn.Module):
    """Encoder-decoder: `Transformer(d_model, nhead, num_layers)(src, tgt)` -> (B, T, d_model).

    src (B, S, d_model) and tgt (B, T, d_model) are embeddings (as in `torch.nn.Transformer`, no
    positions are added unless the config asks for them); the target is masked causally.
    Pass `config=EncoderDecoderConfig(...)` for anything beyond the three sizes.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_layers: int = 6, *,
                 config: EncoderDecoderConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = EncoderDecoderConfig(
                TransformerConfig(dim=d_model, heads=nhead, depth=num_layers),
                TransformerConfig(dim=d_model, heads=nhead, depth=num_layers, cross_attention=True))
        self.config = config
        self.encoder = TransformerEncoder(config.encoder)
        self.decoder = TransformerDecoder(config.decoder)

    def encode(self, src: Tensor, src_attention_mask: Tensor | None = None) -> Tensor:
        return self.encoder(src, src_attention_mask)  # memory (B, S, C)

    def forward(self, src: Tensor, tgt: Tensor, src_attention_mask: Tensor | None = None,
                tgt_attention_mask: Tensor | None = None) -> Tensor:
        """Attention masks are (B, S) / (B, T), 1 = real token (Hugging Face convention)."""
        memory = self.encode(src, src_attention_mask)
        return self.decoder(tgt, memory, tgt_attention_mask, src_attention_mask)
