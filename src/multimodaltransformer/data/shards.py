"""WebDataset tar shards: write a manifest as shards, read shards back as Examples.

A shard `shard-000000.tar` holds one sample per example, its members named KEY.EXT:
  KEY.png / KEY.jpg ...   the image file's bytes, as they were on disk
  KEY.wav / KEY.flac ...  the audio file's bytes
  KEY.json                the row: id, task, prompt, target, text and the manifest's other fields
The json member is written last, so a sample cut short by a truncated shard has no json and is
reported instead of read without its image. `shards.json` next to the shards lists them with
their sample counts (a shard that ends early is noticed). Shards are read with `webdataset`
(local paths, brace patterns, pipe:, http(s):, file: ...); images stay encoded in memory as
`MediaBytes` and are decoded when batched (`decode_image`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from PIL import Image

from ..modalities.base import MediaBytes, MediaError
from ..modalities.image import load_image
from .manifest import DataError, Example, example_from_row, read_manifest

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff", "ppm")
AUDIO_EXTS = ("wav", "flac", "mp3", "ogg", "opus", "m4a")
INFO = "shards.json"
VERSION = 1


def decode_image(media: MediaBytes) -> Image.Image:
    """Decode fully (so corruption surfaces here, not later) as RGB; MediaError names the media."""
    return load_image(media.data, media.name)


def open_media(x: MediaBytes | Image.Image | str | Path) -> Image.Image:
    """An RGB PIL image from in-memory bytes, a PIL image or a file path."""
    if isinstance(x, MediaBytes):
        return decode_image(x)
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    return load_image(x)


def intern_media(pool: dict[bytes, MediaBytes], data: bytes, name: str, image: bool) -> MediaBytes:
    """One MediaBytes per distinct content (examples sharing an image share memory and cache entry);
    an image is decoded once here so that a corrupt one is caught when the data is read."""
    digest = hashlib.blake2b(data, digest_size=16).digest()
    if digest not in pool:
        media = MediaBytes(data, name)
        if image:
            decode_image(media)
        pool[digest] = media
    return pool[digest]


def row_to_example(row: Any, where: str, image: MediaBytes | None = None, audio: MediaBytes | None = None,
                   default_id: str | None = None) -> Example:
    """A sample's json (or a dataset row) validated like a manifest line; empty fields count as absent."""
    if isinstance(row, dict):
        row = {k: v for k, v in row.items() if v is not None and k not in ("image", "audio")}
    return example_from_row(row, where, image=image, audio=audio, default_id=default_id)


# ---- writing -------------------------------------------------------------------------------------------

def _members(i: int, ex: Example) -> list[tuple[str, bytes]]:
    """The tar members of example `i`: media first, json last."""
    key = f"{i:09d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', ex.id)[:64]}"  # no dots: webdataset splits there
    members = []
    for what, path, exts in (("image", ex.image, IMAGE_EXTS), ("audio", ex.audio, AUDIO_EXTS)):
        if path is None:
            continue
        ext = Path(path).suffix.lower().lstrip(".")
        if ext not in exts:
            raise DataError(f"{ex.source}: {what} {path}: shards take {', '.join(exts)} files")
        try:
            members.append((f"{key}.{ext}", Path(path).read_bytes()))
        except OSError as e:
            raise DataError(f"{ex.source}: cannot read {what} {path}: {e}") from e
    row = {"id": ex.id, "task": ex.task, "prompt": ex.prompt, "target": ex.target, "text": ex.text, **ex.meta}
    members.append((f"{key}.json", json.dumps(row, ensure_ascii=False).encode()))
    return members


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0: the same manifest gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(manifest: str | Path, out: str | Path, shard_size: int, progress: bool = True) -> list[Path]:
    """Write a manifest's examples as `out/shard-000000.tar`, ... (`shard_size` samples each) and
    `out/shards.json`. Written under a temporary folder and renamed, so `out` is never half-written;
    an `out` holding an older shards.json is replaced."""
    from tqdm import tqdm

    if shard_size <= 0:
        raise DataError(f"shard size must be positive, got {shard_size}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / INFO).is_file():
        raise DataError(f"{out} is not empty and holds no {INFO}: choose a new or empty directory")
    source = Path(manifest).expanduser()
    source = source / "manifest.jsonl" if source.is_dir() else source
    examples = read_manifest(source, require_target=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on `out`
    try:
        names, counts = [], []
        with tqdm(total=len(examples), desc=f"sharding into {out}", unit="ex", disable=not progress) as bar:
            for start in range(0, len(examples), shard_size):
                names.append(f"shard-{len(names):06d}.tar")
                chunk = examples[start:start + shard_size]
                with tarfile.open(tmp / names[-1], "w") as tar:
                    for i, ex in enumerate(chunk, start):
                        for name, data in _members(i, ex):
                            _add(tar, name, data)
                        bar.update()
                counts.append(len(chunk))
        info = {"version": VERSION, "samples": len(examples), "shard_size": shard_size, "shards": names,
                "counts": counts, "source": str(source.resolve())}
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():  # empty, or older shards: move aside, move in, then delete
            old = tmp.with_name(tmp.name.replace(".tmp-", ".old-"))
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / name for name in names]


# ---- reading -------------------------------------------------------------------------------------------

def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError as e:
        raise DataError(f"reading shards needs webdataset: pip install 'multimodaltransformer[data]' ({e})") from e
    return webdataset


def _is_local(url: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", url) is None  # no scheme (pipe:, http:, file: ...)


def shard_urls(urls: str | Path | list[str]) -> list[str]:
    """Every shard of `urls`: a directory (the shards its shards.json lists, else its *.tar), brace
    patterns (`dir/shard-{000000..000003}.tar`), '::'-joined lists, single paths or URLs."""
    wds = _webdataset()
    found = []
    for item in [str(urls)] if isinstance(urls, (str, Path)) else [str(u) for u in urls]:
        folder = Path(item).expanduser()
        if _is_local(item) and folder.is_dir():
            if (folder / INFO).is_file():
                found += [str(folder / n) for n in json.loads((folder / INFO).read_text())["shards"]]
            else:
                tars = sorted(str(p) for p in folder.glob("*.tar"))
                if not tars:
                    raise DataError(f"{folder}: no {INFO} and no .tar files")
                found += tars
        else:
            found += wds.shardlists.expand_urls(item)
    for url in found:
        if _is_local(url) and not Path(url).expanduser().is_file():
            raise DataError(f"shard not found: {url}")
    if not found:
        raise DataError(f"no shards in {urls!r}")
    return found


def _expected_count(url: str, infos: dict[Path, dict]) -> int | None:
    """The sample count shards.json records for a local shard (None if unknown)."""
    if not _is_local(url):
        return None
    path = Path(url).expanduser()
    if path.parent not in infos:
        info = path.parent / INFO
        infos[path.parent] = json.loads(info.read_text()) if info.is_file() else {}
    info = infos[path.parent]
    names = info.get("shards", [])
    return info["counts"][names.index(path.name)] if path.name in names and "counts" in info else None


def _describe(exn: BaseException) -> str:
    msg = str(exn.args[0]).split(" @ ")[0] if exn.args else ""  # webdataset appends " @ stream" and more args
    return f"{type(exn).__name__}: {msg}" if msg else type(exn).__name__


def _samples(url: str, errors: list[BaseException]) -> Iterator[dict[str, Any]]:
    """The samples of one shard, through webdataset; tar errors go to `errors` (the shard stops there)."""
    wds = _webdataset()

    def handler(exn: BaseException) -> bool:
        errors.append(exn)
        return True

    try:
        stream = wds.gopen(url)
    except Exception as e:  # any opener's failure (file, pipe, curl)
        errors.append(e)
        return
    try:
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        yield from wds.tariterators.group_by_keys(files, handler=handler)
    finally:
        try:
            stream.close()  # a pipe: stream reports its command's failure here
        except Exception as e:
            errors.append(e)


def _sample_to_example(sample: dict[str, Any], url: str, pool: dict[bytes, MediaBytes], check: bool = True
                       ) -> Example:
    """A sample as an Example; with `check`, its image is decoded once here (corruption found now)."""
    where = f"{url}/{sample['__key__']}"
    if "json" not in sample:
        raise DataError(f"{where}: no json member (an incomplete sample)")
    try:
        row = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}.json: invalid JSON ({e})") from e
    media: dict[str, MediaBytes] = {}
    for kind, exts in (("image", IMAGE_EXTS), ("audio", AUDIO_EXTS)):
        found = [ext for ext in exts if ext in sample]
        if len(found) > 1:
            raise DataError(f"{where}: several {kind} members ({', '.join(found)})")
        if found:
            try:
                media[kind] = intern_media(pool, sample[found[0]], f"{where}.{found[0]}", image=check and kind == "image")
            except MediaError as e:
                raise DataError(str(e)) from e
    return row_to_example(row, where, image=media.get("image"), audio=media.get("audio"))


def read_shards(urls: str | Path | list[str], rank: int = 0, world: int = 1, skip_bad: bool = False,
                progress: bool = False) -> tuple[list[Example], list[str]]:
    """This rank's examples (shards rank::world) and the messages of the samples skipped. Bad samples
    (bad json, missing fields, undecodable images) and unreadable or short shards raise DataError
    naming shard and key, or with `skip_bad` are skipped and reported."""
    from tqdm import tqdm

    if not 0 <= rank < world:
        raise DataError(f"rank {rank} is not in 0..{world - 1}")
    shards = shard_urls(urls)
    if len(shards) < world:
        raise DataError(f"{len(shards)} shard(s) for {world} ranks: write smaller shards "
                        "(mmt data shard --shard-size) so that every rank gets one")
    examples: list[Example] = []
    skipped: list[str] = []
    pool: dict[bytes, MediaBytes] = {}
    infos: dict[Path, dict] = {}

    def bad(msg: str) -> None:
        if not skip_bad:
            raise DataError(msg)
        skipped.append(msg)

    with tqdm(desc="reading shards", unit="ex", disable=not progress) as bar:
        for url in shards[rank::world]:
            errors: list[BaseException] = []
            seen, last = 0, None
            with closing(_samples(url, errors)) as samples:
                for sample in samples:  # samples complete before a tar error are kept
                    seen, last = seen + 1, sample["__key__"]
                    try:
                        examples.append(_sample_to_example(sample, url, pool))
                    except DataError as e:
                        bad(str(e))
                    bar.update()
            expected = _expected_count(url, infos)
            lost = f" ({expected - seen} of {expected} samples lost)" if expected and seen < expected else ""
            if errors:
                bad(f"{url}: unreadable tar data (last sample read: {last!r}): {_describe(errors[0])}{lost}")
            elif lost:
                bad(f"{url}: ends early{lost}; truncated shard?")
    if not examples:
        raise DataError(f"no usable examples in {urls!r}" + (f"; first problem: {skipped[0]}" if skipped else ""))
    return examples, skipped
