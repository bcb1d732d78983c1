"""A software renderer of the textured head, frontal view, for previews (numpy + OpenCV).

Owns: the orthographic frontal camera that frames a speaker's head, and drawing one frame:
the per-frame normalized vertices are projected to image pixels, back-facing triangles are
culled, overlaps are resolved by depth (warp.Raster: the nearest triangle wins), and each
covered pixel samples the frame's 256x256 atlas at the cylinder coordinates of the same
vertices (the atlas was unrolled through CylinderMap.project of each frame's vertices,
normalize.AtlasBuilder, so texture follows the mesh). A soft Lambert term from per-vertex
normals gives the flat, lighting-normalized atlas some shape. Also the full atlases of a
prediction: the reference atlas with the predicted lip crop blended in (compose_atlas), and
optionally the lighting of a chosen frame put back (relighting).
Must not: predict, decode or encode video, or import torch/bpy.

Frames: normalized space is y up, z towards the viewer (geometry.py); the image is x right,
y down, seen from +z.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..core.errors import DatasetError, InputError
from ..face.geometry import ATLAS_SIZE, LIP_SIZE, CylinderMap
from ..face.topology import FaceTopology, load_topology
from ..face.warp import Raster
from ..prepare import lighting
from ..prepare.dataset import open_speaker
from ..prepare.lighting import LightingOptions

BACKGROUND = (58, 62, 70)            # RGB of the preview background
LIGHT_DIRECTION = (0.35, 0.45, 1.0)  # towards the light (normalized frame: right, up, to the viewer)
AMBIENT = 0.55                       # shade = AMBIENT + (1 - AMBIENT) * max(n . l, 0)
FRAME_MARGIN = 0.08                  # empty border around the head, fraction of the image side
SEAM_FEATHER = 12                    # pixels over which a lip crop fades into the reference at its edges


@dataclass(frozen=True)
class FrontalCamera:
    """Orthographic view along -z: image (x, y) = (size/2 + scale (x - cx), size/2 - scale (y - cy))."""

    size: int                 # image side (pixels)
    centre: tuple             # (cx, cy) normalized coordinates at the image centre
    scale: float              # pixels per normalized unit

    def project(self, vertices: np.ndarray) -> np.ndarray:
        """(..., 3) normalized points -> (..., 2) float64 image pixels (x right, y down)."""
        v = np.asarray(vertices, np.float64)
        half = self.size / 2.0
        return np.stack([half + self.scale * (v[..., 0] - self.centre[0]),
                         half - self.scale * (v[..., 1] - self.centre[1])], -1)


def frontal_camera(reference_vertices: np.ndarray, size: int = 512, margin: float = FRAME_MARGIN) -> FrontalCamera:
    """The camera that fits the reference face (468, 3) into a size x size image with a margin;
    the mouth opening lowers the chin by a few percent, which the margin absorbs."""
    v = np.asarray(reference_vertices, np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"reference_vertices must be (V, 3), got {v.shape}")
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    extent = float(max(hi - lo))
    scale = size * (1.0 - 2.0 * margin) / max(extent, 1e-9)
    return FrontalCamera(int(size), (float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2)), float(scale))


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray, incidence=None) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals of a mesh whose triangles are counter-clockwise from outside.

    incidence : optional (V, T) sparse 0/1 matrix of triangle_incidence(triangles, V), reused across frames.
    """
    v = np.asarray(vertices, np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    face = np.cross(b - a, c - a)                     # length = twice the area
    n = (incidence if incidence is not None else triangle_incidence(triangles, len(v))) @ face
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def triangle_incidence(triangles: np.ndarray, n_vertices: int):
    """(V, T) sparse matrix with a 1 where vertex v is a corner of triangle t."""
    import scipy.sparse         # imported here: `lipsync predict` without a preview never renders

    t = np.asarray(triangles)
    cols = np.repeat(np.arange(len(t)), 3)
    return scipy.sparse.csr_matrix((np.ones(t.size), (t.ravel(), cols)), shape=(n_vertices, len(t)))


class HeadRenderer:
    """Draws frames of one speaker's head with one camera.

    Example::

        r = HeadRenderer(cylinder, frontal_camera(reference_vertices, 512))
        image = r.render(atlas, vertices)          # (512, 512, 3) uint8 RGB
    """

    def __init__(self, cylinder: CylinderMap, camera: FrontalCamera, topology: FaceTopology | None = None,
                 shading: bool = True, background=BACKGROUND):
        self.cylinder, self.camera = cylinder, camera
        self.topo = topology or load_topology()
        self.shading = shading
        self.background = np.asarray(background, np.uint8)
        light = np.asarray(LIGHT_DIRECTION, np.float64)
        self.light = light / np.linalg.norm(light)
        self.incidence = triangle_incidence(self.topo.triangles, len(self.topo.vertices))

    def front_facing(self, image_points: np.ndarray) -> np.ndarray:
        """(T,) bool: triangles facing the camera. Counter-clockwise from the front in the y-up frame
        is clockwise in the y-down image, i.e. a negative signed area there."""
        t = self.topo.triangles
        a, b, c = image_points[t[:, 0]], image_points[t[:, 1]], image_points[t[:, 2]]
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        return cross < 0

    def render(self, atlas: np.ndarray, vertices: np.ndarray) -> np.ndarray:
        """(256, 256, 3) uint8 atlas + (468, 3) normalized vertices -> (size, size, 3) uint8 RGB."""
        atlas = np.asarray(atlas)
        v = np.asarray(vertices, np.float64)
        if atlas.shape != (256, 256, 3) or v.shape != (len(self.topo.vertices), 3):
            raise ValueError(f"need a (256, 256, 3) atlas and ({len(self.topo.vertices)}, 3) vertices, "
                             f"got {atlas.shape} and {v.shape}")
        size = self.camera.size
        pts = self.camera.project(v)
        tris = self.topo.triangles[self.front_facing(pts)]
        raster = Raster(pts, tris, (size, size), depth=v[:, 2])
        map_x, map_y = raster.maps(self.cylinder.project(v))
        face = cv2.remap(np.ascontiguousarray(atlas), map_x, map_y, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        covered = raster.mask[..., None]
        if self.shading:           # per-vertex Lambert shade, interpolated like the texture coordinates
            shade_v = AMBIENT + (1.0 - AMBIENT) * np.clip(vertex_normals(v, self.topo.triangles, self.incidence)
                                                          @ self.light, 0.0, 1.0)
            shade, _ = raster.maps(np.stack([shade_v, shade_v], 1))
            face = cv2.multiply(face, cv2.merge([shade, shade, shade]), dtype=cv2.CV_8U)
        return np.where(covered, face, self.background)


# ----------------------------------------------------------------------------- full atlases

def seam_weights(size: int = LIP_SIZE, feather: int = SEAM_FEATHER) -> np.ndarray:
    """(size, size) float32 weight of a lip crop over the reference: 1 inside, easing (smoothstep)
    to 0 over `feather` pixels at the crop's border, so no edge of the crop shows."""
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5   # distance to the edge
    r = np.clip(d / max(feather, 1e-6), 0.0, 1.0)
    r = r * r * (3.0 - 2.0 * r)
    return np.minimum(r[:, None], r[None, :])


_SEAM = seam_weights()


def compose_atlas(reference_atlas: np.ndarray, lips: np.ndarray, lip_box: dict) -> np.ndarray:
    """The full 256x256 atlas: the reference with the predicted lip crop blended in without a seam.

    reference_atlas : (256, 256, 3) uint8 (the model's reference_atlas_normalized.png: the lips
    are lighting-normalized like it). lips : (128, 128, 3) uint8, or (N, 128, 128, 3) for N
    atlases. lip_box : {"row", "col"} of the crop's top-left corner in the atlas.
    Returns (256, 256, 3) uint8 (or (N, 256, 256, 3)).
    """
    ref = np.asarray(reference_atlas)
    crops = np.asarray(lips)
    single = crops.ndim == 3
    crops = crops[None] if single else crops
    if ref.shape != (ATLAS_SIZE, ATLAS_SIZE, 3) or crops.shape[1:] != (LIP_SIZE, LIP_SIZE, 3):
        raise ValueError(f"need a (256, 256, 3) reference and (N, {LIP_SIZE}, {LIP_SIZE}, 3) lips, "
                         f"got {ref.shape} and {crops.shape}")
    r, c = int(lip_box["row"]), int(lip_box["col"])
    out = np.repeat(ref[None].astype(np.uint8), len(crops), axis=0)
    under = ref[r:r + LIP_SIZE, c:c + LIP_SIZE].astype(np.float32)
    w = _SEAM[None, :, :, None]
    out[:, r:r + LIP_SIZE, c:c + LIP_SIZE] = np.rint(under + w * (crops.astype(np.float32) - under)).astype(np.uint8)
    return out[0] if single else out


def read_atlas(path: Path) -> np.ndarray:
    """(256, 256, 3) uint8 RGB atlas PNG; InputError naming the file if it is not one."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != (ATLAS_SIZE, ATLAS_SIZE):
        raise InputError(f"{path}: missing, unreadable or not a 256x256 atlas")
    return np.ascontiguousarray(bgr[..., ::-1])


def write_png(path: Path, rgb: np.ndarray) -> None:
    """RGB image -> PNG (fast compression: atlas sequences are long)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise InputError(f"{path}: could not encode the PNG")
    Path(path).write_bytes(data.tobytes())


def relighting(raw_reference: np.ndarray, normalized_reference: np.ndarray, relight, speaker_dir: Path | None = None):
    """A function (256, 256, 3) uint8 lighting-normalized atlas -> the same under another lighting, or None.

    raw_reference, normalized_reference : the model's reference_atlas.png and
    reference_atlas_normalized.png (uint8). relight : None (keep the normalized lighting),
    "reference" (the raw reference frame's lighting: a gain and colour transform estimated
    from normalized to raw once, as prepare estimates them per frame), or an int k (frame k
    of the speaker directory the model was trained on: its stored gain.npy and
    color_transform.npy). Both are undone with lighting.denormalize_frame; outside the face stays 0.
    """
    if relight is None:
        return None
    inside = normalized_reference.max(-1) > 0
    if relight == "reference":
        raw, norm = raw_reference.astype(np.float32) / 255, normalized_reference.astype(np.float32) / 255
        valid = (raw.max(-1) > 0) & inside
        res = lighting.normalize_frame(raw, norm, valid, LightingOptions(remove_specularities=False))
        gain, a, b = res.gain, res.a, res.b
    else:
        gain, a, b = _speaker_lighting(Path(speaker_dir or ""), int(relight))

    def apply(atlas: np.ndarray) -> np.ndarray:
        lit = lighting.denormalize_frame(atlas.astype(np.float32) / 255, gain, a, b)
        return np.where(inside[..., None], np.clip(np.rint(lit * 255), 0, 255), 0).astype(np.uint8)
    return apply


def _speaker_lighting(speaker: Path, k: int):
    """(gain (256, 256), a (3,), b (3,)) of frame k of a prepared speaker."""
    try:
        ds = open_speaker(speaker)
    except DatasetError as e:
        raise InputError(f"relighting with speaker frame {k} needs the model's speaker directory: {e}") from e
    if not 0 <= k < len(ds):
        raise InputError(f"{speaker}: relight frame {k} is outside 0..{len(ds) - 1}")
    gain = cv2.resize(np.asarray(ds.gain[k], np.float32), (ATLAS_SIZE, ATLAS_SIZE), interpolation=cv2.INTER_LINEAR)
    a, b = np.asarray(ds.color_transform[k], np.float32)
    return np.maximum(gain, 1e-3), a, b
