"""Data sources: a string naming examples, read by `read_source`.

A source is one of
  a manifest path (or its folder)                                   read_manifest
  a built-in spec `NAME:key=value,...`, generated into a manifest:   resolve_source + read_manifest
    shapes:split=train,n=2000,seed=0[,questions=3][,tasks=caption+vqa+retrieval][,counts=0][,matches=1][,opposite=0]
    reviews:split=train,n=2000,seed=0
    spoken:split=train,n=1000,seed=0[,questions=2]  (SpokenShapes: ShapesWorld spoken by eSpeak NG)
    prose:split=train,n=1000,seed=0                  (SpokenProse: English sentences read by eSpeak NG)
    motion:split=train,n=1000,seed=0[,questions=3]  (MovingShapes: 16-frame MP4 clips of moving shapes)
    fashion:split=train,n=60000,seed=0[,idx=DIR][,chat=K]  (Fashion-MNIST from its IDX files; n=0: the
                                                     whole split; idx: default the Debian package's
                                                     folder; chat: K "chat" rows per image)
  WebDataset shards: `wds:URLS`, a path or pattern ending in .tar    shards.read_shards
    (`dir/shard-{000000..000009}.tar`), or a folder with shards.json
  a Hugging Face `save_to_disk` folder: `hf:DIR` (a DatasetDict's    hf.read_hf_dataset
    split: `hf:DIR/SPLIT`, default train), or a folder holding dataset_info.json / dataset_dict.json
A spec is generated once into CACHE_DIR/<dataset>/<name from its values>; a cached copy written by
an older generator version (its info.json says) is regenerated. Shards and Hugging Face rows are
split across ranks; manifests and built-ins are read whole (the trainer slices their batches).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .manifest import DataError, Example, read_manifest_and_skipped

Spec = dict[str, str | int]


def parse_spec(spec: str) -> tuple[str, Spec]:
    """`shapes:split=val,n=7` -> ("shapes", {"split": "val", "n": 7, "seed": 0, ...}), defaults filled in."""
    name, _, body = spec.partition(":")
    if name not in BUILTINS:
        raise DataError(f"data source {spec!r}: unknown dataset {name!r} (built-in: {', '.join(BUILTINS)})")
    args = dict(BUILTINS[name][0])
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key not in args:
            raise DataError(f"data source {spec!r}: unknown key {key!r} (use {', '.join(args)})")
        if isinstance(args[key], int):
            try:
                args[key] = int(value)
            except ValueError as e:
                raise DataError(f"data source {spec!r}: {key} must be an integer") from e
        else:
            args[key] = value
    return name, args


def _check_split(spec: str, split: str | int, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise DataError(f"data source {spec!r}: unknown split {split!r} (use {', '.join(splits)})")


def _is_current(out: Path, version: int) -> bool:
    """A cached dataset is reused if complete and written by this generator version."""
    info = out / "info.json"
    if not (out / "manifest.jsonl").is_file() or not info.is_file():
        return False
    return json.loads(info.read_text()).get("version") == version


def _shapes(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import shapes

    _check_split(spec, a["split"], shapes.SPLITS)
    try:
        tasks = shapes.check_tasks(None if a["tasks"] == "all" else str(a["tasks"]).split("+"))
    except ValueError as e:
        raise DataError(f"data source {spec!r}: {e}") from e
    if a["opposite"] not in (0, 1):  # a flag here; counts and matches are checked by generate
        raise DataError(f"data source {spec!r}: opposite must be 0 or 1")
    name = f"{a['split']}-n{a['n']}-seed{a['seed']}" + (f"-q{a['questions']}" if a["questions"] != 3 else "")
    name += (f"-c{a['counts']}" if a["counts"] else "") + (f"-m{a['matches']}" if a["matches"] != 1 else "")
    name += "-o" if a["opposite"] else ""
    name += f"-{'+'.join(tasks)}" if tasks != shapes.TASKS else ""
    out = root / "shapesworld" / name
    if not _is_current(out, shapes.VERSION):
        try:  # bad values raise before anything is written
            shapes.generate(out, split=a["split"], n=int(a["n"]), seed=int(a["seed"]),  # type: ignore[arg-type]
                            questions_per_image=int(a["questions"]), progress=progress, tasks=tasks,
                            counts=int(a["counts"]), matches=int(a["matches"]), opposite=bool(a["opposite"]))
        except ValueError as e:
            raise DataError(f"data source {spec!r}: {e}") from e
    return out / "manifest.jsonl"


def _reviews(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import reviews

    _check_split(spec, a["split"], reviews.SPLITS)
    out = root / "reviews" / f"{a['split']}-n{a['n']}-seed{a['seed']}"
    if not _is_current(out, reviews.VERSION):
        reviews.generate(out, split=a["split"], n=int(a["n"]), seed=int(a["seed"]),  # type: ignore[arg-type]
                         progress=progress)
    return out / "manifest.jsonl"


def _generated(spec: str, a: Spec, root: Path, progress: bool, dataset: str, module: Any, questions: str) -> Path:
    """A split of a generator built on ShapesWorld (`module.generate`), cached under root/dataset."""
    from .shapes import SPLITS

    _check_split(spec, a["split"], SPLITS)
    out = root / dataset / f"{a['split']}-n{a['n']}-seed{a['seed']}-q{a['questions']}"
    if not _is_current(out, module.VERSION):
        module.generate(out, split=a["split"], n=int(a["n"]), seed=int(a["seed"]), progress=progress,
                        **{questions: int(a["questions"])})
    return out / "manifest.jsonl"


def _spoken(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import spoken

    return _generated(spec, a, root, progress, "spokenshapes", spoken, "questions_per_image")


def _prose(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import prose

    _check_split(spec, a["split"], prose.SPLITS)
    out = root / "spokenprose" / f"{a['split']}-n{a['n']}-seed{a['seed']}"
    if not _is_current(out, prose.VERSION):
        try:
            prose.generate(out, split=a["split"], n=int(a["n"]), seed=int(a["seed"]),  # type: ignore[arg-type]
                           progress=progress)
        except ValueError as e:
            raise DataError(f"data source {spec!r}: {e}") from e
    return out / "manifest.jsonl"


def _motion(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import motion

    return _generated(spec, a, root, progress, "movingshapes", motion, "questions_per_clip")


def _fashion(spec: str, a: Spec, root: Path, progress: bool) -> Path:
    from . import fashion

    _check_split(spec, a["split"], fashion.SPLITS)
    name = f"{a['split']}-n{a['n'] or 'all'}-seed{a['seed']}" + (f"-chat{a['chat']}" if a["chat"] else "")
    if a["idx"]:  # other files, another cache
        name += "-" + hashlib.sha1(str(Path(str(a["idx"])).expanduser().resolve()).encode()).hexdigest()[:8]
    out = root / "fashion-mnist" / name
    if not _is_current(out, fashion.VERSION):
        fashion.generate(out, split=a["split"], n=int(a["n"]) or None, seed=int(a["seed"]),  # type: ignore[arg-type]
                         idx=str(a["idx"]) or None, progress=progress, chat=int(a["chat"]))
    return out / "manifest.jsonl"


# Each built-in: its keys with their defaults (a default's type is the value's type), and its builder.
BUILTINS: dict[str, tuple[Spec, Callable[[str, Spec, Path, bool], Path]]] = {
    "shapes": ({"split": "train", "n": 1000, "seed": 0, "questions": 3, "tasks": "all", "counts": 0, "matches": 1,
                "opposite": 0},
               _shapes),
    "reviews": ({"split": "train", "n": 2000, "seed": 0}, _reviews),
    "spoken": ({"split": "train", "n": 1000, "seed": 0, "questions": 2}, _spoken),
    "prose": ({"split": "train", "n": 1000, "seed": 0}, _prose),
    "motion": ({"split": "train", "n": 1000, "seed": 0, "questions": 3}, _motion),
    "fashion": ({"split": "train", "n": 0, "seed": 0, "idx": "", "chat": 0}, _fashion),
}


def resolve_source(spec: str, cache_dir: str | Path, progress: bool = True) -> Path:
    """A manifest path as is, or a built-in spec generated once into `cache_dir`."""
    name, colon, _ = spec.partition(":")
    if colon and name in BUILTINS:
        name, args = parse_spec(spec)
        return BUILTINS[name][1](spec, args, Path(cache_dir).expanduser(), progress)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    return path


def is_shard_source(spec: str) -> bool:
    """A tar path or pattern, or a directory holding shards.json (without the wds: prefix)."""
    path = Path(spec).expanduser()
    return spec.endswith((".tar", ".tar.gz", ".tgz")) or (path.is_dir() and (path / "shards.json").is_file())


def _is_hf(spec: str) -> bool:
    path = Path(spec).expanduser()
    return path.is_dir() and any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))


def read_source(spec: str, cache_dir: str | Path, progress: bool = True, skip_bad: bool = False, rank: int = 0,
                world: int = 1) -> tuple[list[Example], list[str]]:
    """The examples of a source (see the module docstring) and the messages of those skipped with
    `skip_bad` (a manifest's lines that failed to parse; a shard's or dataset's unusable samples)."""
    if spec.startswith("wds:") or is_shard_source(spec):
        from .shards import read_shards

        return read_shards(spec.removeprefix("wds:"), rank=rank, world=world, skip_bad=skip_bad, progress=progress)
    if spec.startswith("hf:") or _is_hf(spec):
        from .hf import read_hf_dataset

        return read_hf_dataset(spec.removeprefix("hf:"), rank=rank, world=world, skip_bad=skip_bad)
    return read_manifest_and_skipped(resolve_source(spec, cache_dir, progress), skip_bad=skip_bad)
