"""Serving a video model: `video_url` parts (vLLM's form) through the OpenAI chat API and the chat page."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
av = pytest.importorskip("av")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from multimodaltransformer.config import from_dict  # noqa: E402
from multimodaltransformer.modalities.text import encode_prompt  # noqa: E402
from multimodaltransformer.modalities.video import VideoLimits  # noqa: E402
from multimodaltransformer.models.multimodal import MultimodalTransformer, MultimodalTransformerModel  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402
from multimodaltransformer.serve.media import MediaPolicy  # noqa: E402

from conftest import tiny_config  # noqa: E402

VIDEO = {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 1, "heads": 4, "frames": 4, "tubelet": 2}
IMAGE = {"image_size": 32, "patch_size": 8, "dim": 64, "depth": 1, "heads": 4}


def video_model(tokenizer, fusion: str = "cross", image: bool = False) -> MultimodalTransformerModel:
    torch.manual_seed(0)
    cfg = from_dict(MultimodalTransformer, {
        "image": IMAGE if image else None, "media": {"video": VIDEO}, "fusion": {"type": fusion},
        "decoder": {"dim": 64, "depth": 1, "heads": 4, "max_seq_len": 96, "vocab_size": tokenizer.vocab_size}})
    m = MultimodalTransformerModel(cfg).eval()
    for p in m.parameters():  # a peaked random model: answers differ with the clip
        p.data.mul_(4)
    m.tokenizer = tokenizer
    return m


@pytest.fixture(scope="module")
def model(tokenizer):
    return video_model(tokenizer)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(model_name="vid", request_timeout_s=30))) as c:
        yield c


def mp4(frames: int = 6, size: int = 32, codec: str = "libx264", seed: int = 0) -> bytes:
    """An MP4 clip: a bar sweeping across `frames` frames of size x size, yuv420p."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream(codec, rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            a = np.zeros((size, size, 3), np.uint8)
            a[:, : (i + 1) * size // frames] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def gif(frames: int = 4, size: int = 32) -> bytes:
    ims = [Image.new("RGB", (size, size), (60 * i, 255 - 60 * i, 0)) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=100)
    return buf.getvalue()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def ask(url: str | None, prompt: str = "what moves?", image: str | None = None, **kw) -> dict:
    content: list[dict] = [{"type": "text", "text": prompt}]
    if url is not None:
        content.append({"type": "video_url", "video_url": {"url": url}})
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {"model": "vid", "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 8, **kw}


def reference(model, data: bytes, prompt: str = "what moves?", max_new_tokens: int = 8, **media) -> str:
    """The engine's greedy answer for the clip (read as the server reads it)."""
    proc = model.processors["video"]
    ids = torch.tensor([encode_prompt(model.tokenizer, prompt)])
    out = model.generate(ids, max_new_tokens=max_new_tokens,
                         pixel_values_videos=proc.collate([proc.prepare(data, "clip")]), **media)[0, ids.shape[1]:]
    out = out.tolist()
    eos = model.tokenizer.eos_id
    return model.tokenizer.decode(out[:out.index(eos)] if eos in out else out)


def test_an_mp4_and_a_gif_get_the_engines_answer(client, model):
    for data, mime in ((mp4(), "video/mp4"), (mp4(codec="mpeg4", seed=1), "video/mp4"), (gif(), "image/gif")):
        r = client.post("/v1/chat/completions", json=ask(data_url(data, mime)))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == reference(model, data)
        assert body["usage"]["completion_tokens"] >= 1
        # cross-attention: the clip is memory, not prompt positions
        assert body["usage"]["prompt_tokens"] == len(encode_prompt(model.tokenizer, "what moves?"))


def test_streaming_with_a_video_gives_the_plain_answer(client):
    body = ask(data_url(mp4(seed=2)), stream=True, stream_options={"include_usage": True})
    plain = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [x[6:] for x in r.iter_lines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_bad_videos_get_400_naming_the_problem_and_the_server_stays_up(client, model):
    clip = mp4()
    bad = {
        "corrupt bytes": (data_url(b"not a video at all" * 20), "cannot read video"),
        "truncated mp4": (data_url(clip[:len(clip) // 2]), "cannot read video"),
        "a png still image": (data_url(png(), "image/png"), "a still image, not a video"),
        "empty data url": ("data:video/mp4;base64,", "video data URL is empty"),
        "non-video mime type": (data_url(clip, "application/pdf"), "expected video/*"),
        "text/plain": ("data:text/plain;base64,aGVsbG8=", "expected video/*"),
        "invalid base64": ("data:video/mp4;base64,@@@@", "invalid base64"),
        "not base64": ("data:video/mp4,abc", "not base64-encoded"),
        "remote url": ("http://169.254.169.254/latest/meta-data", "is not allowed"),
        "file url": ("file:///etc/passwd", "not supported"),
    }
    for name, (url, message) in bad.items():
        r = client.post("/v1/chat/completions", json=ask(url))
        assert r.status_code == 400, (name, r.status_code, r.text[:200])
        assert message in r.json()["error"]["message"], (name, r.json())
    two = ask(data_url(clip))
    two["messages"][0]["content"].append({"type": "video_url", "video_url": {"url": data_url(clip)}})
    r = client.post("/v1/chat/completions", json=two)
    assert r.status_code == 400 and "one video per conversation" in r.json()["error"]["message"]
    from_assistant = {**ask(None), "messages": [{"role": "assistant", "content": [
        {"type": "video_url", "video_url": {"url": data_url(clip)}}]}, {"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=from_assistant)
    assert r.status_code == 400 and "only user messages" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json=ask(None, image=data_url(png(), "image/png")))
    assert r.status_code == 400 and r.json()["error"]["message"] == "this model takes no images"
    ok = client.post("/v1/chat/completions", json=ask(data_url(clip)))
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == reference(model, clip)


def test_clips_over_the_limits_are_refused(tokenizer, model):
    """The server's policy (bytes; pixels a frame) and the processor's VideoLimits (frames, seconds)."""
    def strict(limits: VideoLimits) -> MultimodalTransformerModel:
        m = video_model(tokenizer)
        m.media_processors["video"] = replace(m.processors["video"], limits=limits)
        return m

    clip = mp4(frames=12)  # 1.5 s at 8 frames a second
    cases = {
        "bytes": (model, MediaPolicy(max_video_bytes=len(clip) - 1), f"video larger than {len(clip) - 1} bytes"),
        "pixels a frame": (model, MediaPolicy(max_pixels=500), "32x32 pixels a frame, over the limit of 500"),
        "seconds": (strict(VideoLimits(max_seconds=1.0)), MediaPolicy(), "lasts 2 s, over the limit of 1 s"),
        "frames": (strict(VideoLimits(max_frames=10)), MediaPolicy(), "has over 10 frames, the limit"),
    }
    for name, (m, policy, message) in cases.items():
        with TestClient(create_app(m, ServerConfig(model_name="vid", media=policy))) as c:
            r = c.post("/v1/chat/completions", json=ask(data_url(clip)))
            assert r.status_code == 400 and message in r.json()["error"]["message"], (name, r.text)
            small = mp4(frames=4, size=16)  # 256 pixels a frame, 0.5 s, fewer bytes: within every limit
            assert c.post("/v1/chat/completions", json=ask(data_url(small))).status_code == 200, name


def test_an_image_only_model_refuses_a_video(tokenizer):
    torch.manual_seed(0)
    m = MultimodalTransformerModel(tiny_config(tokenizer.vocab_size)).eval()
    m.tokenizer = tokenizer
    with TestClient(create_app(m, ServerConfig(model_name="vid"))) as c:
        r = c.post("/v1/chat/completions", json=ask(data_url(mp4())))
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith("this model takes no video")
        assert "video" not in c.get("/v1/examples").json()["kind"]["inputs"]


def test_the_model_kind_lists_video(client):
    kind = client.get("/v1/examples").json()["kind"]
    assert kind["inputs"] == ["video", "text"] and kind["task"] == "video + text -> text"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["vid"]


def test_early_fusion_counts_the_video_tokens_and_takes_an_image_too(tokenizer):
    """Prefix fusion: the clip's 2 x 16 tokens (and the image's 16) are prompt tokens; both media reach the model."""
    m = video_model(tokenizer, fusion="early", image=True)
    n_text = len(encode_prompt(tokenizer, "what moves?"))
    clip, still = mp4(seed=3), data_url(png(), "image/png")
    pixels = m.image_processor(Image.open(io.BytesIO(png())).convert("RGB"))[None]
    with TestClient(create_app(m, ServerConfig(model_name="vid"))) as c:
        assert c.get("/v1/examples").json()["kind"]["inputs"] == ["image", "video", "text"]
        r = c.post("/v1/chat/completions", json=ask(data_url(clip), image=still)).json()
        assert r["usage"]["prompt_tokens"] == n_text + m.num_media_tokens == n_text + 48
        assert r["choices"][0]["message"]["content"] == reference(m, clip, pixel_values=pixels)
        too_long = c.post("/v1/chat/completions", json=ask(data_url(clip), image=still, max_tokens=96 - 48 - n_text + 1))
        assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"


def test_openai_client_sends_a_video_data_url(model):
    openai = pytest.importorskip("openai")
    from test_serve import live_server

    clip = mp4(seed=4)
    with live_server(create_app(model, ServerConfig(model_name="vid"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": [{"type": "text", "text": "what moves?"},
                                                  {"type": "video_url", "video_url": {"url": data_url(clip)}}]}]
        plain = client.chat.completions.create(model="vid", messages=messages, temperature=0, max_tokens=8)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="vid", messages=messages, temperature=0, max_tokens=8, stream=True) if c.choices)
        assert plain.choices[0].message.content == streamed == reference(model, clip)
        with pytest.raises(openai.BadRequestError, match="a still image, not a video"):
            client.chat.completions.create(model="vid", max_tokens=4, messages=[{"role": "user", "content": [
                {"type": "text", "text": "hi"}, {"type": "video_url", "video_url": {"url": data_url(png(), "image/png")}}]}])


@pytest.mark.slow
def test_web_page_sends_a_video_clip_in_headless_chromium(model, tmp_path):
    """The chat page for a video model: it says it takes video; pick an MP4, see it, ask, get the API's answer."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test installs it)")
    from test_serve import live_server

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(mp4(seed=5))
    with live_server(create_app(model, ServerConfig(model_name="vid"))) as port:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('model: vid')")
            page.wait_for_selector("#drop:has-text('video')")
            assert page.locator("#kind").inner_text() == "video + text -> text"
            assert "video" in page.get_attribute("#file", "accept")
            page.fill("#max_tokens", "8")
            page.set_input_files("#file", str(clip))
            page.wait_for_selector("#drop video")
            page.fill("#prompt", "what moves?")
            page.press("#prompt", "Enter")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            answer = page.locator(".assistant span").text_content()
            assert page.locator(".user video").count() == 1
            assert page.get_attribute(".user video", "src").startswith("data:video/mp4;base64,")
            page.screenshot(path=str(tmp_path / "page.png"))  # for a look: pytest --basetemp DIR keeps it
            browser.close()
    assert answer == reference(model, clip.read_bytes())
