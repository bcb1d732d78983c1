"""MP4 previews: H.264 video with an AAC audio track, written frame by frame with PyAV.

Owns: the encoder settings and the interleaving of video frames and audio samples as they
arrive (a preview of an hour is written in bounded memory). Frame k has pts k at 1/fps
(fractional rates such as 29.97 are kept as an exact fraction); audio sample n is at n /
sample_rate from the start, so video and audio start together.
Must not: render or predict (render.py, predict.py), or import torch/bpy.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

VIDEO_CRF = "20"            # libx264 constant rate factor (lower is better)
VIDEO_PRESET = "veryfast"   # libx264 speed preset
AUDIO_BITRATE = 64000       # bits per second of the AAC track (mono speech)


def fps_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001, 25 -> 25 (the usual NTSC rates become their exact fractions)."""
    for base in (24, 30, 60, 120):
        if abs(fps - base * 1000 / 1001) < 5e-3:
            return Fraction(base * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


class Mp4Writer:
    """Write RGB frames and mono float32 audio into an MP4.

    Example::

        with Mp4Writer(path, fps=30, width=512, height=512, sample_rate=16000) as mp4:
            mp4.add_frame(image)            # (512, 512, 3) uint8 RGB
            mp4.add_audio(samples)          # (n,) float32 in [-1, 1], any chunking
    """

    def __init__(self, path: Path | str, fps: float, width: int, height: int, sample_rate: int | None = None):
        if width % 2 or height % 2:
            raise ValueError(f"H.264 needs even frame sides, got {width}x{height}")
        self.path, self.rate = Path(path), fps_fraction(float(fps))
        self.container = av.open(str(self.path), "w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=self.rate,
                                               options={"crf": VIDEO_CRF, "preset": VIDEO_PRESET})
        self.video.width, self.video.height, self.video.pix_fmt = int(width), int(height), "yuv420p"
        self.audio = None
        if sample_rate:
            self.audio = self.container.add_stream("aac", rate=int(sample_rate), layout="mono")
            self.audio.bit_rate = AUDIO_BITRATE
        self.frames = self.samples = 0
        self._closed = False

    def add_frame(self, rgb: np.ndarray) -> None:
        img = np.ascontiguousarray(rgb, np.uint8)
        if img.shape != (self.video.height, self.video.width, 3):
            raise ValueError(f"expected a ({self.video.height}, {self.video.width}, 3) frame, got {img.shape}")
        # cv2's RGB -> I420 is BT.601 limited range like swscale's default, and much faster
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        frame.pts, frame.time_base = self.frames, 1 / self.rate
        self._mux(self.video.encode(frame))
        self.frames += 1

    def add_audio(self, samples: np.ndarray) -> None:
        if self.audio is None:
            raise ValueError("this writer has no audio stream")
        x = np.ascontiguousarray(np.clip(np.asarray(samples, np.float32).reshape(-1), -1.0, 1.0))
        if not len(x):
            return
        frame = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = self.audio.rate, self.samples, Fraction(1, self.audio.rate)
        self._mux(self.audio.encode(frame))
        self.samples += len(x)

    def _mux(self, packets) -> None:
        for packet in packets:
            self.container.mux(packet)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for stream in (self.video, self.audio):
                if stream is not None:
                    self._mux(stream.encode(None))
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


def stream_durations(path: Path | str) -> dict:
    """{"video": seconds, "audio": seconds} of an MP4's first video and audio streams (0 if absent),
    from the decoded frames' timestamps and lengths (not the container's header)."""
    out = {"video": 0.0, "audio": 0.0}
    with av.open(str(path)) as c:
        if c.streams.video:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(s))
            out["video"] = n / float(s.average_rate) if s.average_rate else 0.0
    with av.open(str(path)) as c:
        if c.streams.audio:
            s = c.streams.audio[0]
            total = sum(f.samples for f in c.decode(s))
            out["audio"] = total / s.rate if s.rate else 0.0
    return out
