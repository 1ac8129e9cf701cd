"""ShapesWorld: a seeded synthetic image-text dataset that needs no download.

Each 64x64 image holds 1-3 objects (5 shapes x 8 colours x 2 sizes), one per column
(left / middle / right), so captions and answers are unambiguous functions of the image:
- caption: objects left to right, "a small red circle left of a large blue square";
- questions: colour, shape, size, count, position (absolute and relative), yes/no existence;
- class label: the shape of the largest object (the leftmost of equals);
- retrieval: the caption alone (empty prompt), a text-image pair for contrastive training;
- match: "does the text describe the image?" with a caption that is the true one ("yes") or a near
  miss one edit away ("no": one object's colour, shape or size changed, or two objects swapped).
  Near misses are valid scenes of the same split, so the text alone says nothing: the answer needs
  both modalities.
The new tasks draw from their own per-image rng, so the other rows are those of earlier versions
(version 3 balanced the "how many <shape>s" questions the same way: only those rows changed).
The `novel` split only holds images with at least one colour-shape pair never used in
train/val/test, which measures compositional generalisation.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .parallel import run_chunks

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "diamond": "diamonds", "cross": "crosses"}
COLORS = {
    "red": (215, 35, 35), "green": (40, 170, 60), "blue": (45, 85, 230), "yellow": (235, 215, 40),
    "purple": (140, 60, 200), "orange": (245, 135, 25), "cyan": (45, 210, 220), "pink": (245, 135, 200),
}
SIZES = {"small": 11, "large": 19}  # object extent in pixels at 64x64
COLUMNS = ("left", "middle", "right")
NUMBERS = ("zero", "one", "two", "three")
# Colour i is never paired with shape i % 5 outside the novel split.
NOVEL_PAIRS = frozenset((c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLORS))
SPLITS = ("train", "val", "test", "novel")
CAPTION_PROMPT = "describe the image."
CLASSIFY_PROMPT = "what is the main shape in the image?"
MATCH_PROMPT = "does the text describe the image?"
TASKS = ("caption", "vqa", "classify", "retrieval", "match")
VERSION = 4  # bumped when rows change (4: objects carry their box); info.json records it (stale caches regenerate)
IMAGE_SIZE = 64
_SS = 4  # supersampling factor for anti-aliased edges


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    size: str
    column: int
    y: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


def _pairs(split: str) -> list[tuple[str, str]]:
    allp = [(c, s) for c in COLORS for s in SHAPES]
    return [p for p in allp if p not in NOVEL_PAIRS] if split != "novel" else allp


def sample_scene(rng: random.Random, split: str) -> list[Obj]:
    """1-3 objects in distinct columns, left to right; novel scenes contain a held-out pair."""
    k = rng.randint(1, 3)
    columns = sorted(rng.sample(range(3), k))
    pairs = _pairs(split)
    novel_at = rng.randrange(k) if split == "novel" else -1
    objs = []
    for i, col in enumerate(columns):
        color, shape = rng.choice(sorted(NOVEL_PAIRS)) if i == novel_at else rng.choice(pairs)
        size = rng.choice(list(SIZES))
        half = SIZES[size] // 2
        objs.append(Obj(color, shape, size, col, rng.randint(half + 3, IMAGE_SIZE - half - 4)))
    return objs


@dataclass(frozen=True)
class Drawing:
    """Every random draw of one image, so that drawing it needs no rng (and can run in a worker)."""

    background: tuple[int, ...]
    objects: tuple[tuple[Obj, float, tuple[int, ...]], ...]  # (object, horizontal jitter, fill colour)
    noise_seed: int


def plan_drawing(objs: list[Obj], rng: random.Random) -> Drawing:
    """The draws of `render`, in its order: background, then each object's jitter and fill, then the noise."""
    bg = tuple(rng.randint(20, 45) for _ in range(3))
    placed = []
    for o in objs:
        jitter = rng.uniform(-1, 1)
        placed.append((o, jitter, tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLORS[o.color])))
    return Drawing(bg, tuple(placed), rng.getrandbits(64))


def draw_shape(canvas: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
               fill: tuple[int, ...]) -> None:
    """One shape of half-extent `r` centred at (cx, cy), in the canvas's own (supersampled) pixels."""
    if shape == "circle":
        canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        q = r * 0.85
        canvas.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    elif shape == "triangle":
        canvas.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        canvas.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        t = r * 0.38
        canvas.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        canvas.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)


def finish(im: Image.Image, noise_seed: int) -> Image.Image:
    """A supersampled drawing downsampled to IMAGE_SIZE (anti-aliasing), with mild seeded noise."""
    x = np.asarray(im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32)
    noise = np.random.default_rng(noise_seed).normal(0.0, 3.0, x.shape)  # seeded, unlike PIL's
    return Image.fromarray(np.clip(x + noise, 0, 255).round().astype(np.uint8))


def placement(o: Obj, jitter: float) -> tuple[float, float, float]:
    """(cx, cy, half-extent) of an object in image pixels: its column's centre, jittered."""
    col_w, r = IMAGE_SIZE / 3, SIZES[o.size] / 2
    return o.column * col_w + col_w / 2 + (col_w / 2 - r - 1) * jitter * 0.8, float(o.y), r


def box(cx: float, cy: float, r: float) -> list[float]:
    """The box [x0, y0, x1, y1] of a shape centred at (cx, cy) with half-extent r, as fractions of
    the image (the records' `box`; MovingShapes' per-frame `boxes`)."""
    return [round(v / IMAGE_SIZE, 4) for v in (cx - r, cy - r, cx + r, cy + r)]


def boxes(d: Drawing) -> list[list[float]]:
    """Each object's box in the drawing."""
    return [box(*placement(o, jitter)) for o, jitter, _ in d.objects]


def draw(d: Drawing) -> Image.Image:
    """Draw the scene supersampled, then downsample (anti-aliasing) and add mild noise."""
    S = IMAGE_SIZE * _SS
    im = Image.new("RGB", (S, S), d.background)
    canvas = ImageDraw.Draw(im)
    for o, jitter, fill in d.objects:
        cx, cy, r = placement(o, jitter)
        draw_shape(canvas, o.shape, cx * _SS, cy * _SS, r * _SS, fill)
    return finish(im, d.noise_seed)


def render(objs: list[Obj], rng: random.Random) -> Image.Image:
    """One image of the scene, drawing its randomness from `rng`."""
    return draw(plan_drawing(objs, rng))


def _draw_and_save(jobs: list[tuple[Drawing, str]]) -> int:
    for d, path in jobs:
        draw(d).save(path)
    return len(jobs)


def caption(objs: list[Obj]) -> str:
    return " left of ".join(o.phrase for o in objs)


def class_label(objs: list[Obj]) -> str:
    largest = max(objs, key=lambda o: (SIZES[o.size], -o.column))
    return largest.shape


def questions(objs: list[Obj], rng: random.Random, split: str, k: int = 3,
              side: random.Random | None = None) -> list[tuple[str, str, str]]:
    """Up to k (type, question, answer) of distinct types, each answerable from the image.

    `side` (an rng of the image's own) balances "how many <shape>s" questions: half of them ask
    about a shape in the image, instead of a uniform shape whose answer is "zero" 60% of the time.
    It draws nothing from `rng`, so every other row and image of the split stays as it was."""
    shapes = [o.shape for o in objs]
    colors = [o.color for o in objs]
    gens = {}
    uniq_shape = [o for o in objs if shapes.count(o.shape) == 1]
    uniq_color = [o for o in objs if colors.count(o.color) == 1]
    uniq_name = [o for o in objs if [p.name for p in objs].count(o.name) == 1]
    if uniq_shape:
        o = rng.choice(uniq_shape)
        gens["color"] = (f"what color is the {o.shape}?", o.color)
    if uniq_color:
        o = rng.choice(uniq_color)
        gens["shape"] = (f"what shape is the {o.color} object?", o.shape)
    if uniq_name:
        o = rng.choice(uniq_name)
        gens["size"] = (f"what size is the {o.name}?", o.size)
        o = rng.choice(uniq_name)
        gens["position"] = (f"where is the {o.name}?", COLUMNS[o.column])
    if rng.random() < 0.5:
        gens["count"] = ("how many objects are there?", NUMBERS[len(objs)])
    else:
        s = rng.choice(SHAPES)
        if side is not None and side.random() < 0.5:
            s = side.choice(sorted(set(shapes)))
        gens["count"] = (f"how many {PLURALS[s]} are there?", NUMBERS[shapes.count(s)])
    # Existence, balanced; negatives are often near misses (right colour or right shape).
    if rng.random() < 0.5:
        o = rng.choice(objs)
        gens["exist"] = (f"is there a {o.name}?", "yes")
    else:
        gens["exist"] = (f"is there a {_absent(objs, rng, split)}?", "no")
    if len(uniq_name) >= 2:
        a, b = rng.sample(uniq_name, 2)
        gens["relation"] = (f"is the {a.name} left of the {b.name}?", "yes" if a.column < b.column else "no")
    types = rng.sample(sorted(gens), min(k, len(gens)))
    return [(t, *gens[t]) for t in types]


def _absent(objs: list[Obj], rng: random.Random, split: str) -> str:
    """A colour-shape pair of `split` not in the image, 70% of the time a near miss (right colour or shape)."""
    present = {(o.color, o.shape) for o in objs}
    near = [p for p in _pairs(split) if p not in present and any(p[0] == c or p[1] == s for c, s in present)]
    far = [p for p in _pairs(split) if p not in present]
    c, s = rng.choice(near if near and rng.random() < 0.7 else far)
    return f"{c} {s}"


def opposites(objs: list[Obj], asked: list[tuple[str, str, str]], rng: random.Random,
              split: str) -> list[tuple[str, str, str]]:
    """For each yes/no question in `asked` (exist, relation), the same question type with the other
    answer about the same image: "is the B left of the A?" after "is the A left of the B?", an absent
    pair after a present one and the reverse (training data: a contrast on the same pixels)."""
    out = []
    for qtype, q, a in asked:
        if qtype == "relation":
            first, second = q.removeprefix("is the ").removesuffix("?").split(" left of the ")
            out.append(("relation", f"is the {second} left of the {first}?", "no" if a == "yes" else "yes"))
        elif qtype == "exist":
            if a == "yes":
                out.append(("exist", f"is there a {_absent(objs, rng, split)}?", "no"))
            else:
                out.append(("exist", f"is there a {rng.choice(objs).name}?", "yes"))
    return out


def _valid_scene(objs: list[Obj], split: str) -> bool:
    """Novel scenes hold a held-out colour-shape pair; all others hold none."""
    held_out = [(o.color, o.shape) in NOVEL_PAIRS for o in objs]
    return any(held_out) if split == "novel" else not any(held_out)


def near_misses(objs: list[Obj], split: str) -> dict[str, list[list[Obj]]]:
    """Valid scenes of `split` one edit away from `objs` whose captions differ, by edit type.

    Edits: one object's colour, shape or size; or two objects of different phrases swapping places.
    "size" is never empty (flipping a size keeps every pair), so a near miss always exists.
    """
    edits: dict[str, list[list[Obj]]] = {"color": [], "shape": [], "size": [], "order": []}
    for k, o in enumerate(objs):
        changed = [("color", replace(o, color=c)) for c in COLORS if c != o.color]
        changed += [("shape", replace(o, shape=s)) for s in SHAPES if s != o.shape]
        changed += [("size", replace(o, size=s)) for s in SIZES if s != o.size]
        for kind, new in changed:
            scene = objs[:k] + [new] + objs[k + 1:]
            if _valid_scene(scene, split):
                edits[kind].append(scene)
    for a, b in itertools.combinations(range(len(objs)), 2):
        if objs[a].phrase != objs[b].phrase:  # swapping equal objects would not change the caption
            scene = list(objs)
            scene[a] = replace(objs[b], column=objs[a].column, y=objs[a].y)
            scene[b] = replace(objs[a], column=objs[b].column, y=objs[b].y)
            edits["order"].append(scene)
    return {kind: scenes for kind, scenes in edits.items() if scenes}


def match_example(objs: list[Obj], rng: random.Random, split: str) -> tuple[str, str, str]:
    """(text, answer, match_type): the true caption ("yes", "none") or a near miss ("no", its edit), 50/50.

    The edit type is drawn uniformly among those possible, then the edited scene uniformly within it.
    """
    if rng.random() < 0.5:
        return caption(objs), "yes", "none"
    return _near_miss(objs, rng, split)


def _near_miss(objs: list[Obj], rng: random.Random, split: str) -> tuple[str, str, str]:
    misses = near_misses(objs, split)
    kind = rng.choice(sorted(misses))
    return caption(rng.choice(misses[kind])), "no", kind


def extra_counts(objs: list[Obj], rng: random.Random, k: int,
                 asked: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """Up to k more "how many <shape>s" questions about distinct shapes not `asked` already, alternately
    one in the image (the most repeated first: "two" is rare otherwise) and one not (while there are
    any): more of the question that needs counting."""
    asked = set(asked)
    new = [s for s in SHAPES if f"how many {PLURALS[s]} are there?" not in asked]
    shapes = [o.shape for o in objs]
    present = sorted({s for s in shapes if s in new})
    absent = [s for s in new if s not in present]
    rng.shuffle(present)
    rng.shuffle(absent)
    present.sort(key=shapes.count)  # stable: ties stay shuffled; pop() takes the most repeated
    picked: list[str] = []
    while len(picked) < min(k, len(new)):
        pool = present if (len(picked) % 2 == 0 and present) or not absent else absent
        picked.append(pool.pop())
    return [("count", f"how many {PLURALS[s]} are there?", NUMBERS[shapes.count(s)]) for s in picked]


def match_pair(objs: list[Obj], drawn: str, rng: random.Random, split: str) -> tuple[str, str, str]:
    """The other match example of an image whose `match_example` answered `drawn`: a near miss after
    the true caption and the reverse, so the image is seen with both (a contrast on the same pixels)."""
    return (caption(objs), "yes", "none") if drawn == "no" else _near_miss(objs, rng, split)


def check_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    """The requested task names in canonical `TASKS` order (None: all of them)."""
    if tasks is None:
        return TASKS
    wanted = set(tasks)
    if unknown := sorted(wanted - set(TASKS)):
        raise ValueError(f"unknown ShapesWorld task(s) {unknown}; choose from {list(TASKS)}")
    if not wanted:
        raise ValueError(f"no ShapesWorld tasks given; choose from {list(TASKS)}")
    return tuple(t for t in TASKS if t in wanted)


def _vqa_rows(prefix: str, asked: list[tuple[str, str, str]]) -> list[dict]:
    return [{"id": f"{prefix}{j}", "task": "vqa", "prompt": q, "target": a, "question_type": t}
            for j, (t, q, a) in enumerate(asked)]


def _draw_all(drawings: list[tuple[Drawing, str]], desc: str, progress: bool) -> None:
    """Draw and save every image, over the machine's cores when there are many (drawing is ~all of
    the time; the draws were made beforehand, so the images do not depend on the worker count)."""
    run_chunks(_draw_and_save, drawings, desc, "img", progress, chunk=100)


def generate(out: str | Path, split: Literal["train", "val", "test", "novel"] = "train",
             n: int = 1000, seed: int = 0, questions_per_image: int = 3, progress: bool = True,
             tasks: Iterable[str] | None = None, counts: int = 0, matches: int = 1,
             opposite: bool = False) -> Path:
    """Write `n` images and OUT/manifest.jsonl with rows of `tasks` per image (None: all of `TASKS`).

    Training extras (defaults off; the other rows stay as they are, each extra draws from its own
    rng): `counts` more "how many <shape>s" questions per image (`extra_counts`), `opposite` for each
    yes/no question the one with the other answer (`opposites`), and `matches=2` for both the true
    caption and a near miss of each image (`match_pair`)."""
    tasks = check_tasks(tasks)
    if counts < 0 or matches not in (1, 2):
        raise ValueError(f"counts must be >= 0 and matches 1 or 2, got {counts} and {matches}")
    if split not in SPLITS:
        raise ValueError(f"unknown ShapesWorld split {split!r}; choose from {list(SPLITS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    key = f"shapesworld/{split}/{seed}"
    rng = random.Random(key)  # str seeds are hashed stably (sha512); each image's extras: f"{key}/{i}/..."
    tmp = out / "manifest.jsonl.tmp"

    drawings: list[tuple[Drawing, str]] = []  # drawn after the rows: in worker processes when many
    with tmp.open("w") as f:
        for i in range(n):
            objs = sample_scene(rng, split)
            rel = f"images/{split}-{seed}-{i:06d}.png"
            drawings.append((plan_drawing(objs, rng), str(out / rel)))
            base = {"image": rel, "split": split,
                    "objects": [{**o.__dict__, "box": b} for o, b in zip(objs, boxes(drawings[-1][0]))]}
            uid = f"{split}-{seed}-{i:06d}"
            rows = [{"id": f"{uid}-cap", "task": "caption", "prompt": CAPTION_PROMPT, "target": caption(objs)}]
            count_rng = random.Random(f"{key}/{i}/count")
            asked = questions(objs, rng, split, questions_per_image, count_rng)
            rows += _vqa_rows(f"{uid}-q", asked)
            if opposite:
                rows += _vqa_rows(f"{uid}-o", opposites(objs, asked, random.Random(f"{key}/{i}/opposite"), split))
            prompts = [r["prompt"] for r in rows]
            rows += _vqa_rows(f"{uid}-c", extra_counts(objs, random.Random(f"{key}/{i}/counts"), counts, prompts))
            rows.append({"id": f"{uid}-cls", "task": "classify", "prompt": CLASSIFY_PROMPT,
                         "target": class_label(objs)})
            rows.append({"id": f"{uid}-ret", "task": "retrieval", "prompt": "", "target": caption(objs)})
            # A separate rng: drawing from `rng` here would change every later image of the split.
            text, answer, kind = match_example(objs, random.Random(f"{key}/{i}/match"), split)
            rows.append({"id": f"{uid}-match", "task": "match", "prompt": MATCH_PROMPT, "text": text,
                         "target": answer, "match_type": kind})
            if matches == 2:
                text, answer, kind = match_pair(objs, answer, random.Random(f"{key}/{i}/match2"), split)
                rows.append({"id": f"{uid}-match2", "task": "match", "prompt": MATCH_PROMPT, "text": text,
                             "target": answer, "match_type": kind})
            for row in rows:
                if row["task"] in tasks:
                    f.write(json.dumps({**row, **base}) + "\n")
    _draw_all(drawings, f"shapes {split}", progress)
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "shapesworld", "version": VERSION, "split": split, "n": n,
                                                "seed": seed, "questions_per_image": questions_per_image,
                                                "counts": counts, "matches": matches, "opposite": opposite,
                                                "tasks": list(tasks)}) + "\n")
    return out / "manifest.jsonl"
