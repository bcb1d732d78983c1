"""A prediction folder made by hand with the engine's own writers (no model needed).

The canonical MediaPipe face opens its jaw by a known amount per frame; atlas i is a solid
colour that encodes i; the blendshapes are a seeded random walk. result.json follows the
layout of docs/predict.md, so the add-on reads it exactly as a real prediction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipsync_engine.io import exports, pointcache
from lipsync_engine.face import geometry, topology
from lipsync_engine.core import storage
from lipsync_engine.rig.names import ARKIT_NAMES


def atlas_colour(i: int) -> tuple:
    """The solid RGB colour of atlas i (distinct for i < 6)."""
    return ((40 * i) % 256, 255 - (40 * i) % 256, 128)


def jaw_vertices(openness: np.ndarray) -> np.ndarray:
    """(F, 468, 3) canonical face with the vertices below the mouth lowered by openness (engine units)."""
    topo = topology.load_topology()
    ref = np.asarray(topo.vertices, np.float32)
    mouth_y = ref[list(topo.lips_inner), 1].mean()
    below = (ref[:, 1] < mouth_y).astype(np.float32)
    out = np.repeat(ref[None], len(openness), 0)
    out[:, :, 1] -= openness[:, None] * below[None]
    return out


def make_result(folder: Path, frames: int = 6, fps: float = 25.0, seed: int = 0, audio: str = "line.wav") -> dict:
    """Write a prediction folder; returns its arrays (vertices, blendshapes, openness) and cylinder."""
    import cv2

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    topo = topology.load_topology()
    openness = np.linspace(0.0, 2.0, frames).astype(np.float32)
    verts = jaw_vertices(openness)
    cyl = geometry.reference_cylinder(np.asarray(topo.vertices), topo.right_eye, topo.left_eye, topology.NOSE_TIP)
    uv = cyl.project(np.asarray(topo.vertices)).astype(np.float64)
    obj_uv = np.stack([(uv[:, 0] + 0.5) / 256, 1.0 - (uv[:, 1] + 0.5) / 256], 1)
    pointcache.write_pc2(folder / "head.pc2", verts)
    pointcache.write_obj(folder / "head.obj", topo.vertices, topo.triangles, obj_uv, texture="reference_atlas.png")
    (folder / "atlas").mkdir(exist_ok=True)
    for i in range(frames):
        img = np.zeros((256, 256, 3), np.uint8)
        img[:] = atlas_colour(i)[::-1]             # OpenCV writes BGR
        cv2.imwrite(str(folder / "atlas" / f"atlas_{i:06d}.png"), img)
    cv2.imwrite(str(folder / "reference_atlas.png"), img)
    bs = np.clip(np.cumsum(rng.normal(0, 0.15, (frames, 52)), 0) * 0.5 + 0.3, 0, 1).astype(np.float32)
    exports.write_coefficients_json(folder / "blendshapes.json", bs, ARKIT_NAMES, fps)
    storage.write_json(folder / "result.json", {
        "format": "lipsync3d-prediction", "format_version": 1, "engine_version": "test", "model_id": "handmade",
        "model_dir": str(folder / "no-model"), "audio": str(folder / audio), "fps": fps, "start_s": 0.0,
        "frames": frames, "duration_s": frames / fps, "blendshape_names": list(ARKIT_NAMES),
        "cylinder": cyl.to_dict(), "atlas_size": 256,
        "files": {"pc2": "head.pc2", "obj": "head.obj", "atlas_dir": "atlas", "atlas_pattern": "atlas_%06d.png",
                  "reference_atlas": "reference_atlas.png", "blendshapes_json": "blendshapes.json"}})
    return {"vertices": verts, "blendshapes": bs, "openness": openness, "cylinder": cyl, "obj_uv": obj_uv}
