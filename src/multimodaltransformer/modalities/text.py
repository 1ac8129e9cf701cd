"""Text: a byte-level BPE tokenizer built and trained with HF `tokenizers`, an LSTM baseline encoder,
and the prompt layout every task shares: <bos> [text] prompt <sep>, then the target <eos>.

Byte-level means any string encodes (no <unk> in practice) and decodes back exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..nn import EncoderOutput

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>", "<mask>"]
OPTIONAL_SPECIALS = ("mask",)  # tokenizers saved before <mask> existed fall back to <unk> for it
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Thin wrapper that knows the special tokens the models rely on (pad, bos, eos, sep, unk).

    Our own tokenizers have dedicated tokens; a pretrained LM's tokenizer maps them onto its
    own ids (`for_language_model`), and those ids travel in the model's config.
    """

    def __init__(self, tokenizer: Tokenizer, special_ids: dict[str, int] | None = None) -> None:
        self.tokenizer = tokenizer
        if special_ids is None:
            ids = {t.strip("<>"): tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
            missing = [t for t, i in ids.items() if i is None and t not in OPTIONAL_SPECIALS]
            if missing:
                raise ValueError(f"tokenizer lacks special token(s) {missing}")
            special_ids = ids  # type: ignore[assignment]
        self.special_ids = {k: v for k, v in special_ids.items() if v is not None}
        # <mask> replaces tokens for masked-LM training; a tokenizer without one reuses <unk>
        self.mask_id = self.special_ids.get("mask", self.special_ids["unk"])
        self.pad_id, self.bos_id, self.eos_id, self.sep_id, self.unk_id = (
            self.special_ids[k] for k in ("pad", "bos", "eos", "sep", "unk"))

    @classmethod
    def for_language_model(cls, tokenizer: Tokenizer, eos_id: int, bos_id: int | None = None,
                           separator: str = "\n") -> "TextTokenizer":
        """Wrap a pretrained LM's tokenizer: pad/bos/unk default to its EOS, `separator` (one token)
        ends the prompt."""
        sep = tokenizer.encode(separator, add_special_tokens=False).ids
        if len(sep) != 1:
            raise ValueError(f"separator {separator!r} is {len(sep)} tokens for this tokenizer; choose one token")
        bos = eos_id if bos_id is None else bos_id
        return cls(tokenizer, {"pad": eos_id, "bos": bos, "eos": eos_id, "sep": sep[0], "unk": eos_id})

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> "TextTokenizer":
        base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
        if vocab_size <= base:
            raise ValueError(f"vocab_size {vocab_size} leaves no room for merges: it must exceed {base} "
                             f"(256 byte symbols + {len(SPECIAL_TOKENS)} special tokens)")
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "TextTokenizer":
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {file}")
        return cls(Tokenizer.from_file(str(file)))

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / TOKENIZER_FILE))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, dropping special tokens; surrounding spaces stripped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


@dataclass
class LSTMTextConfig:
    """A recurrent text encoder: the pre-Transformer baseline the seeds compare against."""

    vocab_size: int = 1024
    dim: int = 128  # embedding width
    hidden: int = 128  # per direction
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.0
    pad_id: int = 0

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.dim, self.hidden, self.layers) <= 0:
            raise ValueError(f"vocab_size, dim, hidden and layers must be positive, got {self}")


class LSTMTextEncoder(nn.Module):
    """input_ids (B, T) + right-padded attention_mask -> EncoderOutput(features (B, T, H'), pooled (B, H')).

    H' = hidden x directions. Padding is packed away, so a padded row gives the same result as the
    row alone; the pooled vector is the last layer's final state (both directions concatenated).
    """

    def __init__(self, cfg: LSTMTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=cfg.pad_id)
        self.lstm = nn.LSTM(cfg.dim, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        B, T = input_ids.shape
        lengths = (attention_mask.long().sum(-1) if attention_mask is not None
                   else torch.full((B,), T, dtype=torch.long)).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.embed(input_ids), lengths, batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        features, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, H')
        dirs = 2 if self.cfg.bidirectional else 1
        pooled = h.view(self.cfg.layers, dirs, B, self.cfg.hidden)[-1].transpose(0, 1).reshape(B, -1)
        return EncoderOutput(features, pooled)


# ---- prompts: the text layout every task shares -----------------------------------------------------

def encode_prompt(tok: TextTokenizer, prompt: str, text: str | None = None) -> list[int]:
    """<bos> [text] prompt <sep>: the part the model is conditioned on."""
    body = f"{text}\n{prompt}" if text else prompt
    return [tok.bos_id, *tok.encode(body), tok.sep_id]


def prompt_batch(tok: TextTokenizer, prompts: Sequence[str], texts: Sequence[str | None] | None = None,
                 max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids (B, T) and attention mask for generation.

    A prompt longer than `max_len` keeps its <bos> and its last max_len - 1 tokens (the
    question and the separator sit at the end), with a warning.
    """
    encoded = [encode_prompt(tok, p, t) for p, t in zip(prompts, texts or [None] * len(prompts))]
    if max_len is not None and any(len(e) > max_len for e in encoded):
        warnings.warn(f"{sum(len(e) > max_len for e in encoded)} prompt(s) longer than {max_len} tokens were "
                      "cut from the left", stacklevel=2)
        encoded = [e if len(e) <= max_len else e[:1] + e[len(e) - max_len + 1:] for e in encoded]
    T = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.bool)
    for r, e in enumerate(encoded):
        ids[r, T - len(e):] = torch.tensor(e)
        mask[r, T - len(e):] = True
    return ids, mask
