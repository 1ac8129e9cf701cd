"""What the routes share: OpenAI-shaped errors, the model-name check, and waiting on a worker job.

Kept apart from app.py so that route modules (transcriptions.py, textchat.py) import it without
importing the app that includes them.
"""

from __future__ import annotations

import asyncio
import time

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
