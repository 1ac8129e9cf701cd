"""POST /v1/embeddings for every model with an embedding space, through one `Embedder` per family:

- ours with a contrastive head (`heads.contrastive_dim`): texts, and images as data URLs;
- an imported CLIP: texts and images (its resize, centre crop and normalisation);
- an imported BERT / MiniLM sentence encoder (all-MiniLM-L6-v2): texts, mean-pooled as
  sentence-transformers pools them;
- a decoder-only LM (GPT-2, Llama, SmolLM2): texts, the last token's final hidden state (what vLLM
  pools for decoder models by default). Its space was not trained for retrieval: use it knowingly.

Every vector is L2-normalised (cosine similarity = dot product), in request order. Texts of one
request are embedded as one padded batch, images as another, on the worker thread between decode
steps. Strings starting with `data:` (or an allowed http(s) host) are media; the rest are texts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from fastapi import APIRouter
from torch import Tensor

from .common import APIError, check_model
from .media import MediaPolicy, MediaRejected, decode_image, image_bytes
from .schemas import Embedding, EmbeddingRequest, EmbeddingResponse

MAX_INPUTS = 256
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass
class Embedder:
    """How one model turns texts and images into normalised vectors of `dim` numbers."""

    model: Any
    family: str  # "ours", "clip", "bert", "lm"
    dim: int
    max_tokens: int
    image_processor: Any = None  # PIL image -> (3, H, W); None: texts only
    takes: list[str] = field(default_factory=lambda: ["text"])

    def token_ids(self, text: str) -> list[int]:
        tok = self.model.tokenizer
        if self.family == "ours":  # as our contrastive objective tokenizes a caption
            return [tok.bos_id, *tok.encode(text), tok.sep_id]
        # the tokenizer's own special tokens ([CLS] .. [SEP], <|startoftext|> ..) and truncation, as
        # sentence-transformers applies them; its padding (tokenizer.json may pad to a fixed length) dropped
        enc = tok.encode(text)
        return [i for i, m in zip(enc.ids, enc.attention_mask) if m]

    @torch.inference_mode()
    def texts(self, ids: list[list[int]]) -> Tensor:
        device = next(self.model.parameters()).device
        T = max(len(x) for x in ids)
        pad = 0 if self.family != "ours" else self.model.tokenizer.pad_id
        batch = torch.full((len(ids), T), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for r, x in enumerate(ids):
            batch[r, :len(x)], mask[r, :len(x)] = torch.tensor(x), 1
        batch, mask = batch.to(device), mask.to(device)
        if self.family == "bert":
            from ..models.bert import mean_pool

            return mean_pool(self.model(batch, mask).last_hidden_state, mask)
        if self.family == "lm":
            from ..nn.attention import causal_padding_mask

            h = self.model.transformer(self.model.tok_embed(batch), causal_padding_mask(mask, T, device=device))
            return F.normalize(h[torch.arange(len(ids), device=device), mask.sum(1) - 1].float(), dim=-1)
        return F.normalize(self.model.encode_text(batch, mask).float(), dim=-1)

    @torch.inference_mode()
    def images(self, pixels: list[Tensor]) -> Tensor:
        x = torch.stack(pixels).to(next(self.model.parameters()).device)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def embedder_for(model: Any, model_dir: Path | None = None) -> Embedder | None:
    """The model's embedder, or None when it has no embedding space."""
    from ..models.bert import BERT
    from ..models.clip import CLIP
    from ..models.lm import DecoderLM

    if getattr(model, "tokenizer", None) is None:
        return None
    if isinstance(model, CLIP):
        vision = model.config.vision
        return Embedder(model, "clip", model.config.projection_dim, model.config.text.transformer.max_seq_len,
                        _clip_processor(vision.image_size, model_dir), ["text", "image"])
    if isinstance(model, BERT):
        return Embedder(model, "bert", model.config.transformer.dim, model.config.transformer.max_seq_len)
    if isinstance(model, DecoderLM):
        return Embedder(model, "lm", model.config.transformer.dim, model.config.transformer.max_seq_len)
    proj = getattr(model, "image_proj", None)
    if proj is None:
        return None
    # late and joint fusion models embed images too; ours always have an image processor with the head
    return Embedder(model, "ours", model.heads_config.contrastive_dim, model.max_seq_len,
                    getattr(model, "image_processor", None), ["text", "image"])


def _clip_processor(size: int, model_dir: Path | None) -> Any:
    """CLIP's preprocessing: shorter side to `size` (bicubic), centre crop, its mean/std (or the
    directory's preprocessor_config.json)."""
    from ..modalities.preprocess import CenterCropProcessor, ImagePreprocessConfig

    mean, std = CLIP_MEAN, CLIP_STD
    file = model_dir / "preprocessor_config.json" if model_dir else None
    if file is not None and file.is_file():
        raw = json.loads(file.read_text())
        mean, std = raw.get("image_mean", mean), raw.get("image_std", std)
    return CenterCropProcessor(ImagePreprocessConfig(resize=size, crop_size=size, mean=mean, std=std))


def _is_media(s: str) -> bool:
    return s.startswith(("data:", "http://", "https://"))


def embeddings_router(embedder: Embedder | None, worker: Any, model_name: str, policy: MediaPolicy,
                      timeout_s: float) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> EmbeddingResponse:
        check_model(req.model, model_name)
        if embedder is None:
            raise APIError(400, f"model {model_name} has no embedding space (ours: heads.contrastive_dim; or serve "
                           "a CLIP or a BERT/MiniLM sentence encoder)", param="model")
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if len(inputs) > MAX_INPUTS:
            raise APIError(400, f"input: at most {MAX_INPUTS} items per request", param="input")
        if any(not s for s in inputs):
            raise APIError(400, "input: empty strings cannot be embedded", param="input")
        media = [i for i, s in enumerate(inputs) if _is_media(s)]
        if media and embedder.image_processor is None:
            raise APIError(400, f"input[{media[0]}]: model {model_name} embeds text only", param="input")
        pixels = [await asyncio.to_thread(_pixels, inputs[i], i, embedder, policy) for i in media]
        texts = [i for i in range(len(inputs)) if i not in set(media)]
        ids = [embedder.token_ids(inputs[i]) for i in texts]
        for i, x in zip(texts, ids):
            if len(x) > embedder.max_tokens:
                raise APIError(400, f"input[{i}]: {len(x)} tokens, more than the model's {embedder.max_tokens}",
                               param="input")

        def embed() -> list[Tensor]:
            out: list[Any] = [None] * len(inputs)
            if ids:
                for i, v in zip(texts, embedder.texts(ids)):
                    out[i] = v
            if pixels:
                for i, v in zip(media, embedder.images(pixels)):
                    out[i] = v
            return out

        try:
            vectors = await asyncio.to_thread(worker.run_exclusive, embed, timeout_s)
        except queue.Full:
            raise APIError(429, "the server is busy, retry shortly", headers={"Retry-After": "1"}) from None
        data: list[Any] = [v.cpu().tolist() for v in vectors]
        if req.encoding_format == "base64":  # little-endian float32, as the openai client decodes it
            data = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in data]
        tokens = sum(len(x) for x in ids)
        return EmbeddingResponse(data=[Embedding(index=i, embedding=v) for i, v in enumerate(data)],
                                 model=model_name, usage={"prompt_tokens": tokens, "total_tokens": tokens})

    return router


def _pixels(url: str, index: int, embedder: Embedder, policy: MediaPolicy) -> Tensor:
    """An image URL -> (3, H, W) for the embedder (runs in a thread)."""
    try:
        return embedder.image_processor(decode_image(image_bytes(url, policy), policy))
    except MediaRejected as e:
        raise APIError(400, f"input[{index}]: {e}", param="input") from None
