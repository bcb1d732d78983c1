"""Cartoon rendering of the talking face (paper Section 3.3, "Cartoon rendering").

"We create a cartoon rendering of the textured mesh (or video) by combining bilateral
filtering with a line drawing of the facial features: we identify nose, lips, cheeks and
chin contours in the synthesized face mesh, and draw them prominently over the filtered
texture or video frame."

Owns: the contour polylines as vertex indices of the MediaPipe topology (data below), the
frontal orthographic view of a head in the speaker's normalized space, the textured
frontal render (atlas through the cylinder UVs of each frame's vertices, warp.py), the
bilateral-filter + line-drawing style, and the `lipsync cartoon PREDICTION_DIR` step: a
cartoon image sequence, per-frame contour polylines (contours.json + contours.npz), a
preview MP4, and the new entries in the prediction's result.json (rewritten atomically).
Must not: predict, track, or import bpy/torch.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import cv2
import numpy as np

from ..core import jobs, storage
from ..core.errors import InputError
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..face.geometry import CylinderMap
from ..face.topology import load_topology
from ..face.warp import Raster
from ..inference.render import FrontalCamera
from ..io import media
from ..io import videowriter

PREDICTION_FORMAT = "lipsync3d-prediction"
CONTOURS_FORMAT = "lipsync3d-contours"
CONTOURS_FORMAT_VERSION = 1
CARTOON_DIR, CARTOON_PATTERN = "cartoon", "cartoon_%06d.png"
CONTOURS_JSON, CONTOURS_NPZ, CARTOON_PREVIEW = "contours.json", "contours.npz", "cartoon_preview.mp4"
MIN_PARALLEL_FRAMES = 100  # fewer frames are rendered in this process
MAX_JOB_FRAMES = 250      # most frames per worker job (progress and cancellation granularity)
MAX_RENDER_SIDE = 288     # pixels: larger cartoon frames are rendered and filtered at this side, then resized
VIEW_MARGIN = 0.06        # empty border around the head in the frontal view (fraction of the side)
LINE_SHIFT = 4            # cv2 fixed-point bits: polylines are drawn at 1/16-pixel precision
CURVE_STEPS = 4           # Catmull-Rom samples per contour segment (rounds the mesh's corners)
PREVIEW_AUDIO_RATE = 48000  # Hz of the preview's AAC track
PREVIEW_CRF, PREVIEW_PRESET = 20, "veryfast"  # H.264 quality and speed of the preview
BILATERAL_DIAMETER = 5    # pixels of the bilateral filter's neighbourhood (per pass)
BILATERAL_SIGMA_COLOR = 28.0  # intensity levels (0-255) of the bilateral range kernel at strength 1
BILATERAL_SIGMA_SPACE = 4.0   # pixels of the bilateral spatial kernel

# The contours, as vertex-index polylines on MediaPipe's canonical face mesh (picked from a
# labelled plot of canonical_face_model.obj; left ones are the topology.mirror of the right
# ones). The lip and eye loops come from the mesh's own contour data (topology.py).
NOSE = (209, 129, 64, 98, 97, 2, 326, 327, 294, 358, 429)          # lower outline of the nose, wing to wing
CHEEK_RIGHT = (203, 206, 216, 212)     # nasolabial fold: beside the nostril, down past the mouth corner
CHEEK_LEFT = (423, 426, 436, 432)
CHIN = (182, 83, 18, 313, 406)         # the crease under the lower lip, above the chin
JAW = (93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323)  # lower face oval
BROW_RIGHT = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)           # lower edge out-to-in, upper edge back
BROW_LEFT = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
FEATURES = ("lips_outer", "lips_inner", "nose", "cheek_right", "cheek_left", "chin", "jaw",
            "eye_right", "eye_left", "brow_right", "brow_left")


@dataclass(frozen=True)
class Contour:
    name: str                 # one of FEATURES
    ids: tuple[int, ...]      # MediaPipe vertex indices along the line
    closed: bool              # True: the line returns to its first vertex


def contours(features: tuple[str, ...] = FEATURES) -> list[Contour]:
    """The contour polylines for `features` (names of FEATURES), in that order."""
    topo = load_topology()
    table = {
        "lips_outer": (topo.lips_outer, True), "lips_inner": (topo.lips_inner, True),
        "nose": (NOSE, False), "cheek_right": (CHEEK_RIGHT, False), "cheek_left": (CHEEK_LEFT, False),
        "chin": (CHIN, False), "jaw": (JAW, False), "eye_right": (topo.right_eye, True),
        "eye_left": (topo.left_eye, True), "brow_right": (BROW_RIGHT, True), "brow_left": (BROW_LEFT, True),
    }
    unknown = [f for f in features if f not in table]
    if unknown:
        raise ValueError(f"unknown cartoon feature(s) {unknown}; choose from {FEATURES}")
    return [Contour(f, tuple(int(i) for i in table[f][0]), table[f][1]) for f in features]


@dataclass(frozen=True)
class CartoonOptions:
    size: int = 512                                   # side of the square frontal rendering (pixels)
    line_width: float = 3.0                           # contour line width (pixels of the output image)
    line_color: tuple[int, int, int] = (30, 22, 20)   # contour colour, RGB 0-255
    filter_strength: float = 1.0                      # bilateral filtering: 0 = off, 1 = default, 2 = stronger
    filter_passes: int = 2                            # bilateral passes (more = flatter, cartoon-like)
    color_levels: int = 12                            # posterization levels per channel (0 = off)
    background: tuple[int, int, int] = (236, 232, 222)  # RGB behind the head in the frontal render
    features: tuple[str, ...] = FEATURES              # contours to draw (names of FEATURES)
    preview: bool = True                              # also write cartoon_preview.mp4 (with the audio)

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096 or self.size % 2:
            raise ValueError(f"size must be an even number of pixels in [16, 4096], got {self.size}")
        if not 0 < self.line_width <= 64:
            raise ValueError(f"line_width must be in (0, 64] pixels, got {self.line_width}")
        if self.filter_strength < 0 or self.filter_passes < 0 or self.color_levels < 0 or self.color_levels == 1:
            raise ValueError("filter_strength, filter_passes and color_levels must be >= 0 (color_levels != 1)")
        for name in ("line_color", "background"):
            c = getattr(self, name)
            if len(c) != 3 or not all(0 <= int(v) <= 255 for v in c):
                raise ValueError(f"{name} must be three integers in 0..255, got {c}")
        contours(self.features)  # validates the names


# ----------------------------------------------------------------------------- frontal view

def frontal_view(vertices: np.ndarray, size: int, margin: float = VIEW_MARGIN) -> FrontalCamera:
    """The frontal camera (render.py's) that frames (V, 3) or (F, V, 3) normalized vertices, all frames."""
    xy = np.asarray(vertices, np.float64)[..., :2].reshape(-1, 2)
    lo, hi = xy.min(0), xy.max(0)
    scale = size * (1.0 - 2.0 * margin) / max(float((hi - lo).max()), 1e-9)
    return FrontalCamera(int(size), (float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2)), float(scale))


def render_frontal(atlas: np.ndarray, vertices: np.ndarray, cylinder: CylinderMap, view: FrontalCamera,
                   background=(0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """The textured head seen from the front.

    atlas : (256, 256, 3) uint8 texture of this frame; vertices : (468, 3) normalized.
    The atlas is sampled at cylinder.project(vertices) (each frame's own texture
    coordinates, as prepare unrolled it); where triangles overlap the nearest (largest z)
    wins. Returns (image (size, size, 3) uint8, coverage (size, size) bool).
    """
    topo = load_topology()
    v = np.asarray(vertices, np.float64)
    if v.shape != (topo.vertices.shape[0], 3):
        raise ValueError(f"vertices must have shape (468, 3), got {v.shape}")
    size = view.size
    raster = Raster(view.project(v) - 0.5, topo.triangles, (size, size), depth=v[:, 2])  # pixel centres
    out = raster.warp(np.asarray(atlas), cylinder.project(v))
    out[~raster.mask] = np.asarray(background, np.uint8)
    return out, raster.mask


def render_cartoon(atlas: np.ndarray, vertices: np.ndarray, cylinder: CylinderMap, view: FrontalCamera,
                   options: CartoonOptions, lines: list[Contour]) -> tuple[np.ndarray, np.ndarray]:
    """One cartoon frame of a head: (image (size, size, 3) uint8, vertices in its pixels (468, 2)).

    The head is rendered and filtered at most MAX_RENDER_SIDE pixels wide, then resized: the
    atlas holds no finer detail (the face spans ~230 of its 256 columns) and rendering and
    filtering cost ~3x less; the lines are drawn at the full size, sub-pixel.
    """
    side = min(view.size, MAX_RENDER_SIDE)
    small = replace(view, size=side, scale=view.scale * side / view.size)
    face, mask = render_frontal(atlas, vertices, cylinder, small, options.background)
    face = stylize(face, options)
    face[~mask] = np.asarray(options.background, np.uint8)   # flat: not filtered or posterized
    if side != view.size:
        face = cv2.resize(face, (view.size, view.size), interpolation=cv2.INTER_LINEAR)
    pts = view.project(vertices) - 0.5
    image = draw_contours(face, contour_points(pts, lines), [c.closed for c in lines], options.line_width,
                          options.line_color)
    return image, pts


# ----------------------------------------------------------------------------- style

def stylize(image: np.ndarray, options: CartoonOptions) -> np.ndarray:
    """Bilateral filtering (edge-preserving smoothing), then optional posterization; uint8 in and out."""
    out = np.ascontiguousarray(image)
    sigma = BILATERAL_SIGMA_COLOR * options.filter_strength
    if sigma > 0:
        for _ in range(options.filter_passes):
            out = cv2.bilateralFilter(out, BILATERAL_DIAMETER, sigma, BILATERAL_SIGMA_SPACE)
    if options.color_levels:
        step = 256.0 / options.color_levels
        lut = np.clip((np.floor(np.arange(256) / step) + 0.5) * step, 0, 255).astype(np.uint8)
        out = cv2.LUT(out, lut)
    return out


def contour_points(points: np.ndarray, lines: list[Contour]) -> list[np.ndarray]:
    """Each contour's vertices taken from (468, D) points: a list of (n_i, D) arrays."""
    p = np.asarray(points)
    return [p[list(c.ids)] for c in lines]


def smooth_polyline(points: np.ndarray, closed: bool, steps: int = CURVE_STEPS) -> np.ndarray:
    """A centripetal Catmull-Rom curve through (n, 2) points, `steps` samples per segment.

    The curve passes through every point (the samples at t = 0 are the points themselves),
    so the drawn line keeps to the mesh contour; it only rounds the corners between them.
    The centripetal parametrization (knot spacing sqrt(chord)) neither overshoots at sharp
    turns nor loops (Yuksel et al. 2011), e.g. at the corners of a closed mouth.
    """
    p = np.asarray(points, np.float64)
    if len(p) < 3 or steps < 2:
        return p
    ext = np.vstack([p[-1:], p, p[:2]]) if closed else np.vstack([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
    segments = len(p) if closed else len(p) - 1
    q = [ext[i:i + segments][:, None, :] for i in range(4)]                     # 4 x (segments, 1, 2)
    dt = [np.maximum(np.linalg.norm(q[i + 1] - q[i], axis=-1, keepdims=True) ** 0.5, 1e-6) for i in range(3)]
    t0, t1 = np.zeros_like(dt[0]), dt[0]
    t2, t3 = t1 + dt[1], t1 + dt[1] + dt[2]
    t = t1 + (t2 - t1) * (np.arange(steps) / steps)[None, :, None]              # (segments, steps, 1)
    a1 = ((t1 - t) * q[0] + (t - t0) * q[1]) / (t1 - t0)
    a2 = ((t2 - t) * q[1] + (t - t1) * q[2]) / (t2 - t1)
    a3 = ((t3 - t) * q[2] + (t - t2) * q[3]) / (t3 - t2)
    b1 = ((t2 - t) * a1 + (t - t0) * a2) / (t2 - t0)
    b2 = ((t3 - t) * a2 + (t - t1) * a3) / (t3 - t1)
    curve = (((t2 - t) * b1 + (t - t1) * b2) / (t2 - t1)).reshape(-1, 2)        # Barry-Goldman pyramid
    return curve if closed else np.vstack([curve, p[-1:]])


def draw_contours(image: np.ndarray, polylines: list[np.ndarray], closed: list[bool], width: float,
                  color) -> np.ndarray:
    """Anti-aliased smooth lines (sub-pixel, through every vertex) over a copy of an (H, W, 3) uint8 image."""
    out = np.array(image, copy=True)
    thickness = max(1, int(round(width)))
    colour = tuple(int(c) for c in color)
    for flag in (True, False):
        group = [np.round(smooth_polyline(np.asarray(p)[:, :2], c) * (1 << LINE_SHIFT)).astype(np.int32)
                 for p, c in zip(polylines, closed) if c == flag]
        if group:
            cv2.polylines(out, group, flag, colour, thickness, cv2.LINE_AA, LINE_SHIFT)
    return out


def cartoon_frame(image: np.ndarray, points_xy: np.ndarray, options: CartoonOptions = CartoonOptions(),
                  lines: list[Contour] | None = None, background: np.ndarray | None = None):
    """Cartoon of one image (a frontal render or a video frame) with the face at points_xy.

    image : (H, W, 3) uint8 RGB. points_xy : (468, 2) the mesh vertices in that image's pixels.
    background : optional (H, W) bool, pixels reset to options.background after filtering.
    Returns (cartoon (H, W, 3) uint8, the contour polylines drawn: list of (n_i, 2) float32,
    the vertices themselves; the drawn curves pass through them).
    """
    lines = contours(options.features) if lines is None else lines
    polys = [p.astype(np.float32) for p in contour_points(np.asarray(points_xy)[:, :2], lines)]
    out = stylize(image, options)
    if background is not None:
        out[background] = np.asarray(options.background, np.uint8)  # flat: not filtered or posterized
    out = draw_contours(out, polys, [c.closed for c in lines], options.line_width, options.line_color)
    return out, polys


# ----------------------------------------------------------------------------- prediction folders

@dataclass(frozen=True)
class CartoonResult:
    path: Path                # the prediction folder
    frames: int
    seconds: float
    files: dict               # result.json "files" entries added (name -> relative path)


def _read_prediction(pred_dir: Path) -> dict:
    doc = storage.read_versioned_json(pred_dir / "result.json", PREDICTION_FORMAT, 1, "LipSync3D prediction",
                                      InputError)
    files = doc.get("files", {})
    if "vertices" not in files or not (pred_dir / files["vertices"]).is_file():
        raise InputError(f"{pred_dir}: prediction has no vertices file ({files.get('vertices', 'vertices.npz')})")
    return doc


def _cylinder(doc: dict, pred_dir: Path) -> dict:
    """The speaker's cylinder (CylinderMap.to_dict()): from result.json, else the model directory's config.json."""
    if "cylinder" in doc:
        return CylinderMap.from_dict(doc["cylinder"]).to_dict()
    model_dir = Path(doc.get("model_dir", ""))
    config = model_dir / "config.json"
    if not config.is_file():
        raise InputError(f"{pred_dir / 'result.json'}: its model directory {model_dir} is gone; "
                         f"the cartoon pass needs the model's config.json (cylinder)")
    return CylinderMap.from_dict(json.loads(config.read_text(encoding="utf-8"))["cylinder"]).to_dict()


def _atlas_source(doc: dict, pred_dir: Path) -> tuple:
    """Where frame i's atlas is: ("sequence", folder, pattern), else ("reference", png path)."""
    files = doc["files"]
    atlas_dir = pred_dir / files["atlas_dir"] if files.get("atlas_dir") else None
    if atlas_dir is not None and atlas_dir.is_dir():
        return "sequence", str(atlas_dir), files.get("atlas_pattern", "atlas_%06d.png")
    ref = pred_dir / files["reference_atlas"] if files.get("reference_atlas") else None
    if ref is None or not ref.is_file():
        raise InputError(f"{pred_dir}: prediction has neither an atlas sequence nor a reference atlas")
    return "reference", str(ref)


def _atlas_reader(source: tuple):
    """frame index -> (256, 256, 3) uint8 atlas, for a _atlas_source."""
    if source[0] == "sequence":
        folder, pattern = Path(source[1]), source[2]
        return lambda i: _read_png(folder / (pattern % i))
    image = _read_png(Path(source[1]))
    return lambda i: image


def _read_png(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: missing or not a readable image")
    return np.ascontiguousarray(bgr[..., ::-1])


def _write_png(path: Path, rgb: np.ndarray) -> None:
    # run-length zlib suits the flat, posterized frames: faster and smaller than the default strategy
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(data.tobytes())


def _contours_doc(lines: list[Contour], view: FrontalCamera, frames: int, fps: float) -> dict:
    offsets = np.cumsum([0] + [len(c.ids) for c in lines]).tolist()
    return {"format": CONTOURS_FORMAT, "format_version": CONTOURS_FORMAT_VERSION, "frames": frames, "fps": fps,
            "image_size": [view.size, view.size], "view": asdict(view),
            "contours": [{"name": c.name, "closed": c.closed, "vertex_ids": list(c.ids),
                          "points": [offsets[k], offsets[k + 1]]} for k, c in enumerate(lines)],
            "arrays": {"file": CONTOURS_NPZ,
                       "image_points": "(frames, points, 2) float32 pixels of the cartoon images",
                       "normalized_points": "(frames, points, 3) float32 speaker's normalized space"}}


def cartoon_prediction(prediction_dir: Path | str, options: CartoonOptions = CartoonOptions(),
                       on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, *,
                       workers: int = 2) -> CartoonResult:
    """Add a cartoon pass to a prediction folder (result.json of `lipsync predict`).

    Writes PREDICTION_DIR/cartoon/cartoon_%06d.png (frontal render, bilateral-filtered, with
    the contour lines), contours.json (names, vertex ids, closed flags, view) and
    contours.npz (per-frame polylines in image pixels and in the normalized space), and
    cartoon_preview.mp4 (with the prediction's audio when its file is still there); then
    adds them to result.json "files" (the folder's other files are untouched). Re-running
    replaces an earlier cartoon pass. Frames are rendered on `workers` processes (1 = here).
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    pred_dir = Path(prediction_dir)
    doc = _read_prediction(pred_dir)
    with np.load(pred_dir / doc["files"]["vertices"]) as z:
        vertices = np.asarray(z["vertices"], np.float32)
    if vertices.ndim != 3 or vertices.shape[1:] != (468, 3) or len(vertices) == 0:
        raise InputError(f"{pred_dir / doc['files']['vertices']}: vertices must be (F, 468, 3), got {vertices.shape}")
    lines = contours(options.features)
    view = frontal_view(vertices, options.size)
    n, fps = len(vertices), float(doc.get("fps", 25.0))
    ids = np.concatenate([c.ids for c in lines])
    storage.remove_stale_temporaries(pred_dir)
    files = {"cartoon_dir": CARTOON_DIR, "cartoon_pattern": CARTOON_PATTERN, "contours": CONTOURS_JSON,
             "contours_arrays": CONTOURS_NPZ}
    with storage.atomic_path(pred_dir / CARTOON_DIR) as tmp:
        tmp.mkdir()
        image_pts = _render_sequence(tmp, doc, pred_dir, vertices, view, options, workers, on_progress, cancel)
        if options.preview:
            files["cartoon_preview"] = CARTOON_PREVIEW
        shutil.rmtree(pred_dir / CARTOON_DIR, ignore_errors=True)
    storage.save_npz(pred_dir / CONTOURS_NPZ, image_points=image_pts, normalized_points=vertices[:, ids])
    storage.write_json(pred_dir / CONTOURS_JSON, _contours_doc(lines, view, n, fps))
    _update_result(pred_dir, files, options)
    return CartoonResult(pred_dir, n, time.perf_counter() - t0, files)


def _render_sequence(tmp: Path, doc: dict, pred_dir: Path, vertices: np.ndarray, view: FrontalCamera,
                     options: CartoonOptions, workers: int, on_progress, cancel) -> np.ndarray:
    """Render every frame into `tmp` on the workers (and the preview beside the folder);
    returns the contour points (F, P, 2) in image pixels."""
    n, fps = len(vertices), float(doc.get("fps", 25.0))
    workers = workers if n >= MIN_PARALLEL_FRAMES else 1     # starting workers costs ~1-2 s
    size = int(np.clip(-(-n // workers), 1, MAX_JOB_FRAMES))
    cylinder, atlas = _cylinder(doc, pred_dir), _atlas_source(doc, pred_dir)
    tasks = [CartoonJob(a, vertices[a:a + size], str(tmp), options, view, cylinder, atlas, fps,
                        str(tmp / f".preview_{a:08d}.mp4") if options.preview else None)
             for a in range(0, n, size)]
    with jobs.WorkerPool(min(workers, len(tasks)), cancel) as pool:
        image_pts = np.concatenate(pool.run(_cartoon_job, tasks, _units(on_progress, "cartoon", n)))
    if options.preview:        # each job encoded its own part: join them by packet copy, add the audio
        parts = [Path(t.preview) for t in tasks]
        videowriter.concatenate(parts, pred_dir / CARTOON_PREVIEW, fps, _preview_audio(doc, n, fps))
        for part in parts:
            part.unlink()
    return image_pts


@dataclass(frozen=True)
class CartoonJob:
    """Worker payload: render frames first .. first + len(vertices) - 1 of a cartoon pass."""

    first: int                        # the first frame's number
    vertices: np.ndarray              # (n, 468, 3) predicted vertices of these frames
    out: str                          # the folder the PNG frames go into
    options: CartoonOptions
    view: FrontalCamera
    cylinder: dict                    # the model's cylinder (CylinderMap.to_dict)
    atlas: tuple                      # where frame i's atlas is (_atlas_source)
    fps: float
    preview: str | None               # this job's part of the preview MP4, or None


def _cartoon_job(job: CartoonJob) -> np.ndarray:
    """Worker: render and write frames first .. first + len(vertices) - 1; returns their contour
    points (n, P, 2) in image pixels."""
    options, view, first = job.options, job.view, job.first
    cylinder, atlas_at, lines = CylinderMap.from_dict(job.cylinder), _atlas_reader(job.atlas), \
        contours(options.features)
    ids = np.concatenate([c.ids for c in lines])
    out = np.zeros((len(job.vertices), len(ids), 2), np.float32)
    with ExitStack() as stack:
        preview = None
        if job.preview:           # this job's part of the preview, joined by packet copy afterwards
            tmp = stack.enter_context(storage.atomic_path(Path(job.preview)))
            preview = stack.enter_context(av.open(str(tmp), "w", format="mp4"))
            stream, rate = videowriter.add_video_stream(preview, job.fps, view.size, view.size, PREVIEW_CRF,
                                                        PREVIEW_PRESET)
        for k, v in enumerate(job.vertices):
            image, pts = render_cartoon(atlas_at(first + k), v, cylinder, view, options, lines)
            _write_png(Path(job.out) / (CARTOON_PATTERN % (first + k)), image)
            if preview is not None:
                videowriter.encode_frame(preview, stream, image, k, rate)
            out[k] = pts[ids]
            jobs.report(1)
            jobs.check_cancel()
        if preview is not None:
            for packet in stream.encode(None):
                preview.mux(packet)
    return out


def _units(on_progress, stage: str, total: int):
    state = {"done": 0}
    on_progress(Progress(stage, 0, total))

    def units(n: int) -> None:
        state["done"] += n
        on_progress(Progress(stage, min(state["done"], total), total))
    return units


def _preview_audio(doc: dict, n: int, fps: float):
    """(samples, rate) of the prediction's audio for the preview, or None when its file is gone."""
    source = Path(doc["audio"]) if doc.get("audio") else None
    if source is None or not source.is_file():
        return None
    track = media.load_audio(source, sample_rate=PREVIEW_AUDIO_RATE)
    start = max(0, int(round((float(doc.get("start_s", 0.0)) - track.start_offset_s) * track.sample_rate)))
    return track.samples[start:start + int(round(n / fps * track.sample_rate))], track.sample_rate


def _update_result(pred_dir: Path, files: dict, options: CartoonOptions) -> None:
    """Add the cartoon files to result.json, re-read just before the atomic rewrite."""
    path = pred_dir / "result.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("files", {}).update(files)
    doc["cartoon"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
    storage.write_json(path, doc)

