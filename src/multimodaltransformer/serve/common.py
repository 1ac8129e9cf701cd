"""What the routes share: OpenAI-shaped errors, the model-name check, and waiting on a worker job.

Kept apart from app.py so that route modules (transcriptions.py, textchat.py) import it without
importing the app that includes them.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from .jobs import Job
from .schemas import error


class APIError(Exception):
    """An HTTP error in OpenAI's body shape: raised anywhere in a route, answered by app.py's handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def json_error(status: int, message: str, param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error(status, message, param, code), status_code=status, headers=headers)


def submit_job(worker: Any, job: Job, life: Any, prompt_tokens: int,
               item: Callable[..., tuple] = lambda *event: event) -> asyncio.Queue:
    """Queue `job` on the model worker; its events (`item` of emit's arguments) arrive in the returned
    asyncio queue. The job is tracked (serve/ops.py: metrics, the drain) until the route untracks it;
    a full worker queue is a 429."""
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    job.emit = lambda *event: loop.call_soon_threadsafe(events.put_nowait, item(*event))
    life.track(job, prompt_tokens)
    try:
        worker.submit(job)
    except queue.Full:
        life.untrack(job)
        raise APIError(429, "the server is busy: too many requests queued, retry shortly",
                       code="rate_limit_exceeded", headers={"Retry-After": "1"}) from None
    return events


def error_status(err: str) -> int:
    """The HTTP status of a job's error message: 504 past its time limit, 503 while the server stops."""
    return 504 if "time limit" in err else 503 if "shutting down" in err else 500


def check_model(name: str, served: str) -> None:
    """A request names the model it wants; this server has one."""
    if name != served:
        raise APIError(404, f"model {name!r} not found; this server has {served!r}", param="model",
                       code="model_not_found")


async def next_event(events: asyncio.Queue, request: Request, job: Job) -> tuple:
    """The worker's next event; checks for a client that left while waiting."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                raise asyncio.CancelledError from None
            if time.monotonic() > job.deadline + 5:  # the worker never picked it up
                job.cancelled.set()
                raise APIError(504, "the request ran past its time limit") from None
