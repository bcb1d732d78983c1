import numpy as np
import pytest

from lipsync_engine.face import geometry as g
from lipsync_engine.face.topology import NOSE_TIP, load_topology


def test_umeyama_recovers_known_similarity(rng):
    src = rng.normal(size=(60, 3))
    rot = g.euler_to_rotation(12.0, -25.0, 40.0)
    dst = 1.7 * src @ rot.T + np.array([3.0, -2.0, 0.5])
    s = g.umeyama(src, dst)
    assert abs(s.scale - 1.7) < 1e-6
    assert np.abs(s.rotation - rot).max() < 1e-6
    assert np.abs(s.translation - [3.0, -2.0, 0.5]).max() < 1e-6
    assert np.abs(s.apply(src) - dst).max() < 1e-6
    assert np.abs(s.inverse().apply(dst) - src).max() < 1e-6


def test_umeyama_is_a_proper_rotation_for_a_mirrored_target(rng):
    src = rng.normal(size=(30, 3))
    s = g.umeyama(src, src * [-1.0, 1.0, 1.0])
    assert np.linalg.det(s.rotation) == pytest.approx(1.0)


def test_umeyama_batch_matches_single(rng):
    src = rng.normal(size=(5, 40, 3))
    rots = g.euler_to_rotation(rng.uniform(-30, 30, 5), rng.uniform(-30, 30, 5), rng.uniform(-30, 30, 5))
    dst = rng.normal(size=(40, 3))
    scale, rot, trans = g.umeyama_batch(src, dst)
    for f in range(5):
        one = g.umeyama(src[f], dst)
        assert scale[f] == pytest.approx(one.scale, abs=1e-9)
        assert np.abs(rot[f] - one.rotation).max() < 1e-9
    # and it recovers known per-frame motions exactly
    moved = np.einsum("fij,nj->fni", rots, dst) * 2.0 + 1.0
    scale, rot, trans = g.umeyama_batch(moved, dst)
    assert np.abs(scale - 0.5).max() < 1e-9
    assert np.abs(rot - np.transpose(rots, (0, 2, 1))).max() < 1e-9


def test_umeyama_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        g.umeyama(np.zeros((4, 2)), np.zeros((4, 2)))


def test_euler_round_trip(rng):
    e = np.stack([rng.uniform(-40, 40, 20), rng.uniform(-40, 40, 20), rng.uniform(-40, 40, 20)], 1)
    back = g.rotation_to_euler_deg(g.euler_to_rotation(e[:, 0], e[:, 1], e[:, 2]))
    assert np.abs(back - e).max() < 1e-9
    assert g.rotation_angle_deg(g.euler_to_rotation(0.0, 30.0, 0.0)) == pytest.approx(30.0)


def test_image_to_yup_is_self_inverse_and_proper(rng):
    p = rng.normal(size=(10, 3))
    assert np.array_equal(g.yup_to_image(g.image_to_yup(p)), p)
    assert np.linalg.det(np.diag([1.0, -1.0, -1.0])) == 1.0  # a rotation, not a reflection


def test_vertical_axis_fit_recovers_a_cylinder(rng):
    theta = rng.uniform(-1.2, 1.2, 300)
    y = rng.uniform(-5, 5, 300)
    pts = np.stack([2.0 + 7.0 * np.sin(theta), y, -1.0 + 7.0 * np.cos(theta)], 1)
    cx, cz, r = g.fit_vertical_axis(pts)
    assert (cx, cz, r) == pytest.approx((2.0, -1.0, 7.0), abs=1e-6)


def test_reference_cylinder_puts_eyes_and_nose_at_fixed_atlas_spots():
    topo = load_topology()
    # the same face, scaled and shifted, lands on the same atlas spots
    for scale, shift in ((1.0, 0.0), (1.3, 2.0)):
        v = topo.vertices * scale + shift
        cyl = g.reference_cylinder(v, topo.right_eye, topo.left_eye, NOSE_TIP)
        uv = cyl.project(v)
        eyes = cyl.project(np.stack([v[topo.right_eye].mean(0), v[topo.left_eye].mean(0)]))
        assert eyes[:, 1].mean() == pytest.approx(g.EYE_ROW, abs=1e-3)
        assert eyes[:, 0] == pytest.approx([g.CENTRE_COL - g.EYE_HALF_SPAN, g.CENTRE_COL + g.EYE_HALF_SPAN], abs=1e-3)
        assert uv[NOSE_TIP, 1] == pytest.approx(g.NOSE_ROW, abs=1e-3)
        assert uv.min() > 0 and uv.max() < g.ATLAS_SIZE
        assert g.CylinderMap.from_dict(cyl.to_dict()) == cyl
