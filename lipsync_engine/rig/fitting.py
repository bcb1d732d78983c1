"""Blendshape coefficients fitted to normalized vertices: the targets of the blendshape decoder.

Paper, Section 3.2 ("Blendshapes decoder"): "these blendshapes are derived from vertices V_t
by fitting them to an existing blendshapes basis ... via optimization". This module owns
that optimization and everything around it:

- loading a rig from blendshape_rigs/<name>/basis.npz, found next to this package
  (`Path(__file__).parents[2] / "blendshape_rigs"`: the repository and the add-on zip alike);
- adapting the rig, made on MediaPipe's canonical face, to a speaker's own neutral face;
- the batched fit: coefficients in [0, 1], bounded least squares with an L1 (sparsity) and
  a temporal smoothness term, all frames at once;
- `fit_speaker`: SPEAKER_DIR/blendshapes.npy (N, 52) float32, blendshapes.json and
  report/blendshapes.png, each written atomically, the JSON last.

Must not: track or normalize video, change the prepared arrays, or know any other rig's
names (names.py maps ARKit names to other rigs; io/exports.py writes interchange files).

The problem, for one run of consecutive frames t = 1..T (a take with no excluded frames):

    minimize over c_t in [0, 1]^K:
        sum_t 1/2 ||D^T c_t - y_t||^2                          data: y_t = v_t - neutral, (3V,)
      + mu * sum_t sum_k n_k c_tk                              sparsity (L1; c >= 0)
      + lambda/2 * sum_t sum_k n_k^2 (c_tk - c_t-1,k)^2         temporal smoothness

with D (K, 3V) the adapted deltas and n_k = ||D_k|| (cm). In the scaled unknowns
u_tk = n_k c_tk (the size of shape k's motion, in cm) the data term has the unit-diagonal
Gram matrix G = D_n D_n^T and both penalties are isotropic: mu is in cm, lambda weighs a
frame-to-frame change against the same change of the fit. It is solved by ADMM for a
box-constrained QP (Boyd et al. 2011, "Distributed Optimization and Statistical Learning
via the Alternating Direction Method of Multipliers", Sections 3.1 and 5.2, with
over-relaxation 3.4.3). The linear step (I_T (x) (G + rho I) + lambda L_T (x) I_K) x = r is
solved exactly: G + rho I is diagonal in the eigenvectors Q of G, and the path-graph
Laplacian L_T of a run is diagonal in the orthonormal DCT-II basis, eigenvalues
2 - 2 cos(pi k / T) (Strang 1999, "The Discrete Cosine Transform", SIAM Review 41). So one
iteration for all frames is two DCTs along time and two (K x K) products.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct

from ..core import storage
from ..prepare import dataset
from ..prepare.dataset import segment_breaks  # noqa: F401  (public here too, for callers and tests)
from ..core.errors import DatasetError, InputError
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..core.version import __version__
from ..face.geometry import umeyama
from ..face.topology import N_VERTICES, load_topology
from .names import ARKIT_NAMES

RIGS_DIR = Path(__file__).resolve().parents[2] / "blendshape_rigs"
DEFAULT_RIG = "arkit52"
FORMAT = "lipsync3d-blendshapes"
FORMAT_VERSION = 1
COEFFICIENTS_FILE = "blendshapes.npy"
META_FILE = "blendshapes.json"
PLOT_FILE = "report/blendshapes.png"

LOCAL_SCALE_RANGE = (0.6, 1.6)   # clip of the per-vertex size ratio speaker / canonical
LOCAL_SCALE_SMOOTHING = 3        # one-ring averaging passes over that ratio
CHUNK_FRAMES = 4096              # frames projected onto the basis at a time (memory)
OVER_RELAXATION = 1.6            # ADMM alpha (Boyd et al. 3.4.3: 1.5-1.8 is usually faster)
CHECK_EVERY = 5                  # ADMM iterations between convergence checks
PIECE_FRAMES = 128               # long runs are solved in overlapping pieces of this many frames ...
PIECE_MARGIN = 8                 # ... whose first/last frames (inside a run) are recomputed by the neighbour
PLOT_NAMES = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "mouthSmileRight",
              "mouthStretchLeft", "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthLowerDownLeft",
              "mouthUpperUpLeft")


# ---------------------------------------------------------------------------------------------
# Rig
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BlendshapeRig:
    """A blendshape basis on the canonical 468-vertex face (arrays read-only).

    names : (K,) shape names. deltas : (K, 468, 3) float64 offsets at weight 1, canonical
    units (~cm; x to the viewer's right, y up, z towards the viewer). neutral : (468, 3)
    float64, the face the deltas were made on. version : the generator's rig version.
    """

    name: str
    names: tuple
    deltas: np.ndarray
    neutral: np.ndarray
    version: int


def rig_path(name: str = DEFAULT_RIG) -> Path:
    return RIGS_DIR / name / "basis.npz"


@lru_cache(maxsize=4)
def load_rig(name: str = DEFAULT_RIG) -> BlendshapeRig:
    """Load blendshape_rigs/<name>/basis.npz (cached); InputError naming the file if unusable."""
    path = rig_path(name)
    if not path.is_file():
        raise InputError(f"{path}: blendshape rig {name!r} not found (regenerate it with tools/make_arkit_rig.py)")
    try:
        with np.load(path) as z:
            names, deltas, neutral, version = tuple(str(n) for n in z["names"]), z["deltas"], z["neutral"], z["version"]
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"{path}: unreadable blendshape rig ({e})") from e
    if deltas.shape != (len(names), N_VERTICES, 3) or neutral.shape != (N_VERTICES, 3):
        raise InputError(f"{path}: expected deltas ({len(names)}, {N_VERTICES}, 3) and neutral ({N_VERTICES}, 3), "
                         f"found {deltas.shape} and {neutral.shape}")
    arrays = [np.array(a, np.float64) for a in (deltas, neutral)]
    for a in arrays:
        a.setflags(write=False)
    return BlendshapeRig(name, names, arrays[0], arrays[1], int(version))


# ---------------------------------------------------------------------------------------------
# Adapting the rig to a speaker's neutral face
# ---------------------------------------------------------------------------------------------

def _edges() -> np.ndarray:
    t = load_topology().triangles
    e = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0)


def local_scale(canonical: np.ndarray, neutral: np.ndarray, scale: float) -> np.ndarray:
    """(468,) per-vertex size ratio of `neutral` to `scale` x `canonical` (mesh edge lengths).

    Each vertex gets the mean ratio over its edges, then LOCAL_SCALE_SMOOTHING passes of
    one-ring averaging; clipped to LOCAL_SCALE_RANGE.
    """
    e = _edges()
    ratio = (np.linalg.norm(neutral[e[:, 0]] - neutral[e[:, 1]], axis=1)
             / np.maximum(scale * np.linalg.norm(canonical[e[:, 0]] - canonical[e[:, 1]], axis=1), 1e-9))
    ends = e.ravel()
    degree = np.bincount(ends, minlength=N_VERTICES)
    s = np.bincount(ends, np.repeat(ratio, 2), minlength=N_VERTICES) / np.maximum(degree, 1)
    for _ in range(LOCAL_SCALE_SMOOTHING):
        neighbours = np.bincount(e[:, 0], s[e[:, 1]], N_VERTICES) + np.bincount(e[:, 1], s[e[:, 0]], N_VERTICES)
        s = (s + neighbours) / (1 + degree)
    return np.clip(s, *LOCAL_SCALE_RANGE)


def adapt_basis(rig: BlendshapeRig, neutral: np.ndarray) -> np.ndarray:
    """Transfer the rig's deltas onto a speaker's neutral face: (K, 468, 3) float64.

    A simple deformation transfer: the similarity (Umeyama, all vertices) that takes the
    canonical face onto `neutral` rotates and scales every delta, and a per-vertex local
    scale (the speaker's mesh edge lengths over the canonical ones, smoothed) stretches
    it, so a wider mouth gets wider smiles and a longer jaw a longer jaw drop.

    Parameters
    ----------
    neutral : (468, 3) the speaker's neutral face in the normalized space (~cm).
    """
    neutral = _check_vertices(neutral, "neutral", single=True)
    sim = umeyama(rig.neutral, neutral)
    s = local_scale(rig.neutral, neutral, sim.scale)
    return sim.scale * s[None, :, None] * (rig.deltas @ sim.rotation.T)


def coefficients_to_vertices(coefficients: np.ndarray, neutral: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Blend: (F, K) coefficients -> (F, 468, 3) vertices = neutral + sum_k c_k deltas_k."""
    c = np.asarray(coefficients, np.float64)
    return np.asarray(neutral)[None] + np.tensordot(c, np.asarray(deltas), axes=(1, 0))


def _check_vertices(v, what: str, single: bool = False) -> np.ndarray:
    v = np.asarray(v, np.float64)
    shape = (N_VERTICES, 3) if single else (None, N_VERTICES, 3)
    if v.ndim != len(shape) or v.shape[-2:] != (N_VERTICES, 3):
        raise ValueError(f"{what} must have shape {shape}, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return v


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitOptions:
    """How coefficients are fitted (see the module docstring for the objective)."""

    smoothness: float = 0.1           # lambda: weight of frame-to-frame change (0 = frames independent)
    sparsity: float = 0.03            # mu: L1 weight, cm of motion a shape must explain to switch on
    adapt_to_neutral: bool = True     # transfer the rig onto the speaker's neutral face first
    rho: float = 0.25                 # ADMM penalty (the Gram matrix has a unit diagonal; 0.2-0.3 converge fastest)
    max_iterations: int = 500         # ADMM iterations at most
    tolerance: float = 1e-4           # stop once no coefficient moves more than this per iteration

    def __post_init__(self) -> None:
        if self.smoothness < 0 or self.sparsity < 0:
            raise ValueError(f"smoothness and sparsity must be >= 0, got {self.smoothness}, {self.sparsity}")
        if self.rho <= 0 or self.max_iterations < 1 or self.tolerance <= 0:
            raise ValueError("rho and tolerance must be > 0 and max_iterations >= 1")


@dataclass(frozen=True, eq=False)
class FitResult:
    """coefficients : (F, K) float32 in [0, 1], in `names` order. residual_rms : (F,) float32,
    root mean square over the 468 vertices of |fit - vertex| (cm, normalized space).
    iterations : ADMM iterations of the slowest run of frames."""

    coefficients: np.ndarray
    residual_rms: np.ndarray
    names: tuple
    iterations: int


@dataclass(frozen=True, eq=False)
class _System:
    """The fixed part of the problem: unit-norm active shapes and the eigen-decomposition of G."""

    unit: np.ndarray      # (A, 3V) unit-norm deltas of the active (non-zero) shapes
    norms: np.ndarray     # (A,) their norms n_k (cm)
    active: np.ndarray    # (A,) their indices in the rig
    gram: np.ndarray      # (A, A) G
    q: np.ndarray         # (A, A) eigenvectors of G
    g: np.ndarray         # (A,) eigenvalues of G


def _system(deltas: np.ndarray) -> _System:
    flat = deltas.reshape(len(deltas), -1)
    norms = np.linalg.norm(flat, axis=1)
    active = np.flatnonzero(norms > 1e-9)            # tongueOut has no geometry: always 0
    unit = flat[active] / norms[active, None]
    gram = unit @ unit.T
    g, q = np.linalg.eigh(gram)
    return _System(unit, norms[active], active, gram, q, np.maximum(g, 0.0))


def _admm(b: np.ndarray, sys_: _System, options: FitOptions) -> tuple[np.ndarray, int]:
    """Solve the box-constrained QP for S runs of T frames at once: b (S, T, A) -> u (S, T, A), its."""
    _, t_, a_ = b.shape
    lam, rho, mu, upper = options.smoothness, options.rho, options.sparsity, sys_.norms
    sigma = 2.0 - 2.0 * np.cos(np.pi * np.arange(t_) / t_)               # (T,) path Laplacian eigenvalues
    denom = sys_.g[None, :] + rho + lam * sigma[:, None]                  # (T, A)

    def solve(r):                                                         # exact x-update
        r = dct((r.reshape(-1, a_) @ sys_.q).reshape(r.shape), type=2, norm="ortho", axis=1, overwrite_x=True)
        r = idct(r / denom, type=2, norm="ortho", axis=1, overwrite_x=True)
        return (r.reshape(-1, a_) @ sys_.q.T).reshape(r.shape)

    z = np.clip(solve(b - mu), 0.0, upper)
    w = np.zeros_like(z)
    for it in range(1, options.max_iterations + 1):
        x = solve(b - mu + rho * (z - w))
        xh = OVER_RELAXATION * x + (1.0 - OVER_RELAXATION) * z
        z_old, z = z, np.clip(xh + w, 0.0, upper)
        w += xh - z
        if it % CHECK_EVERY == 0:
            moved = (np.abs(z - z_old) / upper).max(initial=0.0)     # coefficient units
            gap = (np.abs(x - z) / upper).max(initial=0.0)
            if max(moved, gap) < options.tolerance:
                return z, it
    return z, options.max_iterations


def _runs(breaks: np.ndarray | None, n: int) -> list[tuple[int, int]]:
    """[start, end) of every run of consecutive frames."""
    starts = np.array([0]) if breaks is None else np.union1d(np.flatnonzero(breaks), [0])
    starts = starts[starts < n]
    return list(zip(starts.tolist(), np.r_[starts[1:], n].tolist()))


def _pieces(runs) -> list[tuple[int, int, int, int]]:
    """Split runs into pieces (start, end, keep_from, keep_to) of at most PIECE_FRAMES frames.

    A run longer than PIECE_FRAMES becomes overlapping pieces of exactly PIECE_FRAMES; each
    keeps only frames at least PIECE_MARGIN away from its cut ends (the smoothness term's
    reach is a few frames), the last one ends at the run's end. So nearly every piece has
    the same length and all of them are solved in one batch.
    """
    out, size, stride = [], PIECE_FRAMES, PIECE_FRAMES - 2 * PIECE_MARGIN
    for s, e in runs:
        if e - s <= size:
            out.append((s, e, s, e))
            continue
        starts = list(range(s, e - size, stride)) + [e - size]
        kept = s
        for ps in starts:
            keep_to = e if ps == e - size else ps + size - PIECE_MARGIN
            out.append((ps, ps + size, kept, keep_to))
            kept = keep_to
    return out


def _project(vertices, neutral: np.ndarray, unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """b = D_n y and ||y||^2 for every frame, CHUNK_FRAMES at a time: ((F, A), (F,))."""
    n = len(vertices)
    b, yy = np.empty((n, len(unit))), np.empty(n)
    flat_neutral = neutral.reshape(-1)
    for i in range(0, n, CHUNK_FRAMES):
        y = np.asarray(vertices[i:i + CHUNK_FRAMES], np.float64).reshape(-1, flat_neutral.size) - flat_neutral
        if not np.isfinite(y).all():
            raise ValueError(f"vertices contain NaN or infinite values (frames {i}..{i + len(y) - 1})")
        b[i:i + len(y)] = y @ unit.T
        yy[i:i + len(y)] = np.einsum("ij,ij->i", y, y)
    return b, yy


def _solve_pieces(b: np.ndarray, pieces, sys_: _System, options: FitOptions, on_progress, cancel) -> tuple:
    """Solve every piece, batched by length: (F, A) scaled coefficients u, max iterations."""
    u = np.zeros_like(b)
    by_length: dict[int, list] = {}
    for p in pieces:
        by_length.setdefault(p[1] - p[0], []).append(p)
    done, total, iterations = 0, len(b), 0
    for length, group in sorted(by_length.items(), reverse=True):
        starts = np.array([p[0] for p in group])
        sol, its = _admm(b[starts[:, None] + np.arange(length)], sys_, options)     # (S, T, A)
        iterations = max(iterations, its)
        for (ps, _, k0, k1), piece in zip(group, sol):
            u[k0:k1] = piece[k0 - ps:k1 - ps]
            done += k1 - k0
        on_progress(Progress("fit", done, total, f"{length}-frame pieces"))
        if cancel is not None:
            cancel.check()
    return u, iterations


def fit_coefficients(vertices: np.ndarray, neutral: np.ndarray, rig: BlendshapeRig | None = None,
                     options: FitOptions = FitOptions(), breaks: np.ndarray | None = None,
                     on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None) -> FitResult:
    """Fit per-frame blendshape coefficients in [0, 1] to normalized vertices, all frames at once.

    Parameters
    ----------
    vertices : (F, 468, 3) float, normalized vertices (~cm, canonical-aligned; may be a memmap).
    neutral : (468, 3) float, the speaker's neutral face (the reference frame): coefficients 0.
    rig : the basis (default: load_rig("arkit52")), adapted to `neutral` unless
        options.adapt_to_neutral is False.
    breaks : (F,) bool, True where a frame does not follow the previous one (a new take or
        excluded frames between); no smoothing across those. None: one continuous run.

    Returns
    -------
    FitResult with coefficients (F, K) float32 in rig.names order and residual_rms (F,) cm.

    Example: for ``v = coefficients_to_vertices(c, n, rig.deltas)`` with the canonical
    neutral ``n = rig.neutral``, ``fit_coefficients(v, n, rig).coefficients`` is close to c.
    """
    rig = rig or load_rig()
    neutral = _check_vertices(neutral, "neutral", single=True)
    if np.ndim(vertices) != 3 or tuple(np.shape(vertices)[1:]) != (N_VERTICES, 3):
        raise ValueError(f"vertices must have shape (frames, {N_VERTICES}, 3), got {np.shape(vertices)}")
    if breaks is not None and np.shape(breaks) != (len(vertices),):
        raise ValueError(f"breaks must have shape ({len(vertices)},), got {np.shape(breaks)}")
    deltas = adapt_basis(rig, neutral) if options.adapt_to_neutral else rig.deltas
    sys_ = _system(deltas)
    b, yy = _project(vertices, neutral, sys_.unit)
    u, iterations = _solve_pieces(b, _pieces(_runs(breaks, len(b))), sys_, options, on_progress, cancel)
    r2 = yy - 2.0 * np.einsum("fa,fa->f", u, b) + np.einsum("fa,ab,fb->f", u, sys_.gram, u)
    coefficients = np.zeros((len(b), len(rig.names)), np.float32)
    coefficients[:, sys_.active] = np.clip(u / sys_.norms, 0.0, 1.0)
    rms = np.sqrt(np.maximum(r2, 0.0) / N_VERTICES).astype(np.float32)
    return FitResult(coefficients, rms, rig.names, iterations)


# ---------------------------------------------------------------------------------------------
# A prepared speaker: SPEAKER_DIR/blendshapes.npy, blendshapes.json, report/blendshapes.png
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitSummary:
    """What fit_speaker wrote and how well the rig explains the speaker's vertices."""

    coefficients_path: Path     # SPEAKER_DIR/blendshapes.npy, (N, 52) float32
    meta_path: Path             # SPEAKER_DIR/blendshapes.json
    plot_path: Path             # SPEAKER_DIR/report/blendshapes.png
    frames: int
    names: tuple
    residual_rms_mean: float    # cm, mean over frames of the per-frame RMS vertex residual
    residual_rms_p95: float     # cm
    seconds: float
    frames_per_second: float


def _speaker_fps(meta: dict) -> float:
    fps = meta.get("fps")
    fps = fps[0] if isinstance(fps, list) and fps else fps
    if not isinstance(fps, (int, float)) or fps <= 0:
        raise DatasetError(f"meta.json: no usable \"fps\" ({meta.get('fps')!r})")
    return float(fps)


def _fit_meta(ds, rig: BlendshapeRig, result: FitResult, options: FitOptions, seconds: float) -> dict:
    r = result.residual_rms.astype(np.float64)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "speaker_fingerprint": ds.meta.get("fingerprint"),
        "rig": rig.name, "rig_version": rig.version, "names": list(result.names),
        "fps": ds.meta["fps"], "frames": int(len(result.coefficients)),
        "array": {"file": COEFFICIENTS_FILE, "shape": list(result.coefficients.shape), "dtype": "float32",
                  "range": [0.0, 1.0], "layout": "blendshapes.npy[frame, name]; frames as in vertices.npy"},
        "residual_rms_cm": {"mean": float(r.mean()), "median": float(np.median(r)),
                            "p95": float(np.percentile(r, 95)), "max": float(r.max())} if len(r) else None,
        "options": asdict(options), "iterations": result.iterations, "seconds": round(seconds, 3),
        "plot": PLOT_FILE,
    }


def fit_speaker(speaker_dir: Path | str, options: FitOptions = FitOptions(),
                on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, *,
                rig_name: str = DEFAULT_RIG) -> FitSummary:
    """Fit the rig to every frame of a prepared speaker and store the coefficients there.

    Writes SPEAKER_DIR/blendshapes.npy ((N, 52) float32 in [0, 1], the training targets of
    the blendshape decoder, frames as in vertices.npy), report/blendshapes.png (the main
    mouth coefficients and the residual over time) and blendshapes.json (names, fps,
    residual statistics, options, version; written last). The reference face
    (reference_vertices.npy) is the neutral: its coefficients are 0. No smoothing crosses
    a take boundary or a gap of excluded frames.
    """
    root = Path(speaker_dir)
    ds = dataset.open_speaker(root)
    fps = _speaker_fps(ds.meta)
    rig = load_rig(rig_name)
    t0 = time.perf_counter()
    on_progress(Progress("fit", 0, len(ds), "fitting blendshapes"))
    result = fit_coefficients(ds.vertices, ds.reference_vertices, rig, options,
                              breaks=ds.breaks, on_progress=on_progress, cancel=cancel)
    seconds = time.perf_counter() - t0
    storage.save_npy(root / COEFFICIENTS_FILE, result.coefficients)
    (root / PLOT_FILE).parent.mkdir(parents=True, exist_ok=True)
    plot_coefficients(root / PLOT_FILE, result, fps, ds.breaks & (np.arange(len(ds)) > 0))
    storage.write_json(root / META_FILE, _fit_meta(ds, rig, result, options, seconds))
    if (root / "report" / "index.html").is_file():
        from ..prepare.report import write_index  # matplotlib is only needed when there is a report

        write_index(root)
    r = result.residual_rms
    return FitSummary(root / COEFFICIENTS_FILE, root / META_FILE, root / PLOT_FILE, len(r), result.names,
                      float(r.mean()) if len(r) else 0.0, float(np.percentile(r, 95)) if len(r) else 0.0,
                      seconds, len(r) / max(seconds, 1e-9))


def load_fitted(speaker_dir: Path | str) -> tuple[np.ndarray, float]:
    """(coefficients (N, 52) float32 in ARKit order, fps) stored by fit_speaker."""
    root = Path(speaker_dir)
    meta_path, coeff_path = root / "blendshapes.json", root / "blendshapes.npy"
    if not meta_path.is_file() or not coeff_path.is_file():
        raise DatasetError(f"{root}: has no fitted blendshapes; run `lipsync fit {root}` first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        coeffs = np.load(coeff_path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{coeff_path}: unreadable ({e})") from e
    if coeffs.ndim != 2 or coeffs.shape[1] != len(ARKIT_NAMES):
        raise DatasetError(f"{coeff_path}: expected (N, {len(ARKIT_NAMES)}) coefficients, found {coeffs.shape}")
    fps = meta["fps"]
    return coeffs, float(fps[0] if isinstance(fps, list) else fps)  # takes of mixed rates: the first


def plot_coefficients(path: Path, result: FitResult, fps: float, cuts: np.ndarray | None = None) -> None:
    """PNG of the main mouth coefficients (PLOT_NAMES) and the residual RMS over time.

    cuts : (F,) bool, True at the first frame after a take boundary or a gap (drawn as lines).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(result.coefficients)) / fps
    fig, (ax, ax_r) = plt.subplots(2, 1, figsize=(13, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(n for n in PLOT_NAMES if n in result.names):
        ax.plot(t, result.coefficients[:, result.names.index(name)], lw=1.8 if i == 0 else 1.0, color=cmap(i % 10),
                ls="-" if i < 10 else "--", label=name)
    ax_r.plot(t, result.residual_rms, lw=0.8, color="0.3")
    for x in t[np.flatnonzero(cuts)] if cuts is not None else []:
        for a in (ax, ax_r):
            a.axvline(x, color="0.8", lw=0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("coefficient")
    ax.legend(loc="upper right", ncol=4, fontsize=7)
    ax.set_title(f"Fitted ARKit blendshape coefficients ({len(t)} frames at {fps:g} fps; the mouth channels)")
    ax_r.set_ylabel("residual RMS (cm)")
    ax_r.set_xlabel("time (s, frames of all takes in order; grey lines: take boundaries or gaps)")
    fig.tight_layout()
    with storage.atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
