"""What every multimodal LM of the library does, whatever built it: media encoders -> fusion -> a
decoder -> the LM head and task heads, and the generation interface (generation/interface.py).

`MultimodalLM` is composed of its parts, handed to its constructor: a decoder with the decoder
interface (`embed_tokens`, `hidden`, `head`: GPTDecoder, or a pretrained DecoderLM), the image
encoder and its fusion entry, further modalities' encoders and fusion entries, the heads' config.
MultimodalTransformerModel (multimodal.py) builds the parts from its config; ComposedModel
(composed.py) from pretrained checkpoints. How the image reaches the text is the fusion's business
(fusion/): prefix tokens in front of the text (early, resampler), memory the decoder cross-attends
to (cross, gated), or a pooled vector that only the task heads see (late). The prefixes or memories
of several modalities are concatenated, image first. The same decoder, run on text alone, is the
text tower of the contrastive (CLIP-style) head, and run without its causal mask, a masked-LM
encoder (UniLM).
Legend: B batch, N image tokens, P prefix tokens, M memory tokens, T text tokens, S = P + T,
C decoder dim, V vocabulary, D contrastive dim, K classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fusion import FusionConfig
from ..modalities.base import MODALITIES, input_keys, mask_keys
from ..modalities.text import TextTokenizer
from ..nn.cache import DecodeCache
from ..nn.sequence import Embedded, causal_mask, last_token, segment_mask, segment_positions
from ..objectives import causal_lm_loss, logit_scale_init
from .base import write_model_dir
from .heads import HeadsConfig, projection
from .regions import RegionHeads


class ModelOutput(NamedTuple):
    loss: Tensor | None
    logits: Tensor  # (B, T, V), aligned with input_ids


class MultimodalLM(nn.Module):
    """Media (any subset of the model's modalities) + text -> next-token logits, task-head logits
    and contrastive embeddings. Subclasses give `max_seq_len`, `num_media_tokens`, `label_smoothing`."""

    def __init__(self, decoder: nn.Module, fusion_config: FusionConfig, heads: HeadsConfig, dim: int, *,
                 image_encoder: nn.Module | None = None, fusion: nn.Module | None = None,
                 image_dim: int | None = None, media: Mapping[str, tuple[nn.Module, nn.Module]] | None = None,
                 ctc_dim: int | None = None, vocab_size: int | None = None,
                 region_input: dict[str, Any] | None = None) -> None:
        """`media`: {name: (encoder, fusion entry)} of the modalities besides the image (registered as
        "{name}_encoder" and "{name}_fusion"); `ctc_dim`: the audio tokens' width for a CTC head
        over `vocab_size` tokens and CTC's blank; `region_input`: the RegionHeads arguments for the
        encoder they read (default: the image encoder's tokens)."""
        super().__init__()
        self.fusion_config, self.heads_config = fusion_config, heads
        self.decoder = decoder
        self.image_encoder, self.fusion = image_encoder, fusion
        for name, (encoder, entry) in (media or {}).items():
            self.add_module(f"{name}_encoder", encoder)
            self.add_module(f"{name}_fusion", entry)
        self._build_heads(heads, image_dim, dim)
        self.region_heads = None
        if heads.region_weight > 0 and heads.region_classes:
            if region_input is None and image_dim is None:
                raise ValueError("heads.region_weight needs an image or video encoder")
            self.region_heads = RegionHeads(classes=heads.region_classes,
                                            **(region_input or {"dim": image_dim, "modality": "image"}))
        self.ctc_head = None if ctc_dim is None else nn.Linear(ctc_dim, vocab_size + 1)
        self.tokenizer: TextTokenizer | None = None
        self.image_processor: Any = None
        self.media_processors: dict[str, Any] = {}

    @property
    def processors(self) -> dict[str, Any]:
        """Processors by modality name: the data pipeline and the server read media through them."""
        image = self.image_processor
        return ({"image": image} if image is not None else {}) | self.media_processors

    def media_parts(self, name: str) -> tuple[nn.Module, nn.Module]:
        """The encoder and the fusion entry of modality `name`."""
        return (self.image_encoder, self.fusion) if name == "image" else (
            getattr(self, f"{name}_encoder"), getattr(self, f"{name}_fusion"))

    def _media_inputs(self, pixel_values: Tensor | None, media: Mapping[str, Any]) -> dict[str, Tensor]:
        """Keyword inputs -> {modality: batch}; unknown keywords and modalities the model lacks are errors."""
        keys = input_keys()
        if unknown := sorted(set(media) - set(keys)):
            raise TypeError(f"unknown model input(s) {unknown}; media inputs are {sorted(keys)}")
        inputs = {"image": pixel_values} | {keys[k]: v for k, v in media.items()}
        inputs = {name: x for name, x in inputs.items() if x is not None}
        for name in inputs:
            if (self.image_encoder is None) if name == "image" else name not in self.media_processors:
                what = "image encoder" if name == "image" else f"{name} encoder (model.media.{name})"
                raise ValueError(f"this model has no {what} but {MODALITIES[name].input_key} were given")
        return inputs

    def _build_heads(self, heads: HeadsConfig, image_dim: int | None, dim: int) -> None:
        self.image_proj = self.text_proj = self.logit_scale = self.itm_head = None
        if heads.contrastive_dim is not None:
            if image_dim is None:
                raise ValueError("heads.contrastive_dim needs an image encoder")
            self.image_proj = projection(image_dim, heads.contrastive_dim, heads.contrastive_hidden)
            self.text_proj = projection(dim, heads.contrastive_dim, heads.contrastive_hidden)
            self.logit_scale = nn.Parameter(torch.tensor(logit_scale_init()))
        if heads.itm:
            self.itm_head = nn.Linear(dim, 2)
        self.heads = nn.ModuleDict({task: nn.Linear(dim, len(labels)) for task, labels in heads.classes.items()})
        self.head_labels = {task: list(labels) for task, labels in heads.classes.items()}

    @property
    def is_late_fusion(self) -> bool:
        return self.image_encoder is not None and self.fusion_config.type == "late"

    @property
    def is_dual_encoder(self) -> bool:
        """Fusion "joint": image and text meet only in the contrastive space."""
        return self.image_encoder is not None and self.fusion_config.type == "joint"

    # ---- forward -------------------------------------------------------------------------
    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
              media_mask: Mapping[str, Tensor] | None = None, **media: Tensor) -> Embedded:
        """Decoder inputs: prefix tokens (if any) then the text; no media means a text-only pass.

        `media` are the other modalities' batches by their keyword (input_features ...);
        `media_mask` {modality: (B,) bool} marks the rows that have it, where some do not (their
        batch rows are padding): memory of a row's missing modality is masked out of its attention.
        """
        text = self.decoder.embed_tokens(input_ids)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        padding = {name: media.pop(key) for key, name in mask_keys().items() if key in media}  # (B, frames)
        inputs = self._media_inputs(pixel_values, media)
        if not inputs:
            return Embedded(text, mask)
        if self.is_late_fusion or self.is_dual_encoder:
            raise ValueError(f"{self.fusion_config.type} fusion does not feed the image to the decoder: it cannot "
                             "generate from it (late: use the task heads; joint: the contrastive space)")
        prefixes, memories, memory_masks, encoded = [], [], [], {}
        for name, x in inputs.items():
            encoder, fusion = self.media_parts(name)
            frames = padding.get(name)
            encoded[name] = encoder(x) if frames is None else encoder(x, frames)
            out = fusion(encoded[name])
            rows = (media_mask or {}).get(name)
            if out.prefix is not None:
                if rows is not None and not bool(rows.all()):
                    raise ValueError(f"rows without {name} in a batch need cross or gated fusion (a prefix "
                                     "cannot be masked out of packed rows); batch them apart")
                prefixes.append(out.prefix)
            if out.memory is not None:
                memories.append(out.memory)
                keep = None if rows is None else rows.to(mask.device)[:, None].expand(-1, out.memory.shape[1])
                if frames is not None and out.memory.shape[1] == encoded[name].shape[1]:  # a clip's padding
                    tokens = encoder.token_mask(frames).to(mask.device)
                    keep = tokens if keep is None else keep & tokens
                memory_masks.append(keep)
        context = torch.cat(memories, 1) if memories else None
        context_mask = None
        if any(m is not None for m in memory_masks):  # rows missing a modality, or clips with padding
            context_mask = torch.cat([m if m is not None else mask.new_ones(mem.shape[:2])
                                      for m, mem in zip(memory_masks, memories)], 1)
            context_mask = context_mask | ~context_mask.any(1, keepdim=True)  # a row with no media: nothing real
        if prefixes:
            prefix = torch.cat(prefixes, 1)
            text = torch.cat([prefix, text], 1)
            mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.bool, device=mask.device), mask], 1)
        return Embedded(text, mask, context, context_mask, encoded)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                      pixel_values: Tensor | None = None, segment_ids: Tensor | None = None,
                      bidirectional: bool = False, media_mask: Mapping[str, Tensor] | None = None,
                      return_encoded: bool = False, **media: Tensor) -> Any:
        """Final hidden states (B, T, C) at the text positions.

        `segment_ids` (B, T), from the packing collator, mark several examples that share one
        image (0 = padding): positions restart and attention stays within each example.
        `bidirectional` lets every token see the whole (unpadded) text: the masked-LM pass.
        `return_encoded`: (hidden states, {modality: its encoder's tokens}).
        """
        if segment_ids is not None:
            attention_mask = segment_ids > 0
        x, mask, context, context_mask, encoded = self.embed(input_ids, attention_mask, pixel_values, media_mask,
                                                             **media)
        S, n = x.shape[1], x.shape[1] - input_ids.shape[1]
        if segment_ids is not None:
            positions, attn = segment_positions(segment_ids, n), segment_mask(
                torch.cat([segment_ids.new_zeros(segment_ids.shape[0], n), segment_ids], 1), n)
        else:
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            if bidirectional:
                attn = mask[:, None, None, :] | torch.eye(S, dtype=torch.bool, device=x.device)
            else:
                attn = causal_mask(mask, 0, S, S)
        if int(positions.max()) >= self.max_seq_len:
            raise ValueError(f"sequence of {int(positions.max()) + 1} positions exceeds max_seq_len {self.max_seq_len}")
        extra = {} if context_mask is None else {"context_mask": context_mask[:, None, None, :]}
        h = self.decoder.hidden(x, positions, attn, context=context, **extra)[:, n:]
        return (h, encoded or {}) if return_encoded else h

    def forward(self, batch: Mapping[str, Any] | None = None, *, input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                labels: Tensor | None = None, segment_ids: Tensor | None = None,
                media_mask: Mapping[str, Tensor] | None = None, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None, label_weights: Tensor | None = None,
                region_boxes: Tensor | None = None, region_labels: Tensor | None = None, **rest: Any) -> ModelOutput:
        """Call as `model(batch)` with a dict from the collator, or with keyword tensors.

        `labels` (B, T) are aligned with `input_ids` (IGNORE_INDEX where no loss); the shift
        happens in the loss, as in Hugging Face models; `label_weights` (B, T) weigh them
        (objectives.example_weights). Other media come by their keyword
        (input_features ...); other keys of a batch (class labels ...) are ignored. With a CTC
        head, `ctc_targets` (B, U) and `ctc_lengths` (B,) (0: no transcript) add its loss; with region
        heads, `region_boxes` (B, S, R, 4) and `region_labels` (B, S, R, A) (models/regions.py) add theirs.
        """
        if batch is not None:
            return self.forward(**{k: v for k, v in batch.items() if isinstance(v, Tensor) or k == "media_mask"})
        if input_ids is None:
            raise ValueError("input_ids are required")
        media = {k: v for k, v in rest.items() if k in input_keys() or k in mask_keys()}
        h, encoded = self.hidden_states(input_ids, attention_mask, pixel_values, segment_ids, media_mask=media_mask,
                                        return_encoded=True, **media)
        logits = self.decoder.head(h)
        loss = causal_lm_loss(logits, labels, self.label_smoothing, label_weights) if labels is not None else None
        if loss is not None and self.ctc_head is not None and ctc_lengths is not None and "audio" in encoded:
            frames = media.get(MODALITIES["audio"].mask_key)
            tokens = None if frames is None else self.media_parts("audio")[0].token_mask(frames).sum(1)
            loss = loss + self.heads_config.ctc_weight * self.ctc_loss(encoded["audio"], ctc_targets, ctc_lengths,
                                                                        tokens)
        regions = self.region_heads
        if loss is not None and regions is not None and region_boxes is not None and regions.modality in encoded:
            loss = loss + self.heads_config.region_weight * regions.loss(encoded[regions.modality], region_boxes,
                                                                          region_labels)
        return ModelOutput(loss, logits)

    def ctc_loss(self, audio_tokens: Tensor, targets: Tensor, lengths: Tensor, frames: Tensor | None = None) -> Tensor:
        """CTC loss of the audio tokens (B, N, C_a) against `targets` (B, U) over the rows with
        lengths > 0; `frames` (B,): each clip's tokens (None: all N, the padding silence emitting blanks)."""
        rows = lengths > 0
        if not bool(rows.any()):
            return audio_tokens.sum() * 0.0  # keeps the graph (DDP) with no transcript in the batch
        log_probs = self.ctc_head(audio_tokens[rows]).float().log_softmax(-1).transpose(0, 1)  # (N, B', V + 1)
        frames = (torch.full((log_probs.shape[1],), log_probs.shape[0], dtype=torch.long, device=lengths.device)
                  if frames is None else frames.to(lengths.device)[rows])
        return F.ctc_loss(log_probs, targets[rows], frames, lengths[rows], blank=log_probs.shape[-1] - 1,
                          zero_infinity=True)

    # ---- heads -------------------------------------------------------------------------------
    def features(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 pixel_values: Tensor | None = None, **media: Tensor) -> Tensor:
        """The pooled joint representation (B, C) the task and matching heads read: the decoder's
        last real token over [image; text], or, with late fusion, an MLP over pooled image and text."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if self.is_dual_encoder:
            raise ValueError("a dual encoder (fusion joint) has no joint representation for heads; "
                             "compare encode_image / encode_text instead")
        if self.is_late_fusion:
            text = last_token(self.hidden_states(input_ids, mask), mask)
            if pixel_values is None:
                raise ValueError("late fusion heads need pixel_values")
            return self.fusion(self.image_encoder(pixel_values), text)
        return last_token(self.hidden_states(input_ids, mask, pixel_values, **media), mask)

    def classify(self, task: str, input_ids: Tensor, attention_mask: Tensor | None = None,
                 pixel_values: Tensor | None = None, **media: Tensor) -> Tensor:
        """Logits (B, K) of the classification head of `task` (labels in `head_labels[task]`)."""
        if task not in self.heads:
            raise KeyError(f"no classification head for task {task!r}; heads: {sorted(self.heads)}")
        return self.heads[task](self.features(input_ids, attention_mask, pixel_values, **media))

    def itm_logits(self, input_ids: Tensor, attention_mask: Tensor | None, pixel_values: Tensor) -> Tensor:
        """Image-text matching logits (B, 2), class 1 = the text describes the image."""
        if self.itm_head is None:
            raise ValueError("this model has no image-text matching head (heads.itm)")
        return self.itm_head(self.features(input_ids, attention_mask, pixel_values))

    def encode_image(self, pixel_values: Tensor, lock_encoder: bool = False) -> Tensor:
        """Contrastive image embeddings (B, D), not normalised: mean of the encoder tokens, projected.

        `lock_encoder` keeps gradients out of the image encoder (LiT, Zhai et al. 2022): only the
        projection (and the text side) learn from the contrastive loss.
        """
        if self.image_proj is None:
            raise ValueError("this model has no contrastive head (heads.contrastive_dim)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not lock_encoder):
            pooled = self.image_features(pixel_values)
        return self.image_proj(pooled)

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """What the image projection reads (B, C_image): the mean of the encoder tokens."""
        return self.image_encoder(pixel_values).mean(1)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """What the text projection reads (B, C): the text-only decoder pass, pooled by `heads.text_pool`."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        h = self.hidden_states(input_ids, mask)
        if self.heads_config.text_pool == "mean":
            return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return last_token(h, mask)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                    lock_decoder: bool = False) -> Tensor:
        """Contrastive text embeddings (B, D): the text-only decoder pass at the last real token
        (CLIP's causal text tower reads its EOT token the same way) or averaged (`heads.text_pool`),
        projected. `lock_decoder` keeps gradients out of the decoder (only the projection learns)."""
        if self.text_proj is None:
            raise ValueError("this model has no contrastive head (heads.contrastive_dim)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not lock_decoder):
            pooled = self.text_features(input_ids, attention_mask)
        return self.text_proj(pooled)

    # ---- incremental decoding (used by generation/) ----------------------------------------
    @property
    def max_seq_len(self) -> int:
        """Positions the decoder can address, media prefix tokens included."""
        raise NotImplementedError

    @property
    def num_media_tokens(self) -> int:
        """Tokens the media add in front of the text (0 when they are memory)."""
        raise NotImplementedError

    @property
    def label_smoothing(self) -> float:
        raise NotImplementedError

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """Token ids (B, T) -> the decoder's input embeddings (B, T, C) (a decode step's new tokens)."""
        return self.decoder.embed_tokens(input_ids)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        """An empty decode cache (nn/cache.py) for `batch` rows of `max_len` slots."""
        return self.decoder.transformer.new_cache(batch, max_len, context_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: DecodeCache) -> Tensor:
        """Run embeddings x (B, T, C) at absolute slots start..start+T through the cached decoder.

        key_mask (B, L) marks the cache slots holding real tokens; `context` (B, M, C) is given
        at the prefill only (its K/V are cached, its padding in `cache.context_mask`); returns logits (B, T, V).
        """
        T, L = x.shape[1], key_mask.shape[1]
        input_pos = torch.arange(start, start + T, device=x.device)
        extra = {} if cache.context_mask is None else {"context_mask": cache.context_mask[:, None, None, :]}
        h = self.decoder.hidden(x, positions, causal_mask(key_mask, start, T, L), input_pos=input_pos,
                                context=context, cache=cache, **extra)
        return self.decoder.head(h)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 pixel_values: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Prompt ids (B, T) -> prompt + new tokens (B, T + new); see `generation.generate`."""
        from ..generation import generate

        return generate(self, input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json (`self.config`) + model.safetensors (+ the tokenizer's files when attached)."""
        directory = write_model_dir(self, directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)
