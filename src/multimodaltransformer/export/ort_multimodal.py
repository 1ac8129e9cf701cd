"""onnxruntime behind the generation interface: an exported multimodal model (onnx_multimodal.py)
answers `predict` / `generate` as the PyTorch model does, with no PyTorch model involved.

`OrtMultimodalLM` offers what generation/interface.py asks of a generative model (`embed`,
`embed_tokens`, `new_cache`, `decode_step`), each a call of one ONNX graph, so the prompt
encoding (`prompt_batch`), the image processor (rebuilt from the exported config.json), the
grouping and batching of `evaluate.predict`, the session, the logits processors and the search
are the library's own, not copies. The cache is the engine's preallocated one (B, G, L, D); a
decode step feeds its filled slots as the graph's past and writes the graph's new slots back.
Legend: B batch, T new tokens, L cache slots, G key/value heads, D head dim, N image tokens, C dim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import from_dict
from ..data.manifest import Example, read_manifest
from ..fusion import uses_cross_attention
from ..modalities.image import image_processor
from ..modalities.text import TextTokenizer
from ..models.multimodal import MultimodalTransformer
from ..nn.cache import DecodeCache, KVCache, LayerCache
from ..nn.sequence import Embedded
from . import ExportError
from .onnx_multimodal import DECODER_FILE, EMBED_FILE, VISION_FILE
from .ort_generate import _onnxruntime, _read_json, write_predictions


def is_multimodal_export(directory: str | Path) -> bool:
    return _read_json(Path(directory) / "export.json").get("kind") == "multimodal"


class OrtCache(DecodeCache):
    """The engine's self-attention buffers, plus the image features a cross-attention decoder
    re-reads at every step (kept through the row selection of beams and samples)."""

    def __init__(self, layers: list[LayerCache], length: int, context: Tensor | None = None) -> None:
        super().__init__(layers, length)
        self.context = context  # (B, M, C) or None

    def select(self, rows: Tensor) -> "OrtCache":
        c = super().select(rows)
        return OrtCache(c.layers, c.length, None if self.context is None else self.context[rows])

    def concat(self, other: "DecodeCache") -> "OrtCache":
        c = super().concat(other)
        context = None if self.context is None else torch.cat([self.context, other.context])
        return OrtCache(c.layers, c.length, context)


class OrtMultimodalLM:
    """An exported multimodal model directory run by onnxruntime, as a generative model."""

    training = False  # evaluate.predict toggles eval / train mode: no-ops here
    is_late_fusion = is_dual_encoder = False

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        if not is_multimodal_export(directory):
            raise FileNotFoundError(f"{directory / 'export.json'}: not a multimodal ONNX export "
                                    "(mmt export --format onnx)")
        self.config = from_dict(MultimodalTransformer, json.loads((directory / "config.json").read_text()),
                                str(directory / "config.json"))
        self.tokenizer = TextTokenizer.from_pretrained(directory)
        self.image_processor = image_processor(self.config.image)
        self.processors = {"image": self.image_processor}
        self.head_labels: dict[str, list[str]] = {}  # the task heads are not exported: every task generates
        self.cross = uses_cross_attention(self.config.fusion)
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.vision, self.embedder, self.decoder = (
            ort.InferenceSession(str(directory / f), options, providers=["CPUExecutionProvider"])
            for f in (VISION_FILE, EMBED_FILE, DECODER_FILE))
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        first = next(i for i in self.decoder.get_inputs() if i.name == self.past_names[0])
        self.kv_heads, self.head_dim = first.shape[1], first.shape[3]

    @property
    def max_seq_len(self) -> int:
        return self.config.decoder.max_seq_len

    @property
    def num_media_tokens(self) -> int:
        return self.config.num_media_tokens

    def eval(self) -> "OrtMultimodalLM":
        return self

    def train(self, mode: bool = True) -> "OrtMultimodalLM":
        return self

    def parameters(self) -> Iterator[Tensor]:
        """evaluate.predict reads the device from the first parameter: onnxruntime runs on the CPU."""
        yield torch.empty(0)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, C) embeddings."""
        return torch.from_numpy(self.embedder.run(None, {"input_ids": _np(input_ids.long())})[0])

    def image_features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, C): what the decoder reads (prefix or encoder_hidden_states)."""
        return torch.from_numpy(self.vision.run(None, {"pixel_values": _np(pixel_values.float())})[0])

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
              media_mask: dict[str, Tensor] | None = None, **media: Tensor) -> Embedded:
        """As MultimodalLM.embed for one image per row: a prefix in front of the text, or memory."""
        if media or media_mask:
            raise ExportError("this ONNX export reads one image per row (no other media, no rows without it)")
        text = self.embed_tokens(input_ids)
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if pixel_values is None:
            if self.cross:
                raise ExportError(f"this export's decoder reads image features ({self.config.fusion.type} fusion): "
                                  "every prompt needs an image")
            return Embedded(text, mask)
        features = self.image_features(pixel_values)
        if self.cross:
            return Embedded(text, mask, features)
        prefix_mask = torch.ones(features.shape[:2], dtype=torch.bool)
        return Embedded(torch.cat([features, text], 1), torch.cat([prefix_mask, mask], 1))

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> OrtCache:
        layers = [LayerCache(KVCache(batch, self.kv_heads, max_len, self.head_dim, torch.float32))
                  for _ in range(len(self.past_names) // 2)]
        return OrtCache(layers, max_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: OrtCache) -> Tensor:
        """x (B, T, C) at slots start..start+T -> logits (B, T, V); the cache's slots < start are the past."""
        T = x.shape[1]
        if context is not None:
            cache.context = context  # the prefill's image features, for every later step
        feed = {"inputs_embeds": _np(x), "attention_mask": _np(key_mask[:, :start + T].long()),
                "position_ids": _np(positions.long())}
        if self.cross:
            feed["encoder_hidden_states"] = _np(cache.context)
        buffers = cache.self_buffers()
        feed |= {name: _np(buf[:, :, :start]) for name, buf in zip(self.past_names, buffers)}
        logits, *present = self.decoder.run(None, feed)
        for buf, new in zip(buffers, present):
            buf[:, :, start:start + T] = torch.from_numpy(new[:, :, start:])
        return torch.from_numpy(logits)


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def run_multimodal_cli(model_dir: str, prompt: str | None, text: str | None, image: str | None, data: str | None,
                       out: str | None, max_new_tokens: int, batch_size: int, generation_kwargs: dict[str, Any],
                       other_media: list[str]) -> None:
    """`mmt generate OUT --backend onnxruntime` of a multimodal export: --image + --prompt, or --data."""
    from ..evaluate import predict

    if other_media:
        raise ExportError(f"this ONNX export reads images only: {', '.join(other_media)} cannot be given")
    model = OrtMultimodalLM(model_dir)
    kwargs = {"max_new_tokens": max_new_tokens, "generation_kwargs": generation_kwargs}
    if data:
        if not out:
            raise ExportError("--data needs --out PRED.jsonl")
        examples = read_manifest(data, require_target=False)
        bad = [ex.id for ex in examples if ex.audio is not None or ex.video is not None]
        if bad:
            raise ExportError(f"{data}: examples {bad[:5]} have audio or video; this ONNX export reads images only")
        headed = sorted({ex.task for ex in examples} & set(model.config.heads.classes))
        if headed:
            raise ExportError(f"{data}: tasks {headed} are answered by classification heads, which the ONNX "
                              "export does not hold (it generates)")
        write_predictions(out, examples, predict(model, examples, batch_size=batch_size, progress=True, **kwargs))
        return
    if prompt is None:
        raise ExportError("give --prompt TEXT with --image PATH, or --data MANIFEST --out PRED.jsonl")
    if image is None:
        raise ExportError("this model needs an image: pass --image PATH")
    if not Path(image).is_file():
        raise ExportError(f"image file not found: {image}")
    ex = Example(id="cli", task="generate", prompt=prompt, target=None, text=text, source=f"--image {image}",
                 image=Path(image))
    print(predict(model, [ex], **kwargs)[0])
