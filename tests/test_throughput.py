"""FLOPs estimates against hand-computed values, report arithmetic, and the matmul peak probe."""

from __future__ import annotations

import math

import pytest
import torch

from multimodaltransformer import MultimodalTransformerModel
from multimodaltransformer.train.throughput import (ThroughputReport, flops_per_token, matmul_params,
                                                    measure_matmul_peak, model_flops_per_token)

from conftest import tiny_config


def test_flops_per_token_by_hand():
    assert flops_per_token(1000, 2, 4, 8, 16) == 6 * 1000 + 12 * 2 * 4 * 8 * 16  # 6000 + 12288
    assert flops_per_token(1000, 2, 4, 8, 16) == 18288
    # GPT-2 small as nanoGPT counts it (124M params less 1024 x 768 positions) at T = 1024: ~8.6e8 FLOPs / token
    gpt2 = flops_per_token(124_439_808 - 1024 * 768, 12, 12, 64, 1024)
    assert gpt2 == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024
    assert gpt2 == pytest.approx(8.55e8, rel=1e-2)


def _by_hand(dim: int, depth: int, vocab: int) -> int:
    """Matmul parameters of our text decoder: per block LN (2C) x 2, qkv (3C^2 + 3C), proj (C^2 + C),
    MLP (4C^2 + 4C + 4C^2 + C); final LN (2C); the tied LM head (V C)."""
    block = 2 * (2 * dim) + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (8 * dim * dim + 5 * dim)
    return depth * block + 2 * dim + vocab * dim


def test_model_flops_text_only():
    model = MultimodalTransformerModel(tiny_config(vocab_size=320, image=False))
    n = _by_hand(32, 2, 320)
    assert matmul_params(model.decoder) == n
    all_params = sum(p.numel() for p in model.parameters())
    assert all_params - n == 64 * 32  # only the position table is left out
    assert model_flops_per_token(model, 64) == flops_per_token(n, 2, 4, 8, 64)


def test_model_flops_with_image():
    model = MultimodalTransformerModel(tiny_config(vocab_size=320))
    text = model_flops_per_token(model, 64, images_per_sequence=0)
    assert text == flops_per_token(matmul_params(model.decoder), 2, 4, 8, 64)
    # ViT 32 px / 8 px patches: 16 tokens; fusion projector + encoder without its position table
    n_img = matmul_params(model.image_encoder) + matmul_params(model.fusion)
    assert n_img == sum(p.numel() for p in [*model.image_encoder.parameters(), *model.fusion.parameters()]) - 16 * 32
    per_image = 16 * flops_per_token(n_img, 1, 2, 16, 16)
    assert model_flops_per_token(model, 64) == pytest.approx(text + per_image / 64)


def test_report_arithmetic():
    r = ThroughputReport(tokens=4096, samples=64, seconds=2.0, flops_per_token=1e6, peak_flops=1e10,
                         peak_dtype="bf16")
    assert (r.tokens_per_s, r.samples_per_s) == (2048, 32)
    assert r.achieved_flops == pytest.approx(2.048e9)
    assert r.mfu == pytest.approx(0.2048)
    assert r.summary() == ("throughput: 2.05k tokens/s, 32 samples/s, "
                           "MFU 20.5% of a measured 10GFLOP/s bf16 matmul peak")
    d = r.as_dict()
    assert d["mfu"] == pytest.approx(0.2048) and d["tokens_per_s"] == 2048 and d["peak_dtype"] == "bf16"
    bare = ThroughputReport(tokens=10, samples=1, seconds=1.0)
    assert bare.mfu is None and "MFU" not in bare.summary()
    assert math.isnan(ThroughputReport(0, 0, 0.0).tokens_per_s)


def test_matmul_peak_is_positive():
    peak = measure_matmul_peak("cpu", torch.float32, size=64, seconds=0.02)
    assert math.isfinite(peak) and peak > 0
    assert measure_matmul_peak(torch.device("cpu"), torch.float32, size=64) == peak  # cached


def test_auto_precision_is_fp32_without_bf16_units(monkeypatch):
    from multimodaltransformer.train import throughput

    assert throughput.resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: kept
    monkeypatch.setattr(throughput, "has_bf16_units", lambda device: False)
    assert throughput.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(throughput, "has_bf16_units", lambda device: True)
    peaks = {torch.float32: 100.0, torch.bfloat16: 300.0}
    monkeypatch.setattr(throughput, "measure_matmul_peak", lambda device, dtype: peaks[dtype])
    assert throughput.resolve_precision("auto", torch.device("cpu")) == "bf16"
    peaks[torch.bfloat16] = 110.0  # units present but not faster: fp32
    assert throughput.resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_auto_precision_times_the_step_itself_when_given_one(monkeypatch):
    """With a step to time, auto picks bf16 only when the step runs >= 1.2x faster in it (a fast
    matmul peak is not enough: a small model's step is mostly other work)."""
    import time

    from multimodaltransformer.train import throughput

    monkeypatch.setattr(throughput, "has_bf16_units", lambda device: True)
    monkeypatch.setattr(throughput, "measure_matmul_peak", lambda device, dtype: 1.0 if dtype == torch.float32 else 9.0)
    cost = {"fp32": 0.004, "bf16": 0.005}
    calls = []

    def step(p):
        calls.append(p)
        time.sleep(cost[p])

    assert throughput.resolve_precision("auto", torch.device("cpu"), step) == "fp32"
    assert calls == ["fp32"] * 3 + ["bf16"] * 3  # a warm-up and two timed steps each
    cost["bf16"] = 0.001
    assert throughput.resolve_precision("auto", torch.device("cpu"), step) == "bf16"
    assert throughput.resolve_precision("fp32", torch.device("cpu"), step) == "fp32" and len(calls) == 12


def test_the_trainer_probe_leaves_the_model_as_it_was(shapes_dir, tmp_path, monkeypatch):
    from multimodaltransformer.train import throughput
    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.trainer import Trainer

    m = str(shapes_dir / "manifest.jsonl")
    run = load_run_config("shapes-tiny", [f"data.train={m}", f"data.val={m}", "train.max_steps=1",
                                          "train.batch_size=4", "train.precision=auto",
                                          "model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2,"
                                          " stem: conv}"])
    seen = []
    real = throughput.resolve_precision

    def spy(precision, device, step=None):
        assert step is not None
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        step("fp32")
        after = trainer.model.state_dict()
        seen.append(all(torch.equal(before[k], after[k]) for k in before))
        assert all(p.grad is None for p in trainer.model.parameters())
        return real("fp32", device)

    import multimodaltransformer.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "resolve_precision", spy)
    trainer = Trainer(run, tmp_path, progress=False)
    trainer.fit()
    assert seen == [True]
