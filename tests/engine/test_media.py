"""Probing, frame decoding (rotation, seeking, truncation) and audio loading, on files written here."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
from scipy import signal

from lipsync_engine.io import media
from lipsync_engine.core.errors import EngineError, InputError

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255),
           (255, 0, 255), (128, 128, 128), (255, 255, 255), (20, 20, 20), (200, 100, 50)]


def test_signal(n: int, rate: int, seed: int = 0) -> np.ndarray:
    """Broadband test sound below 6 kHz: three tones and low-passed noise, peak < 0.6."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    tones = 0.1 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 1330 * t) + np.sin(2 * np.pi * 3100 * t))
    noise = signal.sosfilt(signal.butter(6, 5000, fs=rate, output="sos"), rng.standard_normal(n)) * 0.08
    return (tones + noise).astype(np.float32)


test_signal.__test__ = False


def write_video(path: Path, images, fps=25, audio=None, rotation=None, container_options=None,
                gop=None, bframes=True, audio_delay_s=0.0):
    """H.264 (+ AAC) with exact timestamps. audio: (samples (C, N) float32, rate) or None."""
    rate = Fraction(fps).limit_denominator(100000)
    with av.open(str(path), "w", options=container_options or {}) as out:
        vs = out.add_stream("libx264", rate=rate, options={} if bframes else {"bf": "0"})
        vs.height, vs.width = images[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        if gop:
            vs.codec_context.gop_size = gop
        if rotation is not None:
            vs.set_display_rotation(rotation)
        aus = None
        if audio is not None:
            pcm, arate = audio
            aus = out.add_stream("aac", rate=arate, layout="mono" if len(pcm) == 1 else "stereo")
        for k, img in enumerate(images):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = k, 1 / rate
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            encode_audio(out, aus, pcm, arate, pts0=round(audio_delay_s * arate))


def encode_audio(out, stream, pcm: np.ndarray, rate: int, block: int = 1024, pts0: int = 0):
    fmt = stream.codec_context.format.name
    layout = "mono" if len(pcm) == 1 else "stereo"
    scale = {"s16": 32767, "s32": 2 ** 31 - 1}.get(fmt.rstrip("p"))
    dtype = {"s16": np.int16, "s32": np.int32}.get(fmt.rstrip("p"), np.float32)
    for i in range(0, pcm.shape[1], block):
        chunk = pcm[:, i:i + block]
        chunk = np.ascontiguousarray(np.round(chunk * scale) if scale else chunk, dtype=dtype)
        frame = av.AudioFrame.from_ndarray(chunk if fmt.endswith("p") else chunk.T.reshape(1, -1),
                                           format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, pts0 + i, Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def write_audio(path: Path, codec: str, pcm: np.ndarray, rate: int):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono" if len(pcm) == 1 else "stereo")
        encode_audio(out, stream, pcm, rate, block=1152 if "mp3" in codec else 1024)


def flat_images(n=10, size=(48, 64)):
    return [np.full((*size, 3), COLOURS[k % len(COLOURS)], np.uint8) for k in range(n)]


def noise_images(n, size=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    return [np.roll(base, 3 * k, axis=1) // 2 + np.uint8(k % 100) for k in range(n)]


def resampled(x: np.ndarray, rate: int) -> np.ndarray:
    g = np.gcd(16000, rate)
    return signal.resample_poly(x.astype(np.float64), 16000 // g, rate // g)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def assert_input_error(excinfo, name: str, *needles):
    """The error is an InputError whose one-line message names the file."""
    assert excinfo.type is InputError or issubclass(excinfo.type, InputError)
    msg = str(excinfo.value)
    assert name in msg and "\n" not in msg and "Traceback" not in msg, msg
    for needle in needles:
        assert needle in msg, msg


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------

def test_flat_colours_come_back(tmp_path):
    path = tmp_path / "Prise de vue é 1.mp4"
    write_video(path, flat_images())
    frames = list(media.iter_video_frames(path))
    assert len(frames) == 10
    for k, f in enumerate(frames):
        assert f.index == k
        assert f.time_s == pytest.approx(k / 25, abs=1e-6)
        assert f.image.shape == (48, 64, 3) and f.image.dtype == np.uint8
        assert f.image.flags["C_CONTIGUOUS"]
        assert np.abs(f.image.astype(int) - COLOURS[k]).max() <= 6, (k, f.image[24, 32])


def test_probe(tmp_path):
    path = tmp_path / "clip ü.mp4"
    write_video(path, flat_images(), fps=Fraction(30000, 1001),
                audio=(test_signal(44100, 44100)[None], 44100))
    info = media.probe(str(path))
    assert info.path == path
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert info.frame_count == 10
    assert info.duration_s == pytest.approx(10 * 1001 / 30000, abs=0.002)
    assert info.has_audio and info.audio_sample_rate == 44100 and info.audio_channels == 1
    silent = tmp_path / "silent.mp4"
    write_video(silent, flat_images(3))
    assert not media.probe(silent).has_audio


def quadrant_images(n=3):
    img = np.zeros((48, 64, 3), np.uint8)
    img[:24, :32] = 255                                  # top-left quadrant white
    return [img] * n


@pytest.mark.parametrize("display_ccw, rotation", [(-90, 90), (90, 270), (180, 180), (0, 0)])
def test_rotation_metadata_is_honoured(tmp_path, display_ccw, rotation):
    path = tmp_path / f"rot {rotation}.mp4"
    write_video(path, quadrant_images(), rotation=display_ccw)
    info = media.probe(path)
    assert info.rotation == rotation
    upright = np.rot90(quadrant_images(1)[0], k=-rotation // 90)   # np.rot90: k > 0 = counter-clockwise
    assert (info.height, info.width) == upright.shape[:2]
    for frame in media.iter_video_frames(path):
        assert frame.image.shape == upright.shape and frame.image.flags["C_CONTIGUOUS"]
        assert np.abs(frame.image.astype(int) - upright).mean() < 8


def test_rotation_helpers():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    # a portrait phone video: display matrix turns 90 degrees clockwise (FFmpeg angle -90)
    assert media.rotation_from_display(-90) == 90
    assert media.rotation_from_display(90) == 270
    assert media.rotation_from_display(180) == media.rotation_from_display(-180) == 180
    assert media.rotation_from_display(0) == 0 and media.rotation_from_display(-88.0) == 90
    np.testing.assert_array_equal(media.rotate_image(img, 90), np.rot90(img, -1))   # clockwise
    np.testing.assert_array_equal(media.rotate_image(img, 90)[0, :, 0], img[::-1, 0, 0])
    np.testing.assert_array_equal(media.rotate_image(img, 270), np.rot90(img, 1))
    np.testing.assert_array_equal(media.rotate_image(img, 180), img[::-1, ::-1])
    assert media.rotate_image(img[:, ::2], 0).flags["C_CONTIGUOUS"]
    with pytest.raises(ValueError):
        media.rotate_image(img, 45)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_seeking_keeps_indices_and_times(tmp_path, suffix):
    path = tmp_path / f"long take é{suffix}"
    write_video(path, noise_images(75), fps=25, gop=12)
    full = list(media.iter_video_frames(path))
    assert len(full) == 75
    for start in (0.3, 1.0, 1.47, 2.0, 2.9):
        part = list(media.iter_video_frames(path, start_s=start))
        first = part[0]
        assert first.time_s <= start + 1e-9 and start - first.time_s < 0.6   # the keyframe before
        assert [f.index for f in part] == list(range(first.index, 75))
        for f in part[:3] + part[-1:]:
            ref = full[f.index]
            assert f.time_s == pytest.approx(ref.time_s, abs=1e-9)
            np.testing.assert_array_equal(f.image, ref.image)


def test_stopping_early_closes_cleanly(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, flat_images())
    it = media.iter_video_frames(path)
    assert next(it).index == 0
    it.close()


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------

def test_wav_44k_stereo(tmp_path):
    left = test_signal(int(44100 * 1.5), 44100, seed=1)
    right = 0.5 * left + 0.5 * test_signal(len(left), 44100, seed=2)
    path = tmp_path / "voix off é.wav"
    soundfile.write(str(path), np.stack([left, right], 1), 44100, subtype="PCM_16")
    track = media.load_audio(path)
    assert track.sample_rate == 16000 and track.samples.dtype == np.float32 and track.samples.ndim == 1
    assert track.start_offset_s == 0.0
    assert len(track.samples) == pytest.approx(1.5 * 16000, abs=2)
    expected = resampled((left + right) / 2, 44100)
    assert correlation(track.samples, expected) > 0.95
    assert np.abs(track.samples).max() <= 1.0
    assert np.std(track.samples) == pytest.approx(np.std(expected), rel=0.05)   # a mean, not a sum


@pytest.mark.parametrize("codec, suffix, rate", [("libmp3lame", ".mp3", 44100), ("flac", ".flac", 22050),
                                                 ("libopus", ".ogg", 48000), ("aac", ".m4a", 44100)])
def test_compressed_audio_files(tmp_path, codec, suffix, rate):
    x = test_signal(int(rate * 2.0), rate, seed=3)
    path = tmp_path / f"take 1{suffix}"
    write_audio(path, codec, x[None], rate)
    track = media.load_audio(path, sample_rate=16000)
    assert track.sample_rate == 16000 and track.start_offset_s == pytest.approx(0.0, abs=1e-3)
    assert abs(len(track.samples) - 2.0 * 16000) <= 1152 * 16000 / rate + 1     # within one codec frame
    assert correlation(track.samples, resampled(x, rate)) > 0.95


def test_aac_track_of_an_mp4(tmp_path):
    x = test_signal(int(44100 * 2.0), 44100, seed=4)
    stereo = np.stack([x, x])
    path = tmp_path / "Prise de vue é 2.mp4"
    write_video(path, flat_images(50), fps=25, audio=(stereo, 44100))
    track = media.load_audio(path)
    assert abs(track.start_offset_s) < 1e-3
    assert abs(len(track.samples) - 2.0 * 16000) <= 1024 * 16000 / 44100 + 1
    assert correlation(track.samples, resampled(x, 44100)) > 0.95
    assert track.duration_s == pytest.approx(2.0, abs=0.07)
    other = media.load_audio(path, sample_rate=8000)
    assert other.sample_rate == 8000 and len(other.samples) == pytest.approx(len(track.samples) / 2, abs=2)


def test_audio_starting_after_the_video(tmp_path):
    x = test_signal(int(16000 * 1.0), 16000, seed=5)
    path = tmp_path / "late sound.mp4"
    write_video(path, flat_images(50), fps=25, audio=(x[None], 16000), audio_delay_s=0.5)
    track = media.load_audio(path)
    # the decoded samples may begin with the AAC encoder's priming (1024 samples) when the MP4
    # has no edit list to hide it; either way sample n must sit at video time offset + n / 16000
    lags = np.arange(0, 2048)
    cc = [correlation(track.samples[lag:lag + 12000], x[:12000]) for lag in lags]
    lag = int(lags[np.argmax(cc)])
    assert max(cc) > 0.95
    assert track.start_offset_s + lag / 16000 == pytest.approx(0.5, abs=1e-3)
    assert 0.4 < track.start_offset_s <= 0.5


# ---------------------------------------------------------------------------------------------
# Errors: one line, names the file, always InputError
# ---------------------------------------------------------------------------------------------

ALL_READERS = [media.probe, lambda p: list(media.iter_video_frames(p)), media.load_audio]


@pytest.mark.parametrize("reader", ALL_READERS)
def test_missing_file(tmp_path, reader):
    with pytest.raises(InputError) as excinfo:
        reader(tmp_path / "nowhere é.mp4")
    assert_input_error(excinfo, "nowhere é.mp4", "not found")


@pytest.mark.parametrize("reader", ALL_READERS)
def test_text_file_named_mp4(tmp_path, reader):
    path = tmp_path / "notes 01.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(InputError) as excinfo:
        reader(path)
    assert_input_error(excinfo, "notes 01.mp4")


def test_video_without_audio(tmp_path):
    path = tmp_path / "clip 01.mp4"
    write_video(path, flat_images(3))
    with pytest.raises(InputError) as excinfo:
        media.load_audio(path)
    assert_input_error(excinfo, "clip 01.mp4", "no audio track")


def test_audio_file_is_not_a_video(tmp_path):
    path = tmp_path / "speech.wav"
    soundfile.write(str(path), test_signal(8000, 16000), 16000)
    for reader in ALL_READERS[:2]:
        with pytest.raises(InputError) as excinfo:
            reader(path)
        assert_input_error(excinfo, "speech.wav", "no video stream")


def test_zero_length_wav(tmp_path):
    path = tmp_path / "empty é.wav"
    soundfile.write(str(path), np.zeros(0, np.float32), 16000)
    with pytest.raises(InputError) as excinfo:
        media.load_audio(path)
    assert_input_error(excinfo, "empty é.wav", "no samples")


@pytest.mark.parametrize("reader", ALL_READERS)
def test_truncated_mp4(tmp_path, reader):
    path = tmp_path / "cut in half é.mp4"
    write_video(path, noise_images(50), audio=(test_signal(32000, 16000)[None], 16000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as excinfo:
        reader(path)
    assert_input_error(excinfo, "cut in half é.mp4")


def test_truncated_tail_with_index_first_is_tolerated(tmp_path):
    """A 'faststart' MP4 cut short still opens: the frames that decode are returned (documented)."""
    path = tmp_path / "fast start.mp4"
    write_video(path, noise_images(50), container_options={"movflags": "faststart"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = media.probe(path)
    frames = list(media.iter_video_frames(path))
    assert 0 < len(frames) < info.frame_count == 50
    assert [f.index for f in frames] == list(range(len(frames)))


def test_corrupt_middle_raises_only_input_error(tmp_path):
    path = tmp_path / "garbled.mp4"
    write_video(path, noise_images(50), container_options={"movflags": "faststart"}, gop=10)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    mid = len(data) // 2
    data[mid:mid + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as excinfo:
        list(media.iter_video_frames(path))
    assert_input_error(excinfo, "garbled.mp4", "decoding failed at frame ")


def test_errors_are_engine_errors():
    assert issubclass(InputError, EngineError)
