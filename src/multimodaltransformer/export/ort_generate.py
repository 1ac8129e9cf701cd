"""Generation with onnxruntime over an exported `decoder_model_merged.onnx`: no PyTorch model involved.

The loop is the one transformers/optimum run: a prefill with an empty past (P = 0), then one token
per step with the returned `present.*` fed back as `past_key_values.*`. The next token is chosen by
this library's logits processors and search rule (generation/processors.py, search.py), so greedy
and sampled outputs follow the same options as `DecoderLM.generate`. Prompts are left-padded;
`position_ids` count real tokens only, as transformers does. Legend: B batch, T prompt length,
G key/value heads, D head dim, V vocab.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from ..generation.config import GenerationConfig, eos_list
from ..generation.processors import build_processors
from ..generation.search import choose
from . import ExportError
from .onnx import DECODER_FILE

NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError("the onnxruntime backend needs onnxruntime: pip install 'multimodaltransformer[export]'") from e
    return onnxruntime


class OrtDecoderLM:
    """An exported decoder LM directory run by onnxruntime: `generate` as `DecoderLM.generate`."""

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        directory = Path(directory)
        if not (directory / DECODER_FILE).is_file():
            raise FileNotFoundError(f"{directory / DECODER_FILE} not found: not an ONNX export (mmt export --format onnx)")
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(directory / DECODER_FILE), options, providers=["CPUExecutionProvider"])
        # the past's static dims (G, D) and dtype come from the graph, so optimum's own exports run too
        self.past_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        first = self.past_inputs[0]
        self.kv_shape, self.kv_dtype = (first.shape[1], first.shape[3]), NUMPY_DTYPES.get(first.type, np.float32)
        config = _read_json(directory / "generation_config.json") | _read_json(directory / "config.json")
        self.eos_token_id = config.get("eos_token_id")
        tok = directory / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tok)) if tok.is_file() else None

    def step(self, ids: Tensor, mask: Tensor, positions: Tensor, past: list[np.ndarray]) -> tuple[Tensor, list[np.ndarray]]:
        """ids (B, T) with the mask over past + new (B, P+T) -> last logits (B, V) and the new past."""
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position_ids": positions.numpy()}
        feed |= {i.name: p for i, p in zip(self.past_inputs, past)}
        logits, *present = self.session.run(None, feed)
        return torch.from_numpy(logits[:, -1]).float(), present

    def empty_past(self, batch: int) -> list[np.ndarray]:
        G, D = self.kv_shape
        return [np.zeros((batch, G, 0, D), dtype=self.kv_dtype) for _ in self.past_inputs]

    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Prompt (B, T), left-padded -> prompt + new tokens (B, T + n); rows that end early are
        padded with the first EOS id. kwargs: GenerationConfig fields (greedy or sampling)."""
        cfg = GenerationConfig.from_kwargs(**{"max_new_tokens": 20, **kwargs})
        if cfg.num_beams > 1 or cfg.num_return_sequences > 1:
            raise ExportError("the onnxruntime backend runs greedy search and sampling, one sequence per prompt; "
                              "beam search is not implemented there")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        eos = torch.tensor(eos_list(cfg.eos_token_id if cfg.eos_token_id is not None else self.eos_token_id))
        pads = (mask == 0).sum(1)
        processors = build_processors(cfg, input_ids.shape[1], eos, pads if pads.any() else None)
        generator = None if cfg.seed is None else torch.Generator().manual_seed(cfg.seed)
        ids, positions = input_ids.long(), (mask.cumsum(1) - 1).clamp(min=0)
        logits, past = self.step(ids, mask, positions, self.empty_past(ids.shape[0]))
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for i in range(cfg.max_new_tokens):
            token = choose(processors, ids, logits, cfg.do_sample, generator)  # (B,)
            if eos.numel():
                token = torch.where(done, eos[0], token)
                done |= torch.isin(token, eos)
            ids = torch.cat([ids, token[:, None]], 1)
            if bool(done.all()) or i == cfg.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            logits, past = self.step(token[:, None], mask, positions, past)
        return ids


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def generate_texts(model: OrtDecoderLM, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                   **kwargs: Any) -> list[str]:
    """The decoded continuation of each prompt (its tokenizer adds what its post-processor says, e.g. BOS)."""
    if model.tokenizer is None:
        raise ExportError("this ONNX export has no tokenizer.json: export a model that carries a tokenizer")
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [model.tokenizer.encode(p).ids for p in prompts[start:start + batch_size]]
        T = max(len(e) for e in encoded)
        ids = torch.tensor([[0] * (T - len(e)) + e for e in encoded])  # left padding
        mask = torch.tensor([[0] * (T - len(e)) + [1] * len(e) for e in encoded])
        new = model.generate(ids, mask, max_new_tokens=max_new_tokens, **kwargs)[:, T:]
        eos = set(eos_list(model.eos_token_id))
        for row in new.tolist():
            cut = next((j for j, t in enumerate(row) if t in eos), len(row))
            out.append(model.tokenizer.decode(row[:cut]))
    return out


def write_predictions(out: str, examples: list[Any], preds: list[str]) -> None:
    """PRED.jsonl as `mmt generate --data` writes it with PyTorch (id, prompt, prediction), written whole or not at all."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps({"id": ex.id, "prompt": ex.prompt, "prediction": p}) + "\n"
                           for ex, p in zip(examples, preds)))
    tmp.replace(path)
    print(f"wrote {len(preds)} predictions to {path}")


def run_cli(model_dir: str, prompt: str | None, data: str | None, out: str | None, max_new_tokens: int,
            batch_size: int, generation_kwargs: dict[str, Any], media: list[str]) -> None:
    """`mmt generate OUT --backend onnxruntime`: one --prompt, or --data MANIFEST --out PRED.jsonl."""
    from ..data.manifest import read_manifest

    if media:
        raise ExportError(f"the onnxruntime backend runs exported decoder-only LMs (text only): {', '.join(media)} "
                          "cannot be given")
    model = OrtDecoderLM(model_dir)
    if data:
        if not out:
            raise ExportError("--data needs --out PRED.jsonl")
        examples = read_manifest(data, require_target=False)
        with_media = [ex.id for ex in examples if any(getattr(ex, n, None) for n in ("image", "audio", "video"))]
        if with_media:
            raise ExportError(f"{data}: examples {with_media[:5]} have media; the onnxruntime backend runs "
                              "exported decoder-only LMs (text only)")
        preds = generate_texts(model, [ex.prompt for ex in examples], max_new_tokens, batch_size, **generation_kwargs)
        write_predictions(out, examples, preds)
        return
    if prompt is None:
        raise ExportError("give --prompt TEXT, or --data MANIFEST --out PRED.jsonl")
    print(generate_texts(model, [prompt], max_new_tokens, **generation_kwargs)[0])
