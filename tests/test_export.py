"""mmt export: Hugging Face directories load in transformers with equal logits (fp32, 1e-5); the ONNX
decoder (optimum layout) matches PyTorch under onnxruntime (1e-4) at prefill (past 0, left padding)
and at a decode step (past > 0); the onnxruntime generation loop gives PyTorch's greedy tokens; the
multimodal model (cross and early fusion) as vision encoder + embeddings + decoder matches PyTorch at
prefill and decode (1e-4) and `mmt generate --backend onnxruntime` with images answers as with
PyTorch; what cannot be exported fails by name, leaving no output behind."""

import json

import numpy as np
import pytest
import torch
import transformers as hf
from gguf_utils import byte_level_tokenizer
from hub_utils import ATOL, max_diff, perturb

from multimodaltransformer import load_pretrained
from multimodaltransformer.cli import main
from multimodaltransformer.export import ExportError, export
from multimodaltransformer.models import BERT, GPT2, BERTConfig, GPT2Config
from multimodaltransformer.nn import TransformerConfig

ort = pytest.importorskip("onnxruntime")
from multimodaltransformer.export.ort_generate import OrtDecoderLM  # noqa: E402

ONNX_ATOL = 1e-4
V = 320  # byte_level_tokenizer's vocabulary
PROMPTS = ["the quick brown fox", "hello"]


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, eos_token_id=0)
        return perturb(hf.GPT2LMHeadModel(cfg))
    cfg = hf.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                         intermediate_size=96, vocab_size=V, max_position_embeddings=64, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 50000.0}, bos_token_id=None,
                         eos_token_id=2, pad_token_id=None, tie_word_embeddings=False)
    return perturb(hf.LlamaForCausalLM(cfg))  # GQA, untied head


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def source(request, tmp_path_factory):
    """(reference transformers model, its directory with tokenizer.json)."""
    ref = tiny(request.param)
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    byte_level_tokenizer().save(str(path / "tokenizer.json"))
    return ref, path


@pytest.fixture(scope="module")
def onnx_dir(source, tmp_path_factory):
    return export(source[1], "onnx", tmp_path_factory.mktemp("onnx") / "out")


def test_hf_export_loads_in_transformers_with_equal_logits(source, tmp_path):
    ref, path = source
    out = export(path, "hf", tmp_path / "hf")
    back = hf.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        assert max_diff(back(ids).logits, ref(ids).logits) < ATOL
    tok = hf.AutoTokenizer.from_pretrained(out)
    assert tok("hello world").input_ids == byte_level_tokenizer().encode("hello world").ids


def _run(session, ids, mask, positions, past):
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
    feed |= {i.name: p for i, p in zip(session.get_inputs()[3:], past)}
    logits, *present = session.run(None, feed)
    return torch.from_numpy(logits), present


def test_onnx_layout_and_files(onnx_dir):
    import onnx

    model = onnx.load(str(onnx_dir / "decoder_model_merged.onnx"))
    onnx.checker.check_model(model)
    names = [i.name for i in model.graph.input]
    assert names[:5] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                         "past_key_values.0.value"]
    assert [o.name for o in model.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "export.json"):
        assert (onnx_dir / name).is_file(), name
    assert json.loads((onnx_dir / "export.json").read_text())["decoder"]["inputs"] == names


def test_onnx_prefill_and_decode_match_pytorch(source, onnx_dir):
    ours = load_pretrained(source[1])
    session = ort.InferenceSession(str(onnx_dir / "decoder_model_merged.onnx"))
    ids = torch.randint(0, V, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    G, D = session.get_inputs()[3].shape[1], session.get_inputs()[3].shape[3]
    empty = [np.zeros((2, G, 0, D), np.float32) for _ in session.get_inputs()[3:]]
    logits, present = _run(session, ids, mask, positions, empty)  # prefill, past 0
    with torch.no_grad():
        ref = ours(ids, mask, positions).logits
    assert max_diff(logits[0], ref[0]) < ONNX_ATOL and max_diff(logits[1, 3:], ref[1, 3:]) < ONNX_ATOL
    nxt = torch.randint(0, V, (2, 1))
    mask2 = torch.cat([mask, torch.ones_like(nxt)], 1)
    step, present2 = _run(session, nxt, mask2, positions[:, -1:] + 1, present)  # decode, past 9
    with torch.no_grad():
        ref2 = ours(torch.cat([ids, nxt], 1), mask2, (mask2.cumsum(1) - 1).clamp(min=0)).logits[:, -1:]
    assert max_diff(step, ref2) < ONNX_ATOL
    assert present2[0].shape[2] == 10


def test_onnxruntime_greedy_equals_pytorch(source, onnx_dir):
    ours, ortlm = load_pretrained(source[1]), OrtDecoderLM(onnx_dir)
    ids = torch.randint(3, V, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    expected = ours.generate(ids, mask, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(ortlm.generate(ids, mask, max_new_tokens=12, eos_token_id=[]), expected)


def test_mmt_generate_backend_onnxruntime(source, onnx_dir, capsys, tmp_path):
    ours = load_pretrained(source[1])
    ids = torch.tensor([ours.tokenizer.encode(PROMPTS[0]).ids])
    new = ours.generate(ids, max_new_tokens=8)[0, ids.shape[1]:].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in ours.eos_ids), len(new))]
    assert main(["generate", str(onnx_dir), "--backend", "onnxruntime", "--prompt", PROMPTS[0],
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == ours.tokenizer.decode(new) + "\n"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(i), "task": "generate", "prompt": p}) + "\n"
                                for i, p in enumerate(PROMPTS)))
    assert main(["generate", str(onnx_dir), "--backend", "onnxruntime", "--data", str(manifest),
                 "--out", str(tmp_path / "p.jsonl"), "--max-new-tokens", "4"]) == 0
    assert [json.loads(line)["id"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == ["0", "1"]


def test_unsupported_exports_fail_by_name_and_leave_nothing(tmp_path, capsys):
    rope_gpt2 = GPT2(GPT2Config(TransformerConfig(dim=32, depth=1, heads=4, position="rope"), vocab_size=50))
    rope_gpt2.save_pretrained(tmp_path / "rope")
    with pytest.raises(ExportError, match="transformer.position"):
        export(tmp_path / "rope", "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    BERT(BERTConfig(TransformerConfig(dim=32, depth=1, heads=4), vocab_size=50)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ExportError, match="ONNX export of a BERT"):
        export(tmp_path / "bert", "onnx", tmp_path / "out")
    assert main(["export", str(tmp_path / "rope"), "--format", "hf", "--dtype", "q8_0", "--out",
                 str(tmp_path / "out")]) == 2
    assert "q8_0 is a GGUF quantisation" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="already exists"):
        export(tmp_path / "rope", "hf", tmp_path / "full")


def test_onnxruntime_backend_rejects_media_and_beams(onnx_dir, capsys, tmp_path):
    assert main(["generate", str(onnx_dir), "--backend", "onnxruntime", "--prompt", "x", "--image", "a.png"]) == 2
    assert "text only" in capsys.readouterr().err
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "q1", "task": "vqa", "prompt": "x", "image": "a.png"}) + "\n")
    assert main(["generate", str(onnx_dir), "--backend", "onnxruntime", "--data", str(tmp_path / "m.jsonl"),
                 "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "['q1'] have media" in capsys.readouterr().err
    with pytest.raises(ExportError, match="beam search"):
        OrtDecoderLM(onnx_dir).generate(torch.tensor([[5, 6]]), num_beams=2)


@pytest.mark.parametrize("dtype, atol", [("f32", ATOL), ("f16", 1e-2), ("q8_0", 0.2)])
def test_gguf_export_reads_back_in_both_loaders(tmp_path, dtype, atol):
    from gguf_utils import TEMPLATE, tiny_llama

    ref = tiny_llama(V, tie=False)  # bos 1, eos 2, GQA
    ref.save_pretrained(tmp_path / "llama")
    byte_level_tokenizer().save(str(tmp_path / "llama" / "tokenizer.json"))
    (tmp_path / "llama" / "chat_template.jinja").write_text(TEMPLATE)
    file = export(tmp_path / "llama", "gguf", tmp_path / f"m-{dtype}.gguf", dtype)
    ours = load_pretrained(file)
    theirs = hf.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=file.name).eval()
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        a, b, r = ours(ids).logits, theirs(ids).logits, ref(ids).logits
    assert max_diff(a, r) < atol and max_diff(a, b) < 1e-4  # both loaders dequantise the same numbers
    assert ours.chat_template == TEMPLATE and ours.config.eos_token_id == 2 and ours.config.bos_token_id == 1
    assert ours.tokenizer.encode("hello world").ids == byte_level_tokenizer().encode("hello world").ids


def test_gguf_export_refuses_gpt2(tmp_path):
    tiny("gpt2").save_pretrained(tmp_path / "gpt2")
    byte_level_tokenizer().save(str(tmp_path / "gpt2" / "tokenizer.json"))
    with pytest.raises(ExportError, match="llama-family"):
        export(tmp_path / "gpt2", "gguf", tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


# ---- the multimodal model: vision_encoder.onnx + embed_tokens.onnx + decoder_model_merged.onnx -----------

def _tiny_multimodal(tokenizer, fusion: str):
    import dataclasses

    from conftest import tiny_config

    from multimodaltransformer import MultimodalTransformerModel
    from multimodaltransformer.fusion import FusionConfig

    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(tokenizer.vocab_size), fusion=FusionConfig(
        type=fusion, null_tokens=2 if fusion == "cross" else 0))
    model = perturb(MultimodalTransformerModel(cfg), scale=0.2)  # varied greedy answers, not one repeated token
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module", params=["cross", "early"])
def multimodal(request, tokenizer, tmp_path_factory):
    """(PyTorch model, its directory, its ONNX export) for cross-attention and prefix (early) fusion."""
    model = _tiny_multimodal(tokenizer, request.param)
    path = tmp_path_factory.mktemp(f"mm-{request.param}")
    model.save_pretrained(path / "model")
    assert main(["export", str(path / "model"), "--format", "onnx", "--out", str(path / "onnx")]) == 0
    return model, path / "model", path / "onnx"


def _pixels(shapes_dir, model, n: int = 2) -> torch.Tensor:
    from multimodaltransformer.data import read_manifest

    images = sorted({str(e.image) for e in read_manifest(shapes_dir)})[:n]
    return torch.stack([model.image_processor(p) for p in images])


def test_multimodal_onnx_layout_and_export_json(multimodal, shapes_dir):
    import onnx

    model, _, out = multimodal
    cross = model.config.fusion.type == "cross"
    layout = json.loads((out / "export.json").read_text())
    for name in ("vision_encoder.onnx", "embed_tokens.onnx", "decoder_model_merged.onnx"):
        onnx.checker.check_model(onnx.load(str(out / name)))
    names = [i.name for i in onnx.load(str(out / "decoder_model_merged.onnx")).graph.input]
    assert names == layout["decoder"]["inputs"]
    assert names[:4] == ["inputs_embeds", "attention_mask", "position_ids",
                         "encoder_hidden_states" if cross else "past_key_values.0.key"]
    assert layout["kind"] == "multimodal" and layout["image_processor"]["size"] == 32
    assert layout["special_token_ids"]["sep"] == model.tokenizer.sep_id
    pixels = _pixels(shapes_dir, model)
    feats = ort.InferenceSession(str(out / "vision_encoder.onnx")).run(None, {"pixel_values": pixels.numpy()})[0]
    with torch.no_grad():
        fused = model.fusion(model.image_encoder(pixels))
    ref = fused.memory if cross else fused.prefix
    assert feats.shape == (2, 16 + 2 * cross, 32) and max_diff(torch.from_numpy(feats), ref) < ONNX_ATOL


def test_multimodal_onnx_prefill_and_decode_match_pytorch(multimodal, shapes_dir):
    from multimodaltransformer.export.ort_multimodal import OrtMultimodalLM

    model, _, out = multimodal
    ortlm = OrtMultimodalLM(out)
    pixels = _pixels(shapes_dir, model)
    ids = torch.randint(6, model.tokenizer.vocab_size, (2, 7))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    x, key_mask, context = ortlm.embed(ids, mask, pixel_values=pixels)[:3]
    S = key_mask.shape[1]
    cache = ortlm.new_cache(2, S + 1)
    slots = torch.cat([key_mask, torch.ones(2, 1, dtype=torch.bool)], 1)
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = ortlm.decode_step(x, positions, slots[:, :S], 0, context, cache=cache)[:, S - 7:]  # prefill
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert max_diff(logits[0], ref[0]) < ONNX_ATOL and max_diff(logits[1, 3:], ref[1, 3:]) < ONNX_ATOL
    nxt = torch.randint(6, model.tokenizer.vocab_size, (2, 1))
    step = ortlm.decode_step(ortlm.embed_tokens(nxt), positions[:, -1:] + 1, slots, S, cache=cache)  # past S
    with torch.no_grad():
        ref2 = model(input_ids=torch.cat([ids, nxt], 1), attention_mask=torch.cat([mask, slots[:, -1:]], 1),
                     pixel_values=pixels).logits[:, -1:]
    assert max_diff(step, ref2) < ONNX_ATOL


def test_multimodal_greedy_answers_equal_mmt_generate_pytorch(multimodal, shapes_dir, tmp_path, capsys):
    from multimodaltransformer.data import read_manifest

    model, model_dir, out = multimodal
    examples = [e for e in read_manifest(shapes_dir) if e.task in ("vqa", "caption")][:6]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": str(i), "task": e.task, "prompt": e.prompt, "image": str(e.image)})
                                + "\n" for i, e in enumerate(examples)))
    answers = {}
    for backend, directory in (("torch", model_dir), ("onnxruntime", out)):
        assert main(["generate", str(directory), "--backend", backend, "--data", str(manifest), "--out",
                     str(tmp_path / f"{backend}.jsonl"), "--max-new-tokens", "8", "--batch-size", "4"]) == 0
        answers[backend] = [json.loads(line) for line in (tmp_path / f"{backend}.jsonl").read_text().splitlines()]
    assert answers["onnxruntime"] == answers["torch"]
    assert len({a["prediction"] for a in answers["torch"]}) > 1  # the answers differ with the images
    from multimodaltransformer.export.ort_multimodal import OrtMultimodalLM
    from multimodaltransformer.generation import generate

    ids = torch.randint(6, model.tokenizer.vocab_size, (2, 5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    pixels = _pixels(shapes_dir, model)  # 12 tokens without EOS, so the ids compare where the text may not
    assert torch.equal(generate(OrtMultimodalLM(out), ids, mask, pixel_values=pixels, max_new_tokens=12,
                                eos_token_id=[]),
                       model.generate(ids, mask, pixel_values=pixels, max_new_tokens=12, eos_token_id=[]))
    printed = []
    for backend, directory in (("torch", model_dir), ("onnxruntime", out)):
        assert main(["generate", str(directory), "--backend", backend, "--image", str(examples[0].image),
                     "--prompt", examples[0].prompt, "--max-new-tokens", "6", "--num-beams", "2"]) == 0
        printed.append(capsys.readouterr().out.splitlines()[-1])
    assert printed[0] == printed[1]  # beam search runs through the same engine


def test_multimodal_onnx_refusals(tokenizer, multimodal, tmp_path, capsys):
    model, model_dir, out = multimodal
    with pytest.raises(ExportError, match="--dtype f32"):
        export(model_dir, "onnx", tmp_path / "f16", "f16")
    late = _tiny_multimodal(tokenizer, "late")
    late.save_pretrained(tmp_path / "late")
    with pytest.raises(ExportError, match="fusion.type 'late'"):
        export(tmp_path / "late", "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    assert main(["generate", str(out), "--backend", "onnxruntime", "--prompt", "what is it?"]) == 2
    assert "needs an image" in capsys.readouterr().err
    assert main(["generate", str(out), "--backend", "onnxruntime", "--prompt", "x", "--image", "a.png",
                 "--audio", "a.wav"]) == 2
    assert "images only" in capsys.readouterr().err


@pytest.mark.parametrize("fusion", ["gated", "resampler"])
def test_other_generative_fusions_export_with_equal_greedy_tokens(tokenizer, shapes_dir, tmp_path, fusion):
    from multimodaltransformer.export.ort_multimodal import OrtMultimodalLM
    from multimodaltransformer.generation import generate

    model = _tiny_multimodal(tokenizer, fusion)  # perturbed: gated fusion's tanh gates are open
    model.save_pretrained(tmp_path / "model")
    ortlm = OrtMultimodalLM(export(tmp_path / "model", "onnx", tmp_path / "onnx"))
    ids, pixels = torch.randint(6, tokenizer.vocab_size, (2, 5)), _pixels(shapes_dir, model)
    assert torch.equal(generate(ortlm, ids, pixel_values=pixels, max_new_tokens=8, eos_token_id=[]),
                       model.generate(ids, pixel_values=pixels, max_new_tokens=8, eos_token_id=[]))


def test_a_vision_graph_that_does_not_trace_faithfully_is_refused(tokenizer, tmp_path):
    _tiny_multimodal(tokenizer, "graph").save_pretrained(tmp_path / "model")  # its message passing differs under onnxruntime
    with pytest.raises(ExportError, match="graph fusion do not export to ONNX faithfully"):
        export(tmp_path / "model", "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists() and not (tmp_path / ".onnx.partial").exists()
