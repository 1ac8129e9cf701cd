"""Text-to-image on ShapesWorld, scored by an independent object classifier.

What it measures: given held-out ShapesWorld captions ("a large red circle left of a small blue
square"), do a model's generated 64x64 images show the right number of objects, and does the
k-th object from the left have the k-th prompt object's colour, shape and size? Whether the n
images of a prompt differ at all, and whether any image is a pixel copy of a training image, are
measured too. The checker uses only `multimodaltransformer.data.shapes` (never the model):

- a small CNN, trained on real ShapesWorld renders only, reads each of the 3 columns of an image
  (a 26-pixel-wide crop around the column: objects never leave their column, see `shapes.draw`)
  and says empty or (colour, shape, size). It is trained on all 40 colour-shape pairs, the
  novel ones included, and cached as safetensors (+ a json of its accuracy on fresh real test and
  novel renders) under $MMT_CACHE/t2i-eval/ (default ~/.cache/multimodaltransformer/t2i-eval/),
  keyed by `CLASSIFIER_VERSION` and its training budget, so reruns skip training;
- the scores of `score` (fractions in [0, 1]), overall and by the prompt's number of objects:
  count_right   images whose number of detected objects is the prompt's;
  color / shape / size   per prompt object: the k-th prompt object from the left against the k-th
                detected object from the left (a missing detection is wrong);
  all_right     images with the right count and every object's colour, shape and size right
                (all_right_color_shape: the same, sizes ignored);
  distinct      prompts whose n images are not all pixel-identical;
  train_copies  (with --train-dir) generated images pixel-identical to a training image (a hash
                set of decoded pixels), and the mean absolute pixel difference (0-255) to the
                nearest training image: the min over generated images and the median. "Nearest"
                is searched exactly among the 128 nearest by L2 at 32x32 (a fast vectorised
                prefilter over the whole training set), then measured at full size.

How to run it (`mmt imagine` writes DIR/{line:04d}-{k}.png, lines numbered from 0):

    python benchmarks/t2i_eval.py prompts --split test --n 60 --seed 5 --out t2i/test.txt
    mmt imagine MODEL --prompts t2i/test.txt --n 4 --out t2i/gen-test
    python benchmarks/t2i_eval.py score --prompts t2i/test.txt --images t2i/gen-test --n 4 \\
        --train-dir ~/.cache/multimodaltransformer/shapesworld/train-n20000-seed0-q7/images \\
        --json t2i/gen-test.json

`prompts` also writes FILE.jsonl beside FILE.txt ({"prompt", "objects": [{"color", "shape",
"size"}]} per line); `--split novel` gives prompts with at least one colour-shape pair never used
in training. `classifier` builds (or loads) the classifier and prints its accuracy on real renders;
`render` writes real ShapesWorld renders of each prompt in the layout `score` reads (a perfect
generator: the sanity check, which should score about 1.0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from multimodaltransformer.data import shapes

CLASSIFIER_VERSION = "v1"  # bump when the classifier, its crops or its training data change
COLORS = list(shapes.COLORS)
SHAPES = list(shapes.SHAPES)
SIZES = list(shapes.SIZES)
S = shapes.IMAGE_SIZE  # 64
CROP_W = 26  # a column is 64/3 = 21.3 pixels wide: the crop adds about 2 pixels each side
PAD = 3  # edge pixels added left and right, so that every (shifted) crop lies inside the image
DEFAULT_TRAIN_IMAGES = 6000
DEFAULT_STEPS = 600


def cache_root() -> Path:
    """Where trained classifiers live (the library's cache, $MMT_CACHE, then t2i-eval/)."""
    base = os.environ.get("MMT_CACHE", str(Path.home() / ".cache" / "multimodaltransformer"))
    return Path(base).expanduser() / "t2i-eval"


# --- prompts --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Want:
    """One object a prompt asks for (the caption says nothing of columns or height)."""

    color: str
    shape: str
    size: str


def make_prompts(split: str, n: int, seed: int) -> list[list[shapes.Obj]]:
    """n scenes of `split` from an rng of this benchmark's own (never the dataset generator's)."""
    rng = random.Random(f"t2i-eval/{split}/{seed}")
    return [shapes.sample_scene(rng, split) for _ in range(n)]


def parse_caption(text: str) -> list[Want]:
    """The objects of a ShapesWorld caption, left to right; ValueError if it is not one."""
    wants = []
    for phrase in text.strip().split(" left of "):
        m = re.fullmatch(r"a (\w+) (\w+) (\w+)", phrase.strip())
        if not m or m[1] not in SIZES or m[2] not in COLORS or m[3] not in SHAPES:
            raise ValueError(f"not a ShapesWorld caption: {text!r} (bad phrase {phrase!r})")
        wants.append(Want(m[2], m[3], m[1]))
    if len(wants) > len(shapes.COLUMNS):
        raise ValueError(f"more than {len(shapes.COLUMNS)} objects in caption {text!r}")
    return wants


def read_prompts(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise SystemExit(f"error: no prompts in {path}")
    for i, line in enumerate(lines):
        if not line.strip():
            raise SystemExit(f"error: {path} line {i} is empty (image files are numbered by line)")
    return lines


def write_prompts(split: str, n: int, seed: int, out: Path) -> None:
    scenes = make_prompts(split, n, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(shapes.caption(objs) + "\n" for objs in scenes))
    rows = [{"prompt": shapes.caption(objs),
             "objects": [{"color": o.color, "shape": o.shape, "size": o.size} for o in objs]} for objs in scenes]
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    novel = sum(any((o.color, o.shape) in shapes.NOVEL_PAIRS for o in objs) for objs in scenes)
    print(f"wrote {n} {split} prompts to {out} (+ {out.with_suffix('.jsonl').name}); "
          f"{novel} hold a novel colour-shape pair")


def layout(wants: list[Want], rng: random.Random) -> list[shapes.Obj]:
    """A scene showing `wants` left to right: random distinct columns and heights, as sample_scene draws them."""
    columns = sorted(rng.sample(range(len(shapes.COLUMNS)), len(wants)))
    objs = []
    for w, col in zip(wants, columns):
        half = shapes.SIZES[w.size] // 2
        objs.append(shapes.Obj(w.color, w.shape, w.size, col, rng.randint(half + 3, S - half - 4)))
    return objs


def render_prompts(prompts: list[str], n: int, out: Path, seed: int = 0) -> None:
    """Real renders of each prompt as OUT/{line:04d}-{k}.png: what a perfect generator would write."""
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(prompts):
        wants = parse_caption(text)
        for k in range(n):
            rng = random.Random(f"t2i-eval/render/{seed}/{i}/{k}")
            shapes.render(layout(wants, rng), rng).save(out / f"{i:04d}-{k}.png")


# --- the column classifier ------------------------------------------------------------------

def column_crops(images: np.ndarray, shift: np.ndarray | None = None) -> torch.Tensor:
    """(B, 64, 64, 3) uint8 images -> (B*3, 3, 64, CROP_W) floats: columns left to right, each
    crop centred on its column (moved by `shift` pixels, (B, 3) in [-PAD+1, PAD-1], for training)."""
    b = images.shape[0]
    padded = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (0, 0)), mode="edge")
    centres = (np.arange(3) + 0.5) * S / 3
    starts = np.round(centres - CROP_W / 2).astype(int) + PAD  # 1, 22, 43 in padded pixels
    starts = np.broadcast_to(starts, (b, 3)) + (0 if shift is None else shift)
    xs = starts[:, :, None] + np.arange(CROP_W)  # (B, 3, CROP_W)
    crops = padded[np.arange(b)[:, None, None, None], np.arange(S)[None, None, :, None], xs[:, :, None, :]]
    x = torch.from_numpy(np.ascontiguousarray(crops)).reshape(b * 3, S, CROP_W, 3)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


class ColumnNet(nn.Module):
    """One column crop -> logits of: object present (2), colour (8), shape (5), size (2)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                                      nn.Flatten())
        n_feat = 4 * width * (S // 8) * (CROP_W // 8)
        self.heads = nn.Linear(n_feat, 2 + len(COLORS) + len(SHAPES) + len(SIZES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.heads(self.features(x - 0.5))
        return tuple(out.split([2, len(COLORS), len(SHAPES), len(SIZES)], dim=1))


def training_scene(rng: random.Random) -> list[shapes.Obj]:
    """Each column empty (1 in 4) or an object of any of the 80 colour-shape-size kinds, novel pairs
    included, at any height `sample_scene` uses: every kind in every column, uniformly."""
    objs = []
    for col in range(3):
        if rng.random() < 0.25:
            continue
        size = rng.choice(SIZES)
        half = shapes.SIZES[size] // 2
        objs.append(shapes.Obj(rng.choice(COLORS), rng.choice(SHAPES), size, col, rng.randint(half + 3, S - half - 4)))
    return objs


def labels_of(objs: list[shapes.Obj]) -> np.ndarray:
    """(3, 4) per column: present, colour, shape, size indices (0s where empty)."""
    lab = np.zeros((3, 4), dtype=np.int64)
    for o in objs:
        lab[o.column] = (1, COLORS.index(o.color), SHAPES.index(o.shape), SIZES.index(o.size))
    return lab


def render_set(scenes: list[list[shapes.Obj]], rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([np.asarray(shapes.render(objs, rng)) for objs in scenes])
    return images, np.stack([labels_of(objs) for objs in scenes])


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild noise on every crop and a slight blur on a quarter of them, so that the classifier does
    not lean on the renderer's exact pixel statistics (generated images are rarely that clean)."""
    x = x + torch.randn(x.shape, generator=g) * torch.rand(x.shape[0], 1, 1, 1, generator=g) * (5 / 255)
    blur = torch.rand(x.shape[0], generator=g) < 0.25
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k, groups=3)
    return x.clamp_(0, 1)


def loss_of(net: ColumnNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    present, color, shape, size = net(x)
    loss = F.cross_entropy(present, y[:, 0])
    m = y[:, 0] == 1
    if m.any():
        loss = loss + F.cross_entropy(color[m], y[m, 1]) + F.cross_entropy(shape[m], y[m, 2]) \
            + F.cross_entropy(size[m], y[m, 3])
    return loss


def train_classifier(n_images: int = DEFAULT_TRAIN_IMAGES, steps: int = DEFAULT_STEPS, seed: int = 0,
                     batch_images: int = 64, log: bool = True) -> ColumnNet:
    """Train on `n_images` real renders (3 crops each) for `steps` Adam steps, with a one-cycle schedule."""
    t0 = time.time()
    images, labels = render_set([training_scene(random.Random(f"t2i-eval/classifier/{seed}/{i}"))
                                 for i in range(n_images)], random.Random(f"t2i-eval/classifier-render/{seed}"))
    if log:
        print(f"rendered {n_images} training images in {time.time() - t0:.1f}s", file=sys.stderr)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    pick = np.random.default_rng(seed)
    net = ColumnNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    net.train()
    for step in range(steps):
        idx = pick.integers(0, n_images, batch_images)
        x = augment(column_crops(images[idx], pick.integers(-1, 2, (batch_images, 3))), g)
        loss = loss_of(net, x, torch.from_numpy(labels[idx].reshape(-1, 4)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", file=sys.stderr)
    return net.eval()


@dataclass(frozen=True)
class Seen:
    """What the classifier reads in one column."""

    color: str
    shape: str
    size: str


@torch.no_grad()
def classify(net: ColumnNet, images: np.ndarray, batch: int = 256) -> list[list[Seen | None]]:
    """Per image, its 3 columns left to right: None (empty) or the object seen there."""
    out: list[list[Seen | None]] = []
    net.eval()
    for k in range(0, len(images), batch):
        present, color, shape, size = (t.argmax(1).view(-1, 3).tolist() for t in net(column_crops(images[k:k + batch])))
        for p, c, s, z in zip(present, color, shape, size):
            out.append([Seen(COLORS[c[j]], SHAPES[s[j]], SIZES[z[j]]) if p[j] else None for j in range(3)])
    return out


def real_accuracy(net: ColumnNet, split: str, n: int = 1000, seed: int = 0) -> dict[str, float]:
    """Accuracy on n fresh real renders of `split` (sample_scene's distribution): empty-or-not over
    all columns; colour, shape and size over the columns that hold an object; whole images."""
    rng = random.Random(f"t2i-eval/classifier-check/{split}/{seed}")
    images, labels = render_set([shapes.sample_scene(rng, split) for _ in range(n)], rng)
    seen = classify(net, images)
    pred = np.array([[(0, 0, 0, 0) if s is None else
                      (1, COLORS.index(s.color), SHAPES.index(s.shape), SIZES.index(s.size)) for s in row]
                     for row in seen])
    ok = pred == labels
    m = labels[..., 0] == 1
    return {"images": n, "present": round(float(ok[..., 0].mean()), 4),
            "color": round(float(ok[..., 1][m].mean()), 4), "shape": round(float(ok[..., 2][m].mean()), 4),
            "size": round(float(ok[..., 3][m].mean()), 4),
            "image_exact": round(float(ok.all(axis=(1, 2)).mean()), 4)}


def load_or_train(cache_dir: Path | None = None, n_images: int = DEFAULT_TRAIN_IMAGES, steps: int = DEFAULT_STEPS,
                  seed: int = 0, retrain: bool = False, check_n: int = 1000,
                  log: bool = True) -> tuple[ColumnNet, dict]:
    """The cached classifier of this version and budget, or a newly trained one (then cached with
    its accuracy on `check_n` fresh real test and novel renders)."""
    cache_dir = cache_root() if cache_dir is None else Path(cache_dir)
    key = f"classifier-{CLASSIFIER_VERSION}-n{n_images}-s{steps}-seed{seed}"
    weights, info_path = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    net = ColumnNet()
    if weights.exists() and info_path.exists() and not retrain:
        net.load_state_dict(load_file(str(weights)))
        return net.eval(), json.loads(info_path.read_text())
    t0 = time.time()
    net = train_classifier(n_images, steps, seed, log=log)
    info = {"key": key, "version": CLASSIFIER_VERSION, "train_images": n_images, "steps": steps, "seed": seed,
            "threads": torch.get_num_threads(), "train_seconds": round(time.time() - t0, 1),
            "accuracy": {split: real_accuracy(net, split, check_n) for split in ("test", "novel")}}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata={"key": key})
    tmp.replace(weights)
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return net, info


# --- scoring ---------------------------------------------------------------------------------

def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def to_64(a: np.ndarray) -> np.ndarray:
    """The classifier and the distances read 64x64 images: resize any other size."""
    if a.shape[:2] == (S, S):
        return a
    return np.asarray(Image.fromarray(a).resize((S, S), Image.BILINEAR))


def pixel_hash(a: np.ndarray) -> bytes:
    return hashlib.blake2b(str(a.shape).encode() + a.tobytes(), digest_size=16).digest()


def pooled(a: np.ndarray) -> np.ndarray:
    """(N, 64, 64, 3) uint8 -> (N, 32*32*3) float32: 2x2 means, for the L2 prefilter."""
    a = a.astype(np.float32)
    return a.reshape(len(a), S // 2, 2, S // 2, 2, 3).mean(axis=(2, 4)).reshape(len(a), -1)


def nearest_train(generated: np.ndarray, train: np.ndarray, k: int = 128, chunk: int = 4096) -> np.ndarray:
    """Per generated image, the mean absolute pixel difference to its nearest training image, the
    nearest searched among the k nearest by L2 at 32x32 (matrix products over chunks of the set)."""
    g = pooled(generated)
    g2 = (g * g).sum(1)
    best_d = np.full((len(g), 0), np.inf, dtype=np.float32)
    best_i = np.zeros((len(g), 0), dtype=np.int64)
    for start in range(0, len(train), chunk):
        t = pooled(train[start:start + chunk])
        d = g2[:, None] + (t * t).sum(1)[None, :] - 2 * g @ t.T
        d = np.concatenate([best_d, d], axis=1)
        idx = np.concatenate([best_i, np.arange(start, start + len(t))[None, :].repeat(len(g), 0)], axis=1)
        top = np.argsort(d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, top, 1), np.take_along_axis(idx, top, 1)
    gen = generated.astype(np.int16)
    return np.array([np.abs(train[best_i[j]].astype(np.int16) - gen[j]).mean(axis=(1, 2, 3)).min()
                     for j in range(len(gen))])


def load_train_dir(train_dir: Path) -> tuple[set[bytes], np.ndarray]:
    """Hashes of the decoded pixels of every PNG under `train_dir` (recursively) and the 64x64 images."""
    paths = sorted(train_dir.rglob("*.png"))
    if not paths:
        raise SystemExit(f"error: no .png files under {train_dir}")
    hashes, images = set(), np.empty((len(paths), S, S, 3), dtype=np.uint8)
    for j, p in enumerate(paths):
        a = load_rgb(p)
        hashes.add(pixel_hash(a))
        images[j] = to_64(a)
    return hashes, images


@dataclass
class Scored:
    """One generated image against its prompt."""

    prompt: int
    n_objects: int
    count_right: bool
    color: list[bool]
    shape: list[bool]
    size: list[bool]
    copy: bool | None = None
    nearest_mad: float | None = None

    @property
    def all_right_color_shape(self) -> bool:
        return self.count_right and all(self.color) and all(self.shape)

    @property
    def all_right(self) -> bool:
        return self.all_right_color_shape and all(self.size)


def judge(prompt: int, wants: list[Want], seen: list[Seen | None]) -> Scored:
    found = [s for s in seen if s is not None]  # left to right
    pairs = [(w, found[j] if j < len(found) else None) for j, w in enumerate(wants)]
    return Scored(prompt, len(wants), len(found) == len(wants),
                  [s is not None and s.color == w.color for w, s in pairs],
                  [s is not None and s.shape == w.shape for w, s in pairs],
                  [s is not None and s.size == w.size for w, s in pairs])


def summarise(rows: list[Scored], distinct: dict[int, bool]) -> dict:
    def frac(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    prompts = sorted({r.prompt for r in rows})
    out = {"prompts": len(prompts), "images": len(rows), "objects": sum(r.n_objects for r in rows),
           "count_right": frac([r.count_right for r in rows]),
           "color": frac([c for r in rows for c in r.color]), "shape": frac([c for r in rows for c in r.shape]),
           "size": frac([c for r in rows for c in r.size]), "all_right": frac([r.all_right for r in rows]),
           "all_right_color_shape": frac([r.all_right_color_shape for r in rows]),
           "distinct": frac([distinct[p] for p in prompts if p in distinct])}
    if rows and rows[0].copy is not None:
        mads = [r.nearest_mad for r in rows]
        out |= {"train_copies": sum(r.copy for r in rows), "nearest_mad_min": round(float(np.min(mads)), 3),
                "nearest_mad_median": round(float(np.median(mads)), 3)}
    return out


def score(prompts: list[str], images_dir: Path, n: int, net: ColumnNet, train_dir: Path | None = None) -> dict:
    """Every metric of the module docstring, overall and by the prompt's number of objects (1, 2, 3)."""
    wants = [parse_caption(p) for p in prompts]
    paths = [images_dir / f"{i:04d}-{k}.png" for i in range(len(prompts)) for k in range(n)]
    if missing := [p for p in paths if not p.exists()]:
        raise SystemExit(f"error: {len(missing)} of {len(paths)} images missing in {images_dir}, e.g. "
                         + ", ".join(p.name for p in missing[:3]) + " (expected {line:04d}-{k}.png, line from 0)")
    raw = [load_rgb(p) for p in paths]
    images = np.stack([to_64(a) for a in raw])
    seen = classify(net, images)
    rows = [judge(j // n, wants[j // n], seen[j]) for j in range(len(paths))]
    hashes = [pixel_hash(a) for a in raw]
    distinct = {i: len(set(hashes[i * n:(i + 1) * n])) > 1 for i in range(len(prompts))} if n > 1 else {}
    if train_dir is not None:
        train_hashes, train = load_train_dir(train_dir)
        for r, h, mad in zip(rows, hashes, nearest_train(images, train)):
            r.copy, r.nearest_mad = h in train_hashes, float(mad)
    result = {"overall": summarise(rows, distinct),
              "by_objects": {str(k): summarise([r for r in rows if r.n_objects == k], distinct) for k in (1, 2, 3)}}
    if train_dir is not None:
        result["train_images"] = len(train)
    return result


def print_table(result: dict) -> None:
    cols = ["images", "count_right", "color", "shape", "size", "all_right", "all_right_color_shape", "distinct",
            "train_copies", "nearest_mad_min", "nearest_mad_median"]
    cols = [c for c in cols if c in result["overall"]]
    names = {"all_right_color_shape": "all(c+s)", "count_right": "count", "all_right": "all",
             "train_copies": "copies", "nearest_mad_min": "MAD min", "nearest_mad_median": "MAD med"}
    head = ["objects"] + [names.get(c, c) for c in cols]
    body = [[k] + ["-" if s.get(c) is None else str(s[c]) for c in cols]
            for k, s in [("all", result["overall"])] + list(result["by_objects"].items()) if s["images"]]
    widths = [max(len(r[j]) for r in [head] + body) for j in range(len(head))]
    for r in [head] + body:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


# --- command line ----------------------------------------------------------------------------

def add_classifier_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-n", type=int, default=DEFAULT_TRAIN_IMAGES, help="real renders to train the classifier on")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="classifier training steps (64 images each)")
    p.add_argument("--cache-dir", type=Path, default=None, help=f"default {cache_root()}")
    p.add_argument("--retrain", action="store_true", help="train again even if cached")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def print_accuracy(info: dict) -> None:
    print(f"classifier {info['key']} (trained in {info['train_seconds']}s on {info['threads']} threads); "
          "accuracy on fresh real renders:")
    for split, acc in info["accuracy"].items():
        print(f"  {split:5s} " + "  ".join(f"{k} {v}" for k, v in acc.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompts", help="write held-out captions (FILE.txt) and their objects (FILE.jsonl)")
    p.add_argument("--split", choices=["test", "novel"], default="test")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("classifier", help="build (or load) the column classifier and print its accuracy")
    add_classifier_args(p)
    p = sub.add_parser("render", help="write real renders of each prompt as OUT/{line:04d}-{k}.png")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("score", help="score DIR/{line:04d}-{k}.png against the prompts")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--n", type=int, default=4, help="images per prompt")
    p.add_argument("--train-dir", type=Path, default=None, help="training PNGs (searched recursively) for copies")
    p.add_argument("--json", type=Path, default=None)
    add_classifier_args(p)
    a = ap.parse_args(argv)

    if a.cmd == "prompts":
        if a.n <= 0:
            ap.error("--n must be positive")
        write_prompts(a.split, a.n, a.seed, a.out)
        return 0
    if a.cmd == "render":
        render_prompts(read_prompts(a.prompts), a.n, a.out, a.seed)
        print(f"wrote {a.n} real renders per prompt to {a.out}")
        return 0
    torch.set_num_threads(a.threads)
    net, info = load_or_train(a.cache_dir, a.train_n, a.steps, retrain=a.retrain)
    print_accuracy(info)
    if a.cmd == "classifier":
        return 0
    if a.n <= 0:
        ap.error("--n must be positive")
    prompts = read_prompts(a.prompts)
    t0 = time.time()
    scores = score(prompts, a.images, a.n, net, a.train_dir)
    result = {"prompts_file": str(a.prompts), "images_dir": str(a.images), "n": a.n, **scores,
              "classifier": {"key": info["key"], "accuracy": info["accuracy"]},
              "seconds": round(time.time() - t0, 1)}
    print_table(result)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
