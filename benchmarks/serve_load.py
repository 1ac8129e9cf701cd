"""Load test for `mmt serve`: N concurrent streaming clients for T seconds, batching vs no batching.

    python benchmarks/serve_load.py runs/demo/model [--clients 16] [--seconds 30] [--max-tokens 24]

Starts the server twice on a free loopback port (dynamic batching with --max-batch 16, then
--max-batch 1), runs the clients against each (each client asks ShapesWorld questions about
test images, streaming, one request after another, temperature 0), and prints requests/s,
tokens/s, p50/p95 time to first token, p50/p95 inter-token latency and errors, side by side.
Loopback only; clients and seconds are capped so it cannot be pointed at anything else.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MAX_CLIENTS, MAX_SECONDS = 64, 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, max_batch: int, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "multimodaltransformer", "serve", model, "--host", "127.0.0.1",
                             "--port", str(port), "--max-batch", str(max_batch), "--device", "cpu",
                             "--queue-size", "256", "--access-log", "off"],  # no one reads the pipe: keep it empty
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(1200):  # a large model (SmolLM2 from its GGUF) takes a while to load
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not start")


def ask_about_images(model: str, examples: list, question: Callable[[Any], str | dict], max_tokens: int,
                     workers: int) -> list[str]:
    """Serve `model` on a free port and ask, through the official `openai` client at temperature 0, the
    question `question(e)` about each example's image (sent as a data URL); the replies, in order.
    A question may be a content part of its own (a spoken one: `input_audio`) instead of text."""
    from openai import OpenAI

    port = free_port()
    server = start_server(model, 16, port)  # the server's default batch
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")

    def ask(e: Any) -> str:
        url = "data:image/png;base64," + base64.b64encode(Path(e.image).read_bytes()).decode()
        reply = client.chat.completions.create(model="model", temperature=0, max_tokens=max_tokens, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         q if isinstance(q := question(e), dict) else {"type": "text", "text": q}]}])
        return reply.choices[0].message.content or ""

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(ask, examples))
    finally:
        server.terminate()
        server.wait(timeout=30)


def one_request(port: int, model: str, body: dict) -> tuple[float | None, list[float], int, bool]:
    """Stream one chat completion: (time to first token, inter-token gaps, tokens, ok)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions",
                                 data=json.dumps({**body, "model": model}).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return None, [], 0, False
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now - start
                    else:
                        gaps.append(now - last)
                    last = now
                    tokens += 1
        return first, gaps, tokens, True
    except Exception:
        return None, [], 0, False


def run_load(port: int, model: str, prompts: list[dict], clients: int, seconds: float) -> dict:
    results: list[tuple] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            r = one_request(port, model, prompts[i % len(prompts)])
            with lock:
                results.append(r)
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r[3]]
    ttft = sorted(r[0] for r in ok if r[0] is not None)
    gaps = sorted(g for r in ok for g in r[1])

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")

    return {"requests": len(results), "errors": len(results) - len(ok), "requests_per_s": len(ok) / wall,
            "tokens_per_s": sum(r[2] for r in ok) / wall, "ttft_p50_ms": pct(ttft, 0.5), "ttft_p95_ms": pct(ttft, 0.95),
            "itl_p50_ms": pct(gaps, 0.5), "itl_p95_ms": pct(gaps, 0.95),
            "mean_ttft_ms": statistics.fmean(ttft) * 1000 if ttft else float("nan")}


def prompts_from(data: str, n: int, max_tokens: int) -> list[dict]:
    from multimodaltransformer.data import read_manifest
    from multimodaltransformer.data.sources import resolve_source
    from multimodaltransformer.train.config import default_cache_dir

    out = []
    for e in read_manifest(resolve_source(data, default_cache_dir()))[:n]:
        if e.image is None or e.task not in ("caption", "vqa"):
            continue
        url = "data:image/png;base64," + base64.b64encode(Path(e.image).read_bytes()).decode()
        out.append({"messages": [{"role": "user", "content": [{"type": "text", "text": e.prompt},
                                                               {"type": "image_url", "image_url": {"url": url}}]}],
                    "temperature": 0, "max_tokens": max_tokens, "stream": True})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved model directory")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--data", default="shapes:split=test,n=100,seed=1")
    p.add_argument("--max-batch", type=int, nargs="+", default=[16, 1], help="server settings to compare")
    a = p.parse_args()
    if not 1 <= a.clients <= MAX_CLIENTS or not 0 < a.seconds <= MAX_SECONDS:
        p.error(f"--clients must be 1..{MAX_CLIENTS} and --seconds 0..{MAX_SECONDS}")
    prompts = prompts_from(a.data, 400, a.max_tokens)
    name = Path(a.model).name
    rows = {}
    for mb in a.max_batch:
        port = free_port()
        proc = start_server(a.model, mb, port)
        try:
            run_load(port, name, prompts, min(a.clients, 4), 3.0)  # warm-up
            rows[mb] = run_load(port, name, prompts, a.clients, a.seconds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        print(f"max_batch {mb}: {json.dumps({k: round(v, 2) for k, v in rows[mb].items()})}", flush=True)
    keys = ["requests", "errors", "requests_per_s", "tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms"]
    print(f"\n{a.clients} streaming clients x {a.seconds:g} s, max_tokens {a.max_tokens}, model {a.model}")
    print("| metric | " + " | ".join(f"max_batch {mb}" for mb in rows) + (" | ratio |" if len(rows) == 2 else " |"))
    print("|---|" + "---|" * (len(rows) + (len(rows) == 2)))
    for k in keys:
        vals = [rows[mb][k] for mb in rows]
        ratio = f" | {vals[0] / vals[1]:.2f}x" if len(vals) == 2 and vals[1] else (" | -" if len(vals) == 2 else "")
        print(f"| {k} | " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in vals) + ratio + " |")


if __name__ == "__main__":
    main()
