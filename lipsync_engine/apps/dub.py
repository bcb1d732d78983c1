"""`lipsync dub`: blend the face predicted from new audio back into a video of the speaker.

Paper Section 3.3, "Talking head video synthesis" (Figure 1b): track the target video,
predict geometry and lip texture from the new audio, and blend the predicted face into each
target frame (faceblend.py: the target's pose, the target's lighting put back on the
predicted texture, the jaw and the area below the chin warped to the new chin, a feathered
mask; the upper face, the background and everything else stay the target's own pixels),
then mux the new audio in (H.264 + AAC, videowriter.py).

Output length: the new audio's (audio times are seconds from the audio file's first
sample, as in `lipsync predict`). When the audio is longer than the (selected part of the)
video, the video plays forward, then backward, then forward again ("pingpong": no jump
cut), or stops on its last frame ("hold"). When the audio is shorter, the video is cut at
the audio's end. Frames without exactly one face are passed through unchanged.

Owns: the frame schedule (pingpong/hold), the order of the work and the resumable run: a
work folder beside the output (.NAME.dub) holds the tracking shards, the prediction and
the finished video segments, each written atomically, so a re-run after Ctrl-C or a crash
redoes only what is missing; tracking shards and segments run on worker processes; the
output is written last, atomically, and the work folder removed. Must not: contain the
per-frame image work (faceblend.py), train, or import bpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

from ..core import jobs, storage
from ..core.errors import EngineError, InputError, NoFaceError, OutputExists
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..io import media, videowriter
from ..model import checkpoint
from ..prepare import normalize
from ..prepare.lighting import LightingOptions
from .faceblend import FEATHER, FaceBlender, model_assets

LOOP_MODES = ("pingpong", "hold")
WORK_VERSION = 1
TRACK_SHARD_MIN, TRACK_SHARD_MAX = 100, 1000  # frames per tracking shard (one MediaPipe graph each)
MIN_SEGMENT = 25            # fewest output frames per segment when a short dub is split over the workers
MAX_REVERSED_SEGMENT = 25   # frames of a backward (pingpong) segment: they are held in memory to reverse
AUDIO_RATE = 48000          # Hz of the muxed AAC track (mono)


@dataclass(frozen=True)
class DubOptions:
    video_start_s: float = 0.0          # first second of the target video to use
    video_end_s: float | None = None    # last second of the target video (None = its end)
    audio_start_s: float = 0.0          # first second of the new audio to use
    audio_end_s: float | None = None    # last second of the new audio (None = its end)
    loop: str = "pingpong"              # audio longer than the video: "pingpong" or "hold" (module docstring)
    smoothing: bool = True              # temporal smoothing of the prediction (PredictOptions.smoothing)
    pose_smoothing_s: float = 0.06      # Gaussian sigma (seconds) of the target's per-frame pose, as prepare
    feather: float = FEATHER            # Gaussian feather of the blend mask (sigma, fraction of the face height)
    lighting: LightingOptions = field(  # relighting estimate (specularities are kept: they are the target's)
        default_factory=lambda: LightingOptions(remove_specularities=False))
    relight_every: int = 2              # frames between estimates of the target's lighting (it changes slowly)
    segment_frames: int = 250           # most output frames per resumable segment
    workers: int = 2                    # worker processes for tracking and compositing (1 = this process)
    crf: int = 18                       # H.264 quality (lower is better, 18 ~ visually lossless)
    preset: str = "veryfast"            # x264 speed preset
    device: str = "auto"                # prediction device (auto, cpu, cuda, mps)
    articulation: float | None = None   # mouth gain (PredictOptions.articulation; None = the model's fitted one)

    def __post_init__(self) -> None:
        if self.loop not in LOOP_MODES:
            raise ValueError(f"loop must be one of {LOOP_MODES}, got {self.loop!r}")
        for a, b in ((self.video_start_s, self.video_end_s), (self.audio_start_s, self.audio_end_s)):
            if a < 0 or (b is not None and b <= a):
                raise ValueError(f"need 0 <= start < end, got start {a}, end {b}")
        if min(self.segment_frames, self.workers, self.relight_every) < 1 or not 0 <= self.crf <= 51 \
                or self.feather < 0:
            raise ValueError("segment_frames, workers and relight_every must be >= 1, crf in 0..51, feather >= 0")


@dataclass(frozen=True)
class DubResult:
    path: Path            # the output video
    frames: int           # output frames
    fps: float
    faces: int            # output frames whose face was replaced (the others are the target's frames)
    looped: bool          # True when the audio outlasted the video (pingpong/hold was used)
    seconds: float        # wall time of this run
    resumed: int          # segments reused from an interrupted run
    warnings: tuple[str, ...] = ()  # suspicious input (the target's face unlike the model's speaker)


# ----------------------------------------------------------------------------- schedule

def source_schedule(n_out: int, n_src: int, loop: str = "pingpong") -> np.ndarray:
    """(n_out,) int64: the target-video frame (0..n_src-1) shown at each output frame.

    Output frame i shows frame i while i < n_src; after that "pingpong" plays the video
    backward, then forward again (period 2 n_src - 2, no frame repeated at the turns), and
    "hold" stays on the last frame. Example: source_schedule(7, 3) == [0, 1, 2, 1, 0, 1, 2].
    """
    if n_src < 1 or n_out < 0 or loop not in LOOP_MODES:
        raise ValueError(f"need n_src >= 1, n_out >= 0 and loop in {LOOP_MODES}, got {n_src}, {n_out}, {loop!r}")
    i = np.arange(n_out, dtype=np.int64)
    if loop == "hold" or n_src == 1:
        return np.minimum(i, n_src - 1)
    k = i % (2 * n_src - 2)
    return np.where(k < n_src, k, 2 * n_src - 2 - k)


def split_segments(schedule: np.ndarray, segment_frames: int) -> list[tuple[int, int]]:
    """[start, stop) output ranges: runs of one direction (forward, backward or still), each at
    most segment_frames long (backward ones at most MAX_REVERSED_SEGMENT: they are buffered)."""
    step = np.diff(schedule)
    cuts = [0] + (np.flatnonzero(step[1:] != step[:-1]) + 2).tolist() + [len(schedule)]
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        size = MAX_REVERSED_SEGMENT if b - a > 1 and schedule[a + 1] < schedule[a] else segment_frames
        size = min(size, segment_frames)
        out.extend((s, min(s + size, b)) for s in range(a, b, size))
    return out


# ----------------------------------------------------------------------------- tracking (workers)

@dataclass(frozen=True)
class TrackShard:
    """Worker payload: track target frames first .. stop - 1 of a video into one shard."""

    video: str          # the target video
    fps: float          # its frame rate (frame numbers to seconds)
    first: int          # the first frame number
    stop: int           # one past the last
    out: str            # the shard (.npz) to write, atomically


def _track_job(job: TrackShard) -> None:
    """Worker: track target frames job.first .. job.stop - 1 into one shard (atomic)."""
    from ..face.tracking import track_frames

    first, stop = job.first, job.stop

    def frames():
        for f in media.iter_video_frames(Path(job.video), start_s=max(0.0, (first - 0.5) / job.fps)):
            if f.index >= stop:
                return
            if f.index >= first:
                yield f

    progress = jobs.FrameReporter()
    t = track_frames(frames(), progress)
    progress.finish(len(t.face_count))
    storage.save_npz(Path(job.out), landmarks=t.landmarks, face_count=t.face_count, times=t.times_s)


def _track(pool: jobs.WorkerPool, video: Path, first: int, count: int, fps: float, work: Path,
           on_progress, workers: int) -> dict:
    """Landmarks of target frames first .. first + count - 1, tracked in resumable shards (in parallel).

    Returns {"landmarks" (n, 468, 3), "face_count" (n,), "times" (n,) seconds on the video's
    clock}; n < count when the video ends before its header said.
    """
    size = int(np.clip(-(-count // workers), TRACK_SHARD_MIN, TRACK_SHARD_MAX))
    shards = [TrackShard(str(video), fps, a, min(a + size, first + count),
                         str(work / f"track_{a:08d}_{min(a + size, first + count):08d}.npz"))
              for a in range(first, first + count, size)]
    pending = [j for j in shards if not Path(j.out).is_file()]
    pool.run(_track_job, pending, _stage(on_progress, "track", count, count - sum(j.stop - j.first for j in pending)))
    parts = []
    for j in shards:
        with np.load(j.out) as z:
            parts.append({k: z[k] for k in z.files})
        if len(parts[-1]["face_count"]) < j.stop - j.first:
            break  # the video ended early
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _poses(track: dict, reference_vertices: np.ndarray, first: int, fps: float, smoothing_s: float) -> dict:
    """Per tracked frame (NaN where unusable): the target's normalized vertices and similarity pose."""
    usable = track["face_count"] == 1
    n = len(usable)
    out = {"usable": usable, "target_vertices": np.full((n, 468, 3), np.nan, np.float32),
           "scale": np.full(n, np.nan), "rotation": np.full((n, 3, 3), np.nan), "translation": np.full((n, 3), np.nan)}
    idx = np.flatnonzero(usable)
    if len(idx):
        lms, numbers = track["landmarks"][idx], first + idx      # pose smoothing restarts at jump cuts
        v, s, r, t = normalize.normalize_vertices(lms, reference_vertices, numbers, smoothing_s * fps,
                                                  normalize.detect_cuts(lms, numbers))
        out["target_vertices"][idx], out["scale"][idx], out["rotation"][idx], out["translation"][idx] = v, s, r, t
    return out


# ----------------------------------------------------------------------------- prediction

def _predict_streaming(model_dir: Path, audio: Path, plan: "_Plan", options: DubOptions, work: Path,
                       on_progress, cancel) -> None:
    """`lipsync predict`'s model run, chunk by chunk into pred_vertices.npy / pred_lips.npy (bounded memory)."""
    from ..inference.predictor import PredictOptions, load_predictor, plan_prediction

    predictor = load_predictor(model_dir, options.device)
    popts = PredictOptions(fps=plan.fps, start_s=plan.audio_start_s, end_s=plan.audio_end_s,
                           smoothing=options.smoothing, atlas=True, device=options.device,
                           articulation=options.articulation)
    pp = plan_prediction(audio, popts)
    with storage.atomic_path(work / "pred_vertices.npy") as tv, storage.atomic_path(work / "pred_lips.npy") as tl:
        verts = storage.open_memmap_allocated(tv, np.float32, (plan.n_out, 468, 3))
        lips = storage.open_memmap_allocated(tl, np.uint8, (plan.n_out, 128, 128, 3))
        last = None
        for chunk in predictor.iter_chunks(pp, popts, on_progress, cancel):
            a, b = chunk.first, min(chunk.first + len(chunk.times), plan.n_out)
            if b > a:
                verts[a:b], lips[a:b] = chunk.vertices[:b - a], chunk.lips[:b - a]
                last = b
        if last is None or plan.n_out - last > 2:
            raise EngineError(f"the prediction has {last or 0} frames, the dub needs {plan.n_out}")
        verts[last:], lips[last:] = verts[last - 1], lips[last - 1]   # rounding: at most 2 frames
        verts.flush(), lips.flush()
        del verts, lips


def _prediction(work: Path, model_dir: Path, audio: Path, plan: "_Plan", options: DubOptions, predict_fn,
                on_progress, cancel) -> None:
    """Make sure the work folder holds the prediction for every output frame: pred_vertices.npy
    (n_out, 468, 3) float32 normalized and pred_lips.npy (n_out, 128, 128, 3) uint8."""
    vfile, lfile = work / "pred_vertices.npy", work / "pred_lips.npy"
    if not (vfile.is_file() and lfile.is_file()):
        if predict_fn is None:
            _predict_streaming(model_dir, audio, plan, options, work, on_progress, cancel)
        else:
            verts, lips = predict_fn(model_dir, audio, plan.fps, plan.audio_start_s, plan.audio_end_s, plan.n_out,
                                     options, on_progress, cancel)
            storage.save_npy(lfile, _fit_length(np.asarray(lips, np.uint8), plan.n_out))
            storage.save_npy(vfile, _fit_length(np.asarray(verts, np.float32), plan.n_out))


def _fit_length(a: np.ndarray, n: int) -> np.ndarray:
    """First n rows of a, repeating its last row if it is one or two frames short (rounding)."""
    if len(a) >= n:
        return a[:n]
    if len(a) == 0 or n - len(a) > 2:
        raise EngineError(f"the prediction has {len(a)} frames, the dub needs {n}")
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), axis=0)])


# ----------------------------------------------------------------------------- segments (workers)

_blenders: dict = {}


@dataclass(frozen=True)
class SegmentJob:
    """Worker payload: composite and encode output frames into one MP4 segment. Per-frame arrays
    are in output order (one row per output frame of the segment)."""

    out: str                          # the segment (.mp4) to write, atomically
    video: str                        # the target video
    model_dir: str                    # the model (its FaceBlender is built once per worker)
    fps: float                        # output frame rate
    options: "DubOptions"
    sources: np.ndarray               # (n,) absolute target frame numbers shown
    seek_s: float                     # where decoding starts (just before the first source frame)
    landmarks: np.ndarray             # (n, 468, 3) tracked landmarks of the source frames
    prediction: tuple[str, str, int, int]   # pred_vertices.npy, pred_lips.npy, rows a..b
    usable: np.ndarray                # (n,) a single face was tracked
    target_vertices: np.ndarray       # (n, 468, 3) normalized vertices of the target
    scale: np.ndarray                 # (n,) similarity pose
    rotation: np.ndarray              # (n, 3, 3)
    translation: np.ndarray           # (n, 3)


def _source_frames(job: SegmentJob):
    """(output position, RGB image) of the job's frames in output order; backward and still
    runs are decoded once and buffered (split_segments keeps backward runs short)."""
    wanted = job.sources                          # absolute target frame numbers, in output order
    forward = len(wanted) == 1 or bool(np.all(np.diff(wanted) == 1))
    buffer, keep = {}, set(wanted.tolist())
    lo, hi = int(min(wanted)), int(max(wanted))
    frames = media.iter_video_frames(Path(job.video), start_s=max(0.0, float(job.seek_s)))
    pos = 0
    for f in frames:
        if f.index > hi:
            break
        if f.index < lo:
            continue
        if forward:
            yield pos, f.image
            pos += 1
        elif f.index in keep:
            buffer[f.index] = f.image
    if not forward:
        for pos, n in enumerate(wanted.tolist()):
            if n not in buffer:
                raise InputError(f"{Path(job.video).name}: frame {n} could not be decoded again")
            yield pos, buffer[n]
    elif pos < len(wanted):
        raise InputError(f"{Path(job.video).name}: could only decode {pos} of frames {lo}-{hi} again")


def _segment_job(job: SegmentJob) -> None:
    """Worker: composite and encode one segment into job.out (atomic)."""
    options = job.options
    key = (job.model_dir, options.lighting, options.feather)
    if key not in _blenders:                      # one per worker process (it holds the model's data)
        _blenders.clear()
        _blenders[key] = FaceBlender(Path(job.model_dir), options.lighting, options.feather)
    blender = _blenders[key]
    vfile, lfile, a, b = job.prediction
    verts, lips = np.load(vfile, mmap_mode="r")[a:b], np.load(lfile, mmap_mode="r")[a:b]
    with storage.atomic_path(Path(job.out)) as tmp, av.open(str(tmp), "w", format="mp4") as container:
        stream = rate = lighting = None
        lit_at = 0
        for pos, image in _source_frames(job):
            if stream is None:
                stream, rate = videowriter.add_video_stream(container, job.fps, image.shape[1], image.shape[0],
                                                            options.crf, options.preset)
            out = image
            if job.usable[pos]:
                if lighting is None or pos - lit_at >= options.relight_every:
                    lighting, lit_at = blender.relighter.estimate(image, job.landmarks[pos], job.target_vertices[pos]), pos
                pose = (job.scale[pos], job.rotation[pos], job.translation[pos])
                out, _, _ = blender.blend(image, job.landmarks[pos], job.target_vertices[pos], pose,
                                          verts[pos], lips[pos], lighting)
            videowriter.encode_frame(container, stream, out, pos, rate)
            jobs.report(1)
            jobs.check_cancel()
        for packet in stream.encode(None):
            container.mux(packet)


def _segment_jobs(work: Path, model_dir: Path, video: Path, plan: "_Plan", schedule: np.ndarray, track: dict,
                  poses: dict, options: DubOptions) -> list[SegmentJob]:
    """One job per segment; the prediction stays in the work folder (memory-mapped by the worker)."""
    out = []
    size = int(np.clip(-(-plan.n_out // options.workers), MIN_SEGMENT, options.segment_frames))  # balanced
    for a, b in split_segments(schedule, size):
        src = schedule[a:b]
        out.append(SegmentJob(
            str(work / f"segment_{a:08d}_{b:08d}.mp4"), str(video), str(model_dir), plan.fps, options,
            plan.first + src, float(track["times"][src.min()]) - 0.5 / plan.fps, track["landmarks"][src],
            (str(work / "pred_vertices.npy"), str(work / "pred_lips.npy"), a, b),
            **{k: poses[k][src] for k in ("usable", "target_vertices", "scale", "rotation", "translation")}))
    return out


# ----------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class _Plan:
    fps: float
    first: int            # first target frame used (absolute frame number)
    n_src: int            # target frames available from `first` (per the header)
    n_out: int            # output frames
    audio_start_s: float  # seconds from the audio file's first sample
    audio_end_s: float


def _plan(info: media.MediaInfo, sound: media.AudioTrack, options: DubOptions, audio: Path) -> _Plan:
    fps = float(info.fps)
    if not fps > 0:
        raise InputError(f"{info.path.name}: unknown frame rate")
    a1 = sound.duration_s if options.audio_end_s is None else min(options.audio_end_s, sound.duration_s)
    n_out = int(math.floor((a1 - options.audio_start_s) * fps + 0.5))   # as predict.frame_count
    if n_out < 1:
        raise InputError(f"{audio.name}: the audio from {options.audio_start_s:g} s to {a1:g} s is shorter "
                         f"than one video frame")
    first = int(math.ceil(options.video_start_s * fps - 1e-6))
    stop = info.frame_count if options.video_end_s is None else \
        min(info.frame_count, int(math.floor(options.video_end_s * fps + 1e-6)))
    if stop - first < 1:
        raise InputError(f"{info.path.name}: no frames between {options.video_start_s:g} s and "
                         f"{options.video_end_s if options.video_end_s is not None else info.duration_s:g} s")
    return _Plan(fps, first, stop - first, n_out, float(options.audio_start_s), float(a1))


def _audio_for_mux(sound: media.AudioTrack, plan: _Plan) -> tuple[np.ndarray, int]:
    """The new audio from audio_start_s, n_out / fps seconds long (zero-padded), at AUDIO_RATE."""
    start = int(round(plan.audio_start_s * sound.sample_rate))
    out = np.zeros(int(round(plan.n_out / plan.fps * sound.sample_rate)), np.float32)
    part = sound.samples[start:start + len(out)]
    out[:len(part)] = part
    return out, sound.sample_rate


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_key(path: Path) -> list:
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _work_dir(out: Path, fingerprint: str) -> Path:
    """OUT's resumable work folder (.NAME.dub beside it); leftovers of other inputs are cleared."""
    work = out.with_name(f".{out.name}.dub")
    stamp = work / "fingerprint"
    if work.is_dir() and (not stamp.is_file() or stamp.read_text() != fingerprint):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_temporaries(work)
    if not stamp.is_file():
        stamp.write_text(fingerprint)
    return work


def _stage(on_progress, name: str, total: int, done: int = 0):
    state = {"done": done}
    on_progress(Progress(name, done, total))

    def units(n: int) -> None:
        state["done"] += n
        on_progress(Progress(name, min(state["done"], total), total))
    return units


def _check_paths(model_dir: Path, audio: Path, video: Path, out: Path, overwrite: bool) -> None:
    storage.clear_leftovers(out)  # the temporary of a run killed while it wrote OUT
    if out.suffix.lower() not in (".mp4", ".m4v", ".mov"):
        raise InputError(f"{out.name}: the output must be an .mp4 (or .m4v/.mov) file")
    if out.exists() and not overwrite:
        raise OutputExists(f"{out}: already exists")
    if not model_dir.is_dir():
        raise EngineError(f"{model_dir}: model directory not found")
    for p in (audio, video):
        if not p.is_file():
            raise InputError(f"{p.name}: file not found ({p})")


def dub_video(model_dir: Path | str, audio: Path | str, video: Path | str, output: Path | str,
              options: DubOptions = DubOptions(), on_progress: ProgressCallback = no_progress,
              cancel: CancelToken | None = None, *, overwrite: bool = False, predict_fn=None) -> DubResult:
    """Dub VIDEO (same speaker as the model) with AUDIO into OUTPUT (.mp4); see the module docstring.

    predict_fn : replaces the model's prediction (evaluation baselines): called as
        fn(model_dir, audio, fps, start_s, end_s, n_frames, options, on_progress, cancel) and
        returning (vertices (n, 468, 3) normalized, lips (n, 128, 128, 3) uint8).
    An interrupted run resumes from its work folder (.OUTPUT.dub beside OUTPUT).
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    model_dir, audio, video, out = Path(model_dir), Path(audio), Path(video), Path(output)
    _check_paths(model_dir, audio, video, out, overwrite)
    assets = model_assets(model_dir)
    info, sound = media.probe(video), media.load_audio(audio, AUDIO_RATE)
    plan = _plan(info, sound, options, audio)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _work_dir(out, _fingerprint(WORK_VERSION, assets["model_id"], _file_key(model_dir / "model.safetensors"),
                                       _file_key(audio), _file_key(video), asdict(options) | {"workers": 0},
                                       predict_fn is None))
    count = min(plan.n_src, plan.n_out)
    with jobs.WorkerPool(options.workers, cancel, warm=(__name__,)) as pool:
        track = _track(pool, video, plan.first, count, plan.fps, work, on_progress, options.workers)
        n_src = plan.n_src if len(track["face_count"]) == count else len(track["face_count"])
        if n_src < 1:
            raise InputError(f"{video.name}: no frame could be decoded from {options.video_start_s:g} s")
        poses = _poses(track, assets["reference_vertices"], plan.first, plan.fps, options.pose_smoothing_s)
        if not poses["usable"].any():
            raise NoFaceError(f"{video.name}: no single face found in any of its {n_src} frames to dub")
        warnings = _identity_warnings(model_dir, video, poses)
        _prediction(work, model_dir, audio, plan, options, predict_fn, on_progress, cancel)
        schedule = source_schedule(plan.n_out, n_src, options.loop)
        segments = _segment_jobs(work, model_dir, video, plan, schedule, track, poses, options)
        pending = [j for j in segments if not Path(j.out).is_file()]
        pool.run(_segment_job, pending, _stage(on_progress, "dub", plan.n_out,
                                               plan.n_out - sum(len(j.sources) for j in pending)))
    cancel.check()
    on_progress(Progress("mux", 0, 1))
    videowriter.concatenate([Path(j.out) for j in segments], out, plan.fps, _audio_for_mux(sound, plan))
    on_progress(Progress("mux", 1, 1))
    shutil.rmtree(work, ignore_errors=True)
    return DubResult(out, plan.n_out, plan.fps, int(poses["usable"][schedule].sum()), plan.n_out > n_src,
                     time.perf_counter() - t0, len(segments) - len(pending), warnings)


def _identity_warnings(model_dir: Path, video: Path, poses: dict) -> tuple[str, ...]:
    """A line when the target's face is shaped unlike the speaker the model was trained on
    (normalize.IDENTITY_LIMIT); nothing for a model made before it stored that shape."""
    speaker = checkpoint.read_face_shape(model_dir)
    if speaker is None:
        return ()
    d = normalize.shape_difference(normalize.face_shape(poses["target_vertices"][poses["usable"]]), speaker)
    if d <= normalize.IDENTITY_LIMIT:
        return ()
    return (f"{video.name}: its face is shaped unlike the speaker the model was trained on ({d:.1%} apart; one "
            f"person measures under {normalize.IDENTITY_LIMIT:.1%}): dubbing another person gives them the "
            "speaker's mouth and teeth",)
