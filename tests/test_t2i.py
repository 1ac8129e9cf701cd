"""Text-to-image: the quantizer, the VQ-VAE, the prior's layout, guided sampling and `mmt imagine`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from multimodaltransformer.cli import main
from multimodaltransformer.generation.guidance import ClassifierFreeGuidance
from multimodaltransformer.hub import load_pretrained
from multimodaltransformer.imagine import ImagineOptions, imagine, parse_size, read_prompts, run_imagine
from multimodaltransformer.models.t2i import (BOI, BOS, PAD, SamplingDefaults, TextToImage, TextToImageConfig,
                                              caption_words)
from multimodaltransformer.models.vqvae import VQVAE, VQVAEConfig
from multimodaltransformer.nn import TransformerConfig
from multimodaltransformer.nn.quantize import QuantizerConfig, VectorQuantizer, codebook_usage
from multimodaltransformer.objectives import IGNORE_INDEX

WORDS = caption_words(["a small red circle left of a large blue square", "a green triangle"])


def tiny(seed: int = 0, dropout: float = 0.15, block: int = 1, order: str = "raster") -> TextToImage:
    torch.manual_seed(seed)
    cfg = TextToImageConfig(words=WORDS, text_len=12, caption_dropout=dropout, block=block, order=order,
                            vqvae=VQVAEConfig(channels=[8, 8, 8], quantizer=QuantizerConfig(codebook_size=32, code_dim=8)),
                            prior=TransformerConfig(dim=32, depth=2, heads=2, position="learned"))
    return TextToImage(cfg).eval()


# ---- quantizer --------------------------------------------------------------------------------------
def test_quantizer_picks_the_nearest_code_by_cosine_and_passes_gradients_straight_through() -> None:
    vq = VectorQuantizer(QuantizerConfig(codebook_size=16, code_dim=4)).eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    q, codes, loss = vq(z)
    flat = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, 4), dim=-1)
    naive = torch.tensor([max(range(16), key=lambda k: float(v @ vq.codebook[k])) for v in flat]).view(2, 3, 3)
    assert torch.equal(codes, naive)
    assert torch.allclose(q.permute(0, 2, 3, 1).reshape(-1, 4), vq.codebook[codes.flatten()], atol=1e-6)
    (q.sum() + loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert math.isclose(float(loss.detach()), 0.25 * float(F.mse_loss(flat, vq.codebook[codes.flatten()])), rel_tol=1e-5)


def test_euclidean_lookup_matches_a_naive_argmin() -> None:
    vq = VectorQuantizer(QuantizerConfig(codebook_size=8, code_dim=3, cosine=False)).eval()
    vq.codebook.copy_(torch.randn(8, 3))
    flat = torch.randn(20, 3)
    naive = torch.cdist(flat, vq.codebook).argmin(-1)
    assert torch.equal(vq.lookup(flat), naive)


def test_codebook_starts_from_data_follows_its_vectors_and_restarts_dead_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(QuantizerConfig(codebook_size=4, code_dim=2, cosine=False, decay=0.5, dead_threshold=0.5)).train()
    data = torch.tensor([[5.0, 0.0], [0.0, 5.0]]).repeat(128, 1) + 0.01 * torch.randn(256, 2)
    z = data.t().reshape(1, 2, 16, 16)
    vq(z)
    assert bool(vq.initialised)
    assert float(torch.cdist(vq.codebook, data).min(1).values.max()) < 0.05  # every code is a data vector
    vq.codebook.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0], [50.0, 50.0], [-50.0, 50.0]]))
    vq.ema_sum.copy_(vq.codebook)
    vq.ema_count.fill_(1.0)
    for _ in range(3):
        vq(z)
    # codes 0 and 1 moved to their clusters' means; the two far codes got nothing, died, and restarted on data
    assert torch.allclose(vq.codebook[:2], torch.tensor([[5.0, 0.0], [0.0, 5.0]]), atol=0.7)
    assert float(torch.cdist(vq.codebook[2:], data).min(1).values.max()) < 0.05


def test_codebook_usage_counts_perplexity_and_dead_codes() -> None:
    u = codebook_usage(torch.tensor([0, 1, 2, 3] * 5), 8)
    assert u["codes_used"] == 4 and u["dead_codes"] == 4 and math.isclose(u["perplexity"], 4.0, rel_tol=1e-9)


# ---- VQ-VAE -----------------------------------------------------------------------------------------
def test_vqvae_round_trip_shapes_errors_and_save_load(tmp_path) -> None:
    vq = tiny().vqvae
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    codes = vq.encode(x)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert vq.decode(codes).shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="shape"):
        vq.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="codes must be in"):
        vq.decode(torch.full((1, 8, 8), 99))
    vq.save_pretrained(tmp_path / "vq")
    again = load_pretrained(tmp_path / "vq")
    assert isinstance(again, VQVAE) and torch.equal(again.encode(x), codes)
    with pytest.raises(ValueError, match="divisible"):
        VQVAEConfig(image_size=60, channels=[8, 8, 8])


def test_vqvae_learns_to_reconstruct_a_small_batch() -> None:
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(channels=[16, 16], quantizer=QuantizerConfig(codebook_size=64, code_dim=8))).train()
    x = torch.zeros(8, 3, 64, 64) - 0.8
    for i in range(8):  # a coloured square per image
        x[i, i % 3, 8 * i % 48:8 * i % 48 + 16, 16:32] = 0.9
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = vq(x)
        first = first if first is not None else float(out.recon_loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.recon_loss.detach()) < 0.3 * first


# ---- the prior's sequence ---------------------------------------------------------------------------
def test_prompts_become_fixed_length_rows_and_bad_prompts_are_errors() -> None:
    m = tiny()
    rows = m.tokenize(["A small red circle.", "a green triangle"])
    assert rows.shape == (2, 14) and (rows[:, 0] == BOS).all() and (rows[:, -1] == BOI).all()
    assert int((rows[0, 1:-1] != PAD).sum()) == 4 and int((rows[1, 1:-1] != PAD).sum()) == 3
    with pytest.raises(ValueError, match="empty prompt"):
        m.tokenize(["  ."])
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['purple'\]"):
        m.tokenize(["a purple circle"])
    with pytest.raises(ValueError, match="13 words"):
        m.tokenize(["a red circle " * 4 + "a"])


def test_the_loss_is_on_image_codes_only_and_dropout_swaps_in_the_empty_caption() -> None:
    m = tiny(dropout=0.0)
    text = m.tokenize(["a red circle", "a blue square"])
    codes = torch.randint(0, 32, (2, 8, 8))
    ids = torch.cat([text, codes.flatten(1) + m.config.code_offset], 1)
    logits = m.prior(ids).logits
    want = F.cross_entropy(logits[:, text.shape[1] - 1:-1].flatten(0, 1), ids[:, text.shape[1]:].flatten())
    assert torch.allclose(m.loss(text, codes), want, atol=1e-5)
    uncond = m.unconditional(2)
    m_drop = tiny(dropout=0.999999)
    m_drop.load_state_dict(m.state_dict())
    assert torch.allclose(m_drop.loss(text, codes), m.loss(uncond, codes), atol=1e-5)
    assert IGNORE_INDEX < 0


def test_guidance_mixes_log_probabilities_of_the_cached_unconditional_rows() -> None:
    m = tiny()
    cond = m.tokenize(["a red circle"])
    uncond = m.unconditional(1)
    guide = ClassifierFreeGuidance(m.prior, uncond, 2.5, max_new_tokens=5)
    seq = cond.clone()
    for step in range(4):
        scores = m.prior(seq).logits[:, -1].float()
        got = guide(seq, scores.clone())
        u = m.prior(torch.cat([uncond, seq[:, cond.shape[1]:]], 1)).logits[:, -1].float()  # uncached reference
        want = u.log_softmax(-1) + 2.5 * (scores.log_softmax(-1) - u.log_softmax(-1))
        assert torch.allclose(got, want, atol=1e-4)
        seq = torch.cat([seq, got.argmax(-1, keepdim=True)], 1)
    guide.close()


def test_sampling_is_seeded_image_codes_only_and_n_differ() -> None:
    m = tiny()
    a = m.generate_codes(["a red circle", "a blue square"], n=3, seed=4, guidance=2.0)
    b = m.generate_codes(["a red circle", "a blue square"], n=3, seed=4, guidance=2.0)
    assert a.shape == (6, 8, 8) and torch.equal(a, b)
    assert int(a.min()) >= 0 and int(a.max()) < 32
    assert not torch.equal(a[0], a[1])
    c = m.generate_codes(["a red circle"], n=2, seed=5, guidance=1.0, top_k=3, temperature=0.7)
    assert c.shape == (2, 8, 8)


def test_save_load_keeps_the_model_and_its_samples(tmp_path) -> None:
    m = tiny()
    m.save_pretrained(tmp_path / "t2i")
    again = load_pretrained(tmp_path / "t2i")
    assert isinstance(again, TextToImage) and again.config.words == WORDS
    assert torch.equal(again.generate_codes(["a red circle"], 2, seed=1), m.generate_codes(["a red circle"], 2, seed=1))


# ---- imagine ----------------------------------------------------------------------------------------
def test_imagine_writes_files_by_prompt_line_and_sample(tmp_path) -> None:
    tiny().save_pretrained(tmp_path / "t2i")
    (tmp_path / "p.txt").write_text("a red circle\na small blue square left of a green triangle\n")
    run_imagine(tmp_path / "t2i", tmp_path / "many", prompts_file=str(tmp_path / "p.txt"),
                options=ImagineOptions(n=3, seed=0), progress=False)
    names = sorted(p.name for p in (tmp_path / "many").glob("*.png"))
    assert names == [f"{i:04d}-{k}.png" for i in range(2) for k in range(3)]
    run_imagine(tmp_path / "t2i", tmp_path / "one", prompt="a red circle", options=ImagineOptions(n=2), size="128x128",
                progress=False)
    assert sorted(p.name for p in (tmp_path / "one").glob("*.png")) == ["0.png", "1.png"]
    assert Image.open(tmp_path / "one" / "0.png").size == (128, 128)
    assert json.loads((tmp_path / "one" / "imagine.json").read_text())["prompts"] == ["a red circle"]


def test_rerank_keeps_the_best_scored_candidates() -> None:
    m = tiny()

    class Brightest:  # a stand-in re-ranker: brighter images score higher
        def scores(self, images, text):
            return torch.tensor([float(np.asarray(im, dtype=np.float32).mean()) for im in images])

    plain = imagine(m, ["a red circle"], ImagineOptions(n=2, rerank=4, seed=1), Brightest())[0]
    means = [float(np.asarray(im, dtype=np.float32).mean()) for im in plain]
    pool = imagine(m, ["a red circle"], ImagineOptions(n=8, seed=1))[0]
    pool_means = sorted((float(np.asarray(im, dtype=np.float32).mean()) for im in pool), reverse=True)
    assert means == pool_means[:2]  # the same 8 candidates (same seed), the 2 brightest kept, best first


def test_left_out_options_take_the_models_defaults_and_its_rerank_only_with_a_reranker() -> None:
    d = SamplingDefaults(guidance=2.0, temperature=0.9, top_k=7, top_p=0.8, rerank=4)
    o = ImagineOptions(n=2).resolve(d, has_reranker=True)
    assert (o.guidance, o.temperature, o.top_k, o.top_p, o.rerank) == (2.0, 0.9, 7, 0.8, 4)
    assert ImagineOptions(n=2).resolve(d, has_reranker=False).rerank == 1  # no re-ranker: no default re-ranking
    o = ImagineOptions(n=2, guidance=1.0, top_k=0, rerank=1).resolve(d, has_reranker=True)  # the caller's win
    assert (o.guidance, o.top_k, o.rerank) == (1.0, 0, 1)
    m = tiny()
    m.config.sampling = SamplingDefaults(guidance=1.0, temperature=0.5)
    got = imagine(m, ["a red circle"], ImagineOptions(n=2, seed=3))[0]
    want = imagine(m, ["a red circle"], ImagineOptions(n=2, seed=3, guidance=1.0, temperature=0.5))[0]
    assert [np.asarray(a).tolist() for a in got] == [np.asarray(b).tolist() for b in want]


def test_the_edge_loss_adds_the_l1_of_pixel_differences() -> None:
    vq = tiny().vqvae.train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.manual_seed(1)
    plain = vq(x, quantize=False)
    vq.config.edge_weight = 0.5
    edged = vq(x, quantize=False)
    r = plain.reconstruction
    edge = sum(F.l1_loss(r.diff(dim=d), x.diff(dim=d)) for d in (2, 3))
    assert torch.allclose(edged.recon_loss, plain.recon_loss + 0.5 * edge, atol=1e-6)


def test_bad_options_sizes_and_prompt_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="n must be"):
        ImagineOptions(n=0)
    with pytest.raises(ValueError, match="n must be"):
        ImagineOptions(n=17)
    with pytest.raises(ValueError, match="not available"):
        parse_size("100x100", 64)
    with pytest.raises(ValueError, match="square"):
        parse_size("128x64", 64)
    assert parse_size("256x256", 64) == 256 and parse_size(None, 64) == 64
    (tmp_path / "p.txt").write_text("a red circle\n\na green triangle\n")
    with pytest.raises(ValueError, match="line 1"):
        read_prompts(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="re-ranker"):
        imagine(tiny(), ["a red circle"], ImagineOptions(n=1, rerank=2))


def test_cli_imagine_reports_bad_input_without_a_traceback(tmp_path, capsys) -> None:
    tiny().save_pretrained(tmp_path / "t2i")
    assert main(["imagine", str(tmp_path / "t2i"), "--prompt", "a purple circle", "--out", str(tmp_path / "o")]) == 2
    assert "unknown word" in capsys.readouterr().err
    assert main(["imagine", str(tmp_path / "t2i"), "--prompt", "", "--out", str(tmp_path / "o")]) == 2
    assert main(["imagine", str(tmp_path / "t2i"), "--prompt", "a red circle", "--n", "0", "--out", str(tmp_path / "o")]) == 2
    assert main(["imagine", str(tmp_path / "t2i"), "--prompt", "a red circle", "--out", str(tmp_path / "o"),
                 "--seed", "1", "--n", "2"]) == 0
    assert (tmp_path / "o" / "1.png").is_file()


def test_the_prior_order_round_trips_and_column_order_reads_columns_first() -> None:
    codes = torch.arange(2 * 64).view(2, 8, 8)
    for order in ("raster", "column"):
        m = tiny()
        m.config.order = order
        assert torch.equal(m.to_grid(m.to_sequence(codes)), codes)
    assert torch.equal(m.to_sequence(codes)[0, :8], codes[0, :, 0])  # column order: the left column, top down
    with pytest.raises(ValueError, match="order"):
        TextToImageConfig(order="diagonal")


def test_blocks_round_trip_in_the_prior_order() -> None:
    codes = torch.arange(2 * 64).view(2, 8, 8)
    col, ras = tiny(block=2, order="column"), tiny(block=2, order="raster")
    for m in (col, ras):
        assert m.config.image_positions == 16 and m.config.seq_len == 12 + 2 + 16
        assert torch.equal(m.from_blocks(m.to_blocks(codes)), codes)
    # column order: the top-left 2x2 block, its codes column by column, then the block below it
    assert col.to_blocks(codes)[0, :2].tolist() == [[0, 8, 1, 9], [16, 24, 17, 25]]
    assert ras.to_blocks(codes)[0, :2].tolist() == [[0, 1, 8, 9], [2, 3, 10, 11]]
    with pytest.raises(ValueError, match="block"):
        TextToImageConfig(block=3)  # 8x8 codes do not split into 3x3 blocks


def test_block_sampling_follows_the_training_forward_code_by_code() -> None:
    """Greedy block sampling (top-k 1, no guidance) must pick, at every code, the argmax of the
    teacher-forced logits of the training forward over the sampled grid: the cached backbone steps,
    the block inputs and the depth head agree with the training path."""
    m = tiny(block=2, order="column", dropout=0.0)
    with torch.no_grad():
        for p in m.prior.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # a random net with peaked logits (no near ties)
    text = m.tokenize(["a red circle", "a small blue square left of a green triangle"])
    codes = m.generate_codes(["a red circle", "a small blue square left of a green triangle"], n=1, guidance=1.0,
                             top_k=1, seed=0)
    blocks = m.to_blocks(codes)
    with torch.no_grad():  # the training forward's logits, written out as _block_logits computes them
        E = m.prior.embed_tokens(m._block_ids(blocks))
        x = torch.cat([m.prior.embed_tokens(text), m._block_input(E.sum(2))], 1)
        L = x.shape[1]
        h = m.prior.hidden(x, torch.arange(L), torch.ones(L, L).tril().bool())
        logits = m.depth(h[:, text.shape[1] - 1:-1, None] + (E.cumsum(2) - E), m._block_weight())
        own = float(m.loss(text, codes))
        torch.testing.assert_close(m._block_logits(text, codes), logits)
    assert torch.equal(logits.argmax(-1), blocks)
    assert own < math.log(32)  # its own greedy samples are likelier than uniform


@pytest.mark.parametrize("block", [1, 2])
def test_code_weights_make_a_weighted_mean_of_the_codes_losses(block) -> None:
    """`loss(..., weights)`: all ones is the plain loss; zeros leave codes out; weights w make the
    sum of w * CE over the sum of w (each code's CE from the unweighted loss of that code alone)."""
    m = tiny(block=block, order="column", dropout=0.0)
    text = m.tokenize(["a red circle", "a blue square"])
    codes = torch.randint(0, 32, (2, 8, 8))
    with torch.no_grad():
        plain = m.loss(text, codes)
        torch.testing.assert_close(m.loss(text, codes, weights=torch.ones(2, 8, 8)), plain)
        w = torch.rand(2, 8, 8) * (torch.rand(2, 8, 8) < 0.5)
        if block > 1:
            ce = F.cross_entropy(m._block_logits(text, codes).flatten(0, 2), m.to_blocks(codes).flatten(),
                                 reduction="none")
            per_code = m.from_blocks(ce.view(2, -1, 4))
        else:
            ids = torch.cat([text, m.to_sequence(codes) + m.config.code_offset], 1)
            logits = m.prior(ids).logits[:, text.shape[1] - 1:-1]
            per_code = m.to_grid(F.cross_entropy(logits.transpose(1, 2), ids[:, text.shape[1]:], reduction="none"))
        torch.testing.assert_close(per_code.mean(), plain)
        torch.testing.assert_close(m.loss(text, codes, weights=w), (per_code * w).sum() / w.sum())


def test_object_weight_needs_boxes_and_must_be_positive(tmp_path) -> None:
    from multimodaltransformer.config import ConfigError
    from multimodaltransformer.train.t2i import StageConfig, T2IRunConfig, train_prior

    base = tiny(block=2, order="column")
    prior = StageConfig(batch_size=2, max_steps=2, warmup_steps=1, object_weight=4.0)
    run = T2IRunConfig(model=base.config, prior=prior)
    captions, codes = ["a red circle", "a blue square"], torch.randint(0, 32, (2, 8, 8))
    with pytest.raises(ConfigError, match="object_weight=1"):
        train_prior(run, base.vqvae, captions, codes, 60.0, tmp_path, progress=False)
    objects = torch.zeros(2, 8, 8, dtype=torch.bool)
    objects[:, 2:5, 2:5] = True
    model = train_prior(run, base.vqvae, captions, codes, 60.0, tmp_path, progress=False, objects=objects)
    assert json.loads((tmp_path / "model" / "train_summary.json").read_text())["steps"] == 2
    assert isinstance(model, TextToImage)
    with pytest.raises(ValueError, match="object_weight"):
        T2IRunConfig(prior=StageConfig(object_weight=0.0))


def test_object_masks_cover_the_code_cells_under_each_box() -> None:
    from multimodaltransformer.train.t2i import object_mask

    mask = object_mask([[[0.0, 0.0, 0.25, 0.5]], [], [[0.5, 0.5, 0.55, 0.52], [0.9, 0.0, 1.0, 0.1]]], grid=8)
    assert mask.shape == (3, 8, 8)
    assert mask[0, :4, :2].all() and mask[0].sum() == 8  # rows 0-3, columns 0-1
    assert not mask[1].any()
    assert mask[2, 4, 4] and mask[2, 0, 7] and mask[2].sum() == 2  # a box smaller than a cell still marks it


def test_block_sampling_is_seeded_guided_and_trains() -> None:
    m = tiny(block=2, order="column")
    a = m.generate_codes(["a red circle", "a blue square"], n=3, seed=4, guidance=2.0)
    assert a.shape == (6, 8, 8) and torch.equal(a, m.generate_codes(["a red circle", "a blue square"], n=3, seed=4,
                                                                     guidance=2.0))
    assert int(a.min()) >= 0 and int(a.max()) < 32 and not torch.equal(a[0], a[1])
    codes = torch.randint(0, 32, (4, 8, 8))
    text = m.tokenize(["a red circle"] * 4)
    m.train()
    opt = torch.optim.AdamW([p for name, p in m.named_parameters() if not name.startswith("vqvae.")], lr=3e-3)
    first = float(m.loss(text, codes))
    for _ in range(30):
        loss = m.loss(text, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first


def test_the_prior_stage_trains_the_depth_head_and_block_embeddings_too(tmp_path) -> None:
    """`train_prior` optimises every parameter outside the frozen tokenizer: the backbone, and in
    block mode the depth head and the block grid's row / column embeddings (once, only the backbone's)."""
    from dataclasses import replace

    from multimodaltransformer.train.t2i import StageConfig, T2IRunConfig, train_prior

    base = tiny(block=2, order="column")
    run = T2IRunConfig(model=base.config, prior=StageConfig(batch_size=4, lr=1e-2, max_steps=5, warmup_steps=1))
    captions = ["a red circle", "a blue square", "a green triangle", "a small red circle"]
    codes = torch.randint(0, 32, (4, 8, 8))
    model = train_prior(run, base.vqvae, captions, codes, 60.0, tmp_path, progress=False)
    torch.manual_seed(run.seed)
    fresh = TextToImage(replace(base.config, words=caption_words(captions), vqvae=base.vqvae.config))
    fresh.vqvae.load_state_dict(base.vqvae.state_dict())  # as train_prior starts
    trained = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        moved = not torch.equal(p, trained[name])
        assert moved == (not name.startswith("vqvae.")), name
    assert any(name.startswith("depth.") for name, _ in fresh.named_parameters())


@pytest.mark.slow
def test_mmt_train_runs_every_t2i_stage_and_the_demo_model_imagines(tmp_path) -> None:
    """A tiny `kind: t2i` run through the CLI: tokenizer, prior, re-ranker, each saved; then imagine re-ranks."""
    cfg = tmp_path / "t2i.yaml"
    cfg.write_text(f"""kind: t2i
stages: [tokenizer, prior, reranker]
time_budget_minutes: 0.4
data: {{train: "shapes:split=train,n=96,seed=0,tasks=caption", val: "shapes:split=val,n=16,seed=0,tasks=caption",
        cache_dir: "{tmp_path / 'cache'}"}}
model:
  order: column
  vqvae: {{channels: [8, 8, 8], quantizer: {{codebook_size: 32, code_dim: 8}}}}
  prior: {{dim: 32, depth: 1, heads: 2, position: learned}}
tokenizer: {{batch_size: 16, max_steps: 20, budget_share: 0.3}}
prior: {{batch_size: 16, max_steps: 20, budget_share: 0.4}}
reranker: {{config: "{tmp_path / 'rr.yaml'}", budget_share: 0.3}}
""")
    (tmp_path / "rr.yaml").write_text(f"""model:
  image: {{image_size: 64, patch_size: 16, dim: 32, depth: 1, heads: 2, stem: conv}}
  decoder: {{dim: 32, depth: 1, heads: 2, max_seq_len: 32}}
  fusion: {{type: joint}}
  heads: {{contrastive_dim: 16, text_pool: mean}}
data: {{train: "shapes:split=train,n=96,seed=0,tasks=caption", val: null, tokenizer_vocab_size: 300}}
train: {{batch_size: 16, max_steps: 10, eval_every: 1000, save_every: 1000}}
multitask:
  tasks:
    - {{name: retrieval, objective: contrastive, tasks: [caption], batch_size: 16}}
""")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["tokenizer"]["codebook_size"] == 32 and metrics["tokenizer"]["psnr"] > 0
    assert metrics["prior"]["steps"] >= 1 and math.isfinite(metrics["prior"]["val_loss"])
    assert isinstance(load_pretrained(run / "tokenizer"), VQVAE)
    assert (run / "reranker" / "model" / "config.json").is_file()
    assert (run / "model" / "reranker" / "config.json").is_file()  # the model directory carries its re-ranker
    out = tmp_path / "imagined"
    assert main(["imagine", str(run / "model"), "--prompt", "a red circle", "--n", "2", "--rerank", "3",
                 "--rerank-model", str(run / "reranker" / "model"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0.png", "1.png"]


def test_the_autoencoder_warmup_bypasses_the_codebook() -> None:
    vq = tiny().vqvae.train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    out = vq(x, quantize=False)
    assert float(out.commit_loss) == 0.0 and (out.codes == -1).all() and not bool(vq.quantizer.initialised)
    vq(x)  # the first quantized step starts the codebook from the encoder's outputs
    assert bool(vq.quantizer.initialised)
