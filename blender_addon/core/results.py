"""Read what the engine writes, with the standard library only (no numpy in the add-on).

Owns: the prediction folder's manifest (result.json, format "lipsync3d-prediction" v1), the
head OBJ (vertices, cylinder UVs, triangles) and the PC2 point cache (frame by frame, so an
hour of frames never sits in memory at once; both parsed by interop.py), the blendshape animation JSON
(exports.write_coefficients_json), a model folder's config.json, and the axis conversion
between the engine's frame and Blender's.
Must not: import bpy or any engine module (interop.py is shared, stdlib only); it never writes.

Axes: the engine's normalized space is y up, z towards the viewer, x to the viewer's right
(MediaPipe's canonical face). Blender is z up with the front view looking along +y, so
engine (x, y, z) -> Blender (x, -z, y), the usual Y-up to Z-up turn (glTF's importer does
the same). The OBJ and the PC2 the engine writes are in its own frame (see docs/predict.md);
one unit is one normalized unit (about a centimetre), so the add-on scales objects by 0.01.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

from . import interop
from .interop import ObjData, PC2Header  # noqa: F401  (the PC2 and OBJ readers are interop's, shared)

PREDICTION_FORMAT, PREDICTION_VERSION = "lipsync3d-prediction", 1
MODEL_FORMAT, MODEL_VERSION = "lipsync3d-model", 1
ANIMATION_FORMAT = "lipsync3d-blendshape-animation"
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
    m = interop.read_json(folder / "result.json", "prediction manifest (result.json)", ResultError)
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
    c = interop.read_json(path, "model config", ResultError)
    if c.get("format") != MODEL_FORMAT:
        raise ResultError(f"{path}: not a LipSync3D model (format {c.get('format')!r})")
    return c


# ---------------------------------------------------------------------------------------------
# OBJ and PC2
# ---------------------------------------------------------------------------------------------

ObjMesh = ObjData    # vertices [(x, y, z)], uvs [(u, v)], faces, face_uvs (0-based), material_library


def read_obj(path: Path | str) -> ObjMesh:
    """Read the v / vt / f records of a Wavefront OBJ (negative indices allowed)."""
    return interop.read_obj(path, ResultError)


class PointCache:
    """A PC2 file opened for reading frame by frame.

    Example::

        with PointCache("head.pc2") as pc:
            xyz = pc.frame(10)      # array('f') of 3 * pc.header.points floats
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.header = interop.read_pc2_header(self.path, ResultError)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise ResultError(f"{self.path}: cannot open the point cache ({e.strerror or e})") from None

    def frame(self, index: int) -> array:
        """Frame `index` as a flat array('f') [x0, y0, z0, x1, ...] in the file's frame."""
        if not 0 <= index < self.header.samples:
            raise IndexError(f"frame {index} outside 0..{self.header.samples - 1} of {self.path}")
        return interop.read_pc2_frame(self._fh, self.header, index)

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
    d = interop.read_json(Path(path), "blendshape animation", ResultError)
    try:
        names, fps, frames = tuple(d["names"]), float(d["fps"]), d["frames"]
        if any(len(f) != len(names) for f in frames):
            raise ValueError(f"every frame must hold {len(names)} values")
        return CoefficientTrack(names, fps, [[float(v) for v in f] for f in frames])
    except (KeyError, TypeError, ValueError) as e:
        raise ResultError(f"{path}: not a blendshape animation JSON ({e})") from None
