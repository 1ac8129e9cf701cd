"""Lower-precision decoding (nn/lowp.py): bf16 and int8 weight-only Linear layers, through the CLI too."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from multimodaltransformer.generation import generate
from multimodaltransformer.models import GPT2, GPT2Config
from multimodaltransformer.nn.lowp import LowPrecisionLinear, lower_precision, weight_bytes


def test_int8_linear_is_the_per_row_quantised_matmul():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    q = LowPrecisionLinear(lin, "int8")
    scale = lin.weight.abs().amax(1) / 127
    w_q = torch.round(lin.weight / scale[:, None]).clamp(-127, 127)
    assert torch.equal(q.weight.float(), w_q)  # the stored ints
    assert (w_q * scale[:, None] - lin.weight).abs().max() <= scale.max() / 2 + 1e-6  # half a step at most
    x = torch.randn(3, 5, 64)
    ref = x.to(torch.bfloat16).float() @ (w_q * q.scale.float()[:, None]).t() + lin.bias
    with torch.no_grad():
        got = q(x)
    assert got.shape == (3, 5, 48) and got.dtype == torch.float32
    assert (got - ref).abs().max() < 2e-2 * ref.abs().max()


def test_bf16_linear_rounds_only_the_matmul_inputs():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16, bias=False)
    x = torch.randn(4, 32)
    with torch.no_grad():
        got, exact = LowPrecisionLinear(lin, "bf16")(x), lin(x)
    ref = (x.to(torch.bfloat16).float() @ lin.weight.to(torch.bfloat16).float().t())
    assert (got - ref).abs().max() < 1e-2 and (got - exact).abs().max() < 0.1


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config()
    cfg.vocab_size, cfg.transformer.dim, cfg.transformer.depth, cfg.transformer.heads = 97, 64, 2, 4
    cfg.transformer.mlp_dim, cfg.transformer.max_seq_len = 128, 64
    return GPT2(cfg).eval()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_lowered_lm_decodes_close_to_fp32_with_its_cache(gpt2, precision):
    low = lower_precision(copy.deepcopy(gpt2), precision)
    kinds = {type(m) for m in low.modules()}
    assert nn.Linear not in kinds and LowPrecisionLinear in kinds
    assert weight_bytes(low) < weight_bytes(gpt2)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = gpt2(ids), low(ids)
    ref, got = (getattr(t, "logits", t) for t in (ref, got))
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    cached = generate(low, ids[:, :4], max_new_tokens=8, do_sample=False)
    uncached = generate(low, ids[:, :4], max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_f32_is_the_model_unchanged_and_bad_names_are_refused(gpt2):
    assert lower_precision(gpt2, "f32") is gpt2 and any(type(m) is nn.Linear for m in gpt2.modules())
    with pytest.raises(ValueError, match="f32, bf16, int8"):
        lower_precision(gpt2, "fp8")


def test_cli_generate_and_serve_take_dtype(tiny_model, tmp_path, shapes_dir, monkeypatch, capsys):
    from multimodaltransformer.cli import main

    tiny_model.save_pretrained(tmp_path / "m")
    image = next((shapes_dir / "images").iterdir())
    for dtype in ("f32", "int8"):
        main(["generate", str(tmp_path / "m"), "--prompt", "what color is the circle?", "--image", str(image),
              "--max-new-tokens", "4", "--dtype", dtype])
    assert capsys.readouterr().out.count("\n") == 2  # one answer a run (a random model may say nothing)
    uvicorn = pytest.importorskip("uvicorn")
    from fastapi.testclient import TestClient

    apps = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, **_: apps.append(self.config.app))
    main(["serve", str(tmp_path / "m"), "--dtype", "int8", "--device", "cpu", "--access-log", "off"])
    with TestClient(apps[0]) as c:
        assert c.get("/health").json()["dtype"] == "int8"
        r = c.post("/v1/chat/completions", json={"model": "m", "max_tokens": 4,
                                                   "messages": [{"role": "user", "content": "what is here?"}]})
        assert r.status_code == 200
