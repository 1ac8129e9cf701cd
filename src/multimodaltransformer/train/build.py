"""The model a run trains: a pretrained model fine-tuned as it is (`run.finetune`: Whisper, with
LoRA), composed from pretrained parts (`run.compose`), or a fresh `MultimodalTransformerModel` with
a tokenizer trained on the run's text (kept across resumes; rank 0's under torchrun) and heads for
its streams' objectives and class labels; its CNN image encoder (`model.image.pretrained`) and its
audio encoder (`model.media.audio.pretrained`, a Whisper's) from pretrained weights (train/pretrained.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..data.regions import region_values
from ..modalities.text import TextTokenizer
from ..models.multimodal import MultimodalTransformerModel
from . import distributed as dd
from .config import FinetuneConfig, RunConfig
from .pretrained import load_network, read_pretrained, read_pretrained_audio, resolve_source
from .tasks import TaskStream, class_labels


def build_model(run: RunConfig, streams: list[TaskStream], out: Path, resume: bool,
                dist: dd.Dist) -> tuple[Any, RunConfig]:
    """(model, the run config with the model's final vocabulary size and heads)."""
    objectives = {s.cfg.objective for s in streams}
    if run.finetune is not None:
        if run.compose is not None:
            raise ConfigError("finetune and compose are two ways to build the model: give one")
        if objectives != {"lm"}:
            raise ConfigError(f"finetune: a pretrained model trains the lm objective only, not {sorted(objectives)}")
        return finetune_model(run.finetune), run
    if run.compose is not None:
        if objectives - {"lm", "mlm"}:
            raise ConfigError(f"compose: a composed model trains lm / mlm objectives only, not {sorted(objectives)}")
        from ..hub import compose

        return compose(run.compose), run
    tok_path = out / "tokenizer.json"
    if resume and tok_path.is_file():
        tok = TextTokenizer.from_pretrained(tok_path)
    elif dist.main:  # under torchrun rank 0 trains it, the others read it
        examples = {id(e): e for s in streams for e in s.examples}.values()
        texts = [t for e in examples for t in (e.prompt, e.target, e.text) if t]
        tok = TextTokenizer.train(texts, vocab_size=run.data.tokenizer_vocab_size)
        tok.save_pretrained(out)
    if dist.enabled:
        dd.barrier(dist)
        tok = TextTokenizer.from_pretrained(tok_path)
    labels: dict[str, list[str]] = {}  # every rank's labels (sharded sources), so all build the same heads
    for part in dd.all_objects(class_labels([e for s in streams if s.cfg.objective == "classify"
                                             for e in s.examples]), dist):
        for task, ls in part.items():
            labels[task] = sorted(set(labels.get(task, [])) | set(ls))
    heads = run.model.heads
    if heads.region_weight > 0 and not heads.region_classes:  # sorted values: a resume gets the same heads
        heads = replace(heads, region_classes=region_classes(streams, heads.region_attributes, dist))
    heads = replace(heads, classes={**heads.classes, **labels}, itm=heads.itm or "itm" in objectives,
                    contrastive_dim=heads.contrastive_dim or (64 if "contrastive" in objectives else None))
    mcfg = replace(run.model, decoder=replace(run.model.decoder, vocab_size=tok.vocab_size), heads=heads)
    pretrained = None
    if mcfg.image is not None and mcfg.image.pretrained is not None:  # the weights' normalisation, recorded
        pretrained, image = read_pretrained(mcfg.image)
        mcfg = replace(mcfg, image=image)
    audio = mcfg.media.get("audio")
    audio_state = read_pretrained_audio(audio) if audio is not None and audio.pretrained is not None else None
    model = MultimodalTransformerModel(mcfg)
    if pretrained is not None:
        load_network(model.image_encoder.network, pretrained, str(mcfg.image.pretrained))
    if audio_state is not None:
        load_network(model.audio_encoder, audio_state, str(audio.pretrained), "model.media.audio.pretrained")
    model.tokenizer = tok
    return model, replace(run, model=mcfg)


def region_classes(streams: list[TaskStream], attributes: list[str], dist: dd.Dist) -> dict[str, list[str]]:
    """Each region attribute's values over the LM streams' boxed objects (every rank's)."""
    values: dict[str, set[str]] = {a: set() for a in attributes}
    examples = [e for s in streams if s.cfg.objective == "lm" for e in s.examples]
    for part in dd.all_objects(region_values(examples, attributes), dist):
        for a, vs in part.items():
            values[a] |= set(vs)
    if empty := [a for a, vs in values.items() if not vs]:
        raise ConfigError(f"heads.region_attributes {empty}: no training record has objects with a box and "
                          "that attribute (ShapesWorld writes them: `objects: [{box, color, shape, size}]`)")
    return {a: sorted(vs) for a, vs in values.items()}


def finetune_model(cfg: FinetuneConfig) -> Any:
    """The pretrained model, with its text tokenizer for training and LoRA adapters if asked."""
    from ..hub import load_pretrained
    from ..nn.lora import apply_lora

    model = load_pretrained(resolve_source(cfg.source))
    text_tokenizer = getattr(model, "text_tokenizer", None)
    if text_tokenizer is None or not hasattr(model, "processors"):
        raise ConfigError(f"finetune.source {cfg.source}: a {type(model).__name__} cannot be fine-tuned as it is "
                          "(supported: Whisper; compose an image encoder and an LM with `compose` instead)")
    model.tokenizer = text_tokenizer(sentence_case=cfg.sentence_case)
    model.label_smoothing = cfg.label_smoothing
    if cfg.lora is not None:
        model.requires_grad_(False)
        apply_lora(model, cfg.lora)
    return model.train()
