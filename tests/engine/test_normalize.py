"""Pose normalization of an edited take: jump cuts are found and the pose smoothing stops at them."""

import numpy as np

from lipsync_engine.face import geometry
from lipsync_engine.prepare.dataset import segment_breaks
from lipsync_engine.prepare.normalize import detect_cuts, normalize_vertices
from lipsync_engine.face.topology import load_topology

FRAMES = 120
CUT = 80          # first frame of the second shot
TURN = range(30, 35)   # a fast real head turn: 5 frames of 4 degrees of yaw each


def _take(rng):
    """(F, 468, 3) image landmarks of a face that sways slowly, turns fast at TURN and jumps
    (position, size and yaw: another camera set-up) at CUT; plus (F,) scale, (F, 3, 3) rotation."""
    canon = load_topology().vertices * 18.0                     # ~150 px wide face
    t = np.arange(FRAMES)
    yaw = 3.0 * np.sin(t / 15.0) + 4.0 * np.clip(t - TURN.start + 1, 0, len(TURN))
    pitch = 2.0 * np.sin(t / 11.0)
    scale = np.where(t >= CUT, 1.25, 1.0)
    shift = np.stack([320 + 4 * np.sin(t / 9.0) + np.where(t >= CUT, 70.0, 0.0), -240 + 3 * np.cos(t / 13.0),
                      np.zeros(FRAMES)], 1)
    yaw = yaw + np.where(t >= CUT, -12.0, 0.0)
    rots = np.stack([geometry.euler_to_rotation(p, y, 0.0) for p, y in zip(pitch, yaw)])
    yup = scale[:, None, None] * np.einsum("fij,nj->fni", rots, canon) + shift[:, None, :]
    yup += rng.normal(0.0, 0.25, yup.shape)                      # tracking noise, ~0.25 px
    return geometry.yup_to_image(yup), scale, rots


def test_detects_the_jump_cut_and_not_the_fast_turn(rng):
    landmarks, _, _ = _take(rng)
    assert np.flatnonzero(detect_cuts(landmarks)).tolist() == [CUT]
    # a gap in the frame numbers at the cut is already a break, not a cut
    numbers = np.r_[np.arange(CUT), np.arange(CUT, FRAMES) + 5]
    assert not detect_cuts(landmarks, numbers).any()
    # a steady take has none
    steady = np.repeat(landmarks[:1], FRAMES, 0) + rng.normal(0.0, 0.25, landmarks.shape)
    assert not detect_cuts(steady).any()


def test_pose_smoothing_stops_at_the_cut(rng):
    landmarks, _, _ = _take(rng)
    topo = load_topology()
    reference = topo.vertices * 18.0
    cuts = detect_cuts(landmarks)

    def rigid_error(verts):   # mean distance (reference units ~ px) of the upper face from the reference
        return np.linalg.norm(verts[:, topo.pose_ids] - reference[topo.pose_ids], axis=-1).mean(1)

    with_cuts = rigid_error(normalize_vertices(landmarks, reference, smoothing=3.0, cuts=cuts)[0])
    across = rigid_error(normalize_vertices(landmarks, reference, smoothing=3.0)[0])
    near = slice(CUT - 2, CUT + 2)
    assert with_cuts[near].max() < 0.6, with_cuts[near]          # the frames at the cut stay aligned
    assert across[near].max() > 5 * with_cuts[near].max()      # smoothing across the cut smears them


def test_segment_breaks_include_cuts():
    fi = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1]])
    assert segment_breaks(fi, {0: [2]}).tolist() == [True, False, True, False, True, False]
    assert segment_breaks(fi).tolist() == [True, False, False, False, True, False]
