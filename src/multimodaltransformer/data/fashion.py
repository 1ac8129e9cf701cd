"""Fashion-MNIST (Xiao et al. 2017) from its IDX files: real greyscale images as a manifest.

70,000 28x28 images of 10 kinds of clothing (60,000 train, 10,000 test), white on black as
published. The IDX files come with the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist) or from github.com/zalandoresearch/fashion-mnist (data/fashion).
For each image this writes
- classify: ShapesWorld's CLASSIFY_PROMPT (so `mmt classify` and a shared head read the same text)
  -> the class name as Fashion-MNIST spells it ("ankle boot");
- caption: "a photo of an ankle boot";
- vqa: three questions that follow from the class alone (QUESTION_TYPES): its category
  ("clothing", "footwear" or "bag"), "is this something to wear on the feet?" and "is this a(n) X?"
  (the true class half of the time, else another one: yes / no balanced);
- chat (only with `chat=K`): K of CHAT_QUESTIONS ("What is this?", "Describe this image." ...), each
  answered by a sentence that names the class ("This is an ankle boot."): what a real-image chat
  model learns to say (configs/fashion-chat.yaml).
Questions draw from a per-image rng (split, seed, index), so a subset holds the same rows as the
whole split. IDX: a big-endian header (magic 2051 images / 2049 labels, the count, rows and
columns for images), then unsigned bytes; `.gz` or raw.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from .manifest import DataError
from .shapes import CAPTION_PROMPT, CLASSIFY_PROMPT

CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")  # label 0..9
FOOTWEAR = frozenset({"sandal", "sneaker", "ankle boot"})
SPLITS = ("train", "test")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x0803: ubyte, 3 dims; 0x0801: ubyte, 1 dim
FEET_QUESTION = "is this something to wear on the feet?"
CATEGORY_QUESTION = "what kind of item is this?"
QUESTION_TYPES = ("category", "feet", "identity")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
KNOWN_DIRS = ("/usr/share/datasets/fashion-mnist",)
SOURCE_URL = "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)"
VERSION = 1  # bumped when rows change; info.json records it so stale caches are regenerated
# The "chat" task (`chat=K`): questions a user asks about a photo, answered in a sentence
CHAT_QUESTIONS = ("What is this?", "What garment is this?", "What garment is shown in the picture?",
                  "Describe this image.", "What is in this photo?", "What kind of item is this?",
                  "What am I looking at?", "Can you tell me what this is?")
CHAT_ANSWERS = ("This is {}.", "It is {}.", "The picture shows {}.", "This image shows {}.")
_CLASS_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(re.escape(c) for c in sorted(CLASSES, key=len, reverse=True))
                            + r")s?(?![\w-])", re.IGNORECASE)


def default_idx_dir() -> Path | None:
    """Where the Debian package put the files (asked of dpkg, then known paths), or None."""
    dirs = []
    try:
        out = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, timeout=30)
        dirs = [Path(p).parent for p in out.stdout.splitlines() if p.endswith("-labels-idx1-ubyte.gz")]
    except (OSError, subprocess.SubprocessError):
        pass  # not a Debian system
    return next((d for d in [*dirs, *map(Path, KNOWN_DIRS)] if d.is_dir()), None)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST file not found: {folder / stem} (or {stem}.gz)")


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes -> an array of its shape, checked against its header."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    head = 4 * (1 + dims)
    if len(data) < head:
        raise DataError(f"{path}: truncated, {len(data)} bytes is shorter than the IDX header")
    found, *shape = (int(v) for v in np.frombuffer(data, ">u4", 1 + dims))
    if found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic} (not an IDX "
                        f"{'image' if magic == IMAGES_MAGIC else 'label'} file)")
    size = int(np.prod(shape))
    if len(data) - head != size:
        raise DataError(f"{path}: truncated or damaged, the header says {'x'.join(map(str, shape))} bytes "
                        f"({size}) but {len(data) - head} follow it")
    return np.frombuffer(data, np.uint8, size, head).reshape(shape)


def read_split(idx: str | Path | None, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images (N, H, W) uint8, labels (N,) uint8, the images file) of a split, validated."""
    if split not in SPLITS:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; choose from {list(SPLITS)}")
    folder = Path(idx).expanduser() if idx is not None else default_idx_dir()
    if folder is None:
        raise DataError(f"Fashion-MNIST IDX files not found: install the Debian package {DEBIAN_PACKAGE} or "
                        f"download them from {SOURCE_URL} and pass their folder")
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder not found: {folder}")
    images_path, labels_path = (_find(folder, stem) for stem in FILES[split])
    images = _read_idx(images_path, IMAGES_MAGIC, 3)
    labels = _read_idx(labels_path, LABELS_MAGIC, 1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"{labels_path}: label {labels.max()} is not a Fashion-MNIST class (0-{len(CLASSES) - 1})")
    return images, labels, images_path


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` sorted indices drawn at random class by class in turn, so every class appears once n
    reaches the number of classes, and the classes stay balanced as far as their sizes allow."""
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(labels == c)) for c in rng.permutation(len(CLASSES))]
    depth = max((len(g) for g in groups), default=0)
    # round robin: the first of each class, then the second of each, ...
    order = [g[k] for k in range(depth) for g in groups if k < len(g)]
    return np.sort(np.asarray(order[:n], dtype=np.int64))


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def category(name: str) -> str:
    return "footwear" if name in FOOTWEAR else "bag" if name == "bag" else "clothing"


def questions(name: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, answer) of every QUESTION_TYPES, each a function of the class alone."""
    asked = name if rng.random() < 0.5 else rng.choice([c for c in CLASSES if c != name])
    return [("category", CATEGORY_QUESTION, category(name)),
            ("feet", FEET_QUESTION, "yes" if name in FOOTWEAR else "no"),
            ("identity", f"is this {article(asked)}?", "yes" if asked == name else "no")]


def chat_turns(name: str, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """`k` (question, answer) pairs of a chat about the image (k <= len(CHAT_QUESTIONS)): distinct
    questions, each answered by a sentence that names the class as Fashion-MNIST spells it."""
    asked = rng.sample(CHAT_QUESTIONS, k)
    return [(q, rng.choice(CHAT_ANSWERS).format(article(name))) for q in asked]


def mentioned_classes(text: str) -> list[str]:
    """The class names `text` mentions, in order ("shirt" inside "t-shirt/top" is not one)."""
    return [m.group(1).lower() for m in _CLASS_PATTERN.finditer(text)]


def rows(index: int, label: int, split: str, seed: int, chat: int = 0) -> list[dict]:
    """The manifest rows of one image (without its image path); `chat` rows of task "chat" besides."""
    name, uid = CLASSES[label], f"fashion-{split}-{index:05d}"
    out = [{"id": f"{uid}-cls", "task": "classify", "prompt": CLASSIFY_PROMPT, "target": name},
           {"id": f"{uid}-cap", "task": "caption", "prompt": CAPTION_PROMPT, "target": f"a photo of {article(name)}"}]
    rng = random.Random(f"fashion/{split}/{seed}/{index}")  # str seeds are hashed stably (sha512)
    for j, (qtype, q, a) in enumerate(questions(name, rng)):
        out.append({"id": f"{uid}-q{j}", "task": "vqa", "prompt": q, "target": a, "question_type": qtype})
    if chat:  # drawn after the questions, from their own rng: the rows above stay as they were
        chat_rng = random.Random(f"fashion-chat/{split}/{seed}/{index}")
        out += [{"id": f"{uid}-chat{j}", "task": "chat", "prompt": q, "target": a}
                for j, (q, a) in enumerate(chat_turns(name, chat, chat_rng))]
    return out


def generate(out: str | Path, split: Literal["train", "test"] = "train", n: int | None = None, seed: int = 0,
             idx: str | Path | None = None, progress: bool = True, chat: int = 0) -> Path:
    """Write OUT/images/*.png and OUT/manifest.jsonl for `n` images of `split` (None: all of them),
    a seeded stratified subset; `idx`: the IDX files' folder (None: the Debian package's); `chat`:
    that many "chat" rows per image (chat_turns) besides the others."""
    if not 0 <= chat <= len(CHAT_QUESTIONS):
        raise DataError(f"chat must be 0-{len(CHAT_QUESTIONS)} (questions per image), got {chat}")
    images, labels, images_path = read_split(idx, split)
    if n is not None and n <= 0:
        raise DataError(f"n must be positive, got {n}")
    if n is not None and n > len(labels):
        raise DataError(f"n={n} is more than the {len(labels)} images of the {split} split ({images_path})")
    chosen = np.arange(len(labels)) if n is None else stratified_subset(labels, n, seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    tmp = out / "manifest.jsonl.tmp"
    from tqdm import tqdm

    with tmp.open("w") as f:
        for i in tqdm(chosen.tolist(), desc=f"fashion {split}", disable=not progress, unit="img"):
            rel = f"images/{split}-{i:05d}.png"
            Image.fromarray(images[i]).save(out / rel)
            base = {"image": rel, "split": split, "label": int(labels[i])}
            for row in rows(i, int(labels[i]), split, seed, chat):
                f.write(json.dumps({**row, **base}) + "\n")
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "fashion-mnist", "version": VERSION, "split": split,
                                                "n": len(chosen), "seed": seed, "chat": chat,
                                                "idx": str(images_path.parent)}) + "\n")
    return out / "manifest.jsonl"
