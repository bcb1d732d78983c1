"""The ARKit-52 rig and the blendshape fit (synthetic faces; one slow test on the demo video)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from lipsync_engine.rig import fitting as bs
from lipsync_engine.prepare import dataset
from lipsync_engine.rig.fitting import (FitOptions, adapt_basis, coefficients_to_vertices, fit_coefficients,
                                        fit_speaker, load_rig, segment_breaks)
from lipsync_engine.rig.names import ARKIT_NAMES
from lipsync_engine.face.topology import (CHIN, FOREHEAD_TOP, LOWER_LIP_INNER, MOUTH_CORNER_LEFT, MOUTH_CORNER_RIGHT,
                                     UPPER_LIP_INNER, load_topology)

NOISE_FRACTION = 0.005      # vertex noise: 0.5% of the face size (forehead-to-chin height)
MAX_MEAN_ABS_ERROR = 0.03
FLIP_X = np.array([-1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def rig():
    return load_rig()


def idx(name: str) -> int:
    return ARKIT_NAMES.index(name)


def mirror_faces(v: np.ndarray) -> np.ndarray:
    """(..., 468, 3) faces -> their mirror images (x flipped, left/right vertices swapped)."""
    return v[..., load_topology().mirror, :] * FLIP_X


def swap_left_right(names) -> list[int]:
    """Column permutation that swaps every ...Left with its ...Right (others stay)."""
    def twin(n):
        return n[:-4] + "Right" if n.endswith("Left") else n[:-5] + "Left" if n.endswith("Right") else n
    return [names.index(twin(n)) for n in names]


def smooth_sparse_coefficients(rng, frames: int, k: int = 52) -> np.ndarray:
    """Sparse, smoothly varying coefficients: each shape is on ~10% of the time (tongueOut never)."""
    kernel = np.hanning(25)
    c = np.zeros((frames, k))
    for j in range(k - 1):
        x = np.convolve(rng.standard_normal(frames + 40), kernel / kernel.sum(), "same")[20:-20]
        c[:, j] = np.clip(x / x.std() * 0.5 - 0.8 + rng.uniform(0.0, 0.4), 0.0, 1.0)
    return c


def speaker_neutral(rig, rng) -> np.ndarray:
    """A face unlike the canonical one: wider, longer jaw, slightly turned, bumpy."""
    v = rig.neutral * (1.08, 1.0, 0.95)
    v[:, 1] += np.minimum(v[:, 1] + 3.0, 0.0) * 0.06                 # a longer lower face
    a = np.radians(4.0)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return v @ rot.T + rng.normal(0.0, 0.03, v.shape) + (0.2, -0.1, 0.3)


def noisy(v: np.ndarray, neutral: np.ndarray, rng) -> np.ndarray:
    size = np.linalg.norm(neutral[FOREHEAD_TOP] - neutral[CHIN])
    return v + rng.normal(0.0, NOISE_FRACTION * size, v.shape)


# --- the rig ---------------------------------------------------------------------------------

def test_rig_names_order_and_shapes(rig):
    assert rig.names == ARKIT_NAMES and rig.deltas.shape == (52, 468, 3) and rig.neutral.shape == (468, 3)
    np.testing.assert_allclose(rig.neutral, load_topology().vertices, atol=1e-5)
    size = np.linalg.norm(rig.deltas, axis=2).max(axis=1)
    assert size[idx("tongueOut")] == 0.0                              # no tongue on this topology
    assert np.all(np.delete(size, idx("tongueOut")) > 0.15)


def test_rig_left_right_pairs_are_exact_mirrors(rig):
    perm = swap_left_right(list(rig.names))
    mirrored = rig.deltas[:, load_topology().mirror] * FLIP_X.astype(np.float32)
    np.testing.assert_array_equal(mirrored, rig.deltas[perm])         # pairs swap, unpaired are symmetric
    assert sum(p != i for i, p in enumerate(perm)) == 40          # 18 Left/Right pairs + jaw and mouth Left/Right


def test_rig_shapes_do_what_their_names_say(rig):
    d, v = rig.deltas, rig.neutral

    def gap(deltas, a, b):
        return np.linalg.norm((v[a] + deltas[a]) - (v[b] + deltas[b]))

    jaw = d[idx("jawOpen")]
    assert -1.5 <= jaw[CHIN, 1] <= -1.2 and jaw[LOWER_LIP_INNER, 1] < -1.2 and abs(jaw[UPPER_LIP_INNER]).max() < 0.05
    blink = d[idx("eyeBlinkLeft")]
    assert gap(blink, 386, 374) < 0.2 * gap(0 * blink, 386, 374)      # left eye (+x) closes
    assert np.abs(blink[[159, 145]]).max() == 0.0                     # the right eye does not move
    smile, frown = d[idx("mouthSmileLeft")], d[idx("mouthFrownLeft")]
    assert smile[MOUTH_CORNER_LEFT, 1] > 0.3 and smile[MOUTH_CORNER_LEFT, 0] > 0.2     # up and out
    assert frown[MOUTH_CORNER_LEFT, 1] < -0.3
    assert np.linalg.norm(smile[MOUTH_CORNER_RIGHT]) < 0.01
    pucker, funnel = d[idx("mouthPucker")], d[idx("mouthFunnel")]
    width = gap(0 * pucker, MOUTH_CORNER_LEFT, MOUTH_CORNER_RIGHT)
    assert gap(pucker, MOUTH_CORNER_LEFT, MOUTH_CORNER_RIGHT) < width - 1.0 and pucker[0, 2] > 0.4
    assert gap(funnel, UPPER_LIP_INNER, LOWER_LIP_INNER) > gap(0 * funnel, UPPER_LIP_INNER, LOWER_LIP_INNER) + 0.5
    assert d[idx("jawLeft")][CHIN, 0] > 0.5 and d[idx("mouthLeft")][UPPER_LIP_INNER, 0] > 0.4
    assert d[idx("browInnerUp")][[107, 336], 1].min() > 0.3 and d[idx("browDownLeft")][334, 1] < -0.2
    assert d[idx("mouthRollLower")][17, 2] < -0.15 and d[idx("mouthShrugLower")][17, 1] > 0.2
    cheeks, side = d[idx("cheekPuff")], np.abs(v[:, 0]) > 3.0
    assert np.linalg.norm(cheeks, axis=1).max() > 0.4
    assert np.all(cheeks[side, 0] * v[side, 0] >= -1e-6)              # the cheeks bulge outwards


# --- the fit ---------------------------------------------------------------------------------

def test_round_trip_smooth_sparse_coefficients(rig, rng):
    truth = smooth_sparse_coefficients(rng, 600)
    neutral = rig.neutral
    v = noisy(coefficients_to_vertices(truth, neutral, rig.deltas), neutral, rng)
    result = fit_coefficients(v, neutral, rig)
    err = np.abs(result.coefficients - truth).mean()
    assert err < MAX_MEAN_ABS_ERROR, err
    assert result.coefficients.shape == (600, 52) and result.coefficients.dtype == np.float32
    assert result.coefficients.min() >= 0.0 and result.coefficients.max() <= 1.0


def test_round_trip_independent_frames_on_a_speaker_face(rig, rng):
    neutral = speaker_neutral(rig, rng)
    truth = np.zeros((400, 52))
    for row in truth:
        on = rng.choice(51, 5, replace=False)
        row[on] = rng.uniform(0.2, 1.0, 5)
    v = noisy(coefficients_to_vertices(truth, neutral, adapt_basis(rig, neutral)), neutral, rng)
    result = fit_coefficients(v, neutral, rig, FitOptions(smoothness=0.0))
    err = np.abs(result.coefficients - truth).mean()
    assert err < MAX_MEAN_ABS_ERROR, err


def test_residual_is_reported(rig, rng):
    truth = smooth_sparse_coefficients(rng, 200)
    clean = coefficients_to_vertices(truth, rig.neutral, rig.deltas)
    exact = fit_coefficients(clean, rig.neutral, rig)
    assert exact.residual_rms.shape == (200,) and exact.residual_rms.max() < 0.05
    sigma = NOISE_FRACTION * np.linalg.norm(rig.neutral[FOREHEAD_TOP] - rig.neutral[CHIN])
    noisy_fit = fit_coefficients(noisy(clean, rig.neutral, rng), rig.neutral, rig)
    assert noisy_fit.residual_rms.mean() == pytest.approx(np.sqrt(3) * sigma, rel=0.1)   # per-vertex 3D noise


def test_mirrored_face_swaps_left_and_right(rig, rng):
    neutral = speaker_neutral(rig, rng)
    truth = np.zeros((120, 52))
    t = np.linspace(0, 1, 120)
    for name, w in (("mouthSmileLeft", 0.8), ("eyeBlinkLeft", 0.9), ("browOuterUpLeft", 0.6),
                    ("mouthLowerDownRight", 0.5), ("jawLeft", 0.5), ("mouthLeft", 0.4), ("jawOpen", 0.3)):
        truth[:, idx(name)] = w * np.sin(np.pi * t) ** 2
    v = noisy(coefficients_to_vertices(truth, neutral, adapt_basis(rig, neutral)), neutral, rng)
    direct = fit_coefficients(v, neutral, rig).coefficients
    mirrored = fit_coefficients(mirror_faces(v), mirror_faces(neutral), rig).coefficients
    perm = swap_left_right(list(rig.names))
    np.testing.assert_allclose(mirrored, direct[:, perm], atol=0.02)
    assert np.abs(mirrored - truth[:, perm]).mean() < MAX_MEAN_ABS_ERROR
    assert mirrored[60, idx("mouthSmileRight")] > 0.6 and mirrored[60, idx("mouthSmileLeft")] < 0.1
    assert mirrored[60, idx("jawRight")] > 0.35 and mirrored[60, idx("jawLeft")] < 0.05


def test_neutral_fits_to_zero_and_adaptation_follows_the_face(rig, rng):
    neutral = speaker_neutral(rig, rng)
    assert np.abs(fit_coefficients(neutral[None].repeat(5, 0), neutral, rig).coefficients).max() == 0.0
    adapted = adapt_basis(rig, neutral)
    assert adapted.shape == (52, 468, 3)
    ratio = np.linalg.norm(adapted[idx("mouthSmileLeft")], axis=1).max() / np.linalg.norm(
        rig.deltas[idx("mouthSmileLeft")], axis=1).max()
    assert 1.0 < ratio < 1.2                                      # a wider face smiles wider


def test_breaks_stop_smoothing_and_long_runs_match(rig, rng, monkeypatch):
    truth = smooth_sparse_coefficients(rng, 300)
    v = noisy(coefficients_to_vertices(truth, rig.neutral, rig.deltas), rig.neutral, rng)
    breaks = np.zeros(300, bool)
    breaks[[0, 100]] = True
    opts = FitOptions(tolerance=1e-6, max_iterations=3000)
    both = fit_coefficients(v, rig.neutral, rig, opts, breaks=breaks).coefficients
    first = fit_coefficients(v[:100], rig.neutral, rig, opts).coefficients
    np.testing.assert_allclose(both[:100], first, atol=2e-3)      # run 2 does not leak into run 1
    monkeypatch.setattr(bs, "PIECE_FRAMES", 400)                  # the 200-frame run in one piece
    whole = fit_coefficients(v[100:], rig.neutral, rig, opts).coefficients
    np.testing.assert_allclose(both[100:], whole, atol=2e-3)      # overlapping pieces == one solve


def test_segment_breaks():
    fi = np.array([[0, 0], [0, 1], [0, 2], [0, 5], [1, 6], [1, 7]])
    assert segment_breaks(fi).tolist() == [True, False, False, True, True, False]


def test_bad_inputs_raise(rig):
    with pytest.raises(ValueError, match=r"\(frames, 468, 3\)"):
        fit_coefficients(np.zeros((4, 467, 3)), rig.neutral, rig)
    with pytest.raises(ValueError, match="neutral"):
        fit_coefficients(np.zeros((4, 468, 3)), rig.neutral[:10], rig)
    bad = np.repeat(rig.neutral[None], 3, 0)
    bad[1, 5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_coefficients(bad, rig.neutral, rig)
    with pytest.raises(ValueError, match="smoothness"):
        FitOptions(smoothness=-1.0)
    with pytest.raises(ValueError, match="breaks"):
        fit_coefficients(bad, rig.neutral, rig, breaks=np.ones(2, bool))


def test_fit_is_fast(rig, rng):
    truth = smooth_sparse_coefficients(rng, 3000)
    v = noisy(coefficients_to_vertices(truth, rig.neutral, rig.deltas), rig.neutral, rng)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        fit_coefficients(v, rig.neutral, rig)
        best = min(best, time.perf_counter() - t0)
    assert 3000 / best > 1000            # a loose guard; benchmarks/bench_fit.py measures (>= 2000 fr/s)


# --- a prepared speaker ----------------------------------------------------------------------

def make_speaker_dir(root, rig, truth: np.ndarray, frame_index: np.ndarray, fps: float = 25.0):
    """A minimal valid speaker directory whose vertices are blends of the rig (plus its neutral)."""
    n = len(truth)
    root.mkdir()
    neutral = rig.neutral.astype(np.float32)
    arrays = {"vertices": coefficients_to_vertices(truth, neutral, rig.deltas).astype(np.float32),
              "frame_index": frame_index.astype(np.int32), "frame_times": frame_index[:, 1] / fps}
    for name, (file, shape, dtype) in dataset.ARRAYS.items():
        a = arrays.get(name, np.zeros((n,) + shape, dtype))
        np.save(root / file, np.asarray(a, dtype))
    np.save(root / dataset.REFERENCE_VERTICES, neutral)
    meta = {"format": dataset.FORMAT, "format_version": dataset.FORMAT_VERSION, "frames": n, "fps": fps,
            "fingerprint": "test"}
    (root / dataset.META).write_text(json.dumps(meta))
    return root


def test_fit_speaker_writes_coefficients_meta_and_plot(tmp_path, rig, rng):
    truth = smooth_sparse_coefficients(rng, 90)
    frame_index = np.c_[np.r_[np.zeros(50), np.ones(40)], np.r_[np.arange(50), np.arange(40)]]
    root = make_speaker_dir(tmp_path / "speaker", rig, truth, frame_index)
    seen = []
    summary = fit_speaker(root, on_progress=seen.append)
    coeffs = np.load(root / "blendshapes.npy")
    assert coeffs.shape == (90, 52) and coeffs.dtype == np.float32
    assert np.abs(coeffs - truth).mean() < MAX_MEAN_ABS_ERROR
    meta = json.loads((root / "blendshapes.json").read_text())
    assert meta["names"] == list(ARKIT_NAMES) and meta["fps"] == 25.0 and meta["frames"] == 90
    assert meta["format"] == bs.FORMAT and meta["residual_rms_cm"]["max"] < 0.05
    assert (root / "report" / "blendshapes.png").stat().st_size > 10_000
    assert summary.frames == 90 and summary.names == ARKIT_NAMES and seen and seen[-1].done == 90
    assert not list(root.rglob(".*tmp*"))


# --- the synthetic demo video (real MediaPipe tracking) --------------------------------------

@pytest.mark.slow
def test_demo_jaw_open_follows_ground_truth_openness(prepared_demo):
    ds, _, truth = prepared_demo
    summary = fit_speaker(ds.path)
    coeffs = np.load(summary.coefficients_path)
    jaw = coeffs[:, idx("jawOpen")]
    openness = truth.openness[np.asarray(ds.frame_index)[:, 1]]
    r = np.corrcoef(jaw, openness)[0, 1]
    assert r >= 0.9, f"jawOpen vs ground-truth openness: r = {r:.3f}"
