"""ImageNet-1k class names, shipped with the package (hub/imagenet_classes.txt: one name a line, in
class-index order, WordNet lemmas as timm and Hugging Face name them), since nothing is downloaded
at run time. Checkpoints that carry no labels of their own (a bare .pth state dict) take these."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 class names, index i -> name of class i ("tabby, tabby cat", "tiger cat" ...)."""
    names = files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    if len(names) != NUM_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected {NUM_CLASSES}: reinstall the package")
    return tuple(names)
