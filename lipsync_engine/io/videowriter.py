"""Writing H.264 + AAC MP4 files with PyAV, and joining segment files without re-encoding.

Owns: the encoder settings shared by the dubbing and cartoon outputs (libx264 without
B-frames, so that pts == dts and segments encoded separately join by packet copy; yuv420p,
odd frame sides padded by one edge row/column; cv2's RGB -> I420 conversion), the mono AAC
track fed in step with the video, and atomic writes (storage.atomic_path). Must not:
decode, analyse or composite images.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from ..core import storage
from ..core.errors import EngineError

AUDIO_BITRATE = 128000      # bits/s of the AAC track (mono)


def even_sides(image: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) image by one edge row/column where needed: H.264 4:2:0 needs even sides."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def add_video_stream(container, fps: float, width: int, height: int, crf: int, preset: str):
    """An H.264 stream without B-frames (pts == dts), so that segments concatenate by packet copy."""
    rate = Fraction(fps).limit_denominator(100000)
    stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset, "bf": "0"})
    stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
    return stream, rate


def encode_frame(container, stream, rgb: np.ndarray, k: int, rate: Fraction) -> None:
    # cv2's RGB -> I420 is swscale's BT.601 (as synthetic.py measured), and much faster
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(even_sides(rgb), cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    frame.pts, frame.time_base = k, 1 / rate
    for packet in stream.encode(frame):
        container.mux(packet)


class AudioWriter:
    """AAC mono at AUDIO_RATE, fed by time: write_until(t) encodes the samples up to t seconds."""

    def __init__(self, container, samples: np.ndarray, rate: int):
        self.container, self.samples, self.done = container, np.asarray(samples, np.float32), 0
        self.stream = container.add_stream("aac", rate=rate, layout="mono")
        self.stream.bit_rate = AUDIO_BITRATE

    def write_until(self, t_s: float | None) -> None:
        stop = len(self.samples) if t_s is None else min(len(self.samples), int(round(t_s * self.stream.rate)))
        if stop > self.done:
            frame = av.AudioFrame.from_ndarray(self.samples[None, self.done:stop], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = self.stream.rate, self.done
            frame.time_base = Fraction(1, self.stream.rate)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.done = stop
        if t_s is None:
            for packet in self.stream.encode(None):
                self.container.mux(packet)


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
        for packet in stream.encode(None):
            container.mux(packet)
        if sound is not None:
            sound.write_until(None)
    return n


def concatenate(segments: list[Path], out: Path, fps: float, audio: tuple[np.ndarray, int] | None) -> None:
    """Join H.264 segment files (frames at pts k / fps from 0 each) by packet copy, without
    re-encoding, and mux the audio in (or none); atomically."""
    rate = Fraction(fps).limit_denominator(100000)
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
