"""The model a run trains: composed from pretrained parts (`run.compose`), or a fresh
`MultimodalTransformerModel` with a tokenizer trained on the run's text (kept across resumes;
rank 0's under torchrun) and heads for its streams' objectives and class labels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..modalities.text import TextTokenizer
from ..models.multimodal import MultimodalTransformerModel
from . import distributed as dd
from .config import RunConfig
from .tasks import TaskStream, class_labels


def build_model(run: RunConfig, streams: list[TaskStream], out: Path, resume: bool,
                dist: dd.Dist) -> tuple[Any, RunConfig]:
    """(model, the run config with the model's final vocabulary size and heads)."""
    objectives = {s.cfg.objective for s in streams}
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
    heads = replace(heads, classes={**heads.classes, **labels}, itm=heads.itm or "itm" in objectives,
                    contrastive_dim=heads.contrastive_dim or (64 if "contrastive" in objectives else None))
    mcfg = replace(run.model, decoder=replace(run.model.decoder, vocab_size=tok.vocab_size), heads=heads)
    model = MultimodalTransformerModel(mcfg)
    model.tokenizer = tok
    return model, replace(run, model=mcfg)
