"""The report a person looks at after `lipsync prepare`: SPEAKER_DIR/report/index.html.

Owns: PNG sheets of sample frames with the tracked mesh, normalized meshes, atlases before
and after lighting normalization with their gain maps, the reference atlas, and the
mouth-openness curve beside the audio envelope. Reads only the speaker directory.
Must not: change the dataset.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..core import storage
from ..core.progress import Progress, ProgressCallback, no_progress  # noqa: E402
from ..face.topology import load_topology  # noqa: E402
from . import dataset  # noqa: E402
from .normalize import mouth_openness  # noqa: E402

DPI = 100


def _sample_keys(files) -> list[tuple[int, int]]:
    """(take, frame) of every sample stored as frame_<take>_<frame>."""
    return sorted(tuple(int(x) for x in k.split("_")[1:3]) for k in files if k.startswith("frame_"))


def _face_crop_with_mesh(image: np.ndarray, points_xy: np.ndarray, side: int = 320) -> np.ndarray:
    """The face (with a margin) cut out of a frame, scaled to side x side, mesh drawn over it."""
    lo, hi = points_xy.min(0), points_xy.max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * 0.65
    f = side / (2 * half)
    m = np.array([[f, 0, side / 2 - f * centre[0]], [0, f, side / 2 - f * centre[1]]])
    crop = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    pts = points_xy * f + m[:, 2]
    lines = crop.copy()
    polys = np.round(pts[load_topology().triangles] * 16).astype(np.int32)
    cv2.polylines(lines, list(polys), True, (40, 255, 120), 1, cv2.LINE_AA, shift=4)
    return cv2.addWeighted(crop, 0.45, lines, 0.55, 0)


def _save(fig, path: Path) -> None:
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _frame_global_index(ds, take: int, frame: int) -> int:
    hits = np.flatnonzero((ds.frame_index[:, 0] == take) & (ds.frame_index[:, 1] == frame))
    return int(hits[0])


def _tracking_sheet(ds, samples, keys, path):
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.3), squeeze=False)
    for ax, (take, frame) in zip(axes[0], keys):
        i = _frame_global_index(ds, take, frame)
        img = samples[f"frame_{take}_{frame}"]
        pts = (ds.landmarks[i][:, :2] + 0.5) * float(samples[f"scale_{take}_{frame}"]) - 0.5
        ax.imshow(_face_crop_with_mesh(img, pts))
        ax.set_title(f"take {take} frame {frame}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Tracked MediaPipe mesh (468 vertices, 898 triangles)")
    _save(fig, path)


def _mesh_sheet(ds, keys, path):
    tris = load_topology().triangles
    ref = ds.reference_vertices
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3.5), squeeze=False)
    for ax, (take, frame) in zip(axes[0], keys):
        v = ds.vertices[_frame_global_index(ds, take, frame)]
        ax.triplot(ref[:, 0], ref[:, 1], tris, color="0.8", lw=0.3)
        ax.triplot(v[:, 0], v[:, 1], tris, color="tab:blue", lw=0.4)
        ax.set_aspect("equal")
        ax.set_title(f"take {take} frame {frame}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Normalized vertices (blue) over the normalized reference (grey), frontal view")
    _save(fig, path)


def _atlas_sheet(samples, keys, path):
    fig, axes = plt.subplots(3, len(keys), figsize=(2.6 * len(keys), 8), squeeze=False)
    for col, (take, frame) in enumerate(keys):
        key = f"{take}_{frame}"
        axes[0, col].imshow(samples[f"raw_{key}"])
        axes[1, col].imshow(samples[f"normalized_{key}"])
        im = axes[2, col].imshow(samples[f"gain_{key}"].astype(np.float32), cmap="magma", vmin=0.5, vmax=1.5)
        axes[0, col].set_title(f"take {take} frame {frame}", fontsize=8)
        for row in range(3):
            axes[row, col].axis("off")
    for row, label in enumerate(("atlas before lighting normalization", "after", "gain G (0.5-1.5)")):
        axes[row, 0].text(-0.1, 0.5, label, transform=axes[row, 0].transAxes, rotation=90,
                          va="center", ha="right", fontsize=8)
    fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.7)
    _save(fig, path)


def _openness_plot(ds, path):
    open_ = mouth_openness(np.asarray(ds.vertices))
    spec = np.asarray(ds.spectrograms[:, :, 10:14, :], np.float32)
    env = np.sqrt((spec ** 2).sum(axis=(1, 2, 3)))
    fig, ax = plt.subplots(figsize=(12, 3))
    x = np.arange(len(open_))
    ax.plot(x, open_ / max(open_.max(), 1e-9), lw=1, label="mouth openness (normalized vertices, scaled)")
    ax.plot(x, env / max(env.max(), 1e-9), lw=0.8, alpha=0.7, label="audio envelope (spectrogram energy)")
    takes = np.flatnonzero(np.diff(ds.frame_index[:, 0]) != 0) + 0.5
    for b in takes:
        ax.axvline(b, color="0.85", lw=0.5)
    ax.set_xlabel("frame (all takes, in order)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"Mouth openness vs audio envelope; correlation {np.corrcoef(open_, env)[0, 1]:.2f}")
    _save(fig, path)


def _reference_sheet(root: Path, path: Path):
    raw, norm = dataset.read_reference_atlas(root, normalized=False), dataset.read_reference_atlas(root)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.3))
    for ax, img, title in zip(axes, (raw, norm), ("reference atlas R", "R^n: specularities removed, symmetrized")):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    _save(fig, path)


def write_report(speaker_dir: Path, on_progress: ProgressCallback = no_progress) -> Path:
    """Write SPEAKER_DIR/report/index.html and its PNG sheets; returns the HTML path."""
    root = Path(speaker_dir)
    ds = dataset.open_speaker(root)
    out = root / "report"
    out.mkdir(exist_ok=True)
    on_progress(Progress("report", 0, 5))
    with np.load(out / "samples.npz") as z:
        samples = {k: z[k] for k in z.files}
    keys = _sample_keys(samples)[:7]
    steps = [
        ("tracking.png", lambda p: _tracking_sheet(ds, samples, keys, p)),
        ("normalized_meshes.png", lambda p: _mesh_sheet(ds, keys, p)),
        ("atlases.png", lambda p: _atlas_sheet(samples, keys, p)),
        ("reference.png", lambda p: _reference_sheet(root, p)),
        ("openness.png", lambda p: _openness_plot(ds, p)),
    ]
    for n, (name, fn) in enumerate(steps, 1):
        fn(out / name)
        on_progress(Progress("report", n, len(steps)))
    return write_index(root)


SHEETS = ("tracking.png", "normalized_meshes.png", "atlases.png", "reference.png", "openness.png",
          "blendshapes.png")  # in page order; blendshapes.png appears once `lipsync fit` has run


def write_index(speaker_dir: Path) -> Path:
    """(Re)write report/index.html over the sheets that exist (later stages add theirs)."""
    root = Path(speaker_dir)
    out = root / "report"
    page = _html(dataset.read_meta(root), [n for n in SHEETS if (out / n).is_file()])
    with storage.atomic_path(out / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out / "index.html"


def _html(meta: dict, images: list[str]) -> str:
    rows = "".join(f"<tr><td>{html.escape(t['name'])}</td><td>{t['frames']}</td><td>{t['usable_frames']}</td>"
                   f"<td>{html.escape(t['excluded'] or '-')}</td>"
                   f"<td>{', '.join(map(str, t.get('cuts') or [])) or '-'}</td></tr>" for t in meta["takes"])
    imgs = "".join(f'<h2>{html.escape(n[:-4].replace("_", " "))}</h2><img src="{n}" style="max-width:100%">'
                   for n in images)
    timings = html.escape(json.dumps(meta.get("timings", {})))
    return (f"<!doctype html><meta charset='utf-8'><title>LipSync3D speaker report</title>"
            f"<body style='font-family:sans-serif;max-width:1400px;margin:auto'>"
            f"<h1>Prepared speaker: {meta['frames']} frames from {len(meta['takes'])} take(s)</h1>"
            f"<p>Reference frame: take {meta['reference']['take']}, frame {meta['reference']['frame']}. "
            f"Timings (s): {timings}</p>"
            f"<table border=1 cellpadding=3><tr><th>take</th><th>frames</th><th>usable</th><th>excluded</th>"
            f"<th>jump cuts (frames)</th></tr>"
            f"{rows}</table>{imgs}</body>")
