"""`lipsync live`: the prediction of `lipsync predict`, computed causally from streamed audio.

Owns: LiveStream, the pure streaming core (16 kHz samples in, finished frames out; no clock,
no threads, no I/O), and run_live, which drives it from an audio source and hands frames to
sinks (sources and sinks are live_io.py's). Must not: write a prediction folder itself
(folder.write_outputs does), parse arguments, or import bpy.

Frame clock as in predict.py: frame k is shown from t_k = k / fps after the stream's first
sample. A frame goes through three gates before it is sent:
  1. its audio: the spectrogram stack (centred on t_k - the model's window shift, see
     lookahead.py) and the 40 ms level around t_k need samples up to t_k + lookahead + 15 ms
     (half an STFT window). With a lookahead shorter than the model's window needs, the
     missing future is the available audio mirrored at its last sample (np.pad 'reflect'):
     it keeps the spectral envelope of the last sound, where zeros would read as a sudden
     silence and close the mouth on every frame;
  2. smoothing: the Gaussian of predict.py needs the raw outputs of frames up to
     k + radius (2 frames at 30 fps), exactly as offline (edges held, mode 'nearest');
  3. silence: frame k's weight is decided as soon as no future can change it (a loud frame
     at once; a quiet one when its quiet run has reached silence_min_s or ended, and the
     ramp's end is known), so the offline rule holds exactly. The level is relative to the
     loudest 40 ms heard so far (a microphone) or, for a file, to the whole file's peak as
     offline (reference_peak): a stream's future loudness is unknowable, a file's is not.
So with the model's own lookahead (120 ms for models trained without --lookahead) the numbers
are those of `lipsync predict` (tests/engine/test_live.py), and the delay from a sound to its
frame is the lookahead + the smoothing radius + (only at the onset of a pause) up to
silence_min_s; `--no-smoothing` and `--silence-db -inf` take the last two away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.filters import gaussian_smooth
from ..model.articulation import apply_gain, apply_gain_coefficients
from ..prepare import audio
from ..rig.names import ARKIT_NAMES
from .predictor import (SILENT_PEAK, SMOOTHING_TRUNCATE, PEAK_GRID_S, PredictOptions, Predictor,
                      frame_count)

__all__ = ["LiveOptions", "LiveFrame", "LiveStream"]

HALF_WINDOW = audio.WINDOW_LENGTH // 2          # samples: an STFT window reaches this far past its centre
HALF_ENVELOPE = audio.ENVELOPE_LENGTH // 2      # samples: the 40 ms level reaches this far past the frame
KEEP_S = 2.0                                    # seconds of samples kept behind the oldest unfinished frame


@dataclass(frozen=True)
class LiveOptions:
    predict: PredictOptions = field(default_factory=lambda: PredictOptions(atlas=False))  # fps, smoothing,
    #                                  silence and atlas as for `lipsync predict` (start/end/chunk unused)
    lookahead_ms: float | None = None  # future audio a frame waits for; None = the model's own (120 ms unless
    #                                  trained with --lookahead); less is padded by mirroring (module docstring)
    vertices: bool = False             # compute vertices too (the blendshapes always are)

    def __post_init__(self) -> None:
        if self.lookahead_ms is not None and not 0.0 <= self.lookahead_ms <= 1000.0:
            raise ValueError(f"lookahead_ms must be in [0, 1000], got {self.lookahead_ms}")


@dataclass(frozen=True)
class LiveFrame:
    index: int                        # frame number k (time = k / fps)
    time: float                       # seconds from the stream's first sample
    blendshapes: np.ndarray           # (52,) float32 in [0, 1], ARKit order
    silent: bool                      # in a silent run (resting closed)
    vertices: np.ndarray | None       # (468, 3) float32 normalized space, or None (options.vertices False)
    lips: np.ndarray | None           # (128, 128, 3) uint8 lip crop, or None (options.predict.atlas False)
    last_sample: int                  # the highest sample index (exclusive) this frame waited for


class LiveStream:
    """Causal prediction: push 16 kHz mono samples, get back the frames they finish.

    Example::

        s = LiveStream(load_predictor("models/anna"), LiveOptions())
        for block in blocks:              # (n,) float32 at 16 kHz, any n
            for f in s.push(block): send(f.blendshapes)
        for f in s.finish(): send(f.blendshapes)   # end of stream: the last frames, as offline
    """

    def __init__(self, predictor: Predictor, options: LiveOptions = LiveOptions(), reference_peak: float | None = None):
        """reference_peak : the level silence is measured against (predict.silence_weights' peak,
        linear 40 ms RMS), when it is known in advance (a file); None = the loudest heard so far."""
        self.p, self.o, po = predictor, options, options.predict
        self.fixed_peak = reference_peak
        self.fps = float(po.fps)
        model_lookahead = predictor.lookahead_ms
        self.lookahead_ms = model_lookahead if options.lookahead_ms is None else float(options.lookahead_ms)
        self.shift = predictor.window_shift_s                      # the model's window centre: t - shift
        self.bank = bool(options.predict.atlas) and predictor.uses_bank(options.predict)
        if options.predict.atlas:           # load the texture's parts now, not while the first frame waits
            predictor.renderer if self.bank else predictor.model    # noqa: B018
        self.future = int(round(self.lookahead_ms * audio.SAMPLE_RATE / 1000.0)) + HALF_WINDOW
        # samples past a frame's centre its spectrogram window really reaches (pad up to there when short)
        self.window_end = (int(np.max(audio._COLUMN_STARTS)) + audio.WINDOW_LENGTH
                           - int(round(self.shift * audio.SAMPLE_RATE)) + 1)
        sigma = po.smoothing_sigma_s * self.fps
        self.halo = int(SMOOTHING_TRUNCATE * sigma + 0.5) if po.smoothing and sigma > 0 else 0
        self.sigma = sigma
        self.silence = po.silence_db != -np.inf
        self.min_run = max(1, math.ceil(po.silence_min_s * self.fps - 1e-9))
        self.ramp = po.silence_ramp_s * self.fps
        self.buf = np.zeros(0, np.float32)       # samples buf_start .. received - 1
        self.buf_start = 0
        self.received = 0
        self.ended = False
        self.peak = 0.0
        self.next_grid = 0                       # next 10 ms grid point of the running peak
        self.computed = 0                        # frames whose raw outputs exist
        self.emitted = 0                         # frames sent
        self.raw: dict[int, tuple] = {}          # k -> (deltas (468,3) | None, bs (52,), code (1, N_s))
        self.quiet: dict[int, bool] = {}
        self.run_start: dict[int, int] = {}      # k -> first frame of k's quiet run
        self.need: dict[int, int] = {}           # k -> samples frame k waited for
        self.previous = None                     # the last shown lip crop (AR atlas), (1, 3, 128, 128)
        self.phones = None                       # the stream's phone recogniser, for a model that reads phones
        if predictor.reads_phones:
            from ..prepare.phones import PhoneStream
            self.phones = PhoneStream()

    # -- public

    def push(self, samples: np.ndarray) -> list[LiveFrame]:
        """Add (n,) mono samples at 16 kHz; return the frames that are now final, in order."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if self.ended:
            raise RuntimeError("push after finish")
        self.buf = np.concatenate([self.buf, x])
        self.received += len(x)
        if self.phones is not None:
            self.phones.push(x)
        self._update_peak()
        ready = 0
        while self._frame_centre(self.computed + ready) + self.future <= self.received:
            ready += 1
        if ready:
            self._compute(self.computed, self.computed + ready)
        out = self._emit()
        self._trim()
        return out

    def finish(self) -> list[LiveFrame]:
        """End of stream: compute and return the remaining frames (F = round(duration x fps) in all,
        audio past the end counting as zeros, as offline)."""
        self.ended = True
        if self.phones is not None:
            self.phones.finish()
        self._update_peak()
        total = frame_count(self.received / audio.SAMPLE_RATE, self.fps)
        self.total = total
        self.computed = min(self.computed, total)    # a short lookahead may have gone past the last frame
        if total > self.computed:
            self._compute(self.computed, total)
        return [f for f in self._emit() if f.index < total]

    # -- audio and raw outputs

    def _frame_centre(self, k: int) -> int:
        return int(np.rint(k / self.fps * audio.SAMPLE_RATE))

    def _update_peak(self) -> None:
        """Running peak of the 40 ms level on predict.py's 10 ms grid (points whose window is in)."""
        if self.fixed_peak is not None:
            self.peak = float(self.fixed_peak)
            return
        limit = math.inf if self.ended else self.received
        end_s = self.received / audio.SAMPLE_RATE
        grid = []
        while True:
            t = self.next_grid * PEAK_GRID_S
            if self.ended and t >= end_s + PEAK_GRID_S - 1e-12:
                break
            if int(np.rint(t * audio.SAMPLE_RATE)) + HALF_ENVELOPE > limit:
                break
            grid.append(t)
            self.next_grid += 1
        if grid:
            lo = max(self.buf_start, int(math.floor(grid[0] * audio.SAMPLE_RATE)) - audio.ENVELOPE_LENGTH)
            seg = self.buf[lo - self.buf_start:]
            lv = audio.envelope(seg, np.asarray(grid), start_offset_s=lo / audio.SAMPLE_RATE)
            self.peak = max(self.peak, float(lv.max(initial=0.0)))

    def _samples_for(self, a: int, b: int) -> tuple[np.ndarray, int]:
        """(samples covering the windows and levels of frames a..b-1, index of their first sample);
        while streaming, a window reaching past the received audio is filled by mirroring."""
        lo_t = min(a / self.fps - self.shift, a / self.fps)
        lo = max(self.buf_start, int(math.floor(lo_t * audio.SAMPLE_RATE)) - audio.WINDOW_LENGTH
                 - audio.N_COLUMNS * audio.HOP_LENGTH)
        x = self.buf[lo - self.buf_start:]
        reach = self._frame_centre(b - 1) + max(self.window_end, HALF_ENVELOPE + 1)
        short = reach - self.received
        if short > 0 and not self.ended and len(x) > 1:
            x = np.pad(x, (0, short), mode="reflect") if short < len(x) else \
                np.pad(x, (0, short), mode="wrap")
        return x, lo

    def _compute(self, a: int, b: int) -> None:
        """Raw (unsmoothed) outputs, levels and quiet flags of frames a..b-1."""
        x, lo = self._samples_for(a, b)
        times = np.arange(a, b, dtype=np.float64) / self.fps
        off = lo / audio.SAMPLE_RATE
        spec = audio.spectrogram_frames(x, times - self.shift, start_offset_s=off)
        levels = audio.envelope(x, times, start_offset_s=off)
        gain, centre = self.p.articulation(self.o.predict), self.p.centre
        phones = None
        if self.phones is not None:   # the labels heard so far: the last few hundred ms are provisional
            from ..prepare.phones import phone_context
            phones = phone_context(self.phones.track, times - self.shift)
        codes = self.p.audio_codes(spec, phones=phones)
        raw_deltas, raw_bs = self.p.raw_outputs(codes)
        bs = apply_gain_coefficients(raw_bs, gain, centre.get("mean_blendshapes"), ARKIT_NAMES) \
            if self.p.has_blendshapes else np.zeros((b - a, len(ARKIT_NAMES)), np.float32)
        deltas = apply_gain(raw_deltas, gain, centre.get("mean_vertex_deltas"), centre.get("opening_direction"),
                            self.p.gain_rest) if self.o.vertices or self.bank else None
        for i, k in enumerate(range(a, b)):
            self.raw[k] = (None if deltas is None else deltas[i], bs[i], codes[i:i + 1])
            self.need[k] = min(self.received, self._frame_centre(k) + self.future)
            quiet = self.peak < SILENT_PEAK or \
                20.0 * math.log10(max(float(levels[i]), 1e-12) / self.peak) < self.o.predict.silence_db
            self.quiet[k] = quiet
            self.run_start[k] = self.run_start[k - 1] if quiet and self.quiet.get(k - 1, False) else k
        self.computed = b

    # -- the gates

    def _weight(self, j: int):
        """(weight in [0, 1], silent) of frame j, or None while a future frame could change it
        (predict.silence_weights, decided frame by frame)."""
        if not self.silence:
            return 1.0, False
        if not self.quiet[j]:
            return 1.0, False
        s = self.run_start[j]
        e, horizon = j, j + self.min_run + int(math.ceil(self.ramp)) + 1
        while e < self.computed and self.quiet[e] and e < horizon:
            e += 1
        closed = e < self.computed and not self.quiet[e]             # frame e is loud: the run ends there
        at_end = self.ended and e >= self.computed                    # the run reaches the stream's end
        if closed or at_end:
            if e - s < self.min_run:
                return 1.0, False
            forward = e - j if closed else math.inf
        elif e - s >= self.min_run and e - j >= self.ramp:
            forward = math.inf                                        # far enough from any end: weight from behind
        else:
            return None
        back = j - s + 1 if s > 0 else math.inf
        depth = min(back, forward)
        if self.ramp <= 0 or depth == math.inf:
            return 0.0, True
        return float(np.clip(1.0 - depth / self.ramp, 0.0, 1.0)), True

    def _emit(self) -> list[LiveFrame]:
        out = []
        last = self.total - 1 if self.ended else None
        while self.emitted < self.computed:
            j = self.emitted
            if last is None and j + self.halo >= self.computed:
                break                                                 # smoothing needs frames not yet in
            w = self._weight(j)
            if w is None:
                break
            out.append(self._finish_frame(j, *w, last))
            self.emitted += 1
        return out

    def _smoothed(self, j: int, part: int, last: int | None) -> np.ndarray:
        if not self.halo:
            return self.raw[j][part]
        top = self.computed - 1 if last is None else last
        rows = [self.raw[min(max(k, 0), top)][part] for k in range(j - self.halo, j + self.halo + 1)]
        window = np.stack(rows)
        return gaussian_smooth(window, self.sigma, axis=0, truncate=SMOOTHING_TRUNCATE)[self.halo]

    def _finish_frame(self, j: int, weight: float, silent: bool, last: int | None) -> LiveFrame:
        bs = (np.clip(self._smoothed(j, 1, last), 0.0, 1.0) * np.float32(weight)).astype(np.float32)
        vertices = None
        if self.o.vertices:
            deltas = self._smoothed(j, 0, last) * np.float32(weight)
            vertices = (self.p.reference_vertices + deltas).astype(np.float32)
        lips = None
        if self.o.predict.atlas and self.bank:          # real crops warped to the mesh (the model's mouth bank)
            deltas = self._smoothed(j, 0, last) * np.float32(weight)
            lips = self.p._bank_lips(deltas[None], np.array([weight], np.float32), 0, 1)[0]
        elif self.o.predict.atlas:
            crop, self.previous = self.p._lips(self.raw[j][2], np.array([weight], np.float32), self.previous,
                                               _NEVER, lambda n: None)
            lips = crop[0]
        return LiveFrame(j, j / self.fps, bs, silent, vertices, lips, self.need.get(j, self.received))

    def _trim(self) -> None:
        """Forget samples and raw outputs nothing unfinished can need (memory stays flat)."""
        oldest = self.emitted - self.halo - 1
        for d in (self.raw, self.quiet, self.run_start, self.need):
            for k in [k for k in d if k < oldest - self.min_run - 4]:
                del d[k]
        keep_from = min(self._frame_centre(max(self.emitted - self.halo, 0)) - int(KEEP_S * audio.SAMPLE_RATE),
                        self.received - int(KEEP_S * audio.SAMPLE_RATE))
        if keep_from - self.buf_start > audio.SAMPLE_RATE:           # trim a second at a time
            cut = keep_from - self.buf_start
            self.buf = self.buf[cut:].copy()
            self.buf_start += cut


class _Never:
    """A cancel token that is never set (live cancels between blocks, not inside a frame)."""

    def check(self) -> None:
        pass


_NEVER = _Never()
