"""MovingShapes: a seeded synthetic video-text dataset that needs no download (ShapesWorld in motion).

Each clip is 16 frames of 64x64 RGB at 8 fps (an H.264 MP4) holding 1-3 objects of ShapesWorld's
shapes, colours and sizes on a 3x3 grid of cells, names (colour + shape) distinct within a clip.
Each object does one thing: moves one cell left / right / up / down (linearly over 8 frames from a
frame in 0..6), stays still, appears at a frame in 4..11, or disappears at one. The cells objects
occupy (start and end) never overlap, so captions and answers are unambiguous functions of the clip:
- caption: one clause per object in reading order of its cell, "a red circle moves right while a
  blue square stays still";
- questions: direction, moving or not, how many move, what appears / disappears / moves first,
  colour, shape, and column and count at the start and at the end.
The `novel` split only holds clips with at least one colour-shape pair never used in train/val/test.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw

from .parallel import run_chunks
from .shapes import (_SS, COLORS, COLUMNS, IMAGE_SIZE, NOVEL_PAIRS, NUMBERS, SIZES, SPLITS, _pairs, box, draw_shape,
                     finish)

VERSION = 2  # bumped when rows or clips change (2: objects carry per-frame boxes); info.json records it
FRAMES = 16
FPS = 8
MOVE_FRAMES = 8  # a move takes this many frames, starting at a frame in 0..6, so it ends by frame 14
CELL = IMAGE_SIZE / 3  # side of a grid cell, pixels
VIDEO_CAPTION_PROMPT = "describe the video."
STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) per move
CLAUSES = {"still": "stays still", "appears": "appears", "disappears": "disappears"}  # movers: "moves <way>"
Cell = tuple[int, int]  # (row, column)


@dataclass(frozen=True)
class MovingObj:
    color: str
    shape: str
    size: str
    motion: str  # a key of STEPS, or "still", "appears", "disappears"
    start_cell: Cell
    end_cell: Cell  # the start cell unless it moves
    frame: int  # movers: the move's first frame; appears: the first visible frame; disappears: the first gone
    offset: tuple[float, float]  # (dx, dy) pixels from the cell centre

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MovingObj:
        """From a manifest record's `objects` entry (JSON lists back to tuples)."""
        d = {k: v for k, v in d.items() if k != "boxes"}  # derived: `track_boxes`
        return cls(**{**d, "start_cell": tuple(d["start_cell"]), "end_cell": tuple(d["end_cell"]),
                      "offset": tuple(d["offset"])})

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def moves(self) -> bool:
        return self.motion in STEPS

    @property
    def clause(self) -> str:
        article = "an" if self.color[0] in "aeiou" else "a"  # "an orange cross"
        return f"{article} {self.name} {CLAUSES.get(self.motion, f'moves {self.motion}')}"


def object_state(o: MovingObj, frame: int) -> tuple[float, float, bool]:
    """(cx, cy, visible) of `o` at `frame`, in pixels of the 64x64 frame: the clip's geometry."""
    p = min(max((frame - o.frame) / MOVE_FRAMES, 0.0), 1.0) if o.moves else 0.0
    (r0, c0), (r1, c1) = o.start_cell, o.end_cell
    cx = (c0 + (c1 - c0) * p + 0.5) * CELL + o.offset[0]
    cy = (r0 + (r1 - r0) * p + 0.5) * CELL + o.offset[1]
    visible = not (o.motion == "appears" and frame < o.frame or o.motion == "disappears" and frame >= o.frame)
    return cx, cy, visible


def track_boxes(o: MovingObj) -> list[list[float] | None]:
    """The object's box [x0, y0, x1, y1] (fractions of the frame) in each frame, None where it is not
    visible: the records' `boxes`, which region heads learn from (models/regions.py)."""
    states = (object_state(o, t) for t in range(FRAMES))
    return [box(cx, cy, SIZES[o.size] / 2) if visible else None for cx, cy, visible in states]


def _kind(rng: random.Random) -> str:
    u = rng.random()
    return "move" if u < 0.55 else "still" if u < 0.80 else "appears" if u < 0.90 else "disappears"


def _ways(cell: Cell, free: set[Cell]) -> list[str]:
    """The moves from `cell` that end on a free cell of the grid."""
    return [m for m, (dr, dc) in STEPS.items() if (cell[0] + dr, cell[1] + dc) in free]


def _sample_object(rng: random.Random, pairs: list[tuple[str, str]], free: set[Cell]) -> MovingObj:
    """An object on `free` cells: its motion kind is drawn first, then a start cell (and a direction)
    where it fits, so the kinds keep their shares (a rejected scene would lose more movers)."""
    color, shape = rng.choice(pairs)
    size = rng.choice(list(SIZES))
    movable = [c for c in sorted(free) if _ways(c, free)]
    kind = _kind(rng)
    while kind == "move" and not movable:  # no two free neighbouring cells left (rare)
        kind = _kind(rng)
    if kind == "move":
        start = rng.choice(movable)
        kind = rng.choice(_ways(start, free))  # the four directions stay equally likely, by symmetry
        end, frame = (start[0] + STEPS[kind][0], start[1] + STEPS[kind][1]), rng.randint(0, 6)
    else:
        start = end = rng.choice(sorted(free))
        frame = 0 if kind == "still" else rng.randint(4, 11)
    room = (CELL / 2 - SIZES[size] / 2 - 1) * 0.8  # as ShapesWorld's jitter: the shape stays in its cell
    offset = (round(rng.uniform(-room, room), 2), round(rng.uniform(-room, room), 2))  # rounded: the record is exact
    return MovingObj(color, shape, size, kind, start, end, frame, offset)


def sample_clip(rng: random.Random, split: str) -> list[MovingObj]:
    """1-3 objects with distinct names on disjoint cells, in reading order of their start cells;
    novel clips contain a held-out pair, others none."""
    k = rng.randint(1, 3)
    novel_at = rng.randrange(k) if split == "novel" else -1
    free = {divmod(c, 3) for c in range(9)}
    objs: list[MovingObj] = []
    for i in range(k):
        used = {(o.color, o.shape) for o in objs}
        pairs = [p for p in (sorted(NOVEL_PAIRS) if i == novel_at else _pairs(split)) if p not in used]
        objs.append(o := _sample_object(rng, pairs, free))
        free -= {o.start_cell, o.end_cell}
    return sorted(objs, key=lambda o: o.start_cell)  # an object is first seen in its start cell


def caption(objs: list[MovingObj]) -> str:
    """One clause per object, in order: "A", "A while B", "A, B while C"."""
    clauses = [o.clause for o in objs]
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " while " + clauses[-1]


def questions(objs: list[MovingObj], rng: random.Random, k: int = 3) -> list[tuple[str, str, str]]:
    """Up to k (type, question, answer) of distinct types, each answerable from the clip."""
    movers = [o for o in objs if o.moves]
    others = [o for o in objs if not o.moves]
    gens: dict[str, tuple[str, str]] = {}
    if movers:  # the four directions are equally likely: the scene distribution is symmetric under rotation
        o = rng.choice(movers)
        gens["direction"] = (f"which way does the {o.name} move?", o.motion)
    pool = (movers if rng.random() < 0.5 else others) if movers and others else movers or others  # yes/no 50/50
    o = rng.choice(pool)
    gens["moving"] = (f"does the {o.name} move?", "yes" if o.moves else "no")
    gens["count_moving"] = ("how many objects move?", NUMBERS[len(movers)])
    orders = []
    for event in ("appears", "disappears"):
        if len(doers := [o for o in objs if o.motion == event]) == 1:
            orders.append((f"what {event}?", doers[0].name))
    if len(movers) >= 2:
        first, *rest = sorted(movers, key=lambda o: o.frame)
        if all(o.frame - first.frame >= 4 for o in rest):  # clearly first, not a near tie
            orders.append(("which object moves first?", first.name))
    if orders:
        gens["order"] = rng.choice(orders)
    shape_names, color_names = [o.shape for o in objs], [o.color for o in objs]
    if uniq_shape := [o for o in objs if shape_names.count(o.shape) == 1]:
        o = rng.choice(uniq_shape)
        gens["color"] = (f"what color is the {o.shape}?", o.color)
    if uniq_color := [o for o in objs if color_names.count(o.color) == 1]:
        o = rng.choice(uniq_color)
        gens["shape"] = (f"what shape is the {o.color} object?", o.shape)
    for when, t in (("start", 0), ("end", FRAMES - 1)):  # no move is under way then: objects sit in a cell
        seen = [o for o in objs if object_state(o, t)[2]]
        if seen:
            o = rng.choice(seen)
            column = (o.start_cell if t == 0 else o.end_cell)[1]
            gens[f"position_{when}"] = (f"where is the {o.name} at the {when}?", COLUMNS[column])
        gens[f"count_{when}"] = (f"how many objects are there at the {when}?", NUMBERS[len(seen)])
    types = rng.sample(sorted(gens), min(k, len(gens)))
    return [(t, *gens[t]) for t in types]


@dataclass(frozen=True)
class ClipPlan:
    """Every random draw of one clip, so that drawing it needs no rng (and can run in a worker)."""

    objects: tuple[MovingObj, ...]
    background: tuple[int, ...]
    fills: tuple[tuple[int, ...], ...]  # per object
    noise_seed: int  # frame t's noise is seeded with noise_seed + t


def plan_clip(objs: list[MovingObj], rng: random.Random) -> ClipPlan:
    """The draws of `frames_of`, as ShapesWorld's: background, each object's fill, then the noise."""
    bg = tuple(rng.randint(20, 45) for _ in range(3))
    fills = tuple(tuple(max(0, min(255, v + rng.randint(-15, 15))) for v in COLORS[o.color]) for o in objs)
    return ClipPlan(tuple(objs), bg, fills, rng.getrandbits(64))


def frames_of(plan: ClipPlan) -> list[Image.Image]:
    """The clip's FRAMES frames, each drawn supersampled, downsampled and noised as ShapesWorld's."""
    frames = []
    for t in range(FRAMES):
        im = Image.new("RGB", (IMAGE_SIZE * _SS, IMAGE_SIZE * _SS), plan.background)
        canvas = ImageDraw.Draw(im)
        for o, fill in zip(plan.objects, plan.fills):
            cx, cy, visible = object_state(o, t)
            if visible:
                draw_shape(canvas, o.shape, cx * _SS, cy * _SS, SIZES[o.size] / 2 * _SS, fill)
        frames.append(finish(im, plan.noise_seed + t))
    return frames


def write_video(path: str | Path, frames: list[Image.Image], fps: int = FPS) -> None:
    """An MP4 of `frames`: H.264 (yuv420p, CRF 17, x264's veryfast preset: half the encoding time of
    its default and the same fidelity, 33 dB PSNR, on these clips), or MPEG-4 Part 2 at a high
    bitrate where this FFmpeg lacks libx264. Written under a temporary name and renamed, so no clip is half-written."""
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    x264 = "libx264" in av.codecs_available
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264" if x264 else "mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.thread_count = 1  # one clip is tiny; the clips run in parallel processes instead
        if x264:
            stream.options = {"crf": "17", "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        for t, im in enumerate(frames):
            # Converted here: left to encode(), the conversion varied with the heap (the same frames
            # gave different clips now and then); converted first, the clip is the same every time.
            frame = av.VideoFrame.from_image(im).reformat(format="yuv420p")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush: the encoder holds frames back for lookahead
    os.replace(tmp, path)


def _encode_all(jobs: list[tuple[ClipPlan, str]]) -> int:
    for plan, path in jobs:
        write_video(path, frames_of(plan))
    return len(jobs)


def generate(out: str | Path, split: Literal["train", "val", "test", "novel"] = "train", n: int = 1000,
             seed: int = 0, questions_per_clip: int = 3, progress: bool = True) -> Path:
    """Write `n` clips and OUT/manifest.jsonl: a caption and `questions_per_clip` questions per clip.
    Every draw is made here, before the clips are encoded over the cores, so they do not depend on
    the worker count."""
    if split not in SPLITS:
        raise ValueError(f"unknown MovingShapes split {split!r}; choose from {list(SPLITS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if questions_per_clip < 0:
        raise ValueError(f"questions_per_clip must be non-negative, got {questions_per_clip}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"movingshapes/{split}/{seed}")  # str seeds are hashed stably (sha512)
    jobs: list[tuple[ClipPlan, str]] = []
    tmp = out / "manifest.jsonl.tmp"
    with tmp.open("w") as f:
        for i in range(n):
            objs = sample_clip(rng, split)
            uid = f"{split}-{seed}-{i:06d}"
            rel = f"videos/{uid}.mp4"
            jobs.append((plan_clip(objs, rng), str(out / rel)))
            rows = [{"id": f"{uid}-cap", "video": rel, "task": "video_caption", "prompt": VIDEO_CAPTION_PROMPT,
                     "target": caption(objs)}]
            for j, (qtype, q, a) in enumerate(questions(objs, rng, questions_per_clip)):
                rows.append({"id": f"{uid}-q{j}", "video": rel, "task": "video_qa", "prompt": q, "target": a,
                             "question_type": qtype})
            base = {"split": split, "objects": [{**asdict(o), "boxes": track_boxes(o)} for o in objs]}
            for row in rows:
                f.write(json.dumps({**row, **base}) + "\n")
    run_chunks(_encode_all, jobs, f"motion {split}", "clip", progress, chunk=25)
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "movingshapes", "version": VERSION, "split": split, "n": n,
                                                "seed": seed, "questions_per_clip": questions_per_clip,
                                                "frames": FRAMES, "fps": FPS}) + "\n")
    return out / "manifest.jsonl"
