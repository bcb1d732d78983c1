"""Speaker-independent phone features: what PocketSphinx hears, as a context of phone labels per frame.

Owns: the phone inventory, the 10 ms phone track of an audio signal (PocketSphinx 5's English
acoustic model and phone language model, which ship inside its wheel: nothing is downloaded),
its streaming form for `lipsync live`, and the per-frame context the network reads. One minute
of a speaker's audio teaches the network little about which sound makes which mouth; a phone
recogniser trained on many speakers knows it already (Rhubarb Lip Sync is built on the same
recogniser). On the anchor's inner split the network with this input follows the mouth with
openness r 0.50-0.53 against 0.38-0.40 without it (docs/evaluation.md, "Phone features").

For each video frame time t (the model's window centre, t - shift for a low-latency model),
the context is the phone label at t + o for o in CONTEXT_MS (-120 .. +120 ms in 20 ms steps:
the span of the spectrogram window), as PHONES indices; the network turns them into one-hot
vectors. Times outside the audio read as silence.

Must not: decode files (a prepared speaker's takes come through lookahead.take_audio), resample
(callers pass audio.SAMPLE_RATE audio), or import torch or bpy.
"""

from __future__ import annotations

import numpy as np

from . import audio

PHONES = ("SIL", "+NSN+", "+SPN+", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER",
          "EY", "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH",
          "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH")   # CMU ARPAbet + silence and noise; 0 = silence
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
CONTEXT_MS = tuple(range(-120, 121, 20))   # label offsets around the frame time (13)
TRACK_RATE = 100                           # labels per second (PocketSphinx's 10 ms frames)
BLOCK_S = 30.0                             # long audio is recognised in blocks of this many seconds
BLOCK_MARGIN_S = 1.0                       # ... each with this much audio either side, whose labels are dropped
UTTERANCE_S = 20.0                         # a stream's recogniser closes its utterance this often (PhoneStream)


def _decoder():
    """A PocketSphinx phone recogniser (all-phone search, wide beams of 1e-20). 0.2 s to make."""
    try:
        from pocketsphinx import Decoder, get_model_path
    except ImportError as e:
        from ..core.errors import EnvironmentProblem

        raise EnvironmentProblem(f"the phone recogniser is not installed ({e}); install the engine's pinned "
                                 "requirements (requirements.lock), or train a model without phones") from e

    return Decoder(hmm=get_model_path("en-us/en-us"), allphone=get_model_path("en-us/en-us-phone.lm.bin"),
                   lm=None, beam=1e-20, pbeam=1e-20, lw=2.0, loglevel="FATAL")


def _pcm(samples: np.ndarray) -> bytes:
    x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    return np.rint(x * 32767.0).astype("<i2").tobytes()


def _fill(track: np.ndarray, segments, first: int = 0, lo: int = 0, hi: int | None = None) -> None:
    """Write (word, start frame, end frame) segments into track (frame f at index first + f),
    keeping only indices lo..hi-1."""
    hi = len(track) if hi is None else hi
    for seg in segments or ():
        a, b = max(lo, first + seg.start_frame), min(hi, first + seg.end_frame + 1)
        if b > a:
            track[a:b] = PHONE_INDEX.get(seg.word, 0)


class PhoneRecognizer:
    """Phone tracks of whole signals; keeps one decoder (a server recognises many lines)."""

    def __init__(self):
        self._d = None

    def track(self, samples: np.ndarray, on_block=None) -> np.ndarray:
        """(ceil(N / 160),) uint8 PHONES indices, one per 10 ms of (N,) mono samples at 16 kHz.
        Audio longer than BLOCK_S is recognised in overlapping blocks (memory and time stay linear);
        on_block(done, total) after each (progress; it may raise to cancel)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        hop = audio.SAMPLE_RATE // TRACK_RATE
        out = np.zeros(-(-len(x) // hop), np.uint8)
        if self._d is None:
            self._d = _decoder()
        # the decoder's feature state (its running cepstral mean) carries over from the audio it
        # heard before: reset, a signal gets the same labels whatever came before it (a server's
        # earlier lines, a speaker's earlier takes), as from a new decoder; 0.1 ms
        self._d.reinit_feat()
        block, margin = int(BLOCK_S * TRACK_RATE), int(BLOCK_MARGIN_S * TRACK_RATE)
        for s in range(0, len(out), block):
            a, b = max(0, s - margin), min(len(out), s + block + margin)
            self._d.start_utt()
            self._d.process_raw(_pcm(x[a * hop:b * hop]), full_utt=True)
            self._d.end_utt()
            _fill(out, self._d.seg(), a, s, min(len(out), s + block))
            if on_block is not None:
                on_block(s // block + 1, -(-len(out) // block))
        return out


def phone_track(samples: np.ndarray) -> np.ndarray:
    """(ceil(N / 160),) uint8: the PHONES index heard in each 10 ms of (N,) mono 16 kHz samples."""
    return PhoneRecognizer().track(samples)


def phone_context(track: np.ndarray, times_s, start_offset_s: float = 0.0) -> np.ndarray:
    """(F, len(CONTEXT_MS)) uint8 phone labels around each time (seconds on the clock where
    track[0] starts at start_offset_s); outside the track: silence (0)."""
    t = np.asarray(times_s, np.float64)
    idx = np.floor((t[:, None] + np.asarray(CONTEXT_MS)[None] / 1000.0 - float(start_offset_s)) * TRACK_RATE
                   + 1e-6).astype(np.int64)
    ok = (idx >= 0) & (idx < len(track))
    out = np.zeros(idx.shape, np.uint8)
    out[ok] = np.asarray(track)[idx[ok]]
    return out


class PhoneStream:
    """The phone track of a stream (`lipsync live`): push samples, read the labels heard so far.

    The labels of the last few hundred milliseconds are the recogniser's current best guess and
    may differ from what it would say with the whole line (predict): live and predict agree
    closely, not exactly, for a model that reads phones. The recogniser closes its utterance
    every UTTERANCE_S seconds and opens the next: the labels before are final, and reading the
    open utterance's segmentation after each block stays as cheap an hour in as at the start."""

    def __init__(self):
        self._d = _decoder()
        self._d.start_utt()
        self._labels = np.zeros(1024, np.uint8)   # grows by doubling; track is its first steps
        self.track = self._labels[:0]
        self.received = 0                          # samples pushed
        self._fed = 0                              # 10 ms steps given to the recogniser
        self._start = 0                            # the step where the open utterance began
        self._pending = np.zeros(0, np.float32)
        self.ended = False

    def push(self, samples: np.ndarray) -> None:
        x = np.concatenate([self._pending, np.asarray(samples, np.float32).reshape(-1)])
        hop = audio.SAMPLE_RATE // TRACK_RATE
        whole = len(x) // hop * hop
        if whole:
            self._d.process_raw(_pcm(x[:whole]))
            self._fed += whole // hop
        self._pending = x[whole:]
        self.received += len(samples)
        if self._fed - self._start >= UTTERANCE_S * TRACK_RATE:
            self._d.end_utt()
            self._update()                         # the closed utterance's labels, final
            self._d.start_utt()
            self._start = self._fed
        self._update()

    def finish(self) -> None:
        if self.ended:
            return
        if len(self._pending):
            self._d.process_raw(_pcm(self._pending))
        self._d.end_utt()
        self.ended = True
        self._update()

    def _update(self) -> None:
        """Write the open utterance's current segmentation over its steps."""
        n = -(-self.received // (audio.SAMPLE_RATE // TRACK_RATE))
        if n > len(self._labels):
            self._labels = np.concatenate([self._labels, np.zeros(max(n, 2 * len(self._labels)) - len(self._labels),
                                                                  np.uint8)])
        self._labels[self._start:n] = 0
        _fill(self._labels[:n], self._d.seg(), self._start, self._start)
        self.track = self._labels[:n]


def speaker_phones(speaker_dir, lookahead_ms: float = 120.0, on_take=None, rows=None) -> np.ndarray:
    """(N, len(CONTEXT_MS)) uint8 phone contexts of a prepared speaker's frames, recognised from
    its source videos' audio (the window centred where the spectrogram's is: lookahead.py).
    DatasetError naming the take when a source video is gone. on_take(done, total) after each
    take (progress; it may raise to cancel). rows: only the takes of these frames are recognised
    (the other rows stay silence), e.g. a held-out tail."""
    from . import dataset
    from .lookahead import take_audio, window_shift_s

    ds = dataset.open_speaker(speaker_dir)
    times = np.asarray(ds.frame_times, np.float64)
    shift = window_shift_s(lookahead_ms)
    out = np.zeros((len(ds), len(CONTEXT_MS)), np.uint8)
    recognizer = PhoneRecognizer()
    index = np.asarray(ds.frame_index)[:, 0]
    takes = set(np.unique(index if rows is None else index[np.asarray(rows)]).tolist())   # with frames
    total = len(takes)
    for k, (take_rows, sound) in enumerate(take_audio(ds, "the phone features are recognised from", takes)):
        out[take_rows] = phone_context(recognizer.track(sound.samples), times[take_rows] - shift,
                                       sound.start_offset_s)
        if on_take is not None:
            on_take(k + 1, total)
    return out
