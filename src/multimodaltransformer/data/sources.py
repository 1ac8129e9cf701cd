"""Resolve a data source string to a manifest path, generating built-in datasets on demand."""

from __future__ import annotations

from pathlib import Path

from .manifest import DataError


def parse_shapes_spec(spec: str) -> dict[str, str | int]:
    """`shapes:split=train,n=2000,seed=0[,questions=3]` -> {"split": "train", "n": 2000, "seed": 0, ...}."""
    args: dict[str, str | int] = {"split": "train", "n": 1000, "seed": 0, "questions": 3}
    body = spec.split(":", 1)[1]
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in args:
            raise DataError(f"data source {spec!r}: unknown key {key!r} (use {', '.join(args)})")
        try:
            args[key] = value.strip() if key == "split" else int(value)
        except ValueError as e:
            raise DataError(f"data source {spec!r}: {key} must be an integer") from e
    return args


def resolve_source(spec: str, cache_dir: str | Path, progress: bool = True) -> Path:
    """A manifest path as is, or a ShapesWorld spec generated once into `cache_dir`."""
    if spec.startswith("shapes:"):
        from . import shapes

        a = parse_shapes_spec(spec)
        name = f"{a['split']}-n{a['n']}-seed{a['seed']}" + (f"-q{a['questions']}" if a["questions"] != 3 else "")
        out = Path(cache_dir).expanduser() / "shapesworld" / name
        if not (out / "manifest.jsonl").is_file():
            shapes.generate(out, split=a["split"], n=a["n"], seed=a["seed"],  # type: ignore[arg-type]
                            questions_per_image=int(a["questions"]), progress=progress)
        return out / "manifest.jsonl"
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    return path
