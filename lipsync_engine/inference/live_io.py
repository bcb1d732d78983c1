"""`lipsync live` around its core: audio sources, frame sinks, latency statistics, the recording.

Owns: the file source (decoded as `lipsync predict` decodes, played at real-time pace or as
fast as possible), the microphone source (sounddevice/PortAudio, any rate and channel count,
resampled to 16 kHz mono), the sinks (JSON-lines FRAME messages, VMC over OSC/UDP), each with
its own thread and a short queue so that a late consumer loses frames (counted) instead of
holding the engine back, the latency histograms, and the run loop (run_live).
Must not: predict (live.py does), parse arguments, or import bpy.

Clocks: every time is time.monotonic(). A block's capture time is the time its last sample was
captured (file: the moment real-time playback reaches it; microphone: the PortAudio
callback's arrival). Latency of a frame = its message's send time - the capture time of the
block that finished it (the issue's definition); its sound-to-frame delay = send time - the
capture time of the sample at the frame's own time (what a viewer sees: it includes the
lookahead and the smoothing/silence hold of live.py).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..core.errors import EngineError, NoAudioDevice
from ..io import media
from ..prepare import audio
from ..rig.names import ARKIT_NAMES
from .live import LiveFrame, LiveOptions, LiveStream
from .predictor import Predictor

BLOCK_S = 0.010               # seconds of audio per block (file source; the microphone's blocksize)
SINK_QUEUE = 4                # frames a sink may hold before it drops (a late consumer)
HIST_BIN_S = 0.0001           # latency histogram bin (0.1 ms)
HIST_MAX_S = 5.0              # latencies above this land in the last bin
VMC_VAL, VMC_APPLY = "/VMC/Ext/Blend/Val", "/VMC/Ext/Blend/Apply"


# ----------------------------------------------------------------------------- statistics

class Histogram:
    """Fixed-size histogram of durations (s): percentiles without keeping every sample."""

    def __init__(self):
        self.counts = np.zeros(int(HIST_MAX_S / HIST_BIN_S) + 1, np.int64)
        self.n = 0
        self.lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self.lock:
            self.counts[min(len(self.counts) - 1, max(0, int(seconds / HIST_BIN_S)))] += 1
            self.n += 1

    def percentile(self, q: float) -> float | None:
        """The q-th percentile in ms (bin upper edge), None when empty."""
        if not self.n:
            return None
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100.0 * self.n))
        return (min(k, len(self.counts) - 1) + 1) * HIST_BIN_S * 1000.0


@dataclass
class LiveStats:
    frames: int = 0                       # frames the engine finished
    dropped: dict = field(default_factory=dict)   # sink name -> frames dropped
    latency: Histogram = field(default_factory=Histogram)        # block capture -> send (first sink)
    delay: Histogram = field(default_factory=Histogram)          # frame's sound captured -> send
    processing: Histogram = field(default_factory=Histogram)     # engine time per frame
    audio_s: float = 0.0                  # seconds of audio consumed

    def summary(self) -> dict:
        p = lambda h, q: None if h.percentile(q) is None else round(h.percentile(q), 2)  # noqa: E731
        return {"frames": self.frames, "audio_s": round(self.audio_s, 3), "dropped": dict(self.dropped),
                "latency_ms": {"p50": p(self.latency, 50), "p99": p(self.latency, 99)},
                "sound_to_frame_ms": {"p50": p(self.delay, 50), "p99": p(self.delay, 99)},
                "processing_ms": {"p50": p(self.processing, 50), "p99": p(self.processing, 99)}}

    def line(self) -> str:
        s = self.summary()
        return (f"{s['frames']} frames from {s['audio_s']:.1f} s of audio; latency (block captured -> frame sent) "
                f"p50 {s['latency_ms']['p50']} ms, p99 {s['latency_ms']['p99']} ms; sound -> frame p50 "
                f"{s['sound_to_frame_ms']['p50']} ms, p99 {s['sound_to_frame_ms']['p99']} ms; processing per "
                f"frame p50 {s['processing_ms']['p50']} ms, p99 {s['processing_ms']['p99']} ms; dropped "
                + (", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none"))


# ----------------------------------------------------------------------------- sinks

class Sink:
    """A consumer of frames on its own thread: offer() never blocks; a full queue drops the frame."""

    name = "sink"

    def __init__(self, stats: LiveStats, timed: bool, lossless: bool = False):
        self.stats, self.timed = stats, timed      # timed: this sink's send times feed the latency figures
        self.lossless = lossless                   # wait instead of dropping (--as-fast-as-possible: no clock to keep)
        self.q: queue.Queue = queue.Queue(maxsize=SINK_QUEUE)
        self.stats.dropped[self.name] = 0
        self.thread = threading.Thread(target=self._run, name=f"lipsync-live-{self.name}", daemon=True)
        self.thread.start()

    def offer(self, frame: LiveFrame, finished_at: float, sound_at: float) -> None:
        if self.lossless:
            self.q.put((frame, finished_at, sound_at))
            return
        try:
            self.q.put_nowait((frame, finished_at, sound_at))
        except queue.Full:
            self.stats.dropped[self.name] += 1

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            self.q.put(None, timeout=None if self.lossless else timeout_s)
        except queue.Full:
            return
        self.thread.join(None if self.lossless else timeout_s)

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            frame, finished_at, sound_at = item
            try:
                self.send(frame)
            except (OSError, ValueError):          # a closed pipe or socket: keep dropping quietly
                self.stats.dropped[self.name] += 1
                continue
            if self.timed:
                now = time.monotonic()
                self.stats.latency.add(now - finished_at)
                self.stats.delay.add(now - sound_at)

    def send(self, frame: LiveFrame) -> None:
        raise NotImplementedError


class JsonSink(Sink):
    """["FRAME", {"frame", "time", "silent", "blendshapes": [52], "vertices"?: [[x, y, z] x 468],
    "lips_png"?: base64 PNG of the (128, 128) RGB lip crop}] lines (lips: with lips=True, when the
    stream predicts the atlas)."""

    name = "json"

    def __init__(self, stats: LiveStats, timed: bool, lossless: bool = False, stream=None, lips: bool = False):
        self.stream, self.lips = stream or sys.stdout, lips
        super().__init__(stats, timed, lossless)

    def send(self, frame: LiveFrame) -> None:
        payload = {"frame": frame.index, "time": round(frame.time, 6), "silent": bool(frame.silent),
                   "blendshapes": [round(float(v), 5) for v in frame.blendshapes]}
        if frame.vertices is not None:
            payload["vertices"] = np.round(frame.vertices, 4).tolist()
        if self.lips and frame.lips is not None:
            payload["lips_png"] = encode_png(frame.lips)
        self.stream.write(json.dumps(["FRAME", payload], separators=(",", ":")) + "\n")
        self.stream.flush()


class VmcSink(Sink):
    """The VMC protocol (https://protocol.vmc.info/english): per frame, one OSC bundle of
    /VMC/Ext/Blend/Val (name, value) per ARKit shape, then /VMC/Ext/Blend/Apply."""

    name = "vmc"

    def __init__(self, stats: LiveStats, timed: bool, host: str, port: int, lossless: bool = False):
        from pythonosc.udp_client import SimpleUDPClient

        self.client = SimpleUDPClient(host, port)
        super().__init__(stats, timed, lossless)

    def send(self, frame: LiveFrame) -> None:
        from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
        from pythonosc.osc_message_builder import OscMessageBuilder

        bundle = OscBundleBuilder(IMMEDIATELY)
        for name, value in zip(ARKIT_NAMES, frame.blendshapes):
            m = OscMessageBuilder(VMC_VAL)
            m.add_arg(name)
            m.add_arg(float(value), "f")
            bundle.add_content(m.build())
        bundle.add_content(OscMessageBuilder(VMC_APPLY).build())
        self.client.send(bundle.build())


def encode_png(rgb: np.ndarray) -> str:
    """An (H, W, 3) uint8 RGB image as base64 PNG text (lossless; about 1 ms for a lip crop)."""
    import base64

    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("could not encode the lip crop")
    return base64.b64encode(data.tobytes()).decode("ascii")


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:39539' -> ('127.0.0.1', 39539); ValueError naming the rule."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {text!r}")
    return host, int(port)


# ----------------------------------------------------------------------------- sources

class FileSource:
    """A file decoded to 16 kHz mono exactly as `lipsync predict` decodes it, handed out in BLOCK_S
    blocks at real-time pace (or as fast as possible). Yields (capture time, samples)."""

    def __init__(self, path: Path, realtime: bool = True):
        self.label = Path(path).name
        self.samples = media.load_audio(Path(path), audio.SAMPLE_RATE).samples
        if self.samples.size == 0:
            raise EngineError(f"{self.label}: audio has no samples")
        self.realtime = realtime
        self.reference_peak = silence_peak(self.samples)   # a file's loudness is known before it plays

    def blocks(self, cancel) -> Iterator[tuple[float, np.ndarray]]:
        step = int(round(BLOCK_S * audio.SAMPLE_RATE))
        t0 = time.monotonic()
        for s in range(0, len(self.samples), step):
            e = min(len(self.samples), s + step)
            if self.realtime:
                due = t0 + e / audio.SAMPLE_RATE
                while (wait := due - time.monotonic()) > 0:
                    time.sleep(min(wait, 0.05))
                    if cancel.is_set:
                        return
                yield due, self.samples[s:e]
            else:
                yield time.monotonic(), self.samples[s:e]
            if cancel.is_set:
                return


def silence_peak(samples: np.ndarray) -> float:
    """The peak 40 ms level of a whole signal, on predict.silence_weights' 10 ms grid."""
    from .predictor import PEAK_GRID_S, levels

    grid = np.arange(0.0, len(samples) / audio.SAMPLE_RATE + PEAK_GRID_S, PEAK_GRID_S)
    return float(levels(samples, grid).max(initial=0.0))


class MicSource:
    """The default input device through sounddevice (PortAudio) at its own rate and channels,
    averaged to mono and resampled to 16 kHz (PyAV's resampler, as media.load_audio uses)."""

    label = "microphone"
    reference_peak = None                                  # the loudest so far (live.py)

    def __init__(self, device=None):
        try:
            import sounddevice as sd
        except OSError as e:                      # sounddevice raises OSError when libportaudio is missing
            raise NoAudioDevice(f"microphone: PortAudio is not installed ({e}); install libportaudio2 "
                                "(apt-get install libportaudio2)") from None   # the CLI adds: or --input FILE
        try:
            info = sd.query_devices(device, "input")
        except (ValueError, sd.PortAudioError) as e:
            raise NoAudioDevice(f"microphone: no audio input device found ({e})") from None
        self.sd, self.rate = sd, int(info["default_samplerate"])
        self.channels = max(1, min(2, int(info["max_input_channels"])))
        self.device = device
        self.label = f"microphone {info['name']!r} ({self.rate} Hz, {self.channels} ch)"

    def blocks(self, cancel) -> Iterator[tuple[float, np.ndarray]]:
        import av

        q: queue.Queue = queue.Queue()

        def callback(indata, frames, time_info, status):
            q.put((time.monotonic(), indata.mean(axis=1).astype(np.float32)))

        resampler = av.AudioResampler(format="flt", layout="mono", rate=audio.SAMPLE_RATE)
        try:
            stream = self.sd.InputStream(samplerate=self.rate, channels=self.channels, dtype="float32",
                                         blocksize=int(round(BLOCK_S * self.rate)), device=self.device,
                                         callback=callback)
        except self.sd.PortAudioError as e:
            raise NoAudioDevice(f"microphone: cannot open the input device ({e})") from None
        with stream:
            while not cancel.is_set:
                try:
                    captured, x = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
                frame.sample_rate = self.rate
                out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
                if out:
                    yield captured, np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------- the run

@dataclass
class LiveRecording:
    """What was streamed: the finished frames and the 16 kHz samples they came from."""

    samples: list = field(default_factory=list)
    frames: list = field(default_factory=list)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.samples) if self.samples else np.zeros(0, np.float32)


def run_live(predictor: Predictor, source, sinks: list[Sink], options: LiveOptions, stats: LiveStats, cancel,
             recording: LiveRecording | None = None, max_seconds: float | None = None) -> None:
    """Feed the source's blocks through a LiveStream and offer each finished frame to every sink,
    until the source ends, cancel is set, or max_seconds of audio have passed."""
    stream = LiveStream(predictor, options, getattr(source, "reference_peak", None))
    received = 0

    def deliver(frames: list[LiveFrame], captured: float, t_work: float) -> None:
        if frames:
            per_frame = t_work / len(frames)
        for f in frames:
            stats.frames += 1
            stats.processing.add(per_frame)
            sound_at = captured - (received - int(np.rint(f.time * audio.SAMPLE_RATE))) / audio.SAMPLE_RATE
            for s in sinks:
                s.offer(f, captured, sound_at)
            if recording is not None:
                recording.frames.append(f)

    captured = time.monotonic()
    for captured, block in source.blocks(cancel):
        if max_seconds is not None and received >= max_seconds * audio.SAMPLE_RATE:
            break
        received += len(block)
        stats.audio_s = received / audio.SAMPLE_RATE
        if recording is not None:
            recording.samples.append(np.asarray(block, np.float32))
        t0 = time.perf_counter()
        frames = stream.push(block)
        deliver(frames, captured, time.perf_counter() - t0)
    if received:
        t0 = time.perf_counter()
        frames = stream.finish()
        deliver(frames, time.monotonic(), time.perf_counter() - t0)


def write_recording(predictor: Predictor, recording: LiveRecording, out: Path, options: LiveOptions,
                    out_options, on_progress, cancel) -> Path:
    """The streamed take as a prediction folder (folder.write_outputs: the files of
    `lipsync predict`), plus audio.wav, the 16 kHz audio it was made from (result.json "audio")."""
    import soundfile

    from ..core import storage
    from .folder import write_outputs
    from .predictor import Prediction

    frames = recording.frames
    if not frames:
        raise EngineError(f"{out}: nothing to record, no frame was streamed")
    samples = recording.audio()
    track = media.AudioTrack(samples, audio.SAMPLE_RATE, 0.0)
    lips = np.stack([f.lips for f in frames]) if frames[0].lips is not None else None
    pred = Prediction(float(options.predict.fps), 0.0, np.array([f.time for f in frames]),
                      np.stack([f.vertices for f in frames]), np.stack([f.blendshapes for f in frames]), lips,
                      np.array([f.silent for f in frames]))
    manifest_path = write_outputs(pred, predictor, out, track, out_options, on_progress, cancel)
    soundfile.write(str(out / "audio.wav"), samples, audio.SAMPLE_RATE, subtype="FLOAT")
    manifest = json.loads(manifest_path.read_text())
    manifest["audio"] = str((out / "audio.wav").resolve())
    manifest["files"]["audio"] = "audio.wav"
    manifest["live"] = {"lookahead_ms": options.lookahead_ms, "source": "lipsync live"}
    storage.write_json(manifest_path, manifest)
    return manifest_path
