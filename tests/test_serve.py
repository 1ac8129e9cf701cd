"""The OpenAI-compatible server: answers equal the engine's, streaming, batching, bad input, limits."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer import MultimodalTransformerModel  # noqa: E402
from multimodaltransformer.data import read_manifest  # noqa: E402
from multimodaltransformer.evaluate import predict  # noqa: E402
from multimodaltransformer.models.multimodal import HeadsConfig  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402
from multimodaltransformer.serve.examples import save_examples  # noqa: E402
from multimodaltransformer.serve.media import MediaPolicy  # noqa: E402
from multimodaltransformer.serve.worker import Job  # noqa: E402

from conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(contrastive_dim=8))
    cfg.decoder.max_seq_len = 96
    m = MultimodalTransformerModel(cfg).eval()
    for p in m.parameters():  # a peaked random model: answers of varied lengths, EOS reached
        p.data.mul_(4)
    m.tokenizer = tokenizer
    return m


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, ServerConfig(model_name="tiny", max_batch=8, request_timeout_s=30))
    with TestClient(app) as c:
        yield c


@contextlib.contextmanager
def live_server(app):
    """The app served by uvicorn on a free loopback port, in a thread; yields the port."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(prompt: str, image=None, **kw) -> dict:
    content: list[dict] = [{"type": "text", "text": prompt}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 12, **kw}


def test_answers_equal_the_engine_also_when_batched(client, model, shapes_dir):
    """16 concurrent greedy requests (continuous batching) give exactly `predict`'s answers."""
    examples = [e for e in read_manifest(shapes_dir) if e.task in ("vqa", "caption")][:16]
    want = predict(model, examples, max_new_tokens=12)
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda e: client.post("/v1/chat/completions", json=ask(e.prompt, e.image)).json(),
                            examples))
    assert [g["choices"][0]["message"]["content"] for g in got] == want
    assert len(set(want)) > 3  # not all the same answer: the rows really differ
    usage = got[0]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 16
    assert client.get("/health").json()["decode_steps"] > 0


def test_streaming_gives_the_same_text_in_openai_chunks(client, shapes_dir):
    image = next((shapes_dir / "images").iterdir())
    plain = client.post("/v1/chat/completions", json=ask("describe the image.", image)).json()
    with client.stream("POST", "/v1/chat/completions",
                       json=ask("describe the image.", image, stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[6:]) for x in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]
    assert any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks)


def test_sampling_n_seed_beams_and_stop(client, shapes_dir):
    image = next((shapes_dir / "images").iterdir())
    a = client.post("/v1/chat/completions", json=ask("describe the image.", image, temperature=1.0, seed=3, n=3)).json()
    b = client.post("/v1/chat/completions", json=ask("describe the image.", image, temperature=1.0, seed=3, n=3)).json()
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    beams = client.post("/v1/chat/completions", json=ask("describe the image.", image, num_beams=3, n=2,
                                                          length_penalty=0.5)).json()
    assert len(beams["choices"]) == 2
    full = client.post("/v1/chat/completions", json=ask("describe the image.", image)).json()
    text = full["choices"][0]["message"]["content"]
    if len(text) > 3:
        cut = client.post("/v1/chat/completions", json=ask("describe the image.", image, stop=[text[2:4]])).json()
        assert cut["choices"][0]["message"]["content"] == text[:text.index(text[2:4])]
        assert cut["choices"][0]["finish_reason"] == "stop"


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b""))


def test_bad_requests_get_4xx_and_the_server_stays_up(client, shapes_dir):
    image = next((shapes_dir / "images").iterdir())
    png = image.read_bytes()
    ok = ask("what color is the circle?", image)

    def with_image(url):
        return {**ok, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                 {"type": "image_url", "image_url": {"url": url}}]}]}

    bad = {
        "invalid json": (b"{not json", 400),
        "messages not a list": ({"model": "tiny", "messages": "hi"}, 400),
        "no messages": ({"model": "tiny", "messages": []}, 400),
        "unknown model": ({**ok, "model": "gpt-9"}, 404),
        "unknown role": ({**ok, "messages": [{"role": "wizard", "content": "hi"}]}, 400),
        "unknown part": ({**ok, "messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, 400),
        "empty text": ({**ok, "messages": [{"role": "user", "content": "   "}]}, 400),
        "last is assistant": ({**ok, "messages": [{"role": "assistant", "content": "hi"}]}, 400),
        "temperature type": ({**ok, "temperature": "hot"}, 400),
        "temperature range": ({**ok, "temperature": 7}, 400),
        "max_tokens too many": ({**ok, "max_tokens": 5000}, 400),
        "too long": ({**ok, "messages": [{"role": "user", "content": "red " * 400}]}, 400),
        "invalid base64": (with_image("data:image/png;base64,@@@@"), 400),
        "not an image": (with_image("data:image/png;base64," + base64.b64encode(b"hello world").decode()), 400),
        "truncated image": (with_image("data:image/png;base64," + base64.b64encode(png[:len(png) // 2]).decode()), 400),
        "bomb": (with_image("data:image/png;base64," + base64.b64encode(_png_header(60000, 60000)).decode()), 400),
        "text/plain data url": (with_image("data:text/plain;base64,aGVsbG8="), 400),
        "remote url": (with_image("http://169.254.169.254/latest/meta-data"), 400),
        "file url": (with_image("file:///etc/passwd"), 400),
        "two images": ({**ok, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url(image)}},
            {"type": "image_url", "image_url": {"url": data_url(image)}}]}]}, 400),
        "audio": ({**ok, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, 400),
        "stream beams": ({**ok, "stream": True, "num_beams": 2}, 400),
        "n too big": ({**ok, "n": 99}, 400),
        "too many stops": ({**ok, "stop": ["a", "b", "c", "d", "e"]}, 400),
    }
    for name, (body, status) in bad.items():
        r = (client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
             if isinstance(body, bytes) else client.post("/v1/chat/completions", json=body))
        assert r.status_code == status, (name, r.status_code, r.text[:200])
        err = r.json()["error"]
        assert err["message"] and err["type"], name
    assert client.get("/v1/nope").status_code == 404
    assert client.post("/v1/chat/completions", json=ok).status_code == 200  # still serving
    assert client.get("/health").json()["status"] == "ok"


def test_queue_full_answers_429_with_retry_after(model, shapes_dir):
    app = create_app(model, ServerConfig(model_name="tiny", max_batch=1, queue_size=1))
    with TestClient(app) as c:
        worker = app.state.worker
        blocker = threading.Thread(target=worker.run_exclusive, args=(lambda: time.sleep(1.5),))
        blocker.start()
        time.sleep(0.2)  # the worker is busy; the queue (size 1) takes one request
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/chat/completions", json=ask("hi")), range(4)))
        blocker.join()
    assert 429 in [r.status_code for r in codes] and 200 in [r.status_code for r in codes]
    busy = next(r for r in codes if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"


def test_cancelled_and_timed_out_rows_leave_the_batch(model):
    app = create_app(model, ServerConfig(model_name="tiny"))
    worker = app.state.worker
    events = []
    ids = torch.tensor([[model.tokenizer.bos_id, *model.tokenizer.encode("describe"), model.tokenizer.sep_id]])
    job = Job(ids, None, emit=lambda *e: events.append(e), max_new_tokens=80)
    job.cancelled.set()  # as the HTTP layer does when the client disconnects
    worker.submit(job)
    late = Job(ids, None, emit=lambda *e: events.append(e), max_new_tokens=80, deadline=time.monotonic() - 1)
    worker.submit(late)
    for _ in range(100):
        if len(events) >= 2:
            break
        time.sleep(0.05)
    assert {e[3] for e in events} == {"cancelled", "the request ran past its time limit"}
    assert not worker.rows
    worker.close()


def test_openai_client_plain_and_streaming_with_an_image(model, shapes_dir):
    openai = pytest.importorskip("openai")
    app = create_app(model, ServerConfig(model_name="tiny", api_key="sekret"))
    with live_server(app) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sekret", max_retries=0)
        image = next((shapes_dir / "images").iterdir())
        messages = [{"role": "user", "content": [{"type": "text", "text": "describe the image."},
                                                  {"type": "image_url", "image_url": {"url": data_url(image)}}]}]
        plain = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=10)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=messages, temperature=0, max_tokens=10, stream=True) if c.choices)
        assert plain.choices[0].message.content == streamed
        assert plain.usage.completion_tokens >= 1
        assert [m.id for m in client.models.list()] == ["tiny"]
        emb = client.embeddings.create(model="tiny", input=["a red circle", data_url(image)])
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()


def test_embeddings_equal_the_model(client, model, shapes_dir):
    image = next((shapes_dir / "images").iterdir())
    r = client.post("/v1/embeddings", json={"model": "tiny", "input": ["a red circle", data_url(image)]}).json()
    tok = model.tokenizer
    ids = torch.tensor([[tok.bos_id, *tok.encode("a red circle"), tok.sep_id]])
    with torch.no_grad():
        want = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)[0]
    torch.testing.assert_close(torch.tensor(r["data"][0]["embedding"]), want, atol=1e-5, rtol=1e-5)
    assert client.post("/v1/embeddings", json={"model": "tiny", "input": [""]}).status_code == 400


def test_remote_media_only_from_allowed_hosts(model, tmp_path, shapes_dir):
    import http.server
    import shutil

    image = next((shapes_dir / "images").iterdir())
    shutil.copy(image, tmp_path / "x.png")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/x.png"
    body = {**ask("hi"), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe the image."}, {"type": "image_url", "image_url": {"url": url}}]}]}
    try:
        for hosts, status in ((frozenset(), 400), (frozenset({"127.0.0.1"}), 200)):
            app = create_app(model, ServerConfig(model_name="tiny", media=MediaPolicy(allowed_hosts=hosts)))
            with TestClient(app) as c:
                assert c.post("/v1/chat/completions", json=body).status_code == status
    finally:
        httpd.shutdown()


@pytest.mark.slow
def test_web_page_streams_an_answer_in_headless_chromium(model, shapes_dir, tmp_path):
    """The chat page at / in Debian's chromium (driven by Playwright): pick an image, ask, see the answer;
    then, in a new conversation, click an example's suggested question: its image goes with it."""
    import shutil
    import urllib.request

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test installs it)")
    examples = json.loads(save_examples(tmp_path, read_manifest(shapes_dir)).read_text())
    app = create_app(model, ServerConfig(model_name="tiny", model_dir=tmp_path))
    image = next((shapes_dir / "images").iterdir())
    question = examples[0]["questions"][0]
    with live_server(app) as port:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", headers={
            "Content-Type": "application/json"}, data=json.dumps(ask("describe the image.", image, max_tokens=32)).encode())
        want = json.loads(urllib.request.urlopen(req, timeout=30).read())
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('model: tiny')")
            page.wait_for_selector("#intro .example img")  # the empty conversation offers the examples
            assert page.locator("#intro .example").count() == len(examples)
            assert "image + text -> text" in page.inner_text("#intro")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#drop img")
            page.fill("#prompt", "describe the image.")
            page.press("#prompt", "Enter")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            answer = page.locator(".assistant span").text_content()
            assert page.inner_text(".user span") == "describe the image."
            assert page.locator(".user img").count() == 1
            assert page.locator("#intro").is_hidden()  # the conversation started
            page.click("#reset")
            page.fill("#max_tokens", "2")  # only the request matters here, not the answer
            page.click(f"#intro .example >> nth=0 >> text={question}")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            assert page.inner_text(".user span") == question
            sent = (tmp_path / examples[0]["image"]).read_bytes()  # the example's image went with its question
            assert page.get_attribute(".user img", "src") == "data:image/png;base64," + base64.b64encode(sent).decode()
            browser.close()
        assert answer == want["choices"][0]["message"]["content"]  # streamed into the page, same text


@pytest.mark.parametrize("fusion", ["early", "cross", "resampler"])
def test_rows_joining_a_running_batch_decode_as_if_alone(tokenizer, shapes_dir, fusion):
    """Jobs arriving mid-batch (longer and shorter prompts, with and without an image) join the
    running batch and still produce exactly what greedy `generate` gives for each alone."""
    from multimodaltransformer.fusion import FusionConfig
    from multimodaltransformer.serve.worker import ModelWorker

    torch.manual_seed(1)
    cfg = replace(tiny_config(tokenizer.vocab_size), fusion=FusionConfig(fusion, num_queries=4, depth=1, heads=2))
    cfg.decoder.max_seq_len = 80
    m = MultimodalTransformerModel(cfg).eval()
    for p in m.parameters():
        p.data.mul_(3)
    m.tokenizer = tokenizer
    examples = read_manifest(shapes_dir)
    tok = tokenizer
    prompts = ["describe the image.", "what shape is the red object? tell me please, now, in one word",
               "how many?", "is there a red circle left of the blue square?", "where?"]
    images = [m.image_processor(examples[i].image)[None] for i in range(len(prompts))]
    media = [True, True, False, True, False]
    want = []
    for p, px, has in zip(prompts, images, media):
        ids = torch.tensor([[tok.bos_id, *tok.encode(p), tok.sep_id]])
        out = m.generate(ids, pixel_values=px if has else None, max_new_tokens=20, eos_token_id=tok.eos_id)
        want.append(tok.decode(out[0, ids.shape[1]:].tolist()))
    worker = ModelWorker(m, max_batch=8)
    texts = [""] * len(prompts)
    done = threading.Event()
    finished = []

    def emit_for(k):
        def emit(i, text, finish, err):
            assert err is None, err
            texts[k] += text or ""
            if finish:
                finished.append(k)
                if len(finished) == len(prompts):
                    done.set()
        return emit

    try:
        for k, (p, px, has) in enumerate(zip(prompts, images, media)):
            ids = torch.tensor([[tok.bos_id, *tok.encode(p), tok.sep_id]])
            worker.submit(Job(ids, px if has else None, emit=emit_for(k), max_new_tokens=20))
            time.sleep(0.03 * (k % 2))  # some arrive together, some while others decode
        assert done.wait(30)
    finally:
        worker.close()
    assert texts == want


def test_cli_serve_starts_answers_and_stops(model, tmp_path):
    import socket
    import subprocess
    import sys
    import urllib.request

    model.save_pretrained(tmp_path / "demo-model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "multimodaltransformer", "serve", str(tmp_path / "demo-model"),
                             "--port", str(port), "--device", "cpu", "--max-batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            try:
                health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        assert health["model"] == "demo-model" and health["max_batch"] == 1
        body = json.dumps({"model": "demo-model", "messages": [{"role": "user", "content": "how many?"}],
                           "max_tokens": 3}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        assert json.loads(urllib.request.urlopen(req, timeout=30).read())["object"] == "chat.completion"
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<title>multimodaltransformer chat</title>" in page
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    from multimodaltransformer.cli import main
    assert main(["serve", str(tmp_path / "missing")]) == 2


def test_sixteen_concurrent_streams_all_finish_with_the_engine_answers(client, model, shapes_dir):
    examples = [e for e in read_manifest(shapes_dir) if e.task in ("vqa", "caption")][16:32]
    want = predict(model, examples, max_new_tokens=12)

    def stream(e):
        with client.stream("POST", "/v1/chat/completions", json=ask(e.prompt, e.image, stream=True)) as r:
            lines = [x for x in r.iter_lines() if x]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(x[6:]) for x in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(stream, examples)) == want


def test_save_examples_copies_k_images_with_their_questions(shapes_dir, tmp_path):
    manifest = read_manifest(shapes_dir)
    path = save_examples(tmp_path / "model", manifest, k=3)
    rows = json.loads(path.read_text())
    images = list(dict.fromkeys(e.image for e in manifest))[:3]  # the first three distinct images
    assert len(rows) == 3
    for row, image in zip(rows, images):
        assert (tmp_path / "model" / row["image"]).read_bytes() == image.read_bytes()
        vqa = [e.prompt for e in manifest if e.image == image and e.task == "vqa"]
        assert row["questions"] == [*vqa[:2], "describe the image."]
    save_examples(tmp_path / "model", manifest, k=2)  # a rerun replaces them: no stale images stay
    assert len(list((tmp_path / "model" / "examples").glob("*.png"))) == 2


def test_examples_endpoint_serves_the_model_dirs_examples_and_nothing_else(model, shapes_dir, tmp_path):
    from multimodaltransformer import load_pretrained

    model.save_pretrained(tmp_path / "m")
    save_examples(tmp_path / "m", read_manifest(shapes_dir))
    rows = json.loads((tmp_path / "m" / "examples" / "examples.json").read_text())
    (tmp_path / "m" / "secret.txt").write_text("not for the web")
    loaded = load_pretrained(tmp_path / "m")  # the examples folder does not disturb loading
    with TestClient(create_app(loaded, ServerConfig(model_name="tiny", model_dir=tmp_path / "m"))) as c:
        body = c.get("/v1/examples").json()
        assert body["model"] == "tiny"
        assert body["kind"] == {"inputs": ["image", "text"], "task": "image + text -> text", "embeddings": True}
        assert [e["questions"] for e in body["data"]] == [r["questions"] for r in rows] and len(rows) == 6
        first = c.get(body["data"][0]["image"])
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        assert first.content == (tmp_path / "m" / rows[0]["image"]).read_bytes()
        for bad in ("/examples/examples.json", "/examples/..%2fsecret.txt", "/examples/%2e%2e/secret.txt",
                    "/examples/..%2f..%2fetc%2fpasswd", "/examples/" + str(tmp_path / "m" / "secret.txt")):
            r = c.get(bad)
            assert r.status_code == 404 and "not for the web" not in r.text, bad
    (tmp_path / "m" / "examples" / "examples.json").write_text(json.dumps(
        [{"image": "secret.txt", "questions": ["q"]}, {"image": "examples/../config.json"}, {"questions": ["hi?"]}]))
    with pytest.warns(UserWarning) as warned:  # bad entries are skipped, the server starts
        app = create_app(model, ServerConfig(model_name="tiny", model_dir=tmp_path / "m"))
    assert ["example 0 skipped" in str(w.message) for w in warned] == [True, False]
    assert "example 1 skipped: image 'examples/../config.json' is not inside examples/" in str(warned[1].message)
    with TestClient(app) as c:
        assert c.get("/v1/examples").json()["data"] == [{"image": None, "questions": ["hi?"]}]
        assert c.get("/examples/secret.txt").status_code == 404


def test_examples_endpoint_without_examples_and_for_a_text_model(model, tokenizer, shapes_dir, tmp_path):
    for model_dir in (None, tmp_path):  # no directory, or one without examples/
        with TestClient(create_app(model, ServerConfig(model_name="tiny", model_dir=model_dir))) as c:
            assert c.get("/v1/examples").json()["data"] == []
    save_examples(tmp_path, read_manifest(shapes_dir))
    text = MultimodalTransformerModel(tiny_config(tokenizer.vocab_size, image=False)).eval()
    text.tokenizer = tokenizer
    with TestClient(create_app(text, ServerConfig(model_name="tiny", model_dir=tmp_path))) as c:
        body = c.get("/v1/examples").json()
    assert body["kind"] == {"inputs": ["text"], "task": "text chat", "embeddings": False}
    assert body["data"] == []  # example images are for models that take images
