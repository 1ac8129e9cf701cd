"""The argparse wiring of `mmt data ...`: each subcommand writes one built-in or converted data set
(ShapesWorld, reviews, shards, SpokenShapes, MovingShapes, Fashion-MNIST); the work is done in data/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import ConfigError


def _cmd_data_shapes(a: argparse.Namespace) -> None:
    from . import shapes

    try:
        tasks = shapes.check_tasks(a.tasks.split("+")) if a.tasks else None
        path = shapes.generate(a.out, split=a.split, n=a.n, seed=a.seed, questions_per_image=a.questions,
                               tasks=tasks, counts=a.counts, matches=a.matches, opposite=a.opposite)
    except ValueError as e:  # bad tasks, n or extras: checked before anything is written
        raise ConfigError(str(e)) from e
    print(f"wrote {path}")


def _cmd_data_reviews(a: argparse.Namespace) -> None:
    from . import reviews

    path = reviews.generate(a.out, split=a.split, n=a.n, seed=a.seed)
    print(f"wrote {path}")


def _cmd_data_shard(a: argparse.Namespace) -> None:
    from .shards import INFO, write_shards

    paths = write_shards(a.manifest, a.out, shard_size=a.shard_size)
    out = paths[0].parent
    info = json.loads((out / INFO).read_text())
    print(f"wrote {info['samples']} samples in {len(paths)} shard(s) to {out}")


def _split_args(p: argparse.ArgumentParser, unit: str, questions: int, what: str) -> None:
    """The arguments of a built-in generator: split, how many, seed, questions, where."""
    p.add_argument("--split", choices=["train", "val", "test", "novel"], default="train")
    p.add_argument("--n", type=int, default=1000, help=f"number of {unit}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=int, default=questions, help=what)
    p.add_argument("--out", required=True)


def _cmd_data_spoken(a: argparse.Namespace) -> None:
    from . import spoken

    if a.n <= 0:
        raise ConfigError(f"--n must be positive, got {a.n}")
    path = spoken.generate(a.out, split=a.split, n=a.n, seed=a.seed, questions_per_image=a.questions)
    print(f"wrote {path}")


def _cmd_data_prose(a: argparse.Namespace) -> None:
    from . import prose

    if a.n <= 0:
        raise ConfigError(f"--n must be positive, got {a.n}")
    print(f"wrote {prose.generate(a.out, split=a.split, n=a.n, seed=a.seed)}")


def _cmd_data_motion(a: argparse.Namespace) -> None:
    from . import motion

    if a.n <= 0:
        raise ConfigError(f"--n must be positive, got {a.n}")
    if a.questions < 0:
        raise ConfigError(f"--questions must be non-negative, got {a.questions}")
    path = motion.generate(a.out, split=a.split, n=a.n, seed=a.seed, questions_per_clip=a.questions)
    print(f"wrote {path} ({a.n} clips in {Path(a.out) / 'videos'})")


def _cmd_data_fashion(a: argparse.Namespace) -> None:
    from . import fashion

    path = fashion.generate(a.out, split=a.split, n=a.n, seed=a.seed, idx=a.idx)
    print(f"wrote {path}")


def add_data_commands(sub: Any) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("shapes", help="write a ShapesWorld split (images + manifest.jsonl)")
    s.add_argument("--split", choices=["train", "val", "test", "novel"], default="train")
    s.add_argument("--n", type=int, default=1000, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--questions", type=int, default=3, help="questions per image")
    s.add_argument("--tasks", help="tasks to write, plus-separated (default: all of "
                   "caption+vqa+classify+retrieval+match)")
    s.add_argument("--counts", type=int, default=0,
                   help="extra 'how many <shape>s' questions per image (training data; default 0)")
    s.add_argument("--matches", type=int, default=1, choices=[1, 2],
                   help="match examples per image: 2 gives both the true caption and a near miss")
    s.add_argument("--opposite", action="store_true",
                   help="each yes/no question (exist, relation) also asked with the other answer")
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_data_shapes)
    r = data.add_parser("reviews", help="write a synthetic review-sentiment split (text only, manifest.jsonl)")
    r.add_argument("--split", choices=["train", "val", "test"], default="train")
    r.add_argument("--n", type=int, default=2000, help="number of reviews")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True)
    r.set_defaults(func=_cmd_data_reviews)
    sh = data.add_parser("shard", help="write a manifest as WebDataset tar shards (+ shards.json)")
    sh.add_argument("manifest", help="manifest.jsonl (or its folder)")
    sh.add_argument("--out", required=True, help="output directory (replaced if it holds older shards)")
    sh.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    sh.set_defaults(func=_cmd_data_shard)
    sp = data.add_parser("spoken", help="write a SpokenShapes split: ShapesWorld images, their captions and "
                         "questions spoken by eSpeak NG (16 kHz WAV), ASR and spoken-VQA manifest records")
    _split_args(sp, "images", questions=2, what="spoken questions per image")
    sp.set_defaults(func=_cmd_data_spoken)
    pr = data.add_parser("prose", help="write a SpokenProse split: English sentences of Python's documentation "
                         "read by eSpeak NG voices (16 kHz WAV), ASR manifest records")
    pr.add_argument("--split", choices=["train", "val", "test"], default="train")
    pr.add_argument("--n", type=int, default=1000, help="number of clips")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=_cmd_data_prose)
    mo = data.add_parser("motion", help="write a MovingShapes split: 16-frame MP4 clips of shapes that move, "
                         "appear or disappear, with video caption and video QA manifest records")
    _split_args(mo, "clips", questions=3, what="questions per clip")
    mo.set_defaults(func=_cmd_data_motion)
    fa = data.add_parser("fashion", help="write a Fashion-MNIST split from its IDX files: 28x28 PNG images, "
                         "classify, caption and vqa manifest records")
    fa.add_argument("--idx", help="folder of the IDX files, .gz or raw (default: the Debian package "
                    "dataset-fashion-mnist's, /usr/share/datasets/fashion-mnist)")
    fa.add_argument("--split", choices=["train", "test"], default="train")
    fa.add_argument("--n", type=int, help="a seeded random subset of this many images, every class in it "
                    "(default: the whole split)")
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--out", required=True)
    fa.set_defaults(func=_cmd_data_fashion)
