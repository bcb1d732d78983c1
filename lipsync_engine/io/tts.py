"""Offline text to speech for `lipsync say`: espeak-ng, loaded from the espeakng-loader wheel.

Owns: calling libespeak-ng through ctypes (the wheel ships the library and its voice data;
espeakng_loader.get_library_path / get_data_path locate them; nothing is downloaded), synthesis
into memory (AUDIO_OUTPUT_SYNCHRONOUS with a callback collecting the 16-bit samples), and the
voice list. The espeak-ng C API used (speak_lib.h): espeak_Initialize, espeak_SetSynthCallback,
espeak_SetVoiceByName, espeak_SetParameter(espeakRATE), espeak_Synth, espeak_Synchronize,
espeak_ListVoices.
Must not: predict, write files, or import bpy. libespeak-ng keeps global state, so calls are
serialized by a lock and the library is initialized once per process.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from ..core.errors import EngineError, InputError

DEFAULT_VOICE = "en-us"
DEFAULT_RATE_WPM = 175         # espeak-ng's default speaking rate, words per minute
MIN_RATE_WPM, MAX_RATE_WPM = 80, 450   # espeak-ng's accepted range
MAX_TEXT_CHARS = 20000         # one `say` call; longer dialogue goes line by line

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_ESPEAK_RATE = 1
_EE_OK = 0
_INIT_DONT_EXIT = 0x8000

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray      # (N,) float32 in [-1, 1], mono
    sample_rate: int         # Hz (espeak-ng: 22050)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Voice:
    name: str                # espeak-ng's voice name, e.g. "English (America)"
    language: str            # what --voice takes, e.g. "en-us"
    identifier: str          # the voice file, e.g. "gmw/en-US"


_lock = threading.Lock()
_state: dict = {}


def _library():
    """(ctypes library, sample rate), initialized once."""
    if "lib" in _state:
        return _state["lib"], _state["rate"]
    try:
        import espeakng_loader
    except ImportError as e:
        raise EngineError(f"text to speech needs the espeakng-loader package ({e}); reinstall the engine "
                          "environment (make venv)") from None
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
    except (OSError, RuntimeError) as e:
        raise EngineError(f"espeak-ng cannot be loaded from espeakng-loader: {e}") from None
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), _INIT_DONT_EXIT)
    if rate <= 0:
        raise EngineError(f"espeak-ng failed to initialize with its data at {data}")
    _state.update(lib=lib, rate=int(rate), chunks=[])

    def collect(wav, n, events) -> int:
        if n > 0 and wav:
            _state["chunks"].append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0                                     # 0 = go on

    _state["callback"] = _SYNTH_CALLBACK(collect)    # kept alive as long as the library
    lib.espeak_SetSynthCallback(_state["callback"])
    return lib, int(rate)


def list_voices() -> list[Voice]:
    """Every espeak-ng voice in the wheel's data, sorted by language."""
    with _lock:
        return sorted(_voices(_library()[0]), key=lambda v: v.language)


def _voices(lib) -> list[Voice]:
    voices, i = [], 0
    array = lib.espeak_ListVoices(None)
    while array[i]:
        v = array[i].contents
        lang = v.languages[1:].split(b"\0")[0].decode() if v.languages else ""   # first byte: priority
        voices.append(Voice(v.name.decode(), lang, v.identifier.decode()))
        i += 1
    return voices


def _set_voice(lib, voice: str) -> bool:
    """A voice name or file ("fr", "gmw/en-US"), else a listed language ("fr-fr": its voice file)."""
    if lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK:
        return True
    ident = next((v.identifier for v in _voices(lib) if v.language.lower() == voice.strip().lower()), None)
    return ident is not None and lib.espeak_SetVoiceByName(ident.encode()) == _EE_OK


def synthesize(text: str, voice: str = DEFAULT_VOICE, rate_wpm: int = DEFAULT_RATE_WPM) -> Speech:
    """Speak TEXT with an espeak-ng voice (a language like "en-us", "de", "fr", or a voice name).

    Returns Speech((N,) float32 in [-1, 1], 22050 Hz). InputError for an empty or too long text,
    an unknown voice, or a rate outside 80..450 words per minute.
    """
    if not text or not text.strip():
        raise InputError("say: the text is empty; give the words to speak")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(f"say: the text has {len(text)} characters, more than {MAX_TEXT_CHARS}; split it")
    if not MIN_RATE_WPM <= int(rate_wpm) <= MAX_RATE_WPM:
        raise InputError(f"say: rate {rate_wpm} words per minute is outside {MIN_RATE_WPM}..{MAX_RATE_WPM}")
    with _lock:
        lib, sample_rate = _library()
        if not voice.strip() or not _set_voice(lib, voice):
            raise InputError(f"say: unknown voice {voice!r}; `lipsync say --list-voices` lists them "
                             "(e.g. en-us, en-gb, de, fr-fr, es)")
        lib.espeak_SetParameter(_ESPEAK_RATE, int(rate_wpm), 0)
        _state["chunks"] = []
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if err != _EE_OK:
            raise EngineError(f"say: espeak-ng failed to synthesize the text (error {err})")
        chunks, _state["chunks"] = _state["chunks"], []
    samples = (np.concatenate(chunks).astype(np.float32) / 32768.0) if chunks else np.zeros(0, np.float32)
    if not samples.size or not np.any(samples):
        raise InputError(f"say: espeak-ng produced no sound for {text[:40]!r} with voice {voice!r}")
    return Speech(samples, sample_rate)
