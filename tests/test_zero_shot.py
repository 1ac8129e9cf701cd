"""Zero-shot classification and retrieval with an imported CLIP, against transformers' CLIPModel."""

import pytest
import torch
import transformers as hf
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from multimodaltransformer import load_pretrained
from multimodaltransformer.zero_shot import recall_at_k, retrieval_similarity, zero_shot_classify

from hub_utils import perturb
from test_hub_clip import EOS, tiny_config

WORDS = ["a", "photo", "of", "red", "circle", "blue", "square", "green", "triangle", "."]


def word_tokenizer() -> Tokenizer:
    vocab = {"<pad>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}, "<bos>": 95, "<eos>": EOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 95),
                                                                                              ("<eos>", EOS)])
    return tok


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(hf.CLIPModel(tiny_config()))
    path = tmp_path_factory.mktemp("clip")
    ref.save_pretrained(path)
    word_tokenizer().save(str(path / "tokenizer.json"))
    return ref, load_pretrained(path)


def test_zero_shot_equals_transformers_probabilities(clip):
    ref, ours = clip
    images = torch.randn(4, 3, 30, 30)
    names = ["red circle", "blue square", "green triangle"]
    probs = zero_shot_classify(ours, images, names)
    enc = [word_tokenizer().encode(f"a photo of a {n} .") for n in names]
    ids = torch.tensor([e.ids for e in enc])
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=images).logits_per_image.softmax(-1)
    assert probs.shape == (4, 3)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)


def test_retrieval_similarity_is_cosine_and_recall_counts_the_diagonal(clip):
    _, ours = clip
    sim = retrieval_similarity(ours, ["a red circle", "a blue square ."], torch.randn(2, 3, 30, 30))
    assert sim.shape == (2, 2) and float(sim.abs().max()) <= 1.0 + 1e-6
    s = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.8], [0.0, 0.3, 0.7]])
    assert recall_at_k(s, 1) == pytest.approx(2 / 3)
    assert recall_at_k(s, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 2))
