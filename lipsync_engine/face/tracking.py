"""MediaPipe Face Mesh tracking of one take: frames -> 468 landmarks per frame, in pixels.

Owns: the legacy MediaPipe Face Mesh solution (mediapipe 0.10.21, models bundled in the
wheel, nothing downloaded), one graph per take (or per part of a take, after warm-up frames)
in video (tracking) mode, and the record of which frames had no face or several faces.
Must not: decode files, normalize, or write anything.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from ..core import jobs
from .topology import N_VERTICES

MAX_FACES = 1               # Face Mesh tracks one face; _SecondFaceWatch finds frames with several
DETECT_EVERY = 5            # frames between looks for a second face (every frame while one is in view)
# A face counts as a second face from this detector score: real faces score 0.8-0.95 here,
# while patterns such as the folds of the demo's spacesuit reached 0.55.
SECOND_FACE_CONFIDENCE = 0.7
MIN_DETECTION_CONFIDENCE = 0.5
MIN_TRACKING_CONFIDENCE = 0.5

os.environ.setdefault("GLOG_minloglevel", "2")       # keep MediaPipe's C++ log off stderr
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass(frozen=True)
class TakeTracking:
    """Landmarks of one take.

    landmarks : (F, 468, 3) float32 image-frame pixels (x right, y down, z away from the
        camera in the same pixel scale as x); NaN where the frame is not usable.
    face_count : (F,) int8: 0 no face, 1 one face, 2 several faces (frames since the last
        look of the face detector before it saw a second face are counted as several).
    times_s : (F,) float64 frame times relative to the first frame.
    size : (height, width) of the (rotation-corrected) frames.
    """

    landmarks: np.ndarray
    face_count: np.ndarray
    times_s: np.ndarray
    size: tuple[int, int]

    @property
    def usable(self) -> np.ndarray:
        """(F,) bool: frames with exactly one face."""
        return self.face_count == 1


def frame_ranges(indices: np.ndarray) -> str:
    """Compact text of frame numbers: [3, 4, 5, 9] -> '3-5, 9'."""
    idx = np.asarray(indices, np.int64)
    if idx.size == 0:
        return ""
    breaks = np.flatnonzero(np.diff(idx) != 1)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends))


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass


@contextmanager
def quiet_native_stderr():
    """Send what native code writes to fd 2 to /dev/null while MediaPipe runs.

    MediaPipe's graph threads print INFO/WARNING lines (TF Lite delegate, absl) that mean
    nothing to a user, at moments no caller controls, so fd 2 stays redirected for the
    whole graph's life. Python errors still raise normally; the CLI's progress bars write
    to their own duplicate of the console (cli.py), so they stay visible.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        _flush_c_stdio()  # MediaPipe's lines sit in C stdio buffers: flush them into /dev/null
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _lean_mediapipe() -> None:
    """Make `mediapipe` importable without running its package __init__ yet.

    That __init__ imports every solution and the Tasks API, which pull in matplotlib (drawing
    utilities) and sounddevice (PortAudio, which probes the sound devices): 0.5-0.7 s in each
    tracking process, out of about 0.6 s of work per 100 frames. The package and its
    `solutions` subpackage are registered unexecuted, so that the two solutions tracking uses
    import alone (0.1 s); the first access to anything else on either (`mediapipe.__version__`,
    `mp.solutions.drawing_utils`, `mp.tasks`) runs the two __init__ files in place, so other
    code in the same process sees the complete package.
    """
    spec = importlib.util.find_spec("mediapipe")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("No module named 'mediapipe'", name="mediapipe")
    lean = []

    def complete(name: str):
        for module in lean:
            module.__dict__.pop("__getattr__", None)
        for module in reversed(lean):  # mediapipe.python.solutions first, as the package's own import does
            module.__spec__.loader.exec_module(module)
        for module in lean:
            if name in module.__dict__:
                return module.__dict__[name]
        raise AttributeError(f"module {lean[0].__name__!r} has no attribute {name!r}")

    package = importlib.util.module_from_spec(spec)
    package.__getattr__ = complete
    sys.modules["mediapipe"] = package
    lean.append(package)
    try:
        python = importlib.import_module("mediapipe.python")  # the framework bindings: needed anyway
        sub = importlib.util.find_spec("mediapipe.python.solutions")
        solutions = importlib.util.module_from_spec(sub)
        solutions.__getattr__ = complete
        sys.modules[sub.name] = solutions
        python.solutions = solutions
        lean.append(solutions)
    except BaseException:
        for module in lean:  # as after a failed plain import: the next import starts afresh
            sys.modules.pop(module.__name__, None)
        raise


def _solutions():
    """MediaPipe's face_mesh and face_detection solution modules (see _lean_mediapipe)."""
    if "mediapipe" not in sys.modules:
        _lean_mediapipe()
    return (importlib.import_module("mediapipe.python.solutions.face_mesh"),
            importlib.import_module("mediapipe.python.solutions.face_detection"))


def _graph_solutions():
    """_solutions() for making a graph: from then on this process's worker pools spawn (a child
    forked after a graph ran dies in its own)."""
    jobs.refuse_fork("a MediaPipe graph")
    return _solutions()


def preload() -> None:
    """Import MediaPipe's two solutions now (0.04 s), making no graph: a process that forks its
    workers afterwards hands them the import (prepare does)."""
    _solutions()


def create_face_mesh(static_image_mode: bool = False):
    """A fresh MediaPipe Face Mesh graph (use one per take, and close it)."""
    face_mesh, _ = _graph_solutions()
    with quiet_native_stderr():
        return face_mesh.FaceMesh(
            static_image_mode=static_image_mode, max_num_faces=MAX_FACES, refine_landmarks=False,
            min_detection_confidence=MIN_DETECTION_CONFIDENCE, min_tracking_confidence=MIN_TRACKING_CONFIDENCE)


def landmarks_to_pixels(face_landmarks, width: int, height: int) -> np.ndarray:
    """One MediaPipe NormalizedLandmarkList -> (468, 3) float32 pixels (z scaled by width)."""
    a = np.array([(p.x, p.y, p.z) for p in face_landmarks.landmark[:N_VERTICES]], np.float32)
    return a * np.array([width, height, width], np.float32)


class _SecondFaceWatch:
    """Flags frames that show several faces, at a fraction of the cost of tracking two.

    Face Mesh with max_num_faces=2 runs its face detector on every frame while only one face
    is tracked, which doubles the cost (5.9 vs 3.4 ms a frame measured here). Instead the
    mesh tracks one face and MediaPipe's short-range face detector (the one Face Mesh uses)
    looks every DETECT_EVERY frames; when it sees two faces, every frame since the previous
    look is flagged, and it looks at every frame until one face is left.
    """

    def __init__(self):
        _, face_detection = _graph_solutions()
        self.detector = face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=MIN_DETECTION_CONFIDENCE)
        self.last_look = -1
        self.several_in_view = False

    def flag(self, n: int, index: int, image: np.ndarray, several: list[bool]) -> None:
        """Update several[...] (one bool per frame so far) after the n-th frame (0-based) seen,
        frame number `index` of its take: the looks fall on the same frames of a take however
        it is split (a split part starts DETECT_EVERY frames or more before its first frame)."""
        if not (self.several_in_view or index % DETECT_EVERY == 0):
            return
        # filtered here: the solution returns detections below its min_detection_confidence
        found = sum(d.score[0] >= SECOND_FACE_CONFIDENCE for d in self.detector.process(image).detections or [])
        self.several_in_view = found >= 2
        if self.several_in_view:
            several[self.last_look + 1:n + 1] = [True] * (n - self.last_look)
        self.last_look = n

    def close(self) -> None:
        self.detector.close()


def track_frames(frames: Iterable, on_frame: Callable[[int], None] | None = None,
                 keep_from: int | None = None,
                 on_tracked: Callable[[object, np.ndarray | None], None] | None = None) -> TakeTracking:
    """Track every frame of one take with one MediaPipe Face Mesh graph in video mode.

    frames : iterable of objects with `.index`, `.time_s` and `.image` ((H, W, 3) uint8 RGB),
        in display order. on_frame : called with the number of frames done (progress and
        cancellation: raise from it to stop). keep_from : frames with a smaller `.index` are
        tracked but left out of the result (and of on_frame's count): the warm-up of a part of
        a take, so that the graph's tracking state has settled by its first kept frame.
        on_tracked : called with each kept frame and its (468, 3) landmarks (None where the mesh
        found no face, or several), as they are tracked; a frame flagged later by the
        second-face detector has been passed with its landmarks all the same.
    """
    lms, found, several, times, size = [], [], [], [], (0, 0)
    skipped = 0
    with quiet_native_stderr(), create_face_mesh() as mesh:
        watch = _SecondFaceWatch()
        try:
            for n, frame in enumerate(frames):
                size = frame.image.shape[:2]
                faces = mesh.process(frame.image).multi_face_landmarks or []
                found.append(len(faces) == 1)
                several.append(len(faces) > 1)
                lms.append(landmarks_to_pixels(faces[0], size[1], size[0]) if faces else None)
                watch.flag(n, frame.index, frame.image, several)
                times.append(frame.time_s)
                if keep_from is not None and frame.index < keep_from:
                    skipped = n + 1
                    continue
                if on_tracked is not None:
                    on_tracked(frame, lms[-1] if found[-1] else None)
                if on_frame is not None:
                    on_frame(n + 1 - skipped)
        finally:
            watch.close()
    del lms[:skipped], found[:skipped], several[:skipped], times[:skipped]
    counts = np.where(several, 2, np.asarray(found, np.int8)).astype(np.int8) if lms else np.zeros(0, np.int8)
    nan = np.full((N_VERTICES, 3), np.nan, np.float32)
    stacked = np.stack([l if c == 1 else nan for l, c in zip(lms, counts)]) if lms else \
        np.zeros((0, N_VERTICES, 3), np.float32)
    return TakeTracking(stacked, counts, np.asarray(times, np.float64), tuple(int(x) for x in size))


def track_image(image: np.ndarray) -> np.ndarray | None:
    """Landmarks (468, 3) pixels of the single face in a still image, or None."""
    with create_face_mesh(static_image_mode=True) as mesh, quiet_native_stderr():
        faces = mesh.process(np.ascontiguousarray(image)).multi_face_landmarks or []
    if len(faces) != 1:
        return None
    return landmarks_to_pixels(faces[0], image.shape[1], image.shape[0])
