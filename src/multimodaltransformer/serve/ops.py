"""Operating the server: Prometheus metrics, access logs, the API key, CORS and a graceful drain.

`Operations` is the outermost ASGI middleware. For every HTTP request it:
- answers 503 while the server drains (after SIGTERM), except /health and /metrics;
- checks `Authorization: Bearer KEY` in constant time (`hmac.compare_digest`) on every route but
  /health and the chat page (`/` and its example images): 401 without it;
- counts the request, times it to its last body byte (a stream ends at `[DONE]`, not at its headers)
  and writes one JSON access-log line (logger `mmt.access`).

`Lifecycle` knows the requests in flight and the running generation jobs; `drain` waits for them
and, at its timeout, ends the remaining streams with an error event (then `[DONE]`) instead of a cut
connection. `serve()` calls it from SIGTERM through `DrainingServer`.
"""

from __future__ import annotations

import bisect
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .jobs import Job
from .schemas import error

log = logging.getLogger("mmt.access")

PUBLIC = ("/health",)  # no API key, answered while draining too
PAGE = ("/", "/favicon.ico")  # the chat page itself; /examples/NAME are its images (an <img> sends no key)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ROUTES = ("/v1/chat/completions", "/v1/embeddings", "/v1/audio/transcriptions", "/v1/images/generations",
          "/v1/models", "/v1/examples", "/health", "/metrics", "/")

# name: (type, help, buckets)
SPEC: dict[str, tuple[str, str, tuple[float, ...]]] = {
    "mmt_requests_total": ("counter", "HTTP requests by route, method and status", ()),
    "mmt_request_duration_seconds": ("histogram", "time from request to last response byte", LATENCY_BUCKETS),
    "mmt_prompt_tokens_total": ("counter", "prompt tokens of generation requests", ()),
    "mmt_generated_tokens_total": ("counter", "tokens generated", ()),
    "mmt_time_to_first_token_seconds": ("histogram", "time from submission to a request's first text",
                                        LATENCY_BUCKETS),
    "mmt_inter_token_latency_seconds": ("histogram", "time between a stream's successive text deltas",
                                        TOKEN_BUCKETS),
    "mmt_batch_size": ("histogram", "rows decoded together per decode step", BATCH_BUCKETS),
    "mmt_queue_depth": ("gauge", "jobs queued or waiting for a batch slot", ()),
    "mmt_running_rows": ("gauge", "rows in the running decode batch", ()),
    "mmt_requests_in_flight": ("gauge", "HTTP requests being answered", ()),
    "mmt_draining": ("gauge", "1 while the server drains before it stops", ()),
}


class Metrics:
    """Counters and histograms, thread-safe (the worker thread observes too), in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple], float] = {}
        self._hists: dict[tuple[str, tuple], list[float]] = {}  # per bucket and +Inf, sum, count

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = SPEC[name][2]
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            h = self._hists.setdefault(key, [0.0] * (len(buckets) + 3))
            h[bisect.bisect_left(buckets, value)] += 1  # non-cumulative here; summed when rendered
            h[-2] += value
            h[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self, gauges: dict[str, float]) -> str:
        with self._lock:
            values, hists = dict(self._values), {k: list(v) for k, v in self._hists.items()}
        lines = []
        for name, (kind, text, buckets) in SPEC.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "gauge":
                lines.append(f"{name} {_num(gauges.get(name, 0.0))}")
            for (n, labels), v in sorted(values.items()):
                if n == name:
                    lines.append(f"{name}{_labels(labels)} {_num(v)}")
            for (n, labels), h in sorted(hists.items()):
                if n != name:
                    continue
                running = 0.0
                for le, count in zip([*buckets, float("inf")], h):
                    running += count
                    lines.append(f"{name}_bucket{_labels(labels + (('le', _num(le)),))} {_num(running)}")
                lines += [f"{name}_sum{_labels(labels)} {_num(h[-2])}", f"{name}_count{_labels(labels)} {_num(h[-1])}"]
        return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    esc = [(k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


class Lifecycle:
    """Requests in flight, running jobs, and the drain that ends them before the server stops."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.draining = False
        self.in_flight = 0
        self.jobs: dict[int, Job] = {}  # by id: a Job (a dataclass) is not hashable
        self._lock = threading.Lock()

    def track(self, job: Job, prompt_tokens: int) -> None:
        """Count the job's tokens and time its first and successive text deltas (emit runs on the
        worker thread); the job is a running one until `untrack`."""
        submitted, last = time.monotonic(), [None]
        emit, metrics = job.emit, self.metrics
        metrics.inc("mmt_prompt_tokens_total", prompt_tokens)

        def timed(i: int, text: str | None, finish: str | None, err: str | None) -> None:
            if text:
                now = time.monotonic()
                if last[0] is None:
                    metrics.observe("mmt_time_to_first_token_seconds", now - submitted)
                else:
                    metrics.observe("mmt_inter_token_latency_seconds", now - last[0])
                last[0] = now
            emit(i, text, finish, err)

        job.emit = timed
        with self._lock:
            self.jobs[id(job)] = job

    def untrack(self, job: Job) -> None:
        with self._lock:
            if self.jobs.pop(id(job), None) is None:
                return
        self.metrics.inc("mmt_generated_tokens_total", sum(job.completion_tokens))

    def drain(self, timeout: float, poll: float = 0.05) -> bool:
        """Stop taking requests and wait up to `timeout` s for those in flight; then end the jobs
        still running with an error event (their streams still close with [DONE]). True if every
        request finished on its own."""
        self.draining = True
        end = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < end:
            time.sleep(poll)
        clean = not self.in_flight
        with self._lock:
            left = list(self.jobs.values())
        for job in left:
            for i in range(job.n):
                job.emit(i, None, None, "the server is shutting down")
            job.cancelled.set()
        end = time.monotonic() + 5.0  # let those streams write their last events
        while self.in_flight and time.monotonic() < end:
            time.sleep(poll)
        return clean


class Operations:
    """The outermost ASGI middleware: drain, API key, request metrics and access logs."""

    def __init__(self, app: Any, api_key: str | None, metrics: Metrics, life: Lifecycle) -> None:
        self.app, self.metrics, self.life = app, metrics, life
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex[:16]
        start, state = time.perf_counter(), {"status": 500, "bytes": 0}

        async def reply(status: int, body: dict, extra: list | None = None) -> None:
            data = json.dumps(body).encode()
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                (b"x-request-id", rid.encode()), *(extra or [])]})
            await send({"type": "http.response.body", "body": data})
            state.update(status=status, bytes=len(data))

        async def send_logged(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message = dict(message, headers=[*message.get("headers", []), (b"x-request-id", rid.encode())])
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        public = path in PUBLIC or path == "/metrics"
        self.life.in_flight += 0 if public else 1
        try:
            if self.life.draining and not public:
                await reply(503, error(503, "the server is shutting down; retry on another instance"),
                            [(b"retry-after", b"5"), (b"connection", b"close")])
            elif self.expected and not (path in PUBLIC or path in PAGE or path.startswith("/examples/")) and \
                    not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                await reply(401, error(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                       code="invalid_api_key"), [(b"www-authenticate", b"Bearer")])
            else:
                await self.app(scope, receive, send_logged)
        finally:
            self.life.in_flight -= 0 if public else 1
            seconds = time.perf_counter() - start
            route = path if path in ROUTES else "/examples/{name}" if path.startswith("/examples/") else "other"
            self.metrics.inc("mmt_requests_total", route=route, method=method, status=str(state["status"]))
            self.metrics.observe("mmt_request_duration_seconds", seconds, route=route)
            client = scope.get("client") or ("-", 0)
            log.info(json.dumps({"ts": round(time.time(), 3), "request_id": rid, "client": client[0],
                                 "method": method, "path": path, "status": state["status"],
                                 "bytes": state["bytes"], "duration_ms": round(seconds * 1000, 1),
                                 "user_agent": headers.get(b"user-agent", b"").decode("latin-1")[:200]}))


def add_operations(app: Any, worker: Any, api_key: str | None, cors_origins: list[str] | None = None) -> None:
    """Metrics, access logs, the API key and the drain on `app` (and CORS only when origins are given);
    GET /metrics reports them."""
    from fastapi.responses import PlainTextResponse

    metrics = Metrics()
    life = Lifecycle(metrics)
    app.state.metrics, app.state.lifecycle = metrics, life
    worker.on_step = lambda rows: metrics.observe("mmt_batch_size", rows)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def _metrics() -> PlainTextResponse:
        gauges = {"mmt_queue_depth": worker.queue.qsize() + len(worker.waiting),
                  "mmt_running_rows": len(worker.rows), "mmt_requests_in_flight": life.in_flight,
                  "mmt_draining": float(life.draining)}
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    if cors_origins:  # off unless asked: a browser page from another origin cannot call the API
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(Operations, api_key=api_key, metrics=metrics, life=life)


def setup_access_log(where: str | None) -> None:
    """Access-log lines to stderr ('-'), to a file, or nowhere (None/'off')."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    if not where or where == "off":
        log.disabled = True
        return
    log.disabled = False
    handler = logging.StreamHandler() if where == "-" else logging.FileHandler(where, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def draining_server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server whose first SIGTERM/SIGINT drains (`Lifecycle.drain`) before it stops; a
        second one stops at once. The process then exits 0: the drain was the plan, not a crash."""

        def __init__(self, config: Any, life: Lifecycle, drain_timeout_s: float) -> None:
            super().__init__(config)
            self.life, self.drain_timeout_s = life, drain_timeout_s
            self._drain: threading.Thread | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self._drain is not None or self.drain_timeout_s <= 0:
                self.should_exit = True
                self.force_exit = self._drain is not None
                return
            print(f"draining: new requests get 503; running ones have {self.drain_timeout_s:g} s", flush=True)
            self._drain = threading.Thread(target=self._drain_then_exit, name="mmt-drain", daemon=True)
            self._drain.start()

        def _drain_then_exit(self) -> None:
            clean = self.life.drain(self.drain_timeout_s)
            print("drained" if clean else "drain timed out: the remaining streams were ended", flush=True)
            self.should_exit = True

    return DrainingServer


def __getattr__(name: str) -> Any:  # DrainingServer needs uvicorn, imported only when serving
    if name == "DrainingServer":
        return draining_server_class()
    raise AttributeError(name)
