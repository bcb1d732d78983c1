"""Read what the engine writes, with the standard library only (no numpy in the add-on).

Owns: the prediction folder's manifest (result.json, format "lipsync3d-prediction" v1), the
head OBJ (vertices, cylinder UVs, triangles), the PC2 point cache (frame by frame, so an
hour of frames never sits in memory at once), the blendshape animation JSON
(exports.write_coefficients_json), a model folder's config.json, and the axis conversion
between the engine's frame and Blender's.
Must not: import bpy or any engine module; it never writes.

Axes: the engine's normalized space is y up, z towards the viewer, x to the viewer's right
(MediaPipe's canonical face). Blender is z up with the front view looking along +y, so
engine (x, y, z) -> Blender (x, -z, y), the usual Y-up to Z-up turn (glTF's importer does
the same). The OBJ and the PC2 the engine writes are in its own frame (see docs/predict.md);
one unit is one normalized unit (about a centimetre), so the add-on scales objects by 0.01.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path

PREDICTION_FORMAT, PREDICTION_VERSION = "lipsync3d-prediction", 1
MODEL_FORMAT, MODEL_VERSION = "lipsync3d-model", 1
ANIMATION_FORMAT = "lipsync3d-blendshape-animation"
PC2_SIGNATURE = b"POINTCACHE2\0"
PC2_HEADER = struct.Struct("<12siiffi")   # signature, version, points, start frame, sample rate, samples
ATLAS_SIZE = 256                           # pixels; the engine's cylindrical texture atlas is 256 x 256


class ResultError(ValueError):
    """An engine output that is missing, unreadable or of another format; the message names the file."""


def engine_to_blender(x: float, y: float, z: float) -> tuple[float, float, float]:
    """Engine (y up, z to the viewer) -> Blender (z up, -y to the viewer).

    Example: ``engine_to_blender(1, 2, 3) == (1, -3, 2)``.
    """
    return x, -z, y


def blender_to_engine(x: float, y: float, z: float) -> tuple[float, float, float]:
    """Inverse of engine_to_blender. Example: ``blender_to_engine(1, -3, 2) == (1, 2, 3)``."""
    return x, z, -y


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise ResultError(f"{path}: unreadable {what} ({e})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: a {what} must be a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# result.json
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictionResult:
    """An opened prediction folder. files: name -> absolute path (only those present in the manifest)."""

    path: Path              # the folder
    fps: float              # frames per second of every per-frame output
    frames: int             # F
    start_s: float          # seconds into the audio of frame 0
    duration_s: float
    names: tuple            # the 52 blendshape names (ARKit order)
    files: dict             # e.g. {"pc2": Path(...), "obj": Path(...), "atlas_dir": Path(...)}
    atlas_pattern: str      # e.g. "atlas_%06d.png" (frame 0 is atlas_000000.png)
    model_id: str
    model_dir: str
    audio: str              # the audio file the prediction was made from
    manifest: dict          # everything else result.json holds

    def file(self, key: str) -> Path:
        """The absolute path of files[key]; ResultError if the manifest or the folder lacks it."""
        if key not in self.files:
            raise ResultError(f"{self.path / 'result.json'}: names no {key!r} file")
        p = self.files[key]
        if not p.exists():
            raise ResultError(f"{p}: missing (listed as {key!r} in {self.path / 'result.json'})")
        return p

    def atlas_frame(self, index: int) -> Path:
        return self.file("atlas_dir") / (self.atlas_pattern % index)


def read_prediction(folder: Path | str) -> PredictionResult:
    """Open OUT/result.json written by `lipsync predict`; ResultError naming the problem."""
    folder = Path(folder)
    if folder.name == "result.json":
        folder = folder.parent
    m = _read_json(folder / "result.json", "prediction manifest (result.json)")
    if m.get("format") != PREDICTION_FORMAT:
        raise ResultError(f"{folder / 'result.json'}: not a LipSync3D prediction (format {m.get('format')!r})")
    if int(m.get("format_version", 0)) > PREDICTION_VERSION:
        raise ResultError(f"{folder / 'result.json'}: format version {m['format_version']} is newer than this "
                          f"add-on reads ({PREDICTION_VERSION}); update the add-on")
    try:
        files = {k: folder / v for k, v in m.get("files", {}).items() if isinstance(v, str) and k != "atlas_pattern"}
        return PredictionResult(folder, float(m["fps"]), int(m["frames"]), float(m.get("start_s") or 0.0),
                                float(m.get("duration_s") or int(m["frames"]) / float(m["fps"])),
                                tuple(m.get("blendshape_names", ())), files,
                                str(m.get("files", {}).get("atlas_pattern", "atlas_%06d.png")),
                                str(m.get("model_id", "")), str(m.get("model_dir", "")), str(m.get("audio", "")), m)
    except (KeyError, TypeError, ValueError) as e:
        raise ResultError(f"{folder / 'result.json'}: incomplete prediction manifest ({e})") from None


def read_model_config(model_dir: Path | str) -> dict:
    """A trained model's config.json (format "lipsync3d-model"): cylinder, fps, dims, epochs, ..."""
    path = Path(model_dir) / "config.json"
    c = _read_json(path, "model config")
    if c.get("format") != MODEL_FORMAT:
        raise ResultError(f"{path}: not a LipSync3D model (format {c.get('format')!r})")
    return c


# ---------------------------------------------------------------------------------------------
# OBJ and PC2
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjMesh:
    """vertices: [(x, y, z)] in the file's frame; uvs: [(u, v)]; faces: [(v0, v1, v2, ...)] and
    face_uvs: the matching uv indices per corner (0-based); material_library: the mtllib name."""

    vertices: list
    uvs: list
    faces: list
    face_uvs: list
    material_library: str


def read_obj(path: Path | str) -> ObjMesh:
    """Read the v / vt / f records of a Wavefront OBJ (negative indices allowed)."""
    path = Path(path)
    verts, uvs, faces, face_uvs, mtllib = [], [], [], [], ""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise ResultError(f"{path}: cannot read the head OBJ ({e.strerror or e})") from None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "v":
                verts.append(tuple(float(x) for x in parts[1:4]))
            elif parts[0] == "vt":
                uvs.append((float(parts[1]), float(parts[2])))
            elif parts[0] == "f":
                corners = [c.split("/") for c in parts[1:]]
                faces.append(tuple(_obj_index(c[0], len(verts)) for c in corners))
                face_uvs.append(tuple(_obj_index(c[1], len(uvs)) if len(c) > 1 and c[1] else -1 for c in corners))
            elif parts[0] == "mtllib":
                mtllib = line.split(None, 1)[1].strip()
        except (ValueError, IndexError):
            raise ResultError(f"{path}:{number}: malformed OBJ line {line[:60]!r}") from None
    if not verts or not faces:
        raise ResultError(f"{path}: the OBJ has no vertices or no faces")
    return ObjMesh(verts, uvs, faces, face_uvs, mtllib)


def _obj_index(text: str, count: int) -> int:
    i = int(text)
    return i - 1 if i > 0 else count + i


@dataclass(frozen=True)
class PC2Header:
    points: int          # vertices per frame
    start_frame: float   # as written by the engine
    sample_rate: float   # frames per sample (1.0: one sample per frame)
    samples: int         # frames


class PointCache:
    """A PC2 file opened for reading frame by frame.

    Example::

        with PointCache("head.pc2") as pc:
            xyz = pc.frame(10)      # array('f') of 3 * pc.header.points floats
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise ResultError(f"{self.path}: cannot open the point cache ({e.strerror or e})") from None
        raw = self._fh.read(PC2_HEADER.size)
        if len(raw) < PC2_HEADER.size or raw[:12] != PC2_SIGNATURE:
            self._fh.close()
            raise ResultError(f"{self.path}: not a PC2 point cache (bad header)")
        _, version, points, start, rate, samples = PC2_HEADER.unpack(raw)
        self.header = PC2Header(points, start, rate, samples)
        expected = PC2_HEADER.size + samples * points * 12
        size = self.path.stat().st_size
        if version != 1 or size < expected:
            self._fh.close()
            raise ResultError(f"{self.path}: truncated or unsupported PC2 (version {version}, {size} bytes, "
                              f"{expected} expected for {samples} frames of {points} points)")

    def frame(self, index: int) -> array:
        """Frame `index` as a flat array('f') [x0, y0, z0, x1, ...] in the file's frame."""
        if not 0 <= index < self.header.samples:
            raise IndexError(f"frame {index} outside 0..{self.header.samples - 1} of {self.path}")
        n = self.header.points * 3
        self._fh.seek(PC2_HEADER.size + index * n * 4)
        out = array("f")
        out.frombytes(self._fh.read(n * 4))
        if sys.byteorder == "big":  # PC2 is little-endian
            out.byteswap()
        return out

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "PointCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Blendshape animation JSON
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CoefficientTrack:
    names: tuple      # channel names (K)
    fps: float
    frames: list      # F lists of K floats


def read_coefficients(path: Path | str) -> CoefficientTrack:
    """{"names", "fps", "frames"} of exports.write_coefficients_json."""
    d = _read_json(Path(path), "blendshape animation")
    try:
        names, fps, frames = tuple(d["names"]), float(d["fps"]), d["frames"]
        if any(len(f) != len(names) for f in frames):
            raise ValueError(f"every frame must hold {len(names)} values")
        return CoefficientTrack(names, fps, [[float(v) for v in f] for f in frames])
    except (KeyError, TypeError, ValueError) as e:
        raise ResultError(f"{path}: not a blendshape animation JSON ({e})") from None
