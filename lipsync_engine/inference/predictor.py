"""`lipsync predict`: new dialogue audio -> per-frame meshes, lip atlases and blendshapes.

Owns: running a trained model over any audio at the caller's frame rate, in chunks (bounded
memory, linear time, exactly the same numbers as one whole-file pass), temporal smoothing and
silence handling, and which engine runs the network: numpy (model/numpy_heads.py) for the audio
path on a CPU, torch (checkpoint.load_model) for the network texture, long audio and GPUs.
Torch is imported only when it is used: `lipsync predict` of a line never imports it. The full atlas (compose_atlas) is render.py's and
the prediction folder (write_outputs, predict_to_folder, OutputOptions; docs/predict.md) is
folder.py's, which imports this module (never the other way round).
Must not: train, track video, write files, or import bpy.

Frame clock: frame i is shown from t_i = start_s + i / fps (seconds from the audio's first
sample), as a video frame is shown from its timestamp; its spectrogram stack is centred on
t_i exactly as in training (audio.py), and the add-on keys frame i at scene frame
strip_start + i. F = round((end_s - start_s) * fps).

Pipeline per chunk of chunk_frames frames (all frames of a chunk in a few batches):
  spectrograms x spectrogram_scale -> audio codes -> vertex deltas and blendshapes (batched,
  computed with a halo of smoothing-radius frames on both sides so that the smoothing is the
  same whole-file or chunked) -> Gaussian smoothing over time -> silence weight w_t ->
  lips, one frame after another: the atlas encoder reads the previous frame's shown lips
  (zeros before frame 0, carried across chunk boundaries) -> texture decoder -> lips =
  clamp(reference + delta), shown = w_t lips + (1 - w_t) reference.

Silence: a frame's level is the 40 ms RMS around it (audio.envelope) in dB below the peak of
the whole file's level (10 ms grid). Quiet runs at least silence_min_s long are silent;
the weight w falls linearly to 0 over silence_ramp_s into a silent run and rises the same
way out of it, so the mouth eases into and out of rest (reference vertices, reference lips,
all blendshapes 0) instead of snapping. A file whose peak is below SILENT_PEAK is all rest.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from ..core.blas import blas_threads
from ..core.errors import EngineError, InputError
from ..core.filters import distance_to_false, gaussian_smooth
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..core.threads import thread_count
from ..face.geometry import CylinderMap
from ..io import media
from ..model.articulation import (MouthBank, MouthRenderer, apply_gain, apply_gain_coefficients, bank_neighbours,
                                  gain_rest)
from ..model.checkpoint import MOUTH_BANK, WEIGHTS, check_reference_files, load_arrays, load_model, resolve_device
from ..model.numpy_heads import AudioHeads
from ..prepare import audio
from ..rig.names import ARKIT_NAMES
from ..prepare.lookahead import model_lookahead_ms, window_shift_s

__all__ = ["PredictOptions", "Prediction", "Predictor", "PredictorCache", "load_predictor", "predict", "Plan",
           "plan_prediction", "PredictionChunk", "frame_count"]

ENCODE_BATCH = 256            # frames per audio-encoder batch (torch)
NUMPY_FRAMES = 9000           # on a CPU, predictions up to this long run the audio path in numpy (no torch)
PROGRESS_EVERY = 32           # frames between progress reports of the frame-by-frame steps
SMOOTHING_TRUNCATE = 3.0      # Gaussian kernel radius in sigmas (the chunk halo)
SILENT_PEAK = 1e-5            # a file whose 40 ms RMS never exceeds this (-100 dBFS) is silence
PEAK_GRID_S = 0.01            # seconds between the level samples whose maximum is the file's peak
LEVEL_BLOCK = 8192            # level samples computed per block (bounded memory)
SPEC_MARGIN = audio.WINDOW_LENGTH + audio.N_COLUMNS * audio.HOP_LENGTH  # samples around a chunk's frames


@dataclass(frozen=True)
class PredictOptions:
    fps: float = 30.0                 # output frame rate (any positive, e.g. 29.97)
    start_s: float | None = None      # first second of the audio to use (None = 0)
    end_s: float | None = None        # last second (None or past the audio's end = its end)
    smoothing: bool = True            # temporal smoothing of vertices/blendshapes (Gaussian, smoothing_sigma_s)
    smoothing_sigma_s: float = 0.02   # Gaussian sigma in seconds (0.6 frames at 30 fps): removes per-frame jitter
    silence_db: float = -45.0         # frames quieter than this (dB below the file's peak) rest closed; -inf = off
    silence_min_s: float = 0.2        # quiet runs shorter than this (pauses between words) are not silence
    silence_ramp_s: float = 0.1       # seconds over which the mouth eases into and out of rest
    atlas: bool = True                # predict lip atlases too
    articulation: float | None = None  # mouth gain about the rest face: None = the model's fitted value,
                                       # 0 = the rest face, 1 = the raw network output
    texture: str = "auto"             # lip crops: "auto" (the mouth bank when the model has one), "bank" or
                                      # "network" (the paper's texture decoder, auto-regressive)
    chunk_frames: int = 512           # frames per chunk (bounded memory: ~50 MB of spectrograms and lips)
    device: str = "auto"              # torch device for predict(); auto = CUDA, then MPS, then CPU

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if self.start_s is not None and self.start_s < 0:
            raise ValueError(f"start_s must be >= 0, got {self.start_s}")
        if self.end_s is not None and self.end_s <= (self.start_s or 0.0):
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s or 0.0})")
        if self.chunk_frames < 1 or self.smoothing_sigma_s < 0 or self.silence_min_s < 0 or self.silence_ramp_s < 0:
            raise ValueError("chunk_frames must be >= 1 and the smoothing/silence times >= 0")
        if self.articulation is not None and not (math.isfinite(self.articulation) and 0 <= self.articulation <= 5):
            raise ValueError(f"articulation must be between 0 and 5, got {self.articulation}")
        if self.texture not in ("auto", "bank", "network"):
            raise ValueError(f"texture must be auto, bank or network, got {self.texture!r}")


@dataclass(frozen=True)
class Prediction:
    fps: float
    start_s: float
    times: np.ndarray        # (F,) seconds of each frame (start_s + i / fps), from the audio file's start
    vertices: np.ndarray     # (F, 468, 3) float32, in the speaker's normalized space (like vertices.npy)
    blendshapes: np.ndarray  # (F, 52) float32 in [0, 1], ARKit-52 order (names)
    lips: np.ndarray | None  # (F, 128, 128, 3) uint8 predicted lip crops (lighting-normalized), None if atlas=False
    silent: np.ndarray       # (F,) bool: frames in a silent run (resting closed)
    names: tuple[str, ...] = ARKIT_NAMES   # the 52 blendshape names

    def __len__(self) -> int:
        return len(self.times)


@dataclass(frozen=True)
class PredictionChunk:
    """Frames first .. first + n - 1 of a prediction (the fields as in Prediction)."""

    first: int
    times: np.ndarray
    vertices: np.ndarray
    blendshapes: np.ndarray
    lips: np.ndarray | None
    silent: np.ndarray


@dataclass(frozen=True)
class Plan:
    """What a prediction covers, decided before any frame is computed."""

    samples: np.ndarray      # (N,) float32 mono audio at audio.SAMPLE_RATE, the whole file
    label: str               # the audio's file name (for messages and result.json)
    start_s: float
    frames: int              # F = round((end_s - start_s) * fps)
    times: np.ndarray        # (F,) float64
    weight: np.ndarray       # (F,) float32 in [0, 1]: 1 = as predicted, 0 = rest
    silent: np.ndarray       # (F,) bool
    peak: float              # the file's peak 40 ms RMS level (linear)


# ----------------------------------------------------------------------------- audio, silence

def levels(samples: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(F,) float32 40 ms RMS around each time (audio.envelope), computed in blocks of
    LEVEL_BLOCK times over a slice of the samples, so a 60-minute file needs no full copy."""
    out = np.zeros(len(times), np.float32)
    half = audio.ENVELOPE_LENGTH
    for s in range(0, len(times), LEVEL_BLOCK):
        t = times[s:s + LEVEL_BLOCK]
        lo = max(0, int(math.floor(t[0] * audio.SAMPLE_RATE)) - half)
        hi = min(len(samples), int(math.ceil(t[-1] * audio.SAMPLE_RATE)) + half)
        if hi > lo:
            out[s:s + len(t)] = audio.envelope(samples[lo:hi], t, start_offset_s=lo / audio.SAMPLE_RATE)
    return out


def silence_weights(samples: np.ndarray, times: np.ndarray, fps: float, options: PredictOptions):
    """(weight (F,) float32 in [0, 1], silent (F,) bool, peak level) for frames at `times` (module docstring)."""
    peak_times = np.arange(0.0, len(samples) / audio.SAMPLE_RATE + PEAK_GRID_S, PEAK_GRID_S)
    peak = float(levels(samples, peak_times).max(initial=0.0))
    if options.silence_db == -np.inf:                        # silence handling off
        return np.ones(len(times), np.float32), np.zeros(len(times), bool), peak
    if peak < SILENT_PEAK:
        return np.zeros(len(times), np.float32), np.ones(len(times), bool), peak
    db = 20.0 * np.log10(np.maximum(levels(samples, times), 1e-12) / peak)
    silent = _long_runs(db < options.silence_db, max(1, math.ceil(options.silence_min_s * fps - 1e-9)))
    if not silent.any():
        return np.ones(len(times), np.float32), silent, peak
    if silent.all():
        return np.zeros(len(times), np.float32), silent, peak
    ramp_frames = options.silence_ramp_s * fps
    depth = distance_to_false(silent)                        # frames to the nearest voiced frame
    weight = np.clip(1.0 - depth / ramp_frames, 0.0, 1.0) if ramp_frames > 0 else np.where(silent, 0.0, 1.0)
    return weight.astype(np.float32), silent, peak


def _long_runs(mask: np.ndarray, min_length: int) -> np.ndarray:
    """mask with its True runs shorter than min_length frames cleared."""
    m = np.r_[False, mask, False].astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(m) == 1), np.flatnonzero(np.diff(m) == -1)
    out = np.zeros(len(mask), bool)
    for s, e in zip(starts, ends):
        if e - s >= min_length:
            out[s:e] = True
    return out


def frame_count(duration_s: float, fps: float) -> int:
    """round(duration_s * fps), halves rounded up (the documented frame count)."""
    return int(math.floor(duration_s * fps + 0.5))


def load_samples(audio_in) -> tuple[np.ndarray, str]:
    """((N,) float32 mono samples at 16 kHz, a label for messages) of a file path or a 16 kHz AudioTrack."""
    if isinstance(audio_in, media.AudioTrack):
        if audio_in.sample_rate != audio.SAMPLE_RATE:
            raise InputError(f"audio track at {audio_in.sample_rate} Hz; pass {audio.SAMPLE_RATE} Hz "
                             f"(media.load_audio resamples)")
        return np.asarray(audio_in.samples, np.float32), "<samples>"
    path = Path(audio_in)
    if path.is_dir():
        raise InputError(f"{path.name}: is a folder, not an audio file ({path})")
    return media.load_audio(path, audio.SAMPLE_RATE).samples, path.name


def plan_prediction(audio_in, options: PredictOptions) -> Plan:
    """Decode the audio and decide frames, times and silence. InputError for empty, too short
    or out-of-range requests, naming the file."""
    samples, label = load_samples(audio_in)
    duration = len(samples) / audio.SAMPLE_RATE
    start = float(options.start_s or 0.0)
    end = duration if options.end_s is None else float(options.end_s)
    if samples.size == 0:
        raise InputError(f"{label}: audio has no samples")
    if start >= duration:
        raise InputError(f"{label}: start {start:g} s is at or past the end of the audio ({duration:.3f} s)")
    end = min(end, duration)              # an end past the audio means its end (several files, one --end)
    frames = frame_count(end - start, options.fps)
    if frames < 1:
        raise InputError(f"{label}: {end - start:.4f} s of audio is shorter than one frame at {options.fps:g} fps")
    times = start + np.arange(frames, dtype=np.float64) / options.fps
    weight, silent, peak = silence_weights(samples, times, options.fps, options)
    return Plan(samples, label, start, frames, times, weight, silent, peak)


# ----------------------------------------------------------------------------- the predictor

class Predictor:
    """A trained model loaded once; predicts from any number of audio files.

    On a CPU the audio path (audio encoder, vertex and blendshape decoders) runs in numpy
    (model/numpy_heads.py) for predictions up to NUMPY_FRAMES frames and for live streams:
    importing torch alone takes longer than predicting a dialogue line. Torch is loaded on
    first use: for the network texture (--texture network, format-1 models), longer audio
    (where its faster convolutions repay the import) and GPUs (loaded at once).

    Example::

        p = load_predictor("models/anna")
        pred = p.predict("line_042.wav", PredictOptions(fps=24))
        pred.vertices.shape            # (F, 468, 3)
    """

    def __init__(self, model_dir: Path | str, device: str = "auto"):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise EngineError(f"{self.model_dir}: model directory not found")
        self.device = resolve_device(device)          # "cpu", "cuda", "cuda:1", "mps"
        self._model = self._reference_lips = self._renderer = None
        try:
            self.config, self.dims, arrays = load_arrays(self.model_dir)
            self.reference_vertices = np.asarray(arrays["reference_vertices"], np.float32)   # (468, 3)
            self.reference_lips_chw = np.asarray(arrays["reference_lips"], np.float32)       # (3, 128, 128) in [-1, 1]
            self.scale = float(self.config["spectrogram_scale"])
            self.lip_box = {"row": int(self.config["lip_box"]["row"]), "col": int(self.config["lip_box"]["col"])}
            self.cylinder = CylinderMap.from_dict(self.config["cylinder"])
            self.centre = {k: np.asarray(arrays[k], np.float32) for k in
                           ("mean_vertex_deltas", "mean_blendshapes", "opening_direction") if k in arrays}
            # the rest face when the gain adds motion by the lip gap, None for an older model's projection
            self.gain_rest = gain_rest(self.config.get("articulation"), self.reference_vertices)
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, OSError) as e:
            raise EngineError(f"{self.model_dir}: damaged model directory ({type(e).__name__}: {e})") from e
        try:
            self.heads = AudioHeads.from_tensors(arrays, self.dims)
        except ValueError as e:
            raise EngineError(f"{self.model_dir / WEIGHTS}: weights do not fit the network in config.json "
                              f"({e})") from e
        check_reference_files(self.model_dir)
        self.model_id = str(self.config.get("model_id", ""))
        # a model trained with --lookahead L hears its window centred L - 120 ms before the frame (lookahead.py)
        self.lookahead_ms = model_lookahead_ms(self.config)
        self.window_shift_s = window_shift_s(self.lookahead_ms)
        self.has_blendshapes = bool(self.config.get("has_blendshapes", True))
        self.gain = float((self.config.get("articulation") or {}).get("gain", 1.0))   # 1.0: format version 1
        self.has_bank = bool(self.config.get("mouth_bank"))
        self.reads_phones = self.dims.phone_context > 0    # format 3: phone labels with the spectrograms
        self._phones = None                                # its PhoneRecognizer, made on first use
        if self.device != "cpu":
            self.model                                  # noqa: B018  (a GPU: load the network now)

    # -- loaded on first use

    @property
    def model(self):
        """The torch network (network.LipSync3D in eval mode), loaded on first use."""
        if self._model is None:
            import torch

            model, _, extra = load_model(self.model_dir, self.device)
            for m in model.modules():   # inference only: in-place activations halve the encoder's memory traffic
                if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU)):
                    m.inplace = True
            self._reference_lips = extra["reference_lips"].float().to(self.device)[None]   # (1, 3, 128, 128)
            self._model = model
        return self._model

    @property
    def reference_lips(self):
        """(1, 3, 128, 128) torch tensor of the reference lips in [-1, 1], on the device."""
        self.model                                      # noqa: B018
        return self._reference_lips

    @property
    def renderer(self) -> MouthRenderer | None:
        """The mouth bank's renderer (None: a format-1 model has no bank), loaded on first use."""
        if self._renderer is None and self.has_bank:
            try:
                with np.load(self.model_dir / MOUTH_BANK) as z:
                    bank = MouthBank.from_arrays(z)
            except (OSError, ValueError, KeyError) as e:
                raise EngineError(f"{self.model_dir / MOUTH_BANK}: missing or damaged mouth bank ({e})") from e
            ref_lips = ((self.reference_lips_chw.transpose(1, 2, 0) + 1) * 127.5).round()
            self.reference_crop = ref_lips.clip(0, 255).astype(np.uint8)
            self._renderer = MouthRenderer(bank, self.cylinder, self.lip_box,
                                           neighbours=bank_neighbours(self.config.get("mouth_bank")))
        return self._renderer

    def articulation(self, options: PredictOptions) -> float:
        """The mouth gain a prediction uses: options.articulation, else the model's fitted one."""
        return self.gain if options.articulation is None else float(options.articulation)

    def uses_bank(self, options: PredictOptions) -> bool:
        if options.texture == "bank" and not self.has_bank:
            raise EngineError(f"{self.model_dir}: this model has no mouth bank (format version 1); "
                              f"predict its texture with the network or train it again")
        return self.has_bank and options.texture != "network"

    def uses_numpy(self, frames: int | None = None) -> bool:
        """Whether the audio path runs in numpy: on a CPU, for a prediction of at most NUMPY_FRAMES
        frames or a stream (frames None). Beyond that torch's faster convolutions (0.20 against
        0.35 ms per frame here) repay its import (1.3 s) within the prediction (docs/benchmarks.md)."""
        return self.device == "cpu" and (frames is None or frames <= NUMPY_FRAMES)

    # -- the network

    def phone_track(self, samples: np.ndarray, on_block=None) -> np.ndarray | None:
        """The 10 ms phone track of 16 kHz samples (prepare/phones.py) for a model that reads
        phones, else None; on_block(done, total) after each 30 s block. The recogniser is made
        once per predictor (a server's many lines)."""
        if not self.reads_phones:
            return None
        if self._phones is None:
            from ..prepare.phones import PhoneRecognizer
            self._phones = PhoneRecognizer()
        return self._phones.track(samples, on_block)

    def audio_codes(self, spec: np.ndarray, numpy_path: bool = True, phones: np.ndarray | None = None) -> np.ndarray:
        """(n, N_s) float32 audio codes of (n, 256, 24, 2) spectrograms (audio.spectrogram_frames),
        scaled as in training, with (n, phone context) labels for a model that reads phones;
        numpy_path False (or a GPU): the torch network."""
        if self.reads_phones and phones is None:
            raise EngineError(f"{self.model_dir}: this model reads phone labels (phone_context) with its audio")
        if numpy_path and self.device == "cpu":
            with blas_threads(1):
                return self.heads.codes(spec * np.float32(self.scale), phones)
        import torch

        with torch.inference_mode(), _one_thread(self.device):
            x = torch.from_numpy(spec).to(self.device) * self.scale
            ph = None if phones is None else torch.from_numpy(np.asarray(phones, np.int64)).to(self.device)
            codes = [self.model.audio(x[i:i + ENCODE_BATCH], None if ph is None else ph[i:i + ENCODE_BATCH])
                     for i in range(0, len(x), ENCODE_BATCH)]
            return torch.cat(codes).float().cpu().numpy()

    def raw_outputs(self, codes: np.ndarray, numpy_path: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(vertex deltas (n, 468, 3), blendshapes (n, 52)) float32: the decoders' raw outputs for
        (n, N_s) codes (no gain, smoothing or clipping)."""
        if numpy_path and self.device == "cpu":
            with blas_threads(1):
                return self.heads.geometry(codes), self.heads.blendshapes(codes)
        import torch

        with torch.inference_mode(), _one_thread(self.device):
            c = torch.from_numpy(np.ascontiguousarray(codes)).to(self.device)
            return self.model.geometry(c).float().cpu().numpy(), self.model.blendshapes(c).float().cpu().numpy()

    # -- public

    def predict(self, audio_in, options: PredictOptions = PredictOptions(), on_progress: ProgressCallback = no_progress,
                cancel: CancelToken | None = None) -> Prediction:
        """Everything in memory (fine for minutes; use predict_to_folder for hours).

        audio_in : a file path (wav, flac, ogg, mp3, m4a/aac, a video's audio) or a 16 kHz
        media.AudioTrack. options.device is ignored here (the predictor's device is used).
        """
        plan = plan_prediction(audio_in, options)
        chunks = list(self.iter_chunks(plan, options, on_progress, cancel))
        lips = np.concatenate([c.lips for c in chunks]) if options.atlas else None
        return Prediction(float(options.fps), plan.start_s, plan.times,
                          np.concatenate([c.vertices for c in chunks]),
                          np.concatenate([c.blendshapes for c in chunks]), lips, plan.silent.copy())

    def iter_chunks(self, plan: Plan, options: PredictOptions, on_progress: ProgressCallback = no_progress,
                    cancel: CancelToken | None = None) -> Iterator[PredictionChunk]:
        """Yield the prediction chunk by chunk (options.chunk_frames frames each, in order)."""
        cancel = cancel or CancelToken()
        bank = options.atlas and self.uses_bank(options)
        smooth = self._halo(options)
        halo = smooth + (self.renderer.halo if bank else 0)   # the bank's blend weights look a few frames around
        numpy_path = self.uses_numpy(plan.frames)
        def heard(done: int, total: int) -> None:          # long audio: the phones take a while
            on_progress(Progress("phones", done, total, plan.label))
            cancel.check()
        track = self.phone_track(plan.samples, heard)     # None unless the model reads phones
        previous = None                                   # the shown lips of the last frame, (1, 3, 128, 128)
        for s in range(0, plan.frames, options.chunk_frames):
            e = min(plan.frames, s + options.chunk_frames)
            a, b = max(0, s - halo), min(plan.frames, e + halo)
            codes = self._codes(plan, a, b, numpy_path, track)                                # (b - a, N_s)
            deltas, bs = self._geometry(codes, options, smooth, plan.weight[a:b], numpy_path)  # all b - a rows
            lips = None
            if bank:
                lips = self._bank_lips(deltas, plan.weight[a:b], s - a, e - a)
            elif options.atlas:
                def tick(done: int, first=s) -> None:
                    on_progress(Progress("predict", first + done, plan.frames, plan.label))
                lips, previous = self._lips(codes[s - a:e - a], plan.weight[s:e], previous, cancel, tick)
            deltas, bs = deltas[s - a:e - a], bs[s - a:e - a]
            vertices = (self.reference_vertices[None] + deltas).astype(np.float32)
            yield PredictionChunk(s, plan.times[s:e], vertices, bs, lips, plan.silent[s:e])
            on_progress(Progress("predict", e, plan.frames, plan.label))
            cancel.check()

    # -- steps

    def _halo(self, options: PredictOptions) -> int:
        sigma = options.smoothing_sigma_s * options.fps
        return int(SMOOTHING_TRUNCATE * sigma + 0.5) if options.smoothing and sigma > 0 else 0

    def _codes(self, plan: Plan, a: int, b: int, numpy_path: bool = True, track: np.ndarray | None = None
               ) -> np.ndarray:
        """Audio codes of frames a..b-1: spectrograms of a slice of the samples, scaled as in training
        (and the phone contexts of `track`, the whole file's phone track, for a model that reads them)."""
        t = plan.times[a:b] - self.window_shift_s
        lo = max(0, int(math.floor(t[0] * audio.SAMPLE_RATE)) - SPEC_MARGIN)
        hi = min(len(plan.samples), int(math.ceil(t[-1] * audio.SAMPLE_RATE)) + SPEC_MARGIN)
        spec = audio.spectrogram_frames(plan.samples[lo:hi], t, start_offset_s=lo / audio.SAMPLE_RATE)
        phones = None
        if track is not None:
            from ..prepare.phones import phone_context
            phones = phone_context(track, t)
        return self.audio_codes(spec, numpy_path, phones)

    def _geometry(self, codes: np.ndarray, options: PredictOptions, halo: int, weight: np.ndarray,
                  numpy_path: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(deltas (n, 468, 3), blendshapes (n, 52)) of every row of codes: scaled by the articulation
        gain, smoothed, clipped, eased to rest (rows within `halo` of either end are only context)."""
        gain = self.articulation(options)
        raw_deltas, raw_bs = self.raw_outputs(codes, numpy_path)
        deltas = apply_gain(raw_deltas, gain, self.centre.get("mean_vertex_deltas"),
                            self.centre.get("opening_direction"), self.gain_rest)
        bs = apply_gain_coefficients(raw_bs, gain, self.centre.get("mean_blendshapes"), ARKIT_NAMES) \
            if self.has_blendshapes else np.zeros((len(codes), len(ARKIT_NAMES)), np.float32)
        if halo:
            sigma = options.smoothing_sigma_s * options.fps
            deltas = gaussian_smooth(deltas, sigma, axis=0, truncate=SMOOTHING_TRUNCATE)
            bs = gaussian_smooth(bs, sigma, axis=0, truncate=SMOOTHING_TRUNCATE)
        w = weight.astype(np.float32)
        return deltas * w[:, None, None], np.clip(bs, 0.0, 1.0) * w[:, None]

    def _bank_lips(self, deltas: np.ndarray, weight: np.ndarray, s: int, e: int) -> np.ndarray:
        """(e - s, 128, 128, 3) uint8 lip crops of rows s..e-1 from the mouth bank, eased to the
        reference crop where the frame rests (weight < 1)."""
        vertices = self.reference_vertices[None] + deltas
        lips = self.renderer.render(vertices, rows=slice(s, e))
        w = weight[s:e, None, None, None].astype(np.float32)
        if (w < 1).any():
            lips = (w * lips + (1 - w) * self.reference_crop[None] + 0.5).astype(np.uint8)
        return lips

    def _lips(self, codes: np.ndarray, weight: np.ndarray, previous, cancel, tick):
        """Auto-regressive lips of n frames from (n, N_s) codes (network.autoregressive_lips, torch):
        (uint8 (n, 128, 128, 3), the last shown crop); tick(frames done) every PROGRESS_EVERY frames."""
        import torch

        from ..model.network import autoregressive_lips

        def step(k: int, _rows: int) -> None:
            if k % PROGRESS_EVERY == PROGRESS_EVERY - 1:
                tick(k + 1)
                cancel.check()
        with torch.inference_mode(), _one_thread(self.device):
            c = torch.from_numpy(np.ascontiguousarray(codes)).to(self.device)
            lips, shown = autoregressive_lips(self.model, c, self.reference_lips, weight=weight, previous=previous,
                                              on_step=step)
        return lips.cpu().numpy(), shown


@contextmanager
def _one_thread(device: str):
    """One torch thread while predicting on a CPU. The frame-by-frame atlas convolutions are too
    small to split, and the batched encoder lost more to the threads' barriers than it gained:
    on this 2-core machine with other jobs running, 1 thread predicted geometry at 890
    frames/s and 2 threads at 230 (docs/benchmarks.md). The caller's setting is restored."""
    if device != "cpu":
        yield
        return
    import torch

    with thread_count(torch.get_num_threads, torch.set_num_threads, 1):
        yield


class PredictorCache:
    """Predictors kept loaded between requests (`lipsync serve`): one per model folder and device,
    loaded again when the folder's files change (a model trained again), at most `size` at a time
    (the least recently used is dropped first).

    Example::

        cache = PredictorCache()
        p = cache.get("models/anna")          # loads
        p is cache.get("models/anna")         # True: same folder, same files
    """

    def __init__(self, size: int = 4):
        self.size = size
        self._loaded: dict[tuple, Predictor] = {}      # key -> predictor, least recently used first

    def get(self, model_dir: Path | str, device: str = "auto") -> Predictor:
        """The predictor of MODEL_DIR on `device`, loaded if it is not cached or its files changed
        (EngineError as load_predictor)."""
        key = _model_key(Path(model_dir), device)
        predictor = self._loaded.pop(key, None)
        if predictor is None:
            predictor = load_predictor(model_dir, device)
            for old in [k for k in self._loaded if k[:2] == key[:2]]:   # an older version of the same model
                del self._loaded[old]
        self._loaded[key] = predictor
        while len(self._loaded) > self.size:
            del self._loaded[next(iter(self._loaded))]
        return predictor

    def __len__(self) -> int:
        return len(self._loaded)


MODEL_FILES = ("config.json", WEIGHTS, MOUTH_BANK)   # a change to any of these loads the model again


def _model_key(model_dir: Path, device: str) -> tuple:
    """(folder, device, (name, modification time ns, size) of each model file there)."""
    stamps = []
    for name in MODEL_FILES:
        try:
            st = (model_dir / name).stat()
        except OSError:
            continue
        stamps.append((name, st.st_mtime_ns, st.st_size))
    return str(model_dir.resolve()), device, tuple(stamps)


def load_predictor(model_dir: Path | str, device: str = "auto") -> Predictor:
    """Load MODEL_DIR once (EngineError if it is missing, incomplete or of a newer format)."""
    return Predictor(model_dir, device)


def predict(model_dir: Path | str, audio_in, options: PredictOptions = PredictOptions(),
            on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> Prediction:
    """Predict from one audio file (or 16 kHz AudioTrack) with the model in MODEL_DIR."""
    return load_predictor(model_dir, options.device).predict(audio_in, options, on_progress, cancel)
