"""The engine's one MP4 writer: H.264 + AAC with PyAV, and joining segment files without re-encoding.

Owns: the encoder settings of every MP4 the engine writes (the prediction preview, dubbing
and cartoon outputs): libx264 without B-frames, so that pts == dts and segments encoded
separately join by packet copy; yuv420p, odd frame sides padded by one edge row/column;
cv2's RGB -> I420 conversion; one frame-rate rule (fps_fraction: frame k has pts k at 1/fps,
NTSC rates such as 29.97 kept as their exact fraction); the mono AAC track, fed in step with
the video (AudioWriter, write_mp4) or as it arrives (Mp4Writer, a preview of an hour in
bounded memory; audio sample n is at n / sample_rate, so video and audio start together);
atomic writes (storage.atomic_path). Must not: decode, analyse or composite images.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ..core import storage
from ..core.errors import EngineError

AUDIO_BITRATE = 128000      # bits/s of the AAC track (mono) of dubbed videos and cartoons
PREVIEW_AUDIO_BITRATE = 64000  # bits/s of a prediction preview's AAC track (mono speech)
PREVIEW_CRF = 20            # libx264 constant rate factor of prediction previews (lower is better)
PRESET = "veryfast"         # libx264 speed preset


def fps_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001, 25 -> 25 (the usual NTSC rates become their exact fractions)."""
    for base in (24, 30, 60, 120):
        if abs(fps - base * 1000 / 1001) < 5e-3:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(100000)


def even_sides(image: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) image by one edge row/column where needed: H.264 4:2:0 needs even sides."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def add_video_stream(container, fps: float, width: int, height: int, crf: int, preset: str = PRESET):
    """An H.264 stream without B-frames (pts == dts), so that segments concatenate by packet copy."""
    rate = fps_fraction(float(fps))
    stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset, "bf": "0"})
    stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
    return stream, rate


def encode_frame(container, stream, rgb: np.ndarray, k: int, rate: Fraction) -> None:
    # cv2's RGB -> I420 is swscale's BT.601 (as demo/video.py measured), and much faster
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(even_sides(rgb), cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    frame.pts, frame.time_base = k, 1 / rate
    for packet in stream.encode(frame):
        container.mux(packet)


def add_audio_stream(container, rate: int, bit_rate: int = AUDIO_BITRATE):
    """A mono AAC stream at RATE samples/s."""
    stream = container.add_stream("aac", rate=int(rate), layout="mono")
    stream.bit_rate = bit_rate
    return stream


def encode_audio(container, stream, samples: np.ndarray, first: int) -> None:
    """(n,) float32 mono samples starting at sample FIRST (their pts)."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None], format="fltp", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = stream.rate, first, Fraction(1, stream.rate)
    for packet in stream.encode(frame):
        container.mux(packet)


def flush(container, stream) -> None:
    for packet in stream.encode(None):
        container.mux(packet)


class AudioWriter:
    """AAC mono at AUDIO_RATE, fed by time: write_until(t) encodes the samples up to t seconds."""

    def __init__(self, container, samples: np.ndarray, rate: int, bit_rate: int = AUDIO_BITRATE):
        self.container, self.samples, self.done = container, np.asarray(samples, np.float32), 0
        self.stream = add_audio_stream(container, rate, bit_rate)

    def write_until(self, t_s: float | None) -> None:
        stop = len(self.samples) if t_s is None else min(len(self.samples), int(round(t_s * self.stream.rate)))
        if stop > self.done:
            encode_audio(self.container, self.stream, self.samples[self.done:stop], self.done)
            self.done = stop
        if t_s is None:
            flush(self.container, self.stream)


def write_mp4(path: Path, frames, fps: float, audio: tuple[np.ndarray, int] | None = None,
              crf: int = 18, preset: str = "veryfast") -> int:
    """Encode RGB frames (an iterable of (H, W, 3) uint8) as H.264 (+ mono AAC) MP4, atomically.

    audio : (samples (N,) float32 mono in [-1, 1], sample rate) or None. Returns the frame count.
    """
    n = 0
    with storage.atomic_path(Path(path)) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = rate = sound = None
        for rgb in frames:
            if stream is None:
                stream, rate = add_video_stream(container, fps, rgb.shape[1], rgb.shape[0], crf, preset)
                sound = AudioWriter(container, *audio) if audio is not None else None
            encode_frame(container, stream, rgb, n, rate)
            n += 1
            if sound is not None:
                sound.write_until(n / fps)
        if stream is None:
            raise EngineError(f"{path}: no frames to write")
        flush(container, stream)
        if sound is not None:
            sound.write_until(None)
    return n


def concatenate(segments: list[Path], out: Path, fps: float, audio: tuple[np.ndarray, int] | None) -> None:
    """Join H.264 segment files (frames at pts k / fps from 0 each) by packet copy, without
    re-encoding, and mux the audio in (or none); atomically."""
    rate = fps_fraction(float(fps))
    with storage.atomic_path(out) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = sound = None
        offset = 0  # frames before the current segment
        for seg in segments:
            with av.open(str(seg)) as src:
                s_in = src.streams.video[0]
                if stream is None:
                    stream = container.add_stream_from_template(s_in)
                    sound = AudioWriter(container, *audio) if audio is not None else None
                shift = int(round(Fraction(offset) / rate / s_in.time_base))   # stream ticks
                count = 0
                for packet in src.demux(s_in):
                    if packet.size == 0:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = stream
                    container.mux(packet)
                    count += 1
            offset += count
            if sound is not None:
                sound.write_until(offset / fps)
        if sound is not None:
            sound.write_until(None)


class Mp4Writer:
    """Write RGB frames and mono float32 audio into an MP4 as they arrive (the prediction preview).

    Example::

        with Mp4Writer(path, fps=30, width=512, height=512, sample_rate=16000) as mp4:
            mp4.add_frame(image)            # (512, 512, 3) uint8 RGB
            mp4.add_audio(samples)          # (n,) float32 in [-1, 1], any chunking
    """

    def __init__(self, path: Path | str, fps: float, width: int, height: int, sample_rate: int | None = None,
                 crf: int = PREVIEW_CRF, audio_bit_rate: int = PREVIEW_AUDIO_BITRATE):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sides, got {width}x{height}")
        self.path = Path(path)
        self.container = av.open(str(self.path), "w", format="mp4")
        self.video, self.rate = add_video_stream(self.container, fps, int(width), int(height), crf)
        self.audio = add_audio_stream(self.container, sample_rate, audio_bit_rate) if sample_rate else None
        self.frames = self.samples = 0
        self._closed = False

    def add_frame(self, rgb: np.ndarray) -> None:
        img = np.ascontiguousarray(rgb, np.uint8)
        if img.shape != (self.video.height, self.video.width, 3):
            raise ValueError(f"expected a ({self.video.height}, {self.video.width}, 3) frame, got {img.shape}")
        encode_frame(self.container, self.video, img, self.frames, self.rate)
        self.frames += 1

    def add_audio(self, samples: np.ndarray) -> None:
        if self.audio is None:
            raise ValueError("this writer has no audio stream")
        x = np.clip(np.asarray(samples, np.float32).reshape(-1), -1.0, 1.0)
        if not len(x):
            return
        encode_audio(self.container, self.audio, x, self.samples)
        self.samples += len(x)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for stream in (self.video, self.audio):
                if stream is not None:
                    flush(self.container, stream)
        finally:
            self.container.close()

    def abort(self) -> None:
        """Close without flushing (the caller deletes the file)."""
        if not self._closed:
            self._closed = True
            self.container.close()

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close() if exc_type is None else self.abort()
