"""Pure numpy geometry: similarity transforms (Umeyama), frame conversions, the reference
cylinder and its atlas mapping. Section 3.1.1 of the paper.

Frames used in the engine:
- *image*: MediaPipe landmarks in pixels, x right, y down, z away from the camera
  (MediaPipe's z scaled like x, so z pixels = z_normalized * width).
- *y-up*: the image frame rotated 180 degrees about x: (x, -y, -z); right-handed, y up,
  z towards the viewer, like the canonical model.
- *normalized*: the speaker's reference face aligned (similarity) to the canonical
  MediaPipe model, roughly centimetres; every frame is aligned to it on the rigid upper face.
- *atlas*: pixel coordinates (u to the right, v down) of the 256x256 cylindrical texture.
Must not: read files, track, or know about datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ATLAS_SIZE = 256  # texture atlas side (pixels), paper Section 3.1.1
LIP_SIZE = 128    # side of the lip crop of the atlas that the texture decoder predicts (pixels)
# Where the eyes and the nose tip land on every speaker's atlas (paper: "eyes and nose
# project to fixed locations on this reference cylinder"). Chosen so that the canonical
# MediaPipe face spans rows ~12..244 and columns ~10..246.
EYE_ROW = 86.0         # atlas row of the mean of both eye centres (pixels)
NOSE_ROW = 136.0       # atlas row of the nose tip, landmark 1 (pixels)
EYE_HALF_SPAN = 41.0   # atlas columns from the centre line to each eye centre (pixels)
CENTRE_COL = ATLAS_SIZE / 2.0


@dataclass(frozen=True)
class Similarity:
    """x -> scale * rotation @ x + translation, for points of shape (..., 3)."""

    scale: float
    rotation: np.ndarray     # (3, 3) float64, det +1
    translation: np.ndarray  # (3,) float64

    def apply(self, points: np.ndarray) -> np.ndarray:
        return self.scale * points @ self.rotation.T + self.translation

    def inverse(self) -> "Similarity":
        rt = self.rotation.T
        return Similarity(1.0 / self.scale, rt, -(rt @ self.translation) / self.scale)

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
            with_scale: bool = True) -> Similarity:
    """Least-squares similarity with dst ~ c R src + t (Umeyama 1991, weighted).

    Parameters
    ----------
    src, dst : (N, 3) float, N >= 3 corresponding points.
    weights : (N,) non-negative weights, or None for uniform.

    Example: ``umeyama(p, 2 * p @ R.T + t)`` returns scale 2, rotation R, translation t.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (N>=3, 3) arrays, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u * sign) @ vt
    var_s = float(w @ (xs ** 2).sum(axis=1))
    scale = float((d * sign).sum() / var_s) if with_scale else 1.0
    return Similarity(scale, rot, mu_d - scale * rot @ mu_s)


def umeyama_batch(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Vectorized umeyama over frames: src (F, N, 3) -> dst (N, 3) or (F, N, 3).

    Returns (scale (F,), rotation (F, 3, 3), translation (F, 3)).
    """
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    if src.ndim != 3 or src.shape[-1] != 3:
        raise ValueError(f"umeyama_batch needs (F, N, 3) points, got {src.shape}")
    w = np.ones(src.shape[1]) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = np.einsum("n,fnk->fk", w, src), np.einsum("n,fnk->fk", w, dst)
    xs, xd = src - mu_s[:, None], dst - mu_d[:, None]
    cov = np.einsum("n,fni,fnj->fij", w, xd, xs)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones((len(src), 3))
    sign[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    rot = np.einsum("fij,fj,fjk->fik", u, sign, vt)
    var_s = np.einsum("n,fnk->f", w, xs ** 2)
    scale = (d * sign).sum(axis=1) / var_s
    trans = mu_d - scale[:, None] * np.einsum("fij,fj->fi", rot, mu_s)
    return scale, rot, trans


def image_to_yup(points: np.ndarray) -> np.ndarray:
    """(..., 3) image-frame points (y down, z away) -> y-up frame (x, -y, -z). Self-inverse."""
    return np.asarray(points) * np.array([1.0, -1.0, -1.0], dtype=np.asarray(points).dtype)


yup_to_image = image_to_yup


def rotation_angle_deg(rotation: np.ndarray) -> np.ndarray:
    """Angle (degrees) of rotation matrices (..., 3, 3)."""
    tr = np.trace(rotation, axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def rotation_to_euler_deg(rotation: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) (pitch about x, yaw about y, roll about z) in degrees, R = Rz Ry Rx."""
    r = np.asarray(rotation)
    yaw = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.degrees(np.stack([pitch, yaw, roll], axis=-1))


def euler_to_rotation(pitch_deg, yaw_deg, roll_deg) -> np.ndarray:
    """Inverse of rotation_to_euler_deg for scalars or arrays: R = Rz(roll) Ry(yaw) Rx(pitch)."""
    p, y, r = (np.radians(np.asarray(a, np.float64)) for a in (pitch_deg, yaw_deg, roll_deg))
    cp, sp, cy, sy, cr, sr = np.cos(p), np.sin(p), np.cos(y), np.sin(y), np.cos(r), np.sin(r)
    one, zero = np.ones_like(cp), np.zeros_like(cp)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(cp.shape + (3, 3))
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(cp.shape + (3, 3))
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(cp.shape + (3, 3))
    return rz @ ry @ rx


def fit_vertical_axis(points: np.ndarray, keep: float = 0.8) -> tuple[float, float, float]:
    """Vertical (y) cylinder axis that most points are equidistant to.

    Algebraic circle fit (Kasa) of the (x, z) coordinates, refitted on the `keep`
    fraction of points with the smallest radial residual. Returns (cx, cz, radius).
    """
    xz = np.asarray(points, np.float64)[:, [0, 2]]
    idx = np.arange(len(xz))
    for _ in range(2):
        a = np.c_[2 * xz[idx], np.ones(len(idx))]
        b = (xz[idx] ** 2).sum(axis=1)
        (cx, cz, c), *_ = np.linalg.lstsq(a, b, rcond=None)
        radius = np.sqrt(c + cx ** 2 + cz ** 2)
        resid = np.abs(np.hypot(xz[:, 0] - cx, xz[:, 1] - cz) - radius)
        idx = np.argsort(resid)[: max(3, int(keep * len(xz)))]
    return float(cx), float(cz), float(radius)


@dataclass(frozen=True)
class CylinderMap:
    """Normalized 3D points -> atlas pixels on the speaker's reference cylinder.

    u = u0 + k * atan2(x - cx, z - cz);  v = v0 - s * y.
    """

    cx: float
    cz: float
    radius: float
    k: float   # atlas pixels per radian
    u0: float  # atlas column of the angle 0
    s: float   # atlas pixels per normalized unit of height
    v0: float  # atlas row of height 0

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) normalized points -> (..., 2) float32 atlas (u, v) pixels."""
        p = np.asarray(points)
        theta = np.arctan2(p[..., 0] - self.cx, p[..., 2] - self.cz)
        return np.stack([self.u0 + self.k * theta, self.v0 - self.s * p[..., 1]], -1).astype(np.float32)

    def to_dict(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("cx", "cz", "radius", "k", "u0", "s", "v0")}

    @classmethod
    def from_dict(cls, d: dict) -> "CylinderMap":
        return cls(**{k: float(d[k]) for k in ("cx", "cz", "radius", "k", "u0", "s", "v0")})


def reference_cylinder(reference: np.ndarray, right_eye: np.ndarray, left_eye: np.ndarray,
                       nose_tip: int) -> CylinderMap:
    """The reference cylinder of a normalized reference face, with eyes and nose at fixed atlas spots.

    reference : (468, 3) normalized reference vertices; right_eye/left_eye : index loops.
    """
    cx, cz, radius = fit_vertical_axis(reference)
    eyes = np.stack([reference[right_eye].mean(0), reference[left_eye].mean(0)])
    theta = np.arctan2(eyes[:, 0] - cx, eyes[:, 2] - cz)
    if theta[1] - theta[0] <= 1e-6:
        raise ValueError("reference face has its eyes swapped or merged; cannot build the cylinder")
    k = 2.0 * EYE_HALF_SPAN / (theta[1] - theta[0])
    u0 = CENTRE_COL - k * theta.mean()
    h_eye, h_nose = eyes[:, 1].mean(), reference[nose_tip, 1]
    s = (NOSE_ROW - EYE_ROW) / (h_eye - h_nose)
    return CylinderMap(cx, cz, radius, float(k), float(u0), float(s), float(EYE_ROW + s * h_eye))
