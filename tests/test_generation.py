"""generation.generate: token-for-token equal to transformers' generate on tiny random GPT-2 weights.

Every setting runs on a left-padded batch whose rows reach EOS at different steps (EOS ids are
picked from the model's own greedy output), through the cached and the uncached path.
"""

from __future__ import annotations

import pytest
import torch
import transformers as hf
from batch_utils import decode_joining
from hub_utils import perturb, save

from multimodaltransformer import load_pretrained
from multimodaltransformer.generation import GenerationConfig, as_generative, generate

T, NEW, PAD = 8, 14, 5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_embd=48, n_head=3, n_layer=2, vocab_size=97, n_positions=64, bos_token_id=None,
                        eos_token_id=None)
    ref = perturb(hf.GPT2LMHeadModel(cfg), scale=0.3)
    return ref, load_pretrained(save(ref, tmp_path_factory.mktemp("gpt2")))


@pytest.fixture(scope="module")
def batch(pair):
    """Left-padded prompts (4, T) and EOS ids the tiny model emits in the middle of some rows only."""
    ref, _ = pair
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (4, T), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[3, :5] = 0
    ids = ids.masked_fill(mask == 0, PAD)
    free = ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=PAD)[:, T:]
    eos = [int(free[0, 3]), int(free[3, 8])]
    return ids, mask, eos


def hf_generate(ref, ids, mask, **kw):
    with torch.no_grad():
        return ref.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=PAD, **kw)


SETTINGS = {
    "greedy": {},
    "beam": {"num_beams": 3},
    "beam early_stopping=True": {"num_beams": 3, "early_stopping": True},
    "beam early_stopping=never": {"num_beams": 3, "early_stopping": "never"},
    "beam length_penalty=0": {"num_beams": 3, "length_penalty": 0.0},
    "beam length_penalty=2 never": {"num_beams": 3, "length_penalty": 2.0, "early_stopping": "never"},
    "beam length_penalty=-1 True": {"num_beams": 2, "length_penalty": -1.0, "early_stopping": True},
    "beam num_return_sequences": {"num_beams": 4, "num_return_sequences": 3},
    "repetition_penalty": {"repetition_penalty": 1.5},
    "beam repetition_penalty": {"num_beams": 3, "repetition_penalty": 0.7},
    "no_repeat_ngram 2": {"no_repeat_ngram_size": 2},
    "beam no_repeat_ngram 3": {"num_beams": 3, "no_repeat_ngram_size": 3},
    "min_new_tokens": {"min_new_tokens": 6},
    "beam min_new_tokens": {"num_beams": 3, "min_new_tokens": 8},
    "all processors": {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "min_new_tokens": 4},
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("eos_kind", ["two eos", "one eos", "no eos"])
def test_equals_transformers(pair, batch, name, eos_kind):
    ref, ours = pair
    ids, mask, eos = batch
    eos_id = {"two eos": eos, "one eos": eos[0], "no eos": None}[eos_kind]
    kw = SETTINGS[name]
    expected = hf_generate(ref, ids, mask, do_sample=False, eos_token_id=eos_id, **kw)
    for use_cache in (True, False):
        got = generate(ours, ids, mask, max_new_tokens=NEW, pad_token_id=PAD, use_cache=use_cache,
                       eos_token_id=eos_id if eos_id is not None else [], **kw)
        assert got.shape == expected.shape and torch.equal(got, expected), (name, eos_kind, use_cache)


def test_eos_is_reached_mid_batch(pair, batch):
    """The matrix above is only meaningful if rows stop at different steps: check the data does that."""
    ref, _ = pair
    ids, mask, eos = batch
    out = hf_generate(ref, ids, mask, do_sample=False, eos_token_id=eos)[:, T:]
    ends = [min((row.tolist().index(t) for t in eos if t in row.tolist()), default=NEW) for row in out]
    assert min(ends) >= 1 and len(set(ends)) >= 3  # rows stop at different steps, after a few tokens
    assert (out[torch.tensor(ends) < out.shape[1] - 1] == PAD).any()  # and are padded afterwards
    beams = hf_generate(ref, ids, mask, do_sample=False, eos_token_id=eos, num_beams=3)[:, T:]
    assert (beams == PAD).any()


@pytest.mark.parametrize("kw", [{}, {"top_k": 5}, {"top_p": 0.8}, {"temperature": 0.7, "top_k": 0},
                                {"temperature": 1.3, "top_k": 10, "top_p": 0.9}, {"num_return_sequences": 3},
                                {"num_beams": 3}, {"num_beams": 3, "top_k": 4, "num_return_sequences": 2}])
def test_sampling_equals_transformers_with_the_same_seed(pair, batch, kw):
    """Both draw with torch.multinomial on the same probabilities in the same order, so the same seed
    gives the same tokens; `seed=` uses a private generator seeded the same way."""
    ref, ours = pair
    ids, mask, eos = batch
    torch.manual_seed(3)
    expected = hf_generate(ref, ids, mask, do_sample=True, eos_token_id=eos, **kw)
    torch.manual_seed(3)
    got = generate(ours, ids, mask, do_sample=True, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos, **kw)
    assert torch.equal(got, expected)
    seeded = generate(ours, ids, mask, do_sample=True, max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos,
                      seed=3, **kw)
    assert torch.equal(seeded, expected)


def test_sampling_is_reproducible_and_varies_with_the_seed(pair, batch):
    _, ours = pair
    ids, mask, _ = batch
    runs = [generate(ours, ids, mask, do_sample=True, max_new_tokens=NEW, eos_token_id=[], seed=s) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_defaults_come_from_the_model(pair):
    """A GPT-2 whose config names EOS stops there and pads with it, as transformers does."""
    ref, ours = pair
    ids = torch.randint(1, 97, (2, 5), generator=torch.Generator().manual_seed(4))
    free = generate(ours, ids, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, 5 + 2])
    ours.config.eos_token_id = eos
    try:
        out = generate(ours, ids, max_new_tokens=6)
    finally:
        ours.config.eos_token_id = None
    ref_out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                           eos_token_id=eos)
    assert torch.equal(out, ref_out)
    assert as_generative(ours) is ours  # a decoder LM offers the interface itself, no wrapper


def test_config_object_and_overrides(pair, batch):
    _, ours = pair
    ids, mask, eos = batch
    cfg = GenerationConfig(num_beams=3, max_new_tokens=5, eos_token_id=eos, pad_token_id=PAD)
    a = generate(ours, ids, mask, generation_config=cfg)
    b = generate(ours, ids, mask, num_beams=3, max_new_tokens=5, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(a, b)
    assert generate(ours, ids, mask, generation_config=cfg, max_new_tokens=2).shape[1] <= T + 2


def test_errors_name_the_option(pair, batch):
    _, ours = pair
    ids, mask, _ = batch
    with pytest.raises(TypeError, match="num_beam"):
        generate(ours, ids, mask, num_beam=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate(ours, ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate(ours, ids, mask, num_return_sequences=2)
    with pytest.raises(ValueError, match="early_stopping"):
        GenerationConfig(early_stopping="sometimes")
    with pytest.raises(ValueError, match="text-only"):
        generate(ours, ids, mask, pixel_values=torch.zeros(4, 3, 8, 8))


def test_budget_stops_at_max_seq_len(pair):
    _, ours = pair
    ids = torch.randint(1, 97, (1, 60))
    for kw in ({}, {"num_beams": 2}):
        out = generate(ours, ids, max_new_tokens=50, eos_token_id=[], **kw)
        assert out.shape == (1, 64)


def test_output_is_a_normal_tensor(pair, batch):
    _, ours = pair
    ids, mask, _ = batch
    out = generate(ours, ids, mask, max_new_tokens=3)
    assert not out.is_inference() and out.dtype == torch.long
    assert not any("forward" in vars(m) for m in ours.modules())  # the CPU fast path is undone after the call


# ---- the multimodal model (image prefix + text) ----------------------------------------------

def _mm_batch(tokenizer):
    from multimodaltransformer.data.collate import prompt_batch

    ids, mask = prompt_batch(tokenizer, ["describe the image.", "what shape is the red object?", "how many?"])
    return ids, mask, torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kw", [{"num_beams": 3}, {"num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.5},
                                {"num_beams": 2, "early_stopping": True, "no_repeat_ngram_size": 2},
                                {"repetition_penalty": 1.2, "min_new_tokens": 3}])
def test_multimodal_cached_equals_uncached(tiny_model, tokenizer, kw):
    ids, mask, px = _mm_batch(tokenizer)
    fast = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=8, **kw)
    slow = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=8, use_cache=False, **kw)
    assert torch.equal(fast, slow)
    assert fast.shape[0] == 3 * kw.get("num_return_sequences", 1) and fast.shape[1] <= ids.shape[1] + 8


def test_multimodal_sampling(tiny_model, tokenizer):
    ids, mask, px = _mm_batch(tokenizer)
    a = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=6, do_sample=True, seed=0,
                            top_p=0.9, num_return_sequences=2)
    b = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=6, do_sample=True, seed=0,
                            top_p=0.9, num_return_sequences=2, use_cache=False)
    assert a.shape[0] == 6 and torch.equal(a, b)
    assert torch.equal(a[:, :ids.shape[1]], ids.repeat_interleave(2, 0))


def test_multimodal_beam_rows_equal_one_by_one(tiny_model, tokenizer):
    """Batched beams (cache rows reordered per prompt) give each prompt what it gets alone."""
    from multimodaltransformer.data.collate import prompt_batch

    prompts = ["describe the image.", "what shape is the red object?"]
    ids, mask = prompt_batch(tokenizer, prompts)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    both = tiny_model.generate(ids, attention_mask=mask, pixel_values=px, max_new_tokens=6, num_beams=3,
                               eos_token_id=[])
    for r in range(2):
        one_ids, _ = prompt_batch(tokenizer, [prompts[r]])
        one = tiny_model.generate(one_ids, pixel_values=px[r:r + 1], max_new_tokens=6, num_beams=3, eos_token_id=[])
        assert torch.equal(both[r, -6:], one[0, -6:])


def test_cli_generate_with_strategy_flags(tiny_model, shapes_dir, tmp_path, capsys):
    from multimodaltransformer.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    image = str(next((shapes_dir / "images").iterdir()))
    base = ["generate", str(tmp_path / "model"), "--image", image, "--prompt", "describe the image.",
            "--max-new-tokens", "5", "--device", "cpu"]
    sampling = ["--do-sample", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "1",
                "--repetition-penalty", "1.2", "--min-new-tokens", "2"]
    out = []
    for flags in (["--num-beams", "3", "--length-penalty", "0.5", "--no-repeat-ngram-size", "2"], sampling,
                  [*sampling, "--stream"]):
        assert main(base + flags) == 0, flags
        out.append(capsys.readouterr().out)  # a random model's text may hold newlines: one capture per call
    assert out[1].strip()
    assert out[1].strip() == out[2].strip()  # streamed text == the prediction for the same seed
    assert main(base + ["--num-beams", "0"]) == 2 and "num_beams" in capsys.readouterr().err
    m = str(shapes_dir / "manifest.jsonl")
    assert main(["generate", str(tmp_path / "model"), "--data", m, "--out", str(tmp_path / "p.jsonl"),
                 "--max-new-tokens", "3", "--num-beams", "2", "--device", "cpu"]) == 0


def test_continuous_batch_rows_joining_late_decode_as_alone(pair):
    """The server's running batch (generation/batching.py): prompts of different lengths join at
    different steps, one leaves early; each row's greedy tokens equal `generate` on it alone."""
    from multimodaltransformer.generation.batching import ContinuousBatch

    _, ours = pair
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(1, 97, (1, n), generator=g) for n in (3, 9, 5)]
    alone = [generate(ours, p, max_new_tokens=8, eos_token_id=[])[0, p.shape[1]:].tolist() for p in prompts]
    batch = ContinuousBatch(ours)
    with torch.inference_mode():  # row 0 leaves early, the two longer prompts join at step 2
        rows = decode_joining(batch, lambda: batch.add(prompts[:1], {}, [1], PAD),
                              lambda: batch.add(prompts[1:], {}, [1, 1], PAD), join_at=2, limits=[5, 8, 8], steps=10)
    got = [[int(x.argmax()) for x in r] for r in rows]
    assert got[0] == alone[0][:5]
    assert got[1] == alone[1][:len(got[1])] and got[2] == alone[2][:len(got[2])]
    assert len(got[1]) >= 6


def test_continuous_batch_grows_moves_and_prefills_in_chunks_as_alone(pair, monkeypatch):
    """Buffers with 4 spare slots only, so the batch grows, shifts its rows right for a longer prompt and
    moves its window back to the start in place; two prompts prefill in chunks between decode steps
    and a row leaves from the front: each row's greedy tokens still equal `generate` on it alone."""
    from multimodaltransformer.generation import batching

    monkeypatch.setattr(batching, "_capacity", lambda need, most: min(most, need + 4))
    moves = []
    fit = batching.ContinuousBatch._fit

    def spy(self, S=0, rows=0):
        before = (self.capacity, self.lo)
        fit(self, S, rows)
        if (self.capacity, self.lo) != before:
            moves.append("grow" if self.capacity != before[0] else "in place")

    monkeypatch.setattr(batching.ContinuousBatch, "_fit", spy)
    _, ours = pair
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(1, 97, (1, n), generator=g) for n in (2, 12, 4, 7)]
    new = 24
    alone = [generate(ours, p, max_new_tokens=new, eos_token_id=[])[0, p.shape[1]:].tolist() for p in prompts]
    batch = batching.ContinuousBatch(ours)
    with torch.inference_mode():
        last = batch.add(prompts[:1], {}, [1], PAD).argmax(-1)
        got, live = {0: [int(last[0])]}, [0]
        chunks = batch.prefill(prompts[1:3], {}, [1, 1], PAD, chunk=4)  # 2 positions of both prompts a piece
        for step in range(80):
            joined = next(chunks) if chunks is not None else None
            if step == 20:  # the last prompt joins alone; rows 1 and 2 leave before it
                joined, chunks = batch.add(prompts[3:], {}, [1], PAD), None
            if joined is not None:
                ids = [3] if step == 20 else [1, 2]
                chunks = None
                last, live = torch.cat([last, joined.argmax(-1)]), live + ids
                for r, t in zip(ids, joined.argmax(-1).tolist()):
                    got[r] = [t]
            keep = [i for i, r in enumerate(live) if len(got[r]) < new]
            if len(keep) < len(live):
                batch.keep(keep)
                last, live = last[keep], [live[i] for i in keep]
            if not live:
                if 3 in got:
                    break
                continue
            last = batch.step(last).argmax(-1)
            for r, t in zip(live, last.tolist()):
                got[r].append(t)
    assert [got[r] for r in range(4)] == alone
    assert "grow" in moves and "in place" in moves
