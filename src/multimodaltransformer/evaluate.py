"""Batch prediction over manifest examples and scoring per task."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm import tqdm

from .data.collate import prompt_batch
from .data.manifest import DataError, Example
from .metrics import bleu, exact_match
from .modalities.image import MediaError


@torch.no_grad()
def predict(model: Any, examples: Sequence[Example], batch_size: int = 64, max_new_tokens: int = 48,
            progress: bool = False, generation_kwargs: dict[str, Any] | None = None,
            on_text: Callable[[str], None] | None = None) -> list[str]:
    """Answers for each example's image + prompt, in order (greedy unless `generation_kwargs` say
    otherwise: num_beams, do_sample ...). `on_text` receives each example's text as it streams."""
    gen_kwargs = {"max_new_tokens": max_new_tokens, **(generation_kwargs or {})}
    if on_text is not None:
        batch_size = 1
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer attached (expected tokenizer.json in its directory)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cache: dict[str, torch.Tensor] = {}
    out: list[str] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="predict", disable=not progress, unit="batch"):
        chunk = examples[start:start + batch_size]
        ids, mask = prompt_batch(tok, [e.prompt for e in chunk], [e.text for e in chunk])
        pixel_values = None
        if model.image_processor is not None:
            images = []
            for e in chunk:
                if e.image is None:
                    raise DataError(f"{e.source}: this model needs an image")
                key = str(e.image)
                if key not in cache:
                    try:
                        cache[key] = model.image_processor.to_uint8(e.image)
                    except MediaError as err:
                        raise DataError(f"{e.source}: {err}") from err
                images.append(cache[key])
            pixel_values = model.image_processor.normalize(torch.stack(images)).to(device)
        if on_text is not None:
            from .generation import stream

            text = ""
            for delta in stream(model, ids.to(device), mask.to(device), pixel_values=pixel_values, **gen_kwargs):
                delta = delta if text else delta.lstrip()
                text += delta
                on_text(delta)
            out.append(text.strip())
            continue
        gen = model.generate(ids.to(device), attention_mask=mask.to(device), pixel_values=pixel_values, **gen_kwargs)
        out.extend(tok.decode(row[ids.shape[1]:].tolist()) for row in gen)
    model.train(was_training)
    return out


def score(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, Any]:
    """Metrics per task: vqa_accuracy; caption_exact_match and caption_bleu4; <task>_accuracy otherwise.

    Also `vqa_accuracy_by_type` when examples carry a `question_type`.
    """
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        if ex.target is not None:
            by_task[ex.task].append(i)
    result: dict[str, Any] = {}
    for task, idx in sorted(by_task.items()):
        preds = [predictions[i] for i in idx]
        targets = [examples[i].target or "" for i in idx]
        if task == "caption":
            result["caption_exact_match"] = exact_match(preds, targets)
            result["caption_bleu4"] = bleu(preds, [targets])
        elif task == "vqa":
            result["vqa_accuracy"] = exact_match(preds, targets)
            types: dict[str, list[int]] = defaultdict(list)
            for j, i in enumerate(idx):
                if "question_type" in examples[i].meta:
                    types[examples[i].meta["question_type"]].append(j)
            if types:
                result["vqa_accuracy_by_type"] = {
                    t: exact_match([preds[j] for j in js], [targets[j] for j in js]) for t, js in sorted(types.items())}
        else:
            result[f"{task}_accuracy"] = exact_match(preds, targets)
        result.setdefault("count", {})[task] = len(idx)
    return result
