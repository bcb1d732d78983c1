"""Mesh files for other tools: PC2 point caches and Wavefront OBJ heads with UVs.

Owns: the PC2 format (Blender's Mesh Cache modifier, 3ds Max, Houdini read it; a 32-byte
little-endian header "POINTCACHE2\\0", version 1, points, start frame, sample rate, samples,
then samples x points x (x, y, z) float32), written frame block by frame block so that an
hour of frames never sits in memory, and read back; an OBJ of one mesh with per-vertex UVs
and a .mtl naming its texture, and its reader (the parsing of both is core/interop.py's,
shared with the Blender add-on).

Axes: what it is given (the engine writes its normalized frame: y up, z towards the viewer,
~cm; docs/predict.md says how to import that into Blender's z-up world).
Must not: know what the vertices mean, or import torch/bpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import interop, storage
from ..core.errors import InputError
from ..core.interop import PC2_HEADER, PC2_SIGNATURE, PC2_VERSION, PC2Header  # noqa: F401  (the shared format)

UV_DECIMALS = 6                            # digits of OBJ texture coordinates
XYZ_DECIMALS = 6                           # digits of OBJ vertex positions


class PC2Writer:
    """Append frames to a PC2 file whose frame count is known up front.

    Example::

        with PC2Writer(path, points=468, frames=100) as pc:
            pc.write(vertices[:50]); pc.write(vertices[50:])   # (n, 468, 3) blocks
    """

    def __init__(self, path: Path | str, points: int, frames: int, start_frame: float = 0.0,
                 sample_rate: float = 1.0):
        if points < 1 or frames < 0:
            raise ValueError(f"need points >= 1 and frames >= 0, got {points}, {frames}")
        self.path, self.points, self.frames, self.written = Path(path), int(points), int(frames), 0
        self._fh = open(self.path, "wb")
        self._fh.write(PC2_HEADER.pack(PC2_SIGNATURE, PC2_VERSION, self.points, float(start_frame),
                                       float(sample_rate), self.frames))

    def write(self, vertices: np.ndarray) -> None:
        """Append (n, points, 3) positions (any float dtype; stored as little-endian float32)."""
        v = np.asarray(vertices)
        if v.ndim != 3 or v.shape[1:] != (self.points, 3):
            raise ValueError(f"expected (n, {self.points}, 3) vertices, got {v.shape}")
        if self.written + len(v) > self.frames:
            raise ValueError(f"{self.path.name}: more than the {self.frames} frames announced")
        self._fh.write(np.ascontiguousarray(v, "<f4").tobytes())
        self.written += len(v)

    def close(self) -> None:
        self._fh.close()
        if self.written != self.frames:
            raise ValueError(f"{self.path.name}: {self.written} frames written, {self.frames} announced")

    def abort(self) -> None:
        """Close without the frame-count check (the caller deletes the file)."""
        self._fh.close()

    def __enter__(self) -> "PC2Writer":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.close() if exc_type is None else self.abort()


def write_pc2(path: Path | str, vertices: np.ndarray, start_frame: float = 0.0) -> None:
    """Write (F, V, 3) vertices as a PC2 file, atomically."""
    v = np.asarray(vertices)
    if v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"vertices must be (frames, points, 3), got {v.shape}")
    with storage.atomic_path(Path(path)) as tmp:
        with PC2Writer(tmp, v.shape[1], v.shape[0], start_frame) as pc:
            pc.write(v)


def read_pc2_header(path: Path | str) -> PC2Header:
    """The header of a PC2 file; InputError if it is not one or is shorter than it says."""
    return interop.read_pc2_header(path, InputError)


def read_pc2(path: Path | str, mmap: bool = True) -> tuple[PC2Header, np.ndarray]:
    """(header, (samples, points, 3) float32 positions); a read-only memory map by default."""
    h = read_pc2_header(path)
    shape = (h.samples, h.points, 3)
    if mmap and h.samples:
        return h, np.memmap(path, "<f4", "r", offset=PC2_HEADER.size, shape=shape)
    with open(path, "rb") as f:
        f.seek(PC2_HEADER.size)
        data = np.frombuffer(f.read(h.samples * h.points * 12), "<f4")
    return h, data.reshape(shape)


# ---------------------------------------------------------------------------------------------
# OBJ
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjMesh:
    vertices: np.ndarray     # (V, 3) float64
    uvs: np.ndarray          # (T, 2) float64 OBJ texture coordinates (v up)
    faces: np.ndarray        # (F, 3) int64 vertex indices, 0-based
    face_uvs: np.ndarray     # (F, 3) int64 uv indices, 0-based (-1 where a corner has none)
    material_library: str    # the mtllib file name ("" if none)


def write_obj(path: Path | str, vertices: np.ndarray, triangles: np.ndarray, uvs: np.ndarray | None = None,
              texture: str | None = None, name: str = "head") -> None:
    """Write one mesh as OBJ (+ a .mtl beside it when `texture` is given), atomically.

    vertices : (V, 3); triangles : (F, 3) 0-based, counter-clockwise seen from outside;
    uvs : optional (V, 2) OBJ texture coordinates in [0, 1] (v up), one per vertex (the face
    corners use the vertex's own index); texture : image file name the material points at.
    Vertex order is kept, so a PC2 of the same vertex count drives the imported mesh.
    """
    path = Path(path)
    v, t = np.asarray(vertices, np.float64), np.asarray(triangles, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"need (V, 3) vertices and (F, 3) triangles, got {v.shape}, {t.shape}")
    lines = [f"# {name}: {len(v)} vertices, {len(t)} triangles (LipSync3D engine)"]
    if texture:
        mtl = path.with_suffix(".mtl")
        _write_text(mtl, f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture}\n")
        lines += [f"mtllib {mtl.name}"]
    lines += [f"o {name}"] + [f"v {x:.{XYZ_DECIMALS}f} {y:.{XYZ_DECIMALS}f} {z:.{XYZ_DECIMALS}f}" for x, y, z in v]
    if uvs is not None:
        uv = np.asarray(uvs, np.float64)
        if uv.shape != (len(v), 2):
            raise ValueError(f"uvs must be ({len(v)}, 2), got {uv.shape}")
        lines += [f"vt {a:.{UV_DECIMALS}f} {b:.{UV_DECIMALS}f}" for a, b in uv]
    if texture:
        lines += [f"usemtl {name}"]
    lines += ["s 1"]
    if uvs is not None:
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in t + 1]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in t + 1]
    _write_text(path, "\n".join(lines) + "\n")


def _write_text(path: Path, text: str) -> None:
    with storage.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_obj(path: Path | str) -> ObjMesh:
    """Read v / vt / f records (triangles; negative indices allowed); InputError naming the line."""
    d = interop.read_obj(path, InputError, triangles=True)
    return ObjMesh(np.asarray(d.vertices, np.float64), np.asarray(d.uvs, np.float64).reshape(-1, 2),
                   np.asarray(d.faces, np.int64), np.asarray(d.face_uvs, np.int64), d.material_library)
