"""The canonical MediaPipe face topology (468 vertices, 898 triangles) and its regions.

Owns: loading `data/mediapipe_face_mesh.json` (MediaPipe's own canonical mesh, Apache-2.0,
see the notice inside it) and the vertex/triangle sets derived from it once: left/right
mirror pairs, the rigid upper-face vertices used for pose normalization, and the lip,
mouth, eye, eyebrow and skin triangle sets used for masks. Must not: track, warp or read
video; the mesh is never re-triangulated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

N_VERTICES = 468
N_TRIANGLES = 898

# MediaPipe landmark ids with a fixed meaning (canonical_face_model.obj numbering).
NOSE_TIP = 1
FOREHEAD_TOP = 10
CHIN = 152
UPPER_LIP_INNER = 13
LOWER_LIP_INNER = 14
MOUTH_CORNER_RIGHT = 61   # the subject's right, on the viewer's left
MOUTH_CORNER_LEFT = 291
RIGHT_CHEEK_SIDE = 234
LEFT_CHEEK_SIDE = 454

# Rigid upper face: vertices at least this high in the canonical model (cm above the
# nose tip region); eyelids and eyebrows are removed from the set because they move.
RIGID_MIN_HEIGHT = 0.5  # canonical y units (~cm)
RIGID_EXTRA = (1, 2, 4, 5, 6, 168, 195, 197, 33, 133, 263, 362)  # nose ridge + eye corners
# Pose alignment uses MediaPipe's own Procrustes landmark basis and weights (nose, eye
# corners, forehead, cheekbones, temples) minus its two jaw-line points, which move with
# speech. On the synthetic demo this halves the pose error of a uniform upper-face set.
POSE_EXCLUDED = (136, 365)


@dataclass(frozen=True)
class FaceTopology:
    """Canonical face mesh and derived index sets (all arrays read-only).

    vertices : (468, 3) float64, canonical model space (~cm; x to the viewer's right, y up,
        z towards the viewer). uv : (468, 2) float64 MediaPipe texture coordinates.
    triangles : (898, 3) int32, counter-clockwise seen from the front.
    mirror : (468,) int64, index of each vertex's left/right counterpart.
    rigid : indices of the rigid upper-face vertices (160: all above the nose, no eyelids or brows).
    procrustes_ids, procrustes_weights : MediaPipe's own Procrustes landmark basis (33).
    pose_ids, pose_weights : the weighted vertices of pose alignment (Umeyama).
    lips_outer, lips_inner : closed vertex loops; *_triangles : triangle index arrays.
    """

    vertices: np.ndarray
    uv: np.ndarray
    triangles: np.ndarray
    mirror: np.ndarray
    rigid: np.ndarray
    procrustes_ids: np.ndarray
    procrustes_weights: np.ndarray
    pose_ids: np.ndarray
    pose_weights: np.ndarray
    lips_outer: np.ndarray
    lips_inner: np.ndarray
    right_eye: np.ndarray
    left_eye: np.ndarray
    eyebrows: np.ndarray
    mouth_triangles: np.ndarray
    lip_triangles: np.ndarray
    eye_triangles: np.ndarray
    skin_triangles: np.ndarray
    notice: str


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _mirror_pairs(v: np.ndarray) -> np.ndarray:
    flipped = v * np.array([-1.0, 1.0, 1.0])
    d = np.linalg.norm(v[:, None, :] - flipped[None, :, :], axis=-1)
    return d.argmin(axis=1)


def _inside(loop: np.ndarray, points_xy: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(P,) bool: points inside the closed polygon xy[loop] (even-odd rule, crossing count).

    On the shipped mesh this classifies every triangle centroid as matplotlib.path's
    contains_points did (tests/engine/test_topology.py), without importing matplotlib (0.1 s).
    """
    poly = np.asarray(xy)[loop]
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    px, py = points_xy[:, :1], points_xy[:, 1:2]
    crosses = (y0 > py) != (y1 > py)  # the edge spans the point's height (never a horizontal edge)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (px < x_cross)).sum(axis=1) % 2 == 1


def _triangle_sets(v, tris, lips_outer, lips_inner, eyes, brows, oval):
    xy = v[:, :2]
    centroids = xy[tris].mean(axis=1)
    in_mouth = _inside(lips_inner, centroids, xy)
    in_lips = _inside(lips_outer, centroids, xy) & ~in_mouth
    in_eyes = np.zeros(len(tris), bool)
    for loop in eyes:
        in_eyes |= _inside(loop, centroids, xy)
    touches_brow = np.isin(tris, brows).any(axis=1)
    # the outermost ring of the mesh often covers hair, ears or background, not skin
    touches_oval = np.isin(tris, oval).any(axis=1)
    skin = ~(in_mouth | in_lips | in_eyes | touches_brow | touches_oval)
    return [np.flatnonzero(m).astype(np.int32) for m in (in_mouth, in_lips, in_eyes, skin)]


@lru_cache(maxsize=1)
def load_topology() -> FaceTopology:
    """Load the canonical MediaPipe face topology shipped with the engine (cached)."""
    text = resources.files("lipsync_engine.face").joinpath("data/mediapipe_face_mesh.json").read_text()
    d = json.loads(text)
    v = np.asarray(d["vertices"], np.float64)
    tris = np.asarray(d["triangles"], np.int32)
    if v.shape != (N_VERTICES, 3) or tris.shape != (N_TRIANGLES, 3):
        raise RuntimeError(f"corrupt face topology data: {v.shape} vertices, {tris.shape} triangles")
    c = d["contours"]
    lips_outer, lips_inner = sorted((np.asarray(l) for l in c["lips"]), key=lambda l: -np.ptp(v[l, 0]))
    right_eye, left_eye = np.asarray(c["right_eye"][0]), np.asarray(c["left_eye"][0])
    brows = np.unique(np.concatenate([np.ravel(l) for k in ("left_eyebrow", "right_eyebrow") for l in c[k]]))
    moving = np.concatenate([right_eye, left_eye, brows])
    rigid = np.flatnonzero(v[:, 1] >= RIGID_MIN_HEIGHT)
    rigid = np.union1d(np.setdiff1d(rigid, moving), RIGID_EXTRA)
    oval = np.unique(np.ravel(c["face_oval"]))
    mouth_t, lip_t, eye_t, skin_t = _triangle_sets(v, tris, lips_outer, lips_inner, (right_eye, left_eye), brows, oval)
    proc = np.asarray(d["procrustes_landmarks"])
    keep = ~np.isin(proc[:, 0].astype(np.int64), POSE_EXCLUDED)
    arrays = dict(
        vertices=v, uv=np.asarray(d["uv"], np.float64), triangles=tris, mirror=_mirror_pairs(v),
        rigid=rigid, procrustes_ids=proc[:, 0].astype(np.int64), procrustes_weights=proc[:, 1],
        pose_ids=proc[keep, 0].astype(np.int64), pose_weights=proc[keep, 1] / proc[keep, 1].sum(),
        lips_outer=lips_outer, lips_inner=lips_inner, right_eye=right_eye, left_eye=left_eye,
        eyebrows=brows, mouth_triangles=mouth_t, lip_triangles=lip_t, eye_triangles=eye_t,
        skin_triangles=skin_t,
    )
    return FaceTopology(**{k: _readonly(a) for k, a in arrays.items()}, notice=d["notice"])
