"""Generate blendshape_rigs/arkit52/: the 52 ARKit blendshapes on the MediaPipe canonical face.

Output (all reproducible from the canonical topology alone; nothing is typed in by hand):
- basis.npz: names (52,) str in Apple's grouped order, deltas (52, 468, 3) float32 vertex
  offsets in canonical model units (~cm; x to the viewer's right, y up, z towards the
  viewer; the subject's LEFT is +x), plus neutral (468, 3) float32, the canonical face;
- README.md: the coordinate frame and, for every shape, its rule and measured size;
- sheet.png: all 52 shapes at weight 1 (front and side views, displacement coloured).

How a shape is made: per-vertex weights from geometric regions of the canonical face
(distances to the lip corners, the lip contours, the lip midline, the eye loops and the
eyebrow chains, a jaw weight), combined with smooth falloffs (Gaussians, smoothstep) and
multiplied by a displacement rule (a hinge rotation, a pull towards a direction, a move
along the surface normal, ...). Each "Left" shape (the subject's left, +x) is built once;
its "Right" twin is its exact mirror through topology.mirror, and every unpaired shape is
symmetrized the same way, so left/right pairs mirror to the last bit.

Usage: .venv/bin/python tools/make_arkit_rig.py [--out blendshape_rigs/arkit52]
Must not: be imported by the engine (the engine reads only the files written here).
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lipsync_engine.rig.names import ARKIT_NAMES  # noqa: E402
from lipsync_engine.face.topology import (CHIN, LOWER_LIP_INNER, MOUTH_CORNER_LEFT,  # noqa: E402
                                     UPPER_LIP_INNER, load_topology)

RIG_VERSION = 1
OUT = ROOT / "blendshape_rigs" / "arkit52"
MIRROR_X = np.array([-1.0, 1.0, 1.0])

# --- jaw (canonical units, ~cm) -------------------------------------------------------------
# jawOpen models the rotation phase of jaw opening, the range speech uses (the first 2 cm or
# so of incisor opening are mostly rotation; the forward glide of the condyles comes later):
# a hinge about the temporomandibular joints, in front of the ears at about nose-base height.
JAW_PIVOT = (0.0, -1.5, -3.5)      # hinge axis point (axis parallel to x): the joints
JAW_OPEN_DEG = 11.0                # hinge angle at weight 1: the chin drops ~1.35 cm
JAW_GLIDE = 0.0                    # forward condyle glide added to the hinge (cm)
JAW_BAND_ABOVE = (0.25, 1.0)       # jaw-weight ramp above the lip midline: mouth centre, cheeks (cm)
JAW_BAND_BELOW = (0.25, 2.5)       # ... below it
EAR_RELEASE_X = (5.0, 7.5)         # |x| over which the jaw weight fades out towards the ears
EAR_RELEASE_Y = (-6.0, -3.5)       # ... for vertices above this height ramp


# ---------------------------------------------------------------------------------------------
# Falloffs and region fields
# ---------------------------------------------------------------------------------------------

def smoothstep(t) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def gauss(d, sigma) -> np.ndarray:
    return np.exp(-0.5 * (np.asarray(d) / sigma) ** 2)


def polyline_distance(points: np.ndarray, chain: np.ndarray, closed: bool, samples: int = 12) -> np.ndarray:
    """(N,) distance from each point to a polyline through `chain` (M, 3), densely sampled."""
    ends = np.r_[chain[1:], chain[:1]] if closed else chain[1:]
    starts = chain[:len(ends)]
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    dense = (starts[:, None] + t * (ends - starts)[:, None]).reshape(-1, 3)
    dense = np.vstack([dense, chain[-1:]])
    return np.linalg.norm(points[:, None] - dense[None], axis=-1).min(axis=1)


def split_loop(loop: np.ndarray, v: np.ndarray, upper_hint: int | None = None):
    """Split a closed loop at its min/max-x vertices: (upper, lower) id arrays sorted by x."""
    loop = np.asarray(loop)
    i, j = sorted((int(np.argmin(v[loop, 0])), int(np.argmax(v[loop, 0]))))
    a, b = loop[i:j + 1], np.r_[loop[j:], loop[:i + 1]]
    if upper_hint is not None:
        upper, lower = (a, b) if upper_hint in a else (b, a)
    else:
        upper, lower = (a, b) if v[a, 1].mean() > v[b, 1].mean() else (b, a)
    return tuple(c[np.argsort(v[c, 0], kind="stable")] for c in (upper, lower))


def vertex_normals(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, tris[:, k], n)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@dataclass(frozen=True)
class Face:
    """The canonical face and the per-vertex region fields every rule is built from."""

    v: np.ndarray            # (468, 3) canonical vertices
    normals: np.ndarray      # (468, 3) unit outward normals
    mirror: np.ndarray       # (468,) mirror vertex ids
    corner: np.ndarray       # (3,) the subject's left mouth corner (landmark 291)
    half_width: float        # |x| of the outer mouth corners
    mid_y: np.ndarray        # (468,) lip midline height at each vertex's x (flat beyond the corners)
    lip: np.ndarray          # (468,) 1 on the lips (inside the outer lip loop), Gaussian falloff outside
    inner: np.ndarray        # (468,) 0 on the outer lip contour .. 1 on the inner contour
    upper: np.ndarray        # (468,) smooth 0/1: above the lip midline
    corner_taper: np.ndarray  # (468,) 1 at the mouth centre .. 0 at the corners (lips only)
    jaw: np.ndarray          # (468,) jaw weight: 1 on chin, jaw and lower lip, 0.5 at the corners
    left_eye: tuple          # (upper ids, lower ids) of the left eye loop, sorted by x
    left_brow: np.ndarray    # (10,) left eyebrow vertex ids


def _lip_fields(v: np.ndarray, topo) -> dict:
    from matplotlib.path import Path as PolygonPath

    up_in, lo_in = split_loop(topo.lips_inner, v, UPPER_LIP_INNER)
    mid_y = (np.interp(v[:, 0], v[up_in, 0], v[up_in, 1]) + np.interp(v[:, 0], v[lo_in, 0], v[lo_in, 1])) / 2
    inside = PolygonPath(v[topo.lips_outer, :2]).contains_points(v[:, :2], radius=1e-6)
    on_outer = np.isin(np.arange(len(v)), topo.lips_outer)
    d_out = polyline_distance(v, v[topo.lips_outer], closed=True)
    d_in = polyline_distance(v, v[topo.lips_inner], closed=True)
    lip = np.where(inside | on_outer, 1.0, gauss(d_out, 0.45))
    inner = np.where(inside | on_outer, d_out / np.maximum(d_out + d_in, 1e-9), 0.0)
    half_width = float(v[MOUTH_CORNER_LEFT, 0])
    upper = smoothstep(0.5 + (v[:, 1] - mid_y) / 0.2)
    corner_taper = np.clip(1.0 - (v[:, 0] / half_width) ** 4, 0.0, 1.0)
    return dict(mid_y=mid_y, lip=lip, inner=inner, upper=upper, corner_taper=corner_taper, half_width=half_width)


def _jaw_weight(v: np.ndarray, mid_y: np.ndarray, half_width: float) -> np.ndarray:
    """1 on chin, jaw and lower lip, 0.5 on the mouth line, 0 above it; fades out near the ears."""
    x, y = v[:, 0], v[:, 1]
    side = smoothstep((np.abs(x) - 0.6 * half_width) / (1.2 * half_width))
    above = JAW_BAND_ABOVE[0] + (JAW_BAND_ABOVE[1] - JAW_BAND_ABOVE[0]) * side
    below = JAW_BAND_BELOW[0] + (JAW_BAND_BELOW[1] - JAW_BAND_BELOW[0]) * side
    w = np.where(y < mid_y, 0.5 + 0.5 * smoothstep((mid_y - y) / below), 0.5 - 0.5 * smoothstep((y - mid_y) / above))
    ear = (smoothstep((np.abs(x) - EAR_RELEASE_X[0]) / (EAR_RELEASE_X[1] - EAR_RELEASE_X[0]))
           * smoothstep((y - EAR_RELEASE_Y[0]) / (EAR_RELEASE_Y[1] - EAR_RELEASE_Y[0])))
    return w * (1.0 - ear)


def build_face() -> Face:
    topo = load_topology()
    v = np.asarray(topo.vertices, np.float64)
    lips = _lip_fields(v, topo)
    brows = np.asarray(topo.eyebrows)
    return Face(v=v, normals=vertex_normals(v, topo.triangles), mirror=np.asarray(topo.mirror),
                corner=v[MOUTH_CORNER_LEFT], jaw=_jaw_weight(v, lips["mid_y"], lips["half_width"]),
                left_eye=split_loop(topo.left_eye, v), left_brow=brows[v[brows, 0] > 0], **lips)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the rules
# ---------------------------------------------------------------------------------------------

def side_left(x: np.ndarray, width: float = 0.8) -> np.ndarray:
    """1 on the subject's left half (+x), 0.5 on the midline, 0 on the right; Left + Right = 1."""
    return smoothstep(0.5 + x / (2.0 * width))


def to_tangent(face: Face, delta: np.ndarray) -> np.ndarray:
    """Remove the normal component: the skin slides over the face instead of leaving it."""
    return delta - (delta * face.normals).sum(axis=1, keepdims=True) * face.normals


def corner_pull(face: Face, direction, sigma: float) -> np.ndarray:
    """Move the left mouth corner by `direction` (cm), Gaussian falloff in 3D distance."""
    w = gauss(np.linalg.norm(face.v - face.corner, axis=1), sigma)
    return w[:, None] * np.asarray(direction, np.float64)


def eye_fields(face: Face, sigma_up: float, sigma_low: float):
    """Left-eye fields: (gap (468, 2), w_upper (468,), w_lower (468,)).

    gap is the (y, z) offset from the lower-lid to the upper-lid contour at each vertex's x
    (0 beyond the eye corners); w_upper is 1 on the upper-lid contour with a Gaussian
    falloff above it, w_lower likewise below the lower-lid contour. Only the left eye's
    surroundings get non-zero weights.
    """
    up, lo = face.left_eye
    x, y = face.v[:, 0], face.v[:, 1]
    contour = [np.stack([np.interp(x, face.v[c, 0], face.v[c, k]) for k in (1, 2)], axis=1) for c in (up, lo)]
    inside = (x > face.v[up, 0].min()) & (x < face.v[up, 0].max())
    gap = np.where(inside[:, None], contour[0] - contour[1], 0.0)
    mid = (contour[0][:, 0] + contour[1][:, 0]) / 2
    w_up = np.where(y >= mid, gauss(np.maximum(y - contour[0][:, 0], 0.0), sigma_up), 0.0)
    w_lo = np.where(y < mid, gauss(np.maximum(contour[1][:, 0] - y, 0.0), sigma_low), 0.0)
    x0, x1 = face.v[up, 0].min(), face.v[up, 0].max()
    near = (smoothstep((x - x0 + 0.35) / 0.35) * smoothstep((x1 + 0.35 - x) / 0.35)
            * gauss(np.maximum(np.abs(face.v[:, 2] - face.v[up, 2].mean()) - 0.6, 0.0), 0.4))
    return gap, w_up * near, w_lo * near


def lids(face: Face, upper: float, lower: float, sigma_up: float = 0.45, sigma_low: float = 0.35,
         forward: float = 0.0) -> np.ndarray:
    """Left eyelids: the upper lid moves by `upper` x the lower-to-upper lid offset (y and z,
    so a closing lid meets the other one in 3D), the lower lid by `lower` x the offset;
    `forward` x the lid gap moves the upper lid towards the viewer (over the eyeball)."""
    gap, w_up, w_lo = eye_fields(face, sigma_up, sigma_low)
    d = np.zeros_like(face.v)
    d[:, 1:] = gap * (upper * w_up + lower * w_lo)[:, None]
    d[:, 2] += forward * gap[:, 0] * w_up
    return d


def brow_weight(face: Face, sigma: float) -> np.ndarray:
    """1 on the left eyebrow chain, Gaussian falloff; fades out towards the eye opening."""
    d = polyline_distance(face.v, face.v[face.left_brow[np.argsort(face.v[face.left_brow, 0])]], closed=False)
    _, w_up, w_lo = eye_fields(face, 0.25, 0.25)
    eye_y = face.v[face.left_eye[0], 1].max()
    keep = smoothstep((face.v[:, 1] - eye_y + 0.1) / 0.8)
    return gauss(d, sigma) * np.maximum(keep, 0.3 * w_up) * (1.0 - w_lo)


def lip_part(face: Face, upper: bool) -> np.ndarray:
    """Weight of the upper (or lower) lip: the lip field on that side of the midline."""
    side = face.upper if upper else 1.0 - face.upper
    return face.lip * side


def mirror_delta(face: Face, delta: np.ndarray) -> np.ndarray:
    """The mirror image of a shape: vertex i takes the x-flipped delta of its mirror vertex."""
    return delta[face.mirror] * MIRROR_X


def symmetrize(face: Face, delta: np.ndarray) -> np.ndarray:
    return 0.5 * (delta + mirror_delta(face, delta))


# ---------------------------------------------------------------------------------------------
# The rules. Each returns a (468, 3) delta at weight 1; its docstring goes into README.md.
# "Left" rules act on the subject's left (+x); their Right twins are mirrors.
# ---------------------------------------------------------------------------------------------

def eye_blink(face: Face) -> np.ndarray:
    """Eyelid closure: the upper lid (and the skin up to its crease, Gaussian 0.45 cm) moves
    85% of the way to the lower lid at its x (in y and z), the lower lid the other 15%: the
    lids meet."""
    return lids(face, upper=-0.85, lower=0.15)


def eye_look_down(face: Face) -> np.ndarray:
    """Gaze down (no iris on this topology, so the lids follow the eye): upper lid down
    0.35 x gap, lower lid down 0.35 x gap with the skin below it (Gaussian 0.5 cm)."""
    return lids(face, upper=-0.35, lower=-0.35, sigma_low=0.5)


def eye_look_in(face: Face) -> np.ndarray:
    """Gaze towards the nose: both lid contours and the skin next to them (Gaussian 0.35 cm)
    slide 0.18 cm towards the nose (along the surface)."""
    _, w_up, w_lo = eye_fields(face, 0.35, 0.35)
    d = np.zeros_like(face.v)
    d[:, 0] = -0.18 * (w_up + w_lo)
    return to_tangent(face, d)


def eye_look_out(face: Face) -> np.ndarray:
    """Gaze away from the nose: the mirror motion of eyeLookIn on the same eye (0.18 cm
    towards the ear, along the surface)."""
    return -eye_look_in(face)


def eye_look_up(face: Face) -> np.ndarray:
    """Gaze up: the upper lid contour only (Gaussian 0.25 cm) rises 0.3 x gap and the lower
    lid with the skin below it (Gaussian 0.5 cm) rises 0.3 x gap."""
    return lids(face, upper=0.3, lower=0.3, sigma_up=0.25, sigma_low=0.5)


def eye_squint(face: Face) -> np.ndarray:
    """Squint: the lower lid and the skin below it (Gaussian 0.6 cm) rise 0.45 x gap and
    move 0.05 cm forward; the upper lid lowers 0.1 x gap."""
    d = lids(face, upper=-0.1, lower=0.45, sigma_low=0.6)
    _, _, w_lo = eye_fields(face, 0.45, 0.6)
    d[:, 2] += 0.05 * w_lo
    return d


def eye_wide(face: Face) -> np.ndarray:
    """Eyes wide: the upper lid and the whole skin fold up to the brow (Gaussian 0.7 cm)
    rise 0.4 x gap; the lower lid drops 0.1 x gap."""
    return lids(face, upper=0.4, lower=-0.1, sigma_up=0.7)


def jaw_forward(face: Face) -> np.ndarray:
    """Jaw thrust: every vertex moves 0.6 cm forward (+z) times the jaw weight (1 on chin,
    jaw and lower lip, 0.5 on the mouth line, 0 above it, fading out near the ears)."""
    d = np.zeros_like(face.v)
    d[:, 2] = 0.6 * face.jaw
    return d


def jaw_left(face: Face) -> np.ndarray:
    """Jaw to the subject's left: 0.6 cm in +x times the jaw weight."""
    d = np.zeros_like(face.v)
    d[:, 0] = 0.6 * face.jaw
    return d


def jaw_open(face: Face) -> np.ndarray:
    """Jaw hinge: rotation by JAW_OPEN_DEG about the x-parallel axis through JAW_PIVOT, the
    jaw joints (chin down and back), plus a forward glide of JAW_GLIDE, times the jaw
    weight. The chin drops ~1.35 cm, the lower lip ~1.6 cm; the upper lip stays."""
    th = np.radians(JAW_OPEN_DEG)
    c, s = np.cos(th), np.sin(th)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    q = face.v - np.asarray(JAW_PIVOT)
    d = q @ rx.T - q
    d[:, 2] += JAW_GLIDE
    return face.jaw[:, None] * d


def mouth_close(face: Face) -> np.ndarray:
    """Lips close over an open jaw (ARKit's corrective): the lower lip undoes 55% of the
    jawOpen motion, the upper lip moves down by 45% of the jawOpen lower-lip drop at its x
    and both lips push 0.1 cm forward; jawOpen + mouthClose = jaw open, lips together."""
    jaw = jaw_open(face)
    lower, upper = lip_part(face, upper=False), lip_part(face, upper=True)
    _, lo_lo = split_loop(load_topology().lips_inner, face.v, UPPER_LIP_INNER)
    drop = -np.interp(face.v[:, 0], face.v[lo_lo, 0], jaw[lo_lo, 1])
    d = -0.55 * lower[:, None] * jaw
    d[:, 1] -= 0.45 * drop * upper * face.corner_taper
    d[:, 2] += 0.1 * (lower + upper) * face.corner_taper
    return d


def mouth_funnel(face: Face) -> np.ndarray:
    """Funnel ("oh"): the lips flare open into a round opening: the upper lip rises and the
    lower lip drops by 0.15 cm at the outer contour to 0.45 cm at the inner one, the lips
    move 0.4 cm forward (more at the centre) and the corners 0.25 cm inwards."""
    v, w = face.v, face.lip
    r = np.clip(np.abs(v[:, 0]) / face.half_width, 0.0, 1.3)
    d = np.zeros_like(v)
    d[:, 0] = -0.25 * np.clip(v[:, 0] / face.half_width, -1.2, 1.2) * w
    d[:, 2] = 0.4 * w * (1.0 - 0.3 * r ** 2)
    sign = 2.0 * face.upper - 1.0
    d[:, 1] = sign * (0.15 + 0.3 * face.inner) * w * face.corner_taper
    return d


def mouth_pucker(face: Face) -> np.ndarray:
    """Pucker (kiss): the lips and the skin around them (Gaussian 0.45 cm) pout 0.6 cm
    forward and the corners move 0.8 cm inwards, lips pressed together (the inner
    contours move 0.12 cm towards the midline)."""
    v, w = face.v, face.lip
    r = np.clip(np.abs(v[:, 0]) / face.half_width, 0.0, 1.3)
    d = np.zeros_like(v)
    d[:, 0] = -0.8 * np.clip(v[:, 0] / face.half_width, -1.2, 1.2) * w
    d[:, 2] = 0.6 * w * (1.0 - 0.2 * r ** 2)
    d[:, 1] = -(2.0 * face.upper - 1.0) * 0.12 * face.inner * w * face.corner_taper
    return d


def mouth_left(face: Face) -> np.ndarray:
    """The whole mouth slides 0.5 cm to the subject's left (+x) along the skin: lips weight 1,
    Gaussian falloff (0.9 cm) with the distance to the outer lip contour."""
    w = np.maximum(face.lip, gauss(polyline_distance(face.v, face.v[load_topology().lips_outer], True), 0.9))
    d = np.zeros_like(face.v)
    d[:, 0] = 0.5 * w
    return to_tangent(face, d)


def mouth_smile(face: Face) -> np.ndarray:
    """Smile: the left corner is pulled up, out and back (0.35, 0.45, -0.15) cm with a
    Gaussian falloff of 1.1 cm, and the cheek above it bulges (0.05, 0.15, 0.15) cm,
    Gaussian 1.0 cm around (3.2, -2.6)."""
    d = corner_pull(face, (0.35, 0.45, -0.15), 1.1)
    cheek = gauss(np.linalg.norm(face.v[:, :2] - (3.2, -2.6), axis=1), 1.0)
    return d + cheek[:, None] * np.array([0.05, 0.15, 0.15])


def mouth_frown(face: Face) -> np.ndarray:
    """Frown: the left corner is pulled down (0.05, -0.45, -0.05) cm, Gaussian 1.0 cm, and the
    skin below it follows (Gaussian 1.3 cm around a point 1 cm below the corner, -0.15 cm y)."""
    d = corner_pull(face, (0.05, -0.45, -0.05), 1.0)
    below = gauss(np.linalg.norm(face.v - (face.corner - (0.0, 1.0, 0.3)), axis=1), 1.3)
    d[:, 1] -= 0.15 * below
    return d


def mouth_dimple(face: Face) -> np.ndarray:
    """Dimple: the left corner is pulled back and slightly out (0.2, 0.0, -0.4) cm, tight
    Gaussian falloff of 0.8 cm."""
    return corner_pull(face, (0.2, 0.0, -0.4), 0.8)


def mouth_stretch(face: Face) -> np.ndarray:
    """Stretch: the left corner is pulled out and down (0.45, -0.25, -0.1) cm, Gaussian 1.2
    cm, and the lower lip on that side widens downwards (-0.15 cm y on the left lower lip)."""
    d = corner_pull(face, (0.45, -0.25, -0.1), 1.2)
    d[:, 1] -= 0.15 * lip_part(face, upper=False) * side_left(face.v[:, 0] - 0.6)
    return d


def mouth_roll_lower(face: Face) -> np.ndarray:
    """Lower lip rolls in over the teeth: lower-lip vertices move up 0.2 cm and back by 0.2
    cm (outer contour) to 0.5 cm (inner contour), tapering to 0 at the corners."""
    w = lip_part(face, upper=False) * face.corner_taper
    d = np.zeros_like(face.v)
    d[:, 1] = 0.2 * w
    d[:, 2] = -(0.2 + 0.3 * face.inner) * w
    return d


def mouth_roll_upper(face: Face) -> np.ndarray:
    """Upper lip rolls in: upper-lip vertices move down 0.2 cm and back by 0.2 cm (outer
    contour) to 0.5 cm (inner contour), tapering to 0 at the corners."""
    w = lip_part(face, upper=True) * face.corner_taper
    d = np.zeros_like(face.v)
    d[:, 1] = -0.2 * w
    d[:, 2] = -(0.2 + 0.3 * face.inner) * w
    return d


def mouth_shrug_lower(face: Face) -> np.ndarray:
    """Lower lip shrug (chin raiser): the lower lip moves up 0.3 and out 0.2 cm and the chin
    skin below it bunches up (0.2 cm y, 0.1 cm z; Gaussian 1.6 cm around the chin boss)."""
    w = lip_part(face, upper=False) * face.corner_taper
    chin_boss = face.v[CHIN] + (0.0, 2.0, 0.5)
    chin = gauss(np.linalg.norm((face.v - chin_boss) / (1.0, 1.2, 1.0), axis=1), 1.6) * (1.0 - face.upper)
    d = np.zeros_like(face.v)
    d[:, 1] = 0.3 * w + 0.2 * chin
    d[:, 2] = 0.2 * w + 0.1 * chin
    return d


def mouth_shrug_upper(face: Face) -> np.ndarray:
    """Upper lip shrug: the upper lip and the skin above it rise 0.25 cm and move 0.15 cm
    forward, tapering to 0 at the corners."""
    w = lip_part(face, upper=True) * np.clip(1.0 - (face.v[:, 0] / (1.1 * face.half_width)) ** 2, 0.0, 1.0)
    d = np.zeros_like(face.v)
    d[:, 1] = 0.25 * w
    d[:, 2] = 0.15 * w
    return d


def mouth_press(face: Face) -> np.ndarray:
    """Lip press on the left half: the upper lip moves down 0.12 cm and the lower lip up
    0.12 cm (more on the inner contours), the lips thin (0.12 cm back); half weight at the
    midline, so Left + Right press the whole mouth."""
    w = face.lip * side_left(face.v[:, 0]) * np.clip(1.0 - (face.v[:, 0] / (1.15 * face.half_width)) ** 4, 0, 1)
    sign = 2.0 * face.upper - 1.0
    d = np.zeros_like(face.v)
    d[:, 1] = -sign * (0.06 + 0.12 * face.inner) * w
    d[:, 2] = -0.12 * w
    return d


def mouth_lower_down(face: Face) -> np.ndarray:
    """Lower lip down on the left (depressor labii): the lateral part of the left lower lip
    (centred 1.4 cm left of the midline, Gaussian 0.7 cm in x) drops 0.4 cm and everts 0.08
    cm, showing the lower teeth; the middle of the lip and the corner move much less."""
    w = lip_part(face, upper=False) * gauss(face.v[:, 0] - 1.4, 0.7)
    d = np.zeros_like(face.v)
    d[:, 1] = -0.4 * w
    d[:, 2] = 0.08 * w
    return d


def mouth_upper_up(face: Face) -> np.ndarray:
    """Upper lip up on the left (levator labii): the lateral part of the left upper lip and
    the skin above it (centred 1.4 cm left of the midline, Gaussian 0.7 cm in x) rise 0.4 cm
    and evert 0.08 cm, showing the canine."""
    w = lip_part(face, upper=True) * gauss(face.v[:, 0] - 1.4, 0.7)
    d = np.zeros_like(face.v)
    d[:, 1] = 0.4 * w
    d[:, 2] = 0.08 * w
    return d


def brow_down(face: Face) -> np.ndarray:
    """Brow lowerer: the left eyebrow and the skin around it (Gaussian 0.8 cm) move down 0.4
    cm; the inner end also moves 0.15 cm towards the midline (corrugator)."""
    w = brow_weight(face, 0.8)
    inner = smoothstep((3.0 - face.v[:, 0]) / 1.8)
    d = np.zeros_like(face.v)
    d[:, 1] = -0.4 * w
    d[:, 0] = -0.15 * w * inner
    return to_tangent(face, d) + np.array([0.0, -0.05, 0.0]) * w[:, None]


def _brow_lift(rel: np.ndarray, sx: float, rise: float, mask: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Lift by `rise` cm with a Gaussian of width sx around rel = 0, 2.0 cm upwards, 0.7 down."""
    sy = np.where(rel[:, 1] > 0, 2.0, 0.7)
    w = np.exp(-0.5 * ((rel[:, 0] / sx) ** 2 + (rel[:, 1] / sy) ** 2)) * mask
    d = np.zeros_like(like)
    d[:, 1] = rise * w
    return d


def brow_inner_up(face: Face) -> np.ndarray:
    """Inner brows up (both sides): the inner ends of the eyebrows and the forehead above them
    rise 0.5 cm (Gaussian 0.9 cm around each inner brow end, 2.0 cm upwards)."""
    v = face.v
    return _brow_lift(np.c_[np.abs(v[:, 0]), v[:, 1]] - (1.5, 4.6), 0.9, 0.5, v[:, 2] > 2.0, v)


def brow_outer_up(face: Face) -> np.ndarray:
    """Outer brow up: the outer two thirds of the left eyebrow and the forehead above it rise
    0.45 cm (Gaussian 1.1 cm around (4.6, 4.4), 2.0 cm upwards)."""
    v = face.v
    return _brow_lift(v[:, :2] - (4.6, 4.4), 1.1, 0.45, v[:, 2] > 0.0, v)


def cheek_puff(face: Face) -> np.ndarray:
    """Cheek puff (both sides): the cheeks move 0.6 cm out along their normals (Gaussian 1.6
    cm around (+-3.9, -3.6)), the lips 0.1 cm forward."""
    rel = np.c_[np.abs(face.v[:, 0]), face.v[:, 1]] - (3.9, -3.6)
    w = gauss(np.linalg.norm(rel / (1.0, 0.9), axis=1), 1.6) * (1.0 - 0.7 * face.lip)
    return 0.6 * w[:, None] * face.normals + 0.1 * face.lip[:, None] * np.array([0.0, 0.0, 1.0])


def cheek_squint(face: Face) -> np.ndarray:
    """Cheek raiser: the upper left cheek (Gaussian 1.1 cm around (3.4, 0.9)) rises 0.3 cm
    and bulges 0.12 cm forward, pushing the lower lid up."""
    w = gauss(np.linalg.norm(face.v[:, :2] - (3.4, 0.9), axis=1), 1.1) * (face.v[:, 2] > 1.0)
    d = np.zeros_like(face.v)
    d[:, 1] = 0.3 * w
    d[:, 2] = 0.12 * w
    return d


def nose_sneer(face: Face) -> np.ndarray:
    """Nose wrinkler: the left nose wing and the skin beside the nose (Gaussian 0.8 cm around
    (1.5, -1.1)) rise 0.3 cm; the side of the nose bridge (Gaussian 0.7 cm around (1.0, 1.0))
    rises 0.12 cm; the upper lip below follows by 0.1 cm."""
    v = face.v
    wing = gauss(np.linalg.norm(v[:, :2] - (1.5, -1.1), axis=1), 0.8)
    bridge = gauss(np.linalg.norm(v[:, :2] - (1.0, 1.0), axis=1), 0.7)
    lip = lip_part(face, upper=True) * gauss(v[:, 0] - 1.0, 0.8)
    d = np.zeros_like(v)
    d[:, 1] = (0.3 * wing + 0.12 * bridge + 0.1 * lip) * (v[:, 2] > 3.0)
    d[:, 2] = 0.05 * wing * (v[:, 2] > 3.0)
    return d


def tongue_out(face: Face) -> np.ndarray:
    """No geometry: the 468-vertex MediaPipe face has no tongue or mouth-interior vertices.
    Kept with zero deltas so that the rig has all 52 ARKit channels (fitting returns 0)."""
    return np.zeros_like(face.v)


# name -> (rule, how it is made: "left" = built for the left side, the Right twin mirrored;
# "sym" = symmetrized through the mirror; the Right names are filled in by build_basis)
RULES: dict[str, tuple[Callable[[Face], np.ndarray], str]] = {
    "eyeBlinkLeft": (eye_blink, "left"), "eyeLookDownLeft": (eye_look_down, "left"),
    "eyeLookInLeft": (eye_look_in, "left"), "eyeLookOutLeft": (eye_look_out, "left"),
    "eyeLookUpLeft": (eye_look_up, "left"), "eyeSquintLeft": (eye_squint, "left"),
    "eyeWideLeft": (eye_wide, "left"),
    "jawForward": (jaw_forward, "sym"), "jawLeft": (jaw_left, "left"), "jawOpen": (jaw_open, "sym"),
    "mouthClose": (mouth_close, "sym"), "mouthFunnel": (mouth_funnel, "sym"),
    "mouthPucker": (mouth_pucker, "sym"), "mouthLeft": (mouth_left, "left"),
    "mouthSmileLeft": (mouth_smile, "left"), "mouthFrownLeft": (mouth_frown, "left"),
    "mouthDimpleLeft": (mouth_dimple, "left"), "mouthStretchLeft": (mouth_stretch, "left"),
    "mouthRollLower": (mouth_roll_lower, "sym"), "mouthRollUpper": (mouth_roll_upper, "sym"),
    "mouthShrugLower": (mouth_shrug_lower, "sym"), "mouthShrugUpper": (mouth_shrug_upper, "sym"),
    "mouthPressLeft": (mouth_press, "left"), "mouthLowerDownLeft": (mouth_lower_down, "left"),
    "mouthUpperUpLeft": (mouth_upper_up, "left"),
    "browDownLeft": (brow_down, "left"), "browInnerUp": (brow_inner_up, "sym"),
    "browOuterUpLeft": (brow_outer_up, "left"),
    "cheekPuff": (cheek_puff, "sym"), "cheekSquintLeft": (cheek_squint, "left"),
    "noseSneerLeft": (nose_sneer, "left"), "tongueOut": (tongue_out, "sym"),
}


def right_name(left: str) -> str:
    return left[:-4] + "Right" if left.endswith("Left") else left


def build_basis(face: Face) -> np.ndarray:
    """(52, 468, 3) float64 deltas in ARKIT_NAMES order."""
    shapes: dict[str, np.ndarray] = {}
    for name, (rule, kind) in RULES.items():
        d = rule(face)
        if kind == "sym":
            shapes[name] = symmetrize(face, d)
        else:
            shapes[name] = d
            shapes[right_name(name)] = mirror_delta(face, d)
    missing = set(ARKIT_NAMES) ^ set(shapes)
    if missing:
        raise RuntimeError(f"rules and ARKit names disagree: {sorted(missing)}")
    return np.stack([shapes[n] for n in ARKIT_NAMES])


# ---------------------------------------------------------------------------------------------
# Outputs: sheet.png, README.md, basis.npz
# ---------------------------------------------------------------------------------------------

SHEET_COLS = 8                 # shapes per row of the sheet
SHEET_CMAP_MAX = 0.6           # displacement (cm) at the top of the colour scale


def _contours():
    """Closed lip and eye loops (drawn as lines) and the eyebrow vertices (drawn as dots)."""
    t = load_topology()
    loops = [np.r_[c, c[:1]] for c in (t.lips_outer, t.lips_inner, t.right_eye, t.left_eye)]
    return loops, np.asarray(t.eyebrows)


def _draw_view(ax, neutral2d, points2d, tris, colour, depth, cmap, norm) -> None:
    from matplotlib.collections import PolyCollection

    order = np.argsort(depth)
    pc = PolyCollection(points2d[tris[order]], array=colour[order], cmap=cmap, norm=norm,
                        edgecolors=(1, 1, 1, 0.12), linewidths=0.2)
    ax.add_collection(pc)
    loops, brows = _contours()
    for c in loops:
        ax.plot(neutral2d[c, 0], neutral2d[c, 1], color="white", lw=0.6, alpha=0.8)
        ax.plot(points2d[c, 0], points2d[c, 1], color="red", lw=0.7)
    ax.plot(neutral2d[brows, 0], neutral2d[brows, 1], ".", color="white", ms=1.5, alpha=0.8)
    ax.plot(points2d[brows, 0], points2d[brows, 1], ".", color="red", ms=1.8)
    ax.set_xlim(points2d[:, 0].min() - 0.3, points2d[:, 0].max() + 0.3)
    ax.set_ylim(points2d[:, 1].min() - 0.3, points2d[:, 1].max() + 0.3)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_sheet(path: Path, face: Face, deltas: np.ndarray, names, dpi: int = 72) -> None:
    """All shapes at weight 1: a front view (viewer's x, y) and a side view from the subject's
    left (z, y) of the deformed face per cell, triangles coloured by displacement (cm), the
    neutral lip, eye and brow contours in white and the deformed ones in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    tris = load_topology().triangles
    rows = -(-len(names) // SHEET_COLS)
    fig = plt.figure(figsize=(SHEET_COLS * 3.3, rows * 2.9 + 0.8))
    fig.subplots_adjust(left=0.005, right=0.955, top=1 - 0.6 / (rows * 2.9 + 0.8), bottom=0.005)
    grid = fig.add_gridspec(rows, SHEET_COLS * 2, width_ratios=[1.0, 0.62] * SHEET_COLS, wspace=0.03, hspace=0.15)
    cmap, norm = plt.get_cmap("magma"), Normalize(0.0, SHEET_CMAP_MAX)
    for k, name in enumerate(names):
        r, c = divmod(k, SHEET_COLS)
        p = face.v + deltas[k]
        colour = np.linalg.norm(deltas[k], axis=1)[tris].mean(axis=1)
        front, side = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        _draw_view(front, face.v[:, :2], p[:, :2], tris, colour, p[tris, 2].mean(axis=1), cmap, norm)
        _draw_view(side, face.v[:, [2, 1]], p[:, [2, 1]], tris, colour, p[tris, 0].mean(axis=1), cmap, norm)
        front.set_title(f"{name}  max {np.linalg.norm(deltas[k], axis=1).max():.2f} cm", fontsize=9, loc="left")
    fig.suptitle("ARKit-52 blendshapes on the MediaPipe canonical face at weight 1 (front; side from the subject's "
                 "left). White: neutral contours, red: deformed; colour: displacement in cm", fontsize=13)
    cax = fig.add_axes([0.965, 0.3, 0.008, 0.4])
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="displacement (cm)")
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi)
    plt.close(fig)
    from PIL import Image      # matplotlib's own dependency; a 256-colour palette keeps the file small

    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)


README_HEAD = """# ARKit-52 blendshapes on the MediaPipe canonical face

Generated by `tools/make_arkit_rig.py` (rig version {version}); do not edit by hand: change
the rules there and run `.venv/bin/python tools/make_arkit_rig.py`.

## Files

- `basis.npz`: `names` (52,) in Apple's grouped order (ARFaceAnchor.BlendShapeLocation: left
  eye, right eye, mouth and jaw, eyebrows, cheeks, nose, tongue), `deltas` (52, 468, 3)
  float32 vertex offsets at weight 1, `neutral` (468, 3) float32 (the canonical face), `version`.
  A face with weights w is `neutral + tensordot(w, deltas, 1)`.
- `sheet.png`: every shape at weight 1, front and side view.

## Coordinate frame

The canonical MediaPipe face (`lipsync_engine/data/mediapipe_face_mesh.json`, 468 vertices),
which is also the normalized space `lipsync prepare` produces: x to the viewer's right,
y up, z towards the viewer, units of about a centimetre. The subject's **left** is **+x**:
ARKit's `...Left` shapes act on the +x half. Each Right shape is the exact mirror of its
Left twin through the topology's left/right vertex pairs (`delta_R[i] = flip_x(delta_L[mirror[i]])`),
and every unpaired shape is symmetrized the same way.

## How the shapes are built

Per-vertex weights come from regions of the canonical face: the lip loops (a lip field of
1 inside the outer lip contour with a 0.45 cm Gaussian falloff outside, an inner-ness from
0 on the outer to 1 on the inner contour, upper/lower of the lip midline, a taper to the
corners), the distance to the mouth corner (landmark 291), the left eye loop (the lid gap at
each x, Gaussian falloffs above the upper and below the lower lid), the eyebrow chain, and
a jaw weight (1 on chin, jaw and lower lip, 0.5 on the lip midline, 0 above it, with a
smoothstep ramp of 0.25 cm at the mouth widening to 1.0 cm above / 2.5 cm below on the
cheeks, fading out towards the ears). Sliding motions (mouthLeft, eyeLookIn/Out, browDown)
are projected onto the tangent plane of the surface. Magnitudes are realistic centimetres.

jawOpen is a rotation of {jaw_deg} degrees about an x-parallel axis through {pivot} (the
temporomandibular joints) plus a {glide} cm forward glide, times the jaw weight: the
rotation phase of jaw opening, which is the range speech uses. At weight 1 the chin
(landmark 152) drops {chin_drop:.2f} cm and moves {chin_back:.2f} cm back; the lower lip
(landmark 14) drops {lip_drop:.2f} cm.

**tongueOut** has no geometry: the 468-vertex MediaPipe mesh has no tongue or mouth-interior
vertices. It is kept with zero deltas so the rig has all 52 ARKit channels; fitting always
returns 0 for it, and an exported tongueOut is 0.

**Eye gaze** (eyeLook*): the topology has no iris vertices (the 478-landmark model's iris
points are not part of the mesh), so these shapes move only what follows the eye: the lids.

## The shapes

| # | name | rule | max (cm) | vertices > 0.05 cm |
|---|---|---|---|---|
"""


def _rule_text(name: str) -> str:
    if name in RULES:
        rule, _ = RULES[name]
        return " ".join(rule.__doc__.split())
    left = name[:-5] + "Left"
    return f"Exact mirror of {left}."


def write_readme(path: Path, deltas: np.ndarray) -> None:
    size = np.linalg.norm(deltas, axis=2)
    jaw = deltas[ARKIT_NAMES.index("jawOpen")]
    lines = [README_HEAD.format(version=RIG_VERSION, jaw_deg=JAW_OPEN_DEG, pivot=JAW_PIVOT, glide=JAW_GLIDE,
                                chin_drop=-jaw[CHIN, 1], chin_back=-jaw[CHIN, 2], lip_drop=-jaw[LOWER_LIP_INNER, 1])]
    for k, name in enumerate(ARKIT_NAMES):
        lines.append(f"| {k} | `{name}` | {_rule_text(name)} | {size[k].max():.2f} | {(size[k] > 0.05).sum()} |\n")
    path.write_text("".join(lines), encoding="utf-8")


def check_mirrors(face: Face, deltas: np.ndarray) -> None:
    """Every Left/Right pair is an exact mirror and every other shape is symmetric."""
    for k, name in enumerate(ARKIT_NAMES):
        twin = right_name(name) if name.endswith("Left") else name[:-5] + "Left" if name.endswith("Right") else name
        if not np.array_equal(deltas[ARKIT_NAMES.index(twin)], mirror_delta(face, deltas[k]).astype(deltas.dtype)):
            raise RuntimeError(f"{name} is not the mirror of {twin}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = ap.parse_args(argv)
    face = build_face()
    deltas = build_basis(face).astype(np.float32)
    check_mirrors(face, deltas)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "basis.npz", names=np.array(ARKIT_NAMES), deltas=deltas,
             neutral=face.v.astype(np.float32), version=np.int64(RIG_VERSION))
    write_readme(args.out / "README.md", deltas)
    draw_sheet(args.out / "sheet.png", face, deltas, ARKIT_NAMES)
    print(f"wrote {args.out}/basis.npz, README.md, sheet.png ({len(ARKIT_NAMES)} shapes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
