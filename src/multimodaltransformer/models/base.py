"""Save / load for single-config models (GPT-2, BERT, ViT, CLIP ...): config.json + model.safetensors.

The config dataclass travels with the weights and carries a `model_type` that `load_pretrained`
dispatches on; the tokenizer (a HF `tokenizers.Tokenizer`) is saved as tokenizer.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from ..config import ConfigError, from_dict, to_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def tied_aliases(model: nn.Module) -> set[str]:
    """State-dict names whose tensor is the same storage as an earlier name (tied embeddings)."""
    seen: set[int] = set()
    aliases = set()
    for name, t in model.state_dict(keep_vars=True).items():
        ptr = t.data_ptr()
        if ptr in seen and t.numel():
            aliases.add(name)
        seen.add(ptr)
    return aliases


def load_state_strict(model: nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """Load `state` into `model`, naming any missing, unexpected or mis-shaped tensor; tied aliases may be absent."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - tied_aliases(model))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ConfigError(f"{source}: missing tensors {missing[:8]}, unexpected tensors {unexpected[:8]}")
    for name, tensor in state.items():
        if tensor.shape != own[name].shape:
            raise ConfigError(f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                              f"model expects {tuple(own[name].shape)}")
    model.load_state_dict(state, strict=False)


class SavesPretrained:
    """save_pretrained / from_pretrained for a module built from one config dataclass
    (`config_class`) held as `self.config`, with an optional `self.tokenizer`."""

    config_class: ClassVar[type]
    tokenizer: Tokenizer | None = None

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors (+ tokenizer.json when a tokenizer is attached)."""
        directory = write_model_dir(self, directory)
        if self.tokenizer is not None:  # a tokenizers.Tokenizer, or the TextTokenizer training wraps it in
            getattr(self.tokenizer, "tokenizer", self.tokenizer).save(str(directory / TOKENIZER_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "PretrainedModel":
        directory = Path(directory)
        model = cls(read_model_config(directory, cls.config_class))
        load_state_strict(model, load_file(str(directory / WEIGHTS_FILE)), directory / WEIGHTS_FILE)
        if (directory / TOKENIZER_FILE).is_file():
            model.tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
        return model.to(map_location).eval()


class PretrainedModel(SavesPretrained, nn.Module):
    """Base of models built from one config dataclass (`config_class`), with save/load."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.tokenizer: Tokenizer | None = None


def write_config(model: nn.Module, directory: str | Path) -> None:
    """config.json (+ tokenizer.json when attached), without weights (sharded checkpoints)."""
    directory = Path(directory)
    (directory / CONFIG_FILE).write_text(json.dumps(to_dict(model.config), indent=2) + "\n")
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save_pretrained(directory) if hasattr(tok, "save_pretrained") else tok.save(str(directory / TOKENIZER_FILE))


def write_model_dir(model: nn.Module, directory: str | Path) -> Path:
    """config.json (the model's `config` dataclass) + model.safetensors; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(to_dict(model.config), indent=2) + "\n")
    skip = tied_aliases(model)  # safetensors refuses shared storage; the tie is rebuilt on load
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in skip}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return directory


def read_model_config(directory: Path, config_class: type) -> Any:
    """The config dataclass of a saved model directory, with errors that name the file."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a saved model directory")
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{directory / CONFIG_FILE}: invalid JSON: {e}") from e
    return from_dict(config_class, raw, str(directory / CONFIG_FILE))
