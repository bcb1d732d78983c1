"""Real MediaPipe tracking: one face tracked, frames with no face or several faces flagged."""

import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lipsync_engine.demo.video import base_image
from lipsync_engine.face.tracking import frame_ranges, track_frames

pytestmark = pytest.mark.slow


def _mixed_frames():
    """12 frames of one face, 12 of two, 12 of one, 6 without a face, 8 of one."""
    face = base_image(512)
    half = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    two = np.zeros_like(face)
    two[128:384, :256], two[128:384, 256:] = half, half[:, ::-1]
    blank = np.full_like(face, 90)
    images = [face] * 12 + [two] * 12 + [face] * 12 + [blank] * 6 + [face] * 8
    return [SimpleNamespace(index=i, time_s=i / 25, image=np.ascontiguousarray(im)) for i, im in enumerate(images)]


def test_frames_with_no_face_or_several_faces_are_flagged():
    frames = _mixed_frames()
    done = []
    track = track_frames(frames, on_frame=done.append)
    assert done[-1] == len(frames)
    counts = track.face_count
    assert (counts[:10] == 1).all() and (counts[26:36] == 1).all() and (counts[44:] == 1).all()
    assert (counts[12:24] == 2).all()          # every frame that shows two faces is flagged
    assert (counts[36:42] == 0).all()
    assert np.isnan(track.landmarks[counts != 1]).all()
    assert np.isfinite(track.landmarks[counts == 1]).all()
    assert track.landmarks.shape == (50, 468, 3) and track.size == (512, 512)


def test_a_part_after_its_warm_up_flags_the_frames_the_whole_take_does():
    """prepare tracks a take in parts, each from 10 frames before its first: the warm-up frames
    are left out, and the second-face detector looks at the same frames of the take."""
    frames = _mixed_frames()
    whole = track_frames(frames).face_count
    for start in (12, 20, 26, 40):             # into, inside, just after the two faces; into the blank frames
        done = []
        part = track_frames(frames[start - 10:], on_frame=done.append, keep_from=start)
        assert done[-1] == len(frames) - start and len(part.face_count) == len(frames) - start
        assert np.array_equal(part.face_count, whole[start:]), start
        assert part.times_s[0] == frames[start].time_s


def test_frame_ranges_text():
    assert frame_ranges(np.array([3, 4, 5, 9, 11, 12])) == "3-5, 9, 11-12"
    assert frame_ranges(np.array([], int)) == ""


def test_tracking_imports_only_the_mediapipe_it_uses():
    """The two solutions tracking needs import without MediaPipe's package __init__ (which pulls in
    matplotlib and PortAudio: 0.5 s a process); the rest of the package arrives on first use."""
    code = ("import sys; from lipsync_engine.face.tracking import create_face_mesh; create_face_mesh().close(); "
            "assert 'matplotlib' not in sys.modules and 'sounddevice' not in sys.modules, 'heavy import'; "
            "import mediapipe as mp; print(mp.__version__, mp.solutions.drawing_utils.__name__, "
            "mp.solutions.face_mesh.FaceMesh.__name__, mp.tasks.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0.10.21", "mediapipe.python.solutions.drawing_utils", "FaceMesh",
                                  "mediapipe.tasks.python"]
