"""Articulation: how lively and sharp the predicted mouth is, and the two parts that make it so.

Owns:
- the articulation measures of evaluation (amplitude and speed ratio of mouth openness, lip-crop
  sharpness, whether teeth or the mouth interior show);
- the articulation gain: predicted vertex deltas and coefficients scaled about the rest face,
  fitted on a validation tail so the predicted openness varies as much as the speaker's;
- the mouth bank: real lip crops of the speaker's training frames with their lip geometry. A
  predicted frame's lip crop is the blend of the bank crops whose mouth shape is nearest the
  predicted mesh, each warped piecewise-affinely by the face mesh so its mouth has exactly
  the predicted shape. The texture therefore opens exactly as far as the mesh, and stays as
  sharp as a recording (teeth included), where a decoder alone regresses to a mean mouth.

Must not: train, read model or speaker folders (the caller passes arrays), or know about Blender.

Shapes: vertices (N, 468, 3) in the speaker's normalized space; lip crops (N, 128, 128, 3) uint8;
"crop pixels" are atlas pixels minus the lip box's corner.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.filters import gaussian_smooth
from ..face.geometry import LIP_SIZE, CylinderMap
from ..face.topology import LOWER_LIP_INNER, UPPER_LIP_INNER, load_topology
from ..face.warp import Raster
from ..prepare.normalize import mouth_openness

BANK_SIZE = 512             # mouth crops kept in a model folder (k-means medoids of the lip shapes)
BANK_NEIGHBOURS = 3         # crops blended per frame (a model's config says how many: bank_neighbours)
LEGACY_NEIGHBOURS = 3       # what a model saved before its config said (2026-12-07) blends
BANK_TEMPORAL_SIGMA = 1.0   # frames: Gaussian smoothing of the blend weights over time
WEIGHT_TRUNCATE = 3.0       # the smoothing kernel's radius in sigmas
GAIN_RANGE = (0.5, 5.0)     # the fitted articulation gain is clipped to this
GAP_STEP = 1e-3             # step along the opening direction at which the lip gap's rate is measured
GAIN_ALONG_GAP = "lip_gap"  # a model config's articulation "component" when its gain follows the lip gap
CROP_MARGIN = 24            # pixels around the lip box whose triangles are warped
RENDER_THREADS = 2          # frames of a render() warped at once (OpenCV's remap releases the GIL)
RENDER_MIN_FRAMES = 8       # fewer frames than this are warped on the calling thread
TEETH_MIN_FRACTION = 0.02   # of the mouth window: teeth-coloured pixels above this = teeth visible
TEETH_BRIGHTER = 1.05       # teeth: brighter than the crop's median brightness by this factor ...
TEETH_SATURATION = 0.80     # ... and at most this fraction of its median saturation
TEETH_PICK_WEIGHT = 0.1     # a blended crop this heavy that shows teeth lends the mouth interior its pixels
TEETH_BANK_SHARE = 0.5      # at most this share of the bank is kept for crops that show teeth
RETRACK_SCALE = 2           # atlases are upscaled this much before MediaPipe tracks them again
MOUTH_GROW_PX = (4, 6, 14)  # the rest face's inner-lip box grown left/right, up, down (crop pixels)


# ----------------------------------------------------------------------------- measures

def segments(breaks: np.ndarray) -> list[slice]:
    """Slices of the contiguous segments of (N,) breaks (True at a segment start)."""
    b = np.asarray(breaks, bool).copy()
    if len(b):
        b[0] = True
    starts = np.flatnonzero(b)
    ends = np.append(starts[1:], len(b))
    return [slice(int(s), int(e)) for s, e in zip(starts, ends)]


def pooled_std(x: np.ndarray, breaks: np.ndarray) -> float:
    """Standard deviation of (N,) x about each segment's own mean, pooled over segments."""
    x = np.asarray(x, np.float64)
    dev = np.concatenate([x[s] - x[s].mean() for s in segments(breaks)]) if len(x) else np.zeros(0)
    return float(np.sqrt(np.mean(dev ** 2))) if len(dev) else float("nan")


def mean_speed(x: np.ndarray, breaks: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of (N,) x within segments."""
    x = np.asarray(x, np.float64)
    d = np.concatenate([np.abs(np.diff(x[s])) for s in segments(breaks)]) if len(x) else np.zeros(0)
    return float(d.mean()) if len(d) else float("nan")


def amplitude_ratio(pred: np.ndarray, true: np.ndarray, breaks: np.ndarray) -> float:
    """Pooled std of predicted openness over the true one's (1 = as lively as the speaker)."""
    return pooled_std(pred, breaks) / max(pooled_std(true, breaks), 1e-12)


def speed_ratio(pred: np.ndarray, true: np.ndarray, breaks: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of predicted openness over the true one's."""
    return mean_speed(pred, breaks) / max(mean_speed(true, breaks), 1e-12)


def sharpness(lips: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N,) mean gradient energy of the luminance (Sobel, [0, 1] units)."""
    out = np.empty(len(lips))
    for i, crop in enumerate(np.asarray(lips)):
        g = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        out[i] = float((gx * gx + gy * gy).mean())
    return out


def mouth_window(rest_vertices: np.ndarray, cylinder: CylinderMap, lip_box: dict) -> tuple[slice, slice]:
    """(rows, cols) of the crop where the mouth opens: the rest face's inner-lip box, grown by
    MOUTH_GROW_PX (left/right, up, down: the jaw opens downwards)."""
    px = cylinder.project(np.asarray(rest_vertices)[load_topology().lips_inner])
    px = px - np.array([lip_box["col"], lip_box["row"]], np.float32)
    side, up, down = MOUTH_GROW_PX
    c0, c1 = int(px[:, 0].min()) - side, int(np.ceil(px[:, 0].max())) + side
    r0, r1 = int(px[:, 1].min()) - up, int(np.ceil(px[:, 1].max())) + down
    return slice(max(r0, 0), min(r1, LIP_SIZE)), slice(max(c0, 0), min(c1, LIP_SIZE))


def teeth_fraction(lips: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """(N,) fraction of the mouth window's pixels that look like teeth in each (N, 128, 128, 3) crop.

    Teeth in a lighting-normalized crop are pale: brighter than the crop's median by
    TEETH_BRIGHTER and at most TEETH_SATURATION of its median saturation.
    """
    out = np.zeros(len(lips))
    for i, crop in enumerate(np.asarray(lips)):
        hsv = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2HSV).astype(np.float32) / 255.0
        value, sat = hsv[..., 2], hsv[..., 1]
        ok = value > 0.1                       # not the black border outside the atlas
        v0, s0 = np.median(value[ok]), np.median(sat[ok])
        w_value, w_sat = value[window], sat[window]
        out[i] = ((w_value > TEETH_BRIGHTER * v0) & (w_sat < TEETH_SATURATION * s0)).mean()
    return out


def atlas_openness(atlases) -> np.ndarray:
    """(N,) mouth openness of (N, 256, 256, 3) uint8 atlases tracked again with MediaPipe (NaN where
    no face is found): how far the mouth opens in the texture itself.

    The atlases are upscaled RETRACK_SCALE times (the Face Mesh model wants a face over ~200 px)
    and tracked in video mode, one take. On the anchor's recorded atlases the re-tracked openness
    follows the mesh's with r 0.89.
    """
    from types import SimpleNamespace

    from ..face.tracking import track_frames

    def frames():
        for i, a in enumerate(atlases):
            big = cv2.resize(np.ascontiguousarray(a), None, fx=RETRACK_SCALE, fy=RETRACK_SCALE,
                             interpolation=cv2.INTER_CUBIC)
            yield SimpleNamespace(index=i, time_s=i / 25.0, image=big)

    track = track_frames(frames())
    out = np.full(len(track.usable), np.nan)
    if track.usable.any():
        out[track.usable] = mouth_openness(np.asarray(track.landmarks)[track.usable])
    return out


def texture_metrics(pred_openness: np.ndarray, true_openness: np.ndarray, breaks: np.ndarray) -> dict:
    """Amplitude and speed ratio and r of the re-tracked atlas openness (atlas_openness), over the
    frames tracked in both (a gap where either failed counts as a segment break)."""
    ok = np.isfinite(pred_openness) & np.isfinite(true_openness)
    if ok.sum() < 3:
        return {"texture_amplitude_ratio": float("nan"), "texture_speed_ratio": float("nan"),
                "texture_openness_r": float("nan"), "texture_tracked": float(ok.mean()) if len(ok) else 0.0}
    b = np.asarray(breaks, bool) | np.r_[True, ~ok[:-1]]
    p, t, b = pred_openness[ok], true_openness[ok], b[ok]
    r = float(np.corrcoef(p, t)[0, 1]) if p.std() > 1e-12 and t.std() > 1e-12 else 0.0
    return {"texture_amplitude_ratio": amplitude_ratio(p, t, b), "texture_speed_ratio": speed_ratio(p, t, b),
            "texture_openness_r": r, "texture_tracked": float(ok.mean())}


def articulation_metrics(pred_vertices: np.ndarray, true_vertices: np.ndarray, pred_lips: np.ndarray,
                         true_lips: np.ndarray, breaks: np.ndarray, cylinder: CylinderMap,
                         lip_box: dict, rest_vertices: np.ndarray) -> dict:
    """The articulation measures of one method against the truth (docs/evaluation.md).

    amplitude_ratio / speed_ratio of the mesh's mouth openness; sharpness_ratio (mean lip-crop
    gradient energy over the truth's); teeth_recall (of the frames whose true crop shows teeth,
    the fraction whose predicted crop shows teeth in the mouth window), teeth_false (of the
    frames whose true crop shows none, the fraction whose predicted crop shows teeth) and the
    fractions of frames with teeth in each.
    """
    po, to = mouth_openness(pred_vertices), mouth_openness(true_vertices)
    ps, ts = sharpness(pred_lips), sharpness(true_lips)
    window = mouth_window(rest_vertices, cylinder, lip_box)
    pt = teeth_fraction(pred_lips, window) >= TEETH_MIN_FRACTION
    tt = teeth_fraction(true_lips, window) >= TEETH_MIN_FRACTION
    return {"amplitude_ratio": amplitude_ratio(po, to, breaks), "speed_ratio": speed_ratio(po, to, breaks),
            "sharpness_ratio": float(ps.mean() / max(ts.mean(), 1e-12)),
            "teeth_frames_true": float(tt.mean()) if len(tt) else float("nan"),
            "teeth_frames_pred": float(pt.mean()) if len(pt) else float("nan"),
            "teeth_recall": float(pt[tt].mean()) if tt.any() else float("nan"),
            "teeth_false": float(pt[~tt].mean()) if (~tt).any() else float("nan")}


# ----------------------------------------------------------------------------- articulation gain

def apply_gain_coefficients(coefficients: np.ndarray, gain: float, centre: np.ndarray | None,
                            names) -> np.ndarray:
    """(N, 52) ARKit coefficients with the articulation gain: up to 1 all scale about the neutral
    (0); above 1 only the jaw and mouth coefficients scale about their mean (blinks, brows and
    cheeks are not articulation). Clipped to [0, 1]."""
    c = np.asarray(coefficients, np.float32)
    g = np.float32(gain)
    if g <= 1 or centre is None:
        return np.clip(c * g, 0, 1)
    mouth = np.array([n.startswith(("jaw", "mouth")) for n in names])
    out = c.copy()
    centre = np.asarray(centre, np.float32)
    out[:, mouth] = centre[mouth] + g * (c[:, mouth] - centre[mouth])
    return np.clip(out, 0, 1)


def opening_direction(deltas: np.ndarray, openness: np.ndarray) -> np.ndarray:
    """(468, 3) unit vector: the direction of vertex motion that goes with mouth opening.

    deltas (N, 468, 3) true vertex deltas of training frames, openness (N,): the covariance of the
    deltas with the openness, normalized (the least-squares direction of opening).
    """
    x = np.asarray(deltas, np.float64).reshape(len(deltas), -1)
    o = np.asarray(openness, np.float64)
    u = ((x - x.mean(0)) * (o - o.mean())[:, None]).sum(0)
    norm = np.linalg.norm(u)
    return (u / norm if norm > 0 else u).reshape(-1, 3).astype(np.float32)


def opening_component(deltas: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(N,) coordinate of (N, 468, 3) deltas about `centre` along the opening direction."""
    d = np.asarray(deltas, np.float32) - np.asarray(centre, np.float32)
    return d.reshape(len(d), -1) @ np.asarray(direction, np.float32).reshape(-1)


def gap_component(deltas: np.ndarray, rest: np.ndarray, centre: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(N,) how far along the opening direction each frame's mouth is open, read from its lip gap:
    the motion along `direction` from `centre` that would open the centre's lip gap (mouth_openness
    of rest + centre) as far as the frame's, at the rate the gap grows along the direction there
    (all 0 where the direction does not open the lips). Unlike the projection
    (opening_component), which sums the whole face's motion onto the direction and so carries what
    the network gets wrong everywhere else, it follows the predicted mouth opening alone.
    """
    rest = np.asarray(rest, np.float32)
    base = rest + np.asarray(centre, np.float32)
    u = np.asarray(direction, np.float32)
    o_c = float(mouth_openness(base))
    rate = float((mouth_openness(base + GAP_STEP * u) - o_c) / GAP_STEP)
    openness = mouth_openness(rest + np.asarray(deltas, np.float32))
    return (openness - o_c) / rate if abs(rate) > 1e-9 else np.zeros(len(openness))


def gain_rest(articulation_config: dict | None, rest: np.ndarray) -> np.ndarray | None:
    """The rest face to pass apply_gain for a model whose config's "articulation" entry this is:
    `rest` when its gain was fitted along the lip gap (models trained since 2026-12-08), None for
    the projection that older models' gains were fitted with."""
    return rest if (articulation_config or {}).get("component") == GAIN_ALONG_GAP else None


def apply_gain(deltas: np.ndarray, gain: float, centre: np.ndarray | None = None,
               direction: np.ndarray | None = None, rest: np.ndarray | None = None) -> np.ndarray:
    """Predicted deltas from the rest face (vertex deltas (N, 468, 3) or coefficients (N, 52)) with
    the articulation gain applied.

    Up to 1 the deltas scale about the rest face (0 = the rest face, 1 = the raw output). Above 1
    the motion about `centre` (the model's mean prediction) is scaled: a network trained on little
    data predicts a shrunken copy of the speaker's motion about its mean. With `direction`
    (vertices only) only the motion along the opening direction is added to: the other directions
    hold what audio explains least, and scaling them would only add noise. How much is added:
    with `rest` (the model's rest face; gain_rest), (gain - 1) times the frame's lip gap read as
    motion along the direction (gap_component), so the predicted lip gap varies gain times as much
    about the centre's, follows the speech as closely as the network's own does, and never closes
    past the lips touching; without it (models fitted before 2026-12-08), (gain - 1) times the
    projection of the frame's motion on the direction (opening_component), which carries the
    network's errors elsewhere in the face into the mouth (on the inner splits of
    docs/evaluation.md it lowered the anchor's openness r by 0.02).
    """
    deltas = np.asarray(deltas, np.float32)
    g = np.float32(gain)
    if g <= 1 or centre is None:
        return deltas * g
    centre = np.asarray(centre, np.float32)
    if direction is None:
        return centre + g * (deltas - centre)
    u = np.asarray(direction, np.float32)
    if rest is None:
        added = (g - 1) * opening_component(deltas, centre, u)
    else:
        rest = np.asarray(rest, np.float32)
        added = (g - 1) * gap_component(deltas, rest, centre, u)
        # closing: at most until the lips touch (the gap between the inner lips is smallest), not through
        gap = (rest[UPPER_LIP_INNER] - rest[LOWER_LIP_INNER])[None] + \
            deltas[:, UPPER_LIP_INNER] - deltas[:, LOWER_LIP_INNER]
        along = u[UPPER_LIP_INNER] - u[LOWER_LIP_INNER]
        if float(along @ along) > 0:
            added = np.maximum(added, np.minimum(-(gap @ along) / float(along @ along), 0.0))
    return deltas + added.astype(np.float32)[:, None, None] * u[None]


def fit_gain(pred: np.ndarray, true: np.ndarray, breaks: np.ndarray, true_breaks: np.ndarray | None = None) -> float:
    """The gain g that makes the pooled std of (N,) pred equal the truth's, clipped to GAIN_RANGE.

    pred, true : mouth openness, or the opening component (opening_component), of the predicted
    and the true frames; both are linear in the motion, so scaling the motion by g scales their
    variation by g. true_breaks : given, `true` is another set of frames (M,) with these segment
    starts: the speaker's own amplitude measured where it is known best (train.fit_articulation).
    """
    p, t = pooled_std(pred, breaks), pooled_std(true, breaks if true_breaks is None else true_breaks)
    if not np.isfinite(p) or p < 1e-9 or not np.isfinite(t):
        return 1.0
    return float(np.clip(t / p, *GAIN_RANGE))


def fit_gain_to_lip_gap(deltas: np.ndarray, rest: np.ndarray, centre: np.ndarray, direction: np.ndarray,
                        breaks: np.ndarray, target_std: float, iterations: int = 40, along_gap: bool = True) -> float:
    """The gain (clipped to GAIN_RANGE) at which the mouth openness (the inner-lip gap that the
    amplitude ratio measures) of (N, 468, 3) predicted `deltas`, with the gain applied as predict
    applies it (apply_gain along `direction` about `centre`), has the pooled std `target_std`.

    The gain scales the motion along the opening direction, but the lip gap is not that motion
    alone: other predicted motion (lip rounding, the jaw's share of the face height) changes it
    too, so the gain that matches the opening component leaves the lip gap short (on the anchor's
    inner split 0.61-0.70 of the speaker's; docs/evaluation.md). The openness grows monotonically
    with the gain, so the gain is found by bisection. 1.0 when the prediction does not move."""
    rest = np.asarray(rest, np.float32)

    def spread(g: float) -> float:
        return pooled_std(mouth_openness(rest + apply_gain(deltas, g, centre, direction, rest if along_gap else None)),
                          breaks)

    if not np.isfinite(target_std) or not spread(1.0) > 1e-9:
        return 1.0
    lo, hi = GAIN_RANGE
    if spread(hi) <= target_std:
        return float(hi)
    if spread(lo) >= target_std:
        return float(lo)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spread(mid) < target_std else (lo, mid)
    return float((lo + hi) / 2)


# ----------------------------------------------------------------------------- mouth bank

def _lip_ids() -> np.ndarray:
    topo = load_topology()
    return np.unique(np.concatenate([topo.lips_outer, topo.lips_inner]))


def lip_features(vertices: np.ndarray, cylinder: CylinderMap) -> np.ndarray:
    """(N, 468, 3) -> (N, 80) float32: the 40 lip landmarks in atlas pixels, flattened."""
    return cylinder.project(np.asarray(vertices)[:, _lip_ids()]).reshape(len(vertices), -1)


def _kmeans_medoids(features: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """Indices of k rows of (N, F) features nearest the centres of a k-means clustering (sorted, unique)."""
    n = len(features)
    if n <= k:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    x = features.astype(np.float64)
    centres = x[rng.choice(n, k, replace=False)]
    for _ in range(iterations):
        d = ((x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None])
        label = d.argmin(1)
        for j in range(k):
            members = x[label == j]
            if len(members):
                centres[j] = members.mean(0)
    d = ((x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None])
    return np.unique(d.argmin(0))


@dataclass(frozen=True)
class MouthBank:
    """Real lip crops of a speaker with the mesh that shaped each (see the module docstring).

    crops (K, 128, 128, 3) uint8; vertices (K, 468, 3) float32 normalized; features (K, 80);
    teeth (K,) the fraction of each crop's mouth window that looks like teeth (teeth_fraction), or
    None for a bank saved before it was kept (its renderer blends the mouth interior like the lips).
    """

    crops: np.ndarray
    vertices: np.ndarray
    features: np.ndarray
    teeth: np.ndarray | None = None

    @classmethod
    def build(cls, lips: np.ndarray, vertices: np.ndarray, cylinder: CylinderMap, size: int = BANK_SIZE,
              seed: int = 0, window: tuple[slice, slice] | None = None) -> "MouthBank":
        """The bank of at most `size` frames whose lip shapes cover the speaker's (k-means medoids).

        With the mouth `window` (mouth_window), the frames that show teeth are kept first (up to
        TEETH_BANK_SHARE of the bank; medoids of them if there are more) and the medoids of the
        others fill the rest: teeth show in few frames, and medoids of all lip shapes mostly pick
        frames without them (an inner split of the anchor, its frames rendered from their true
        meshes: teeth where the recording shows them in 0.36 of the frames, 0.57 with the teeth
        frames kept, 0.71 with MouthRenderer's teeth pick too; docs/evaluation.md).
        """
        vertices = np.asarray(vertices, np.float32)
        lips = np.asarray(lips)
        feats = lip_features(vertices, cylinder)
        if window is None:
            keep = _kmeans_medoids(feats, size, seed)
            return cls(np.ascontiguousarray(lips[keep]), vertices[keep], feats[keep])
        teeth = teeth_fraction(lips, window)
        shows = np.flatnonzero(teeth >= TEETH_MIN_FRACTION)
        rest = np.flatnonzero(teeth < TEETH_MIN_FRACTION)
        share = int(size * TEETH_BANK_SHARE)
        shows = shows[_kmeans_medoids(feats[shows], share, seed)] if len(shows) and share else shows[:0]
        rest = rest[_kmeans_medoids(feats[rest], size - len(shows), seed)] if len(rest) else rest
        keep = np.union1d(shows, rest)
        return cls(np.ascontiguousarray(lips[keep]), vertices[keep], feats[keep], teeth[keep].astype(np.float32))

    def to_arrays(self) -> dict:
        out = {"crops": self.crops, "vertices": self.vertices, "features": self.features}
        return out if self.teeth is None else {**out, "teeth": self.teeth}

    @classmethod
    def from_arrays(cls, d) -> "MouthBank":
        crops = np.asarray(d["crops"], np.uint8)
        if crops.ndim != 4 or crops.shape[1:] != (LIP_SIZE, LIP_SIZE, 3):
            raise ValueError(f"mouth bank crops must be (K, {LIP_SIZE}, {LIP_SIZE}, 3), got {crops.shape}")
        teeth = np.asarray(d["teeth"], np.float32) if "teeth" in d else None
        if teeth is not None and teeth.shape != (len(crops),):
            raise ValueError(f"mouth bank teeth must be ({len(crops)},), got {teeth.shape}")
        return cls(crops, np.asarray(d["vertices"], np.float32), np.asarray(d["features"], np.float32), teeth)

    def __len__(self) -> int:
        return len(self.crops)


def bank_neighbours(bank_config: dict | None) -> int:
    """How many crops a model's renderer blends, from its config's "mouth_bank" entry."""
    return int((bank_config or {}).get("neighbours", LEGACY_NEIGHBOURS))


class MouthRenderer:
    """Predicted meshes -> lip crops from a MouthBank (nearest shapes, mesh-warped, blended).

    neighbours : crops blended per frame; temporal_sigma : frames of Gaussian smoothing of the
    blend weights within a segment (0 = none), which keeps a change of crop from popping.
    teeth_pick : when a blended crop (weight >= TEETH_PICK_WEIGHT) shows teeth, the mouth interior
    (the inner-lip triangles, grown by a pixel) is that crop's alone, the one with the most teeth:
    a blend of crops with and without teeth thins a row of teeth to a grey smear. Needs a bank
    with teeth fractions (MouthBank.teeth).
    """

    def __init__(self, bank: MouthBank, cylinder: CylinderMap, lip_box: dict,
                 neighbours: int = BANK_NEIGHBOURS, temporal_sigma: float = BANK_TEMPORAL_SIGMA,
                 teeth_pick: bool = True):
        self.bank, self.cylinder = bank, cylinder
        self.offset = np.array([lip_box["col"], lip_box["row"]], np.float32)
        self.neighbours = max(1, min(int(neighbours), len(bank)))
        self.temporal_sigma = float(temporal_sigma)
        self.halo = int(np.ceil(WEIGHT_TRUNCATE * self.temporal_sigma))   # frames of context a weight looks at
        topo = load_topology()
        ref_px = cylinder.project(bank.vertices.mean(0)) - self.offset
        near = (ref_px > -CROP_MARGIN).all(1) & (ref_px < LIP_SIZE + CROP_MARGIN).all(1)
        kept = near[topo.triangles].all(1)
        self.triangles = topo.triangles[kept]
        interior = np.zeros(len(topo.triangles), bool)
        interior[topo.mouth_triangles] = True
        self.interior = interior[kept]                                        # per row of self.triangles
        self.teeth = bank.teeth if teeth_pick and bank.teeth is not None else None
        self.bank_px = cylinder.project(bank.vertices) - self.offset           # (K, 468, 2)
        # typical distance between neighbouring shapes: the scale of the blend kernel
        f = bank.features.astype(np.float64)
        d = np.sqrt(np.maximum((f ** 2).sum(1)[:, None] - 2 * f @ f.T + (f ** 2).sum(1)[None], 0))
        np.fill_diagonal(d, np.inf)
        self.scale = max(float(np.median(d.min(1))), 1e-6) if len(f) > 1 else 1.0   # > 0: a bank of one shape

    def weights(self, vertices: np.ndarray, breaks: np.ndarray) -> np.ndarray:
        """(N, K) float32 blend weights of the bank crops (rows sum to 1, at most `neighbours` nonzero)."""
        q = lip_features(vertices, self.cylinder).astype(np.float64)
        f = self.bank.features.astype(np.float64)
        d2 = np.maximum((q ** 2).sum(1)[:, None] - 2 * q @ f.T + (f ** 2).sum(1)[None], 0)
        w = np.exp(-(d2 - d2.min(1, keepdims=True)) / (2 * self.scale ** 2))
        if self.temporal_sigma > 0:
            for s in segments(breaks):
                w[s] = gaussian_smooth(w[s], self.temporal_sigma, axis=0, truncate=WEIGHT_TRUNCATE)
        top = np.argpartition(-w, self.neighbours - 1, axis=1)[:, :self.neighbours]
        out = np.zeros_like(w, dtype=np.float32)
        rows = np.arange(len(w))[:, None]
        out[rows, top] = w[rows, top]
        return out / np.maximum(out.sum(1, keepdims=True), 1e-12)

    def _teeth_source(self, weights: np.ndarray, ids: np.ndarray) -> int | None:
        """The crop whose pixels fill the mouth interior (see teeth_pick), or None: blend it."""
        if self.teeth is None:
            return None
        ids = ids[(weights[ids] >= TEETH_PICK_WEIGHT) & (self.teeth[ids] >= TEETH_MIN_FRACTION)]
        return int(ids[np.argmax(self.teeth[ids])]) if len(ids) else None

    def _interior(self, raster: Raster) -> np.ndarray:
        """(128, 128) bool: the pixels of the inner-lip triangles, grown by one pixel."""
        mask = np.zeros(LIP_SIZE * LIP_SIZE, np.uint8)
        mask[raster.pixels[self.interior[raster.triangle]]] = 1
        return cv2.dilate(mask.reshape(LIP_SIZE, LIP_SIZE), np.ones((3, 3), np.uint8)).astype(bool)

    def render(self, vertices: np.ndarray, breaks: np.ndarray | None = None, rows: slice | None = None,
               ) -> np.ndarray:
        """(N, 468, 3) predicted vertices -> (M, 128, 128, 3) uint8 lip crops of `rows` (all N by default).

        breaks : (N,) True at a segment start (the blend weights are not smoothed across it); rows
        outside `rows` only lend their shapes to the smoothing of the weights (chunk halos).
        Pixels the warped mesh leaves uncovered keep the heaviest crop, unwarped.
        """
        vertices = np.asarray(vertices, np.float32)
        n = len(vertices)
        breaks = np.r_[True, np.zeros(max(n - 1, 0), bool)] if breaks is None else np.asarray(breaks, bool)
        w = self.weights(vertices, breaks)
        picked = list(range(n)[rows] if rows is not None else range(n))
        dst_px = self.cylinder.project(vertices[picked]) - self.offset if len(picked) else np.zeros((0, 468, 2))
        out = np.empty((len(picked), LIP_SIZE, LIP_SIZE, 3), np.uint8)

        def frames(part: range) -> None:
            for k in part:
                i = picked[k]
                ids = np.flatnonzero(w[i])
                raster = Raster(dst_px[k], self.triangles, (LIP_SIZE, LIP_SIZE))
                acc = np.zeros((LIP_SIZE, LIP_SIZE, 3), np.float32)
                pick = self._teeth_source(w[i], ids)
                for j in ids:
                    warped = raster.warp(self.bank.crops[j], self.bank_px[j])
                    acc += w[i, j] * warped.astype(np.float32)
                    if j == pick:
                        teeth = warped
                if pick is not None:
                    inside = self._interior(raster)
                    acc[inside] = teeth[inside]
                base = self.bank.crops[ids[np.argmax(w[i, ids])]]
                out[k] = np.where(raster.mask[..., None], np.clip(acc + 0.5, 0, 255), base).astype(np.uint8)

        m = len(picked)
        if m < RENDER_MIN_FRAMES or RENDER_THREADS < 2:
            frames(range(m))
            return out
        # each frame is written by one thread alone, so the result is the same as on one thread
        # (a 3 s line's 90 crops: 0.29 s on one thread, 0.21 s on two; docs/benchmarks.md)
        bounds = np.linspace(0, m, RENDER_THREADS + 1).astype(int)
        with ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="lipsync-bank") as pool:
            for f in [pool.submit(frames, range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]:
                f.result()
        return out
