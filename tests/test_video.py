"""The video modality: reading clips (containers, animated images, frame folders), bad input, the
processor's uniform sampling, and the space-time encoder (static clips = the image encoder, time
order seen by divided attention and not by the frame mean)."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from multimodaltransformer.modalities import MODALITIES, MediaError, ViTConfig, ViTEncoder
from multimodaltransformer.modalities.video import (VideoConfig, VideoEncoder, VideoLimits, VideoProcessor, load_video,
                                                    sample_indices)

av = pytest.importorskip("av")


def moving_square(n: int = 12, size: int = 32, reverse: bool = False) -> list[np.ndarray]:
    """A white square moving right over a black background, n frames."""
    frames = []
    for t in range(n):
        f = np.zeros((size, size, 3), np.uint8)
        x = 2 + t * (size - 12) // max(1, n - 1)
        f[10:18, x:x + 8] = 255
        frames.append(f)
    return frames[::-1] if reverse else frames


def write_mp4(path, frames: list[np.ndarray], codec: str = "mpeg4", fmt: str = "mp4") -> None:
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.bit_rate = 2_000_000
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def centroid_x(frame: np.ndarray) -> float:
    w = frame.astype(float).mean(-1)
    return float((w.sum(0) * np.arange(w.shape[1])).sum() / w.sum())


def test_mp4_frames_in_order(tmp_path):
    write_mp4(tmp_path / "a.mp4", moving_square())
    frames = load_video(tmp_path / "a.mp4")
    assert len(frames) == 12 and frames[0].shape == (32, 32, 3)
    xs = [centroid_x(f) for f in frames]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 10


@pytest.mark.parametrize("fmt", ["gif", "png", "folder", "bytes", "webm", "avi"])
def test_other_sources(tmp_path, fmt):
    frames = moving_square(6)
    ims = [Image.fromarray(f) for f in frames]
    if fmt == "folder":
        src = tmp_path / "frames"
        src.mkdir()
        for i, im in enumerate(ims):
            im.save(src / f"{i:03d}.png")
    elif fmt == "bytes":
        write_mp4(tmp_path / "a.mp4", frames)
        src = (tmp_path / "a.mp4").read_bytes()
    elif fmt in ("webm", "avi"):
        src = tmp_path / f"a.{fmt}"
        write_mp4(src, frames, codec="libvpx" if fmt == "webm" else "mpeg4", fmt=fmt)
    else:  # animated GIF / PNG (APNG)
        src = tmp_path / f"a.{fmt}"
        ims[0].save(src, save_all=True, append_images=ims[1:], duration=100, loop=0)
    got = load_video(src, name="clip", size=16)
    assert len(got) == 6 and got[0].shape == (16, 16, 3)
    xs = [centroid_x(f) for f in got]
    assert xs[-1] > xs[0] + 4


def test_bad_videos(tmp_path):
    write_mp4(tmp_path / "a.mp4", moving_square())
    data = (tmp_path / "a.mp4").read_bytes()
    Image.fromarray(moving_square(1)[0]).save(tmp_path / "still.png")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty").mkdir()
    cases = {"junk.mp4": "cannot read video", "cut.mp4": "video", "still.png": "still image",
             "empty": "no frames", "missing.mp4": "not found"}
    for name, message in cases.items():
        with pytest.raises(MediaError, match=message) as e:
            load_video(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(MediaError, match="over the limit"):
        load_video(tmp_path / "a.mp4", limits=VideoLimits(max_pixels=32 * 16))
    with pytest.raises(MediaError, match="frames"):
        load_video(tmp_path / "a.mp4", limits=VideoLimits(max_frames=5))
    with pytest.raises(MediaError, match="in the request"):
        load_video(b"\x00\x01garbage", name="in the request")


def test_sampling_and_processor(tmp_path):
    assert sample_indices(16, 8) == [1, 3, 5, 7, 9, 11, 13, 15]
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short clips repeat frames
    write_mp4(tmp_path / "a.mp4", moving_square(16))
    proc = VideoProcessor(image_size=32, num_frames=4)
    x = proc.prepare(tmp_path / "a.mp4")
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    batch = proc.collate([x, x])
    assert batch.shape == (2, 4, 3, 32, 32) and batch.dtype == torch.float32 and batch.abs().max() <= 1.0
    assert MODALITIES["video"].input_key == "pixel_values_videos"


def _cfgs(**kw):
    common = dict(image_size=32, patch_size=8, dim=32, depth=2, heads=4, stem="conv", patch_positions="sincos")
    return VideoConfig(**common, **kw), ViTConfig(**common)


@pytest.mark.parametrize("tubelet", [1, 2])
def test_static_clip_is_the_image_encoder(tubelet):
    vcfg, icfg = _cfgs(frames=4, tubelet=tubelet)
    image, video = ViTEncoder(icfg).eval(), VideoEncoder(vcfg).eval()
    video.load_image_encoder(image)
    frame = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = video(frame[:, None].expand(2, 4, 3, 32, 32)).view(2, vcfg.steps, 16, 32)
        want = image(frame)
    assert torch.allclose(got, want[:, None].expand_as(got), atol=1e-5)
    assert vcfg.num_tokens == 16 * vcfg.steps


def test_divided_attention_sees_time_order_and_the_mean_does_not():
    torch.manual_seed(0)
    clip = torch.randn(1, 4, 3, 32, 32)
    for attention in ("divided", "mean"):
        enc = VideoEncoder(_cfgs(frames=4, attention=attention)[0]).eval()
        for p in enc.parameters():  # away from the zero init, so that time matters
            p.data.add_(torch.randn_like(p) * 0.05)
        with torch.no_grad():
            a, b = enc(clip), enc(clip.flip(1))
        if attention == "mean":
            assert a.shape == (1, 16, 32) and torch.allclose(a, b, atol=1e-5)
        else:
            a = a.view(1, 4, 16, 32)
            b = b.view(1, 4, 16, 32).flip(1)  # the same frames, in their order, seen in reverse
            assert not torch.allclose(a, b, atol=1e-3)


def test_bad_configs_and_inputs():
    with pytest.raises(ValueError, match="multiple of tubelet"):
        _cfgs(frames=5, tubelet=2)
    with pytest.raises(ValueError, match="attention"):
        _cfgs(attention="joint")
    enc = VideoEncoder(_cfgs(frames=4)[0])
    with pytest.raises(ValueError, match="pixel_values_videos must be"):
        enc(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="not an image encoder"):
        enc.load_image_encoder(torch.nn.Linear(2, 2))


def test_model_with_video_trains_and_generates():
    from multimodaltransformer.config import from_dict
    from multimodaltransformer.generation import generate
    from multimodaltransformer.models.multimodal import MultimodalTransformer, MultimodalTransformerModel

    cfg = from_dict(MultimodalTransformer, {
        "image": None, "media": {"video": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "heads": 4,
                                           "frames": 4, "tubelet": 2}},
        "decoder": {"dim": 32, "depth": 1, "heads": 4, "max_seq_len": 32, "vocab_size": 50}, "fusion": {"type": "cross"}})
    model = MultimodalTransformerModel(cfg)
    v, ids = torch.randn(2, 4, 3, 32, 32), torch.randint(0, 50, (2, 8))
    out = model(input_ids=ids, pixel_values_videos=v, labels=ids)
    out.loss.backward()
    assert model.video_encoder.temporal[0].attn.out_proj.weight.grad.abs().sum() > 0
    assert generate(model.eval(), ids[:, :3], max_new_tokens=3, pixel_values_videos=v).shape == (2, 6)


def test_scores_video_tasks():
    from multimodaltransformer.data.manifest import Example
    from multimodaltransformer.evaluate import score

    exs = [Example("a", "video_qa", "which way?", "left", meta={"question_type": "direction"}),
           Example("b", "video_qa", "which way?", "up", meta={"question_type": "direction"}),
           Example("c", "video_caption", "describe the video.", "a red circle moves left")]
    m = score(exs, ["left", "down", "a red circle moves left"])
    assert m["video_qa_accuracy"] == pytest.approx(0.5) and m["video_qa_accuracy_by_type"]["direction"] == 0.5
    assert m["video_caption_exact_match"] == 1.0


def test_cli_generate_with_a_video_and_bad_videos(tmp_path, tokenizer, capsys):
    from multimodaltransformer.cli import main
    from multimodaltransformer.config import from_dict
    from multimodaltransformer.models.multimodal import MultimodalTransformer, MultimodalTransformerModel

    cfg = from_dict(MultimodalTransformer, {
        "image": None, "media": {"video": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "heads": 4,
                                           "frames": 4}},
        "decoder": {"dim": 32, "depth": 1, "heads": 4, "max_seq_len": 32, "vocab_size": tokenizer.vocab_size},
        "fusion": {"type": "cross"}})
    model = MultimodalTransformerModel(cfg)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / "m")
    write_mp4(tmp_path / "a.mp4", moving_square())
    assert main(["generate", str(tmp_path / "m"), "--video", str(tmp_path / "a.mp4"), "--prompt", "describe",
                 "--max-new-tokens", "3"]) == 0
    Image.fromarray(moving_square(1)[0]).save(tmp_path / "still.png")
    (tmp_path / "junk.mp4").write_bytes(b"junk" * 50)
    for bad, message in (("junk.mp4", "cannot read video"), ("still.png", "still image"), ("none.mp4", "not found")):
        assert main(["generate", str(tmp_path / "m"), "--video", str(tmp_path / bad), "--prompt", "x"]) == 2
        err = capsys.readouterr().err
        assert message in err and bad in err, err
    assert main(["generate", str(tmp_path / "m"), "--image", str(tmp_path / "still.png"), "--prompt", "x"]) == 2
    assert "no image encoder" in capsys.readouterr().err


def test_media_cache_prefetch_prepares_in_threads_and_leaves_failures_to_the_call(tmp_path):
    from multimodaltransformer.data.collate import DataError, MediaCache
    from multimodaltransformer.data.manifest import Example

    exs = []
    for i in range(70):
        write_mp4(tmp_path / f"{i}.mp4", moving_square(4, reverse=i % 2 == 1))
        exs.append(Example(f"e{i}", "video_qa", "q", "a", video=tmp_path / f"{i}.mp4", source=f"m:{i}"))
    (tmp_path / "bad.mp4").write_bytes(b"nope" * 40)
    exs.append(Example("bad", "video_qa", "q", "a", video=tmp_path / "bad.mp4", source="m:71"))
    cache = MediaCache({"video": VideoProcessor(image_size=32, num_frames=4)})
    cache.prefetch(exs)
    assert len(cache.items) in (0, 70)  # 0 where the machine has a single core (no threads then)
    for ex in exs[:70]:
        want = VideoProcessor(image_size=32, num_frames=4).prepare(ex.video)
        assert torch.equal(cache(ex)["video"], want)
    with pytest.raises(DataError, match="m:71"):
        cache(exs[-1])
