"""`mmt export`: a model of this library written for another runtime (ONNX Runtime, `transformers`, llama.cpp).

One writer per format (hf.py, onnx.py, gguf.py), each `write(model, out, dtype)`; `export` loads the
model, checks that the format can hold it, and writes into a staging path that is renamed onto
`out` only when complete, so a failed export never leaves a half-written directory or file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal, get_args

from ..config import ConfigError

Format = Literal["onnx", "hf", "gguf"]
Dtype = Literal["f32", "f16", "q8_0"]
FORMATS: tuple[str, ...] = get_args(Format)
DTYPES: tuple[str, ...] = get_args(Dtype)

__all__ = ["DTYPES", "FORMATS", "ExportError", "export"]


class ExportError(ConfigError):
    """A model cannot be written in the asked format (which model or module, and why)."""


def export(model_path: str | Path, fmt: Format, out: str | Path, dtype: Dtype = "f32") -> Path:
    """Load `model_path` (anything `load_pretrained` reads) and write it as `fmt` at `out`."""
    from ..hub import load_pretrained
    from ..nn.lora import merge_lora

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    if dtype == "q8_0" and fmt != "gguf":
        raise ExportError(f"--dtype q8_0 is a GGUF quantisation; --format {fmt} takes f32 or f16")
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: choose another --out or remove it")
    model = merge_lora(load_pretrained(model_path)).float().eval()  # LoRA fine-tunes export as plain weights
    writer = _writer(fmt)
    staging = out.with_name(f".{out.name}.partial")
    _remove(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer(model, staging, dtype)
        _remove(out)  # an empty directory only (checked above)
        staging.rename(out)
    finally:
        _remove(staging)
    return out


def _writer(fmt: str):
    """The format's write(model, path, dtype); imported lazily (onnx, gguf are optional)."""
    if fmt == "hf":
        from .hf import write
    elif fmt == "onnx":
        from .onnx_multimodal import write  # the multimodal model's layout, else onnx.py's decoder LM
    else:
        from .gguf import write
    return write


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
