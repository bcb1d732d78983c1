"""The paper's audio features: per-video-frame complex STFT stacks (Section 3), and an envelope.

Owns: the spectrogram layout and its alignment to video frames. For each video frame time t
(seconds on the video clock), 24 Hann-windowed STFT columns (30 ms windows, 10 ms apart)
whose window centres are t + (j - 11.5) * 10 ms, j = 0..23, so the stack spans 240 ms
centred on t and t sits exactly between columns 11 and 12. Each column is a 512-point
real FFT of a 480-sample window; bins 0..255 are kept (0 .. 7968.75 Hz in steps of
31.25 Hz; the Nyquist bin is dropped). Audio sample n sits at video time
start_offset_s + n / SAMPLE_RATE; window samples outside the audio are zeros, so audio
shorter (or later) than the video is handled.

Must not: decode files (media.py does), resample (callers pass SAMPLE_RATE audio), or
import bpy/torch.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000      # Hz, the rate all features are computed at
WINDOW_LENGTH = 480      # samples (30 ms), periodic Hann window
HOP_LENGTH = 160         # samples (10 ms) between columns
N_FFT = 512              # samples, FFT length (window zero-padded at its end)
N_FREQ = 256             # rfft bins kept: 0..255 (bin k is k * SAMPLE_RATE / N_FFT Hz)
N_COLUMNS = 24           # STFT columns per video frame (240 ms)
CENTRE_COLUMN = (N_COLUMNS - 1) / 2   # 11.5: the column position of the frame time
ENVELOPE_LENGTH = 640    # samples (40 ms), RMS window of `envelope`
CHUNK_FRAMES = 256       # video frames per vectorized block (~12 MB of windows at a time)

# Periodic Hann (peak 1 at sample WINDOW_LENGTH // 2, the window centre); its squares from
# windows HOP_LENGTH apart sum to a constant, so column energies interpolate positions exactly.
HANN = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_LENGTH) / WINDOW_LENGTH)).astype(np.float32)
# Start sample of column j's window relative to the sample nearest the frame time.
_COLUMN_STARTS = (np.round((np.arange(N_COLUMNS) - CENTRE_COLUMN) * HOP_LENGTH).astype(np.int64)
                  - WINDOW_LENGTH // 2)


def _check_samples(samples) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be a 1-D (N,) mono signal, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_times(frame_times_s) -> np.ndarray:
    t = np.asarray(frame_times_s, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"frame_times_s must be 1-D (F,) seconds, got shape {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("frame_times_s must be finite")
    return t


def frame_centre_samples(frame_times_s, start_offset_s: float = 0.0) -> np.ndarray:
    """(F,) int64: the audio sample nearest each video frame time (may be outside the audio)."""
    t = _check_times(frame_times_s)
    return np.rint((t - float(start_offset_s)) * SAMPLE_RATE).astype(np.int64)


def _gather_windows(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(C, N_COLUMNS, WINDOW_LENGTH) float32 Hann-windowed audio around C centre samples.

    x : (N,) float32 followed by one extra 0 (indices outside the audio point at it).
    """
    n = len(x) - 1
    idx = centres[:, None, None] + _COLUMN_STARTS[None, :, None] + np.arange(WINDOW_LENGTH)[None, None, :]
    idx = np.where((idx >= 0) & (idx < n), idx, n)
    return x[idx] * HANN


def spectrogram_frames(samples, frame_times_s, start_offset_s: float = 0.0,
                       out: np.ndarray | None = None) -> np.ndarray:
    """Complex spectrogram stacks, one per video frame (the paper's S_t).

    samples : (N,) mono audio at SAMPLE_RATE Hz (any real dtype; float in [-1, 1] expected).
    frame_times_s : (F,) video frame times, seconds on the video clock.
    start_offset_s : video time of samples[0] (seconds), e.g. `media.AudioTrack.start_offset_s`.
    out : optional (F, N_FREQ, N_COLUMNS, 2) float32 array to fill (e.g. a memmap).

    Returns (F, 256, 24, 2) float32: [frame, frequency bin, column, (real, imag)] of the
    un-normalized DFT sum (units of the samples). Memory besides `out` stays bounded
    (CHUNK_FRAMES frames at a time), so an hour of frames is fine.
    """
    x = np.append(_check_samples(samples), np.float32(0.0))
    centres = frame_centre_samples(frame_times_s, start_offset_s)
    shape = (len(centres), N_FREQ, N_COLUMNS, 2)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {shape}, got {out.dtype} {out.shape}")
    for c0 in range(0, len(centres), CHUNK_FRAMES):
        spec = np.fft.rfft(_gather_windows(x, centres[c0:c0 + CHUNK_FRAMES]), n=N_FFT, axis=-1)
        spec = spec[:, :, :N_FREQ].transpose(0, 2, 1)          # (C, N_FREQ, N_COLUMNS) complex
        out[c0:c0 + len(spec), :, :, 0] = spec.real
        out[c0:c0 + len(spec), :, :, 1] = spec.imag
    return out


def envelope(samples, frame_times_s, start_offset_s: float = 0.0) -> np.ndarray:
    """(F,) float32 RMS of the audio over 40 ms (ENVELOPE_LENGTH samples) centred on each frame.

    samples, frame_times_s, start_offset_s : as for `spectrogram_frames`. Samples outside the
    audio count as zeros (the mean is always over ENVELOPE_LENGTH samples).
    """
    x = _check_samples(samples).astype(np.float64)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])           # energy[k] = sum of x[:k]^2
    start = frame_centre_samples(frame_times_s, start_offset_s) - ENVELOPE_LENGTH // 2
    lo = np.clip(start, 0, len(x))
    hi = np.clip(start + ENVELOPE_LENGTH, 0, len(x))
    total = np.maximum(energy[hi] - energy[lo], 0.0)
    return np.sqrt(total / ENVELOPE_LENGTH).astype(np.float32)
