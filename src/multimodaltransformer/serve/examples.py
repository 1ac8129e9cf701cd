"""Example images with suggested questions, kept in the model directory for the chat page to start from.

MODEL_DIR/examples/examples.json is a list of {"image": "examples/NAME.png", "questions": [str, ...]}
next to the images it names ("image" may be left out: questions only, e.g. for a text chat model).
`save_examples` writes it from held-out manifest examples (`mmt demo` does, after training);
`load_examples` reads it back for the server, which serves only the image files listed there.
Models load as before: the loaders read config.json, weights and tokenizer files, never this folder.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..data.manifest import Example

EXAMPLES_DIR = "examples"
EXAMPLES_FILE = "examples.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
DESCRIBE = "describe the image."  # ShapesWorld's caption prompt, asked of every example image
MAX_QUESTIONS = 8  # per example, when reading a hand-written file
MAX_QUESTION_CHARS = 200


@dataclass(frozen=True)
class ChatExample:
    questions: tuple[str, ...]
    image: Path | None = None  # a file inside MODEL_DIR/examples; None: suggested questions only
    name: str | None = None  # the image's path under that folder: the page fetches /examples/NAME


def save_examples(model_dir: str | Path, examples: Iterable[Example], k: int = 6, questions: int = 3) -> Path:
    """Copy the first `k` distinct images of `examples` into MODEL_DIR/examples, each with up to `questions`
    suggestions (its VQA prompts, then "describe the image."); writes and returns examples.json."""
    if k < 1 or questions < 1:
        raise ValueError(f"k and questions must be positive, got k={k}, questions={questions}")
    asked: dict[Path, list[str]] = {}  # image -> its VQA prompts, in manifest order
    for ex in examples:
        if not isinstance(ex.image, (str, Path)):  # no image, or bytes held in memory (shards)
            continue
        image = Path(ex.image)
        if image not in asked:
            if len(asked) == k or image.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            asked[image] = []
        if ex.task == "vqa" and ex.prompt and ex.prompt != DESCRIBE and ex.prompt not in asked[image]:
            asked[image].append(ex.prompt)
    folder = Path(model_dir) / EXAMPLES_DIR
    shutil.rmtree(folder, ignore_errors=True)  # a rerun replaces the examples, no stale images stay
    folder.mkdir(parents=True)
    rows = []
    for i, (image, vqa) in enumerate(asked.items()):
        name = f"{i:02d}-{image.name}"
        shutil.copyfile(image, folder / name)
        rows.append({"image": f"{EXAMPLES_DIR}/{name}", "questions": [*vqa[:questions - 1], DESCRIBE]})
    (folder / EXAMPLES_FILE).write_text(json.dumps(rows, indent=2) + "\n")
    return folder / EXAMPLES_FILE


def load_examples(model_dir: str | Path | None) -> list[ChatExample]:
    """MODEL_DIR/examples/examples.json, checked; [] when there is none. A bad entry is skipped with a
    warning that names the file and entry (the server still starts); images must lie in the folder."""
    if model_dir is None:
        return []
    root = Path(model_dir)
    path = root / EXAMPLES_DIR / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"{path}: unreadable, the chat page shows no examples ({e})", stacklevel=2)
        return []
    if not isinstance(rows, list):
        warnings.warn(f"{path}: expected a JSON list of examples, got {type(rows).__name__}", stacklevel=2)
        return []
    folder = (root / EXAMPLES_DIR).resolve()
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(_check(row, root, folder))
        except ValueError as e:
            warnings.warn(f"{path}: example {i} skipped: {e}", stacklevel=2)
    return out


def _check(row: object, root: Path, folder: Path) -> ChatExample:
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    questions = row.get("questions", [])
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ValueError("'questions' must be a list of non-empty strings")
    questions = tuple(q.strip()[:MAX_QUESTION_CHARS] for q in questions[:MAX_QUESTIONS])
    image = row.get("image")
    if image is None:
        if not questions:
            raise ValueError("neither an image nor questions")
        return ChatExample(questions)
    if not isinstance(image, str):
        raise ValueError("'image' must be a path relative to the model directory")
    resolved = (root / image).resolve()
    if folder not in resolved.parents:
        raise ValueError(f"image {image!r} is not inside {EXAMPLES_DIR}/")
    if resolved.suffix.lower() not in IMAGE_SUFFIXES or not resolved.is_file():
        raise ValueError(f"image {image!r} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
    return ChatExample(questions, resolved, resolved.relative_to(folder).as_posix())
