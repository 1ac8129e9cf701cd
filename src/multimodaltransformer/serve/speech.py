"""Speech models behind the chat API: an `input_audio` clip in, its transcript out (Whisper).

A request to a speech model carries one audio clip (base64 WAV; FLAC, OGG or MP3 with the
optional `soundfile`); text in the messages is not used. The clip is decoded and checked in a
thread, then transcribed on the model worker between other work: one encoder pass and a greedy
decode with the KV cache (Whisper's default decoding), so `n`, beam search and sampling do not
apply. The prompt is Whisper's: <|startoftranscript|>, the language (multilingual models detect
it from the audio, as Whisper's `detect_language` does), <|transcribe|>, <|notimestamps|>.
POST /v1/audio/transcriptions (transcriptions.py) uses the same prompt (or the language asked for)
through `encode` and `stream`, which yields the transcript token by token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..generation.streaming import stream
from ..modalities.audio import AudioProcessor
from ..models.whisper import Whisper
from .media import MediaPolicy, input_audio
from .worker import Job


def is_speech_model(model: Any) -> bool:
    return isinstance(model, Whisper)


class Transcriber:
    """Waveform (N,) at 16 kHz -> (text, completion tokens, finish reason) with `model`."""

    def __init__(self, model: Whisper) -> None:
        if model.tokenizer is None:
            raise ValueError("the speech model has no tokenizer (vocab.json + merges.txt, or tokenizer.json)")
        self.model, self.tok = model, model.tokenizer
        self.processor = AudioProcessor(model.config.processor_config())
        special = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items()}
        self.eos = model.config.eos_token_id
        self.start = special.get("<|startoftranscript|>", model.config.decoder_start_token_id)
        # Whisper's rule: English-only models (*.en) have one token less, and take no language or task
        multilingual = model.config.vocab_size >= 51865
        # language tokens are <|en|>, <|haw|> ...: two or three lower-case letters
        self.languages = [i for t, i in special.items() if multilingual and t.startswith("<|") and t.endswith("|>")
                          and t[2:-2].isalpha() and t[2:-2].islower() and len(t[2:-2]) in (2, 3)]
        tail = ("<|transcribe|>", "<|notimestamps|>") if self.languages else ("<|notimestamps|>",)
        self.tail = [special[t] for t in tail if t in special]
        # every other special token (timestamps, tasks, languages, <|nospeech|> ...) is never produced
        self.suppress = sorted(i for i in special.values() if i != self.eos)
        self.max_seconds = self.processor.config.chunk_length

    @property
    def prompt_len(self) -> int:
        return 1 + bool(self.languages) + len(self.tail)

    def waveform(self, data: str, fmt: str, policy: MediaPolicy) -> Tensor:
        """An `input_audio` part -> (N,) float32 at the model's rate, or MediaRejected (runs in a thread)."""
        return input_audio(data, fmt, policy, self.processor.config.sampling_rate, self.max_seconds)

    def language_token(self, language: str | None) -> int | None:
        """The token of a requested language (ISO 639-1, as OpenAI takes it), None to detect it, or
        ValueError: an English-only model takes "en" only, a multilingual one its own languages."""
        if language is None:
            return None
        if not self.languages:
            if language.lower() != "en":
                raise ValueError(f"language: this English-only Whisper transcribes 'en' only, not {language!r}")
            return None
        special = {t.content: i for i, t in self.tok.get_added_tokens_decoder().items()}
        token = special.get(f"<|{language.lower()}|>")
        if token not in self.languages:
            codes = sorted(t[2:-2] for t, i in special.items() if i in self.languages)
            raise ValueError(f"language: {language!r} is not one of this model's languages ({', '.join(codes)})")
        return token

    def encode(self, wave: Tensor, language: int | None) -> tuple[Tensor, list[int]]:
        """The clip's encoder states (once: language detection and decoding) and the decoder prompt."""
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            memory = self.model.encode(self.processor(wave).to(device))
            prompt = [self.start]
            if self.languages and language is not None:
                prompt.append(language)
            elif self.languages:  # the most likely language after <|startoftranscript|>
                logits = self.model.decode(torch.tensor([[self.start]], device=device), memory)[0, -1]
                langs = torch.tensor(self.languages, device=device)
                prompt.append(int(langs[logits[langs].argmax()]))
        return memory, prompt + self.tail

    def language_code(self, prompt: list[int]) -> str:
        """The language a prompt names ("en" for an English-only model)."""
        return self.tok.id_to_token(prompt[1])[2:-2] if self.languages else "en"

    def stream(self, memory: Tensor, prompt: list[int], max_new_tokens: int) -> Iterator[str]:
        """The transcript of `encode`'s states as text deltas, token by token (the generation engine's
        `stream`: the same greedy tokens as `__call__`), not stripped."""
        limit = self.model.config.decoder.max_seq_len - len(prompt)
        yield from stream(self.model, torch.tensor([prompt], device=memory.device), tokenizer=self.tok,
                          max_new_tokens=min(max_new_tokens, limit), suppress_tokens=self.suppress,
                          eos_token_id=self.eos, pad_token_id=self.eos, encoder_outputs=memory)

    @torch.inference_mode()
    def __call__(self, wave: Tensor, max_new_tokens: int) -> tuple[str, int, str]:
        memory, prompt = self.encode(wave, None)
        device = memory.device
        limit = self.model.config.decoder.max_seq_len - len(prompt)
        ids = self.model.generate(decoder_input_ids=torch.tensor([prompt], device=device), encoder_outputs=memory,
                                  max_new_tokens=min(max_new_tokens, limit), suppress_tokens=self.suppress)
        new = ids[0, len(prompt):].tolist()
        ended = self.eos is not None and self.eos in new
        new = new[:new.index(self.eos)] if ended else new
        return self.tok.decode(new, skip_special_tokens=True).strip(), len(new), "stop" if ended else "length"


@dataclass
class SpeechJob(Job):
    """A transcription: the worker runs it as exclusive work (it is callable) and emits the text."""

    waveform: Tensor = field(default_factory=lambda: torch.zeros(0))
    transcriber: Transcriber | None = None

    def __call__(self) -> None:
        if self.cancelled.is_set():
            self.emit(0, None, None, "cancelled")
            return
        if time.monotonic() > self.deadline:
            self.emit(0, None, None, "the request ran past its time limit")
            return
        try:
            text, tokens, finish = self.transcriber(self.waveform, self.max_new_tokens)
        except Exception as e:  # a bad clip must not take the worker down
            self.emit(0, None, None, f"transcription failed: {e}")
            return
        for stop in self.stops:  # stop strings cut the transcript as they cut generated text
            if stop in text:
                text, finish = text[:text.index(stop)], "stop"
        self.completion_tokens = [tokens]
        self.emit(0, text, finish, None)
