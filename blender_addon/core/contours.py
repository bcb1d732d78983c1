"""The bpy-free part of the cartoon line-art: reading contours.json (written by `lipsync
cartoon`) and placing a contour's points on the head, frame by frame.

Owns: the line points of one PC2 frame: the head's vertices, pushed SKIN_OFFSET outwards from
the speaker's cylinder axis so the line sits on the skin instead of in it, in Blender's frame.
Must not: import bpy (cartoon.py builds the Grease Pencil object) or any engine module.
"""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path

from . import results

SKIN_OFFSET = 0.08          # engine units (~0.8 mm) a line point is pushed outwards from the skin


def read_contours(folder: Path) -> dict:
    """contours.json of a prediction folder (written by `lipsync cartoon`)."""
    path = Path(folder) / "contours.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise results.ResultError(f"{path}: no contours yet (run the cartoon pass)") from None
    except (OSError, ValueError) as e:
        raise results.ResultError(f"{path}: unreadable contours ({e})") from None
    if doc.get("format") != "lipsync3d-contours" or not isinstance(doc.get("contours"), list):
        raise results.ResultError(f"{path}: not a LipSync3D contours file")
    return doc


def line_points(frame: array, ids: list, cylinder: dict | None) -> list:
    """Flat Blender-frame xyz of the vertices `ids` of one PC2 frame (engine frame), pushed out from the skin."""
    out = []
    cx, cz = (float(cylinder["cx"]), float(cylinder["cz"])) if cylinder else (0.0, -100.0)
    for i in ids:
        x, y, z = frame[3 * i], frame[3 * i + 1], frame[3 * i + 2]
        dx, dz = x - cx, z - cz
        norm = math.hypot(dx, dz) or 1.0
        out.extend(results.engine_to_blender(x + SKIN_OFFSET * dx / norm, y, z + SKIN_OFFSET * dz / norm))
    return out
