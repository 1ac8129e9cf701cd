"""POST /v1/images/generations with a tiny random text-to-image model: the official `openai` client gets
decodable PNGs of the asked size, equal to `imagine` for a seed; bad requests are 400s naming the field;
the model does not chat; the page shows its imagine panel."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer.hub import load_pretrained  # noqa: E402
from multimodaltransformer.imagine import ImagineOptions, imagine  # noqa: E402
from multimodaltransformer.models.t2i import TextToImage, TextToImageConfig  # noqa: E402
from multimodaltransformer.models.vqvae import VQVAEConfig  # noqa: E402
from multimodaltransformer.nn import TransformerConfig  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402

from test_serve import live_server  # noqa: E402

WORDS = sorted("a small large red blue green circle square left of".split())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    cfg = TextToImageConfig(words=WORDS, vqvae=VQVAEConfig(channels=[8, 8, 8]),
                            prior=TransformerConfig(dim=32, depth=1, heads=2, position="learned"))
    path = tmp_path_factory.mktemp("t2i") / "t2i"
    TextToImage(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return load_pretrained(model_dir)


@pytest.fixture(scope="module")
def client(model, model_dir):
    with TestClient(create_app(model, ServerConfig(model_name="t2i", model_dir=model_dir))) as c:
        yield c


def pngs(body: dict) -> list[Image.Image]:
    out = []
    for d in body["data"]:
        raw = base64.b64decode(d["b64_json"])
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        out.append(Image.open(io.BytesIO(raw)).convert("RGB"))
    return out


def test_openai_client_generates_pngs_of_the_asked_size(model):
    openai = pytest.importorskip("openai")
    with live_server(create_app(model, ServerConfig(model_name="model"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        r = client.images.generate(model="model", prompt="a red circle", n=2, size="64x64", response_format="b64_json")
        assert len(r.data) == 2 and isinstance(r.created, int) and r.data[0].revised_prompt is None
        for d in r.data:
            im = Image.open(io.BytesIO(base64.b64decode(d.b64_json)))
            assert im.format == "PNG" and im.size == (64, 64)
        big = client.images.generate(model="model", prompt="a red circle", size="128x128")
        assert [Image.open(io.BytesIO(base64.b64decode(d.b64_json))).size for d in big.data] == [(128, 128)]
        with pytest.raises(openai.BadRequestError, match="size"):
            client.images.generate(model="model", prompt="a red circle", size="100x100")
        with pytest.raises(openai.BadRequestError, match="generates images"):
            client.chat.completions.create(model="model", messages=[{"role": "user", "content": "hi"}])


def test_a_seed_gives_the_images_imagine_draws(client, model):
    body = {"prompt": "a large blue square left of a small green circle", "n": 2, "seed": 7, "guidance_scale": 2.0}
    first, again = (client.post("/v1/images/generations", json=body) for _ in range(2))
    assert first.status_code == 200, first.text
    want = imagine(model, [body["prompt"]], ImagineOptions(n=2, seed=7, guidance=2.0))[0]
    got = pngs(first.json())
    assert [np.asarray(g).tolist() for g in got] == [np.asarray(w.convert("RGB")).tolist() for w in want]
    assert again.json()["data"] == first.json()["data"]
    assert set(first.json()["data"][0]) == {"b64_json", "revised_prompt"}


def test_default_size_is_the_models_and_extras_are_accepted(client):
    r = client.post("/v1/images/generations", json={"prompt": "a green square", "model": "dall-e-3", "quality": "hd",
                                                      "style": "vivid", "user": "u1", "temperature": 0.8, "top_k": 5})
    assert r.status_code == 200, r.text
    assert [im.size for im in pngs(r.json())] == [(64, 64)]


@pytest.mark.parametrize("body, param, says", [
    ({"prompt": ""}, "prompt", "empty prompt"),
    ({"prompt": "   "}, "prompt", "empty prompt"),
    ({"prompt": "a purple circle"}, "prompt", "unknown word(s) ['purple']"),
    ({"prompt": " ".join(["a red circle left of"] * 3) + " a square"}, "prompt", "17 words, more than the 16"),
    ({"prompt": "a red circle", "n": 0}, "n", "greater than or equal to 1"),
    ({"prompt": "a red circle", "n": 11}, "n", "less than or equal to 10"),
    ({"prompt": "a red circle", "size": "100x100"}, "size", "not available"),
    ({"prompt": "a red circle", "size": "64x128"}, "size", "square"),
    ({"prompt": "a red circle", "response_format": "url"}, "response_format", "b64_json"),
    ({"prompt": "a red circle", "rerank": 4}, "rerank", "re-ranker"),
    ({"prompt": "a red circle", "guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
    ({"prompt": "a red circle", "n": "two"}, "n", "integer"),
    ({"prompt": 5}, "prompt", "string"),
    ({}, "prompt", "required"),
])
def test_bad_requests_are_400s_naming_the_field(client, body, param, says):
    r = client.post("/v1/images/generations", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and says in err["message"] and err["type"] == "invalid_request_error", err


def test_the_model_does_not_chat_but_lists_and_reports_health(client):
    chat = client.post("/v1/chat/completions", json={"model": "t2i", "messages": [{"role": "user", "content": "hi"}]})
    emb = client.post("/v1/embeddings", json={"model": "t2i", "input": "a red circle"})
    for r in (chat, emb):
        assert r.status_code == 400 and "use POST /v1/images/generations" in r.json()["error"]["message"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["t2i"]
    assert client.get("/health").json()["status"] == "ok"
    kind = client.get("/v1/examples").json()["kind"]
    assert kind == {"inputs": ["text"], "task": "text -> image", "embeddings": False, "output": "image"}


def test_the_page_has_the_imagine_panel(client):
    page = client.get("/").text
    for needle in ('id="imagine"', 'id="im-prompt"', 'id="im-n"', 'id="im-seed"', 'id="im-guidance"',
                   "/v1/images/generations", "image-rendering: pixelated", 'kind.output === "image"'):
        assert needle in page, needle


def test_a_busy_worker_answers_429(model):
    app = create_app(model, ServerConfig(model_name="t2i", queue_size=1))
    with TestClient(app) as c:
        blocker = threading.Thread(target=app.state.worker.run_exclusive, args=(lambda: time.sleep(1.5),))
        blocker.start()
        time.sleep(0.2)  # the worker is busy; the queue (size 1) takes one request
        with ThreadPoolExecutor(3) as pool:
            codes = [r.status_code for r in pool.map(
                lambda _: c.post("/v1/images/generations", json={"prompt": "a red circle"}), range(3))]
        blocker.join()
    assert 429 in codes and 200 in codes, codes


def test_serve_loads_a_text_to_image_directory(model_dir, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from multimodaltransformer.serve import serve

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **_: apps.append(self.config.app))
    serve(model_dir)  # as `mmt serve MODEL_DIR` does: no tokenizer needed
    with TestClient(apps[0]) as c:
        assert c.get("/v1/examples").json()["kind"]["output"] == "image"
        assert c.post("/v1/images/generations", json={"prompt": "a blue square", "n": 1}).status_code == 200


def test_rerank_keeps_the_best_candidates_by_model_dir_reranker(model, model_dir, tokenizer, tmp_path):
    import shutil
    from dataclasses import replace

    from multimodaltransformer import MultimodalTransformerModel
    from multimodaltransformer.imagine import Reranker
    from multimodaltransformer.models.multimodal import HeadsConfig

    from conftest import tiny_config

    served = shutil.copytree(model_dir, tmp_path / "t2i")
    torch.manual_seed(0)
    clip = MultimodalTransformerModel(replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(contrastive_dim=8)))
    clip.tokenizer = tokenizer
    clip.eval().save_pretrained(served / "reranker")  # a random contrastive model: any scores will do
    with TestClient(create_app(model, ServerConfig(model_name="t2i", model_dir=served))) as c:
        r = c.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "rerank": 3, "seed": 1})
    assert r.status_code == 200, r.text
    reranker = Reranker.load(served / "reranker")
    want = imagine(model, ["a red circle"], ImagineOptions(n=2, rerank=3, seed=1), reranker)[0]
    assert [np.asarray(g).tolist() for g in pngs(r.json())] == [np.asarray(w.convert("RGB")).tolist() for w in want]


def test_left_out_extras_take_the_models_sampling_defaults(model_dir, tokenizer, tmp_path):
    """A model whose config asks for guidance 1.5, temperature 0.8, top-k 5 and the best of 3: a request
    (and `mmt imagine`) that leaves them out gets exactly those samples."""
    import json
    import shutil
    from dataclasses import replace

    from multimodaltransformer import MultimodalTransformerModel
    from multimodaltransformer.imagine import Reranker, run_imagine
    from multimodaltransformer.models.multimodal import HeadsConfig

    from conftest import tiny_config

    served = shutil.copytree(model_dir, tmp_path / "t2i")
    cfg = json.loads((served / "config.json").read_text())
    cfg["sampling"] = {"guidance": 1.5, "temperature": 0.8, "top_k": 5, "top_p": 1.0, "rerank": 3}
    (served / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    clip = MultimodalTransformerModel(replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(contrastive_dim=8)))
    clip.tokenizer = tokenizer
    clip.eval().save_pretrained(served / "reranker")
    m = load_pretrained(served)
    want = imagine(m, ["a red circle"], ImagineOptions(n=2, seed=1, guidance=1.5, temperature=0.8, top_k=5, rerank=3),
                   Reranker.load(served / "reranker"))[0]
    with TestClient(create_app(m, ServerConfig(model_name="t2i", model_dir=served))) as c:
        r = c.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 1})
    assert r.status_code == 200, r.text
    assert [np.asarray(g).tolist() for g in pngs(r.json())] == [np.asarray(w.convert("RGB")).tolist() for w in want]
    paths = run_imagine(served, tmp_path / "out", prompt="a red circle", options=ImagineOptions(n=2, seed=1),
                        progress=False)
    assert [np.asarray(Image.open(p).convert("RGB")).tolist() for p in paths] == \
        [np.asarray(w.convert("RGB")).tolist() for w in want]
    info = json.loads((tmp_path / "out" / "imagine.json").read_text())
    assert (info["guidance"], info["temperature"], info["top_k"], info["rerank"]) == (1.5, 0.8, 5, 3)
