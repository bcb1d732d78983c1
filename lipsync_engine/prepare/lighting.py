"""Lighting normalization of texture atlases (paper Section 3.1.2).

Owns: BT.601 RGB<->YUV conversion; specularity removal (Eq. 3); the robust smooth
luminance gain between two geometrically aligned atlases (IRLS of Eqs. 1-2, built from
box filters); the global channel-wise gain and bias {a, b}; the four-step normalization
of a frame to a reference and its exact inverse; and the symmetry-based normalization
of the reference atlas.
Must not: warp images (the caller aligns the reference to the frame, and builds the
mirrored reference), track faces, read files or know about datasets.

Images are float32 (H, W, 3) RGB in [0, 1]; masks are (H, W) bool. No Python loop runs
over pixels: per-patch sums are cv2 area resizes and box filters, hole-fills are cv2
Gaussian pyramids (push-pull). Hot loops write into preallocated buffers: on small
machines allocating fresh full-size temporaries costs more than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# BT.601 full-range (JPEG) luma/chroma matrix, rows Y, U (Cb), V (Cr). U and V are
# zero-centred (no +0.5 offset), so a gain on Y alone scales brightness, not colour.
RGB_TO_YUV = np.array([[0.299, 0.587, 0.114],
                       [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]], np.float64)
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)  # computed, so the two are exact inverses
GAIN_EPS = 1e-6          # added to the IRLS denominator (intensity^2, patch mean)
SUPPORT_FULL = 2.5e-3    # patch mean of W*F^2 (intensity^2) at which a gain is fully trusted
VALID_FULL = 0.25        # fraction of valid pixels in a patch at which its gain is fully used
GAIN_MIN, GAIN_MAX = 0.05, 20.0  # clamp of the luminance gain (unitless ratio)
GAIN_SAMPLES_PER_PATCH = 8  # gain grid samples per patch side (the gain is smooth at patch scale)
GAIN_UPSAMPLING = cv2.INTER_LINEAR  # gain grid -> pixels (stays inside [GAIN_MIN, GAIN_MAX])
COARSE_PATCH_FACTORS = (4,)  # warm-start IRLS patch sides, multiples of patch_size (coarse to fine)
COARSE_ITERATIONS = 2    # IRLS iterations at each warm-start patch side
PUSH_GAIN = 4.0          # confidence amplification per pyramid level of the push-pull fill
PYRAMID_MIN_SIDE = 2     # the push-pull pyramid stops at this side (pixels)
SPECULAR_ALPHA_MAX = 0.95  # alpha clip, keeps (I - alpha) / (1 - alpha) finite
SPECULAR_DENOM_MIN = 1e-3  # floor of 1 - I~c in the alpha estimate (intensity)
TINY = 1e-12             # guards divisions by sums that may be exactly zero
COLOR_VAR_MIN = 1e-10    # weighted variance (intensity^2) below which a = 1 (no contrast)
A_MIN = 1e-6             # |a| below which the colour transform is not invertible


@dataclass(frozen=True)
class LightingOptions:
    """Options of lighting normalization. Validated once, here; override with dataclasses.replace;
    written into every output made with them (meta.json)."""

    patch_size: int = 16            # side of the square patch p_k of Eq. (1), atlas pixels (paper: 16 for 256x256)
    temperature: float = 0.1        # T of Eq. (2) (paper: 0.1)
    iterations: int = 8             # IRLS iterations (paper: 5-10)
    specular_percentile: float = 90.0  # specularity mask threshold, percentile of skin min-RGB (paper: 90th)
    specular_smooth_sigma: float = 1.5  # Gaussian sigma (atlas pixels) of the smoothed image used for the mask
    remove_specularities: bool = True  # Section 3.1.2 "Specularity Removal"
    symmetrize_reference: bool = True  # Section 3.1.2 "Reference Atlas Normalization using Facial Symmetry"
    register_skin: bool = True      # beyond the paper: optical flow aligns skin texture to the reference (normalize.py)
    normalize: bool = True          # Section 3.1.2 gain + colour normalization (False: raw atlases, for the ablation)

    def __post_init__(self) -> None:
        if self.patch_size < 2:
            raise ValueError(f"patch_size must be >= 2, got {self.patch_size}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 1 <= self.iterations <= 50:
            raise ValueError(f"iterations must be in 1..50, got {self.iterations}")
        if not 50.0 <= self.specular_percentile < 100.0:
            raise ValueError(f"specular_percentile must be in [50, 100), got {self.specular_percentile}")


@dataclass(frozen=True)
class LightingResult:
    """Output of normalize_frame.

    image : (H, W, 3) float32, the normalized atlas F^n in [0, 1].
    gain : (H, W) float32, the smooth luminance gain G.
    weights : (H, W) float32, the IRLS weights W in [0, 1] (0 outside `valid`).
    a, b : (3,) float32, the global channel-wise gain and bias.
    specular_alpha : (H, W) float32 alpha of Eq. (3), or None when not removed.
    """

    image: np.ndarray
    gain: np.ndarray
    weights: np.ndarray
    a: np.ndarray
    b: np.ndarray
    specular_alpha: np.ndarray | None = None


# ----------------------------------------------------------------------------- checks

def _check_image(name: str, img, shape: tuple | None = None) -> np.ndarray:
    """(H, W, 3) float32 copy-free view of `img`; ValueError naming the actual shape."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (H, W, 3), got {arr.shape}")
    if shape is not None and arr.shape[:2] != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape) + (3,)}, got {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _check_map(name: str, arr, shape: tuple | None = None, dtype=np.float32) -> np.ndarray:
    """(H, W) array of `dtype`; ValueError naming the actual shape."""
    out = np.asarray(arr)
    if out.ndim != 2 or (shape is not None and out.shape != tuple(shape)):
        want = tuple(shape) if shape is not None else "(H, W)"
        raise ValueError(f"{name} must have shape {want}, got {out.shape}")
    return out.astype(dtype, copy=False)


def _check_vec3(name: str, v) -> np.ndarray:
    """(3,) float32; ValueError naming the actual shape."""
    out = np.asarray(v, np.float32)
    if out.shape != (3,):
        raise ValueError(f"{name} must have shape (3,), got {out.shape}")
    return out


# ----------------------------------------------------------------------------- colour

def rgb_to_yuv(img: np.ndarray) -> np.ndarray:
    """BT.601 full-range RGB -> YUV with zero-centred U, V.

    img : (H, W, 3) RGB. Returns (H, W, 3) float32 (Y in [0, 1], U, V in [-0.5, 0.5]).
    """
    arr = _check_image("img", img)
    return cv2.transform(arr, RGB_TO_YUV.astype(np.float32))


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Exact inverse of rgb_to_yuv. yuv : (H, W, 3). Returns (H, W, 3) float32 RGB (unclipped)."""
    arr = _check_image("yuv", yuv)
    return cv2.transform(arr, YUV_TO_RGB.astype(np.float32))


def _percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear interpolation) of a 1-D array via one np.partition."""
    pos = q / 100.0 * (values.size - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, [lo, hi])
    return float(part[lo] + (pos - lo) * (part[hi] - part[lo]))


def _channel_min(x: np.ndarray) -> np.ndarray:
    """Min over the last axis (3 channels) of (..., 3); twice np.minimum, much faster than .min(-1)."""
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


def _luma(img: np.ndarray) -> np.ndarray:
    """(H, W) float32 Y of an (H, W, 3) float32 RGB image."""
    return cv2.transform(img, RGB_TO_YUV[:1].astype(np.float32))


def _apply_y_gain(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Steps (1)-(3): YUVtoRGB(gain * Y, U, V), unclipped, (H, W, 3) float32.

    Only Y changes, so by linearity this is RGB + YUV_TO_RGB[:, 0] * (gain - 1) * Y,
    computed that way (no channel split/merge). gain : (H, W) or a scalar.
    """
    delta = _luma(rgb)
    delta *= gain - np.float32(1.0)
    out = cv2.transform(delta, YUV_TO_RGB[:, :1].astype(np.float32))
    out += rgb
    return out


def _channel_affine(img: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """scale * img + offset per channel, (H, W, 3) float32, in one cv2.transform pass."""
    m = np.concatenate([np.diag(scale), np.reshape(offset, (3, 1))], axis=1)
    return cv2.transform(img, m.astype(np.float32))


# ----------------------------------------------------------------------------- filling

def _expand(c: np.ndarray, like: np.ndarray) -> np.ndarray:
    """An (h, w) map repeated to the channels of an (h, w) or (h, w, C) image.

    Materialized with cv2.merge: numpy broadcasting over a last axis of 3 is ~10x slower.
    """
    return cv2.merge([c] * like.shape[2]) if like.ndim == 3 else c


def _push_pull_fill(values: np.ndarray, confidence: np.ndarray, default: float) -> np.ndarray:
    """Fill low-confidence pixels smoothly from confident neighbours (push-pull).

    values : (H, W) or (H, W, C) float32, finite. confidence : (H, W) in [0, 1].
    Returns values' shape, float32: `confidence * values + (1 - confidence) * fill`,
    where fill comes from a coarser, confidence-weighted Gaussian pyramid level, so
    pixels with confidence 1 keep their value exactly; `default` where nothing at all
    is known.
    """
    v = values.astype(np.float32, copy=False)
    c = confidence.astype(np.float32, copy=False)
    pyramid = [(v, _expand(c, v))]
    while min(c.shape) > PYRAMID_MIN_SIDE:
        c_sum = cv2.pyrDown(c)
        v = cv2.pyrDown(v * pyramid[-1][1])
        v /= _expand(np.maximum(c_sum, TINY), v)
        c = np.minimum(c_sum * PUSH_GAIN, 1.0)
        pyramid.append((v, _expand(c, v)))
    filled = np.full_like(pyramid[-1][0], default)
    for v, c in reversed(pyramid):
        if filled.shape[:2] != v.shape[:2]:
            filled = cv2.pyrUp(filled, dstsize=(v.shape[1], v.shape[0]))
        # c v + (1 - c) filled, as v + (1 - c)(filled - v) in place: exactly v where c == 1
        filled -= v
        filled *= 1.0 - c
        filled += v
    return filled


# ----------------------------------------------------------------------------- specularities

def remove_specularities(image: np.ndarray, skin_mask: np.ndarray,
                         options: LightingOptions) -> tuple[np.ndarray, np.ndarray]:
    """Remove specular highlights with the soft-alpha model I = alpha + (1 - alpha) I_c (Eq. 3).

    Mask: skin pixels whose min over RGB of the Gaussian-smoothed image (sigma
    `options.specular_smooth_sigma`) exceeds the `options.specular_percentile`
    percentile of that quantity over skin. The pseudo-clean image I~c fills the masked
    pixels from the unmasked skin around them (push-pull); then per pixel
    alpha = min over RGB of (I - I~c) / (1 - I~c), clipped to [0, 0.95] (the min is the
    conservative choice: a white highlight adds the same alpha to every channel), and
    I_c = (I - alpha) / (1 - alpha). Over-detected pixels get alpha ~ 0.

    image : (H, W, 3) float32 RGB in [0, 1]. skin_mask : (H, W) bool.
    Returns clean (H, W, 3) float32 (bit-identical to `image` wherever alpha == 0, which
    includes every pixel outside the mask) and alpha (H, W) float32.
    """
    img = _check_image("image", image)
    skin = _check_map("skin_mask", skin_mask, img.shape[:2], bool)
    alpha = np.zeros(img.shape[:2], np.float32)
    if not skin.any():
        return img.copy(), alpha
    sigma = options.specular_smooth_sigma
    smooth_min = _channel_min(cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0 else img)
    threshold = _percentile(smooth_min[skin], options.specular_percentile)
    mask = skin & (smooth_min > threshold)
    if not mask.any():
        return img.copy(), alpha
    i = img[mask]
    ic = _pseudo_clean(img, skin & ~mask)[mask]
    alpha[mask] = np.clip(_channel_min((i - ic) / np.maximum(1.0 - ic, SPECULAR_DENOM_MIN)),
                          0.0, SPECULAR_ALPHA_MAX)
    clean = img.copy()
    a = alpha[mask][:, None]
    clean[mask] = (i - a) / (1.0 - a)  # where a == 0: (I - 0) / (1 - 0) == I exactly
    return clean, alpha


def _pseudo_clean(img: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Hole-fill `img` (H, W, 3) from the pixels where `known` (H, W) bool: I~c of Eq. (3).

    The push-pull fill, with its finest level done here: at unknown pixels (confidence
    0) the fill is exactly the upsampled half-resolution fill, so the full-resolution
    3-channel blend is skipped. Returns (H, W, 3) float32 in [0, 1], meaningful where
    not `known`.
    """
    h, w = known.shape
    c0 = known.astype(np.float32)
    c1 = cv2.pyrDown(c0)
    v1 = cv2.pyrDown(img * _expand(c0, img))
    v1 /= _expand(np.maximum(c1, TINY), v1)
    default = float(np.mean(cv2.mean(img, mask=known.astype(np.uint8))[:3]))
    fill = cv2.pyrUp(_push_pull_fill(v1, np.minimum(c1 * PUSH_GAIN, 1.0), default), dstsize=(w, h))
    return np.clip(fill, 0.0, 1.0, out=fill)


# ----------------------------------------------------------------------------- gain (IRLS)

def _box(x: np.ndarray, side: int) -> np.ndarray:
    """Mean of x over a centred box `side` pixels wide (reflected border).

    An even side has no centre pixel, so its two end taps get half weight
    ([0.5, 1, ..., 1, 0.5] / side): still `side` wide, but without cv2.boxFilter's
    half-pixel shift (which would become a stride-pixel shift on the gain grid).
    """
    if side % 2:
        return cv2.boxFilter(x, -1, (side, side), normalize=True, borderType=cv2.BORDER_REFLECT)
    kernel = np.ones(side + 1, np.float32)
    kernel[[0, -1]] = 0.5
    kernel /= side
    return cv2.sepFilter2D(x, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def _solve_gain(target: np.ndarray, source: np.ndarray, w: np.ndarray, patch: int,
                gain: np.ndarray, scratch: np.ndarray) -> None:
    """One IRLS gain solve: G_k = sum_j W_j R_j F_j / sum_j W_j F_j^2 over p_k, then fill.

    G is smooth at the patch scale, so it is solved on a grid of GAIN_SAMPLES_PER_PATCH
    samples per patch side: the products are area-averaged onto the grid (stride s =
    patch // GAIN_SAMPLES_PER_PATCH), box-filtered there over patch / s samples (together
    the patch_size box of Eq. (1)), and the gain is interpolated back. Patches whose
    weighted support mean W F^2 is below SUPPORT_FULL (e.g. entirely inside a
    down-weighted mouth) are blended towards a push-pull fill from their neighbours.
    target, source, w : (H, W) float32. Writes gain (H, W) float32 in place; scratch is
    a (2, H, W) float32 workspace (full-size temporaries are reused, not reallocated).
    """
    h, wid = target.shape
    stride = max(1, patch // GAIN_SAMPLES_PER_PATCH)
    low = (-(-wid // stride), -(-h // stride))  # (width, height), rounded up
    wf, prod = scratch
    np.multiply(w, source, out=wf)
    sums = []
    for other in (target, source):
        np.multiply(wf, other, out=prod)
        grid = cv2.resize(prod, low, interpolation=cv2.INTER_AREA) if stride > 1 else prod.copy()
        sums.append(_box(grid, max(1, round(patch / stride))))
    num, den = sums
    confidence = np.minimum(den * (1.0 / SUPPORT_FULL), 1.0)
    grid_gain = np.clip(_push_pull_fill(num / (den + GAIN_EPS), confidence, 1.0), GAIN_MIN, GAIN_MAX)
    if stride > 1:  # linear interpolation stays inside [GAIN_MIN, GAIN_MAX]
        cv2.resize(grid_gain, (wid, h), dst=gain, interpolation=GAIN_UPSAMPLING)
    else:
        gain[...] = grid_gain


def _reweight(target: np.ndarray, source: np.ndarray, gain: np.ndarray, valid_f: np.ndarray,
              scale: np.float32, w: np.ndarray) -> None:
    """Eq. (2) in place: w = exp(-scale * (target - gain * source)^2) * valid_f, all (H, W)."""
    np.multiply(gain, source, out=w)
    np.subtract(target, w, out=w)
    np.square(w, out=w)
    w *= -scale
    np.exp(w, out=w)
    w *= valid_f


def estimate_gain(target_y: np.ndarray, source_y: np.ndarray, valid: np.ndarray,
                  options: LightingOptions) -> tuple[np.ndarray, np.ndarray]:
    """Smooth multiplicative gain G with target ~ G * source, by IRLS of Eqs. (1)-(2).

    Weights start uniform (1 on `valid`, 0 elsewhere). Each iteration solves Eq. (1) per
    patch p_k in closed form with box filters, G_k = sum W R F / sum W F^2, then sets
    W_k = exp(-E_k / T) with E_k = N_p * r_k^2, r_k = R_k - G_k F_k and
    N_p = patch_size^2: Eq. (1)'s patch sum if every pixel of p_k had pixel k's residual.
    Why this scale: the paper leaves it open; with intensities in [0, 1], T = 0.1 and
    16x16 patches it puts the 1/e point at |r| = sqrt(T / N_p) ~ 0.02, so sensor or
    compression noise (sigma ~ 0.005, E/T ~ 0.1) keeps W ~ 0.9 while a pixel of different
    albedo (|r| ~ 0.1 or more, E/T > 25) gets W ~ 0. Using the pixel's own residual, not
    the literal patch sum, keeps good skin next to the mouth from being down-weighted.
    Coarse-to-fine warm start: the weights start uniform, but the first
    COARSE_ITERATIONS run with patches 4x patch_size before the `options.iterations`
    at patch_size. A region of different albedo larger than one patch (an open mouth,
    ~40 px on a 256 atlas) is otherwise self-consistent at 16 px (it fits its own
    "gain" with small residuals and keeps weight ~1); at 64 px it is a minority of its
    patch, gets rejected, and stays rejected at the fine side. The residual scale
    N_p / T is the fine one at every side. Regions nearly as large as the coarse patch
    (~60x60 px) can still be partly accepted.
    Pixels with no weighted support get their gain from neighbours (push-pull fill);
    near and outside the border of `valid` the gain fades to 1 (exactly 1 for patches with
    no valid pixel). The returned weights are those of the final gain's residuals.

    target_y, source_y : (H, W) luminance in [0, 1]. valid : (H, W) bool.
    Returns gain (H, W) float32 in [0.05, 20], weights (H, W) float32 in [0, 1].
    """
    tgt = _check_map("target_y", target_y)
    src = _check_map("source_y", source_y, tgt.shape)
    valid_f = _check_map("valid", valid, tgt.shape, bool).astype(np.float32)
    patch = options.patch_size
    scale = np.float32(patch * patch / options.temperature)  # N_p / T
    schedule = [(min(patch * f, *tgt.shape), COARSE_ITERATIONS) for f in COARSE_PATCH_FACTORS]
    w = valid_f.copy()
    gain = np.ones_like(tgt)
    scratch = np.empty((2,) + tgt.shape, np.float32)
    for side, iterations in schedule + [(patch, options.iterations)]:
        for _ in range(iterations):
            _solve_gain(tgt, src, w, side, gain, scratch)
            _reweight(tgt, src, gain, valid_f, scale, w)
    fade = np.minimum(_box(valid_f, patch) * (1.0 / VALID_FULL), 1.0)
    gain -= 1.0
    gain *= fade
    gain += 1.0
    return gain, w


# ----------------------------------------------------------------------------- colour transform

def estimate_color_transform(target: np.ndarray, source: np.ndarray,
                             weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channel-wise {a, b} minimizing sum_k W_k ||R_k - a F_k - b||^2, in closed form.

    Per channel c: a_c = cov_W(R_c, F_c) / var_W(F_c), b_c = mean_W(R_c) - a_c mean_W(F_c).
    A channel without weighted contrast gets a_c = 1 (bias only); all-zero weights give
    the identity (a = 1, b = 0).
    target, source : (H, W, 3). weights : (H, W) >= 0. Returns a (3,), b (3,) float32.
    """
    r = _check_image("target", target).reshape(-1, 3)
    f = _check_image("source", source, np.shape(target)[:2]).reshape(-1, 3)
    w = _check_map("weights", weights, np.shape(target)[:2]).reshape(-1)
    total = float(w.sum(dtype=np.float64))
    if not total > TINY:
        return np.ones(3, np.float32), np.zeros(3, np.float32)
    mean_r, mean_f = (w @ r) / np.float32(total), (w @ f) / np.float32(total)
    ones = np.ones(3, np.float32)
    # centred moments (no cancellation in float32); cv2.transform avoids slow broadcasting
    df = _channel_affine(f.reshape(-1, 1, 3), ones, -mean_f).reshape(-1, 3)
    dr = _channel_affine(r.reshape(-1, 1, 3), ones, -mean_r).reshape(-1, 3)
    cov = (w @ np.multiply(dr, df, out=dr)).astype(np.float64) / total  # in place: no new buffers
    var_f = (w @ np.square(df, out=df)).astype(np.float64) / total
    a = np.where(var_f > COLOR_VAR_MIN, cov / np.maximum(var_f, COLOR_VAR_MIN), 1.0)
    b = mean_r - a * mean_f
    return a.astype(np.float32), b.astype(np.float32)


# ----------------------------------------------------------------------------- frames

def normalize_frame(frame: np.ndarray, reference_aligned: np.ndarray, valid: np.ndarray,
                    options: LightingOptions, skin_mask: np.ndarray | None = None) -> LightingResult:
    """Normalize a frame atlas F to the lighting of the aligned reference R (Section 3.1.2).

    Steps: (0) if `options.remove_specularities` and a skin_mask is given, remove the
    frame's specularities; (1) (F_y, F_u, F_v) = RGBtoYUV(F); (2) F_y^l = G * F_y with G
    from estimate_gain(R_y, F_y); (3) F^l = YUVtoRGB(F_y^l, F_u, F_v); (4) F^n = a F^l + b
    with {a, b} from estimate_color_transform(R, F^l, W), clipped to [0, 1].
    The reference should already be normalized itself (specularities removed,
    symmetrized), see symmetrize_reference.

    frame, reference_aligned : (H, W, 3) float32 in [0, 1]. valid, skin_mask : (H, W) bool.
    """
    img = _check_image("frame", frame)
    ref = _check_image("reference_aligned", reference_aligned, img.shape[:2])
    valid_b = _check_map("valid", valid, img.shape[:2], bool)
    alpha = None
    if options.remove_specularities and skin_mask is not None:
        img, alpha = remove_specularities(img, skin_mask, options)
    gain, weights = estimate_gain(_luma(ref), _luma(img), valid_b, options)
    lit = _apply_y_gain(img, gain)
    a, b = estimate_color_transform(ref, lit, weights)
    out = _channel_affine(lit, a, b)
    np.clip(out, 0.0, 1.0, out=out)
    return LightingResult(out, gain, weights, a, b, alpha)


def denormalize_frame(normalized: np.ndarray, gain: np.ndarray, a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    """Exact inverse of normalize_frame's steps (2)-(4): put a normalized atlas back
    under a target's lighting.

    F^l = (F^n - b) / a; (Y, U, V) = RGBtoYUV(F^l); F = YUVtoRGB(Y / G, U, V), clipped
    to [0, 1]. Round-trips with normalize_frame wherever neither clipped.
    normalized : (H, W, 3). gain : (H, W) > 0. a, b : (3,). Returns (H, W, 3) float32.
    """
    img = _check_image("normalized", normalized)
    g = _check_map("gain", gain, img.shape[:2])
    a3, b3 = _check_vec3("a", a), _check_vec3("b", b)
    if np.any(np.abs(a3) < A_MIN):
        raise ValueError(f"colour gain a is not invertible: {a3.tolist()}")
    if not np.all(g > 0):
        raise ValueError("gain must be > 0 everywhere to be inverted")
    lit = _channel_affine(img, 1.0 / a3, -b3 / a3)
    out = _apply_y_gain(lit, 1.0 / g)
    return np.clip(out, 0.0, 1.0, out=out)


def symmetrize_reference(reference: np.ndarray, mirrored: np.ndarray, valid: np.ndarray,
                         options: LightingOptions) -> tuple[np.ndarray, np.ndarray]:
    """Remove left-right lighting variation from the reference atlas using facial symmetry.

    G^m = estimate_gain(target = Y of mirrored, source = Y of reference), so G^m(p)
    ~ Y(p') / Y(p) for p' the mirror of p. The paper writes G^s = max(G^m, G^m'), but
    with G^m(p') ~ 1 / G^m(p) that is the same value for p and p' (the larger ratio),
    which brightens *both* pixels of a pair instead of matching them. Its stated intent,
    "make the darker pixel match the brighter one", is G^s = max(G^m, 1): the darker
    pixel (G^m > 1) is raised to its partner, the brighter one (G^m < 1) is left alone.
    Asymmetric features are down-weighted by the IRLS, so their gain is interpolated
    from the skin around them and the asymmetry is preserved. R^n = G^s * R in Y (as in
    normalize_frame), clipped to [0, 1]. Remove specularities from `reference` first.

    reference, mirrored : (H, W, 3) float32 in [0, 1]; `mirrored` is the reference
    warped so that each pixel holds its mirror counterpart. valid : (H, W) bool.
    Returns normalized_reference (H, W, 3) float32 and symmetric_gain (H, W) float32.
    """
    ref = _check_image("reference", reference)
    mir = _check_image("mirrored", mirrored, ref.shape[:2])
    valid_b = _check_map("valid", valid, ref.shape[:2], bool)
    gain_m, _ = estimate_gain(_luma(mir), _luma(ref), valid_b, options)
    gain_s = np.maximum(gain_m, 1.0).astype(np.float32)
    normalized = _apply_y_gain(ref, gain_s)
    np.clip(normalized, 0.0, 1.0, out=normalized)
    return normalized, gain_s
