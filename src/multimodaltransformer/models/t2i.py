"""Text-to-image the DALL-E way (Ramesh et al. 2021): a VQ-VAE turns images into a grid of codes, and
an autoregressive prior in the library's own decoder (models/lm.py) models text then image codes.

One sequence per (caption, image), every row the same length so that the conditional and the
unconditional prompt of classifier-free guidance line up:
    <bos> w_1 .. w_n <pad> .. <pad> <image> c_1 .. c_G*G      (text padded to `text_len` words)
Vocabulary: 3 specials, then the prompt words (a word-level vocabulary: an unknown word is an error,
not a guess), then the K image codes. The loss is on the image codes only; a fraction
`caption_dropout` of the captions is replaced by padding while training, so the same network also
predicts p(image) and sampling can use guidance (generation/guidance.py). Sampling runs the
generation engine (KV cache, temperature, top-k / top-p, seed) with every non-image id suppressed.
Legend: B prompts, N = B x n images, T = text_len + 2 prompt tokens, G grid side, K codes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor
from tqdm import tqdm

from ..nn import TransformerConfig
from ..objectives import IGNORE_INDEX
from .base import PretrainedModel
from .lm import DecoderLM, DecoderLMConfig
from .vqvae import VQVAE, VQVAEConfig

PAD, BOS, BOI = 0, 1, 2  # padding, start of text, start of image
SPECIALS = 3
_WORD = re.compile(r"[a-z]+")


@dataclass
class TextToImageConfig:
    words: list[str] = field(default_factory=list)  # the prompt vocabulary
    text_len: int = 16  # prompt words at most
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    prior: TransformerConfig = field(default_factory=lambda: TransformerConfig(dim=192, depth=4, heads=6,
                                                                               position="learned"))
    caption_dropout: float = 0.15  # training: captions replaced by padding (what guidance needs)
    # the order the prior writes the grid in: raster (row by row, DALL-E's) or column (column by column,
    # left to right: the order ShapesWorld captions name objects in, so text and image align)
    order: Literal["raster", "column"] = "raster"
    model_type: Literal["mmt-t2i"] = "mmt-t2i"

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.text_len < 1:
            raise ValueError(f"text_len must be positive, got {self.text_len}")
        if self.order not in ("raster", "column"):
            raise ValueError(f"order must be raster or column, got {self.order!r}")

    @property
    def image_tokens(self) -> int:
        return self.vqvae.grid ** 2

    @property
    def seq_len(self) -> int:
        return self.text_len + 2 + self.image_tokens

    @property
    def code_offset(self) -> int:
        return SPECIALS + len(self.words)


class TextToImage(PretrainedModel):
    """`generate_codes(prompts, n, ...)` -> code grids; `decode(codes)` -> pixels; `loss(text_ids, codes)`."""

    config_class = TextToImageConfig

    def __init__(self, config: TextToImageConfig) -> None:
        config = replace(config, prior=replace(config.prior, max_seq_len=config.seq_len))
        super().__init__(config)
        self.vqvae = VQVAE(config.vqvae)
        vocab = config.code_offset + config.vqvae.quantizer.codebook_size
        self.prior = DecoderLM(DecoderLMConfig(config.prior, vocab_size=vocab, tie_embeddings=False))
        self.word_ids = {w: SPECIALS + i for i, w in enumerate(config.words)}

    # ---- prompts ---------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> (B, T) rows `<bos> words <pad>.. <image>`; errors name empty, long or unknown prompts."""
        T = self.config.text_len
        rows = torch.full((len(prompts), T + 2), PAD, dtype=torch.long)
        rows[:, 0], rows[:, -1] = BOS, BOI
        for r, prompt in enumerate(prompts):
            words = _WORD.findall(prompt.lower())
            if not words:
                raise ValueError(f"prompt {r}: empty prompt {prompt!r}; describe a scene, e.g. "
                                 f"'a large red circle left of a small blue square'")
            if len(words) > T:
                raise ValueError(f"prompt {r}: {len(words)} words, more than the {T} this model reads: {prompt!r}")
            unknown = sorted({w for w in words if w not in self.word_ids})
            if unknown:
                raise ValueError(f"prompt {r}: unknown word(s) {unknown} in {prompt!r}; this model knows: "
                                 f"{' '.join(self.config.words)}")
            rows[r, 1:1 + len(words)] = torch.tensor([self.word_ids[w] for w in words])
        return rows

    def unconditional(self, batch: int) -> Tensor:
        """(B, T) prompts with the caption dropped: `<bos> <pad>.. <image>`."""
        rows = torch.full((batch, self.config.text_len + 2), PAD, dtype=torch.long)
        rows[:, 0], rows[:, -1] = BOS, BOI
        return rows

    # ---- training --------------------------------------------------------------------------------
    def loss(self, text_ids: Tensor, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Next-code cross-entropy of prompts (B, T) followed by code grids (B, G, G), with
        `caption_dropout` of the captions dropped."""
        if self.config.caption_dropout > 0:
            drop = torch.rand(text_ids.shape[0], generator=generator) < self.config.caption_dropout
            text_ids = torch.where(drop[:, None].to(text_ids.device), self.unconditional(len(drop)).to(text_ids.device),
                                   text_ids)
        image = self.to_sequence(codes) + self.config.code_offset  # (B, G*G)
        ids = torch.cat([text_ids, image], 1)
        labels = torch.cat([torch.full_like(text_ids, IGNORE_INDEX), image], 1)
        return self.prior(ids, labels=labels).loss

    # ---- sampling --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_codes(self, prompts: Sequence[str], n: int = 1, guidance: float = 3.0, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float = 1.0, seed: int | None = None,
                       progress: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B * n, G, G) code grids: n samples per prompt, prompt-major."""
        from ..generation.config import GenerationConfig
        from ..generation.generate import prepare, token_steps
        from ..generation.guidance import ClassifierFreeGuidance

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ids = self.tokenize(prompts).to(self.device)
        cfg = GenerationConfig(max_new_tokens=self.config.image_tokens, do_sample=True, temperature=temperature,
                               top_k=top_k, top_p=top_p, num_return_sequences=n, seed=seed, eos_token_id=[],
                               suppress_tokens=list(range(self.config.code_offset)))
        plan = prepare(self.prior, ids, None, cfg, {})
        if generator is not None:  # one generator across calls (batches of a long prompt file)
            plan.generator = generator
        guide = None
        if guidance != 1.0:
            guide = ClassifierFreeGuidance(self.prior, self.unconditional(len(prompts)).to(self.device), guidance,
                                           plan.max_new_tokens, n)
            plan.processors.insert(0, guide)
        out = plan.prompt
        try:
            for _, out in tqdm(token_steps(plan), total=plan.max_new_tokens, desc="imagine", unit="tok",
                               disable=not progress, leave=False):
                pass
        finally:
            if guide is not None:
                guide.close()
        return self.to_grid(out[:, ids.shape[1]:] - self.config.code_offset)

    def to_sequence(self, codes: Tensor) -> Tensor:
        """Grids (N, G, G) -> the prior's order (N, G*G)."""
        return (codes.transpose(1, 2) if self.config.order == "column" else codes).flatten(1)

    def to_grid(self, seq: Tensor) -> Tensor:
        """The prior's order (N, G*G) -> grids (N, G, G) (rows, columns)."""
        G = self.config.vqvae.grid
        grid = seq.reshape(-1, G, G)
        return grid.transpose(1, 2).contiguous() if self.config.order == "column" else grid

    def decode(self, codes: Tensor) -> Tensor:
        """Code grids (N, G, G) -> pixels (N, 3, S, S) in [-1, 1]."""
        return self.vqvae.decode(codes.to(self.device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def caption_words(captions: Sequence[str]) -> list[str]:
    """The sorted word vocabulary of a caption set."""
    return sorted({w for c in captions for w in _WORD.findall(c.lower())})
