"""Lighting normalization (Section 3.1.2) on synthetic atlases with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync_engine.prepare.lighting import LightingOptions
from lipsync_engine.prepare.lighting import (
    LightingResult,
    denormalize_frame,
    estimate_color_transform,
    estimate_gain,
    normalize_frame,
    remove_specularities,
    rgb_to_yuv,
    symmetrize_reference,
    yuv_to_rgb,
)

SIZE = 256
SKIN_RGB = np.array([0.78, 0.58, 0.48], np.float32)
OPTIONS = LightingOptions()


def _luma(img):
    return rgb_to_yuv(img)[..., 0]


def _skin_albedo(rng, size=SIZE):
    """(size, size, 3) textured skin: low-frequency blotches plus fine pore texture."""
    coarse = cv2.resize(rng.standard_normal((size // 16, size // 16)).astype(np.float32),
                        (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0)
    lum = 1.0 + 0.06 * coarse + 0.15 * fine
    return np.clip(SKIN_RGB * lum[..., None], 0.0, 1.0).astype(np.float32)


def _smooth_gain(size=SIZE):
    """(size, size) smooth gain field spanning about 0.7..1.3."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return (1.0 + 0.3 * np.sin(2 * np.pi * x + 0.4) * np.cos(np.pi * (y - 0.3))).astype(np.float32)


def _ellipse_mask(size=SIZE, fill=0.92):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    return ((x - c) / (fill * size / 2)) ** 2 + ((y - c) / (fill * size / 2)) ** 2 <= 1.0


def test_yuv_round_trip():
    rng = np.random.default_rng(0)
    img = rng.random((64, 80, 3), dtype=np.float32)
    yuv = rgb_to_yuv(img)
    assert yuv.shape == img.shape and yuv.dtype == np.float32
    np.testing.assert_allclose(yuv[..., 0], img @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)
    assert np.abs(yuv_to_rgb(yuv) - img).max() < 1e-5
    assert np.abs(rgb_to_yuv(yuv_to_rgb(yuv)) - yuv).max() < 1e-5


def test_irls_recovers_smooth_gain_and_rejects_mouth():
    rng = np.random.default_rng(1)
    albedo = _luma(_skin_albedo(rng))
    gain_true = _smooth_gain()
    target = albedo + rng.normal(0, 0.005, albedo.shape).astype(np.float32)
    source = albedo / gain_true + rng.normal(0, 0.005, albedo.shape).astype(np.float32)
    mouth = np.zeros(albedo.shape, bool)
    mouth[150:190, 100:156] = True  # dark open mouth in the target only
    target[mouth] = 0.12 + rng.normal(0, 0.005, mouth.sum())
    valid = _ellipse_mask()

    gain, weights = estimate_gain(target, source, valid, OPTIONS)

    assert gain.shape == weights.shape == albedo.shape and gain.dtype == np.float32
    assert np.isfinite(gain).all() and np.isfinite(weights).all()
    skin = valid & ~mouth
    rel_err = np.abs(gain / gain_true - 1.0)
    assert rel_err[skin].mean() < 0.03
    assert rel_err[mouth].mean() < 0.05  # interpolated from the skin around the mouth
    assert weights[mouth].mean() < 0.1
    assert weights[skin].mean() > 0.5
    assert (weights[~valid] == 0).all()
    assert np.allclose(gain[:4, :4], 1.0)  # a corner patch with no valid pixel


def test_gain_with_no_valid_pixel_is_one():
    rng = np.random.default_rng(2)
    y = rng.random((32, 32), dtype=np.float32)
    gain, weights = estimate_gain(y, y * 0.5, np.zeros((32, 32), bool), OPTIONS)
    assert np.array_equal(gain, np.ones_like(gain)) and not weights.any()


def test_color_transform_recovers_known_gain_and_bias():
    rng = np.random.default_rng(3)
    source = rng.random((64, 64, 3), dtype=np.float32)
    a_true = np.array([1.2, 0.9, 0.75], np.float32)
    b_true = np.array([-0.05, 0.03, 0.1], np.float32)
    target = source * a_true + b_true
    weights = rng.random((64, 64), dtype=np.float32)
    weights[:, :10] = 0.0
    a, b = estimate_color_transform(target, source, weights)
    assert a.shape == b.shape == (3,)
    np.testing.assert_allclose(a, a_true, atol=1e-3)
    np.testing.assert_allclose(b, b_true, atol=1e-3)


def test_normalize_then_denormalize_round_trips():
    rng = np.random.default_rng(4)
    albedo = _skin_albedo(rng)
    shading = _smooth_gain()[..., None]
    frame = np.clip(albedo / shading * 0.9, 0, 1).astype(np.float32)
    reference = albedo
    valid = _ellipse_mask()

    result = normalize_frame(frame, reference, valid, OPTIONS)

    assert isinstance(result, LightingResult) and result.specular_alpha is None
    assert result.image.shape == frame.shape and result.image.dtype == np.float32
    # normalization brings the frame close to the reference on the face
    assert np.abs(result.image - reference)[valid].mean() < 0.02
    assert np.abs(frame - reference)[valid].mean() > 0.05
    back = denormalize_frame(result.image, result.gain, result.a, result.b)
    unclipped = np.all((result.image > 0) & (result.image < 1), axis=2)
    assert unclipped.mean() > 0.9
    assert np.abs(back - frame)[unclipped].max() < 1e-3


def test_symmetrize_reference_flattens_left_right_shading():
    rng = np.random.default_rng(5)
    albedo = _skin_albedo(rng)
    albedo = 0.5 * (albedo + np.fliplr(albedo))  # left-right symmetric face
    ramp = np.linspace(0.7, 1.0, SIZE, dtype=np.float32)[None, :, None]
    reference = albedo * ramp + rng.normal(0, 0.003, albedo.shape).astype(np.float32)
    reference = np.clip(reference, 0, 1).astype(np.float32)
    mirrored = np.ascontiguousarray(np.fliplr(reference))
    valid = np.ones((SIZE, SIZE), bool)
    half = SIZE // 2

    def left_right_ratio(img):
        y = _luma(img)
        return y[:, :half].mean() / y[:, half:].mean()

    normalized, gain_s = symmetrize_reference(reference, mirrored, valid, OPTIONS)

    assert normalized.shape == reference.shape and gain_s.shape == (SIZE, SIZE)
    assert (gain_s >= 1.0).all()
    assert abs(left_right_ratio(reference) - 1.0) > 0.1
    assert abs(left_right_ratio(normalized) - 1.0) < 0.03
    y_before, y_after = _luma(reference)[:, half:], _luma(normalized)[:, half:]
    assert np.abs(y_after / y_before - 1.0).mean() < 0.02


def _smooth_skin(size=SIZE):
    """(size, size, 3) clean skin with gentle large-scale shading, and its skin mask."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = 0.85 + 0.1 * np.sin(np.pi * x) * np.sin(np.pi * y)
    return (SKIN_RGB * shade[..., None]).astype(np.float32), _ellipse_mask(size, 0.95)


def test_specularity_removal_recovers_clean_skin():
    clean_true, skin = _smooth_skin()
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    alpha_true = 0.6 * np.exp(-((x - 90) ** 2 + (y - 110) ** 2) / (2 * 7.0 ** 2))
    observed = (alpha_true[..., None] + (1 - alpha_true[..., None]) * clean_true).astype(np.float32)

    clean, alpha = remove_specularities(observed, skin, OPTIONS)

    blob = alpha_true > 0.05
    assert np.abs(clean - clean_true)[blob].mean() < 0.03
    assert np.abs(observed - clean_true)[blob].mean() > 0.05
    untouched = alpha == 0
    assert untouched[~skin].all() and untouched.mean() > 0.8
    assert np.array_equal(clean[untouched], observed[untouched])
    assert alpha.max() <= 0.95 and alpha[blob].mean() > 0.1


def test_specularity_removal_leaves_highlight_free_skin_alone():
    clean_true, skin = _smooth_skin()
    clean, alpha = remove_specularities(clean_true, skin, OPTIONS)
    assert np.abs(clean - clean_true).mean() < 0.01
    assert np.abs(clean - clean_true)[skin].mean() < 0.01


def test_normalize_frame_reports_specular_alpha():
    clean_true, skin = _smooth_skin()
    result = normalize_frame(clean_true, clean_true, skin, OPTIONS, skin_mask=skin)
    assert result.specular_alpha is not None and result.specular_alpha.shape == skin.shape


def test_shape_errors_name_the_actual_shape():
    img = np.zeros((32, 32, 3), np.float32)
    mask = np.ones((32, 32), bool)
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        rgb_to_yuv(np.zeros((32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(32, 32, 4\)"):
        yuv_to_rgb(np.zeros((32, 32, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(16, 32\)"):
        estimate_gain(img[..., 0], np.zeros((16, 32), np.float32), mask, OPTIONS)
    with pytest.raises(ValueError, match=r"\(32, 31\)"):
        estimate_color_transform(img, img, np.ones((32, 31), np.float32))
    with pytest.raises(ValueError, match=r"\(30, 32, 3\)"):
        normalize_frame(img, np.zeros((30, 32, 3), np.float32), mask, OPTIONS)
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        remove_specularities(img, np.ones((8, 8), bool), OPTIONS)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        denormalize_frame(img, np.ones((32, 32), np.float32), np.ones(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        symmetrize_reference(img, img, np.ones((32, 32, 3), bool), OPTIONS)


@pytest.mark.parametrize("shape, patch", [((250, 243), 16), ((97, 131), 7), ((3, 3), 16)])
def test_gain_handles_odd_sizes_and_patches(shape, patch):
    rng = np.random.default_rng(6)
    albedo = np.clip(0.5 + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    x = np.arange(shape[1], dtype=np.float32)[None, :] / max(shape)
    gain_true = np.broadcast_to(1.0 + 0.2 * np.sin(2 * np.pi * x), shape).astype(np.float32)
    options = LightingOptions(patch_size=patch)
    gain, weights = estimate_gain(albedo, albedo / gain_true, np.ones(shape, bool), options)
    assert gain.shape == weights.shape == shape
    assert np.isfinite(gain).all() and np.isfinite(weights).all()
    if min(shape) >= 4 * patch:
        assert np.abs(gain / gain_true - 1.0).mean() < 0.01
