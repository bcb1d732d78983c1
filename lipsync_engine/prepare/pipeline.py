"""`lipsync prepare`: one or more takes of one speaker -> a prepared speaker directory.

Owns the order of the work of Section 3.1 and its bookkeeping: stage 1 tracks every take
(decode + MediaPipe) in parts, one shard each, on worker processes while this process loads
the audio; the reference frame, normalized space and reference atlas follow; stage 2
unrolls and lighting-normalizes every usable frame in chunks on the same workers; the last
stage assembles the shards into the files of dataset.py and writes meta.json last. Parts
and chunks are sized so that every worker has work, even on one short take. Shards live in
SPEAKER_DIR/.work and are written atomically, so an interrupted run resumes where it
stopped and never leaves a half-written file. Must not: contain the algorithms themselves
(normalize.py, lighting.py, audio.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from ..core import jobs, storage
from ..core.errors import InputError, NoFaceError, OutputExists
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..core.version import __version__
from ..face import geometry
from ..face import tracking
from ..face.tracking import frame_ranges, track_frames
from ..io import media
from . import audio, dataset
from .lighting import LightingOptions

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm", ".m4v", ".wmv", ".flv"}
WORK = ".work"
TRACK_SHARD_VERSION = 2     # 2: one shard per part of a take, audio no longer in it
ATLAS_SHARD_VERSION = 2     # 2: atlases, lips and gains written into .work's shared arrays (SHARED_ARRAYS)
# The per-frame arrays the atlas chunks write in place, each into its rows of one array of the
# whole dataset in .work (a memory map), which becomes the dataset's file by a rename: no copy
# of the atlases (1.5 GB for a 5-minute take) at assembly. (file, per-frame shape, dtype)
SHARED_ARRAYS = tuple(dataset.ARRAYS[name] for name in ("atlas", "lips", "gain"))
TRUNCATED_FRACTION = 0.98  # fewer decoded frames than this part of the header's count: a warning
SHORT_SPEAKER_S = 5.0      # less usable video than this: a warning (too little to train on)
IDENTITY_MIN_FRAMES = 10   # shots shorter than this are not compared with the reference face
FREE_SPACE_MARGIN = 32 << 20  # bytes kept free beyond the dataset's arrays: report, meta, temporaries
TRACK_TASKS_PER_WORKER = 25  # parts a tracking worker handles before it is replaced (see _Run.track)
# Frames tracked before a part's first frame and dropped. MediaPipe's video mode carries its
# face region from frame to frame: a graph started cold (on a detection) puts the landmarks of
# its first frame 3.5-6.4 px away from those of a graph that has run since frame 0 (measured
# on clip_ted_f_10s.mp4), 10 frames later 0.05-0.3 px. The difference never dies out, as
# between any two graphs started on different frames: further on it stays within 0.2 px on
# the TED clip and 1.1 px on the synthetic demo (mean 0.03 px; tests/engine/test_prepare.py),
# where starting a graph on frame 1 instead of 0 gives up to 1.24 px. 10 frames also cover
# DETECT_EVERY (5): the second-face detector looks at the same frames of the take.
TRACK_WARMUP = 10
SEEK_MARGIN_S = 1.0         # seek this far before a part's first frame (the decoder goes back to a keyframe)
SPECTROGRAM_BLOCK = 512  # frames of spectrograms computed and written at a time (25 MB)


@dataclass(frozen=True)
class PrepareOptions:
    lighting: LightingOptions = field(default_factory=LightingOptions)  # Section 3.1.2 settings
    workers: int = 2                 # worker processes for tracking and atlases (1 = this process)
    chunk_frames: int = 32           # fewest frames per tracking part or atlas chunk (the work is spread over the workers)
    max_chunk_frames: int = 1000     # most frames per part or chunk: what an interrupted run may redo
    min_usable_fraction: float = 0.5  # refuse a take where fewer frames than this hold one face
    reference: tuple[int, int] | None = None  # force the reference frame: (take, frame number)
    pose_smoothing_s: float = 0.06   # Gaussian sigma (seconds) of per-frame pose smoothing, 0 = off
    report: bool = True              # write SPEAKER_DIR/report
    reference_speaker: str | None = None  # reuse this speaker directory's normalized space (held-out videos)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 1 <= self.chunk_frames <= self.max_chunk_frames:
            raise ValueError(f"need 1 <= chunk_frames <= max_chunk_frames, got {self.chunk_frames}, "
                             f"{self.max_chunk_frames}")
        if self.pose_smoothing_s < 0:
            raise ValueError(f"pose_smoothing_s must be >= 0, got {self.pose_smoothing_s}")
        if not 0.0 <= self.min_usable_fraction <= 1.0:
            raise ValueError(f"min_usable_fraction must be in [0, 1], got {self.min_usable_fraction}")


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    frames: int                  # usable frames in the dataset
    takes: int
    excluded: tuple[str, ...]    # one line per take with excluded frames
    reference: tuple[int, int]   # (take, frame number)
    skipped: bool                # True when the directory was already complete for these inputs
    seconds: float
    cuts: tuple[str, ...] = ()   # one line per take with jump cuts (an edited take)
    warnings: tuple[str, ...] = ()  # suspicious input: a truncated file, another person, too little video


def collect_videos(inputs: Sequence[Path | str]) -> list[Path]:
    """Files as given, folders expanded to their video files (sorted); duplicates dropped."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
            if not found:
                raise InputError(f"{item}: folder holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
            out.extend(found)
        elif not item.exists():
            raise InputError(f"{item}: no such file or folder")
        else:
            out.append(item)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _take_fingerprint(path: Path) -> str:
    st = path.stat()
    return _fingerprint(str(path.resolve()), st.st_size, st.st_mtime_ns, TRACK_SHARD_VERSION)


# ---------------------------------------------------------------- typed state

@dataclass
class Take:
    """One input video as prepare works through it; the stages fill it in, in this order."""

    path: Path                          # the video
    info: media.MediaInfo               # its probe
    fingerprint: str                    # of the file (path, size, mtime): a changed file is tracked again
    parts: list = field(default_factory=list)  # its TrackJobs, in frame order (.work/track_K_S.npz)
    track: dict | None = None           # landmarks, face_count, times, size (the parts joined), audio, audio_offset
    usable: np.ndarray | None = None    # (U,) frame numbers with one usable face
    excluded: str = ""                  # why the other frames were left out (for the report)
    cuts: np.ndarray | None = None      # (U,) bool: usable frames that start a new shot
    vertices: np.ndarray | None = None  # (U, 468, 3) normalized vertices
    pose: list | None = None            # [scale (U,), rotation (U, 3, 3), translation (U, 3)]


@dataclass(frozen=True)
class TrackJob:
    """Worker payload: track frames start .. stop - 1 of one take into one shard."""

    path: str           # the video
    out: str            # the shard (.npz) to write
    fingerprint: str    # stored in the shard, so that a resumed run can trust it
    start: int = 0      # first frame of the part
    stop: int | None = None  # frame after its last; None: to the end of the video
    fps: float = 0.0    # the probe's frame rate, to seek near `start` (0: decode from the first frame)

    def expected(self, frame_count: int) -> int:
        """Frames this part should hold, by the probe's frame count (an estimate for the last part)."""
        return max(0, (self.stop if self.stop is not None else max(frame_count, self.start)) - self.start)


@dataclass(frozen=True)
class AtlasJob:
    """Worker payload: the texture atlases of a chunk of one take's usable frames."""

    take: int                   # index of the take
    path: str                   # its video
    out: str                    # the chunk folder to write (colour transforms, report samples, done marker)
    shared: str                 # the folder of the SHARED_ARRAYS (.work)
    row: int                    # the dataset row of the chunk's first frame in them
    fingerprint: str            # of the take, the reference and the frames: a stale chunk is redone
    frames: np.ndarray          # (n,) frame numbers, increasing
    start_s: float              # where decoding seeks to
    landmarks: np.ndarray       # (n, 468, 3) tracked landmarks of those frames
    vertices: np.ndarray        # (n, 468, 3) their normalized vertices
    norm: object                # normalize.PoseNormalization
    lighting: LightingOptions
    reference: np.ndarray       # the builder's reference atlas (float, with its mask)
    sample_frames: set          # frames whose atlas samples go into the report


# ---------------------------------------------------------------- stage 1: tracking

class _ReferenceCandidate:
    """The frame of a tracking part that would make the best reference so far (the lowest
    normalize.reference_scores among frames with one face), kept with its image: when the main
    process chooses that frame it need not seek and decode it again (31 ms of a 3 s clip's
    preparation, with the second core idle). 0.1 ms a frame."""

    def __init__(self):
        from . import normalize

        self._scores = normalize.reference_scores
        self.score, self.frame, self.image = np.inf, -1, np.zeros((0, 0, 3), np.uint8)

    def __call__(self, frame, landmarks: np.ndarray | None) -> None:
        if landmarks is None:
            return
        score = float(self._scores(landmarks[None])[0])
        if score < self.score:
            self.score, self.frame, self.image = score, int(frame.index), frame.image


def _track_job(job: TrackJob) -> None:
    """Worker: decode + track one part of a take (after TRACK_WARMUP frames of warm-up) into a shard."""
    path = Path(job.path)
    progress = jobs.FrameReporter()
    frames = _frames_between(path, max(0, job.start - TRACK_WARMUP), job.stop, job.fps)
    candidate = _ReferenceCandidate()
    track = track_frames(frames, on_frame=progress, keep_from=job.start, on_tracked=candidate)
    progress.finish(len(track.times_s))
    storage.save_npz(Path(job.out), landmarks=track.landmarks, face_count=track.face_count, times=track.times_s,
                     size=np.asarray(track.size), fingerprint=np.str_(job.fingerprint),
                     candidate_frame=np.int64(candidate.frame), candidate_image=candidate.image)


def _frames_between(path: Path, first: int, stop: int | None, fps: float):
    """Decoded frames first .. stop - 1 of a video (to its end when stop is None), seeking near `first`."""
    start_s = max(0.0, first / fps - SEEK_MARGIN_S) if first > 0 and fps > 0 else 0.0
    frames = media.iter_video_frames(path, start_s=start_s)
    try:
        for n, frame in enumerate(frames):
            if n == 0 and frame.index > first:  # the seek landed too late (frame times off the frame rate)
                yield from _frames_between(path, first, stop, 0.0)
                return
            if stop is not None and frame.index >= stop:
                return
            if frame.index >= first:
                yield frame
    finally:
        frames.close()


def _load_shard(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return {k: z[k] for k in z.files if k != "fingerprint"}
    except (OSError, ValueError, KeyError):
        return None


def _join_parts(take: Take) -> dict:
    """The shards of a take's parts as one track: landmarks, face_count, times, size."""
    shards = [_load_shard(Path(j.out), j.fingerprint) for j in take.parts]
    if any(s is None for s in shards):
        raise RuntimeError(f"{take.path.name}: a tracking shard is missing after tracking")
    have = 0
    for job, shard in zip(take.parts, shards):
        n = len(shard["face_count"])
        if n and job.start != have:  # a part ended early (the video did) but a later one has frames
            raise InputError(f"{take.path.name}: could only decode frames 0-{have - 1} and from {job.start} on "
                             f"(file changed while it was read?)")
        have += n
    if have == 0:
        raise InputError(f"{take.path.name}: the video has no frames")
    sizes = [tuple(int(x) for x in s["size"]) for s in shards if len(s["face_count"])]
    # each part's reference candidate (_ReferenceCandidate; absent from a shard an older run left)
    candidates = {int(s["candidate_frame"]): s["candidate_image"] for s in shards
                  if int(s.get("candidate_frame", -1)) >= 0}
    return {"landmarks": np.concatenate([s["landmarks"] for s in shards]),
            "face_count": np.concatenate([s["face_count"] for s in shards]),
            "times": np.concatenate([s["times"] for s in shards]), "size": np.asarray(sizes[0]),
            "candidates": candidates}


def _split(n: int, size: int, warmup: int = 0) -> list[tuple[int, int]]:
    """[start, stop) ranges covering 0 .. n - 1 in ceil(n / size) parts of near-equal work, where
    every part but the first also does `warmup` frames before its start (tracking's TRACK_WARMUP):
    the first part is longer by that much, so that the workers finish together (on a 3 s clip
    split in two, 10 frames of one worker's time). A part is at most size + warmup frames."""
    parts = max(1, -(-n // max(1, size)))
    while parts > 1 and (n - warmup) / parts < 1:   # every part keeps a frame of its own
        parts -= 1
    work = (n + (parts - 1) * warmup) / parts       # frames each part tracks, warm-up included
    bounds = [0, *(round(work + i * (work - warmup)) for i in range(parts - 1)), n]
    return list(zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------- stage 2: atlases

def _warm_atlas_stage() -> None:
    """Imports and caches of the reference and atlas stages (normalize.py, the mesh topology).
    This process runs it before its workers start (forked ones inherit it), spawned workers
    while this process finds the reference, so that none waits for it later (normalize.py is
    imported only where it is used)."""
    from ..face.topology import load_topology
    from . import normalize  # noqa: F401

    load_topology()


def _atlas_job(job: AtlasJob) -> None:
    """Worker: atlases of the usable frames job.frames of one take into a chunk directory."""
    from . import normalize

    norm = job.norm
    builder = normalize.AtlasBuilder(norm, job.lighting)
    builder.reference = job.reference
    frames = job.frames
    wanted = {int(f): i for i, f in enumerate(frames)}
    n = len(frames)
    box_r, box_c = norm.lip_box
    rows = slice(job.row, job.row + n)
    atlas, lips, gain = (np.load(Path(job.shared) / file, mmap_mode="r+")[rows] for file, _, _ in SHARED_ARRAYS)
    with storage.atomic_path(Path(job.out)) as tmp:
        tmp.mkdir()
        color = np.zeros((n, 2, 3), np.float32)
        samples = {}
        seen = 0
        for frame in media.iter_video_frames(Path(job.path), start_s=job.start_s):
            i = wanted.get(frame.index)
            if i is None:
                if frame.index > frames[-1]:
                    break
                continue
            fa = builder.frame(frame.image, job.landmarks[i], job.vertices[i])
            atlas[i], gain[i], color[i] = fa.normalized, fa.gain, fa.color
            lips[i] = fa.normalized[box_r:box_r + geometry.LIP_SIZE, box_c:box_c + geometry.LIP_SIZE]
            if frame.index in job.sample_frames:
                samples.update(_sample(f"{job.take}_{frame.index}", frame.image, fa))
            seen += 1
            jobs.report(1)
            jobs.check_cancel()
        if seen != n:
            raise InputError(f"{Path(job.path).name}: could only decode {seen} of {n} frames "
                             f"in frames {frames[0]}-{frames[-1]} on the second pass (file changed?)")
        # the rows are in the shared arrays' pages now; no flush(): nothing in prepare syncs to disk
        # (the done marker's rename makes the chunk count, as everywhere in storage.py), and a
        # flush costs up to a second on a busy disk
        del atlas, lips, gain
        np.save(tmp / "color.npy", color)
        np.savez(tmp / "samples.npz", **samples)
        (tmp / "done").write_text(job.fingerprint)


def _sample(key: str, image: np.ndarray, fa) -> dict:
    """What the report shows of a frame: the frame (at most 480 px), both atlases, the gain."""
    f = min(1.0, 480.0 / max(image.shape[:2]))
    small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else image
    return {f"frame_{key}": small, f"scale_{key}": np.float32(f), f"raw_{key}": fa.raw,
            f"normalized_{key}": fa.normalized, f"gain_{key}": fa.gain}


def _reference_image(path: Path, frame_index: int, start_s: float) -> np.ndarray:
    for frame in media.iter_video_frames(path, start_s=start_s):
        if frame.index == frame_index:
            return frame.image
        if frame.index > frame_index:
            break
    raise InputError(f"{path.name}: could not decode reference frame {frame_index} again")


# ---------------------------------------------------------------- the whole run

class _Run:
    """State of one prepare run (kept out of the public API)."""

    def __init__(self, videos, out_dir, options, on_progress, cancel):
        self.videos = videos
        self.out = Path(out_dir)
        self.work = self.out / WORK
        self.options = options
        self.on_progress = on_progress
        self.cancel = cancel
        self.takes: list[Take] = []
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []   # suspicious input, one line each (PrepareResult.warnings)
        self.reference: tuple[int, int] = (-1, -1)  # (take, frame); take -1: another speaker's
        self.borrowed_shape = None      # that speaker's face shape (reference_speaker)

    def stage(self, name: str, total: int, message: str = "", done: int = 0):
        """Start a progress stage; `done` counts units already finished by an earlier run."""
        state = {"done": done}
        self.on_progress(Progress(name, done, total, message))

        def units(n: int) -> None:
            state["done"] += n
            self.on_progress(Progress(name, min(state["done"], total), total, message))
        return units

    def job_frames(self, total: int) -> int:
        """Frames per tracking part or atlas chunk: the work spread evenly over the workers, so
        that a single short take keeps every worker busy, but at least chunk_frames (each part
        and chunk starts a decoder, and a part a MediaPipe graph and its warm-up) and at most
        max_chunk_frames (what resuming may redo)."""
        per_worker = -(-total // self.options.workers)
        return int(np.clip(per_worker, self.options.chunk_frames, self.options.max_chunk_frames))

    def track(self, pool: jobs.WorkerPool) -> None:
        t0 = time.perf_counter()
        infos = [media.probe(p) for p in self.videos]
        for info in infos:
            if not info.has_audio:
                raise InputError(f"{info.path.name}: no audio track (prepare needs the speech of every take)")
        counts = [max(1, info.frame_count) for info in infos]
        size = self.job_frames(sum(counts))
        pending = []
        for k, (p, info) in enumerate(zip(self.videos, infos)):
            take = Take(p, info, _take_fingerprint(p))
            bounds = _split(counts[k], size, TRACK_WARMUP) if info.fps and info.fps > 0 else [(0, counts[k])]
            for n, (start, stop) in enumerate(bounds):
                stop = None if n == len(bounds) - 1 else stop  # the last part runs to the end of the video
                job = TrackJob(str(p), str(self.work / f"track_{k:04d}_{start:06d}.npz"),
                               _fingerprint(take.fingerprint, start, stop, TRACK_WARMUP, TRACK_SHARD_VERSION),
                               start, stop, float(info.fps or 0.0))
                take.parts.append(job)
                if _load_shard(Path(job.out), job.fingerprint) is None:
                    pending.append((job, counts[k]))
            self.takes.append(take)
        pending.sort(key=lambda jc: -jc[0].expected(jc[1]))  # longest first: the workers finish together
        units = self.stage("track", sum(j.expected(c) for j, c in pending),
                           f"{len(pending)} part(s) of {len(self.takes)} take(s)")
        # a MediaPipe graph leaks ~6 MB when closed: workers are renewed every TRACK_TASKS_PER_WORKER parts
        batch = pool.start(_track_job, [j for j, _ in pending], units, TRACK_TASKS_PER_WORKER)
        sounds = [media.load_audio(t.path, sample_rate=audio.SAMPLE_RATE) for t in self.takes]  # meanwhile
        batch.wait()
        for t, sound in zip(self.takes, sounds):
            t.track = _join_parts(t)
            t.track["audio"], t.track["audio_offset"] = sound.samples, np.float64(sound.start_offset_s)
        self.timings["track_s"] = time.perf_counter() - t0

    def check_faces(self) -> list[str]:
        lines = []
        for t in self.takes:
            counts = t.track["face_count"]
            name, n = t.path.name, len(counts)
            usable = np.flatnonzero(counts == 1)
            if len(usable) == 0:
                what = "several faces" if (counts >= 2).any() else "no face"
                raise NoFaceError(f"{name}: {what} found in any of its {n} frames")
            if len(usable) < self.options.min_usable_fraction * n:
                raise NoFaceError(f"{name}: one face found in only {len(usable)} of {n} frames "
                                  f"(no face in frames {frame_ranges(np.flatnonzero(counts == 0)) or 'none'})")
            parts = []
            for label, sel in (("no face", counts == 0), ("several faces", counts >= 2)):
                if sel.any():
                    parts.append(f"{label} in frames {frame_ranges(np.flatnonzero(sel))}")
            t.usable, t.excluded = usable, "; ".join(parts)
            if parts:
                lines.append(f"{name}: {len(counts) - len(usable)} frame(s) excluded: {t.excluded}")
            announced = t.info.frame_count
            if announced and n < TRUNCATED_FRACTION * announced - 1:
                self.warnings.append(f"{name}: only {n} of the {announced} frames its header announces could be "
                                     "decoded: the file is truncated or damaged; the rest is left out")
        return lines

    def check_amount(self) -> None:
        """Warn when the speaker is too short to train a model that generalizes."""
        seconds = sum(len(t.usable) / (t.info.fps or 25.0) for t in self.takes)
        if seconds < SHORT_SPEAKER_S:
            self.warnings.append(f"only {seconds:.1f} s of usable video: too little to train a model that follows "
                                 "new speech (a minute or more is recommended)")

    def check_identity(self) -> None:
        """Warn for a take, or a shot after a jump cut, whose face is shaped unlike the reference's."""
        from . import normalize

        k_ref = self.reference[0]
        reference = (normalize.face_shape(self.takes[k_ref].vertices) if k_ref >= 0
                     else self.borrowed_shape)   # another speaker's reference: its training frames' shape
        if reference is None:
            return
        for t in self.takes:
            starts = [0, *np.flatnonzero(t.cuts).tolist()]
            for a, b in zip(starts, starts[1:] + [len(t.usable)]):
                if b - a < IDENTITY_MIN_FRAMES:
                    continue
                d = normalize.shape_difference(normalize.face_shape(t.vertices[a:b]), reference)
                if d > normalize.IDENTITY_LIMIT:
                    where = f"from frame {int(t.usable[a])} on" if a else "in this take"
                    self.warnings.append(
                        f"{t.path.name}: the face {where} is shaped unlike the reference face ({d:.1%} apart; one "
                        f"person measures under {normalize.IDENTITY_LIMIT:.1%}): another person? A speaker "
                        "folder must hold one person only")

    def choose_reference(self) -> tuple[int, int]:
        from . import normalize

        if self.options.reference is not None:
            k, f = self.options.reference
            if not (0 <= k < len(self.takes)) or f not in set(self.takes[k].usable.tolist()):
                raise InputError(f"reference frame {f} of take {k} is not a usable frame")
            return k, f
        best = (np.inf, 0, 0)
        for k, t in enumerate(self.takes):
            scores = normalize.reference_scores(t.track["landmarks"][t.usable])
            i = int(np.argmin(scores))
            if scores[i] < best[0]:
                best = (float(scores[i]), k, int(t.usable[i]))
        return best[1], best[2]

    def normalize_geometry(self, ref: tuple[int, int]):
        from . import normalize

        k, f = ref
        norm = normalize.build_pose_normalization(self.takes[k].track["landmarks"][f])
        return self.normalize_takes(norm)

    def borrow_reference(self, speaker: Path):
        """Another speaker directory's normalized space (reference face, cylinder, lip box and
        normalized reference atlas), so that held-out takes line up with its training frames."""
        from . import normalize

        meta = dataset.read_meta(speaker)
        box = meta["lip_box"]
        norm = normalize.PoseNormalization(np.load(speaker / dataset.REFERENCE_VERTICES).astype(np.float64),
                                           geometry.CylinderMap.from_dict(meta["cylinder"]), (box["row"], box["col"]))
        self.normalize_takes(norm)
        theirs = np.load(speaker / dataset.ARRAYS["vertices"][0], mmap_mode="r")
        self.borrowed_shape = normalize.face_shape(theirs[::max(1, len(theirs) // 500)])
        builder = normalize.AtlasBuilder(norm, self.options.lighting)
        image = dataset.read_reference_atlas(speaker)
        valid = builder.raster(norm.reference_vertices).mask
        builder.reference = np.dstack([image.astype(np.float32) / 255.0, valid.astype(np.float32)])
        for src, dst in zip(dataset.reference_atlas_files(speaker), dataset.reference_atlas_files(self.out)):
            with storage.atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        return (-1, -1), norm, builder

    def normalize_takes(self, norm):
        from . import normalize

        for t in self.takes:
            lms = t.track["landmarks"][t.usable]
            sigma_frames = self.options.pose_smoothing_s * (t.info.fps or 25.0)
            t.cuts = normalize.detect_cuts(lms, t.usable)
            t.vertices, *pose = normalize.normalize_vertices(lms, norm.reference_vertices, t.usable,
                                                                sigma_frames, t.cuts)
            t.pose = pose
        return norm

    def reference_atlas(self, ref, norm):
        from . import normalize

        k, f = ref
        t = self.takes[k]
        image = t.track["candidates"].get(f)   # the tracking worker kept it (_ReferenceCandidate)
        if image is None:
            image = _reference_image(t.path, f, self._seek_time(t, f))
        builder = normalize.AtlasBuilder(norm, self.options.lighting)
        raw, normalized = builder.set_reference(image, t.track["landmarks"][f])
        files = dataset.reference_atlas_files(self.out)

        def write() -> None:    # while the workers make the atlases (none of them reads the files)
            for file, atlas in zip(files, (raw, normalized)):
                _write_png(file, normalize.to_uint8(atlas))
        return builder, write

    @staticmethod
    def _seek_time(take: Take, frame: int) -> float:
        """A time a little before `frame`, for seeking (the decoder goes back to a keyframe)."""
        times = take.track["times"]
        return max(0.0, float(times[frame]) - 1.0)

    def atlas_jobs(self, norm, builder, ref_key: str, sample_frames: dict) -> list[AtlasJob]:
        out = []
        total = sum(len(t.usable) for t in self.takes)
        size = self.job_frames(total)
        row = 0
        for k, t in enumerate(self.takes):
            usable = t.usable
            for c0, c1 in _split(len(usable), size):
                sel = slice(c0, c1)
                frames = usable[sel]
                fp = _fingerprint(t.fingerprint, ref_key, int(frames[0]), int(frames[-1]), len(frames),
                                  row + c0, total, ATLAS_SHARD_VERSION)
                out.append(AtlasJob(
                    take=k, path=str(t.path), out=str(self.work / f"atlas_{k:04d}_{c0:06d}"),
                    shared=str(self.work), row=row + c0,
                    fingerprint=fp, frames=frames, start_s=self._seek_time(t, int(frames[0])),
                    landmarks=t.track["landmarks"][frames], vertices=t.vertices[sel],
                    norm=norm, lighting=self.options.lighting, reference=builder.reference,
                    sample_frames=set(sample_frames.get(k, ())) & set(frames.tolist()),
                ))
            row += len(usable)
        return out

    def shared_arrays(self, total: int) -> None:
        """Make .work's SHARED_ARRAYS for `total` frames, unless an interrupted run left them so.

        Made anew (and every chunk with them: their rows are gone), their blocks are allocated on
        disk at once, after a check that the whole dataset fits (storage.check_free_space)."""
        missing = []
        for file, shape, dtype in SHARED_ARRAYS:
            try:
                a = np.load(self.work / file, mmap_mode="r")
                ok = a.shape == (total, *shape) and a.dtype == np.dtype(dtype)
                del a
            except (OSError, ValueError):
                ok = False
            if not ok:
                missing.append((file, shape, dtype))
        # the dataset's every array is written from here on: refuse now rather than half-way
        shared = {file for file, _, _ in SHARED_ARRAYS} - {file for file, _, _ in missing}
        needed = sum(total * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                     for file, shape, dtype in dataset.ARRAYS.values() if file not in shared)
        storage.check_free_space(self.out, int(needed * 1.02) + FREE_SPACE_MARGIN, f"preparing {total} frames")
        for file, shape, dtype in missing:
            for chunk in self.work.glob("atlas_*"):
                shutil.rmtree(chunk, ignore_errors=True)
            with storage.atomic_path(self.work / file) as tmp:
                # allocated on disk now: the workers write through memory maps, where a full
                # disk would be a SIGBUS instead of an error
                made = storage.open_memmap_allocated(tmp, dtype, (total, *shape))
                del made

    def atlases(self, atlas_jobs: list[AtlasJob], pool: jobs.WorkerPool,
                meanwhile: Sequence[Callable[[], None]] = ()) -> None:
        """Make the atlases of atlas_jobs on the pool's workers; this process runs `meanwhile`
        (the checks and writes nothing waits for) while they do."""
        t0 = time.perf_counter()
        self.shared_arrays(sum(len(t.usable) for t in self.takes))
        pending = [j for j in atlas_jobs if not _chunk_done(Path(j.out), j.fingerprint)]
        for j in pending:  # a stale chunk (other reference or options) is replaced
            shutil.rmtree(j.out, ignore_errors=True)
        total = sum(len(j.frames) for j in atlas_jobs)
        units = self.stage("atlas", total, f"{len(atlas_jobs)} chunk(s)",
                           done=total - sum(len(j.frames) for j in pending))
        batch = pool.start(_atlas_job, pending, units)
        try:
            for fn in meanwhile:
                fn()
        finally:
            batch.wait()
        self.timings["atlas_s"] = time.perf_counter() - t0


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    with storage.atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _chunk_done(path: Path, fingerprint: str) -> bool:
    done = path / "done"
    return done.is_file() and done.read_text() == fingerprint


def _sample_frames(takes: list[Take], count: int = 6) -> dict[int, list[int]]:
    """Frames the report shows: evenly spread over the dataset plus the widest-open mouth."""
    from . import normalize

    flat = [(k, int(f)) for k, t in enumerate(takes) for f in t.usable]
    picks = {flat[i] for i in np.linspace(0, len(flat) - 1, min(count, len(flat))).round().astype(int)}
    opens = np.concatenate([normalize.mouth_openness(t.vertices) for t in takes])
    picks.add(flat[int(np.argmax(opens))])
    out: dict[int, list[int]] = {}
    for k, f in sorted(picks):
        out.setdefault(k, []).append(f)
    return out


def _write_array(path: Path, parts, n: int, shape_tail, dtype) -> None:
    """Concatenate array parts into one .npy, atomically, streaming part by part.

    Parts are appended with plain writes (not a memory map), so a 1.5 GB atlas file never
    sits in this process's memory: only one part does.
    """
    parts = list(parts)
    n = sum(len(p) for p in parts)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (n,) + tuple(shape_tail)}
    written = 0
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        for p in parts:
            block = np.ascontiguousarray(np.asarray(p), dtype=dtype)
            if block.shape[1:] != tuple(shape_tail):
                raise RuntimeError(f"{path.name}: part of shape {block.shape} does not fit {shape_tail}")
            block.tofile(f)  # no copy of the block
            written += len(block)
        if written != n:
            raise RuntimeError(f"{path.name}: assembled {written} frames, expected {n}")


def _gather_samples(atlas_jobs: list[AtlasJob]) -> dict:
    """The report's arrays that the atlas chunks kept (frames, atlases, gains of the sample frames)."""
    samples = {}
    for j in atlas_jobs:
        with np.load(Path(j.out) / "samples.npz") as z:
            samples.update({k: z[k] for k in z.files})
    return samples


def _draw_sheets(run: _Run, norm, samples: dict, executor: ThreadPoolExecutor) -> list[Future]:
    """The report's sheets that need no assembled array, drawn in two halves on `executor` (two
    threads) while _assemble runs; the halves' futures."""
    from .report import draw_frame_sheets, draw_mesh_sheets, sample_keys

    landmarks, vertices = {}, {}
    for k, f in sample_keys(samples):
        t = run.takes[k]
        landmarks[k, f] = t.track["landmarks"][f]
        vertices[k, f] = t.vertices[int(np.searchsorted(t.usable, f))]
    out = run.out / "report"
    out.mkdir(exist_ok=True)

    def mesh_sheets() -> None:  # the reference atlases are read back on the thread, not here
        atlases = (dataset.read_reference_atlas(run.out, normalized=False), dataset.read_reference_atlas(run.out))
        draw_mesh_sheets(out, samples, vertices, norm.reference_vertices, atlases)

    return [executor.submit(draw_frame_sheets, out, samples, landmarks), executor.submit(mesh_sheets)]


def _draw_openness(run: _Run, envelope: np.ndarray) -> None:
    from . import normalize
    from .report import draw_openness

    take_of_frame = np.concatenate([np.full(len(t.usable), k) for k, t in enumerate(run.takes)])
    draw_openness(run.out / "report", normalize.mouth_openness(np.concatenate([t.vertices for t in run.takes])),
                  envelope, take_of_frame)


def _assemble(run: _Run, norm, atlas_jobs: list[AtlasJob], samples: dict) -> np.ndarray:
    """Write the dataset's arrays; returns the report's audio envelope (N,)."""
    from .report import spectrogram_envelope

    t0 = time.perf_counter()
    units = run.stage("assemble", 4)
    takes, out = run.takes, run.out
    chunks = [Path(j.out) for j in atlas_jobs]
    n = sum(len(t.usable) for t in takes)
    for file, _, _ in SHARED_ARRAYS:  # complete: every chunk wrote its rows
        os.replace(run.work / file, out / file)
    units(1)
    _write_array(out / "color_transform.npy", (np.load(c / "color.npy") for c in chunks), n, (2, 3), np.float32)
    _write_array(out / "vertices.npy", (t.vertices for t in takes), n, (468, 3), np.float32)
    _write_array(out / "landmarks.npy", (t.track["landmarks"][t.usable] for t in takes), n, (468, 3), np.float32)
    index = [np.stack([np.full(len(t.usable), k), t.usable], 1) for k, t in enumerate(takes)]
    _write_array(out / "frame_index.npy", index, n, (2,), np.int32)
    _write_array(out / "frame_times.npy", (t.track["times"][t.usable] for t in takes), n, (), np.float64)
    units(1)
    envelope = []

    def specs():
        for t in takes:
            times = t.track["times"][t.usable]
            for i in range(0, len(times), SPECTROGRAM_BLOCK):
                block = audio.spectrogram_frames(t.track["audio"], times[i:i + SPECTROGRAM_BLOCK],
                                                 float(t.track["audio_offset"]))
                envelope.append(spectrogram_envelope(block))
                yield block
    _write_array(out / "spectrograms.npy", specs(), n, (audio.N_FREQ, audio.N_COLUMNS, 2), np.float32)
    units(1)
    pose = [np.concatenate([t.pose[i] for t in takes]) for i in range(3)]
    storage.save_npz(out / dataset.POSES, scale=pose[0], rotation=pose[1], translation=pose[2])
    storage.save_npy(out / dataset.REFERENCE_VERTICES, norm.reference_vertices.astype(np.float32))
    (out / "report").mkdir(exist_ok=True)
    storage.save_npz(out / "report" / "samples.npz", **samples)
    units(1)
    run.timings["assemble_s"] = time.perf_counter() - t0
    return np.concatenate(envelope) if envelope else np.zeros(0, np.float32)


def _cut_lines(takes: list[dict]) -> tuple[str, ...]:
    """One line per take of meta["takes"] with jump cuts."""
    return tuple(f"{t['name']}: {len(t['cuts'])} jump cut(s), at frame(s) {', '.join(map(str, t['cuts']))}: "
                 f"pose smoothing and the model's previous frame restart there"
                 for t in takes if t.get("cuts"))


def _meta(run: _Run, norm, ref, fingerprint: str, excluded: list[str]) -> dict:
    takes = []
    for t in run.takes:
        info, tr = t.info, t.track
        takes.append({
            "path": str(t.path.resolve()), "name": t.path.name, "fps": info.fps,
            "size": [int(s) for s in tr["size"]], "rotation": info.rotation, "frames": int(len(tr["face_count"])),
            "usable_frames": int(len(t.usable)), "excluded": t.excluded,
            "cuts": [int(f) for f in t.usable[t.cuts]],
            "video_duration_s": float(len(tr["face_count"]) / info.fps) if info.fps else None,
            "audio_duration_s": float(len(tr["audio"]) / audio.SAMPLE_RATE),
            "audio_offset_s": float(tr["audio_offset"]),
        })
    fps = sorted({round(t["fps"], 3) for t in takes})
    return {
        "format": dataset.FORMAT, "format_version": dataset.FORMAT_VERSION, "engine_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint,
        "frames": int(sum(len(t.usable) for t in run.takes)), "fps": fps[0] if len(fps) == 1 else fps,
        "takes": takes, "excluded": excluded,
        "reference": {"take": ref[0], "frame": ref[1],
                      **({"speaker": run.options.reference_speaker} if run.options.reference_speaker else {})},
        "cylinder": norm.cylinder.to_dict(), "atlas_size": geometry.ATLAS_SIZE,
        "lip_box": {"row": norm.lip_box[0], "col": norm.lip_box[1], "size": geometry.LIP_SIZE},
        "audio": {"sample_rate": audio.SAMPLE_RATE, "window": audio.WINDOW_LENGTH, "hop": audio.HOP_LENGTH,
                  "n_fft": audio.N_FFT, "frequencies": audio.N_FREQ, "columns": audio.N_COLUMNS,
                  "layout": "spectrograms.npy[frame, frequency, column, (real, imag)]"},
        "arrays": {name: {"file": f, "shape": [None, *s], "dtype": d} for name, (f, s, d) in dataset.ARRAYS.items()},
        "options": asdict(run.options),
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
    }


def _result_options(options: PrepareOptions) -> dict:
    """The options that change what prepare computes (not how fast, or whether a report is drawn)."""
    d = asdict(options)
    for how in ("workers", "chunk_frames", "max_chunk_frames", "report"):
        d.pop(how)
    if d["reference_speaker"] is None:  # the default: directories prepared before the option stay valid
        d.pop("reference_speaker")
    if d["lighting"].get("normalize", True):  # the default: directories prepared before the option stay valid
        d["lighting"].pop("normalize", None)
    return d


def _check_output_dir(out: Path, fingerprint: str, overwrite: bool) -> str:
    """What to do with `out`: "done" (already complete for these inputs), "new" (write into it:
    missing, empty, or our own interrupted run) or "replace" (a speaker from other inputs, with
    overwrite: built beside it and swapped in at the end). Refuses to clobber anything else."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    meta_path = out / dataset.META
    if meta_path.is_file():
        meta = dataset.read_meta(out)
        if meta.get("fingerprint") == fingerprint:
            return "done"
        if not overwrite:
            raise OutputExists(f"{out}: already holds a prepared speaker made from other videos or options")
        return "replace"
    if (out / WORK).is_dir():  # our own interrupted run: resume it
        return "new"
    if any(out.iterdir()):  # overwrite replaces a prepared speaker, never a folder of other files
        raise InputError(f"{out}: folder is not empty and is not a speaker directory; choose an empty folder")
    return "new"


def _staging_dir(out: Path) -> Path:
    """Where a replacing run builds the new speaker: beside the old one, on the same file system."""
    return out.with_name(f".{out.name}.prepare-new")


def _retired_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.prepare-old")


def _finish_swap(out: Path) -> None:
    """Complete or undo the swap of a replacing run that was killed half-way through it."""
    old = _retired_dir(out)
    if not old.is_dir():
        return
    if out.exists():  # the new speaker is in place: the old one only waited to be deleted
        shutil.rmtree(old, ignore_errors=True)
    else:             # killed between the two renames: the old speaker goes back
        os.replace(old, out)


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the speaker `out` by the complete one in `staging`: two renames, then the old is deleted."""
    old = _retired_dir(out)
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _discard_failed(folder: Path, existed: bool) -> None:
    """After bad input: remove what the run wrote (a re-run cannot use it), and the folder
    itself if the run made it."""
    if not existed:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for p in folder.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def prepare_speaker(videos: Sequence[Path | str], out_dir: Path | str, options: PrepareOptions = PrepareOptions(),
                    on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, *,
                    overwrite: bool = False) -> PrepareResult:
    """Prepare a speaker: track, pose- and lighting-normalize one or more takes (Section 3.1).

    videos : video files and/or folders of takes of ONE speaker. out_dir : SPEAKER_DIR
    (dataset.py describes its files). Re-running with the same inputs and options returns
    at once; an interrupted run resumes from its finished shards.
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    paths = collect_videos(videos)
    out = Path(out_dir)
    fps = [_take_fingerprint(p) for p in paths]
    fingerprint = _fingerprint(fps, _result_options(options), dataset.FORMAT_VERSION)
    _finish_swap(out)
    state = _check_output_dir(out, fingerprint, overwrite)
    if state == "done":
        shutil.rmtree(_staging_dir(out), ignore_errors=True)  # a replacing run given up for these inputs
        shutil.rmtree(out / WORK, ignore_errors=True)  # killed after its meta.json, before clearing its scratch
        meta = dataset.read_meta(out)
        if options.report and not (out / "report" / "index.html").is_file():
            from .report import write_report
            write_report(out, on_progress)
        return PrepareResult(out, meta["frames"], len(meta["takes"]), tuple(meta["excluded"]), _meta_reference(meta),
                             True, time.perf_counter() - t0, _cut_lines(meta["takes"]), tuple(meta.get("warnings", ())))
    # a speaker made from other inputs stays whole until the new one is complete
    folder = _staging_dir(out) if state == "replace" else out
    existed = folder.exists()
    try:
        meta = _prepare_into(paths, folder, fingerprint, options, on_progress, cancel)
    except InputError:
        _discard_failed(folder, existed)  # bad input: nothing of this run is of use to a re-run
        raise
    if state == "replace":
        _swap_in(folder, out)
    return PrepareResult(out, meta["frames"], len(meta["takes"]), tuple(meta["excluded"]), _meta_reference(meta),
                         False, time.perf_counter() - t0, _cut_lines(meta["takes"]), tuple(meta["warnings"]))


def _meta_reference(meta: dict) -> tuple[int, int]:
    return meta["reference"]["take"], meta["reference"]["frame"]


def _prepare_into(paths: list[Path], out: Path, fingerprint: str, options: PrepareOptions,
                  on_progress: ProgressCallback, cancel: CancelToken) -> dict:
    """The whole run, into `out` (new, empty, or an interrupted run's folder that it resumes);
    returns the meta.json it wrote last."""
    t0 = time.perf_counter()
    run = _Run(paths, out, options, on_progress, cancel)
    run.work.mkdir(parents=True, exist_ok=True)
    storage.remove_stale_temporaries(out)
    storage.remove_stale_temporaries(run.work)
    # before the workers start, so that forked ones have them too: the atlas stage's imports and
    # caches (0.02 s) and MediaPipe's (0.04 s; no graph yet, so forking stays safe)
    _warm_atlas_stage()
    tracking.preload()
    # the workers start now (spawned ones import meanwhile), while this process probes the takes
    with jobs.WorkerPool(options.workers, cancel, warm=(__name__,)) as pool:
        run.track(pool)
        pool.preload(_warm_atlas_stage)  # while this process finds the reference
        t_ref = time.perf_counter()
        excluded = run.check_faces()
        meanwhile = [run.check_identity]   # run while the workers make the atlases
        if options.reference_speaker:
            ref, norm, builder = run.borrow_reference(Path(options.reference_speaker))
        else:
            ref = run.choose_reference()
            norm = run.normalize_geometry(ref)
            builder, write_reference = run.reference_atlas(ref, norm)
            meanwhile.append(write_reference)
        run.reference = ref
        for take in run.takes:
            take.track["candidates"] = {}   # the reference is made: the parts' candidate images are not needed
        run.check_amount()
        ref_key = _fingerprint(ref, norm.cylinder.to_dict(), asdict(options.lighting))
        atlas_jobs = run.atlas_jobs(norm, builder, ref_key, _sample_frames(run.takes))
        run.timings["reference_s"] = time.perf_counter() - t_ref
        run.atlases(atlas_jobs, pool, meanwhile)
        pool.close(wait_for_exit=False)  # the workers exit while this process assembles
    cancel.check()
    samples = _gather_samples(atlas_jobs)
    with ThreadPoolExecutor(2) as side:
        # the report's sheets are drawn on two threads while this one assembles (OpenCV and file
        # writes release the GIL; the workers have finished, so both cores are free)
        sheets = _draw_sheets(run, norm, samples, side) if options.report else None
        envelope = _assemble(run, norm, atlas_jobs, samples)
        if sheets is not None:
            units = run.stage("report", 2)
            for sheet in sheets:
                sheet.result()
            units(1)
            _draw_openness(run, envelope)
            units(1)
    run.timings["total_s"] = time.perf_counter() - t0
    meta = _meta(run, norm, ref, fingerprint, excluded)
    meta["warnings"] = run.warnings
    storage.write_json(out / dataset.META, meta)
    if options.report:
        from .report import write_index
        write_index(out)
    shutil.rmtree(run.work, ignore_errors=True)
    return meta
