"""The prepared-speaker directory: its on-disk format (version 1) and a reader.

Written by pipeline.py; training, fitting, evaluation and the report read it through this
module, the only reader of these files. Layout of SPEAKER_DIR (all arrays are .npy,
memory-mappable; N = usable frames over all takes, in take order):

    meta.json                  format, version, takes (with their jump cuts), reference, cylinder,
                               options (written last)
    vertices.npy               (N, 468, 3) float32  normalized vertices (Section 3.1.1)
    landmarks.npy              (N, 468, 3) float32  tracked landmarks, image pixels (y down)
    poses.npz                  scale (N,), rotation (N, 3, 3), translation (N, 3): image(y-up) -> normalized
    atlas.npy                  (N, 256, 256, 3) uint8  lighting-normalized texture atlases
    lips.npy                   (N, 128, 128, 3) uint8  the lip crop of atlas.npy (meta: lip_box)
    gain.npy                   (N, 64, 64) float16  IRLS luminance gain G, 4x downsampled
    color_transform.npy        (N, 2, 3) float32  per frame {a, b} of F^n = a F^l + b
    spectrograms.npy           (N, 256, 24, 2) float32  complex STFT (freq, time, re/im) per frame
    frame_index.npy            (N, 2) int32  (take, frame number within the take)
    frame_times.npy            (N,) float64  seconds from the take's first frame
    reference_vertices.npy     (468, 3) float32  the normalized reference face
    reference_atlas.png        the reference atlas before lighting normalization
    reference_atlas_normalized.png   after specularity removal and symmetry normalization
    report/index.html          what a person looks at (report.py)

Must not: compute anything; it only names, validates and opens files.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DatasetError
from ..core.storage import read_versioned_json
from ..face.geometry import ATLAS_SIZE, LIP_SIZE, CylinderMap

FORMAT = "lipsync3d-speaker"
FORMAT_VERSION = 1
META = "meta.json"
ARRAYS = {  # name -> (file, per-frame shape, dtype)
    "vertices": ("vertices.npy", (468, 3), "float32"),
    "landmarks": ("landmarks.npy", (468, 3), "float32"),
    "atlas": ("atlas.npy", (ATLAS_SIZE, ATLAS_SIZE, 3), "uint8"),
    "lips": ("lips.npy", (LIP_SIZE, LIP_SIZE, 3), "uint8"),
    "gain": ("gain.npy", (64, 64), "float16"),
    "color_transform": ("color_transform.npy", (2, 3), "float32"),
    "spectrograms": ("spectrograms.npy", (256, 24, 2), "float32"),
    "frame_index": ("frame_index.npy", (2,), "int32"),
    "frame_times": ("frame_times.npy", (), "float64"),
}
POSES = "poses.npz"
REFERENCE_VERTICES = "reference_vertices.npy"
REFERENCE_ATLAS = "reference_atlas.png"                        # before lighting normalization
REFERENCE_ATLAS_NORMALIZED = "reference_atlas_normalized.png"  # after it (the lips are predicted in this space)
BLENDSHAPES = "blendshapes.npy"     # (N, 52) float32 ARKit coefficients, written by `lipsync fit` (rig/fitting.py)


@dataclass(frozen=True)
class SpeakerDataset:
    """An opened, validated speaker directory (arrays are read-only memory maps)."""

    path: Path
    meta: dict
    arrays: dict

    def __len__(self) -> int:
        return int(self.meta["frames"])

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    @property
    def cylinder(self) -> CylinderMap:
        return CylinderMap.from_dict(self.meta["cylinder"])

    @property
    def reference_vertices(self) -> np.ndarray:
        return load_array(self.path / REFERENCE_VERTICES)

    @property
    def cuts(self) -> dict[int, list[int]]:
        """{take: frame numbers that start a new shot} (jump cuts found by prepare; none in older directories)."""
        return {k: t["cuts"] for k, t in enumerate(self.meta.get("takes", [])) if t.get("cuts")}

    @property
    def breaks(self) -> np.ndarray:
        """(N,) bool: True where a frame does not continue the previous one (take, gap or jump cut)."""
        return segment_breaks(np.asarray(self.frame_index), self.cuts)

    def reference_atlas(self, normalized: bool = True) -> np.ndarray:
        """(256, 256, 3) uint8 RGB reference atlas (lighting-normalized or raw)."""
        return read_reference_atlas(self.path, normalized)

    def reference_lips(self) -> np.ndarray:
        """(128, 128, 3) uint8 lip crop (meta lip_box) of the lighting-normalized reference atlas."""
        box = self.meta["lip_box"]
        atlas = self.reference_atlas()
        return atlas[box["row"]:box["row"] + LIP_SIZE, box["col"]:box["col"] + LIP_SIZE].copy()

    def blendshapes(self) -> np.ndarray | None:
        """(N, 52) fitted ARKit coefficients (a read-only memory map), or None before `lipsync fit`;
        DatasetError if they do not cover the frames."""
        f = self.path / BLENDSHAPES
        if not f.is_file():
            return None
        coeffs = load_array(f, mmap_mode="r")
        if len(coeffs) != len(self):
            raise DatasetError(f"{f}: {len(coeffs)} rows for {len(self)} frames; run `lipsync fit` again")
        return coeffs

    def poses(self) -> dict:
        try:
            with np.load(self.path / POSES) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{self.path / POSES}: damaged or truncated ({e})") from e


def load_array(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """One .npy file of a speaker directory; DatasetError naming it when it is damaged or cut
    short (a copy that did not finish), never numpy's own error."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise DatasetError(f"{path}: missing") from e
        raise DatasetError(f"{path}: damaged or truncated ({e}); prepare the speaker again") from e


def segment_breaks(frame_index: np.ndarray, cuts: dict[int, list[int]] | None = None) -> np.ndarray:
    """(N, 2) (take, frame) rows -> (N,) bool, True where a frame does not follow the previous one
    (a new take, a gap) or, with cuts ({take: [frame numbers]}, SpeakerDataset.cuts), starts a new shot."""
    fi = np.asarray(frame_index)
    if fi.ndim != 2 or fi.shape[1] != 2:
        raise ValueError(f"frame_index must be (N, 2), got {fi.shape}")
    out = np.ones(len(fi), bool)
    out[1:] = (fi[1:, 0] != fi[:-1, 0]) | (fi[1:, 1] != fi[:-1, 1] + 1)
    for take, frames in (cuts or {}).items():
        out |= (fi[:, 0] == take) & np.isin(fi[:, 1], frames)
    return out


def reference_atlas_files(path: Path) -> tuple[Path, Path]:
    """(raw, normalized) reference atlas PNG paths of SPEAKER_DIR (for copying them whole)."""
    return Path(path) / REFERENCE_ATLAS, Path(path) / REFERENCE_ATLAS_NORMALIZED


def read_reference_atlas(path: Path, normalized: bool = True) -> np.ndarray:
    """(256, 256, 3) uint8 RGB reference atlas of SPEAKER_DIR; DatasetError naming the file if it
    is missing, unreadable or not 256x256."""
    import cv2

    file = reference_atlas_files(path)[1 if normalized else 0]
    bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (ATLAS_SIZE, ATLAS_SIZE, 3):
        raise DatasetError(f"{file}: missing or unreadable")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_meta(path: Path) -> dict:
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise DatasetError(f"{path}: not a prepared speaker directory (no {META}; run `lipsync prepare`)")
    return read_versioned_json(meta_path, FORMAT, FORMAT_VERSION, "LipSync3D speaker directory", DatasetError)


def open_speaker(path: Path) -> SpeakerDataset:
    """Open SPEAKER_DIR read-only; raises DatasetError naming what is missing or wrong."""
    path = Path(path)
    meta = read_meta(path)
    arrays = {}
    for name, (file, shape, dtype) in ARRAYS.items():
        f = path / file
        if not f.is_file():
            raise DatasetError(f"{path}: incomplete speaker directory, {file} is missing")
        a = load_array(f, mmap_mode="r")
        if a.shape != (meta["frames"],) + shape or a.dtype != np.dtype(dtype):
            raise DatasetError(f"{f}: expected {(meta['frames'],) + shape} {dtype}, found {a.shape} {a.dtype}")
        arrays[name] = a
    return SpeakerDataset(path, meta, arrays)
