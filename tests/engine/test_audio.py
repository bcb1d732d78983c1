"""Audio features (alignment of the per-frame spectrogram stacks) and the synthetic speech."""

import numpy as np
import pytest
from scipy import signal

from lipsync_engine.prepare import audio
from lipsync_engine.prepare.audio import HOP_LENGTH, N_COLUMNS, N_FREQ, SAMPLE_RATE, spectrogram_frames
from lipsync_engine.demo.speech import synthesize_speech

NTSC = 30000 / 1001


def impulse(t_s: float, duration_s: float = 3.0) -> np.ndarray:
    x = np.zeros(int(duration_s * SAMPLE_RATE), np.float32)
    x[int(round(t_s * SAMPLE_RATE))] = 1.0
    return x


def column_energy(spec: np.ndarray) -> np.ndarray:
    """(F, 24) energy of each column, summed over frequency."""
    return (spec[..., 0].astype(np.float64) ** 2 + spec[..., 1] ** 2).sum(axis=1)


def centroid(energy_row: np.ndarray) -> float:
    return float((np.arange(N_COLUMNS) * energy_row).sum() / energy_row.sum())


def test_shape_dtype_and_validation():
    times = np.arange(7) / 25
    spec = spectrogram_frames(np.zeros(SAMPLE_RATE, np.float32), times)
    assert spec.shape == (7, N_FREQ, N_COLUMNS, 2) == (7, 256, 24, 2)
    assert spec.dtype == np.float32
    assert spectrogram_frames(np.zeros(100), np.zeros(0)).shape == (0, 256, 24, 2)
    with pytest.raises(ValueError, match=r"\(2, 100\)"):
        spectrogram_frames(np.zeros((2, 100)), times)
    with pytest.raises(ValueError, match=r"\(7, 1\)"):
        spectrogram_frames(np.zeros(100), times[:, None])
    with pytest.raises(ValueError, match="shape"):
        spectrogram_frames(np.zeros(100), times, out=np.zeros((7, 256, 24, 2), np.float64))


@pytest.mark.parametrize("fps", [25.0, NTSC])
@pytest.mark.parametrize("t", [1.0, 1.2, 0.52, 1.013, 1.337, 2.0195])
def test_impulse_lands_in_the_right_frame_and_column(fps, t):
    times = np.arange(int(3.0 * fps)) / fps
    energy = column_energy(spectrogram_frames(impulse(t), times))
    k = int(round(t * fps))
    t_impulse = round(t * SAMPLE_RATE) / SAMPLE_RATE
    expected = 11.5 + (t_impulse - times[k]) / 0.010
    assert abs(centroid(energy[k]) - expected) < 0.2, (centroid(energy[k]), expected)
    if abs(t * fps - k) < 1e-9:                        # an impulse on a frame time: dead centre
        assert abs(centroid(energy[k]) - 11.5) < 0.01
    # Hann^2 windows 1/3 of their length apart sum to a constant, so *every* frame whose stack
    # fully covers the impulse holds the same total energy (argmax of the total would be a tie);
    # the frame nearest the impulse is the one holding most of it in its centre columns 11, 12.
    full = [f for f in range(len(times)) if abs(t_impulse - times[f]) < 0.10]
    assert np.allclose(energy[full].sum(axis=1), energy[k].sum(), rtol=1e-4)
    assert int(np.argmax(energy[:, 11:13].sum(axis=1))) == k


def test_frame_time_sits_between_the_centre_columns():
    t = 1.0
    energy = column_energy(spectrogram_frames(impulse(t), np.array([t])))[0]
    assert energy[11] == pytest.approx(energy[12], rel=1e-5)
    assert energy[11] > 0.5 * energy.max()
    assert np.all(energy[:9] == 0) and np.all(energy[15:] == 0)   # 30 ms windows 10 ms apart


def test_start_offset_shifts_columns():
    x = impulse(1.0)
    times = np.array([1.0, 1.04, 1.08])
    base = spectrogram_frames(x, times)
    for offset in (0.03, -0.02, 0.0125):
        shifted = spectrogram_frames(x, times, start_offset_s=offset)
        # sample n is at video time offset + n / SR: the impulse moves later by `offset`
        for f in range(len(times)):
            expected = centroid(column_energy(base)[f]) + offset / 0.010
            if 1.5 < expected < 21.5:
                assert abs(centroid(column_energy(shifted)[f]) - expected) < 0.05
        # identical to asking for frame times moved back by the offset
        np.testing.assert_allclose(shifted, spectrogram_frames(x, times - offset), atol=1e-6)


def test_zeros_outside_the_audio():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)        # 1 s of audio
    spec = spectrogram_frames(x, np.array([-1.0, 5.0, 1.0 + 0.005, 0.0]))
    assert np.all(spec[0] == 0) and np.all(spec[1] == 0)
    energy = column_energy(spec)
    # frame at 1.005 s: column j's window spans centre +-15 ms; it overlaps the audio iff it starts before 1 s
    starts = 1.005 + (np.arange(N_COLUMNS) - 11.5) * 0.010 - 0.015
    assert np.all(energy[2][starts >= 1.0 - 1e-9] == 0)
    assert np.all(energy[2][starts < 1.0 - 0.001] > 0)
    assert np.all(energy[3][:10] == 0) and np.all(energy[3][13:] > 0)
    # audio shorter than the video (GRID's ~48 ms): the last frames are partly zero, not an error
    tail = spectrogram_frames(x[: SAMPLE_RATE - 768], np.array([1.0]))
    assert np.all(column_energy(tail)[0][-5:] == 0)


def test_sine_peaks_at_its_bin():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    x = (0.3 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    spec = spectrogram_frames(x, np.array([0.5, 1.0, 1.5]))
    mag = np.hypot(spec[..., 0], spec[..., 1])                         # (F, 256, 24)
    assert 1000.0 / (SAMPLE_RATE / 512) == 32
    assert np.all(np.argmax(mag, axis=1) == 32)
    # a full-scale window sum: amplitude * sum(hann) / 2 at the peak bin
    assert mag[:, 32].mean() == pytest.approx(0.3 * audio.HANN.sum() / 2, rel=0.05)


def test_matches_a_plain_loop_and_chunking_is_invisible():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5 * SAMPLE_RATE).astype(np.float32) * 0.1
    times = np.arange(audio.CHUNK_FRAMES + 44) / 25.0 * 0.7 + 0.01
    spec = spectrogram_frames(x, times, start_offset_s=0.05)
    window = signal.get_window("hann", audio.WINDOW_LENGTH)           # periodic Hann
    for f in (0, 3, audio.CHUNK_FRAMES - 1, audio.CHUNK_FRAMES, len(times) - 1):
        for j in (0, 11, 12, 23):
            centre = (times[f] + (j - 11.5) * 0.010 - 0.05) * SAMPLE_RATE
            start = int(round(centre)) - audio.WINDOW_LENGTH // 2
            seg = np.zeros(audio.WINDOW_LENGTH)
            lo, hi = max(start, 0), min(start + audio.WINDOW_LENGTH, len(x))
            if hi > lo:
                seg[lo - start:hi - start] = x[lo:hi]
            ref = np.fft.rfft(seg * window, n=512)[:256]
            np.testing.assert_allclose(spec[f, :, j, 0] + 1j * spec[f, :, j, 1], ref, atol=2e-4)
    out = np.zeros_like(spec)
    assert spectrogram_frames(x, times, 0.05, out=out) is out
    np.testing.assert_array_equal(out, spec)


def test_hop_and_window_constants():
    assert (audio.SAMPLE_RATE, audio.WINDOW_LENGTH, HOP_LENGTH, audio.N_FFT) == (16000, 480, 160, 512)
    assert audio.N_FREQ == 256 and audio.N_COLUMNS == 24


def test_envelope():
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    x = (0.4 * np.sin(2 * np.pi * 200.0 * t)).astype(np.float32)
    env = audio.envelope(x, np.array([-1.0, 0.0, 1.0, 2.0, 3.0]))
    assert env.dtype == np.float32 and env.shape == (5,)
    assert env[0] == 0 and env[4] == 0
    assert env[2] == pytest.approx(0.4 / np.sqrt(2), rel=0.01)
    assert env[1] == pytest.approx(env[2] / np.sqrt(2), rel=0.05)     # half the window is outside
    assert audio.envelope(x, np.array([1.0]), start_offset_s=5.0)[0] == 0


# ---------------------------------------------------------------------------------------------
# Synthetic speech
# ---------------------------------------------------------------------------------------------

def test_synthetic_speech_is_deterministic():
    a, b = synthesize_speech(3.0, seed=5), synthesize_speech(3.0, seed=5)
    np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(a.openness, b.openness)
    assert not np.array_equal(a.samples, synthesize_speech(3.0, seed=6).samples)
    assert len(a.samples) == 3 * 16000 and a.sample_rate == 16000
    assert a.samples.dtype == np.float32 and a.openness.dtype == np.float32
    assert a.voiced.dtype == bool and a.f1_hz.dtype == np.float32
    assert 0.45 < np.abs(a.samples).max() < 0.55


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_openness_range_and_variation(seed):
    s = synthesize_speech(8.0, seed=seed)
    assert s.openness.min() >= 0 and s.openness.max() <= 1
    assert s.openness.std() > 0.2
    times = np.arange(0, 8.0, 0.04)
    np.testing.assert_allclose(s.openness_at(times), s.openness[np.round(times * 16000).astype(int)], atol=1e-6)
    assert s.openness_at(times).dtype == np.float32
    assert s.openness_at([-1.0, 9.0]).tolist() == [0.0, 0.0]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_pauses_are_quiet_and_closed():
    s = synthesize_speech(8.0, seed=1)
    sr = s.sample_rate
    # a non-voiced run of >= 250 ms is a pause (150-600 ms) possibly followed by a burst (<= 80 ms)
    pauses = [(a + int(0.03 * sr), b - int(0.11 * sr)) for a, b in _runs(~s.voiced) if b - a >= 0.25 * sr]
    assert len(pauses) >= 2
    voiced_rms = np.sqrt(np.mean(s.samples[s.voiced] ** 2))
    for a, b in pauses:
        assert s.openness[a:b].max() < 0.01
        assert np.sqrt(np.mean(s.samples[a:b] ** 2)) < 0.01 * voiced_rms
    paused = sum(b - a for a, b in _runs((~s.voiced) & (s.openness < 0.01)))
    assert 0.08 < paused / len(s.samples) < 0.4                       # about 20 % of the time


def test_formant_peak_follows_f1():
    s = synthesize_speech(8.0, seed=0)
    n, hop = 512, 160
    freqs = np.fft.rfftfreq(n, 1 / s.sample_rate)
    band = (freqs >= 200) & (freqs <= 1000)
    est, true = [], []
    for a in range(0, len(s.samples) - n, hop):
        seg = s.samples[a:a + n]
        if s.voiced[a:a + n].all() and np.sqrt(np.mean(seg ** 2)) > 0.05:
            mag = np.abs(np.fft.rfft(seg * np.hanning(n)))
            est.append(freqs[band][np.argmax(mag[band])])
            true.append(s.f1_hz[a + n // 2])
    est, true = np.asarray(est), np.asarray(true)
    assert len(est) > 100
    assert np.ptp(true) > 300                                          # F1 really moves
    assert np.corrcoef(est, true)[0, 1] > 0.9
    assert np.median(np.abs(est - true)) < 80                          # within ~half a harmonic


def test_openness_follows_the_documented_mapping():
    s = synthesize_speech(6.0, seed=2)
    sr = s.sample_rate
    factor = np.clip((s.f1_hz - 250) / 550, 0.05, 1)
    # openness = smooth(amplitude * factor) with amplitude <= 1: never (much) above the F1 factor
    inner = s.voiced & (np.convolve(s.voiced, np.ones(int(0.06 * sr)), "same") >= int(0.06 * sr))
    assert np.all(s.openness[inner] <= factor[inner] + 0.02)
    # a quarter into long voiced runs (syllables start at full voicing after a 30 ms attack,
    # back-to-back syllables dip at their boundary), openness tracks F1
    points = [a + (b - a) // 4 for a, b in _runs(s.voiced) if b - a > 0.2 * sr]
    assert len(points) >= 5
    assert np.corrcoef(factor[points], s.openness[points])[0, 1] > 0.8
    assert 0.6 < np.median(s.openness[points] / factor[points]) <= 1.0
