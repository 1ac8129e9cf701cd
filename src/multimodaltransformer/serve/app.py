"""The HTTP server: OpenAI-compatible routes over one `ModelWorker`, and the web chat page.

Routes: POST /v1/chat/completions (plain or `stream: true` server-sent events ending in
`data: [DONE]`; media come as `image_url`, `input_audio` and `video_url` parts; a speech model
answers an `input_audio` clip with its transcript, serve/speech.py; a decoder LM chats in text through
its chat template, serve/textchat.py),
POST /v1/audio/transcriptions (speech models, serve/transcriptions.py),
POST /v1/embeddings (models with a contrastive space), POST /v1/images/generations (text-to-image
models, serve/images.py, which answer nothing else), GET /v1/models, GET /health, GET / (the
chat page), GET /v1/examples (what the model takes and does, and the example images with suggested
questions saved in MODEL_DIR/examples, serve/examples.py), GET /examples/NAME (only the images listed
there). Every error is a 4xx/5xx with OpenAI's error body; no model work runs on the event loop
(media are decoded in a thread, decoding happens in the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.collate import collate_media
from ..evaluate import SPOKEN_PROMPT_TOKENS, transcribes_prompts
from ..generation import generate
from ..modalities.text import encode_prompt
from .common import APIError, check_model, error_status, json_error, next_event, submit_job
from .embeddings import Embedder, embedder_for, embeddings_router
from .examples import load_examples
from .images import images_router, is_text_to_image, load_reranker
from .ops import Lifecycle, add_operations
from .media import MediaPolicy, MediaRejected, decode_image, decode_video, image_bytes, input_audio, video_bytes
from .schemas import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
                      ChunkChoice, Delta, ExampleCard, ExampleList,
                      ModelCard, ModelKind, ModelList, Usage, error)
from .speech import SpeechJob, Transcriber, is_speech_model
from .template import TemplateError, build_conversation
from .textchat import ChatTemplatePrompter, is_chat_lm
from .transcriptions import transcription_router
from .worker import Job, ModelWorker


@dataclass
class ServerConfig:
    model_name: str = "model"
    model_dir: Path | None = None  # where the chat page's examples are read from (MODEL_DIR/examples)
    api_key: str | None = None  # every route but /health and the page then needs "Authorization: Bearer KEY"
    cors_origins: list[str] = field(default_factory=list)  # none: CORS off
    max_batch: int = 16
    queue_size: int = 64
    request_timeout_s: float = 120.0
    max_body_bytes: int = 72 * 1024 * 1024  # room for a video of MediaPolicy.max_video_bytes, base64-encoded
    default_max_tokens: int = 64
    media: MediaPolicy = field(default_factory=MediaPolicy)
    threads: int | None = None  # torch threads of the model worker (None: torch's setting when it starts)


def create_app(model: Any, config: ServerConfig | None = None) -> FastAPI:
    """The app for `model` (a multimodal model with a tokenizer, or a text-to-image model); starts its
    worker thread."""
    cfg = config or ServerConfig()
    if getattr(model, "tokenizer", None) is None and not is_text_to_image(model):
        raise ValueError("the model has no tokenizer: serve a saved model directory with tokenizer.json")
    worker = ModelWorker(model, max_batch=cfg.max_batch, queue_size=cfg.queue_size, threads=cfg.threads)
    transcriber = Transcriber(model) if is_speech_model(model) else None
    prompter = ChatTemplatePrompter(model) if is_chat_lm(model) else None  # a decoder LM: its chat template
    embedder = embedder_for(model, cfg.model_dir)  # None: no embedding space

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()  # the server stops: so does the worker thread

    app = FastAPI(title="multimodaltransformer", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.worker, app.state.config = worker, cfg
    created = int(time.time())

    _add_error_handlers(app, cfg)
    add_operations(app, worker, cfg.api_key, cfg.cors_origins)  # /metrics, access log, API key, drain

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": cfg.model_name, "load": worker.load, "max_batch": cfg.max_batch,
                "decode_steps": worker.steps, "dtype": getattr(model, "precision", "f32")}

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=cfg.model_name, created=created)])

    _add_example_routes(app, cfg, model_kind(model, embedder))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (resources.files("multimodaltransformer") / "serve" / "static" / "index.html").read_text()

    if is_text_to_image(model):  # images only: chat, embeddings and transcriptions answer 400
        app.include_router(images_router(model, worker, cfg.request_timeout_s, load_reranker(cfg.model_dir)))
        return app
    _add_chat_route(app, model, cfg, worker, transcriber, prompter, embedder)
    app.include_router(embeddings_router(embedder, worker, cfg.model_name, cfg.media, cfg.request_timeout_s))
    app.include_router(transcription_router(model, worker, cfg.model_name, cfg.request_timeout_s,
                                            cfg.media.max_bytes, transcriber))
    return app


def _add_error_handlers(app: FastAPI, cfg: ServerConfig) -> None:
    """Every error in OpenAI's shape; the body size limit, before any route."""
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return json_error(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return json_error(400, f"invalid JSON body: {first.get('msg', '')}", code="invalid_json")
        where = ".".join(loc) or "body"
        return json_error(400, f"{where}: {first.get('msg', 'invalid value')}", param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return json_error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception) -> JSONResponse:  # a bug must not leak a traceback
        return json_error(500, f"internal error ({type(e).__name__})")

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
            return json_error(413, f"request body larger than {cfg.max_body_bytes} bytes")
        return await call_next(request)


def _add_chat_route(app: FastAPI, model: Any, cfg: ServerConfig, worker: ModelWorker,
                    transcriber: Transcriber | None, prompter: ChatTemplatePrompter | None,
                    embedder: Embedder | None) -> None:
    """POST /v1/chat/completions: a job for the worker, answered whole or streamed (SSE)."""
    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request) -> Any:
        _check_model(req.model, cfg)
        if embeds_only(embedder):
            raise APIError(400, f"model {cfg.model_name} is an embedding model ({type(model).__name__}): use "
                           "POST /v1/embeddings", param="model")
        if transcriber is not None:
            job, prompt_tokens = await _make_speech_job(req, transcriber, cfg)
        else:
            job, prompt_tokens = await _make_job(req, model, cfg, prompter)
        life: Lifecycle = app.state.lifecycle
        events = submit_job(worker, job, life, prompt_tokens)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        n = req.n
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_sse(job, events, request, rid, now, cfg.model_name, n, prompt_tokens,
                                          include_usage, life), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, finish = [""] * n, [None] * n
        try:
            while any(f is None for f in finish):
                i, text, reason, err = await next_event(events, request, job)
                if err:
                    raise APIError(error_status(err), err)
                if text:
                    texts[i] += text
                if reason:
                    finish[i] = reason
        finally:
            job.cancelled.set()  # a no-op when done; stops the rows of a request that failed or left
            life.untrack(job)
        completion = sum(job.completion_tokens)
        return ChatCompletion(id=rid, created=now, model=cfg.model_name,
                              choices=[Choice(index=i, message=AssistantMessage(content=texts[i]),
                                              finish_reason=finish[i]) for i in range(n)],
                              usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                          total_tokens=prompt_tokens + completion))


def _add_example_routes(app: FastAPI, cfg: ServerConfig, kind: ModelKind) -> None:
    """GET /v1/examples and /examples/NAME: the chat page's starting points (serve/examples.py);
    those with an image only for a model that takes images."""
    shown = [e for e in load_examples(cfg.model_dir) if e.image is None or "image" in kind.inputs]
    files = {e.name: e.image for e in shown if e.image is not None}  # all /examples/ can serve

    @app.get("/v1/examples")
    async def examples() -> ExampleList:
        return ExampleList(model=cfg.model_name, kind=kind, data=[
            ExampleCard(image=None if e.name is None else f"/examples/{e.name}", questions=list(e.questions))
            for e in shown])

    @app.get("/examples/{name:path}")
    async def example_image(name: str) -> FileResponse:
        if name not in files:  # only listed files: no path of the request reaches the disk
            raise APIError(404, f"no example image {name!r}")
        return FileResponse(files[name])


def model_kind(model: Any, embedder: Embedder | None = None) -> ModelKind:
    """What `model` takes and does, as the chat page shows it."""
    if embeds_only(embedder):
        return ModelKind(inputs=embedder.takes, task=f"{' or '.join(embedder.takes)} -> embedding", embeddings=True)
    if is_text_to_image(model):
        return ModelKind(inputs=["text"], task="text -> image", output="image")
    if is_speech_model(model):
        return ModelKind(inputs=["audio"], task="speech -> transcript")
    embeddings = embedder is not None
    # late and joint fusion never feed the image to the decoder: their chat is text only
    sees_images = not (getattr(model, "is_late_fusion", False) or getattr(model, "is_dual_encoder", False))
    media = [name for name in getattr(model, "processors", {}) if name != "image" or sees_images]
    if media:
        return ModelKind(inputs=[*media, "text"], task=f"{' + '.join(media)} + text -> text", embeddings=embeddings)
    return ModelKind(inputs=["text"], task="text chat", embeddings=embeddings)


def embeds_only(embedder: Embedder | None) -> bool:
    """An imported CLIP or BERT/MiniLM: embeddings, no chat."""
    return embedder is not None and embedder.family in ("clip", "bert")


def px_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _check_model(name: str, cfg: ServerConfig) -> None:
    check_model(name, cfg.model_name)


def _pixels(url: str, model: Any, policy: MediaPolicy) -> torch.Tensor:
    """An image URL -> normalised pixel values (1, 3, H, W) for the model (runs in a thread)."""
    if getattr(model, "image_processor", None) is None:
        raise APIError(400, "this model takes no images")
    try:
        image = decode_image(image_bytes(url, policy), policy)
    except MediaRejected as e:
        raise APIError(400, str(e), param="messages") from None
    return model.image_processor(image)[None].to(px_device(model))


def _audio_features(part: Any, model: Any, policy: MediaPolicy) -> dict[str, torch.Tensor]:
    """An `input_audio` part -> {"input_features": (1, M, frames)} and its padding mask for the model,
    as a data batch has them (runs in a thread)."""
    proc = model.processors["audio"]
    try:
        wave = input_audio(part.data, part.format, policy, proc.config.sampling_rate, proc.config.chunk_length)
    except MediaRejected as e:
        raise APIError(400, str(e), param="messages") from None
    batch = collate_media([{"audio": proc.prepare(wave, "input_audio")}], {"audio": proc})
    return {k: v.to(px_device(model)) for k, v in batch.items()}


def _video_features(url: str, model: Any, policy: MediaPolicy) -> dict[str, torch.Tensor]:
    """A `video_url` -> {"pixel_values_videos": (1, T, 3, H, W)} for the model (runs in a thread)."""
    proc = model.processors["video"]
    try:
        frames = decode_video(video_bytes(url, policy), proc, policy)
    except MediaRejected as e:
        raise APIError(400, str(e), param="messages") from None
    return {"pixel_values_videos": proc.collate([frames]).to(px_device(model))}


async def _make_job(req: ChatCompletionRequest, model: Any, cfg: ServerConfig,
                    prompter: ChatTemplatePrompter | None = None) -> tuple[Job, int]:
    """A chat request -> a worker job: a decoder LM's prompt from its chat template (`prompter`),
    else ours (`<bos> [context] question <sep>`) after the request's media."""
    if prompter is not None:
        try:
            stops = req.stops()
        except ValueError as e:
            raise APIError(400, str(e), param="stop") from None
        ids, pixel_values, media = prompter.prompt_ids(req.messages), None, {}
    else:
        ids, pixel_values, media, stops = await _media_prompt(req, model, cfg)
    n_media = model.num_media_tokens if pixel_values is not None or media else 0
    room = model.max_seq_len - n_media - len(ids)
    if room < 1:
        raise APIError(400, f"the messages are {len(ids) + n_media} tokens long; this model takes at most "
                       f"{model.max_seq_len - 1} before its answer", param="messages", code="context_length_exceeded")
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} is more than the {room} tokens left after the prompt",
                       param="max_tokens", code="context_length_exceeded")
    if req.num_beams > 1 and req.stream:
        raise APIError(400, "beam search (num_beams > 1) cannot stream", param="num_beams")
    if req.num_beams > 1 and req.n > req.num_beams:
        raise APIError(400, "n must not exceed num_beams with beam search", param="n")
    job = Job(torch.tensor([ids]), pixel_values, emit=lambda *a: None, media=media,
              max_new_tokens=max_tokens or min(cfg.default_max_tokens, room), temperature=req.temperature,
              top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty, seed=req.seed, n=req.n,
              num_beams=req.num_beams, length_penalty=req.length_penalty, stops=stops,
              deadline=time.monotonic() + cfg.request_timeout_s, strip=prompter is None)
    return job, len(ids) + n_media


async def _media_prompt(req: ChatCompletionRequest, model: Any,
                        cfg: ServerConfig) -> tuple[list[int], torch.Tensor | None, dict[str, torch.Tensor], list[str]]:
    """Our models' prompt ids, image pixels, other media inputs and stop strings for a chat request."""
    takes = getattr(model, "processors", {})
    hears = "audio" in takes
    try:  # a model that hears may be asked by a clip alone (a spoken question; a clip to transcribe)
        conv = build_conversation(req.messages, require_prompt=not hears)
        stops = req.stops()
    except (TemplateError, ValueError) as e:
        raise APIError(400, str(e), param="messages") from None
    if conv.has_audio and not hears:
        raise APIError(400, "this model takes no audio (input_audio)", param="messages")
    if conv.video_url and "video" not in takes:
        raise APIError(400, "this model takes no video (video_url)", param="messages")
    if not conv.prompt and not conv.has_audio:
        raise APIError(400, "the last user message has no text: ask something", param="messages")
    media = await asyncio.to_thread(_audio_features, conv.audio, model, cfg.media) if conv.has_audio else {}
    prompt = conv.prompt
    if media and not prompt and (conv.image_url or conv.video_url) and transcribes_prompts(model):
        # a spoken question about the picture: the model's transcript of it is the prompt (evaluate.heard)
        clip, media = media, {}  # the clip's features and padding mask; the answer reads the picture only
        prompt = await asyncio.to_thread(_transcribe, model, clip)
    if conv.video_url:
        media |= await asyncio.to_thread(_video_features, conv.video_url, model, cfg.media)
    pixel_values = await asyncio.to_thread(_pixels, conv.image_url, model, cfg.media) if conv.image_url else None
    return encode_prompt(model.tokenizer, prompt, conv.context), pixel_values, media, stops


@torch.no_grad()
def _transcribe(model: Any, clip: dict[str, torch.Tensor]) -> str:
    """The model's own greedy transcript of a clip (runs in a thread, beside the worker's decoding)."""
    ids = torch.tensor([encode_prompt(model.tokenizer, "")], device=clip["input_features"].device)
    out = generate(model, ids, **clip, max_new_tokens=SPOKEN_PROMPT_TOKENS)
    return model.tokenizer.decode(out[0, ids.shape[1]:].tolist()).strip()


async def _make_speech_job(req: ChatCompletionRequest, transcriber: Transcriber, cfg: ServerConfig) -> tuple[Job, int]:
    try:
        conv = build_conversation(req.messages, require_prompt=False)
        stops = req.stops()
    except (TemplateError, ValueError) as e:
        raise APIError(400, str(e), param="messages") from None
    if conv.audio is None:
        raise APIError(400, "this speech model transcribes audio: send an input_audio content part",
                       param="messages")
    if conv.image_url or conv.video_url:
        raise APIError(400, "this speech model takes no images or video, only an input_audio clip", param="messages")
    if req.n > 1 or req.num_beams > 1:
        raise APIError(400, "a speech model gives one greedy transcript: n and num_beams must be 1", param="n")
    try:
        wave = await asyncio.to_thread(transcriber.waveform, conv.audio.data, conv.audio.format, cfg.media)
    except MediaRejected as e:
        raise APIError(400, str(e), param="messages") from None
    room = transcriber.model.config.decoder.max_seq_len - transcriber.prompt_len
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"max_tokens {max_tokens} is more than the {room} tokens this model can write",
                       param="max_tokens", code="context_length_exceeded")
    job = SpeechJob(torch.zeros(1, transcriber.prompt_len, dtype=torch.long), None, emit=lambda *a: None,
                    max_new_tokens=max_tokens or room, stops=stops, deadline=time.monotonic() + cfg.request_timeout_s,
                    waveform=wave, transcriber=transcriber)
    return job, transcriber.prompt_len


async def _sse(job: Job, events: asyncio.Queue, request: Request, rid: str, created: int, model: str, n: int,
               prompt_tokens: int, include_usage: bool, life: Lifecycle):
    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {body.model_dump_json(exclude={'usage'} if usage is None else None)}\n\n"

    try:
        yield chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(n)])
        finished = 0
        while finished < n:
            i, text, reason, err = await next_event(events, request, job)
            if err:
                yield f"data: {json.dumps(error(error_status(err), err))}\n\n"
                break
            if text:
                yield chunk([ChunkChoice(index=i, delta=Delta(content=text))])
            if reason:
                finished += 1
                yield chunk([ChunkChoice(index=i, delta=Delta(), finish_reason=reason)])
        if include_usage and finished == n:
            completion = sum(job.completion_tokens)
            yield chunk([], Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                  total_tokens=prompt_tokens + completion))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # the client left or the stream ended: the worker drops the rows
        life.untrack(job)
