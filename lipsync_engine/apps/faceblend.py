"""Blending a predicted face into one target video frame (paper Section 3.3, Figure 1b).

Owns: the per-frame composite of dubbing: the predicted vertices brought into the frame at
the target's pose, a blend of the target's and the predicted geometry (the jaw follows the
prediction, the upper face keeps the target's motion), a piecewise-affine warp of the
target frame to that geometry through the face mesh and a band outside its outline (the
area below the chin follows the new chin), the target frame's lighting put back on the
predicted lip texture (lighting normalization in reverse, with the target face as
reference), and a feathered mask that fades the predicted texture out before the face
outline and the nose; reading a model directory's blending data (no torch).
Must not: decode or encode video, track, predict, or write files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from ..face import geometry
from ..face.topology import load_topology
from ..face.warp import Raster
from ..model import checkpoint
from ..prepare import normalize
from ..prepare.lighting import LightingOptions, denormalize_frame, normalize_frame

# MediaPipe's face oval (FACEMESH_FACE_OVAL), a closed loop: the outer edge of the face mesh.
FACE_OVAL = (10, 109, 67, 103, 54, 21, 162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
             377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 356, 389, 251, 284, 332, 297, 338)
# Geometry blend weight: 1 (predicted geometry) below GEOMETRY_FULL_Y, 0 (the target's own)
# above GEOMETRY_ZERO_Y, smooth between; canonical model heights (~cm, nose tip at -1.1,
# eyes at ~+3). The eyes and brows keep the target's motion (blinks), the jaw takes the new one.
GEOMETRY_FULL_Y, GEOMETRY_ZERO_Y = -1.6, 0.6
STILL_MAX_Y = 2.7          # canonical height up to which still triangles are rasterized too (occluders)
# The predicted texture's weight: 1 below ALPHA_FULL_Y, 0 above ALPHA_ZERO_Y (canonical heights,
# subnasale -2.1, nose tip -1.1): the nose and cheeks above it stay the target's.
ALPHA_FULL_Y, ALPHA_ZERO_Y = -1.8, -0.6
BAND_WIDTH = 0.30          # band outside the face outline that absorbs the jaw motion (fraction of face height)
INTERIOR_CM = 1.2          # the predicted texture fades in over this distance inside the face outline (canonical ~cm)
FEATHER = 0.02             # Gaussian feather of the mask (sigma, fraction of the face height)
LIP_MARGIN = 0.25          # mask fades to 0 over this fraction of the lip crop at its edges (the mouth spans
                           # its middle ~45%); chosen on the seam metric, 0.10 left visible edges (docs/dub.md)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@lru_cache(maxsize=1)
def blend_mesh():
    """The lower face mesh extended by a band outside its outline, and per-vertex weights.

    Returns (oval ids (36,), triangles (T, 3) int32, geometry (468,), interior (504,)).
    Vertices 468..503 of the extended mesh are the band's outer ring, one per oval vertex.
    Triangles above the eyes that cannot move (geometry weight 0) are left out: they map
    onto themselves, and their pixels stay the target's untouched ones.
    geometry : the geometry blend weight (GEOMETRY_FULL_Y / GEOMETRY_ZERO_Y).
    interior : the predicted texture's weight: 0 on the face outline and the ring, rising to
        1 at INTERIOR_CM inside the outline (canonical distance), times 0 above ALPHA_ZERO_Y:
        the predicted texture never reaches the outline or the nose, so the target's own
        (warped) pixels meet the untouched frame there.
    """
    topo = load_topology()
    oval = np.asarray(FACE_OVAL)
    n, ring = len(oval), 468 + np.arange(len(oval))
    nxt = np.roll(np.arange(n), -1)
    strip = np.concatenate([np.stack([oval, oval[nxt], ring], 1), np.stack([oval[nxt], ring[nxt], ring], 1)])
    geom = _smoothstep((GEOMETRY_ZERO_Y - topo.vertices[:, 1]) / (GEOMETRY_ZERO_Y - GEOMETRY_FULL_Y))
    xy = topo.vertices[:, :2]
    a, b = xy[oval], xy[oval[nxt]]
    t = np.clip(np.einsum("vsk,sk->vs", xy[:, None] - a, b - a) / ((b - a) ** 2).sum(1), 0.0, 1.0)
    dist = np.linalg.norm(xy[:, None] - (a + t[..., None] * (b - a)), axis=2).min(1)
    below = _smoothstep((ALPHA_ZERO_Y - topo.vertices[:, 1]) / (ALPHA_ZERO_Y - ALPHA_FULL_Y))
    interior = np.r_[_smoothstep(dist / INTERIOR_CM) * below, np.zeros(n)]
    tris = np.concatenate([topo.triangles, strip])
    moves = np.r_[geom, np.zeros(n)] > 0
    moves[ring] = moves[oval] | moves[oval[nxt]] | moves[oval[np.roll(np.arange(n), 1)]]
    # still triangles up to the eyes too: when the head turns, the nose and the lower eyelids
    # hide parts of moving triangles, and only a depth test against them gets that right
    low = np.r_[topo.vertices[:, 1] < STILL_MAX_Y, np.zeros(n, bool)]
    keep = moves[tris].any(1) | (low[tris].any(1) & (tris < 468).all(1))
    return oval, tris[keep].astype(np.int32), geom, interior


@lru_cache(maxsize=1)
def _used_vertices() -> np.ndarray:
    """Vertices of the extended mesh that blend_mesh's triangles use."""
    return np.unique(blend_mesh()[1])


def normalized_to_image(vertices: np.ndarray, scale: float, rotation: np.ndarray, translation: np.ndarray):
    """(..., 468, 3) normalized -> image pixels (y down, z away), inverting normalized = s R yup + t."""
    yup = (np.asarray(vertices, np.float64) - translation) @ np.asarray(rotation) / scale
    return geometry.yup_to_image(yup)


def lip_mask(size: int = geometry.LIP_SIZE, margin: float = LIP_MARGIN) -> np.ndarray:
    """(size, size) float32 alpha of the lip crop: 1 inside, smoothstep to 0 over `margin` at the edges."""
    x = (np.arange(size) + 0.5) / size
    ramp = _smoothstep(np.minimum(x, 1.0 - x) / margin).astype(np.float32)
    return np.outer(ramp, ramp)


@dataclass
class FaceFrame:
    """What the composite needs of one target frame and the prediction for it."""

    landmarks: np.ndarray     # (468, 3) tracked target landmarks, image pixels
    predicted: np.ndarray     # (468, 3) predicted vertices in the target frame's image pixels
    uv: np.ndarray            # (468, 2) atlas pixels of the predicted vertices (cylinder)
    atlas: np.ndarray         # (256, 256, 3) uint8 (or float32 in [0, 1]): the relit predicted lips, 0 elsewhere
    alpha_atlas: np.ndarray   # (256, 256) float32 mask in atlas space (lip_mask at the lip box)


def composite(image: np.ndarray, face: FaceFrame, feather: float = FEATHER):
    """Blend one predicted face into one target frame.

    The target frame is warped from its own geometry to the blended geometry (target +
    weight x (predicted - target), weight 1 on the jaw, 0 on the upper face), through the face
    mesh and a band outside its outline whose outer ring stays put: the area below the chin
    follows the new chin. The relit predicted lip texture is then drawn at the blended
    geometry with the lip-crop mask (feathered). Returns (out (H, W, 3) uint8, alpha (H, W)
    float32 mask of the predicted texture, box (x0, y0, x1, y1) of the changed region).
    """
    oval, tris, w, interior = blend_mesh()
    orig, pred = np.asarray(face.landmarks, np.float64), np.asarray(face.predicted, np.float64)
    blended = orig + w[:, None] * (pred - orig)
    height = float(np.ptp(orig[oval, 1]))
    out_dir = orig[oval, :2] - orig[oval, :2].mean(0)
    ring = orig[oval, :2] + BAND_WIDTH * height * out_dir / np.linalg.norm(out_dir, axis=1, keepdims=True)
    src, dst = np.vstack([orig[:, :2], ring]), np.vstack([blended[:, :2], ring])
    h, wid = image.shape[:2]
    used = dst[_used_vertices()]
    x0, y0 = np.maximum(np.floor(used.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(used.max(0)).astype(int) + 2, [wid, h])
    full_alpha = np.zeros((h, wid), np.float32)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return image.copy(), full_alpha, (0, 0, 0, 0)
    off = np.array([x0, y0], np.float64)
    depth = np.r_[-blended[:, 2], np.full(len(ring), -blended[:, 2].max() - 1.0)]
    raster = Raster(dst - off, tris, (y1 - y0, x1 - x0), depth)
    uv = np.vstack([face.uv, np.full((len(ring), 2), -8.0)])      # ring: outside the atlas, alpha 0
    m = raster.interpolate(np.c_[src - off, uv, interior])         # (h, w, 5) one sparse product
    crop = image[y0:y1, x0:x1]
    base = crop.copy()
    cv2.copyTo(cv2.remap(crop, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
               raster.mask.view(np.uint8), base)                   # the target warped to the blended geometry
    atlas = face.atlas if face.atlas.dtype == np.uint8 else np.clip(face.atlas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    synth = cv2.remap(atlas, m[..., 2], m[..., 3], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.remap(face.alpha_atlas, m[..., 2], m[..., 3], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha *= np.clip(m[..., 4], 0.0, 1.0)
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), feather * height)
    out = image.copy()
    out[y0:y1, x0:x1] = cv2.blendLinear(synth, base, alpha, 1.0 - alpha)   # alpha synth + (1 - alpha) base
    full_alpha[y0:y1, x0:x1] = alpha
    return out, full_alpha, (int(x0), int(y0), int(x1), int(y1))


class Relighter:
    """Puts a target frame's lighting on lighting-normalized (predicted) textures.

    The frame's lighting is estimated as prepare does (normalize.AtlasBuilder.frame without
    its skin registration, which only sharpens training textures): the frame is unrolled
    into the atlas and lighting.normalize_frame normalizes it against the speaker's
    normalized reference, giving the smooth gain G and the colour transform {a, b};
    lighting.denormalize_frame then applies that normalization in reverse.
    """

    def __init__(self, reference_vertices: np.ndarray, cylinder: geometry.CylinderMap, lip_box: tuple[int, int],
                 reference_normalized: np.ndarray, options: LightingOptions):
        norm = normalize.PoseNormalization(np.asarray(reference_vertices, np.float64), cylinder, lip_box)
        self.builder = normalize.AtlasBuilder(norm, options)
        valid = self.builder.raster(norm.reference_vertices).mask
        ref = np.where(valid[..., None], np.asarray(reference_normalized, np.float32) / 255.0, 0.0)
        self.reference = np.dstack([ref, valid.astype(np.float32)]).astype(np.float32)
        self.options, self.lip_box = options, lip_box

    def estimate(self, image: np.ndarray, landmarks: np.ndarray, vertices: np.ndarray):
        """(gain (256, 256) float32, a (3,), b (3,)) of one target frame; vertices normalized (468, 3)."""
        b = self.builder
        raster = b.raster(vertices)
        raw = b.unroll(image, landmarks, raster).astype(np.float32) / np.float32(255.0)
        ref_aligned = raster.warp(self.reference, b.ref_uv)   # R^n in this frame's texture coordinates
        valid = raster.mask & (ref_aligned[..., 3] > 0.999)
        skin = raster.triangle_mask(b.skin) if self.options.remove_specularities else None
        res = normalize_frame(raw, ref_aligned[..., :3], valid, self.options, skin_mask=skin)
        return res.gain, res.a, res.b

    def relight_lips(self, lips: np.ndarray, gain: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(128, 128, 3) uint8 normalized lips -> float32 [0, 1] under the target's lighting."""
        return relight_lips(lips, gain, a, b, self.lip_box)


def relight_lips(lips: np.ndarray, gain: np.ndarray, a: np.ndarray, b: np.ndarray, lip_box: tuple[int, int]):
    """Lighting normalization in reverse on a lip crop: (128, 128, 3) uint8 normalized lips ->
    (128, 128, 3) float32 [0, 1] under the lighting (gain (256, 256) atlas-wide, a, b (3,)) of a frame."""
    r, c = lip_box
    s = geometry.LIP_SIZE
    return denormalize_frame(np.asarray(lips, np.float32) / 255.0, gain[r:r + s, c:c + s], a, b)


def model_assets(model_dir: Path) -> dict:
    """What blending needs of a model directory, without torch: reference_vertices (468, 3),
    cylinder, lip_box (row, col), reference_normalized (256, 256, 3) uint8 RGB, model_id."""
    config = checkpoint.read_config(model_dir)
    ref = checkpoint.read_reference_vertices(model_dir)
    atlas = checkpoint.read_reference_atlas(model_dir)
    box = config["lip_box"]
    return {"reference_vertices": ref,
            "cylinder": geometry.CylinderMap.from_dict(config["cylinder"]),
            "lip_box": (int(box["row"]), int(box["col"])),
            "reference_normalized": atlas, "model_id": str(config.get("model_id", ""))}


class FaceBlender:
    """Blends predicted faces of one model into target frames (one per process: it caches the model's data)."""

    def __init__(self, model_dir: Path, lighting: LightingOptions, feather: float = FEATHER):
        self.assets = a = model_assets(model_dir)
        self.relighter = Relighter(a["reference_vertices"], a["cylinder"], a["lip_box"], a["reference_normalized"],
                                   lighting)
        r, c = a["lip_box"]
        self.mask = np.zeros((geometry.ATLAS_SIZE,) * 2, np.float32)
        self.mask[r:r + geometry.LIP_SIZE, c:c + geometry.LIP_SIZE] = lip_mask()
        self.feather = feather

    def blend(self, image: np.ndarray, landmarks: np.ndarray, target_vertices: np.ndarray, pose: tuple,
              predicted_vertices: np.ndarray, predicted_lips: np.ndarray, lighting: tuple | None = None):
        """One output frame: (out (H, W, 3) uint8, alpha (H, W) float32, box) (see composite).

        landmarks : (468, 3) tracked target landmarks (pixels); target_vertices : (468, 3) their
        normalized vertices; pose : (scale, rotation (3, 3), translation (3,)) of that frame
        (normalized = s R yup + t); predicted_vertices : (468, 3) normalized; predicted_lips :
        (128, 128, 3) uint8 lighting-normalized lip crop; lighting : (gain, a, b) of
        Relighter.estimate for this frame (estimated here when None).
        """
        gain, a, b = lighting if lighting is not None else self.relighter.estimate(image, landmarks, target_vertices)
        r, c = self.assets["lip_box"]
        atlas = np.zeros((geometry.ATLAS_SIZE, geometry.ATLAS_SIZE, 3), np.uint8)
        lit = self.relighter.relight_lips(predicted_lips, gain, a, b)
        atlas[r:r + geometry.LIP_SIZE, c:c + geometry.LIP_SIZE] = np.clip(lit * 255.0 + 0.5, 0, 255)
        face = FaceFrame(landmarks, normalized_to_image(predicted_vertices, *pose),
                         self.assets["cylinder"].project(predicted_vertices), atlas, self.mask)
        return composite(image, face, self.feather)
