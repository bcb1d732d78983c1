"""Real MediaPipe tracking: one face tracked, frames with no face or several faces flagged."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from lipsync_engine.demo.video import base_image
from lipsync_engine.face.tracking import frame_ranges, track_frames

pytestmark = pytest.mark.slow


def test_frames_with_no_face_or_several_faces_are_flagged():
    face = base_image(512)
    half = cv2.resize(face, (256, 256), interpolation=cv2.INTER_AREA)
    two = np.zeros_like(face)
    two[128:384, :256], two[128:384, 256:] = half, half[:, ::-1]
    blank = np.full_like(face, 90)
    images = [face] * 12 + [two] * 12 + [face] * 12 + [blank] * 6 + [face] * 8
    frames = [SimpleNamespace(index=i, time_s=i / 25, image=np.ascontiguousarray(im)) for i, im in enumerate(images)]
    done = []
    track = track_frames(frames, on_frame=done.append)
    assert done[-1] == len(images)
    counts = track.face_count
    assert (counts[:10] == 1).all() and (counts[26:36] == 1).all() and (counts[44:] == 1).all()
    assert (counts[12:24] == 2).all()          # every frame that shows two faces is flagged
    assert (counts[36:42] == 0).all()
    assert np.isnan(track.landmarks[counts != 1]).all()
    assert np.isfinite(track.landmarks[counts == 1]).all()
    assert track.landmarks.shape == (50, 468, 3) and track.size == (512, 512)


def test_frame_ranges_text():
    assert frame_ranges(np.array([3, 4, 5, 9, 11, 12])) == "3-5, 9, 11-12"
    assert frame_ranges(np.array([], int)) == ""
