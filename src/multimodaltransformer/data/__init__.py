"""Data: the manifest format, ShapesWorld, datasets and collators.

The built-in generators are modules here: `shapes`, `reviews`, `fashion` (imported with the package,
they need only numpy and pillow) and `spoken`, `prose`, `motion` (imported when first used: generating
their data needs the espeakng-loader package and PyAV).
"""

from importlib import import_module
from typing import Any

from . import fashion, reviews, shapes
from .collate import ManifestDataset, TrainCollator, encode_example, encode_prompt, prompt_batch
from .manifest import DataError, Example, read_manifest

__all__ = ["DataError", "Example", "ManifestDataset", "TrainCollator", "encode_example", "encode_prompt",
           "prompt_batch", "read_manifest", "fashion", "motion", "prose", "reviews", "shapes",
           "spoken"]


def __getattr__(name: str) -> Any:
    if name in ("motion", "prose", "spoken"):
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
