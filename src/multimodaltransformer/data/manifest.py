"""The on-disk format the library reads for any user data: a JSON-lines manifest.

One example per line:
  {"id": str, "task": str, "prompt": str, "target": str,
   "image": path relative to the manifest (optional), "audio": path (optional), "video": path
   (optional), "text": str (optional)}
Other keys are kept in `Example.meta`. Every error names the file and line.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A manifest line or a file it points to is invalid; the message names file and line."""


@dataclass
class Example:
    id: str
    task: str
    prompt: str
    target: str | None
    image: Path | None = None
    audio: Path | None = None
    video: Path | None = None
    text: str | None = None
    source: str = ""  # "manifest.jsonl:LINE", for error messages
    meta: dict[str, Any] = field(default_factory=dict)


TRANSCRIPTION_TASKS = ("asr", "transcribe", "transcription")  # a clip's transcript is the target

MEDIA_FIELDS = ("image", "audio", "video")  # the manifest fields that name a file
_STR_FIELDS = ("id", "task", "prompt", "target", "text", *MEDIA_FIELDS)


def example_from_row(row: Any, where: str, require_target: bool = False, image: Any = None, audio: Any = None,
                     default_id: str | None = None, video: Any = None) -> Example:
    """Validate one row (a manifest line's object, a shard's json, a dataset row) into an Example;
    `image` / `audio` / `video` are the row's media, already resolved (a path, or bytes held in memory)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if default_id is not None and row.get("id") is None:
        row = {**row, "id": default_id}
    for key in ("id", "task"):
        if row.get(key) is None:
            raise DataError(f"{where}: missing required field {key!r}")
    if require_target and row.get("target") is None:
        raise DataError(f"{where}: missing required field 'target'")
    for key in _STR_FIELDS:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    meta = {k: v for k, v in row.items() if k not in _STR_FIELDS}
    return Example(id=row["id"], task=row["task"], prompt=row.get("prompt") or "", target=row.get("target"),
                   image=image, audio=audio, video=video, text=row.get("text"), source=where, meta=meta)


def _parse(line: str, where: str, root: Path, require_target: bool) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from e
    paths = {}
    for key in MEDIA_FIELDS:
        value = row.get(key) if isinstance(row, dict) else None
        if value and isinstance(value, str):
            p = Path(value)
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise DataError(f"{where}: {key} file not found: {p}")
            paths[key] = p
    return example_from_row(row, where, require_target, paths.get("image"), paths.get("audio"),
                            video=paths.get("video"))


def read_manifest(path: str | Path, require_target: bool = True, skip_bad: bool = False) -> list[Example]:
    """Parse and validate a manifest. With `skip_bad`, bad lines are skipped and counted (warning)."""
    return read_manifest_and_skipped(path, require_target, skip_bad)[0]


def read_manifest_and_skipped(path: str | Path, require_target: bool = True,
                              skip_bad: bool = False) -> tuple[list[Example], list[str]]:
    """`read_manifest`, and the messages (each naming its line) of the lines skipped with `skip_bad`."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    examples, bad = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                examples.append(_parse(line, f"{path}:{lineno}", path.parent, require_target))
            except DataError as e:
                if not skip_bad:
                    raise
                bad.append(str(e))
    if bad:
        warnings.warn(f"skipped {len(bad)} bad line(s) in {path}; first: {bad[0]}", stacklevel=3)
    if not examples:
        raise DataError(f"{path}: no usable examples")
    return examples, bad
