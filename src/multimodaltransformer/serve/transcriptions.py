"""POST /v1/audio/transcriptions, as in the OpenAI API: a clip in, its transcript out.

The request is a multipart form: `file` (WAV; FLAC, OGG or MP3 with the optional `soundfile`),
`model`, `response_format` (json | text | verbose_json | srt | vtt), `language`, `temperature`
and `stream`. Two kinds of model transcribe:
  - an imported Whisper, through serve/speech.py's `Transcriber` (its prompt, language detection or
    the requested `language`, greedy decoding; `temperature` is accepted and not used), run on the
    worker thread between decode steps;
  - our own speech models (a model with an audio encoder, `media.audio`), prompted as their `asr`
    records were trained (data/spoken.py: the clip, no prompt text: `<bos> <sep>`), batched by the
    worker with every other request; `temperature` > 0 samples.
`stream=true` answers with server-sent events as OpenAI does: `transcript.text.delta` per token,
then one `transcript.text.done` with the whole text (an `error` event if decoding fails).
Neither kind writes timestamps, so verbose_json, srt and vtt hold one segment covering the whole
clip. Other OpenAI fields (`prompt`, `timestamp_granularities[]`, `include[]`) are accepted and not
used. The form is parsed with the standard library's MIME parser (no python-multipart needed).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ..modalities.audio import decode_audio
from ..modalities.base import MediaError
from ..modalities.text import encode_prompt
from .common import APIError, check_model, error_status, next_event, submit_job
from .jobs import Job
from .schemas import error
from .speech import Transcriber

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
# leading bytes of each container decode_audio reads
MAGIC = {b"RIFF": "wav", b"fLaC": "flac", b"OggS": "ogg", b"ID3": "mp3", b"\xff\xfb": "mp3", b"\xff\xf3": "mp3",
         b"\xff\xf2": "mp3"}


@dataclass
class TranscriptionForm:
    file: bytes
    filename: str
    model: str
    response_format: str = "json"
    language: str | None = None
    temperature: float = 0.0
    stream: bool = False


def parse_form(body: bytes, content_type: str) -> TranscriptionForm:
    """The multipart form of a transcription request, validated; APIError 400 naming the bad field."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(400, "send a multipart/form-data body with the fields file and model", param="file")
    msg = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, tuple[bytes, str | None]] = {}
    for part in msg.iter_parts() if msg.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_payload(decode=True) or b"", part.get_filename())
    if "file" not in fields:
        raise APIError(400, "file: missing (the audio clip to transcribe)", param="file")
    if "model" not in fields:
        raise APIError(400, "model: missing", param="model")
    text = {k: v.decode("utf-8", "replace").strip() for k, (v, _) in fields.items() if k != "file"}
    form = TranscriptionForm(fields["file"][0], fields["file"][1] or "", text["model"],
                             text.get("response_format") or "json", text.get("language") or None)
    if not form.file:
        raise APIError(400, "file: the uploaded file is empty", param="file")
    if form.response_format not in FORMATS:
        raise APIError(400, f"response_format: {form.response_format!r} is not one of {', '.join(FORMATS)}",
                       param="response_format")
    try:
        form.temperature = float(text.get("temperature") or 0)
    except ValueError:
        raise APIError(400, f"temperature: not a number: {text['temperature']!r}", param="temperature") from None
    if not 0 <= form.temperature <= 1:
        raise APIError(400, f"temperature: must be between 0 and 1, got {form.temperature}", param="temperature")
    stream = text.get("stream", "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise APIError(400, f"stream: expected true or false, got {stream!r}", param="stream")
    form.stream = stream in ("true", "1")
    return form


def audio_format(filename: str, data: bytes) -> str:
    """The container of an upload, from its leading bytes (a file name can lie), else its extension."""
    for magic, fmt in MAGIC.items():
        if data.startswith(magic):
            return fmt
    ext = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if ext in ("wav", "flac", "ogg", "mp3", "oga", "opus"):
        return {"oga": "ogg", "opus": "ogg"}.get(ext, ext)
    raise APIError(400, f"file: {filename or 'the upload'} is not audio this server reads (WAV; FLAC, OGG or MP3 "
                   "with soundfile)", param="file")


def decode_clip(form: TranscriptionForm, sampling_rate: int, max_seconds: float) -> torch.Tensor:
    """The upload -> a mono (N,) float32 waveform, or APIError 400 (runs in a thread)."""
    try:
        return decode_audio(form.file, audio_format(form.filename, form.file), sampling_rate,
                            max_seconds=max_seconds + 0.01)
    except MediaError as e:
        raise APIError(400, f"file: {e}", param="file") from None


@dataclass
class WhisperTranscription(Job):
    """A Whisper transcription: the worker runs it as exclusive work (it is callable), emitting a text delta a token."""

    waveform: torch.Tensor | None = None
    transcriber: Transcriber | None = None
    language: int | None = None
    language_code: str = "en"

    def __call__(self) -> None:
        if self.cancelled.is_set() or time.monotonic() > self.deadline:
            self.emit(0, None, None, "cancelled" if self.cancelled.is_set() else "the request ran past its time limit")
            return
        try:
            memory, prompt = self.transcriber.encode(self.waveform, self.language)
            self.language_code = self.transcriber.language_code(prompt)  # detected, or the one asked for
            for delta in self.transcriber.stream(memory, prompt, self.max_new_tokens):
                if self.cancelled.is_set():
                    return
                self.emit(0, delta, None, None)
        except Exception as e:  # a bad clip must not take the worker down
            self.emit(0, None, None, f"transcription failed: {e}")
            return
        self.emit(0, None, "stop", None)


async def make_job(form: TranscriptionForm, model: Any, transcriber: Transcriber | None,
                   timeout_s: float) -> tuple[Job, float]:
    """The worker job that transcribes the form's clip, and the clip's duration in seconds."""
    deadline = time.monotonic() + timeout_s
    if transcriber is not None:
        try:
            language = transcriber.language_token(form.language)
        except ValueError as e:
            raise APIError(400, str(e), param="language") from None
        rate = transcriber.processor.config.sampling_rate
        wave = await asyncio.to_thread(decode_clip, form, rate, transcriber.max_seconds)
        room = transcriber.model.config.decoder.max_seq_len - transcriber.prompt_len
        job = WhisperTranscription(torch.zeros(1, 0, dtype=torch.long), None, emit=lambda *a: None,
                                   max_new_tokens=room, deadline=deadline, waveform=wave, transcriber=transcriber,
                                   language=language)
        return job, wave.numel() / rate
    proc = getattr(model, "processors", {}).get("audio")
    if proc is None:
        raise APIError(400, "this model does not transcribe audio: serve a Whisper model or one of ours with an "
                       "audio encoder (media.audio)", param="model")
    if form.language is not None and form.language.lower() != "en":
        raise APIError(400, f"language: this model was trained on English ('en'), not {form.language!r}",
                       param="language")
    rate = proc.config.sampling_rate
    wave = await asyncio.to_thread(decode_clip, form, rate, proc.config.chunk_length)
    features = await asyncio.to_thread(_features, proc, wave, form.filename)
    ids = encode_prompt(model.tokenizer, "")  # an asr record's prompt: no text, the clip alone
    room = model.max_seq_len - model.num_media_tokens - len(ids)
    job = Job(torch.tensor([ids]), None, emit=lambda *a: None, media={"input_features": features},
              max_new_tokens=room, temperature=form.temperature, deadline=deadline)
    return job, wave.numel() / rate


def _features(proc: Any, wave: torch.Tensor, name: str) -> torch.Tensor:
    """Our audio processor's input features (1, M, frames) for a waveform, or APIError 400 (runs in a thread)."""
    try:
        return proc.collate([proc.prepare(wave, name or "file")])
    except MediaError as e:
        raise APIError(400, f"file: {e}", param="file") from None


def render(form: TranscriptionForm, text: str, duration: float, language: str) -> Response:
    """The transcript in the requested response_format (one segment over the clip: no timestamps)."""
    if form.response_format == "text":
        return PlainTextResponse(text)
    if form.response_format == "json":
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(duration, 3)}})
    if form.response_format == "verbose_json":
        segment = {"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text,
                   "temperature": form.temperature}
        return JSONResponse({"task": "transcribe", "language": language, "duration": round(duration, 3),
                             "text": text, "segments": [segment] if text else []})
    vtt = form.response_format == "vtt"
    cue = f"{_clock(0.0, vtt)} --> {_clock(duration, vtt)}\n{text}\n"
    return PlainTextResponse(f"WEBVTT\n\n{cue}\n" if vtt else f"1\n{cue}\n", media_type="text/plain")


def _clock(seconds: float, vtt: bool) -> str:
    """00:00:01,500 (SubRip) or 00:00:01.500 (WebVTT)."""
    ms = round(seconds * 1000)
    h, m, s = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
    return f"{h:02d}:{m:02d}:{s:02d}{'.' if vtt else ','}{ms % 1000:03d}"


class Trim:
    """Text deltas -> deltas of the transcript stripped at both ends (as `Transcriber` strips it):
    leading whitespace dropped, trailing whitespace held until more text follows."""

    def __init__(self) -> None:
        self.started, self.held = False, ""

    def __call__(self, delta: str) -> str:
        if not self.started:
            delta = delta.lstrip()
            self.started = bool(delta)
        text = self.held + delta
        body = text.rstrip()
        self.held = text[len(body):]
        return body


def transcription_router(model: Any, worker: Any, model_name: str, timeout_s: float, max_bytes: int,
                         transcriber: Transcriber | None) -> APIRouter:
    """The route, over the server's worker (serve/worker.py) and, for Whisper, its `Transcriber`;
    an upload over `max_bytes` (MediaPolicy.max_bytes, as for an `input_audio` clip) is a 413."""
    router = APIRouter()

    @router.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        form = await asyncio.to_thread(parse_form, await request.body(), request.headers.get("content-type", ""))
        check_model(form.model, model_name)
        if len(form.file) > max_bytes:
            raise APIError(413, f"file: larger than {max_bytes} bytes", param="file")
        job, duration = await make_job(form, model, transcriber, timeout_s)
        life = request.app.state.lifecycle
        events = submit_job(worker, job, life, 0, lambda i, text, finish, err: (text, finish, err))
        if form.stream:
            return StreamingResponse(_sse(job, events, request, duration, life), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            text, trim = "", Trim()
            while True:
                delta, finish, err = await next_event(events, request, job)
                if err:
                    raise APIError(error_status(err), err)
                text += trim(delta or "")
                if finish:
                    break
        finally:
            job.cancelled.set()  # a no-op when done; stops a transcription whose client left
            life.untrack(job)
        return render(form, text, duration, getattr(job, "language_code", "en"))

    return router


async def _sse(job: Job, events: asyncio.Queue, request: Request, duration: float, life: Any):
    """`transcript.text.delta` events as tokens come, then `transcript.text.done` (or an `error` event)."""
    def event(body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body)}\n\n"

    text, trim = "", Trim()
    try:
        while True:
            delta, finish, err = await next_event(events, request, job)
            if err:
                yield event({"type": "error", **error(error_status(err), err)})
                return
            piece = trim(delta or "")
            if piece:
                text += piece
                yield event({"type": "transcript.text.delta", "delta": piece})
            if finish:
                break
        yield event({"type": "transcript.text.done", "text": text,
                     "usage": {"type": "duration", "seconds": round(duration, 3)}})
    finally:
        job.cancelled.set()
        life.untrack(job)
