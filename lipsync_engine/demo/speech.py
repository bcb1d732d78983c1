"""A speech-like test signal with a known articulation (mouth openness) curve; no download.

Owns: the seeded synthetic "speaker" behind the built-in demo video and the audio tests.
The signal is a random but seeded sequence of phrases, each a few syllables, separated by
pauses:
- a syllable is an optional consonant burst (20-80 ms of high-passed noise) followed by a
  voiced segment (120-350 ms): a glottal pulse train (F0 100-150 Hz with a slow contour and
  ~1 % jitter, -6 dB/octave net tilt) through a cascade of 3 formant resonators whose
  F1/F2/F3 glide between two vowel targets (VOWELS);
- a pause is 150-600 ms of near-silence (a noise floor ~-60 dB below the peak);
about 20 % of the time is paused. The samples are scaled to a peak of PEAK.

The known mapping from signal to articulation (per sample, then smoothed):

    openness = smooth( a(t) * clip((F1(t) - 250) / (800 - 250), 0.05, 1) )   in voiced parts,
               smooth( 0.1 )                                                   in bursts,
               smooth( 0 )                                                     in pauses,

where a(t) in [0, 1] is the voicing amplitude envelope, F1(t) the first formant (Hz) and
smooth() a zero-phase Hann low-pass of 25 ms full width at half maximum (a 50 ms kernel), so
the curve moves like a jaw. openness is in [0, 1].

Must not: read or write files, or import bpy/torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

PEAK = 0.5                         # peak absolute sample value
MIN_SAMPLE_RATE = 8000             # Hz; F3 must stay below Nyquist
VOWELS = {                         # vowel: (F1, F2, F3) targets in Hz
    "a": (750.0, 1200.0, 2600.0),
    "i": (300.0, 2300.0, 3000.0),
    "u": (320.0, 800.0, 2400.0),
    "e": (500.0, 1900.0, 2600.0),
    "o": (500.0, 900.0, 2500.0),
}
VOWEL_WEIGHTS = (0.4, 0.2, 0.15, 0.1, 0.15)   # probabilities of a, i, u, e, o
BANDWIDTHS_HZ = (70.0, 100.0, 150.0)          # formant bandwidths B1, B2, B3 (Hz)
VOICED_S = (0.120, 0.350)                     # voiced segment length range (s)
BURST_S = (0.020, 0.080)                      # consonant burst length range (s)
PAUSE_S = (0.150, 0.600)                      # pause length range (s)
BURST_PROBABILITY = 0.6                       # chance a syllable starts with a burst
SYLLABLES_PER_PHRASE = (3, 8)                 # inclusive range; ~20 % of the time is paused
F0_RANGE_HZ = (100.0, 150.0)                  # phrase base pitch range (Hz)
F0_JITTER = 0.01                              # relative period-to-period pitch jitter
ATTACK_S = 0.030                              # voicing onset/offset ramps (s)
BURST_LEVEL = 0.25                            # burst amplitude relative to full voicing
BURST_HIGHPASS_HZ = 2500.0                    # burst noise high-pass cutoff (Hz)
NOISE_FLOOR = 1e-3                            # noise floor amplitude relative to PEAK
BURST_OPENNESS = 0.1                          # openness during bursts
F1_CLOSED_HZ, F1_OPEN_HZ = 250.0, 800.0       # F1 mapped to openness 0 and 1
OPENNESS_FLOOR = 0.05                         # lower clip of the F1 factor while voiced
SMOOTH_FWHM_S = 0.025                         # openness low-pass full width at half max (s)
FORMANT_BLOCK_S = 0.005                       # resonator coefficient update period (s)

PAUSE, BURST, VOICED = 0, 1, 2                # segment kinds


@dataclass(frozen=True)
class SyntheticSpeech:
    """A synthetic utterance and its per-sample articulation truth.

    samples : (N,) float32, peak ~PEAK. sample_rate : Hz.
    openness : (N,) float32 in [0, 1] (the module docstring's mapping).
    voiced : (N,) bool, True inside voiced segments. f1_hz : (N,) float32 first formant (Hz;
        the glide target also outside voiced segments, where nothing sounds).
    """

    samples: np.ndarray
    sample_rate: int
    openness: np.ndarray
    voiced: np.ndarray
    f1_hz: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def openness_at(self, times_s) -> np.ndarray:
        """(F,) float32 openness at the given times (seconds), linearly interpolated; 0 outside."""
        t = np.asarray(times_s, dtype=np.float64).reshape(-1)
        grid = np.arange(len(self.openness)) / self.sample_rate
        return np.interp(t, grid, self.openness, left=0.0, right=0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Score: which segment when
# ---------------------------------------------------------------------------------------------

def _plan(duration_s: float, rng: np.random.Generator) -> list[tuple[int, float, dict]]:
    """(kind, length s, parameters) segments covering at least duration_s, starting with a pause."""
    segments, total = [], 0.0
    names = list(VOWELS)
    while total < duration_s:
        start = len(segments)
        segments.append((PAUSE, rng.uniform(*PAUSE_S), {}))
        f0 = rng.uniform(*F0_RANGE_HZ)
        n_syll = int(rng.integers(SYLLABLES_PER_PHRASE[0], SYLLABLES_PER_PHRASE[1] + 1))
        for k in range(n_syll):
            if rng.random() < BURST_PROBABILITY:
                segments.append((BURST, rng.uniform(*BURST_S), {}))
            vowels = rng.choice(names, size=2, p=VOWEL_WEIGHTS)
            segments.append((VOICED, rng.uniform(*VOICED_S), {
                "vowels": tuple(vowels), "level": rng.uniform(0.85, 1.0),
                "f0": f0 * (1.0 - 0.15 * k / n_syll) * rng.uniform(0.95, 1.05)}))
        total += sum(s[1] for s in segments[start:])
    return segments


def _render_plan(segments, n: int, sr: int) -> dict[str, np.ndarray]:
    """Per-sample tracks of the plan: kind, amplitude envelope, F0, F1..F3 (length n)."""
    kind = np.zeros(n, np.int8)
    amp, f0 = np.zeros(n), np.full(n, F0_RANGE_HZ[0])
    formants = np.tile(np.asarray(VOWELS["e"]), (n, 1))
    pos = 0
    for what, length, p in segments:
        a, b = pos, min(n, pos + int(round(length * sr)))
        pos += int(round(length * sr))
        if b <= a:
            continue
        m, u = b - a, np.linspace(0.0, 1.0, b - a)
        kind[a:b] = what
        if what == VOICED:
            glide = 0.5 - 0.5 * np.cos(np.pi * u)                      # smooth vowel-to-vowel
            v0, v1 = np.asarray(VOWELS[p["vowels"][0]]), np.asarray(VOWELS[p["vowels"][1]])
            formants[a:b] = v0 + glide[:, None] * (v1 - v0)
            amp[a:b] = p["level"] * _ramp(m, int(ATTACK_S * sr))
            f0[a:b] = p["f0"] * (1.0 + 0.06 * np.sin(np.pi * u))       # slow rise-fall contour
        elif what == BURST:
            amp[a:b] = BURST_LEVEL * _ramp(m, max(1, m // 4))
        if what != VOICED and a > 0:
            formants[a:b] = formants[a - 1]
    return {"kind": kind, "amp": amp, "f0": f0, "formants": formants}


def _ramp(m: int, ramp: int) -> np.ndarray:
    """(m,) raised-cosine on/off envelope with `ramp`-sample attack and release."""
    env = np.ones(m)
    r = max(1, min(ramp, m // 2))
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
    env[:r], env[m - r:] = edge, edge[::-1]
    return env


# ---------------------------------------------------------------------------------------------
# Sound sources and filters
# ---------------------------------------------------------------------------------------------

def _glottal_source(f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) pulse train at the per-sample pitch f0 (Hz), jittered, -6 dB/octave net tilt."""
    jitter = 1.0 + F0_JITTER * rng.standard_normal(len(f0))
    phase = np.cumsum(f0 * jitter / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)                     # 1 at each period start
    glottal = signal.lfilter([1.0], [1.0, -0.97], signal.lfilter([1.0], [1.0, -0.97], pulses))
    return np.diff(glottal, prepend=0.0)                               # lip radiation (+6 dB/oct)


def _resonator(freq: float, bandwidth: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, a) of a 2-pole resonator at freq (Hz) with unit gain at 0 Hz (a cascade section)."""
    r = np.exp(-np.pi * bandwidth / sr)
    a = np.array([1.0, -2.0 * r * np.cos(2.0 * np.pi * freq / sr), r * r])
    return np.array([a.sum()]), a


def _formant_filter(x: np.ndarray, formants: np.ndarray, sr: int) -> np.ndarray:
    """Cascade of 3 resonators whose frequencies follow formants (N, 3), updated every 5 ms."""
    y = np.array(x, dtype=np.float64)
    block = max(1, int(FORMANT_BLOCK_S * sr))
    for k, bw in enumerate(BANDWIDTHS_HZ):
        state = np.zeros(2)
        for s in range(0, len(y), block):
            b, a = _resonator(float(formants[s, k]), bw, sr)
            y[s:s + block], state = signal.lfilter(b, a, y[s:s + block], zi=state)
    return y


def _burst_noise(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    sos = signal.butter(4, BURST_HIGHPASS_HZ, btype="highpass", fs=sr, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n))


# ---------------------------------------------------------------------------------------------
# Openness and the whole signal
# ---------------------------------------------------------------------------------------------

def _smooth(x: np.ndarray, sr: int) -> np.ndarray:
    """Zero-phase Hann low-pass with SMOOTH_FWHM_S full width at half maximum."""
    m = max(3, int(round(2 * SMOOTH_FWHM_S * sr)) | 1)                 # odd kernel, 2 x FWHM
    kernel = np.hanning(m + 2)[1:-1]
    return signal.fftconvolve(x, kernel / kernel.sum(), mode="same")


def _openness(tracks: dict[str, np.ndarray], sr: int) -> np.ndarray:
    """(N,) float32 openness from the per-sample tracks (the module docstring's mapping)."""
    f1_factor = np.clip((tracks["formants"][:, 0] - F1_CLOSED_HZ) / (F1_OPEN_HZ - F1_CLOSED_HZ),
                        OPENNESS_FLOOR, 1.0)
    kind = tracks["kind"]
    raw = np.where(kind == VOICED, tracks["amp"] * f1_factor, np.where(kind == BURST, BURST_OPENNESS, 0.0))
    return np.clip(_smooth(raw, sr), 0.0, 1.0).astype(np.float32)


def synthesize_speech(duration_s: float, sample_rate: int = 16000, seed: int = 0) -> SyntheticSpeech:
    """A seeded speech-like utterance of duration_s seconds with its openness truth.

    duration_s : seconds (> 0). sample_rate : Hz (>= MIN_SAMPLE_RATE). seed : the same seed
    gives bit-identical output.
    """
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if int(sample_rate) < MIN_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be >= {MIN_SAMPLE_RATE} Hz, got {sample_rate}")
    sr, rng = int(sample_rate), np.random.default_rng(seed)
    n = int(round(duration_s * sr))
    tracks = _render_plan(_plan(duration_s, rng), n, sr)
    kind = tracks["kind"]
    voiced = _formant_filter(_glottal_source(tracks["f0"], sr, rng), tracks["formants"], sr)
    voiced *= tracks["amp"] * (kind == VOICED) / max(1e-9, np.percentile(np.abs(voiced), 99.5))
    burst = _burst_noise(n, sr, rng) * tracks["amp"] * (kind == BURST) / 3.0
    x = voiced + burst
    x *= PEAK / max(1e-9, np.max(np.abs(x)))
    x += PEAK * NOISE_FLOOR * rng.standard_normal(n)
    return SyntheticSpeech(samples=x.astype(np.float32), sample_rate=sr, openness=_openness(tracks, sr),
                           voiced=kind == VOICED, f1_hz=tracks["formants"][:, 0].astype(np.float32))
