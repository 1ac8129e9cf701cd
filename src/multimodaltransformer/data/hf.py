"""Hugging Face `datasets` directories (written by `save_to_disk`) as Examples.

Columns: `task` (required), `target` and/or `text` (one of them required), `id` and `prompt`
(optional strings), `image` (an Image feature, encoded bytes, {"bytes", "path"} or a file path) and
`audio` (an Audio feature, bytes, {"bytes", "path"} or a path), optional; other columns go to
`Example.meta`. Media stay encoded in memory (`MediaBytes`, as for shards); a PIL image is stored as PNG.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from ..modalities.image import MediaError
from .manifest import DataError, Example
from .shards import MediaBytes, intern_media, row_to_example


def _media(value: Any, name: str, root: Path, pool: dict[bytes, MediaBytes], image: bool) -> MediaBytes | None:
    """One image/audio cell as MediaBytes: PIL image, bytes, {"bytes", "path"} or a path (relative: to `root`)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        return None
    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        value = buf.getvalue()
    elif isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else root / value
        try:
            value, name = path.read_bytes(), f"{name}{path.suffix}"
        except OSError as e:
            raise DataError(f"{name}: cannot read {path}: {e}") from e
    if not isinstance(value, bytes):
        raise DataError(f"{name}: expected an image/audio cell (bytes, path, dict or PIL image), "
                        f"got {type(value).__name__}")
    try:
        return intern_media(pool, value, name, image)
    except MediaError as e:
        raise DataError(str(e)) from e


def read_hf_dataset(path: str | Path, split: str | None = None, rank: int = 0, world: int = 1,
                    skip_bad: bool = False) -> tuple[list[Example], list[str]]:
    """This rank's examples (rows rank::world) of a saved Dataset, or of one split of a saved DatasetDict
    (default "train"), and the messages of the rows skipped (bad rows raise DataError without `skip_bad`)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"reading {path} needs the datasets package: pip install 'multimodaltransformer[data]' "
                        f"(or pip install datasets) ({e})") from e
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"Hugging Face dataset directory not found: {root}")
    if not 0 <= rank < world:
        raise DataError(f"rank {rank} is not in 0..{world - 1}")
    try:
        ds = datasets.load_from_disk(str(root))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{root}: not a dataset written by save_to_disk ({e})") from e
    where = str(root)
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise DataError(f"{root}: no split {split!r} (splits: {', '.join(ds)})")
        ds, where = ds[split], f"{root}[{split}]"
    elif split is not None and ds.split is not None and str(ds.split) != split:
        raise DataError(f"{root} holds the {ds.split} split only, not {split!r}")
    columns = ds.column_names
    if "task" not in columns:
        raise DataError(f"{where}: missing required column 'task' (columns: {', '.join(columns)})")
    if "target" not in columns and "text" not in columns:
        raise DataError(f"{where}: needs a 'target' or 'text' column (columns: {', '.join(columns)})")
    for column, feature in (("image", datasets.Image), ("audio", datasets.Audio)):
        if column in columns and isinstance(ds.features[column], feature):
            ds = ds.cast_column(column, feature(decode=False))  # the stored bytes, not decoded arrays
    if world > 1:
        if len(ds) < world:
            raise DataError(f"{where}: {len(ds)} row(s) for {world} ranks")
        ds = ds.shard(num_shards=world, index=rank, contiguous=False)

    examples: list[Example] = []
    skipped: list[str] = []
    pool: dict[bytes, MediaBytes] = {}
    for i, row in enumerate(ds):
        index = rank + i * world
        src = f"{where}:row {index}"
        if isinstance(row.get("id"), int):
            row["id"] = str(row["id"])  # integer ids are common in Hugging Face datasets
        try:
            image = _media(row.pop("image", None), f"{src}/image", root, pool, image=True)
            audio = _media(row.pop("audio", None), f"{src}/audio", root, pool, image=False)
            examples.append(row_to_example(row, src, image=image, audio=audio, default_id=str(index)))
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    if not examples:
        raise DataError(f"{where}: no usable examples" + (f"; first problem: {skipped[0]}" if skipped else ""))
    return examples, skipped
