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


@pytest.fixture(scope="session")
def parts(tmp_path_factory, shapes_dir):
    """Tiny random Hugging Face checkpoints to compose: a ViT and a GPT-2 with a BPE tokenizer.json."""
    import transformers as hf
    from hub_utils import perturb
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from multimodaltransformer.data import read_manifest

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vit = perturb(hf.ViTModel(hf.ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=40, image_size=32, patch_size=8)))
    vit.save_pretrained(root / "vit")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [s for e in read_manifest(shapes_dir) for s in (e.prompt, e.target)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=330, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    eos = tok.token_to_id("<|endoftext|>")
    gpt2 = perturb(hf.GPT2LMHeadModel(hf.GPT2Config(vocab_size=tok.get_vocab_size(), n_embd=32, n_layer=2,
                                                    n_head=2, n_positions=96, bos_token_id=eos, eos_token_id=eos)))
    gpt2.save_pretrained(root / "gpt2")
    tok.save(str(root / "gpt2" / "tokenizer.json"))
    return root
