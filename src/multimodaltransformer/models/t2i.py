"""Text-to-image the DALL-E way (Ramesh et al. 2021): a VQ-VAE turns images into a grid of codes, and
an autoregressive prior in the library's own decoder (models/lm.py) models text then image codes.

One sequence per (caption, image), every row the same length so that the conditional and the
unconditional prompt of classifier-free guidance line up:
    <bos> w_1 .. w_n <pad> .. <pad> <image> c_1 .. c_G*G      (text padded to `text_len` words)
Vocabulary: 3 specials, then the prompt words (a word-level vocabulary: an unknown word is an error,
not a guess), then the K image codes. The loss is on the image codes only (per-code weights optional:
`loss(..., weights)`, e.g. the objects' codes weighted up by `mmt train t2i`); a fraction
`caption_dropout` of the captions is replaced by padding while training, so the same network also
predicts p(image) and sampling can use guidance (generation/guidance.py). Sampling runs the
generation engine (KV cache, temperature, top-k / top-p, seed) with every non-image id suppressed.

`block: 2` makes one prior position write a 2x2 block of codes (J = 4 codes), as RQ-Transformer
writes a stack of codes per position: a 16x16 grid costs the backbone 64 positions, not 256. The
backbone reads a block as the sum of its codes' embeddings (code c at slot j is token
code_offset + j*K + c) plus its (row, column) in the block grid, and a small depth head
(`DepthHead`) writes the block's codes one after another from the backbone's state and the codes
already written. Sampling then steps the backbone once per block with its KV cache and runs the
engine's processors and guidance on each code (`_sample_blocks`): cond and uncond rows in one batch.
Legend: B prompts, N = B x n images, T = text_len + 2 prompt tokens, G grid side, K codes,
b block side, J = b*b codes a position, P = (G/b)^2 image positions, C width.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..nn import TransformerConfig
from ..nn.attention import causal_mask
from ..objectives import IGNORE_INDEX
from .base import PretrainedModel
from .lm import DecoderLM, DecoderLMConfig
from .vqvae import VQVAE, VQVAEConfig

PAD, BOS, BOI = 0, 1, 2  # padding, start of text, start of image
SPECIALS = 3
_WORD = re.compile(r"[a-z]+")


@dataclass
class SamplingDefaults:
    """What `mmt imagine`, the demo and the images API sample with when a request leaves an option
    out (transformers' generation_config role): each model carries the settings measured best for it."""

    guidance: float = 3.0  # classifier-free guidance scale; 1 = none
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: off
    top_p: float = 1.0
    rerank: int = 1  # candidates per kept image, when a re-ranker is at hand (MODEL/reranker)


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
    # codes per side of one prior position: 1 = one code a position (DALL-E); 2 = a 2x2 block a position
    block: int = 1
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    model_type: Literal["mmt-t2i"] = "mmt-t2i"

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if self.text_len < 1:
            raise ValueError(f"text_len must be positive, got {self.text_len}")
        if self.order not in ("raster", "column"):
            raise ValueError(f"order must be raster or column, got {self.order!r}")
        if self.block < 1 or self.vqvae.grid % self.block:
            raise ValueError(f"block must be a positive divisor of the code grid side {self.vqvae.grid}, got {self.block}")

    @property
    def image_tokens(self) -> int:
        return self.vqvae.grid ** 2

    @property
    def image_positions(self) -> int:
        """Prior positions of an image: one per code, or one per block of codes."""
        return (self.vqvae.grid // self.block) ** 2

    @property
    def seq_len(self) -> int:
        return self.text_len + 2 + self.image_positions

    @property
    def code_offset(self) -> int:
        return SPECIALS + len(self.words)


class DepthHead(nn.Module):
    """The J codes of one block, one after another: code j reads the backbone's state h plus the
    embeddings of the block's codes 0..j-1 (the caller sums them) and its slot's own embedding,
    through one residual MLP; its logits use slot j's rows of the prior's output layer."""

    def __init__(self, dim: int, slots: int) -> None:
        super().__init__()
        self.slot = nn.Parameter(torch.zeros(slots, dim))
        self.norm_in, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, u: Tensor, weight: Tensor, slot: int | None = None) -> Tensor:
        """u (..., J, C) with weight (J, K, C): every slot (training); or u (..., C) and weight
        (J, K, C) with `slot`: that slot's logits only (sampling). Returns logits (..., [J,] K)."""
        u = u + (self.slot if slot is None else self.slot[slot])
        u = self.norm_out(u + self.fc2(F.gelu(self.fc1(self.norm_in(u)))))
        if slot is not None:
            return u @ weight[slot].t()
        return torch.einsum("...jc,jkc->...jk", u, weight)


class TextToImage(PretrainedModel):
    """`generate_codes(prompts, n, ...)` -> code grids; `decode(codes)` -> pixels; `loss(text_ids, codes)`."""

    config_class = TextToImageConfig

    def __init__(self, config: TextToImageConfig) -> None:
        config = replace(config, prior=replace(config.prior, max_seq_len=config.seq_len))
        super().__init__(config)
        self.vqvae = VQVAE(config.vqvae)
        J = config.block ** 2
        vocab = config.code_offset + J * config.vqvae.quantizer.codebook_size  # a code per block slot
        self.prior = DecoderLM(DecoderLMConfig(config.prior, vocab_size=vocab, tie_embeddings=False))
        self.word_ids = {w: SPECIALS + i for i, w in enumerate(config.words)}
        if config.block > 1:
            g, C = config.vqvae.grid // config.block, config.prior.dim
            self.depth = DepthHead(C, J)
            self.block_rows, self.block_cols = nn.Embedding(g, C), nn.Embedding(g, C)
            cells = self.to_blocks(torch.arange(g * g).view(1, g, g), block=1)[0, :, 0]  # raster index per position
            self.register_buffer("cell_row", cells // g, persistent=False)
            self.register_buffer("cell_col", cells % g, persistent=False)

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
    def loss(self, text_ids: Tensor, codes: Tensor, generator: torch.Generator | None = None,
             weights: Tensor | None = None) -> Tensor:
        """Next-code cross-entropy of prompts (B, T) followed by code grids (B, G, G), with
        `caption_dropout` of the captions dropped; `weights` (B, G, G): each code's weight in the mean."""
        if self.config.caption_dropout > 0:
            drop = torch.rand(text_ids.shape[0], generator=generator) < self.config.caption_dropout
            text_ids = torch.where(drop[:, None].to(text_ids.device), self.unconditional(len(drop)).to(text_ids.device),
                                   text_ids)
        if self.config.block > 1:
            logits, targets = self._block_logits(text_ids, codes), self.to_blocks(codes)
            w = None if weights is None else self.to_blocks(weights)
        else:
            image = self.to_sequence(codes) + self.config.code_offset  # (B, G*G)
            ids = torch.cat([text_ids, image], 1)
            if weights is None:
                labels = torch.cat([torch.full_like(text_ids, IGNORE_INDEX), image], 1)
                return self.prior(ids, labels=labels).loss
            T = text_ids.shape[1]
            logits, targets, w = self.prior(ids).logits[:, T - 1:-1], image, self.to_sequence(weights)
        ce = F.cross_entropy(logits.flatten(0, -2).float(), targets.flatten(), reduction="none")
        return ce.mean() if w is None else (ce * w.flatten()).sum() / w.sum()

    def _block_logits(self, text_ids: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits (B, P, J, K) of every block's codes."""
        blocks = self.to_blocks(codes)  # (B, P, J)
        E = self.prior.embed_tokens(self._block_ids(blocks))  # (B, P, J, C)
        x = torch.cat([self.prior.embed_tokens(text_ids), self._block_input(E.sum(2))], 1)
        T, L = text_ids.shape[1], x.shape[1]
        h = self.prior.hidden(x, torch.arange(L, device=x.device), causal_mask(L, device=x.device))
        u = h[:, T - 1:-1, None] + (E.cumsum(2) - E)  # (B, P, J, C): h and the block's earlier codes
        return self.depth(u, self._block_weight())

    def _block_ids(self, blocks: Tensor, first_slot: int = 0) -> Tensor:
        """Codes (..., J') of slots first_slot.. -> vocabulary ids: code c at slot j is code_offset + j*K + c."""
        K = self.config.vqvae.quantizer.codebook_size
        slots = torch.arange(first_slot, first_slot + blocks.shape[-1], device=blocks.device)
        return blocks + self.config.code_offset + K * slots

    def _block_input(self, x: Tensor, start: int = 0) -> Tensor:
        """Summed block embeddings (B, P', C) at image positions start.. plus their (row, column)."""
        at = slice(start, start + x.shape[1])
        return x + self.block_rows(self.cell_row[at]) + self.block_cols(self.cell_col[at])

    def _block_weight(self) -> Tensor:
        """The prior's output rows of the block codes, (J, K, C)."""
        K, C = self.config.vqvae.quantizer.codebook_size, self.config.prior.dim
        return self.prior.lm_head.weight[self.config.code_offset:].view(-1, K, C)

    # ---- sampling --------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_codes(self, prompts: Sequence[str], n: int = 1, guidance: float = 3.0, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float = 1.0, seed: int | None = None,
                       progress: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """(B * n, G, G) code grids: n samples per prompt, prompt-major."""
        from ..generation.config import GenerationConfig
        from ..generation.generate import prepare, token_steps
        from ..generation.guidance import ClassifierFreeGuidance
        from ..generation.processors import build_processors

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        ids = self.tokenize(prompts).to(self.device)
        if self.config.block > 1:
            cfg = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
            if generator is None and seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(seed)
            return self._sample_blocks(ids, n, guidance, build_processors(cfg, 0, torch.zeros(0, dtype=torch.long)),
                                       generator, progress)
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

    def _sample_blocks(self, ids: Tensor, n: int, guidance: float, processors: list, generator: torch.Generator | None,
                       progress: bool) -> Tensor:
        """Block mode: the backbone once per block (KV cache), the depth head once per code; guided
        rows are the unconditional prompts stacked under the conditional ones, in one batch."""
        from ..generation.guidance import guide
        from ..generation.processors import apply

        N, T, P, J = len(ids) * n, ids.shape[1], self.config.image_positions, self.config.block ** 2
        rows = ids.repeat_interleave(n, 0)
        guided = guidance != 1.0
        if guided:
            rows = torch.cat([rows, self.unconditional(len(ids)).to(rows.device).repeat_interleave(n, 0)])
        weight, lm = self._block_weight(), self.prior
        cache = lm.new_cache(len(rows), T + P)
        slots = torch.zeros(1, 1, 1, T + P, dtype=torch.bool, device=rows.device)  # cache slots written
        slots[..., :T] = True
        at = torch.arange(T, device=rows.device)
        h = lm.hidden(lm.embed_tokens(rows), at, causal_mask(T, T + P, device=rows.device), at, cache=cache)[:, -1]
        blocks = torch.empty(N, P, J, dtype=torch.long, device=rows.device)
        for p in tqdm(range(P), desc="imagine", unit="block", disable=not progress, leave=False):
            acc = torch.zeros_like(h)  # the block's codes so far, embedded
            for j in range(J):
                logits = self.depth(h + acc, weight, slot=j).float()
                scores = guide(logits[:N], logits[N:], guidance) if guided else logits
                code = torch.multinomial(apply(processors, blocks[:, :p], scores).softmax(-1), 1, generator=generator)
                blocks[:, p, j] = code[:, 0]
                e = lm.embed_tokens(self._block_ids(code, j)[:, 0])  # (N, C)
                acc += e.repeat(2, 1) if guided else e  # the unconditional rows follow the same codes
            if p + 1 < P:
                slots[..., T + p] = True
                pos = torch.tensor([T + p], device=rows.device)
                h = lm.hidden(self._block_input(acc[:, None], p), pos, slots, pos, cache=cache)[:, -1]
        return self.from_blocks(blocks)

    def to_blocks(self, codes: Tensor, block: int | None = None) -> Tensor:
        """Grids (N, G, G) -> the prior's order of blocks (N, P, J): blocks, and the codes within a
        block, column by column (order column) or row by row (raster)."""
        b = self.config.block if block is None else block
        N, G, _ = codes.shape
        g = G // b
        x = codes.reshape(N, g, b, g, b)  # (N, block row, row, block column, column)
        x = x.permute(0, 3, 1, 4, 2) if self.config.order == "column" else x.permute(0, 1, 3, 2, 4)
        return x.reshape(N, g * g, b * b)

    def from_blocks(self, blocks: Tensor, block: int | None = None) -> Tensor:
        """The prior's order of blocks (N, P, J) -> grids (N, G, G)."""
        b = self.config.block if block is None else block
        N, g = blocks.shape[0], self.config.vqvae.grid // b
        x = blocks.reshape(N, g, g, b, b)
        x = x.permute(0, 2, 4, 1, 3) if self.config.order == "column" else x.permute(0, 1, 3, 2, 4)
        return x.reshape(N, g * b, g * b).contiguous()

    def to_sequence(self, codes: Tensor) -> Tensor:
        """Grids (N, G, G) -> the prior's order (N, G*G), one code at a time."""
        return self.to_blocks(codes, block=1).flatten(1)

    def to_grid(self, seq: Tensor) -> Tensor:
        """The prior's order (N, G*G) -> grids (N, G, G) (rows, columns)."""
        return self.from_blocks(seq[:, :, None], block=1)

    def decode(self, codes: Tensor) -> Tensor:
        """Code grids (N, G, G) -> pixels (N, 3, S, S) in [-1, 1]."""
        return self.vqvae.decode(codes.to(self.device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def caption_words(captions: Sequence[str]) -> list[str]:
    """The sorted word vocabulary of a caption set."""
    return sorted({w for c in captions for w in _WORD.findall(c.lower())})
