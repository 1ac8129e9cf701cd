"""Region attribute heads: patch targets from boxes, ShapesWorld's boxes, the loss in a training run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from multimodaltransformer.config import ConfigError
from multimodaltransformer.data import shapes
from multimodaltransformer.data.regions import collate_regions, region_items
from multimodaltransformer.models.multimodal import MultimodalTransformerModel
from multimodaltransformer.models.regions import RegionHeads, patch_targets
from multimodaltransformer.data import read_manifest
from multimodaltransformer.train.config import load_run_config
from multimodaltransformer.train.tasks import TaskConfig, TaskStream
from multimodaltransformer.train.trainer import train

from test_train import TINY

CLASSES = {"color": ["blue", "red"], "shape": ["circle", "square"]}


def test_patch_targets_label_the_patches_whose_centres_fall_in_a_box():
    # a 4x4 grid; box A the top-left quadrant, box B inside it holding only patch (0, 0)'s centre
    regions = [[[0.0, 0.0, 0.5, 0.5], [1, 0]], [[0.0, 0.0, 0.2, 0.2], [0, 1]], [[0.5, 0.5, 1.0, 1.0], [-1, 1]]]
    batch = collate_regions([[[(b, ls) for b, ls in regions]], [[]], []], attributes=2)
    assert batch["region_boxes"].shape == (3, 1, 3, 4) and batch["region_labels"].shape == (3, 1, 3, 2)
    t = patch_targets(batch["region_boxes"][:, 0], batch["region_labels"][:, 0], side=4)  # (3, 16, 2)
    grid = t[0].reshape(4, 4, 2)
    assert grid[0, 0].tolist() == [1, 2]  # the smaller box wins: blue square (+1: 0 is "none")
    assert grid[0, 1].tolist() == grid[1, 0].tolist() == grid[1, 1].tolist() == [2, 1]  # red circle
    assert grid[0, 2].tolist() == grid[3, 0].tolist() == [0, 0]  # no box: "none"
    assert grid[3, 3].tolist() == [-100, 2]  # colour unknown there: no loss for it
    assert (t[1] == 0).all()  # a scene without objects: every patch "none"
    assert (t[2] == -100).all()  # a record without boxes: no loss at all


def test_region_items_skip_unboxed_objects_and_unknown_values():
    objects = [{"color": "red", "shape": "circle", "box": [0, 0, 1, 1]}, {"color": "red", "shape": "square"},
               {"color": "green", "shape": "square", "box": [0.1, 0.1, 0.2, 0.2]}]
    assert region_items(objects, CLASSES) == [[([0, 0, 1, 1], [1, 0]), ([0.1, 0.1, 0.2, 0.2], [-1, 1])]]
    assert region_items(None, CLASSES) == [] == region_items([{"color": "red"}], CLASSES)


def test_video_regions_follow_the_sampled_frames():
    track = [[0.0, 0.0, 0.5, 0.5], None, [0.5, 0.5, 1.0, 1.0]]  # visible in source frames 0 and 2
    objects = [{"color": "red", "shape": "circle", "boxes": track}, {"color": "blue", "shape": "square",
                                                                     "box": [0.5, 0.0, 1.0, 0.5]}]
    steps = region_items(objects, CLASSES, frames=[0, 1, 2])
    assert [len(s) for s in steps] == [2, 1, 2]
    assert steps[2][0] == ([0.5, 0.5, 1.0, 1.0], [1, 0]) and steps[1][0][0] == [0.5, 0.0, 1.0, 0.5]
    heads = RegionHeads(8, CLASSES, modality="video", sampled_frames=6, frames_per_step=2)
    assert heads.source_frames(16) == [4, 9, 14]  # of the sampled 1, 4, 6, 9, 12, 14: each pair's second
    batch = collate_regions([steps], attributes=2)
    tokens = torch.randn(1, 3 * 4, 8, requires_grad=True)  # 3 steps of a 2x2 grid, time-major
    heads.loss(tokens, batch["region_boxes"], batch["region_labels"]).backward()
    assert tokens.grad.abs().sum() > 0


def test_shapesworld_boxes_hold_their_objects(tmp_path):
    shapes.generate(tmp_path, split="test", n=12, seed=3, progress=False, tasks=["caption"])
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        im = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"), dtype=np.float32)
        boxes = [o["box"] for o in row["objects"]]
        for o in row["objects"]:
            x0, y0, x1, y1 = (v * shapes.IMAGE_SIZE for v in o["box"])
            assert x1 - x0 == pytest.approx(shapes.SIZES[o["size"]], abs=0.01)
            centre = im[int((y0 + y1) / 2), int((x0 + x1) / 2)]  # every shape covers its centre
            assert np.abs(centre - np.array(shapes.COLORS[o["color"]])).max() < 40, (row["id"], o)
        # objects sit in distinct columns: their boxes do not overlap
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                assert boxes[a][2] <= boxes[b][0] or boxes[b][2] <= boxes[a][0]


def test_region_heads_need_a_square_patch_grid():
    heads = RegionHeads(8, CLASSES)
    assert {a: x.shape for a, x in heads(torch.randn(2, 17, 8)).items()} == {"color": (2, 16, 3), "shape": (2, 16, 3)}
    with pytest.raises(ValueError, match="square grid"):
        heads(torch.randn(2, 15, 8))


def _run(shapes_dir, *extra):
    m = str(shapes_dir / "manifest.jsonl")
    return load_run_config("shapes-tiny", [*TINY, f"data.train={m}", f"data.val={m}", *extra])


REGIONS = ("model.heads.region_weight=1.0", "model.heads.region_attributes=[color, shape, size]")


def test_region_loss_trains_the_image_encoder_and_travels_with_the_model(shapes_dir, tmp_path):
    model = train(_run(shapes_dir, *REGIONS), tmp_path, progress=False)
    colours = sorted({o["color"] for x in (shapes_dir / "manifest.jsonl").read_text().splitlines()
                      for o in json.loads(x)["objects"]})
    assert model.region_heads.classes["color"] == colours
    assert model.region_heads.classes["size"] == ["large", "small"]
    saved = MultimodalTransformerModel.from_pretrained(tmp_path / "model")
    assert saved.config.heads.region_classes == model.config.heads.region_classes
    # the region term is part of the training loss, and its gradient reaches the image encoder
    stream = TaskStream(TaskConfig(name="gen", objective="lm", tasks=["caption", "vqa"]),
                        [e for e in read_manifest(shapes_dir / "manifest.jsonl") if e.task in ("caption", "vqa")],
                        [], batch_size=4)
    stream.build(saved, 48, False, True)
    batch = stream.collate([stream.dataset[i] for i in range(4)])
    assert batch["region_boxes"].shape[0] == 4 and (batch["region_labels"] >= 0).any()
    saved.eval()  # no dropout: the two passes differ only by the region term
    with_regions = saved(batch).loss
    without = saved({k: v for k, v in batch.items() if not k.startswith("region_")}).loss
    region = saved.region_heads.loss(saved.image_encoder(batch["pixel_values"]), batch["region_boxes"],
                                     batch["region_labels"])
    assert float(with_regions - without) == pytest.approx(float(region), rel=1e-4) and float(region) > 0
    saved.zero_grad()
    region.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in saved.region_heads.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in saved.image_encoder.parameters())

def test_region_attributes_missing_from_the_data_are_refused(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="region_attributes"):
        train(_run(shapes_dir, "model.heads.region_weight=1.0", "model.heads.region_attributes=[texture]"),
              tmp_path, progress=False)


def test_a_video_model_learns_regions_from_movingshapes(tmp_path):
    from multimodaltransformer.data import motion

    motion.generate(tmp_path / "m", split="train", n=6, seed=0, progress=False, questions_per_clip=1)
    m = str(tmp_path / "m" / "manifest.jsonl")
    run = load_run_config("video", [
        "model.media.video={image_size: 48, patch_size: 16, dim: 32, depth: 1, heads: 2, stem: conv, "
        "patch_positions: sincos, frames: 4, tubelet: 2}",
        "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        f"data.train={m}", f"data.val={m}", "data.tokenizer_vocab_size=300", "train.batch_size=3", "train.max_steps=2",
        "train.eval_every=2", "train.save_every=2", "train.eval_examples=2", "train.warmup_steps=1", *REGIONS])
    model = train(run, tmp_path / "run", progress=False)
    assert model.region_heads.modality == "video" and model.region_heads.source_frames(16) == [6, 14]
    stream = TaskStream(TaskConfig(name="gen", objective="lm"), read_manifest(m), [], batch_size=3)
    stream.build(model, 48, False, True)
    batch = stream.collate([stream.dataset[i] for i in range(3)])
    assert batch["region_boxes"].shape[:2] == (3, 2)  # 2 token steps a clip
    model.eval()
    regions = model.region_heads.loss(model.video_encoder(batch["pixel_values_videos"]), batch["region_boxes"],
                                      batch["region_labels"])
    full = model(batch).loss
    assert float(full - model({k: v for k, v in batch.items() if not k.startswith("region_")}).loss) == \
        pytest.approx(float(regions), rel=1e-4)
