"""The built-in demo input: a synthetic talking-face video with real pixels and known ground truth.

Owns: turning scikit-image's astronaut photo (NASA, public domain, shipped inside the
scikit-image wheel, so nothing is downloaded) into an MP4 of a talking, moving, relit face,
and the `<stem>.truth.json` that records what was done to every frame: mouth openness
(from `demo/speech.py`), head pose, lighting gain field and colour cast.

How a frame is made (all geometry in the *y-up* pixel frame of `geometry`, R = Rz Ry Rx):
1. The photo is cropped around the face and tracked once with MediaPipe: base landmarks P0.
2. The mesh is deformed by a jaw hinge (rotation about a horizontal axis behind/below the
   ears, angle JAW_MAX_DEG * openness) with a smooth per-vertex weight, plus a slight upper
   lip rise and mouth-corner pull (`deform_mouth`).
3. A known head pose moves it: P_t = s_t G_t (P_def - c) + c + [tx_t, ty_t, 0].
4. Rendering is one backward cv2.remap of the photo: a piecewise-affine mesh warp inside
   the face, the 2D affine part of the pose plus a smooth residual field outside, feathered
   into each other so that the face outline has no seam; the open mouth is painted.
5. A gain field g = 1 + a_t (x - W/2)/W + b_t (y - H/2)/H and an RGB cast multiply the frame.

Must not: track or analyse videos (tests do that), read any file but its own truth JSON,
or import bpy/torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable

import av
import cv2
import numpy as np

from ..core.errors import InputError, NoFaceError
from ..face.geometry import euler_to_rotation, image_to_yup, umeyama
from ..face.topology import UPPER_LIP_INNER, load_topology
from ..face.tracking import track_image
from ..face.warp import Raster
from . import speech

TRUTH_FORMAT_VERSION = 1
REFERENCE_SIZE = 512           # pixels; the sizes below in "px" are for this frame side and scale with it

# --- the source photo (skimage.data.astronaut(), 512 x 512) ---------------------------------
FACE_CENTRE_PX = (225.0, 124.0)  # face centre in the astronaut photo (x, y pixels)
FACE_WIDTH_PX = 94.0             # face width in the astronaut photo (pixels)
CROP_FACE_WIDTHS = 2.2           # crop side / face width (the face ends up ~230 px wide at 512)
CROP_CENTRE_DROP = 0.17          # crop centre below the face centre, as a fraction of the crop side

# --- mouth deformation, in canonical model units (~cm, y up, z towards the viewer) -----------
JAW_MAX_DEG = 14.0                        # jaw hinge angle at openness 1 (degrees)
JAW_PIVOT = (0.0, -1.5, -3.5)             # hinge axis point, behind and below the ears (canonical units)
HEAD_CENTRE = (0.0, -1.0, -3.0)           # centre c of the head rotations (canonical units)
JAW_BAND_MOUTH = 0.25                     # weight ramp below the lip midline, between the corners (canonical units)
JAW_BAND_SIDE = 2.0                       # weight ramp below the mouth line on the cheeks (canonical units)
EAR_RELEASE_X = (5.0, 7.5)                # |x| over which the jaw weight fades out near the ears (canonical units)
EAR_RELEASE_Y = (-6.0, -3.5)              # ... for vertices higher than this ramp (canonical units)
UPPER_LIP_RISE = 0.15                     # upper lip lift at openness 1 (canonical units)
CORNER_PULL = 0.25                        # inward pull of each mouth corner at openness 1 (canonical units)

# --- head pose and lighting curves -------------------------------------------------------------
POSE_AMPLITUDE_DEG = (5.0, 8.0, 6.0)      # pitch, yaw, roll peak (degrees)
TRANSLATION_AMPLITUDE_PX = 15.0           # peak tx, ty (px)
SCALE_AMPLITUDE = 0.03                    # peak |s - 1|
POSE_PERIOD_S = (2.5, 6.0)                # range of the sinusoid periods (seconds)
GAIN_AMPLITUDE = (0.30, 0.20)             # peak a_t, b_t of the gain field (|g - 1| <= ~0.13 on the face)
GAIN_PERIOD_S = (5.0, 9.0)                # range of the gain periods (seconds)
CAST_AMPLITUDE = 0.06                     # peak red/blue cast (fraction)
CAST_PERIOD_S = 4.0                       # colour cast period (seconds)

# --- rendering -----------------------------------------------------------------------------
FIELD_STEP_PX = 16             # cell side of the coarse outside-map grid (px, any frame size)
FIELD_SIGMA_PX = 40.0          # Gaussian radius of the residual interpolation (px)
FIELD_REACH_SIGMAS = 2.5       # the residual fades to 0 this many sigmas away from the face outline
FEATHER_PX = 10.0              # mesh warp -> outside field blend, inwards from the face outline (px)
MOUTH_COLOUR = (105.0, 38.0, 36.0)    # RGB of the mouth interior just inside the lips
MOUTH_BACK_DARKEN = 0.65               # fraction darker at the back (centre) of the mouth
TEETH_COLOUR = (238.0, 230.0, 214.0)   # RGB of the upper teeth
TEETH_PITCH = 0.16                     # incisor width / mouth width (faint gaps between teeth)
TEETH_GAP_DARKEN = 0.12                # how much darker the gaps between teeth are (fraction)
TEETH_HEIGHT = 0.085                   # upper teeth height / mouth width
TEETH_ALPHA = 0.85                     # teeth opacity (a hint, not a model)

# --- encoding ------------------------------------------------------------------------------
AUDIO_SAMPLE_RATE = 16000      # Hz, mono AAC
VIDEO_CRF = "16"               # libx264 constant rate factor
VIDEO_PRESET = "superfast"     # libx264 preset: ~4 ms a 512x512 frame on 2 cores; crf keeps the quality
AUDIO_BITRATE = 64000          # bits per second

MAPPING_TEXT = (
    "Frames: image pixels x right, y down; the geometry is done in the y-up frame (x, -y, -z) "
    "of lipsync_engine.geometry (z towards the viewer), in pixels. Openness o_t in [0, 1] is "
    "demo/speech.py's per-sample articulation truth, sampled (linear interpolation) at the "
    "frame times k/fps: openness = smooth(a(t) * clip((F1(t) - {f1c:g}) / ({f1o:g} - {f1c:g}), "
    "{floor:g}, 1)) in voiced parts, smooth({burst:g}) in consonant bursts and smooth(0) in "
    "pauses, with a(t) the voicing amplitude envelope, F1(t) the first formant (Hz) and smooth() "
    "a zero-phase Hann low-pass of {fwhm:g} ms full width at half maximum. It drives the mouth of the base mesh P0 (MediaPipe "
    "landmarks of the cropped astronaut photo): a jaw hinge rotation of {jaw} * o_t degrees "
    "about the model's horizontal axis through {pivot} (canonical MediaPipe model units, "
    "~cm, behind/below the ears), applied with a smooth weight (1 on chin, jaw and lower "
    "lip, 0 above the mouth line and near the ears); the upper lip rises {rise} units * o_t "
    "and each mouth corner moves {pull} units * o_t towards the mouth centre. Head pose: "
    "P_t = scale_t * G_t @ (P_def - c) + c + [tx_t, ty_t, 0] with G_t = "
    "euler_to_rotation(pitch, yaw, roll) = Rz(roll) Ry(yaw) Rx(pitch) (degrees, y-up frame), "
    "c = the head centre {centre} of the canonical model placed on P0, and translation_px = "
    "(tx, ty) in y-up pixels (ty > 0 moves the face up in the image). Lighting: the rendered "
    "frame is multiplied by g(x, y) = 1 + a_t (x - W/2)/W + b_t (y - H/2)/H (x, y image "
    "pixels, gain_coeffs = (a_t, b_t)) and per RGB channel by colour_cast, then clipped and "
    "rounded to uint8."
).format(jaw=JAW_MAX_DEG, pivot=list(JAW_PIVOT), rise=UPPER_LIP_RISE, pull=CORNER_PULL,
         centre=list(HEAD_CENTRE), f1c=speech.F1_CLOSED_HZ, f1o=speech.F1_OPEN_HZ,
         floor=speech.OPENNESS_FLOOR, burst=speech.BURST_OPENNESS, fwhm=1000 * speech.SMOOTH_FWHM_S)


@dataclass(frozen=True, eq=False)
class DemoTruth:
    """Ground truth of a demo video, one row per frame (frame k is at time k / fps).

    openness : (F,) float64 in [0, 1]. rotation : (F, 3, 3) G_t (y-up frame).
    euler_deg : (F, 3) (pitch, yaw, roll) degrees, G_t = Rz(roll) Ry(yaw) Rx(pitch).
    translation_px : (F, 2) (tx, ty) y-up pixels. scale : (F,).
    gain_coeffs : (F, 2) (a_t, b_t) of the gain field. colour_cast : (F, 3) RGB multipliers.
    fps : frames per second; size : frame side (pixels, square frames).
    audio_sample_rate : Hz of the AAC track.
    """

    openness: np.ndarray
    rotation: np.ndarray
    euler_deg: np.ndarray
    translation_px: np.ndarray
    scale: np.ndarray
    gain_coeffs: np.ndarray
    colour_cast: np.ndarray
    fps: float
    size: int
    audio_sample_rate: int = AUDIO_SAMPLE_RATE

    @property
    def n_frames(self) -> int:
        return len(self.openness)

    @property
    def times_s(self) -> np.ndarray:
        """(F,) frame times k / fps (seconds)."""
        return np.arange(self.n_frames) / self.fps


@dataclass(frozen=True)
class _BaseFace:
    """The cropped photo and its mesh, prepared once per frame size (arrays read-only)."""

    image: np.ndarray        # (S, S, 3) uint8 RGB
    points: np.ndarray       # (468, 3) P0, image-frame pixels
    yup: np.ndarray          # (468, 3) P0 in the y-up frame
    local: np.ndarray        # (468, 3) P0 in canonical model units (the model's own axes)
    to_yup: tuple            # (scale, rotation (3, 3)) canonical units -> y-up pixels
    centre: np.ndarray       # (3,) head centre c, y-up pixels
    jaw_weight: np.ndarray   # (468,) hinge weight
    rise_weight: np.ndarray  # (468,) upper-lip lift weight
    pull: np.ndarray         # (468,) signed corner-pull weight (x direction)
    boundary: np.ndarray     # (B,) vertex ids of the mesh outline
    upper_chain: np.ndarray  # inner-lip vertex ids, corner to corner over the upper lip
    lower_chain: np.ndarray  # inner-lip vertex ids, corner to corner over the lower lip


# ---------------------------------------------------------------------------------------------
# Base face
# ---------------------------------------------------------------------------------------------

def base_image(size: int = REFERENCE_SIZE) -> np.ndarray:
    """The astronaut photo cropped around the face and resized: (size, size, 3) uint8 RGB."""
    import skimage.data

    photo = skimage.data.astronaut()
    side = CROP_FACE_WIDTHS * FACE_WIDTH_PX
    x0 = FACE_CENTRE_PX[0] - side / 2
    y0 = FACE_CENTRE_PX[1] + CROP_CENTRE_DROP * side - side / 2
    k = size / side
    m = np.array([[k, 0.0, -k * x0], [0.0, k, -k * y0]])
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lip_chains(loop: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the inner-lip loop at its corners: (upper, lower) id arrays, each left to right."""
    loop = np.asarray(loop)
    i, j = sorted((int(np.argmin(v[loop, 0])), int(np.argmax(v[loop, 0]))))
    arc1, arc2 = loop[i:j + 1], np.r_[loop[j:], loop[:i + 1]]
    upper, lower = (arc1, arc2) if UPPER_LIP_INNER in arc1 else (arc2, arc1)
    return tuple(c[np.argsort(v[c, 0], kind="stable")] for c in (upper, lower))


def mouth_weights(vertices: np.ndarray, upper: np.ndarray, lower: np.ndarray):
    """Per-vertex weights of the mouth deformation from canonical model vertices (468, 3).

    Returns (jaw (468,), rise (468,), pull (468,)): the hinge weight (1 on chin, jaw and lower
    lip, 0 above the lip midline and near the ears), the upper-lip lift weight, and the signed
    x weight of the corner pull (+1 at the subject's right corner, -1 at the left).
    """
    x, y = vertices[:, 0], vertices[:, 1]
    mid_y = (np.interp(x, vertices[upper, 0], vertices[upper, 1])
             + np.interp(x, vertices[lower, 0], vertices[lower, 1])) / 2  # flat beyond the corners
    xc = vertices[upper[-1], 0]          # corner half-width
    yc = vertices[upper[[0, -1]], 1].mean()
    band = JAW_BAND_MOUTH + (JAW_BAND_SIDE - JAW_BAND_MOUTH) * _smoothstep((np.abs(x) - 0.6 * xc) / (1.6 * xc))
    jaw = _smoothstep((mid_y - y) / band)
    ear = (_smoothstep((np.abs(x) - EAR_RELEASE_X[0]) / (EAR_RELEASE_X[1] - EAR_RELEASE_X[0]))
           * _smoothstep((y - EAR_RELEASE_Y[0]) / (EAR_RELEASE_Y[1] - EAR_RELEASE_Y[0])))
    jaw = jaw * (1.0 - ear)
    above = _smoothstep((y - mid_y) / 0.1)
    rise = above * np.exp(-0.5 * (x / (0.8 * xc)) ** 2) * np.exp(-0.5 * ((y - mid_y) / 0.8) ** 2)
    outside = np.maximum(np.abs(x) - xc, 0.0)
    pull = -np.clip(x / xc, -1.0, 1.0) * np.exp(-0.5 * (outside / 1.5) ** 2) * np.exp(-0.5 * ((y - yc) / 0.9) ** 2)
    return jaw, rise, pull


def _outline(triangles: np.ndarray) -> np.ndarray:
    """Vertex ids on the mesh boundary (edges used by one triangle only)."""
    e = np.sort(np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]), axis=1)
    edges, counts = np.unique(e, axis=0, return_counts=True)
    return np.unique(edges[counts == 1])


@lru_cache(maxsize=2)
def prepare_base_face(size: int = REFERENCE_SIZE) -> _BaseFace:
    """Crop the photo, track it once and derive every per-vertex quantity (cached per size)."""
    topo = load_topology()
    image = base_image(size)
    points = track_image(image)
    if points is None:
        raise NoFaceError(f"MediaPipe found no single face in the {size}x{size} astronaut crop")
    points = points.astype(np.float64)
    yup = image_to_yup(points)
    sim = umeyama(topo.vertices, yup)  # canonical units -> y-up pixels
    local = (yup - sim.translation) @ sim.rotation / sim.scale
    upper, lower = _lip_chains(topo.lips_inner, topo.vertices)
    jaw, rise, pull = mouth_weights(topo.vertices, upper, lower)
    arrays = dict(image=image, points=points, yup=yup, local=local, centre=sim.apply(np.asarray(HEAD_CENTRE)),
                  jaw_weight=jaw, rise_weight=rise, pull=pull, boundary=_outline(topo.triangles),
                  upper_chain=upper, lower_chain=lower)
    for a in arrays.values():
        a.setflags(write=False)
    return _BaseFace(to_yup=(sim.scale, sim.rotation), **arrays)


# ---------------------------------------------------------------------------------------------
# Geometry per frame
# ---------------------------------------------------------------------------------------------

def deform_mouth(face: _BaseFace, openness: float) -> np.ndarray:
    """Base mesh with the mouth opened by `openness` in [0, 1]: (468, 3) y-up pixels."""
    theta = np.radians(JAW_MAX_DEG * float(openness))
    c, s = np.cos(theta), np.sin(theta)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # positive: chin down and back
    q = face.local - np.asarray(JAW_PIVOT)
    delta = face.jaw_weight[:, None] * (q @ rx.T - q)
    delta[:, 1] += UPPER_LIP_RISE * openness * face.rise_weight
    delta[:, 0] += CORNER_PULL * openness * face.pull
    scale, rotation = face.to_yup
    return face.yup + scale * delta @ rotation.T


def pose_points(points_yup: np.ndarray, rotation: np.ndarray, scale: float, translation: np.ndarray,
                centre: np.ndarray) -> np.ndarray:
    """P_t = scale * G @ (P - c) + c + [tx, ty, 0] for (N, 3) y-up points."""
    t3 = np.array([translation[0], translation[1], 0.0])
    return scale * (points_yup - centre) @ np.asarray(rotation).T + centre + t3


def _sinusoids(times: np.ndarray, rng: np.random.Generator, period_range, n: int) -> np.ndarray:
    """(n, F) smooth curves in [-1, 1]: 0.75 sin + 0.25 sin with random periods and phases."""
    periods = rng.uniform(*period_range, size=(n, 2))
    phases = rng.uniform(0.0, 2 * np.pi, size=(n, 2))
    w = 2 * np.pi * times[None, :, None] / periods[:, None, :] + phases[:, None, :]
    return (np.sin(w) * np.array([0.75, 0.25])).sum(-1)


def motion_curves(times: np.ndarray, seed: int, size: int) -> dict:
    """Pose and lighting per frame time (seconds): euler_deg (F, 3), translation_px (F, 2),
    scale (F,), rotation (F, 3, 3), gain_coeffs (F, 2), colour_cast (F, 3)."""
    rng = np.random.default_rng([seed, 0x5EED])
    pose = _sinusoids(times, rng, POSE_PERIOD_S, 6)
    euler = pose[:3].T * np.asarray(POSE_AMPLITUDE_DEG)
    translation = pose[3:5].T * TRANSLATION_AMPLITUDE_PX * size / REFERENCE_SIZE
    scale = 1.0 + SCALE_AMPLITUDE * pose[5]
    gain = _sinusoids(times, rng, GAIN_PERIOD_S, 2).T * np.asarray(GAIN_AMPLITUDE)
    cast_wave = CAST_AMPLITUDE * np.sin(2 * np.pi * times / CAST_PERIOD_S + rng.uniform(0, 2 * np.pi))
    cast = np.stack([1.0 + cast_wave, np.ones_like(times), 1.0 - cast_wave], axis=1)
    rotation = euler_to_rotation(euler[:, 0], euler[:, 1], euler[:, 2])
    return dict(euler_deg=euler, translation_px=translation, scale=scale, rotation=rotation,
                gain_coeffs=gain, colour_cast=cast)


def _affine_inverse_image(face: _BaseFace, rotation, scale, translation) -> np.ndarray:
    """(2, 3) image-frame map from a rendered pixel back to the photo for the non-face part:
    the inverse of the pose's 2D affine part (at the mean depth of the face outline)."""
    c = face.centre
    z_b = face.yup[face.boundary, 2].mean()
    a = scale * np.asarray(rotation)[:2, :2]
    b = c[:2] + np.asarray(translation) - a @ c[:2] + scale * np.asarray(rotation)[:2, 2] * (z_b - c[2])
    flip = np.diag([1.0, -1.0])
    a_img, b_img = flip @ a @ flip, flip @ b
    # closed-form 2x2 inverse: np.linalg.inv wakes OpenBLAS threads that then spin for ms
    det = a_img[0, 0] * a_img[1, 1] - a_img[0, 1] * a_img[1, 0]
    a_inv = np.array([[a_img[1, 1], -a_img[0, 1]], [-a_img[1, 0], a_img[0, 0]]]) / det
    return np.c_[a_inv, -a_inv @ b_img]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def _coarse_nodes(size: int) -> np.ndarray:
    """Node positions (pixels) of the coarse grid: ceil(size / FIELD_STEP_PX) cells plus one beyond each side.

    Node k sits at (k + 0.5) * step - 0.5 for k = -1 .. n, so after a bilinear cv2.resize by
    `step` and a crop of `step` pixels every frame pixel lies between nodes (no clamping at
    the borders: an affine map is reproduced exactly).
    """
    n = -(-size // FIELD_STEP_PX)
    return (np.arange(-1, n + 1) + 0.5) * FIELD_STEP_PX - 0.5


def _upsample_coarse(coarse: np.ndarray, size: int) -> np.ndarray:
    """(n + 2, n + 2, C) node values -> (size, size, C) float32 (see _coarse_nodes)."""
    step = FIELD_STEP_PX
    big = cv2.resize(coarse.astype(np.float32), (len(coarse) * step,) * 2, interpolation=cv2.INTER_LINEAR)
    return big[step:step + size, step:step + size]


def outside_maps(dst: np.ndarray, src: np.ndarray, inv_affine: np.ndarray, size: int) -> np.ndarray:
    """Backward map (size, size, 2) float32 for the non-face part of a frame.

    The inverse 2D affine part of the pose (inv_affine (2, 3), image pixels) plus a smooth
    residual interpolated from samples: at dst (B, 2) (face-outline vertices in the frame)
    the residual is src (B, 2) (where they come from in the photo) minus the affine map.
    Normalized Gaussian weights on a coarse grid, with a zero prior that takes over
    FIELD_REACH_SIGMAS away from the samples, upsampled bilinearly.
    """
    g = _coarse_nodes(size)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    affine = lambda q: np.einsum("ij,nj->ni", inv_affine[:, :2], q) + inv_affine[:, 2]  # noqa: E731
    residual = src - affine(dst)
    sigma = FIELD_SIGMA_PX * size / REFERENCE_SIZE
    d2 = np.square(grid[:, :1] - dst[:, 0]) + np.square(grid[:, 1:] - dst[:, 1])  # (G, B)
    w = np.exp(-0.5 * d2 / sigma ** 2)
    # einsum, not @: a threaded BLAS call here doubles the CPU time of a frame on 2 cores
    field = np.einsum("gb,bk->gk", w, residual) / (w.sum(1, keepdims=True) + np.exp(-0.5 * FIELD_REACH_SIGMAS ** 2))
    return _upsample_coarse((affine(grid) + field).reshape(len(g), len(g), 2), size)


def mesh_maps(dst_img: np.ndarray, src: np.ndarray, size: int):
    """Piecewise-affine backward map of the face mesh and its feather weight, on the mesh's box.

    dst_img : (468, 3) posed mesh, image frame (z away from the camera: the nearest triangle
    wins). src : (468, 2) photo pixels. The mesh is rasterized at half resolution (the map is
    piecewise linear, so bilinear upsampling only rounds it within a pixel of triangle edges).
    Returns ((y0, y1, x0, x1) box, (h, w, 3) float32 [map_x, map_y, alpha]); alpha rises
    from 0 at the face outline to 1 FEATHER_PX inside.
    """
    lo = np.maximum((np.floor(dst_img[:, :2].min(0)).astype(int) - 4) // 2 * 2, 0)
    hi = np.minimum((np.ceil(dst_img[:, :2].max(0)).astype(int) + 6) // 2 * 2, size)
    (x0, y0), (x1, y1) = lo, hi
    half = (y1 - y0) // 2, (x1 - x0) // 2
    pts = (dst_img[:, :2] - [x0, y0] + 0.5) / 2 - 0.5   # half-res pixel centres
    raster = Raster(pts, load_topology().triangles, half, depth=-dst_img[:, 2])
    mesh_x, mesh_y = raster.maps(src)
    dist = cv2.distanceTransform(raster.mask.astype(np.uint8), cv2.DIST_L2, 3)
    alpha = _smoothstep((dist - 1.0) / (0.5 * FEATHER_PX * size / REFERENCE_SIZE)).astype(np.float32)
    half_maps = cv2.merge([mesh_x, mesh_y, alpha])
    return (y0, y1, x0, x1), cv2.resize(half_maps, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)


def _backward_maps(face: _BaseFace, posed_img: np.ndarray, inv_affine: np.ndarray, size: int):
    """(size, size, 2) float32 cv2.remap map from rendered pixels to photo pixels (whole frame)."""
    b = face.boundary
    maps = outside_maps(posed_img[b, :2], face.points[b, :2], inv_affine, size)
    (y0, y1, x0, x1), mesh = mesh_maps(posed_img, face.points[:, :2], size)
    roi = maps[y0:y1, x0:x1]
    roi += mesh[..., 2:] * (mesh[..., :2] - roi)
    return maps


def mouth_colour(u: np.ndarray, below: np.ndarray, gap: np.ndarray, width: float) -> np.ndarray:
    """(..., 3) float32 RGB of the mouth interior.

    u : 0..1 from corner to corner; below : pixels below the upper inner lip; gap : pixels
    from the upper to the lower inner lip at u; width : corner-to-corner pixels.
    Dark red-brown, darker at the back (the middle of the opening), with a hint of upper
    teeth (shaded towards the corners, in the lip's shadow at the top, faint incisor gaps).
    """
    across = 1.0 - np.clip(2.0 * u - 1.0, -1.0, 1.0) ** 2   # 1 in the middle, 0 at the corners
    depth = across * np.sin(np.pi * np.clip(below / gap, 0.0, 1.0))
    colour = np.asarray(MOUTH_COLOUR, np.float32) * (1.0 - MOUTH_BACK_DARKEN * depth)[..., None]
    teeth_h = TEETH_HEIGHT * width * np.sqrt(across)
    teeth = TEETH_ALPHA * np.clip(teeth_h - below + 0.5, 0.0, 1.0)
    gaps = 1.0 - TEETH_GAP_DARKEN * np.maximum(np.cos(2 * np.pi * (u - 0.5) / TEETH_PITCH), 0.0) ** 12
    shade = (0.6 + 0.4 * np.sqrt(across)) * (1.0 - 0.3 * np.exp(-np.maximum(below, 0.0) / 1.5)) * gaps
    teeth_rgb = np.asarray(TEETH_COLOUR, np.float32) * shade[..., None]
    return (colour + teeth[..., None] * (teeth_rgb - colour)).astype(np.float32)


def paint_mouth(frame: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> None:
    """Paint the mouth interior, in place, inside the inner-lip polygon.

    frame : (H, W, 3) uint8 RGB. upper, lower : (K, 2) image pixels of the inner-lip chains,
    each from corner to corner. Dark red-brown, darker towards the back (the middle of the
    opening), a hint of upper teeth under the upper lip (`mouth_colour`); anti-aliased edge.
    """
    poly = np.r_[upper, lower[::-1]]
    h, w = frame.shape[:2]
    x0, y0 = np.maximum(np.floor(poly.min(0)).astype(int) - 2, 0)
    x1, y1 = np.minimum(np.ceil(poly.max(0)).astype(int) + 3, [w, h])
    if x1 <= x0 or y1 <= y0:
        return
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.round((poly - [x0, y0]) * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = mask.astype(np.float32)[..., None] / 255.0
    origin = upper[0]                                       # u: corner to corner, v: down in the image
    width = max(float(np.hypot(*(upper[-1] - origin))), 1e-6)
    u_dir = (upper[-1] - origin) / width
    v_dir = np.array([-u_dir[1], u_dir[0]])
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs - origin[0], ys - origin[1]                 # no `@` here: a threaded BLAS gemv
    u = (dx * u_dir[0] + dy * u_dir[1]) / width            # 0 .. 1 from corner to corner
    v = dx * v_dir[0] + dy * v_dir[1]                       # pixels below the corner line
    chain_u = lambda c: (c - origin) @ u_dir / width  # noqa: E731
    v_up = np.interp(u, chain_u(upper), (upper - origin) @ v_dir)
    v_lo = np.interp(u, chain_u(lower), (lower - origin) @ v_dir)
    colour = mouth_colour(u, v - v_up, np.maximum(v_lo - v_up, 1.0), width)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = np.round(roi + alpha * (colour - roi)).astype(np.uint8)


def apply_lighting(frame: np.ndarray, gain_coeffs, colour_cast) -> np.ndarray:
    """frame * g(x, y) * cast, clipped and rounded: (H, W, 3) uint8 -> uint8.

    g(x, y) = 1 + a (x - W/2)/W + b (y - H/2)/H with (a, b) = gain_coeffs, x, y image pixels.
    """
    h, w = frame.shape[:2]
    gx = (1.0 + gain_coeffs[0] * (np.arange(w) - w / 2) / w).astype(np.float32)
    gy = (gain_coeffs[1] * (np.arange(h) - h / 2) / h).astype(np.float32)
    g = np.add.outer(gy, gx)                                  # (H, W) float32
    field = cv2.merge([g * np.float32(c) for c in colour_cast])  # (H, W, 3); numpy broadcasting is 10x slower
    return cv2.multiply(frame, field, dtype=cv2.CV_8U)          # saturates and rounds


def render_frame(face: _BaseFace, openness: float, rotation, scale: float, translation,
                 gain_coeffs, colour_cast) -> np.ndarray:
    """One (S, S, 3) uint8 RGB frame of the demo video for the given truth values."""
    size = face.image.shape[0]
    posed = pose_points(deform_mouth(face, openness), rotation, scale, translation, face.centre)
    posed_img = image_to_yup(posed)
    inv_affine = _affine_inverse_image(face, rotation, scale, translation)
    maps = _backward_maps(face, posed_img, inv_affine, size)
    frame = cv2.remap(face.image, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    paint_mouth(frame, posed_img[face.upper_chain, :2], posed_img[face.lower_chain, :2])
    return apply_lighting(frame, gain_coeffs, colour_cast)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _encode_audio(container, stream, samples: np.ndarray, start: int, stop: int) -> None:
    """Encode samples[start:stop] (float32 mono) as one audio frame."""
    if stop <= start:
        return
    frame = av.AudioFrame.from_ndarray(samples[None, start:stop], format="fltp", layout="mono")
    frame.sample_rate = stream.rate
    frame.pts = start
    frame.time_base = Fraction(1, stream.rate)
    for packet in stream.encode(frame):
        container.mux(packet)


def _write_video(path: Path, frames, n_frames: int, fps: float, size: int, samples: np.ndarray,
                 sample_rate: int) -> None:
    """H.264 + AAC MP4, frames at exact times k / fps, audio from t = 0. Atomic."""
    tmp = _temp_name(path)
    rate = Fraction(fps).limit_denominator(100000)
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            video = container.add_stream("libx264", rate=rate, options={"crf": VIDEO_CRF, "preset": VIDEO_PRESET})
            video.width = video.height = size
            video.pix_fmt = "yuv420p"
            audio = container.add_stream("aac", rate=sample_rate, layout="mono")
            audio.bit_rate = AUDIO_BITRATE
            done = 0
            for k, rgb in enumerate(frames):
                # cv2's RGB -> I420 is swscale's BT.601 limited range (within 1 level), 15x faster
                frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                frame.pts, frame.time_base = k, 1 / rate
                for packet in video.encode(frame):
                    container.mux(packet)
                stop = len(samples) if k == n_frames - 1 else min(len(samples), round((k + 1) / fps * sample_rate))
                _encode_audio(container, audio, samples, done, stop)
                done = max(done, stop)
            for stream in (video, audio):
                for packet in stream.encode(None):
                    container.mux(packet)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def truth_path(video_path) -> Path:
    """`<dir>/<stem>.truth.json` beside a video."""
    p = Path(video_path)
    return p.with_name(p.stem + ".truth.json")


def _save_truth(path: Path, truth: DemoTruth) -> None:
    frames = [
        {"index": k, "time_s": k / truth.fps, "openness": float(truth.openness[k]),
         "pose": {"pitch_deg": float(truth.euler_deg[k, 0]), "yaw_deg": float(truth.euler_deg[k, 1]),
                  "roll_deg": float(truth.euler_deg[k, 2]), "rotation": truth.rotation[k].tolist(),
                  "translation_px": truth.translation_px[k].tolist(), "scale": float(truth.scale[k])},
         "gain_coeffs": truth.gain_coeffs[k].tolist(), "colour_cast": truth.colour_cast[k].tolist()}
        for k in range(truth.n_frames)]
    doc = {"format_version": TRUTH_FORMAT_VERSION, "fps": truth.fps, "frame_count": truth.n_frames,
           "image_size": [truth.size, truth.size], "audio_sample_rate": truth.audio_sample_rate,
           "mapping": MAPPING_TEXT, "frames": frames}
    tmp = _temp_name(path)
    try:
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_demo_truth(json_path) -> DemoTruth:
    """Read a `<stem>.truth.json` written by make_demo_video."""
    path = Path(json_path)
    try:
        doc = json.loads(path.read_text())
        frames = doc["frames"]
        pose = [f["pose"] for f in frames]
        return DemoTruth(
            openness=np.array([f["openness"] for f in frames], np.float64),
            rotation=np.array([p["rotation"] for p in pose], np.float64).reshape(-1, 3, 3),
            euler_deg=np.array([[p["pitch_deg"], p["yaw_deg"], p["roll_deg"]] for p in pose], np.float64).reshape(-1, 3),
            translation_px=np.array([p["translation_px"] for p in pose], np.float64).reshape(-1, 2),
            scale=np.array([p["scale"] for p in pose], np.float64),
            gain_coeffs=np.array([f["gain_coeffs"] for f in frames], np.float64).reshape(-1, 2),
            colour_cast=np.array([f["colour_cast"] for f in frames], np.float64).reshape(-1, 3),
            fps=float(doc["fps"]), size=int(doc["image_size"][0]), audio_sample_rate=int(doc["audio_sample_rate"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable demo truth file ({exc})") from exc


def make_demo_video(path, duration_s: float = 8.0, fps: float = 25.0, size: int = REFERENCE_SIZE,
                    seed: int = 0, on_frame: Callable[[int, int], None] | None = None) -> DemoTruth:
    """Write the synthetic talking-face demo video and its ground truth beside it.

    Parameters
    ----------
    path : output .mp4 (H.264 yuv420p + mono AAC); `<stem>.truth.json` is written beside it.
    duration_s : seconds; the video has round(duration_s * fps) frames at times k / fps.
    fps : frames per second. size : frame side (pixels, square; the face is ~0.45 * size wide).
    seed : speech, pose and lighting curves (the same seed gives the same video).
    on_frame : progress callback on_frame(n_done, n_total); raise from it to cancel.

    Returns the DemoTruth that was also saved.
    """
    if duration_s <= 0 or fps <= 0 or size < 64 or size % 2:
        raise ValueError(f"need duration_s > 0, fps > 0 and an even size >= 64, got {duration_s}, {fps}, {size}")
    path = Path(path)
    n = int(round(duration_s * fps))
    times = np.arange(n) / fps
    sound = speech.synthesize_speech(duration_s, sample_rate=AUDIO_SAMPLE_RATE, seed=seed)
    curves = motion_curves(times, seed, size)
    truth = DemoTruth(openness=np.clip(np.asarray(sound.openness_at(times), np.float64), 0.0, 1.0),
                      fps=float(fps), size=int(size), audio_sample_rate=int(sound.sample_rate), **curves)
    face = prepare_base_face(size)

    def frames():
        for k in range(n):
            yield render_frame(face, truth.openness[k], truth.rotation[k], truth.scale[k],
                               truth.translation_px[k], truth.gain_coeffs[k], truth.colour_cast[k])
            if on_frame is not None:
                on_frame(k + 1, n)

    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(sound.samples, np.float32)
    _write_video(path, frames(), n, fps, size, samples, int(sound.sample_rate))
    _save_truth(truth_path(path), truth)
    return truth
