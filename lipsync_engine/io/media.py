"""Reading video and audio files: probing, decoding frames, decoding audio (PyAV only).

Owns: opening media files with PyAV, turning every PyAV/FFmpeg failure into one readable
`InputError` line that names the file, the display rotation of phone videos, frame
timestamps (seconds from the first decoded video frame) and the audio clock offset.

Time base used everywhere: a video's clock starts at 0 on its first decoded frame; the
audio's `start_offset_s` is where the first audio sample sits on that clock.

Truncated files: a file whose data simply ends early (the container still opens and the
demuxer reaches an early end without an error) yields the frames that decoded, and no
error; the caller compares the count with `probe(path).frame_count` and warns. Any error
FFmpeg reports while decoding raises `InputError` naming the frame index.

Seeking (`iter_video_frames(path, start_s=...)`, for workers that decode one chunk of a take):
frames keep the index and time of a decode from the start. The keyframe's index comes from
the container's sample index (MP4/MOV, cheap) or from counting demuxed packets from the start
(MKV, TS, ...: no decoding, but reads the file up to there); exact for closed GOPs.

Must not: analyse images or sound (tracking.py, audio.py do that), write files, or import
bpy/torch.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import av.error
import cv2
import numpy as np

from ..core.errors import InputError

DEFAULT_AUDIO_RATE = 16000           # Hz, rate `load_audio` resamples to unless told otherwise
SEEK_RETRIES = 4                     # re-seeks when a keyframe's pts lands after the wanted time
MONO_MIX_OPTIONS = {"rematrix_maxval": "1.0"}  # downmix = channel mean, so mono stays in [-1, 1]
_OPEN_ERRORS = (av.error.FFmpegError, OSError, ValueError, UnicodeError)


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` learns about a video file without decoding more than one frame.

    width, height : pixels of the frames as `iter_video_frames` yields them (after rotation).
    fps : the stream's average frame rate (frames per second).
    frame_count : the container's frame count, else round(duration_s * fps) (an estimate).
    duration_s : seconds (video stream duration, else the container's).
    rotation : degrees (0, 90, 180 or 270) the coded frames are turned *clockwise* for display
        (the classic `rotate` tag: a portrait phone video usually has 90).
    audio_sample_rate, audio_channels : of the first audio stream, 0 when there is none.
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    duration_s: float
    rotation: int
    has_audio: bool
    audio_sample_rate: int
    audio_channels: int


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame.

    index : position of the frame in display order, counted from the first decoded frame
        (also after a seek). time_s : seconds from the first decoded frame's timestamp.
    image : (H, W, 3) uint8 RGB, C-contiguous, rotated upright.
    """

    index: int
    time_s: float
    image: np.ndarray


@dataclass(frozen=True)
class AudioTrack:
    """Decoded mono audio.

    samples : (N,) float32 in [-1, 1] at `sample_rate` Hz.
    start_offset_s : time of samples[0] minus time of the first video frame (seconds; 0 for a
        file without video, whose own timestamps, e.g. an MP3's encoder delay, are ignored). Sample n is at video time start_offset_s + n / sample_rate.
    """

    samples: np.ndarray
    sample_rate: int
    start_offset_s: float

    @property
    def duration_s(self) -> float:
        """Length of the audio (seconds)."""
        return len(self.samples) / self.sample_rate


# ---------------------------------------------------------------------------------------------
# Opening and errors
# ---------------------------------------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    """A short one-line reason for an exception (FFmpeg's strerror, never a traceback)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())


@contextmanager
def _open_input(path: Path):
    """av.open(path) for reading; a missing or unreadable file raises InputError."""
    if not path.exists():
        raise InputError(f"{path.name}: file not found ({path})")
    if not path.is_file():
        raise InputError(f"{path.name}: not a file ({path})")
    try:
        container = av.open(str(path), mode="r")
    except _OPEN_ERRORS as exc:
        raise InputError(f"{path.name}: cannot be opened as a media file: damaged, truncated "
                         f"or not audio/video ({_reason(exc)})") from exc
    try:
        yield container
    finally:
        container.close()


def _video_streams(container) -> list:
    """Video streams that are moving pictures (cover art of music files is left out)."""
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def _video_stream(container, path: Path):
    streams = _video_streams(container)
    if not streams:
        raise InputError(f"{path.name}: not a video (no video stream)")
    return streams[0]


def _decode_error(path: Path, what: str, exc: BaseException) -> InputError:
    return InputError(f"{path.name}: decoding failed at {what} ({_reason(exc)})")


# ---------------------------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------------------------

def rotation_from_display(degrees_ccw: float) -> int:
    """Clockwise display rotation (0/90/180/270) from a display-matrix angle.

    degrees_ccw : FFmpeg's av_display_rotation_get / PyAV's `VideoFrame.rotation`, the angle
        (degrees, in [-180, 180]) the display matrix turns the frame *counter-clockwise*;
        rounded to the nearest quarter turn.
    """
    return int(round(-float(degrees_ccw) / 90.0)) % 4 * 90


def rotate_image(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an (H, W, C) image `rotation` degrees clockwise (0/90/180/270), C-contiguous."""
    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    if rotation % 360 == 0:
        return np.ascontiguousarray(image)
    if rotation % 360 not in codes:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    return np.ascontiguousarray(cv2.rotate(np.ascontiguousarray(image), codes[rotation % 360]))


def _to_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB upright image of a PyAV video frame."""
    image = frame.to_ndarray(format="rgb24")
    return rotate_image(image, rotation_from_display(frame.rotation))


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------

def _first_video_frame(container, path: Path):
    """The first decoded frame of the first video stream (the container is consumed)."""
    stream = _video_stream(container, path)
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise _decode_error(path, "frame 0", exc) from exc
    raise InputError(f"{path.name}: no video frame could be decoded")


def _stream_fps(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _video_duration(container, stream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe(path) -> MediaInfo:
    """Describe a video file; decodes its first frame (for the rotation and to check it decodes).

    Raises InputError naming the file when it is missing, cannot be opened, has no video
    stream or no decodable frame.
    """
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        fps, duration = _stream_fps(stream), _video_duration(container, stream)
        count = int(stream.frames) if stream.frames else int(round(duration * fps))
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = int(audio.codec_context.sample_rate or 0) if audio is not None else 0
        channels = int(audio.codec_context.channels or 0) if audio is not None else 0
        rotation = rotation_from_display(_first_video_frame(container, path).rotation)
        width, height = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        width, height = height, width
    return MediaInfo(path=path, width=int(width), height=int(height), fps=fps, frame_count=count,
                     duration_s=duration, rotation=rotation, has_audio=audio is not None,
                     audio_sample_rate=rate, audio_channels=channels)


# ---------------------------------------------------------------------------------------------
# Video frames
# ---------------------------------------------------------------------------------------------

def _first_frame_pts(path: Path) -> int | None:
    """pts (stream ticks) of the first frame a decode from the start yields."""
    with _open_input(path) as container:
        return _first_video_frame(container, path).pts


def _frames_before(path: Path, stream, key) -> int | None:
    """How many frames a decode from the start yields before keyframe packet `key`.

    Exact for closed GOPs: everything before a keyframe in decode order is shown before it.
    Uses the container's full sample index when it has one (MP4/MOV: O(1) file reads), else
    demuxes packets from the start (no decoding, but reads the file up to `key`).
    Returns None when it cannot tell.
    """
    entries = stream.index_entries
    if key.dts is not None and stream.frames and len(entries) == stream.frames:
        return sum(1 for e in entries if e.timestamp < key.dts and not e.is_discard)
    with _open_input(path) as container:
        count = 0
        for packet in container.demux(_video_stream(container, path)):
            if packet.size and packet.pts == key.pts and packet.is_keyframe:
                return count
            count += 1 if packet.size and not packet.is_discard else 0
    return None


def _next_packet(packets):
    for packet in packets:
        if packet.size and packet.pts is not None:
            return packet
    return None


def _seek(container, stream, path: Path, start_s: float, t0: int):
    """Seek to the keyframe at or before start_s: (packets, its frame index, its pts) or None."""
    target = t0 + int(start_s / stream.time_base)
    key = packets = None
    for _ in range(SEEK_RETRIES):
        container.seek(max(target, t0), backward=True, any_frame=False, stream=stream)
        packets = container.demux(stream)
        key = _next_packet(packets)
        if key is None or key.pts <= target or target <= t0:
            break
        target = (key.dts if key.dts is not None else key.pts) - 1
    if key is None or not key.is_keyframe:
        return None
    index = _frames_before(path, stream, key)
    return None if index is None else (itertools.chain([key], packets), index, key.pts)


def _decode_frames(path: Path, stream, packets, index: int, key_pts, t0) -> Iterator[VideoFrame]:
    """Decode `packets`, numbering frames from `index`; frames shown before key_pts are skipped."""
    tb, fps, leading = float(stream.time_base), _stream_fps(stream) or 1.0, 0
    try:
        for packet in packets:
            if key_pts is not None and packet.size and packet.pts is not None and packet.pts < key_pts:
                leading += 1      # leading pictures of an open GOP: shown before the keyframe
            for frame in stream.decode(packet):
                if key_pts is not None and frame.pts is not None and frame.pts < key_pts:
                    continue
                t0 = frame.pts if t0 is None else t0
                n = index + leading
                time_s = (frame.pts - t0) * tb if frame.pts is not None and t0 is not None else n / fps
                yield VideoFrame(index=n, time_s=float(time_s), image=_to_rgb(frame))
                index += 1
    except av.error.FFmpegError as exc:
        raise _decode_error(path, f"frame {index + leading}", exc) from exc


def _start(container, stream, path: Path, start_s: float):
    """(packets, first index, keyframe pts or None, first-frame pts or None) to decode from.

    None when start_s > 0 but seeking (or numbering frames after the seek) is not possible.
    """
    if start_s <= 0:
        return container.demux(stream), 0, None, None
    t0 = _first_frame_pts(path)
    try:
        seek = _seek(container, stream, path, start_s, t0) if t0 is not None else None
    except av.error.FFmpegError:
        seek = None
    return None if seek is None else (*seek, t0)


def iter_video_frames(path, start_s: float = 0.0) -> Iterator[VideoFrame]:
    """Decode a video's frames in display order, upright (display rotation applied).

    path : the video file. start_s : seconds on the video clock (0 = first frame) to start
        near: decoding starts at the keyframe at or before it, so the first frames yielded may
        be earlier; `index` and `time_s` are those of a decode from the start either way.
        Files that cannot seek are decoded from the start.

    Yields VideoFrame(index, time_s, image (H, W, 3) uint8 RGB). Uses threaded decoding.
    Raises InputError (naming the file, and the frame index for decoding errors). See the
    module docstring for truncated files.
    """
    path = Path(path)
    start = None
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        start = _start(container, stream, path, float(start_s))
        if start is not None:
            yield from _decode_frames(path, stream, *start)
    if start is None:                      # seeking failed: decode from the start in a fresh container
        yield from iter_video_frames(path, 0.0)


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------

def _first_video_time(container, path: Path) -> float:
    """Seconds of the first decoded video frame (0 when the file has no video).

    When no video frame decodes, the video stream's start time stands in for it.
    """
    streams = _video_streams(container)
    if not streams:
        return 0.0
    start = streams[0].start_time
    fallback = float(start * streams[0].time_base) if start is not None and streams[0].time_base else 0.0
    try:
        frame = _first_video_frame(container, path)
    except InputError:
        return fallback
    return float(frame.time) if frame.time is not None else fallback


def _decode_audio(container, path: Path, sample_rate: int) -> tuple[np.ndarray, float | None]:
    """All samples of the first audio stream resampled to mono float32: (samples, first time)."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate, options=MONO_MIX_OPTIONS)
    chunks, first_time, n = [], None, 0
    try:
        for frame in container.decode(stream):
            if first_time is None and frame.time is not None:
                first_time = float(frame.time)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
            n += 1
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, ValueError) as exc:
        raise _decode_error(path, f"audio frame {n}", exc) from exc
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0)), first_time


def load_audio(path, sample_rate: int = DEFAULT_AUDIO_RATE) -> AudioTrack:
    """Decode the first audio stream of any audio or video file to mono float32.

    path : wav, flac, ogg, mp3, m4a/aac, or a video with an audio track.
    sample_rate : output rate (Hz); channels are averaged (PyAV's AudioResampler).
    Returns AudioTrack(samples (N,) float32 in [-1, 1], sample_rate, start_offset_s).
    Raises InputError "no audio track" / "audio has no samples" / unreadable, naming the file.
    """
    path = Path(path)
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    with _open_input(path) as container:
        if not container.streams.audio:
            raise InputError(f"{path.name}: no audio track")
        samples, first_time = _decode_audio(container, path, int(sample_rate))
    if samples.size == 0:
        raise InputError(f"{path.name}: audio has no samples")
    with _open_input(path) as container:
        has_video = bool(_video_streams(container))
        offset = (first_time or 0.0) - _first_video_time(container, path) if has_video else 0.0
    return AudioTrack(samples=samples, sample_rate=int(sample_rate), start_offset_s=float(offset))


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
