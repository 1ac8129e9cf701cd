"""Whisper (Radford et al. 2022): an audio encoder and a text decoder that cross-attends to it.

log-mel (B, M, 2S) -> `AudioEncoder` (conv stem, sinusoidal table, pre-LN stack) -> memory (B, S, C);
tokens (B, T) -> embeddings + learned positions -> causal pre-LN stack with cross attention -> tied head.
What is Whisper-specific lives in configuration and in hub/whisper.py (its k_proj has no bias: see there).
Decoding runs through the generation engine (generation/; the model has its interface itself): the
encoder once, the decoder's self-attention K/V cached per step and the cross-attention K/V once, at
prefill. Positions are the cache slots (Whisper's learned table), so prompts are not left-padded. Legend: B batch, M mels, S audio positions, T tokens, C dim, V vocab.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modalities.audio import AudioEncoder, AudioEncoderConfig, AudioProcessor, AudioProcessorConfig
from ..modalities.text import TextTokenizer
from ..nn import TransformerConfig, TransformerDecoder
from ..nn.cache import DecodeCache
from ..nn.sequence import Embedded
from .base import PretrainedModel
from ..objectives import IGNORE_INDEX, causal_lm_loss


class WhisperText(TextTokenizer):
    """Texts to train on, written as Whisper writes them: after a space (" And Mr. John ..."), and
    with `sentence_case` their first letter a capital. A transcript trained in another form (lower
    case, no space) teaches the first token a form the model never wrote, and that change spills
    over onto every other input (benchmarks/README.md: Whisper tiny.en with LoRA)."""

    def __init__(self, tokenizer: Any, special_ids: dict[str, int], sentence_case: bool = False) -> None:
        super().__init__(tokenizer, special_ids)
        self.sentence_case = sentence_case

    def encode(self, text: str) -> list[int]:
        text = text.strip()
        if not text:
            return []
        if self.sentence_case:
            text = text[0].upper() + text[1:]
        return super().encode(" " + text)


def _whisper_decoder_stack() -> TransformerConfig:  # whisper-tiny
    return TransformerConfig(dim=384, depth=4, heads=6, mlp_dim=1536, position="learned", max_seq_len=448,
                             cross_attention=True)


@dataclass
class WhisperConfig:
    encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    decoder: TransformerConfig = field(default_factory=_whisper_decoder_stack)
    vocab_size: int = 51865
    tie_embeddings: bool = True
    decoder_start_token_id: int = 50257  # <|startoftranscript|>
    eos_token_id: int | None = 50256  # <|endoftext|>
    pad_token_id: int | None = 50256  # replaces ignored (-100) labels when they are shifted into decoder inputs
    model_type: Literal["mmt-whisper"] = "mmt-whisper"

    def __post_init__(self) -> None:
        if not self.decoder.cross_attention:
            raise ValueError("decoder.cross_attention must be true: Whisper's decoder attends to the audio")
        if self.encoder.transformer.dim != self.decoder.dim:
            raise ValueError(f"encoder dim {self.encoder.transformer.dim} must equal decoder dim {self.decoder.dim}")

    def processor_config(self) -> AudioProcessorConfig:
        """The log-mel front end this model takes: its mel count, and a window of 2S frames (30 s for S = 1500)."""
        c = AudioProcessorConfig(n_mels=self.encoder.n_mels)
        c.chunk_length = 2 * self.encoder.transformer.max_seq_len * c.hop_length / c.sampling_rate
        return c


class WhisperOutput(NamedTuple):
    loss: Tensor | None
    logits: Tensor  # (B, T, V)
    encoder_last_hidden_state: Tensor  # (B, S, C)


class Whisper(PretrainedModel):
    """`model(input_features, decoder_input_ids).logits`, `encode`, `generate`, as WhisperForConditionalGeneration."""

    config_class = WhisperConfig
    num_media_tokens = 0  # the audio is memory the decoder cross-attends to, not prefix positions
    label_smoothing = 0.0  # of the training loss (`mmt train` with `finetune`)

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__(config)
        C = config.decoder.dim
        self.encoder = AudioEncoder(config.encoder)
        self.tok_embed = nn.Embedding(config.vocab_size, C)
        self.decoder = TransformerDecoder(config.decoder)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embed.weight

    def encode(self, input_features: Tensor) -> Tensor:
        """log-mel (B, M, 2S) -> the encoder's last_hidden_state (B, S, C)."""
        return self.encoder(input_features)

    def decode(self, decoder_input_ids: Tensor, memory: Tensor,
               decoder_attention_mask: Tensor | None = None) -> Tensor:
        """Uncached: tokens (B, T) attending to memory (B, S, C) -> logits (B, T, V)."""
        T, limit = decoder_input_ids.shape[1], self.config.decoder.max_seq_len
        if T > limit:
            raise ValueError(f"{T} decoder tokens exceed max_target_positions {limit}")
        return self.lm_head(self.decoder(self.tok_embed(decoder_input_ids), memory, decoder_attention_mask))

    def forward(self, input_features: Tensor | None = None, decoder_input_ids: Tensor | None = None,
                decoder_attention_mask: Tensor | None = None, encoder_outputs: Tensor | None = None,
                labels: Tensor | None = None) -> WhisperOutput:
        """Labels are the targets at each position (not shifted here): without decoder_input_ids
        they become the inputs shifted right behind decoder_start_token_id, as in HF.

        `model(batch)` with a training batch of the library's collator instead (`mmt train`)."""
        if isinstance(input_features, Mapping):
            return self._batch_loss(input_features)
        if encoder_outputs is None:
            if input_features is None:
                raise ValueError("pass input_features (or encoder_outputs)")
            encoder_outputs = self.encode(input_features)
        if decoder_input_ids is None:
            if labels is None or self.config.pad_token_id is None:
                raise ValueError("pass decoder_input_ids (or labels, when the config has a pad_token_id)")
            start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
            decoder_input_ids = torch.cat([start, labels[:, :-1]], dim=1)
            decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == IGNORE_INDEX,
                                                              self.config.pad_token_id)
        logits = self.decode(decoder_input_ids, encoder_outputs, decoder_attention_mask)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
        return WhisperOutput(loss, logits, encoder_outputs)

    # ---- training with the library's data pipeline (`mmt train` with `finetune`) -----------------
    @property
    def processors(self) -> dict[str, AudioProcessor]:
        """The log-mel front end this model reads clips with, for the data pipeline."""
        return {"audio": AudioProcessor(self.config.processor_config())}

    def text_tokenizer(self, sentence_case: bool = False) -> WhisperText:
        """The library's prompt layout over Whisper's tokens: <bos> prompt <sep> target <eos> is
        <|startoftranscript|> <|notimestamps|> transcript <|endoftext|> for an (empty) ASR prompt,
        the prompt of an English-only model; texts as Whisper writes them (`WhisperText`).
        Multilingual models put a language and a task token between the first two, which this
        layout has no place for."""
        raw = getattr(self.tokenizer, "tokenizer", self.tokenizer)
        if raw is None:
            raise ValueError("this Whisper has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")
        special = {t.content: i for i, t in raw.get_added_tokens_decoder().items()}
        if self.config.vocab_size >= 51865:
            raise ValueError("fine-tuning a multilingual Whisper is not supported (its prompt carries language "
                             "and task tokens); use an English-only (*.en) model")
        missing = [t for t in ("<|startoftranscript|>", "<|notimestamps|>") if t not in special]
        if missing or self.config.eos_token_id is None:
            raise ValueError(f"the tokenizer lacks Whisper's special tokens {missing or ['<|endoftext|>']}")
        eos = self.config.eos_token_id
        return WhisperText(raw, {"pad": eos, "bos": special["<|startoftranscript|>"], "eos": eos,
                                 "sep": special["<|notimestamps|>"], "unk": eos}, sentence_case)

    def _batch_loss(self, batch: Mapping[str, Any]) -> WhisperOutput:
        """Causal-LM loss of a collated batch: transcripts (input_ids, labels aligned with them,
        right-padded) after the clips' `input_features`."""
        ids, labels = batch["input_ids"], batch.get("labels")
        segments = batch.get("segment_ids")
        if segments is not None and int(segments.max()) > 1:
            raise ValueError("Whisper decodes one transcript per clip: train with data.pack false or one example a clip")
        mask = segments > 0 if segments is not None else batch.get("attention_mask")
        memory = self.encode(batch["input_features"])
        logits = self.decode(ids, memory, mask)
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.label_smoothing, batch.get("label_weights"))
        return WhisperOutput(loss, logits, memory)

    # ---- the generation interface (generation/interface.py) ------------------------------------
    @property
    def max_seq_len(self) -> int:
        return self.config.decoder.max_seq_len

    @property
    def eos_token_id(self) -> int | None:
        return self.config.eos_token_id

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        return self.tok_embed(input_ids)

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, input_features: Tensor | None = None,
              encoder_outputs: Tensor | None = None) -> Embedded:
        """The decoder's tokens, and the memory: `encoder_outputs`, or input_features encoded once."""
        if encoder_outputs is None:
            if input_features is None:
                raise ValueError(f"{type(self).__name__} needs input_features (or encoder_outputs)")
            encoder_outputs = self.encode(input_features)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return Embedded(self.tok_embed(input_ids), mask, encoder_outputs)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        return self.decoder.new_cache(batch, max_len, context_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: DecodeCache) -> Tensor:
        input_pos = torch.arange(start, start + x.shape[1], device=x.device)
        h = self.decoder(x, context, attention_mask=key_mask, input_pos=input_pos, cache=cache)
        return self.lm_head(h[:, -1:])

    @torch.no_grad()
    def generate(self, input_features: Tensor | None = None, decoder_input_ids: Tensor | None = None,
                 max_new_tokens: int = 64, eos_token_id: int | None = None, suppress_tokens: Sequence[int] = (),
                 use_cache: bool = True, encoder_outputs: Tensor | None = None, **options: Any) -> Tensor:
        """Decoding through the generation engine -> (B, T + n) ids, the prompt first (default:
        decoder_start_token_id); greedy unless `options` (GenerationConfig fields: num_beams,
        do_sample ...) say otherwise.

        Rows that finished keep emitting EOS. `suppress_tokens` are never chosen. With the cache,
        the audio is encoded once, the prompt is one prefill step and each new token one decoder step.
        `encoder_outputs` (B, S, C) stand for input_features already encoded.
        """
        from ..generation import generate

        if encoder_outputs is None and input_features is None:
            raise ValueError("pass input_features (or encoder_outputs)")
        media = {"input_features": input_features} if encoder_outputs is None else {"encoder_outputs": encoder_outputs}
        B = (input_features if encoder_outputs is None else encoder_outputs).shape[0]
        ids = decoder_input_ids
        if ids is None:
            device = next(iter(media.values())).device
            ids = torch.full((B, 1), self.config.decoder_start_token_id, dtype=torch.long, device=device)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        # the engine refuses a prompt longer than max_target_positions and caps the new tokens to the rest
        return generate(self, ids, max_new_tokens=max_new_tokens,
                        eos_token_id=eos, pad_token_id=eos, suppress_tokens=list(suppress_tokens) or None,
                        use_cache=use_cache, **options, **media)
