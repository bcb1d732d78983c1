import subprocess
import sys

import cv2
import numpy as np
import pytest

from lipsync_engine.face import warp
from lipsync_engine.face.geometry import reference_cylinder
from lipsync_engine.face.topology import NOSE_TIP, load_topology


def _grid_mesh(n=9, size=200.0):
    xs = np.linspace(10, size - 10, n)
    pts = np.stack(np.meshgrid(xs, xs), -1).reshape(-1, 2)
    tris = []
    for r in range(n - 1):
        for c in range(n - 1):
            i = r * n + c
            tris += [(i, i + 1, i + n), (i + 1, i + n + 1, i + n)]
    return pts, np.array(tris)


def test_piecewise_warp_of_a_global_affine_equals_cv2_warp_affine(rng):
    img = cv2.GaussianBlur(rng.uniform(0, 255, (220, 220, 3)).astype(np.float32), (0, 0), 2.0)
    src, tris = _grid_mesh()
    m = np.array([[0.9, 0.2, 12.0], [-0.15, 1.05, 5.0]])  # dst = m @ [src, 1]
    dst = src @ m[:, :2].T + m[:, 2]
    out, mask = warp.warp_triangles(img, src, dst, tris, (220, 220))
    expected = cv2.warpAffine(img, m, (220, 220), flags=cv2.INTER_LINEAR)
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5))) > 0
    assert inner.sum() > 20000
    # OpenCV quantizes sub-pixel positions to 1/32 px in both calls, differently: < 0.5 of 255
    assert np.abs(out[inner] - expected[inner]).max() < 0.5
    assert np.abs(out[inner] - expected[inner]).mean() < 0.05


def test_mesh_coverage_has_no_cracks():
    topo = load_topology()
    cyl = reference_cylinder(topo.vertices, topo.right_eye, topo.left_eye, NOSE_TIP)
    uv = cyl.project(topo.vertices)
    tri_id, bary = warp.rasterize_triangles(uv, topo.triangles, (256, 256))
    covered = (tri_id >= 0).astype(np.uint8)
    filled = covered.copy()
    contours, _ = cv2.findContours(covered, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(filled, contours, -1, 1, -1)
    assert filled.sum() - covered.sum() == 0  # no uncovered pixel inside the face outline
    assert np.allclose(bary[tri_id >= 0].sum(-1), 1.0, atol=1e-5)
    assert (bary[tri_id >= 0] >= -1e-3).all()


def test_every_pixel_maps_back_inside_its_triangle():
    pts, tris = _grid_mesh(5, 100.0)
    tri_id, bary = warp.rasterize_triangles(pts, tris, (100, 100))
    ys, xs = np.nonzero(tri_id >= 0)
    rebuilt = np.einsum("nk,nkc->nc", bary[ys, xs], pts[tris[tri_id[ys, xs]]])
    assert np.abs(rebuilt - np.stack([xs, ys], 1)).max() < 1e-3


def test_depth_picks_the_nearest_triangle():
    pts = np.array([[0, 0], [50, 0], [0, 50], [0, 0], [50, 0], [0, 50]], float)
    tris = np.array([[0, 1, 2], [3, 4, 5]])
    for near in (0, 1):
        depth = np.array([1.0] * 3 + [2.0] * 3) if near == 1 else np.array([2.0] * 3 + [1.0] * 3)
        tri_id, _ = warp.rasterize_triangles(pts, tris, (60, 60), depth=depth)
        assert set(np.unique(tri_id[tri_id >= 0]).tolist()) == {near}


def test_raster_shares_one_rasterization_between_sources(rng):
    pts, tris = _grid_mesh(5, 100.0)
    r = warp.Raster(pts + 3.0, tris, (110, 110))
    a = rng.uniform(0, 1, (110, 110)).astype(np.float32)
    shifted = r.warp(a, pts)  # dst = src + 3 px: a pure translation
    inner = cv2.erode(r.mask.astype(np.uint8), np.ones((3, 3))) > 0
    assert np.abs(shifted[inner] - np.roll(a, (3, 3), (0, 1))[inner]).max() < 1e-4
    assert r.triangle_mask(np.ones(len(tris), bool)).sum() == r.mask.sum()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        warp.Raster(np.zeros((4, 3)), np.zeros((1, 3), int), (10, 10))


def test_per_vertex_values_mix_at_each_pixel_without_scipy():
    """Raster.interpolate reproduces any affine function of the vertices at each covered pixel
    (here the pixel's own position and a constant), and warping imports no scipy.sparse (it
    cost 47 ms of a short clip's preparation)."""
    topo = load_topology()
    cyl = reference_cylinder(topo.vertices, topo.right_eye, topo.left_eye, NOSE_TIP)
    uv = cyl.project(topo.vertices)
    raster = warp.Raster(uv, topo.triangles, (256, 256))
    values = np.column_stack([uv, np.full(len(uv), 0.25), 3 * uv[:, 0] - 2 * uv[:, 1] + 7]).astype(np.float32)
    out = raster.interpolate(values, fill=-5.0)
    ys, xs = np.nonzero(raster.mask)
    assert len(xs) > 30000
    assert np.abs(out[ys, xs, 0] - xs).max() < 1e-3 and np.abs(out[ys, xs, 1] - ys).max() < 1e-3
    assert np.abs(out[ys, xs, 2] - 0.25).max() < 1e-6
    assert np.abs(out[ys, xs, 3] - (3 * xs - 2 * ys + 7)).max() < 1e-2
    assert (out[~raster.mask] == -5.0).all()
    map_x, map_y = raster.maps(uv)
    assert np.array_equal(map_x[raster.mask], out[ys, xs, 0]) and np.array_equal(map_y[raster.mask], out[ys, xs, 1])
    script = ("import sys, numpy as np; from lipsync_engine.face import warp; "
              "r = warp.Raster(np.array([[0, 0], [9, 0], [0, 9]], float), np.array([[0, 1, 2]]), (10, 10)); "
              "r.warp(np.zeros((10, 10, 3), np.uint8), np.array([[0, 0], [9, 0], [0, 9]], float)); "
              "print('scipy.sparse' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False"], done.stderr[-1000:]
