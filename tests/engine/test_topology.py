import numpy as np

from lipsync_engine.face.topology import load_topology


def test_canonical_mesh_is_an_oriented_disc():
    t = load_topology()
    assert t.vertices.shape == (468, 3) and t.triangles.shape == (898, 3)
    directed = {(a, b) for tri in t.triangles.tolist() for a, b in zip(tri, tri[1:] + tri[:1])}
    assert len(directed) == 3 * 898  # no directed edge twice: consistently oriented, at most 2 per edge
    edges = {tuple(sorted(e)) for e in directed}
    assert len(t.vertices) - len(edges) + len(t.triangles) == 1  # Euler characteristic of a disc
    # counter-clockwise seen from the front (+z): positive signed area in x-y for most triangles
    a, b, c = (t.vertices[t.triangles[:, i], :2] for i in range(3))
    area = np.cross(b - a, c - a)
    assert (area > 0).mean() > 0.95


def test_mirror_pairs_and_regions():
    t = load_topology()
    assert np.array_equal(t.mirror[t.mirror], np.arange(468))
    assert np.allclose(t.vertices[t.mirror] * [-1, 1, 1], t.vertices, atol=1e-6)
    assert len(t.lips_inner) == len(t.lips_outer) == 20
    sets = [set(x.tolist()) for x in (t.mouth_triangles, t.lip_triangles, t.eye_triangles, t.skin_triangles)]
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # disjoint
    # the rigid set is upper face only and symmetric
    assert t.vertices[t.rigid, 1].min() >= -2.1
    assert set(t.mirror[t.rigid].tolist()) == set(t.rigid.tolist())
    assert not set(t.rigid.tolist()) & set(t.lips_outer.tolist())


def test_polygon_regions_equal_matplotlibs_containment():
    """face/topology.py tests triangle centroids against the lip and eye loops in numpy (matplotlib's
    import is a tenth of `lipsync predict` of a line): the same triangles as Path.contains_points,
    and the same answer for random points."""
    from matplotlib.path import Path as PolygonPath

    from lipsync_engine.face.topology import _inside

    t = load_topology()
    xy = t.vertices[:, :2]
    centroids = xy[t.triangles].mean(axis=1)
    points = np.concatenate([centroids, np.random.default_rng(0).uniform(xy.min(0), xy.max(0), (5000, 2))])
    for loop in (t.lips_inner, t.lips_outer, t.right_eye, t.left_eye):
        expected = PolygonPath(xy[loop]).contains_points(points, radius=1e-6)
        assert expected.sum() > 0 and np.array_equal(_inside(loop, points, xy), expected)
    inner = set(np.flatnonzero(PolygonPath(xy[t.lips_inner]).contains_points(centroids, radius=1e-6)).tolist())
    assert set(t.mouth_triangles.tolist()) == inner


def test_region_triangles_are_those_matplotlib_finds():
    """The mouth, lip, eye and skin triangles come from a point-in-polygon test of the triangle
    centroids, written with numpy (matplotlib takes 0.1 s to import in every prepare worker);
    on the shipped mesh it agrees with matplotlib.path, which found them before."""
    from matplotlib.path import Path as PolygonPath

    t = load_topology()
    xy = t.vertices[:, :2]
    centroids = xy[t.triangles].mean(axis=1)

    def inside(loop):
        return PolygonPath(xy[loop]).contains_points(centroids, radius=1e-6)

    mouth = inside(t.lips_inner)
    lips = inside(t.lips_outer) & ~mouth
    eyes = inside(t.right_eye) | inside(t.left_eye)
    assert np.array_equal(t.mouth_triangles, np.flatnonzero(mouth))
    assert np.array_equal(t.lip_triangles, np.flatnonzero(lips))
    assert np.array_equal(t.eye_triangles, np.flatnonzero(eyes))
    assert len(t.skin_triangles) == 590
