"""Cartoon line-art: contours on the predicted mesh, the bilateral style, and `lipsync cartoon`
on a real prediction folder of the shared tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from lipsync_engine.apps.cartoon import (FEATURES, CartoonOptions, cartoon_frame, cartoon_prediction, contours,
                                    frontal_view, smooth_polyline, stylize)
from lipsync_engine.core.errors import InputError
from lipsync_engine.face.topology import load_topology

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prediction_dir(trained_demo, demo_video, tmp_path_factory):
    """A real `lipsync predict` folder: 2 s of the demo audio at 25 fps (50 frames)."""
    from lipsync_engine.inference.folder import OutputOptions, predict_to_folder
    from lipsync_engine.inference.predictor import PredictOptions

    out = tmp_path_factory.mktemp("cartoon") / "prediction"
    predict_to_folder(trained_demo[0], demo_video[0], out, PredictOptions(fps=25.0, end_s=2.0),
                      OutputOptions(preview=False))
    return out


def _segment_distance(points: np.ndarray, polyline: np.ndarray, closed: bool) -> np.ndarray:
    """(N,) distance of each (N, 2) point to a polyline's segments."""
    a = polyline if not closed else np.vstack([polyline, polyline[:1]])
    p, q = a[:-1], a[1:]
    d = q - p
    t = np.clip(((points[:, None] - p) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(points[:, None] - (p + t[..., None] * d), axis=-1).min(1)


def test_contours_are_vertex_polylines_of_the_mesh():
    topo = load_topology()
    lines = {c.name: c for c in contours()}
    assert tuple(lines) == FEATURES
    assert all(0 <= i < 468 for c in lines.values() for i in c.ids)
    assert lines["lips_outer"].ids == tuple(topo.lips_outer) and lines["lips_inner"].closed
    for right, left in (("cheek_right", "cheek_left"), ("brow_right", "brow_left")):
        assert tuple(int(topo.mirror[i]) for i in lines[right].ids) == lines[left].ids    # mirror images
    jaw = topo.vertices[list(lines["jaw"].ids)]
    assert 152 in lines["jaw"].ids and jaw[:, 1].max() < -1.0           # the lower face: ear level down
    with pytest.raises(ValueError, match="unknown cartoon feature"):
        contours(("lips_outer", "ears"))


def test_smooth_polyline_passes_through_every_vertex():
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    curve = smooth_polyline(square, closed=True, steps=4)
    assert len(curve) == 16 and np.allclose(curve[::4], square)
    open_curve = smooth_polyline(square, closed=False, steps=4)
    assert np.allclose(open_curve[[0, 4, 8, -1]], square)


def test_lines_lie_on_the_predicted_lip_and_jaw_contours(prediction_dir):
    """At 256 px: every drawn line pixel (a 1 px line) is < 2 px from the projected lip/jaw
    polylines, every contour vertex has ink within 1.5 px, and the returned polylines are the
    projected vertices."""
    with np.load(prediction_dir / "vertices.npz") as z:
        vertices = z["vertices"]
    view = frontal_view(vertices, 256)
    wanted = ("lips_outer", "lips_inner", "jaw")
    options = CartoonOptions(size=256, line_width=1.0, line_color=(0, 0, 0), filter_strength=0.0, color_levels=0,
                             features=wanted)
    lines = contours(wanted)
    for k in (0, 17, 35, 49):                       # closed and open mouths of the prediction
        pts = view.project(vertices[k]) - 0.5
        blank = np.full((256, 256, 3), 255, np.uint8)
        image, polys = cartoon_frame(blank, pts, options)
        for poly, line in zip(polys, lines):
            assert np.array_equal(poly, pts[list(line.ids)].astype(np.float32))
        ys, xs = np.nonzero(image.min(-1) < 128)                            # the line's core pixels
        ink = np.c_[xs, ys].astype(float)
        dist = np.min([_segment_distance(ink, p, c.closed) for p, c in zip(polys, lines)], axis=0)
        assert len(ink) > 300 and dist.max() < 2.0, (k, dist.max())
        for poly in polys:
            near = np.linalg.norm(poly[:, None] - ink[None], axis=-1).min(1)
            assert near.max() < 1.5, (k, near.max())


def test_stylize_smooths_noise_but_keeps_edges():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64, 3), np.float32)
    img[:, 32:] = 200.0
    noisy = np.clip(img + 60 + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    out = stylize(noisy, CartoonOptions(size=64, color_levels=0))
    assert out[:, 4:28].std() < 0.5 * noisy[:, 4:28].std()                  # flat areas get flatter
    assert out[:, 36:60].mean() - out[:, 4:28].mean() > 0.95 * (noisy[:, 36:60].mean() - noisy[:, 4:28].mean())
    assert np.array_equal(stylize(noisy, CartoonOptions(size=64, filter_strength=0, color_levels=0)), noisy)
    levels = stylize(noisy, CartoonOptions(size=64, filter_strength=0, color_levels=4))
    assert len(np.unique(levels)) <= 4


def test_cartoon_pass_on_a_prediction_folder(prediction_dir):
    before = json.loads((prediction_dir / "result.json").read_text())
    r = cartoon_prediction(prediction_dir, CartoonOptions(size=256))
    assert r.frames == 50
    frames = sorted((prediction_dir / "cartoon").glob("cartoon_*.png"))
    assert len(frames) == 50 and cv2.imread(str(frames[0])).shape == (256, 256, 3)
    doc = json.loads((prediction_dir / "result.json").read_text())
    assert {k: v for k, v in doc["files"].items() if k in before["files"]} == before["files"]   # kept
    assert doc["files"]["cartoon_pattern"] == "cartoon_%06d.png" and doc["cartoon"]["size"] == 256
    info = json.loads((prediction_dir / "contours.json").read_text())
    with np.load(prediction_dir / "contours.npz") as z, np.load(prediction_dir / "vertices.npz") as v:
        image_points, normalized = z["image_points"], z["normalized_points"]
        vertices = v["vertices"]
    ids = [i for c in info["contours"] for i in c["vertex_ids"]]
    assert image_points.shape == (50, len(ids), 2) and np.array_equal(normalized, vertices[:, ids])
    view = frontal_view(vertices, 256)
    assert np.allclose(image_points, view.project(vertices[:, ids]) - 0.5, atol=1e-4)
    with av.open(str(prediction_dir / "cartoon_preview.mp4")) as c:
        assert c.streams.video[0].frames == 50
        assert float(c.streams.audio[0].duration * c.streams.audio[0].time_base) == pytest.approx(2.0, abs=0.1)


def test_cartoon_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="result.json"):
        cartoon_prediction(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lipsync_engine", "cartoon", str(tmp_path / "none"), "--no-preview"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.startswith("error:")][0].count("result.json") == 1
    proc = subprocess.run([sys.executable, "-m", "lipsync_engine", "cartoon", str(tmp_path), "--features", "ears"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "unknown cartoon feature" in proc.stderr
