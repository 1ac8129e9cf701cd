"""Operating the server (serve/ops.py): /metrics, access logs, the API key on every route, CORS off by
default, and the drain: SIGTERM ends every stream with [DONE] and answers new requests 503."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer.serve import free_port  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402
from multimodaltransformer.serve.ops import Metrics  # noqa: E402

from test_serve import live_server, model  # noqa: E402,F401  (model: the tiny served model fixture)

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "what is here?"}], "max_tokens": 8}
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? -?[0-9.e+Inf-]+$')


def parse(text: str) -> dict[str, float]:
    """Prometheus text -> {sample with labels: value}; every line must be a comment or a valid sample."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) \w+ ", line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_count_requests_tokens_latency_and_batches(model):
    with TestClient(create_app(model, ServerConfig(model_name="tiny"))) as c:
        for stream in (False, True):
            assert c.post("/v1/chat/completions", json=CHAT | {"stream": stream}).status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT | {"model": "nope"}).status_code == 404
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = parse(r.text)
    assert m['mmt_requests_total{method="POST",route="/v1/chat/completions",status="200"}'] == 2
    assert m['mmt_requests_total{method="POST",route="/v1/chat/completions",status="404"}'] == 1
    assert m["mmt_generated_tokens_total"] >= 2 and m["mmt_prompt_tokens_total"] >= 2
    assert m["mmt_time_to_first_token_seconds_count"] >= 1
    assert m['mmt_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["mmt_time_to_first_token_seconds_count"]
    assert m["mmt_batch_size_count"] >= 1 and m["mmt_queue_depth"] == 0 and m["mmt_draining"] == 0
    assert m['mmt_request_duration_seconds_count{route="/v1/chat/completions"}'] == 3


def test_histogram_buckets_are_cumulative():
    m = Metrics()
    for v in (0.001, 0.02, 0.02, 7.0, 500.0):
        m.observe("mmt_request_duration_seconds", v, route="x")
    s = parse(m.render({}))
    assert s['mmt_request_duration_seconds_bucket{route="x",le="0.005"}'] == 1
    assert s['mmt_request_duration_seconds_bucket{route="x",le="0.025"}'] == 3
    assert s['mmt_request_duration_seconds_bucket{route="x",le="10"}'] == 4
    assert s['mmt_request_duration_seconds_bucket{route="x",le="+Inf"}'] == 5
    assert s['mmt_request_duration_seconds_sum{route="x"}'] == pytest.approx(507.041)


def test_api_key_guards_every_route_but_health_and_the_page(model):
    with TestClient(create_app(model, ServerConfig(model_name="tiny", api_key="sekret"))) as c:
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
        for method, path in [("get", "/metrics"), ("get", "/v1/models"), ("get", "/v1/examples"),
                             ("post", "/v1/chat/completions"), ("post", "/v1/embeddings")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer sekret-longer"},
                            {"Authorization": "sekret"}):
                r = getattr(c, method)(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
        ok = {"Authorization": "Bearer sekret"}
        assert c.get("/metrics", headers=ok).status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT, headers=ok).status_code == 200


def test_cors_is_off_unless_origins_are_given(model):
    pre = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(model, ServerConfig(model_name="tiny"))) as c:
        r = c.options("/v1/chat/completions", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        assert "access-control-allow-origin" not in c.get("/v1/models", headers={"Origin": "http://evil.example"}).headers
    cfg = ServerConfig(model_name="tiny", cors_origins=["http://app.example"])
    with TestClient(create_app(model, cfg)) as c:
        r = c.options("/v1/chat/completions", headers=pre | {"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_access_log_is_one_json_line_per_request(model, tmp_path):
    from multimodaltransformer.serve.ops import setup_access_log

    setup_access_log(str(tmp_path / "access.jsonl"))  # as `mmt serve --access-log PATH` does
    try:
        with TestClient(create_app(model, ServerConfig(model_name="tiny"))) as c:
            c.post("/v1/chat/completions", json=CHAT | {"stream": True}, headers={"X-Request-ID": "abc123"})
            assert c.get("/v1/models").headers["x-request-id"]
    finally:
        setup_access_log("off")
    lines = [json.loads(x) for x in (tmp_path / "access.jsonl").read_text().splitlines()]
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/chat/completions", 200), ("GET", "/v1/models", 200)]
    assert lines[0]["request_id"] == "abc123" and lines[0]["bytes"] > 0 and lines[0]["duration_ms"] >= 0


def test_drain_ends_a_stuck_stream_with_an_error_then_done_and_refuses_new_requests(model):
    import httpx

    app = create_app(model, ServerConfig(model_name="tiny"))
    worker, life = app.state.worker, app.state.lifecycle
    with live_server(app) as port:
        base = f"http://127.0.0.1:{port}"
        busy = threading.Thread(target=worker.run_exclusive, args=(lambda: time.sleep(3), 10))
        busy.start()  # the worker is busy: the stream below waits for its first token
        lines: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=CHAT | {"stream": True}, timeout=30) as r:
                lines.extend(x for x in r.iter_lines() if x)

        client = threading.Thread(target=stream)
        client.start()
        for _ in range(100):
            if life.jobs:
                break
            time.sleep(0.02)
        assert life.jobs and life.in_flight == 1
        result = {}
        drain = threading.Thread(target=lambda: result.setdefault("clean", life.drain(0.5)))
        drain.start()
        time.sleep(0.1)
        assert httpx.get(f"{base}/health").status_code == 200
        r = httpx.post(f"{base}/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and r.headers["retry-after"]
        drain.join(10)
        client.join(10)
        busy.join(10)
    assert result == {"clean": False}
    assert lines[-1] == "data: [DONE]"
    assert "shutting down" in json.loads(lines[-2][len("data: "):])["error"]["message"]


@pytest.mark.slow
def test_sigterm_on_mmt_serve_drains_every_stream(model, tmp_path):
    """The real command: streams running when SIGTERM comes all end with [DONE]; the process exits 0."""
    import httpx

    model.save_pretrained(tmp_path / "tiny")
    port = free_port(0)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "multimodaltransformer", "serve", str(tmp_path / "tiny"),
                             "--port", str(port), "--drain-timeout", "20", "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        results: list[list[str]] = [[] for _ in range(12)]
        status: dict[int, int] = {}
        started = threading.Event()

        def stream(k: int) -> None:
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"question {k}"}],
                    "max_tokens": 60, "stream": True, "temperature": 1.0, "seed": k}
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
                status[k] = r.status_code
                for line in r.iter_lines():
                    if line:
                        results[k].append(line)
                        started.set()

        threads = [threading.Thread(target=stream, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "draining" in out
    # a stream that was running ends with [DONE]; one that came after the signal got a 503 body
    running = [k for k in range(12) if status.get(k) == 200]
    assert running and all(results[k][-1] == "data: [DONE]" for k in running), [r[-2:] for r in results]
    assert all(status.get(k) == 503 and "shutting down" in results[k][0] for k in range(12) if k not in running)
    logged = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert sorted(x["status"] for x in logged if x["path"] == "/v1/chat/completions") == sorted(status.values())
