"""The report a person looks at after `lipsync prepare`: SPEAKER_DIR/report/index.html.

Owns: PNG sheets of sample frames with the tracked mesh, normalized meshes, atlases before
and after lighting normalization with their gain maps, the reference atlas, and the
mouth-openness curve beside the audio envelope. The sheets are drawn with OpenCV (about
0.1 s for all five; matplotlib took 1.3 s and 0.4 s more to import), from arrays, so that
prepare draws them while it assembles the dataset; `write_report` draws them again from a
speaker directory. Must not: change the dataset.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import numpy as np

from ..core import storage
from ..core.progress import Progress, ProgressCallback, no_progress
from ..face.topology import load_topology
from . import dataset

FONT = cv2.FONT_HERSHEY_SIMPLEX
INK = (30, 30, 30)
PAPER = 255
GREY = (200, 200, 200)
BLUE = (31, 119, 180)       # the first two colours of matplotlib's default cycle, as before
ORANGE = (255, 127, 14)
PAD = 12
TILE = 256                  # atlases and other tiles are shown at 256 x 256
GAIN_RANGE = (0.5, 1.5)     # gain map colours


def sample_keys(files) -> list[tuple[int, int]]:
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


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, color=INK, center: bool = False) -> None:
    """Draw text with its baseline at y (centred on x when center)."""
    if center:
        x -= cv2.getTextSize(text, FONT, scale, 1)[0][0] // 2
    cv2.putText(img, text, (int(x), int(y)), FONT, scale, color, 1, cv2.LINE_AA)


def _sheet(rows: list[list[np.ndarray]], title: str, captions: list[str], row_labels=(), right=None) -> np.ndarray:
    """Tiles (all the same size) in rows on white paper, a caption above each column, the
    title on top, optional labels left of the rows and an optional panel on the right."""
    th, tw = rows[0][0].shape[:2]
    left = max((cv2.getTextSize(t, FONT, 0.4, 1)[0][0] for t in row_labels), default=0) + (PAD if row_labels else 0)
    cols = max(len(r) for r in rows)
    column = max([tw] + [cv2.getTextSize(c, FONT, 0.4, 1)[0][0] for c in captions])  # a caption may be wider
    width = PAD + left + cols * (column + PAD) + (right.shape[1] + PAD if right is not None else 0)
    top = 2 * PAD + 34
    img = np.full((top + len(rows) * (th + PAD) + PAD, width, 3), PAPER, np.uint8)
    _text(img, title, width // 2, PAD + 14, 0.55, center=True)
    for c, caption in enumerate(captions):
        _text(img, caption, PAD + left + c * (column + PAD) + column // 2, top - 8, 0.4, center=True)
    for r, row in enumerate(rows):
        y = top + r * (th + PAD)
        for c, tile in enumerate(row):
            x = PAD + left + c * (column + PAD) + (column - tw) // 2
            img[y:y + th, x:x + tw] = tile
        if r < len(row_labels):
            _text(img, row_labels[r], PAD, y + th // 2, 0.4)
    if right is not None:
        x = width - right.shape[1] - PAD
        img[top:top + right.shape[0], x:x + right.shape[1]] = right
    return img


def _save(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    with storage.atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _tracking_sheet(samples: dict, keys, landmarks: dict) -> np.ndarray:
    tiles = []
    for take, frame in keys:
        img = samples[f"frame_{take}_{frame}"]
        pts = (np.asarray(landmarks[take, frame])[:, :2] + 0.5) * float(samples[f"scale_{take}_{frame}"]) - 0.5
        tiles.append(_face_crop_with_mesh(img, pts, TILE))
    return _sheet([tiles], "Tracked MediaPipe mesh (468 vertices, 898 triangles)",
                  [f"take {t} frame {f}" for t, f in keys])


def _mesh_sheet(vertices: dict, reference: np.ndarray, keys) -> np.ndarray:
    """Frontal view (x right, y up) of each frame's normalized mesh over the reference's."""
    tris = load_topology().triangles
    ref = np.asarray(reference, np.float64)[:, :2]
    lo, hi = ref.min(0), ref.max(0)
    scale = (TILE - 24) / (hi - lo).max() / 1.1
    centre = (lo + hi) / 2

    def draw(tile, v, color):
        xy = (np.asarray(v, np.float64)[:, :2] - centre) * scale * [1, -1] + TILE / 2
        cv2.polylines(tile, list(np.round(xy[tris] * 16).astype(np.int32)), True, color, 1, cv2.LINE_AA, shift=4)

    tiles = []
    for key in keys:
        tile = np.full((TILE, TILE, 3), PAPER, np.uint8)
        draw(tile, ref, GREY)
        draw(tile, vertices[key], BLUE)
        tiles.append(tile)
    return _sheet([tiles], "Normalized vertices (blue) over the normalized reference (grey), frontal view",
                  [f"take {t} frame {f}" for t, f in keys])


def _gain_colours(gain: np.ndarray) -> np.ndarray:
    lo, hi = GAIN_RANGE
    g = np.clip((np.asarray(gain, np.float32) - lo) / (hi - lo), 0, 1)
    bgr = cv2.applyColorMap(np.round(g * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _gain_bar(height: int) -> np.ndarray:
    """A vertical colour bar of the gain colours, GAIN_RANGE bottom to top, with ticks."""
    bar = np.full((height, 70, 3), PAPER, np.uint8)
    ramp = np.linspace(GAIN_RANGE[1], GAIN_RANGE[0], height)[:, None].repeat(16, 1)
    bar[:, :16] = _gain_colours(ramp)
    for value in np.linspace(*GAIN_RANGE, 5):
        y = int(round((GAIN_RANGE[1] - value) / (GAIN_RANGE[1] - GAIN_RANGE[0]) * (height - 1)))
        cv2.line(bar, (16, y), (20, y), INK, 1)
        _text(bar, f"{value:.2f}", 23, min(max(y + 4, 10), height - 2), 0.35)
    return bar


def _atlas_sheet(samples: dict, keys) -> np.ndarray:
    rows = [[], [], []]
    for take, frame in keys:
        key = f"{take}_{frame}"
        rows[0].append(samples[f"raw_{key}"])
        rows[1].append(samples[f"normalized_{key}"])
        gain = cv2.resize(np.asarray(samples[f"gain_{key}"], np.float32), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        rows[2].append(_gain_colours(gain))
    return _sheet(rows, "Atlases before and after lighting normalization, and the gain G",
                  [f"take {t} frame {f}" for t, f in keys],
                  ("before lighting normalization", "after", "gain G (0.5-1.5)"), right=_gain_bar(TILE))


def _reference_sheet(raw: np.ndarray, normalized: np.ndarray) -> np.ndarray:
    return _sheet([[raw, normalized]], "Reference atlas",
                  ["reference atlas R", "normalized: no specularities, symmetrized"])


def _openness_plot(openness: np.ndarray, envelope: np.ndarray, take_of_frame: np.ndarray) -> np.ndarray:
    """Both curves scaled to [0, 1] over the frames of all takes, takes separated by grey lines."""
    w, h, left, top, bottom = 1200, 300, 50, 40, 40
    img = np.full((h, w, 3), PAPER, np.uint8)
    x0, x1, y0, y1 = left, w - 20, top, h - bottom
    n = len(openness)
    r = np.corrcoef(openness, envelope)[0, 1] if n > 1 and np.std(openness) > 0 and np.std(envelope) > 0 else np.nan
    _text(img, f"Mouth openness vs audio envelope; correlation {r:.2f}", w // 2, 22, 0.5, center=True)

    def px(i):
        return x0 + (np.asarray(i, np.float64)) * (x1 - x0) / max(n - 1, 1)

    for b in np.flatnonzero(np.diff(take_of_frame) != 0) + 0.5:
        xb = int(round(px(b)))
        cv2.line(img, (xb, y0), (xb, y1), (220, 220, 220), 1)
    step = max(1, int(10 ** np.floor(np.log10(max(n, 1) / 5))))
    step *= 5 if n / step > 25 else 2 if n / step > 10 else 1
    for i in range(0, n, step):
        xt = int(round(px(i)))
        cv2.line(img, (xt, y1), (xt, y1 + 4), INK, 1)
        _text(img, str(i), xt, y1 + 17, 0.35, center=True)
    for v in (0.0, 0.5, 1.0):
        yt = int(round(y1 - v * (y1 - y0)))
        cv2.line(img, (x0 - 4, yt), (x0, yt), INK, 1)
        _text(img, f"{v:.1f}", 12, yt + 4, 0.35)
    _text(img, "frame (all takes, in order)", (x0 + x1) // 2, h - 6, 0.4, center=True)
    for curve, color in ((envelope, ORANGE), (openness, BLUE)):
        c = np.asarray(curve, np.float64)
        c = c / max(float(np.nanmax(c)) if n else 0.0, 1e-9)
        pts = np.stack([px(np.arange(n)), y1 - np.nan_to_num(c) * (y1 - y0)], 1)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, color, 1, cv2.LINE_AA, shift=4)
    cv2.rectangle(img, (x0, y0), (x1, y1), INK, 1)
    for row, (label, color) in enumerate((("mouth openness (normalized vertices, scaled)", BLUE),
                                          ("audio envelope (spectrogram energy)", ORANGE))):
        y = y0 + 14 + 16 * row
        cv2.line(img, (x1 - 330, y - 4), (x1 - 305, y - 4), color, 2)
        _text(img, label, x1 - 300, y, 0.38)
    return img


def spectrogram_envelope(spectrograms: np.ndarray) -> np.ndarray:
    """(N,) audio envelope of the report: energy of the 4 spectrogram columns around each frame."""
    spec = np.asarray(spectrograms[:, :, 10:14, :], np.float32)
    return np.sqrt((spec ** 2).sum(axis=(1, 2, 3)))


def draw_sheets(out: Path, samples: dict, landmarks: dict, vertices: dict, reference_vertices: np.ndarray,
                reference_atlases: tuple[np.ndarray, np.ndarray]) -> None:
    """tracking.png, normalized_meshes.png, atlases.png and reference.png into folder `out`.

    samples : the arrays of report/samples.npz; landmarks, vertices : {(take, frame): (468, 3)}
    of the sample frames; reference_atlases : (R, R^n) uint8 RGB.
    """
    draw_frame_sheets(out, samples, landmarks)
    draw_mesh_sheets(out, samples, vertices, reference_vertices, reference_atlases)


def draw_frame_sheets(out: Path, samples: dict, landmarks: dict) -> None:
    """tracking.png and atlases.png (draw_sheets' arguments): about half of draw_sheets' cost,
    so that two threads draw the two halves (OpenCV's drawing and PNG encoding release the GIL)."""
    keys = sample_keys(samples)[:7]
    _save(out / "tracking.png", _tracking_sheet(samples, keys, landmarks))
    _save(out / "atlases.png", _atlas_sheet(samples, keys))


def draw_mesh_sheets(out: Path, samples: dict, vertices: dict, reference_vertices: np.ndarray,
                     reference_atlases: tuple[np.ndarray, np.ndarray]) -> None:
    """normalized_meshes.png and reference.png (draw_sheets' arguments): the other half."""
    _save(out / "normalized_meshes.png", _mesh_sheet(vertices, reference_vertices, sample_keys(samples)[:7]))
    _save(out / "reference.png", _reference_sheet(*reference_atlases))


def draw_openness(out: Path, openness: np.ndarray, envelope: np.ndarray, take_of_frame: np.ndarray) -> None:
    """openness.png into folder `out`: (N,) mouth openness and audio envelope, (N,) take of each frame."""
    _save(out / "openness.png", _openness_plot(openness, envelope, take_of_frame))


def write_report(speaker_dir: Path, on_progress: ProgressCallback = no_progress) -> Path:
    """Write SPEAKER_DIR/report/index.html and its PNG sheets; returns the HTML path."""
    from .normalize import mouth_openness

    root = Path(speaker_dir)
    ds = dataset.open_speaker(root)
    out = root / "report"
    out.mkdir(exist_ok=True)
    on_progress(Progress("report", 0, 2))
    with np.load(out / "samples.npz") as z:
        samples = {k: z[k] for k in z.files}
    index = {(int(t), int(f)): i for i, (t, f) in enumerate(np.asarray(ds.frame_index))}
    keys = sample_keys(samples)[:7]
    draw_sheets(out, samples, {k: ds.landmarks[index[k]] for k in keys}, {k: ds.vertices[index[k]] for k in keys},
                ds.reference_vertices, (dataset.read_reference_atlas(root, normalized=False),
                                        dataset.read_reference_atlas(root)))
    on_progress(Progress("report", 1, 2))
    draw_openness(out, mouth_openness(np.asarray(ds.vertices)), spectrogram_envelope(ds.spectrograms),
                  np.asarray(ds.frame_index)[:, 0])
    on_progress(Progress("report", 2, 2))
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
