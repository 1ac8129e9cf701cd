"""Evaluation: predictions for every task a model can answer, each scored with its metric.

How a task is answered: by its classification head when the model has one for it, by the
contrastive space for retrieval tasks (text->image and image->text recall@k), else by generating
the target. How it is scored: captions by exact match, BLEU-4, CIDEr-D and ROUGE-L; VQA by the
VQA accuracy (per question type too); speech transcripts by WER; every other task by accuracy
plus a per-label classification report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from .data.collate import (ExampleDataset, MediaCache, collate_examples, collate_media, media_of, pair_text,
                           prompt_batch, readable_examples)
from .data.manifest import TRANSCRIPTION_TASKS, Example
from .generation import generate, stream
from .metrics import bleu, cider, classification_report, exact_match, normalize_answer, recall_at_k, rouge_l, vqa_accuracy, wer

RETRIEVAL_TASKS = ("retrieval",)
CAPTION_TASKS = ("caption", "video_caption")  # scored as captions: {task}_exact_match, _bleu4 ...
QA_TASKS = ("vqa", "video_qa")  # scored by the VQA accuracy: {task}_accuracy, {task}_accuracy_by_type
SPOKEN_PROMPT_TOKENS = 48  # the longest transcript of a spoken prompt (model.media.audio.prompts: transcribe)
MAX_REPORT_LABELS = 50  # tasks with more distinct targets than this get no per-label report


def can_generate(model: Any) -> bool:
    return getattr(model, "decode_step", None) is not None and not getattr(model, "is_late_fusion", False) \
        and not getattr(model, "is_dual_encoder", False)


@torch.no_grad()
def predict(model: Any, examples: Sequence[Example], batch_size: int = 64, max_new_tokens: int = 48,
            progress: bool = False, generation_kwargs: dict[str, Any] | None = None,
            on_text: Callable[[str], None] | None = None) -> list[str]:
    """Answers for each example's (image +) prompt, in order: the label of the task's head when
    the model has one, else generated text (greedy unless `generation_kwargs` say otherwise:
    num_beams, do_sample ...). `on_text` receives each generated example's text as it streams."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("the model has no tokenizer attached (expected tokenizer.json in its directory)")
    heads = getattr(model, "head_labels", {})
    if transcribes_prompts(model):
        examples = heard(model, examples, batch_size)
    was_training = model.training
    model.eval()
    out: list[str | None] = [None] * len(examples)
    # Runs of examples answered the same way: (by head or generation, with the same modalities),
    # per task, so that one-word answers do not wait in a batch for long captions to finish
    groups: dict[tuple[str, tuple[str, ...], str], list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[(e.task if e.task in heads else "", tuple(media_of(e)), e.task)].append(i)
    bar = tqdm(total=len(examples), desc="predict", disable=not progress, unit="ex")
    try:
        for (head, _, _), idx in groups.items():
            chunk_size = 1 if on_text is not None and not head else batch_size
            for s in range(0, len(idx), chunk_size):
                rows = idx[s:s + chunk_size]
                chunk = [examples[i] for i in rows]
                answers = (_head_answers(model, head, chunk) if head else
                           _generate(model, chunk, max_new_tokens, generation_kwargs, on_text))
                for i, a in zip(rows, answers):
                    out[i] = a
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return [o or "" for o in out]


def transcribes_prompts(model: Any) -> bool:
    """Whether the model answers a spoken prompt by transcribing it first (model.media.audio.prompts)."""
    audio = (getattr(getattr(model, "config", None), "media", None) or {}).get("audio")
    return getattr(audio, "prompts", "attend") == "transcribe"


def is_spoken_prompt(e: Example) -> bool:
    """A clip in place of the prompt about other media (a spoken question about an image): audio, no
    text prompt, an image or video, a task other than transcribing. A clip alone is transcribed."""
    return (e.audio is not None and not e.prompt and (e.image is not None or e.video is not None)
            and e.task not in TRANSCRIPTION_TASKS)


def heard(model: Any, examples: Sequence[Example], batch_size: int = 64) -> list[Example]:
    """The examples with each spoken prompt replaced by its transcript (the clip dropped, the other
    media kept): the model transcribes the clips greedily first, then answers them as text (chain of
    modality). The transcript is kept in `meta["heard"]`."""
    idx = [i for i, e in enumerate(examples) if is_spoken_prompt(e)]
    if not idx:
        return list(examples)
    clips = [replace(examples[i], task=TRANSCRIPTION_TASKS[0], image=None, video=None, text=None) for i in idx]
    texts = predict(model, clips, batch_size, SPOKEN_PROMPT_TOKENS)
    out = list(examples)
    for i, t in zip(idx, texts):
        out[i] = replace(examples[i], prompt=t, audio=None, meta={**examples[i].meta, "heard": t})
    return out


def _processors(model: Any) -> Any:
    """{modality: processor}, or a lone ImageProcessor (models that read one image)."""
    return getattr(model, "processors", None) or getattr(model, "image_processor", None)


def readable(model: Any, examples: Sequence[Example], skip_bad: bool = False) -> tuple[list[Example], list[str]]:
    """The examples whose media the model can read, and the messages of those skipped with `skip_bad`
    (`mmt generate/eval --skip-bad`); without it the first unreadable one raises DataError."""
    return readable_examples(examples, _processors(model), skip_bad)


def _media(model: Any, chunk: Sequence[Example]) -> dict[str, torch.Tensor]:
    """The chunk's media (every example has the same modalities) as model inputs on its device."""
    cache = MediaCache(_processors(model))
    batch = collate_media([cache(e) for e in chunk], cache.processors)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def _room(model: Any, chunk: Sequence[Example]) -> int:
    """Text positions the decoder has left once the media's prefix tokens (if any) are in."""
    return model.max_seq_len - (model.num_media_tokens if media_of(chunk[0]) else 0)


def _head_answers(model: Any, task: str, chunk: Sequence[Example]) -> list[str]:
    ids, mask = prompt_batch(model.tokenizer, [e.prompt for e in chunk], [e.text for e in chunk],
                             max_len=_room(model, chunk))
    device = next(model.parameters()).device
    logits = model.classify(task, ids.to(device), mask.to(device), **_media(model, chunk))
    return [model.head_labels[task][k] for k in logits.argmax(-1).tolist()]


def _generate(model: Any, chunk: Sequence[Example], max_new_tokens: int, generation_kwargs: dict[str, Any] | None,
              on_text: Callable[[str], None] | None) -> list[str]:
    if not can_generate(model):
        raise ValueError(f"this model cannot generate answers (task {chunk[0].task!r} has no head)")
    tok = model.tokenizer
    gen_kwargs = {"max_new_tokens": max_new_tokens, **(generation_kwargs or {})}
    ids, mask = prompt_batch(tok, [e.prompt for e in chunk], [e.text for e in chunk],
                             max_len=_room(model, chunk) - 1)  # room for at least one new token
    device = next(model.parameters()).device
    media = _media(model, chunk)
    if on_text is not None:
        text = ""
        for delta in stream(model, ids.to(device), mask.to(device), **media, **gen_kwargs):
            delta = delta if text else delta.lstrip()
            text += delta
            on_text(delta)
        return [text.strip()]
    gen = generate(model, ids.to(device), mask.to(device), **media, **gen_kwargs)
    return [tok.decode(row[ids.shape[1]:].tolist()) for row in gen]


def _pair_batches(model: Any, examples: Sequence[Example], batch_size: int, skip_bad: bool = False,
                  progress: bool = False) -> tuple[list[Example], Iterator[tuple[torch.Tensor, ...]]]:
    """The usable pairs, and their (pixel_values, input_ids, attention_mask) batches on the model's device."""
    data = ExampleDataset(examples, model.tokenizer, model.image_processor, model.max_seq_len, "pair",
                          skip_bad=skip_bad)
    device = next(model.parameters()).device

    def batches() -> Iterator[tuple[torch.Tensor, ...]]:
        for s in tqdm(range(0, len(data), batch_size), desc="pairs", unit="batch", disable=not progress):
            b = collate_examples([data[i] for i in range(s, min(s + batch_size, len(data)))],
                                 model.tokenizer.pad_id, model.image_processor)
            yield b["pixel_values"].to(device), b["input_ids"].to(device), b["attention_mask"].to(device)

    return data.examples, batches()


@torch.no_grad()
def pair_features(model: Any, examples: Sequence[Example], batch_size: int = 128, skip_bad: bool = False,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[Example]]:
    """The towers' pooled features of image-text pairs, before the contrastive projections:
    image (N, Ci), text (N, Ct) and the N pairs they belong to (unreadable ones dropped with skip_bad)."""
    was_training = model.training
    model.eval()
    pairs, batches = _pair_batches(model, examples, batch_size, skip_bad, progress)
    images, texts = [], []
    for pixels, ids, mask in batches:
        images.append(model.image_features(pixels).float())
        texts.append(model.text_features(ids, mask).float())
    model.train(was_training)
    return torch.cat(images), torch.cat(texts), pairs


def caption_ids(examples: Sequence[Example]) -> torch.Tensor:
    """(N,) ids equal exactly where the pairs' texts are equal once normalised (the same caption)."""
    index: dict[str, int] = {}
    return torch.tensor([index.setdefault(normalize_answer(pair_text(e)), len(index)) for e in examples])


@torch.no_grad()
def retrieval_scores(model: Any, examples: Sequence[Example], batch_size: int = 128) -> dict[str, float]:
    """Recall@1/5/10 both ways over image-text pairs (the text is each example's target), for any
    model with `encode_image` and `encode_text`.

    Pairs with the same caption (normalised) count as correct for each other: two images that a
    caption describes equally well are both right answers.
    """
    was_training = model.training
    model.eval()
    pairs, batches = _pair_batches(model, examples, batch_size)
    images, texts = [], []
    for pixels, ids, mask in batches:
        images.append(torch.nn.functional.normalize(model.encode_image(pixels), dim=-1))
        texts.append(torch.nn.functional.normalize(model.encode_text(ids, mask), dim=-1))
    model.train(was_training)
    sim = torch.cat(texts) @ torch.cat(images).t()  # (texts, images)
    ids = caption_ids(pairs)
    same = ids[:, None] == ids[None, :]
    out = {}
    for k in (1, 5, 10):
        out[f"retrieval_t2i_r{k}"] = recall_at_k(sim, k, positives=same)
        out[f"retrieval_i2t_r{k}"] = recall_at_k(sim.t(), k, positives=same)
    out["retrieval_r1"] = (out["retrieval_t2i_r1"] + out["retrieval_i2t_r1"]) / 2
    return out


def score(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, Any]:
    """Metrics per task from predictions (see the module docstring); `count` per task."""
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        if ex.target is not None:
            by_task[ex.task].append(i)
    result: dict[str, Any] = {}
    for task, idx in sorted(by_task.items()):
        preds = [predictions[i] for i in idx]
        targets = [examples[i].target or "" for i in idx]
        if task in CAPTION_TASKS:
            result[f"{task}_exact_match"] = exact_match(preds, targets)
            refs = [examples[i].meta.get("references") or [examples[i].target or ""] for i in idx]
            norm_refs = [[normalize_answer(r) for r in rs] for rs in refs]
            norm_preds = [normalize_answer(p) for p in preds]
            result[f"{task}_bleu4"] = bleu(norm_preds, [list(s) for s in zip(*_pad_refs(norm_refs))])
            result[f"{task}_cider"] = cider(norm_preds, norm_refs)
            result[f"{task}_rouge_l"] = rouge_l(norm_preds, norm_refs)
        elif task in QA_TASKS:
            answers = [examples[i].meta.get("answers") or examples[i].target or "" for i in idx]
            result[f"{task}_accuracy"] = vqa_accuracy(preds, answers)
            types: dict[str, list[int]] = defaultdict(list)
            for j, i in enumerate(idx):
                if "question_type" in examples[i].meta:
                    types[examples[i].meta["question_type"]].append(j)
            if types:
                result[f"{task}_accuracy_by_type"] = {
                    t: vqa_accuracy([preds[j] for j in js], [answers[j] for j in js]) for t, js in sorted(types.items())}
        elif task in TRANSCRIPTION_TASKS:
            result[f"{task}_wer"] = wer([normalize_answer(p) for p in preds], [normalize_answer(t) for t in targets])
        else:
            result[f"{task}_accuracy"] = exact_match(preds, targets)
            norm_t = [normalize_answer(t) for t in targets]
            if len(set(norm_t)) <= MAX_REPORT_LABELS:
                result[f"{task}_report"] = classification_report(norm_t, [normalize_answer(p) for p in preds])
        result.setdefault("count", {})[task] = len(idx)
    return result


def _pad_refs(refs: list[list[str]]) -> list[list[str]]:
    """Equal-length reference lists for BLEU's reference streams (repeat the last reference)."""
    n = max(len(r) for r in refs)
    return [r + [r[-1]] * (n - len(r)) for r in refs]


def evaluate(model: Any, examples: Sequence[Example], batch_size: int = 64, max_new_tokens: int | None = None,
             retrieval_tasks: Sequence[str] = RETRIEVAL_TASKS, progress: bool = False,
             generation_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str | None]]:
    """Score every task in `examples` that the model can answer -> (report, predictions).

    Retrieval tasks are scored when the model has a contrastive space; tasks it can neither
    generate nor classify are listed under `skipped`. Predictions are None where none was made.
    """
    report: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    ret = [e for e in examples if e.task in retrieval_tasks]
    if ret:
        if getattr(model, "image_proj", None) is not None:
            report.update(retrieval_scores(model, ret))
            report.setdefault("count", {})["retrieval"] = len(ret)
        else:
            skipped["retrieval"] = "the model has no contrastive head"
    heads = getattr(model, "head_labels", {})
    answerable = []
    for e in examples:
        if e.task in retrieval_tasks or e.target is None:
            continue
        if e.task in heads or can_generate(model):
            answerable.append(e)
        else:
            skipped[e.task] = "the model has no head for it and cannot generate"
    predictions: list[str | None] = [None] * len(examples)
    if answerable:
        if max_new_tokens is None:
            max_new_tokens = max(len(model.tokenizer.encode(e.target or "")) for e in answerable) + 2
        preds = predict(model, answerable, batch_size, max_new_tokens, progress, generation_kwargs)
        counts = report.pop("count", {})
        report.update(score(answerable, preds))
        report["count"] = {**counts, **report.get("count", {})}
        position = {id(e): i for i, e in enumerate(examples)}
        for e, p in zip(answerable, preds):
            predictions[position[id(e)]] = p
    if skipped:
        report["skipped"] = skipped
    return report, predictions
