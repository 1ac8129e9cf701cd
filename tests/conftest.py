from __future__ import annotations

import pytest
import torch

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.data import shapes
from multimodaltransformer.modalities import TextTokenizer, ViTConfig
from multimodaltransformer.models import DecoderConfig


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    shapes.generate(out, split="train", n=40, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer(shapes_dir):
    from multimodaltransformer.data import read_manifest

    texts = [s for e in read_manifest(shapes_dir) for s in (e.prompt, e.target)]
    return TextTokenizer.train(texts, vocab_size=400)


def tiny_config(vocab_size: int = 320, image: bool = True) -> MultimodalTransformer:
    return MultimodalTransformer(
        image=ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2) if image else None,
        decoder=DecoderConfig(dim=32, depth=2, heads=4, vocab_size=vocab_size, max_seq_len=64))


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    model = MultimodalTransformerModel(tiny_config(tokenizer.vocab_size)).eval()
    model.tokenizer = tokenizer
    return model
