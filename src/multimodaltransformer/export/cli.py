"""The argparse wiring of `mmt export` and of `mmt generate --backend onnxruntime` (kept here, not in
cli.py, which is at its size limit); the work is done by export() and ort_generate.run_cli."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_export_commands(sub: Any) -> None:
    """`mmt export`; `--backend` on the already registered `mmt generate`."""
    x = sub.add_parser("export", help="write a model for another runtime: ONNX (onnxruntime, optimum layout), "
                       "a Hugging Face directory (transformers) or GGUF (llama.cpp)")
    x.add_argument("model", help="a model directory (ours or Hugging Face's) or a .gguf file")
    x.add_argument("--format", required=True, choices=["onnx", "hf", "gguf"])
    x.add_argument("--out", required=True, help="output directory (onnx, hf) or .gguf file")
    x.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"], help="q8_0: GGUF only")
    x.set_defaults(func=_cmd_export)

    g = sub.choices["generate"]
    g.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: MODEL is an ONNX export (mmt export --format onnx) of a decoder LM "
                   "or of a multimodal model (then --image / --data with images)")
    g.set_defaults(func=_backend(g.get_default("func")))


def _cmd_export(a: argparse.Namespace) -> None:
    from . import export

    print(f"wrote {export(a.model, a.format, a.out, a.dtype)}")


def _backend(torch_generate: Any) -> Any:
    """`mmt generate`'s command, sent to onnxruntime when --backend says so."""
    def run(a: argparse.Namespace) -> None:
        if a.backend != "onnxruntime":
            return torch_generate(a)
        from ..generation import GenerationConfig
        from . import ExportError
        from .ort_generate import run_cli
        from .ort_multimodal import is_multimodal_export, run_multimodal_cli

        # the flags named as GenerationConfig fields (--num-beams, --top-p ...), validated as for PyTorch
        kwargs = {f.name: getattr(a, f.name) for f in dataclasses.fields(GenerationConfig)
                  if hasattr(a, f.name) and f.name != "max_new_tokens"}
        try:
            GenerationConfig(**kwargs)
        except ValueError as e:
            raise ExportError(str(e)) from e
        media = [f"--{n}" for n in ("image", "audio", "video") if getattr(a, n, None)]
        if is_multimodal_export(a.model):  # vision_encoder + decoder (onnx_multimodal.py)
            return run_multimodal_cli(a.model, a.prompt, a.text, a.image, a.data, a.out, a.max_new_tokens,
                                      a.batch_size, kwargs, [m for m in media if m != "--image"])
        run_cli(a.model, a.prompt, a.data, a.out, a.max_new_tokens, a.batch_size, kwargs, media)

    return run
