"""POST /v1/images/generations, as in the OpenAI images API, for a text-to-image model (models/t2i.py).

A JSON body: `prompt` (in the model's word vocabulary, at most `text_len` words), `n` (1..10),
`size` ("WxW": the model's own 64x64 by default, or 128x128 .. 1024x1024, nearest-upscaled),
`response_format` (only "b64_json": the server keeps no files to link to), and `model`, `quality`,
`style`, `user`, accepted and not used. Extras: `seed`, `guidance_scale` (classifier-free guidance,
1 = none), `temperature`, `top_k`, `top_p`, and `rerank` K: draw K candidates per image and keep the
best by the re-ranker's image-text similarity, when MODEL_DIR/reranker holds one (imagine.py).
Extras left out take the model's own defaults (its config's `sampling`), as `mmt imagine` does.
The answer is `{"created", "data": [{"b64_json": PNG, "revised_prompt": null}]}`. Sampling runs on
the worker thread (`run_exclusive`), so a busy worker answers 429 as the embeddings route does.
A text-to-image model does not chat: chat completions, embeddings and transcriptions answer 400.
"""

from __future__ import annotations

import asyncio
import base64
import io
import queue
import time
import warnings
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from ..imagine import ImagineOptions, Reranker, imagine, parse_size
from ..models.t2i import TextToImage
from .common import APIError
from .schemas import ImageData, ImageRequest, ImagesResponse

NOT_CHAT = "this model generates images: use POST /v1/images/generations"


def is_text_to_image(model: Any) -> bool:
    return isinstance(model, TextToImage)


def load_reranker(model_dir: str | Path | None) -> Reranker | None:
    """MODEL_DIR/reranker when there is one; a broken one is a warning (the server still starts, without it)."""
    if model_dir is None or not Path(model_dir, "reranker", "config.json").is_file():
        return None
    try:
        return Reranker.load(Path(model_dir, "reranker"))
    except Exception as e:  # noqa: BLE001 - any load failure: serve without re-ranking
        warnings.warn(f"{Path(model_dir, 'reranker')}: not loaded, images are not re-ranked ({e})", stacklevel=2)
        return None


def images_router(model: TextToImage, worker: Any, timeout_s: float, reranker: Reranker | None = None) -> APIRouter:
    """The images route over the server's worker (serve/worker.py), and the 400s of the routes it replaces."""
    router = APIRouter()
    native = model.config.vqvae.image_size

    @router.post("/v1/images/generations")
    async def generations(req: ImageRequest) -> ImagesResponse:
        options, side = _check(req, model, native, reranker)

        def draw() -> list[Any]:
            return imagine(model, [req.prompt], options, reranker, side)[0]

        try:
            images = await asyncio.to_thread(worker.run_exclusive, draw, timeout_s)
        except queue.Full:
            raise APIError(429, "the server is busy, retry shortly", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise APIError(504, "the request ran past its time limit") from None
        data = await asyncio.to_thread(lambda: [ImageData(b64_json=png_base64(im)) for im in images])
        return ImagesResponse(created=int(time.time()), data=data)

    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/audio/transcriptions"):
        router.add_api_route(path, _not_chat, methods=["POST"])
    return router


async def _not_chat() -> None:
    raise APIError(400, NOT_CHAT)


def _check(req: ImageRequest, model: TextToImage, native: int,
           reranker: Reranker | None) -> tuple[ImagineOptions, int]:
    """The request's sampling options and output side; APIError 400 naming the bad field."""
    if req.response_format not in (None, "b64_json"):
        why = ("this server returns images inline only: use response_format b64_json" if req.response_format == "url"
               else f"response_format: {req.response_format!r} is not b64_json")
        raise APIError(400, why, param="response_format")
    try:
        side = parse_size(req.size, native)
    except ValueError as e:
        raise APIError(400, str(e), param="size") from None
    try:  # empty, over-long and unknown-word prompts: the model's own message, before any work
        model.tokenize([req.prompt])
    except ValueError as e:
        raise APIError(400, f"prompt: {str(e).removeprefix('prompt 0: ')}", param="prompt") from None
    if (req.rerank or 1) > 1 and reranker is None:
        raise APIError(400, "rerank > 1 needs a re-ranker, and this server has none (MODEL_DIR/reranker)",
                       param="rerank")
    try:
        options = ImagineOptions(n=req.n, seed=req.seed, guidance=req.guidance_scale, temperature=req.temperature,
                                 top_k=req.top_k, top_p=req.top_p, rerank=req.rerank)
    except ValueError as e:  # ranges are checked by the schema first; a backstop
        raise APIError(400, str(e)) from None
    return options, side


def png_base64(image: Any) -> str:
    """A PIL image -> base64 of its PNG file."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
