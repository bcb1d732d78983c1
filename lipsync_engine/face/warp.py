"""Vectorized piecewise-affine triangle warping (texture unrolling, Section 3.1.1).

Owns: rasterizing a triangle mesh into a pixel grid (which triangle covers each pixel
centre, with barycentric coordinates) and resampling a source image through it with one
cv2.remap. There is no Python loop over triangles: the pixels of every triangle's
bounding box are enumerated at once with a ragged np.repeat. Pixel centres are at integer coordinates (OpenCV's remap convention).
Must not: know about faces, video or lighting.
"""

from __future__ import annotations

import cv2
import numpy as np

INSIDE_EPS = 1e-4  # barycentric tolerance so that shared edges leave no cracks


def rasterize_triangles(points: np.ndarray, triangles: np.ndarray, size: tuple[int, int],
                        depth: np.ndarray | None = None):
    """Which triangle covers each pixel centre of an (H, W) grid.

    points : (V, 2) (x, y) pixels; triangles : (T, 3); depth : optional (V,), where
    triangles overlap the one with the largest interpolated depth (nearest) wins.
    Returns tri_id (H, W) int32 (-1 where uncovered) and bary (H, W, 3) float32.
    """
    r = Raster(points, triangles, size, depth)
    h, w = size
    tri_id = np.full(h * w, -1, np.int32)
    tri_id[r.pixels] = r.triangle
    bary = np.zeros((h * w, 3), np.float32)
    bary[r.pixels] = r.lam
    return tri_id.reshape(h, w), bary.reshape(h, w, 3)


def _covered_pixels(pts, tris, h, w):
    """Pixel centres inside each triangle: (tri, x, y, barycentrics) as flat arrays.

    Every triangle's exact bounding box is enumerated with one ragged np.repeat, so the
    work is proportional to the summed bounding-box area (about twice the mesh area).
    """
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    e1, e2 = b - a, c - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = np.maximum(np.ceil(np.minimum(np.minimum(a, b), c)), 0).astype(np.int32)
    hi = np.minimum(np.floor(np.maximum(np.maximum(a, b), c)), [w - 1, h - 1]).astype(np.int32)
    bw, bh = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    ok = (np.abs(det) > 1e-12) & (bw > 0) & (bh > 0)
    counts = np.where(ok, bw * bh, 0)
    t = np.repeat(np.arange(len(tris), dtype=np.int32), counts)
    local = np.arange(counts.sum(), dtype=np.int32) - np.repeat(np.cumsum(counts) - counts, counts).astype(np.int32)
    oy, ox = np.divmod(local, np.take(bw, t))
    # l1, l2 as affine functions of the pixel position, relative to the box corner lo
    d = np.where(ok, det, 1.0)
    ax, ay = a[:, 0] - lo[:, 0], a[:, 1] - lo[:, 1]
    coef = [e2[:, 1] / d, -e2[:, 0] / d, -e1[:, 1] / d, e1[:, 0] / d]
    c1 = -(coef[0] * ax + coef[1] * ay)
    c2 = -(coef[2] * ax + coef[3] * ay)
    ox32, oy32 = ox.astype(np.float32), oy.astype(np.float32)
    f32 = [np.take(x.astype(np.float32), t) for x in (*coef, c1, c2)]
    l1 = f32[0] * ox32 + f32[1] * oy32 + f32[4]
    l2 = f32[2] * ox32 + f32[3] * oy32 + f32[5]
    l0 = 1.0 - l1 - l2
    keep = np.flatnonzero((l0 >= -INSIDE_EPS) & (l1 >= -INSIDE_EPS) & (l2 >= -INSIDE_EPS))
    tk = np.take(t, keep)
    px = np.take(lo[:, 0], tk) + np.take(ox, keep)
    py = np.take(lo[:, 1], tk) + np.take(oy, keep)
    lam = np.stack([np.take(l0, keep), np.take(l1, keep), np.take(l2, keep)], 1)
    return tk, px, py, lam


class Raster:
    """A mesh rasterized once into a destination grid, reusable for several sources.

    The atlas warp of a frame and the warp of the reference atlas into that frame's
    texture coordinates share the destination mesh, so they share one Raster.
    """

    def __init__(self, dst_points: np.ndarray, triangles: np.ndarray, size: tuple[int, int],
                 depth: np.ndarray | None = None):
        tris = np.asarray(triangles, np.int64)
        pts = np.asarray(dst_points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or tris.ndim != 2 or tris.shape[1] != 3:
            raise ValueError(f"need (V, 2) points and (T, 3) triangles, got {pts.shape}, {tris.shape}")
        h, w = size
        t, px, py, lam = _covered_pixels(pts, tris, h, w)
        pix = py * w + px
        if depth is not None:  # the nearest triangle wins: keep the last of each pixel after sorting
            shared = np.bincount(pix, minlength=h * w)[pix] > 1  # only pixels covered twice need the sort
            dup = np.flatnonzero(shared)
            z = (lam[dup] * np.asarray(depth, np.float32)[tris[t[dup]]]).sum(1)
            order = dup[np.lexsort((z, pix[dup]))]
            last = np.r_[pix[order][1:] != pix[order][:-1], True] if len(order) else np.zeros(0, bool)
            shared[order[last]] = False  # now False exactly where an entry is kept (in triangle order)
            keep = np.flatnonzero(~shared)
            pix, t, lam = pix[keep], t[keep], lam[keep]
        self.size = (h, w)
        self.pixels, self.lam, self.triangle = pix, lam, t
        self.corners = np.take(tris, t, axis=0)
        # Each covered pixel's source position is a fixed barycentric mix of 3 vertices, kept
        # corner-major so that one mix is three gathers per value column (_mix): about as fast
        # as a sparse (pixels x V) product and equal to it bit for bit, without importing
        # scipy.sparse (47 ms of a 3 s clip's preparation, before its workers start)
        self._corners_t = np.ascontiguousarray(self.corners.T)
        self._lam_t = np.ascontiguousarray(lam.T)
        mask = np.zeros(h * w, bool)
        mask[pix] = True
        self.mask = mask.reshape(h, w)

    def triangle_mask(self, selected: np.ndarray) -> np.ndarray:
        """(H, W) bool: pixels covered by a triangle with selected[triangle] True ((T,) bool)."""
        m = np.zeros(self.size[0] * self.size[1], bool)
        m[self.pixels] = np.asarray(selected, bool)[self.triangle]
        return m.reshape(self.size)

    def _mix(self, values: np.ndarray) -> np.ndarray:
        """(K, pixels) float32: per-vertex values (V, K) mixed at each covered pixel, as
        ((l0 v0 + l1 v1) + l2 v2): the order of a sparse row product's sum. One value column at
        a time, with 1-D takes into reused buffers (0.28 ms for the 2 columns of a 256 x 256
        raster; indexing the (K, V) array with a slice and an index array took 1.5 ms)."""
        columns = np.ascontiguousarray(np.asarray(values, np.float32).T)
        corners, lam = self._corners_t, self._lam_t
        out = np.empty((len(columns), corners.shape[1]), np.float32)
        term = np.empty(corners.shape[1], np.float32)
        for column, acc in zip(columns, out):
            np.take(column, corners[0], out=acc)
            acc *= lam[0]
            for j in (1, 2):
                np.take(column, corners[j], out=term)
                term *= lam[j]
                acc += term
        return out

    def maps(self, src_points: np.ndarray):
        """(map_x, map_y) float32 (H, W) for cv2.remap; -1 where uncovered."""
        xy = self._mix(src_points)
        maps = np.full((2, self.size[0] * self.size[1]), -1.0, np.float32)  # each map filled in place: no copies
        maps[0, self.pixels] = xy[0]
        maps[1, self.pixels] = xy[1]
        return maps[0].reshape(self.size), maps[1].reshape(self.size)

    def interpolate(self, values: np.ndarray, fill: float = -1.0) -> np.ndarray:
        """(H, W, K) float32: per-vertex values (V, K) interpolated at each covered pixel; `fill` elsewhere.

        Several remap sources and per-vertex weights in one pass (dub.py uses 5 columns).
        """
        vals = np.asarray(values, np.float32)
        m = np.full((self.size[0] * self.size[1], vals.shape[1]), fill, np.float32)
        m[self.pixels] = self._mix(vals).T
        return m.reshape(self.size + (vals.shape[1],))

    def warp(self, image: np.ndarray, src_points: np.ndarray) -> np.ndarray:
        """Resample `image` (h, w[, C]) so that src_points land on this raster's mesh."""
        map_x, map_y = self.maps(src_points)
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_triangles(image: np.ndarray, src_points: np.ndarray, dst_points: np.ndarray,
                   triangles: np.ndarray, size: tuple[int, int], depth: np.ndarray | None = None):
    """Piecewise-affine warp of `image` so that src_points land on dst_points.

    image : (h, w, C) or (h, w) array (uint8 or float32); src_points, dst_points : (V, 2)
    (x, y) pixels. Returns (warped (H, W[, C]), mask (H, W) bool); outside the mesh is 0.
    """
    raster = Raster(dst_points, triangles, size, depth)
    return raster.warp(image, src_points), raster.mask
