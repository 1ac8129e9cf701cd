"""Data: the manifest format, ShapesWorld, datasets and collators."""

from .collate import ManifestDataset, TrainCollator, encode_example, encode_prompt, prompt_batch
from .manifest import DataError, Example, read_manifest

__all__ = ["DataError", "Example", "ManifestDataset", "TrainCollator", "encode_example", "encode_prompt",
           "prompt_batch", "read_manifest"]
