"""Text: a byte-level BPE tokenizer built and trained with HF `tokenizers`.

Byte-level means any string encodes (no <unk> in practice) and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<sep>", "<unk>"]
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Thin wrapper that knows the special tokens the models rely on."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks special token(s) {missing}")
        self.pad_id, self.bos_id, self.eos_id, self.sep_id, self.unk_id = (ids[t] for t in SPECIAL_TOKENS)

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
