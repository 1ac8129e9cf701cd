"""Speech synthesis with eSpeak NG, from the `espeakng-loader` wheel (libespeak-ng and its voice
data inside a Python package: no system install), driven through `ctypes` in synchronous mode.

`Speaker().say(text, Voice(...))` -> mono float32 samples at 22,050 Hz (eSpeak NG's rate).
The library keeps one global state (voice, rate, pitch), so one `Speaker` per process; data
generation parallelises over processes, not threads.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

# the English dialects eSpeak NG ships (lang/gmw/en*), Shavian script (en-Shaw) left out
DIALECTS = ("en", "en-US", "en-US-nyc", "en-GB-x-rp", "en-GB-scotland", "en-GB-x-gbclan", "en-GB-x-gbcwmd",
            "en-029")

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS, the callback runs inside espeak_Synth
_DONT_EXIT = 0x8000  # espeakINITIALIZE_DONT_EXIT: errors are returned, not exit()
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4  # espeak_PARAMETER
_POS_CHARACTER, _CHARS_UTF8 = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SpeechError(RuntimeError):
    """eSpeak NG is missing, refused a voice, or failed to speak."""


@dataclass(frozen=True)
class Voice:
    """Who speaks and how: a dialect, a voice variant (a file in espeak-ng-data/voices/!v, "" for
    the dialect's own voice), words per minute (80-450) and a pitch (0-99, 50 normal)."""

    dialect: str = "en"
    variant: str = ""
    rate: int = 175
    pitch: int = 50

    @property
    def name(self) -> str:
        return f"{self.dialect}+{self.variant}" if self.variant else self.dialect


def _package() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as e:
        raise SpeechError("speech synthesis needs the `espeakng-loader` package (pip install espeakng-loader), "
                          "which bundles libespeak-ng and its voices") from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@cache
def variants() -> tuple[str, ...]:
    """Every voice variant eSpeak NG ships (espeak-ng-data/voices/!v), sorted."""
    return tuple(sorted(p.name for p in (Path(_package()[1]) / "voices" / "!v").iterdir() if p.is_file()))


class Speaker:
    """One process's eSpeak NG engine: `say` returns the samples of one utterance."""

    def __init__(self) -> None:
        lib_path, data_path = _package()
        self.lib = ctypes.CDLL(lib_path)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        # data_path is the espeak-ng-data folder itself; espeak_Initialize wants the folder holding it
        self.sampling_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, str(Path(data_path).parent).encode(),
                                                        _DONT_EXIT)
        if self.sampling_rate <= 0:
            raise SpeechError(f"eSpeak NG failed to initialise from {data_path}")
        self._chunks: list[np.ndarray] = []

        def collect(wav: ctypes.POINTER(ctypes.c_short), n: int, _events: int) -> int:
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0  # 0: go on

        self._callback = _CALLBACK(collect)  # kept alive as long as the engine holds it
        self.lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None

    def say(self, text: str, voice: Voice = Voice()) -> np.ndarray:
        """`text` spoken by `voice` -> (N,) float32 in [-1, 1] at `self.sampling_rate`."""
        if voice.name != self._voice:
            if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice {voice.name!r} (dialects: {', '.join(DIALECTS)}; "
                                  f"variants: the files in espeak-ng-data/voices/!v)")
            self._voice = voice.name
        self.lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
        self._chunks = []
        data = text.encode() + b"\0"
        if self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
            raise SpeechError(f"eSpeak NG failed to speak {text!r}")
        if not self._chunks:
            raise SpeechError(f"eSpeak NG produced no samples for {text!r}")
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


@cache
def speaker() -> Speaker:
    """This process's engine, made on first use."""
    return Speaker()
