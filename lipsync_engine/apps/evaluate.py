"""`lipsync evaluate`: self-reenactment on held-out speech, the model side by side with baselines.

Owns: the held-out split (by default the model's own contiguous held-out tail; held-out videos
are prepared in the model's normalized space), the model's auto-regressive prediction over
held-out frames, three baselines built from the training frames only, the metrics, and the
JSON report (plots: evaluate_plots.py). Must not: train, change a model or an existing
speaker directory, or import bpy.

Methods (every one predicts normalized vertices, a 128x128 lip crop and 52 blendshapes):
    model      LipSync3D; the lip crop is fed back auto-regressively (zeros at a take start)
    static     the reference face: reference vertices, reference lip crop, zero coefficients
    envelope   Blender's "Bake Sound to F-Curves": per-frame audio RMS envelope mapped linearly
               (least squares on the training frames) to every vertex and coefficient; lip crop
               of the training frame whose mouth openness is nearest the predicted one
    retrieval  nearest training frame by audio features (log band energies, standardized)

Metrics (docs/evaluation.md defines them exactly): lip landmark distance (LMD) in pixels of the
256-px atlas, SSIM of the lip crop and of the full 256x256 atlas (upper face from the reference,
or from the frame itself), Pearson r of mouth openness, jitter of lip landmarks and of lip texture (against the ground
truth's own) and blendshape MAE.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import storage
from ..core.errors import DatasetError, InputError
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..core.version import __version__
from ..face.geometry import LIP_SIZE, CylinderMap
from ..face.topology import load_topology
from ..inference.render import compose_atlas as compose
from ..model import checkpoint
from ..model.articulation import (MouthBank, MouthRenderer, amplitude_ratio, apply_gain, apply_gain_coefficients,
                                  articulation_metrics, atlas_openness, bank_neighbours, gain_rest, texture_metrics)
from ..model.losses import SSIM_WINDOW, ssim_map
from ..model.network import autoregressive_lips
from ..prepare import dataset
from ..prepare.audio import HANN, N_FFT
from ..prepare.lighting import LightingOptions
from ..prepare.normalize import mouth_openness
from ..prepare.pipeline import PrepareOptions, prepare_speaker
from ..rig.fitting import fit_speaker
from ..rig.names import ARKIT_NAMES
from ..prepare.lookahead import PAPER_LOOKAHEAD_MS, model_lookahead_ms, speaker_spectrograms
from ..prepare.phones import speaker_phones

FORMAT = "lipsync3d-evaluation"
FORMAT_VERSION = 1
RESULT_JSON, OPENNESS_PNG, ATLASES_PNG = "evaluation.json", "openness.png", "atlases.png"
METHODS = ("model", "static", "envelope", "retrieval")
ENVELOPE_COLUMNS = (10, 11, 12, 13)  # STFT columns around the frame time (centres -15..+15 ms)
RETRIEVAL_BANDS = 16       # frequency bands (16 bins = 500 Hz each) of the retrieval feature
RETRIEVAL_GROUPS = 4       # time groups (6 columns = 60 ms each) of the retrieval feature
POWER_FLOOR = 1e-4         # added to band power before the log (squared DFT units)
CHUNK = 256                # frames read from memory maps at a time


@dataclass(frozen=True)
class EvaluateOptions:
    device: str = "cpu"          # torch device for the model's prediction and SSIM
    batch_frames: int = 128      # frames per SSIM / retrieval block
    samples: int = 4             # held-out frames shown side by side in atlases.png
    write_plots: bool = True     # openness.png and atlases.png
    texture: str = "auto"        # the model's lip crops: "auto" (the mouth bank where the model has one, as
                                 # `lipsync predict` does), "bank", or "network" (the texture decoder)

    def __post_init__(self) -> None:
        if self.batch_frames < 1 or self.samples < 1:
            raise ValueError("batch_frames and samples must be >= 1")
        if self.texture not in ("auto", "bank", "network"):
            raise ValueError(f"texture must be auto, bank or network, got {self.texture!r}")


@dataclass(frozen=True)
class MethodOutput:
    """What one method predicts for N frames."""

    vertices: np.ndarray            # (N, 468, 3) float32, normalized space
    lips: np.ndarray                # (N, 128, 128, 3) uint8 lighting-normalized lip crop
    blendshapes: np.ndarray | None  # (N, 52) float32 ARKit coefficients, None when unknown


@dataclass(frozen=True)
class EvaluationResult:
    path: Path                   # the evaluation.json written
    frames: int                  # held-out frames evaluated
    metrics: dict                # method -> metric name -> value
    ground_truth: dict           # the ground truth's own jitter
    seconds: float


# ----------------------------------------------------------------------------- metrics

def lip_vertex_ids() -> np.ndarray:
    """(40,) int64: the outer and inner lip loops of the MediaPipe mesh (the LMD landmarks)."""
    topo = load_topology()
    return np.unique(np.concatenate([topo.lips_outer, topo.lips_inner])).astype(np.int64)


def landmark_pixels(vertices: np.ndarray, cylinder) -> np.ndarray:
    """(N, 468, 3) normalized vertices -> (N, 40, 2) lip landmarks in 256-px atlas pixels."""
    return cylinder.project(np.asarray(vertices)[:, lip_vertex_ids()]).astype(np.float64)


def landmark_distance(pred_px: np.ndarray, true_px: np.ndarray) -> float:
    """LMD: mean over frames and landmarks of the Euclidean distance, (N, L, 2) pixels -> pixels."""
    if pred_px.shape != true_px.shape:
        raise ValueError(f"landmark arrays differ in shape: {pred_px.shape} vs {true_px.shape}")
    return float(np.linalg.norm(pred_px - true_px, axis=-1).mean())


def second_differences(x: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """x[t+1] - 2 x[t] + x[t-1] for every t whose neighbours are in its segment; (N, ...) -> (M, ...)."""
    x = np.asarray(x, np.float64)
    breaks = np.asarray(breaks, bool)
    ok = np.zeros(len(x), bool)
    ok[1:-1] = ~breaks[1:-1] & ~breaks[2:]
    t = np.flatnonzero(ok)
    return x[t + 1] - 2 * x[t] + x[t - 1]


def landmark_jitter(px: np.ndarray, breaks: np.ndarray) -> float:
    """Mean length of the second difference of lip landmarks (N, L, 2), pixels per frame^2."""
    d = second_differences(px, breaks)
    return float(np.linalg.norm(d, axis=-1).mean()) if len(d) else float("nan")


def texture_jitter(lips: np.ndarray, breaks: np.ndarray) -> float:
    """Mean absolute second difference of lip-crop intensities (N, H, W, 3) uint8, in [0, 1] units."""
    d = second_differences(np.asarray(lips, np.float32) / 255.0, breaks)
    return float(np.abs(d).mean()) if len(d) else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; 0.0 when either series is constant (no linear relation can be shown)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = a.std(), b.std()
    if sa < 1e-12 or sb < 1e-12:
        return 0.0
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


@torch.no_grad()
def ssim_sums(a: np.ndarray, b: np.ndarray, device: str = "cpu", batch: int = 128) -> tuple[np.ndarray, int]:
    """((N,) sums of the SSIM map (losses.ssim_map) over channels and positions, positions x channels per frame)."""

    out, count = [], 0
    for s in range(0, len(a), batch):  # copies: the arrays may be read-only maps
        x = torch.from_numpy(np.array(a[s:s + batch])).to(device).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(np.array(b[s:s + batch])).to(device).permute(0, 3, 1, 2).float() / 255
        m = ssim_map(x, y)
        out.append(m.double().sum((1, 2, 3)).cpu().numpy())
        count = m[0].numel()
    return (np.concatenate(out) if out else np.zeros(0)), count


def ssim_per_frame(a: np.ndarray, b: np.ndarray, device: str = "cpu", batch: int = 128) -> np.ndarray:
    """(N,) SSIM of uint8 (N, H, W, 3) image pairs; the same measure as losses.ssim, per frame."""
    sums, count = ssim_sums(a, b, device, batch)
    return sums / max(count, 1)


def lip_region(lip_box: dict, size: int = 256) -> tuple[slice, slice]:
    """Atlas pixels whose SSIM windows can see the lip box: compositions differ only there.

    The SSIM map of a crop (rows r0..r1) holds exactly the full map's positions whose 11x11
    window overlaps the lip box, so full-atlas SSIM = (the part outside, computed once per
    frame, + this crop's map) / the full map's size.
    """
    m = SSIM_WINDOW - 1
    r, c = int(lip_box["row"]), int(lip_box["col"])
    return (slice(max(0, r - m), min(size, r + LIP_SIZE + m)), slice(max(0, c - m), min(size, c + LIP_SIZE + m)))


def compose_atlas(reference_atlas: np.ndarray, lips: np.ndarray, lip_box: dict) -> np.ndarray:
    """(256, 256, 3) base atlas + (N, 128, 128, 3) lip crops -> (N, 256, 256, 3) uint8 (predict.compose_atlas)."""
    return compose(reference_atlas, np.asarray(lips), lip_box)


# ----------------------------------------------------------------------------- audio features

def band_powers(spectrograms: np.ndarray) -> np.ndarray:
    """(N, 256, 24, 2) complex STFT stacks -> (N, 256, 24) float64 power |X|^2."""
    s = np.asarray(spectrograms, np.float64)
    return s[..., 0] ** 2 + s[..., 1] ** 2


def spectrogram_envelope(spectrograms: np.ndarray) -> np.ndarray:
    """(N,) float64 RMS envelope of each frame's audio from its stored STFT (Parseval).

    The windowed energy of a column is (|X_0|^2 + 2 sum_k |X_k|^2) / N_FFT; averaged over the
    four columns nearest the frame time (60 ms) and divided by the window energy, it is the
    mean-square audio level there, as `audio.envelope` measures over 40 ms from raw samples.
    """
    p = band_powers(np.asarray(spectrograms)[:, :, list(ENVELOPE_COLUMNS)])   # (N, 256, 4)
    energy = (p[:, 0] + 2 * p[:, 1:].sum(1)) / N_FFT                           # (N, 4)
    return np.sqrt(energy.mean(1) / float((HANN.astype(np.float64) ** 2).sum()))


def retrieval_features(spectrograms: np.ndarray) -> np.ndarray:
    """(N, 256, 24, 2) -> (N, 64) float32 log band powers: 16 bands of 500 Hz x 4 groups of 60 ms."""
    p = band_powers(spectrograms)
    n = len(p)
    pooled = p.reshape(n, RETRIEVAL_BANDS, -1, RETRIEVAL_GROUPS, p.shape[2] // RETRIEVAL_GROUPS).mean((2, 4))
    return np.log(pooled + POWER_FLOOR).reshape(n, -1).astype(np.float32)


def _chunked(fn, array, rows: np.ndarray) -> np.ndarray:
    """fn applied to array[rows] CHUNK rows at a time (memory maps stay unread elsewhere)."""
    return np.concatenate([fn(np.asarray(array[rows[s:s + CHUNK]])) for s in range(0, len(rows), CHUNK)])


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class _Frames:
    """Ground truth of a set of frames of a speaker directory."""

    ds: dataset.SpeakerDataset
    rows: np.ndarray           # (N,) row numbers in ds
    breaks: np.ndarray         # (N,) True where a frame does not follow the previous one

    def vertices(self) -> np.ndarray:
        return np.asarray(self.ds.vertices[self.rows], np.float32)

    def lips(self) -> np.ndarray:
        return np.asarray(self.ds.lips[self.rows])

    def blendshapes(self) -> np.ndarray | None:
        coeffs = self.ds.blendshapes()
        return None if coeffs is None else np.asarray(coeffs[self.rows], np.float32)


def _frames(ds: dataset.SpeakerDataset, rows: np.ndarray) -> _Frames:
    breaks = ds.breaks[rows]
    breaks[:1] = True
    breaks[1:] |= np.diff(rows) != 1     # a gap in the selected rows is a break too
    return _Frames(ds, rows, breaks)


def model_split(config: dict) -> tuple[int, int]:
    """(frames before the held-out tail, all frames) of the speaker a model was trained on.

    The held-out tail is the test tail when the model has one (TrainOptions.test_fraction: neither
    trained on nor used to stop training or fit the articulation gain), else the validation tail.
    """
    split = config.get("split")
    n = int(config["frames"])
    if split and int(split.get("test_frames", 0)) > 0:
        return n - int(split["test_frames"]), n
    if split:
        return int(split["train_frames"]), n
    n_val = int(round(n * float(config["options"]["val_fraction"])))
    return n - n_val, n


def _same_space(meta: dict, config: dict) -> bool:
    a, b = meta["cylinder"], config["cylinder"]
    return all(math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-6) for k in a) and \
        (meta["lip_box"]["row"], meta["lip_box"]["col"]) == (config["lip_box"]["row"], config["lip_box"]["col"])


def resolve_held_out(config: dict, held_out: Path) -> tuple[_Frames, _Frames]:
    """(training frames, held-out frames) for a model and a held-out speaker directory.

    If `held_out` is the model's own training speaker, the held-out frames are its contiguous
    tail that training never saw; otherwise all frames of `held_out`, which must have been
    prepared in the same normalized space (same reference face and cylinder).
    """
    train_dir = Path(config["speaker"])
    if not (train_dir / dataset.META).is_file():
        raise DatasetError(f"{train_dir}: the model's training speaker directory is missing; the baselines "
                           f"are built from its training frames")
    train_ds = dataset.open_speaker(train_dir)
    n_train, n = model_split(config)
    if len(train_ds) != n:
        raise DatasetError(f"{train_dir}: has {len(train_ds)} frames but the model was trained on {n}; "
                           f"it was prepared again after training")
    train = _frames(train_ds, np.arange(n_train))
    test_ds = dataset.open_speaker(held_out)
    if test_ds.path.resolve() == train_dir.resolve() or test_ds.meta.get("fingerprint") == train_ds.meta.get("fingerprint"):
        if n_train == n:
            raise DatasetError(f"{held_out}: the model was trained on all of its frames (val_fraction 0); "
                               f"train with a held-out tail or pass a held-out speaker directory")
        return train, _frames(train_ds, np.arange(n_train, n))
    if not _same_space(test_ds.meta, config):
        raise DatasetError(f"{held_out}: prepared against a different reference face than the model's speaker "
                           f"{train_dir}; prepare the held-out videos together with the training videos")
    return train, _frames(test_ds, np.arange(len(test_ds)))


# ----------------------------------------------------------------------------- methods

ENCODE_BATCH = 256           # frames per audio-encoder batch


@torch.no_grad()
def predict_autoregressive(model, spectrograms: np.ndarray, breaks: np.ndarray, spec_scale: float,
                           reference_lips: torch.Tensor, device: str = "cpu", cancel: CancelToken | None = None,
                           tick=lambda n: None, phones: np.ndarray | None = None) -> dict:
    """Run the model over frames in time order, feeding back its own lip crop
    (network.autoregressive_lips, the loop prediction uses).

    spectrograms : (N, 256, 24, 2); breaks : (N,) True at a segment start (zeros are fed there).
    phones : (N, phone context) labels, for a model that reads them (prepare/phones.py). All segments advance together, one frame each per forward pass. Returns numpy
    {"vertex_deltas" (N, 468, 3), "lips" (N, 128, 128, 3) uint8, "blendshapes" (N, 52)}.
    """
    n = len(spectrograms)
    if n == 0:
        return {"vertex_deltas": np.zeros((0, 468, 3), np.float32),
                "lips": np.zeros((0, LIP_SIZE, LIP_SIZE, 3), np.uint8), "blendshapes": np.zeros((0, 52), np.float32)}
    def batch_phones(s: int):
        return None if phones is None else torch.from_numpy(np.array(phones[s:s + ENCODE_BATCH], np.int64)).to(device)
    codes = torch.cat([model.audio(torch.from_numpy(np.array(spectrograms[s:s + ENCODE_BATCH], np.float32))
                                   .to(device) * spec_scale, batch_phones(s))
                       for s in range(0, n, ENCODE_BATCH)])                                 # (N, N_s)

    def step(_k: int, rows: int) -> None:
        tick(rows)
        if cancel is not None:
            cancel.check()
    lips, _ = autoregressive_lips(model, codes, reference_lips.to(device)[None], np.flatnonzero(breaks),
                                  on_step=step)
    return {"vertex_deltas": model.geometry(codes).cpu().numpy(), "lips": lips.cpu().numpy(),
            "blendshapes": model.blendshapes(codes).cpu().numpy()}


def model_prediction(model_dir: Path, spectrograms: np.ndarray, breaks: np.ndarray, device: str,
                     cancel=None, tick=lambda n: None, articulation: float | None = None,
                     texture: str = "auto", phones: np.ndarray | None = None) -> MethodOutput:
    """The model's output as `lipsync predict` shapes it (articulation gain, mouth-bank texture),
    without its temporal smoothing or silence handling. phones : the frames' phone contexts, for
    a model that reads them (phones.speaker_phones)."""
    model, config, extra = checkpoint.load_model(model_dir, device)
    out = predict_autoregressive(model, spectrograms, breaks, float(config["spectrogram_scale"]),
                                 extra["reference_lips"], device, cancel, tick, phones)
    ref = extra["reference_vertices"].cpu().numpy()
    gain = float((config.get("articulation") or {}).get("gain", 1.0)) if articulation is None else articulation
    centre = {k: extra[k].float().cpu().numpy() for k in ("mean_vertex_deltas", "mean_blendshapes",
                                                           "opening_direction") if k in extra}
    vertices = ref + apply_gain(out["vertex_deltas"], gain, centre.get("mean_vertex_deltas"),
                                centre.get("opening_direction"), gain_rest(config.get("articulation"), ref))
    bs = apply_gain_coefficients(out["blendshapes"], gain, centre.get("mean_blendshapes"), ARKIT_NAMES) \
        if config.get("has_blendshapes", True) else None
    lips = out["lips"]
    if config.get("mouth_bank") and texture != "network":
        with np.load(Path(model_dir) / checkpoint.MOUTH_BANK) as z:
            renderer = MouthRenderer(MouthBank.from_arrays(z), CylinderMap.from_dict(config["cylinder"]),
                                     config["lip_box"], neighbours=bank_neighbours(config["mouth_bank"]))
        lips = renderer.render(vertices, breaks)
    return MethodOutput(vertices, lips, bs)


def reference_lips(speaker: dataset.SpeakerDataset) -> np.ndarray:
    """(128, 128, 3) uint8 lip crop of the speaker's lighting-normalized reference atlas."""
    return speaker.reference_lips()


def static_baseline(train: _Frames, n: int) -> MethodOutput:
    """(a) The reference face on every frame: no motion, the neutral (zero) coefficients."""
    verts = np.repeat(np.asarray(train.ds.reference_vertices, np.float32)[None], n, axis=0)
    lips = np.repeat(reference_lips(train.ds)[None], n, axis=0)
    has_bs = train.blendshapes() is not None
    return MethodOutput(verts, lips, np.zeros((n, 52), np.float32) if has_bs else None)


def _linear_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares y ~ a x + b for (N,) x and (N, D) y -> (2, D) [a; b]."""
    design = np.stack([x, np.ones_like(x)], 1)
    return np.linalg.lstsq(design, y.reshape(len(y), -1), rcond=None)[0]


def envelope_baseline(train: _Frames, test_spectrograms: np.ndarray) -> MethodOutput:
    """(b) Audio envelope -> every vertex and coefficient, linearly (best fit on training frames);
    the lip crop of the training frame whose mouth openness is nearest the predicted openness."""
    env_train = _chunked(spectrogram_envelope, train.ds.spectrograms, train.rows)
    env_test = spectrogram_envelope(test_spectrograms)
    verts_train = train.vertices()
    coef = _linear_fit(env_train, verts_train)
    verts = (np.stack([env_test, np.ones_like(env_test)], 1) @ coef).reshape(-1, 468, 3).astype(np.float32)
    open_train, open_pred = mouth_openness(verts_train), mouth_openness(verts)
    order = np.argsort(open_train)
    pos = np.clip(np.searchsorted(open_train[order], open_pred), 1, len(order) - 1)
    left, right = order[pos - 1], order[pos]
    nearest = np.where(np.abs(open_train[left] - open_pred) <= np.abs(open_train[right] - open_pred), left, right)
    lips = _take_rows(train.ds.lips, train.rows[nearest])
    bs_train = train.blendshapes()
    bs = None
    if bs_train is not None:
        bs = (np.stack([env_test, np.ones_like(env_test)], 1) @ _linear_fit(env_train, bs_train)).astype(np.float32)
    return MethodOutput(verts, lips, bs)


def retrieval_baseline(train: _Frames, test_spectrograms: np.ndarray, batch: int = 128) -> MethodOutput:
    """(c) The training frame nearest in standardized audio features: its vertices, lips, coefficients."""
    f_train = _chunked(retrieval_features, train.ds.spectrograms, train.rows)
    f_test = retrieval_features(test_spectrograms)
    mean, std = f_train.mean(0), f_train.std(0) + 1e-6
    a = torch.from_numpy((f_train - mean) / std)
    nearest = np.concatenate([torch.cdist(torch.from_numpy((f_test[s:s + batch] - mean) / std), a).argmin(1).numpy()
                              for s in range(0, len(f_test), batch)])
    rows = train.rows[nearest]
    bs_train = train.blendshapes()
    return MethodOutput(_take_rows(train.ds.vertices, rows).astype(np.float32), _take_rows(train.ds.lips, rows),
                      None if bs_train is None else bs_train[nearest])


def _take_rows(array, rows: np.ndarray) -> np.ndarray:
    """array[rows] for unsorted, repeated rows of a memory map (reads each row once)."""
    uniq, inverse = np.unique(rows, return_inverse=True)
    return np.asarray(array[uniq])[inverse]


# ----------------------------------------------------------------------------- scoring

def score(pred: MethodOutput, truth: dict, cylinder, lip_box: dict, ref_atlas: np.ndarray,
          breaks: np.ndarray, options: EvaluateOptions) -> dict:
    """All metrics of one method against the ground truth dict (vertices, lips, atlas rows, blendshapes)."""
    px = landmark_pixels(pred.vertices, cylinder)
    lip_ssim = ssim_per_frame(pred.lips, truth["lips"], options.device, options.batch_frames)
    rows, cols = lip_region(lip_box)
    full, own = [], []
    composed = (a for s in range(0, len(pred.lips), options.batch_frames)
                for a in compose_atlas(ref_atlas, pred.lips[s:s + options.batch_frames], lip_box))
    texture_open = atlas_openness(composed)
    for s in range(0, len(pred.lips), options.batch_frames):
        lips, gt = pred.lips[s:s + options.batch_frames], truth["atlas"](s, s + options.batch_frames)
        full.append(ssim_sums(compose_atlas(ref_atlas, lips, lip_box)[:, rows, cols], gt[:, rows, cols],
                              options.device)[0])
        pasted = np.stack([compose_atlas(g, lip[None], lip_box)[0, rows, cols] for g, lip in zip(gt, lips)])
        own.append(ssim_sums(pasted, gt[:, rows, cols], options.device)[0])
    outside, count = truth["atlas_outside"]
    m = {"lmd_px": landmark_distance(px, truth["px"]),
         "lip_ssim": float(lip_ssim.mean()),
         "atlas_ssim": float(((outside + np.concatenate(full)) / count).mean()),
         "frame_atlas_ssim": float(((truth["atlas_inside_identical"] + np.concatenate(own)) / count).mean()),
         "openness_r": pearson(mouth_openness(pred.vertices), truth["openness"]),
         "jitter_px": landmark_jitter(px, breaks),
         "texture_jitter": texture_jitter(pred.lips, breaks)}
    m["jitter_ratio"] = m["jitter_px"] / max(truth["jitter_px"], 1e-12)
    m["texture_jitter_ratio"] = m["texture_jitter"] / max(truth["texture_jitter"], 1e-12)
    m.update(articulation_metrics(pred.vertices, truth["vertices"], pred.lips, truth["lips"], breaks, cylinder,
                                  lip_box, truth["rest"]))
    m.update(texture_metrics(texture_open, truth["texture_openness"], breaks))
    has = pred.blendshapes is not None and truth["blendshapes"] is not None
    m["blendshape_mae"] = float(np.abs(pred.blendshapes - truth["blendshapes"]).mean()) if has else None
    # what a character rig's jaw does: the jawOpen coefficient against the speaker's fitted one
    jaw = ARKIT_NAMES.index("jawOpen")
    m["jaw_amplitude_ratio"] = amplitude_ratio(pred.blendshapes[:, jaw], truth["blendshapes"][:, jaw], breaks) \
        if has else None
    m["jaw_r"] = pearson(pred.blendshapes[:, jaw], truth["blendshapes"][:, jaw]) if has else None
    return m


def _truth(test: _Frames, cylinder, ref_atlas: np.ndarray, lip_box: dict, options: EvaluateOptions) -> dict:
    vertices, lips = test.vertices(), test.lips()
    px = landmark_pixels(vertices, cylinder)
    truth = {"vertices": vertices, "lips": lips, "px": px, "openness": mouth_openness(vertices),
             "blendshapes": test.blendshapes(), "jitter_px": landmark_jitter(px, test.breaks),
             "texture_jitter": texture_jitter(lips, test.breaks),
             "atlas": lambda a, b: np.asarray(test.ds.atlas[test.rows[a:b]])}
    rows, cols = lip_region(lip_box)
    total, inside, count, n_inside = [], [], 0, 0
    for s in range(0, len(vertices), options.batch_frames):   # the reference's SSIM outside the lip region
        gt = truth["atlas"](s, s + options.batch_frames)
        ref = np.broadcast_to(ref_atlas, gt.shape)
        t, count = ssim_sums(ref, gt, options.device)
        i, n_inside = ssim_sums(ref[:, rows, cols], gt[:, rows, cols], options.device)
        total.append(t)
        inside.append(i)
    truth["atlas_outside"] = (np.concatenate(total) - np.concatenate(inside), count)
    truth["atlas_inside_identical"] = float(count - n_inside)   # a frame against itself: SSIM 1 outside
    return truth


def _comparison(metrics: dict) -> dict:
    """Whether the model beats every baseline on each metric (lower or higher is better)."""
    better = {"lmd_px": min, "lip_ssim": max, "atlas_ssim": max, "frame_atlas_ssim": max, "openness_r": max,
              "blendshape_mae": min}
    out = {}
    for k, best in better.items():
        base = [v[k] for name, v in metrics.items() if name != "model" and v.get(k) is not None]
        if metrics["model"].get(k) is not None and base:
            out[k] = bool(best(base + [metrics["model"][k]]) == metrics["model"][k] and metrics["model"][k] not in base)
    return out


# ----------------------------------------------------------------------------- report

def _sample_rows(openness: np.ndarray, count: int) -> np.ndarray:
    """Evenly spread held-out frames plus the widest-open mouth."""
    picks = set(np.linspace(0, len(openness) - 1, max(1, count - 1)).round().astype(int).tolist())
    picks.add(int(np.argmax(openness)))
    return np.array(sorted(picks))


# ----------------------------------------------------------------------------- the run

def prepare_held_out(config: dict, videos: list[Path], out_dir: Path, on_progress: ProgressCallback = no_progress,
                     cancel: CancelToken | None = None) -> Path:
    """Prepare held-out videos in the model's normalized space (its speaker's reference face,
    cylinder and reference atlas, the same lighting options) and fit their blendshapes."""
    train_dir = Path(config["speaker"])
    used = dataset.read_meta(train_dir)["options"]
    options = PrepareOptions(lighting=LightingOptions(**used["lighting"]), pose_smoothing_s=used["pose_smoothing_s"],
                             reference_speaker=str(train_dir.resolve()), report=False)
    result = prepare_speaker(videos, out_dir, options, on_progress, cancel)
    if (train_dir / "blendshapes.npy").is_file() and not (result.path / "blendshapes.npy").is_file():
        fit_speaker(result.path, on_progress=on_progress, cancel=cancel)
    return result.path


def evaluate_model(model_dir: Path | str, held_out, output_dir: Path | str | None = None,
                   options: EvaluateOptions = EvaluateOptions(), on_progress: ProgressCallback = no_progress,
                   cancel: CancelToken | None = None) -> EvaluationResult:
    """Self-reenactment of MODEL_DIR on HELD_OUT against the baselines.

    held_out : the model's own speaker directory (its held-out tail is used), another speaker
    directory in the same normalized space, or held-out video files/folders of the same speaker
    (prepared into OUTPUT_DIR/held_out_speaker against the model's speaker first).
    Writes OUTPUT_DIR (default MODEL_DIR/evaluation)/evaluation.json, openness.png, atlases.png.
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    model_dir = Path(model_dir)
    out = Path(output_dir) if output_dir is not None else model_dir / "evaluation"
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: a file, not a folder; evaluate writes a folder (evaluation.json and plots)")
    if (out / dataset.META).is_file():
        raise InputError(f"{out}: a prepared speaker directory (it holds {dataset.META}); write the evaluation "
                         "to a folder of its own")
    config = checkpoint.read_config(model_dir)
    paths = [Path(p) for p in ([held_out] if isinstance(held_out, (str, Path)) else held_out)]
    held_dir = paths[0] if len(paths) == 1 and (paths[0] / dataset.META).is_file() else \
        prepare_held_out(config, paths, out / "held_out_speaker", on_progress, cancel)
    train, test = resolve_held_out(config, held_dir)
    n, box, state = len(test.rows), config["lip_box"], {"done": 0}

    def tick(k: int, what: str = "predict") -> None:
        state["done"] += k
        on_progress(Progress("evaluate", min(state["done"], 6 * n), 6 * n, what))
        cancel.check()

    preds = _predict_all(model_dir, train, test, options, cancel, tick)
    ref_atlas = checkpoint.read_reference_atlas(model_dir)
    truth = _truth(test, train.ds.cylinder, ref_atlas, box, options)
    truth["rest"] = np.asarray(train.ds.reference_vertices, np.float32)
    truth["texture_openness"] = atlas_openness(truth["atlas"](s, s + 1)[0] for s in range(n))
    metrics = {}
    for name, p in preds.items():
        metrics[name] = score(p, truth, train.ds.cylinder, box, ref_atlas, test.breaks, options)
        tick(n, f"scoring {name}")
    out.mkdir(parents=True, exist_ok=True)
    if options.write_plots:
        fps = float(config["fps"][0] if isinstance(config["fps"], list) else config["fps"])
        from .evaluate_plots import plot_atlases, plot_openness

        plot_openness(out / OPENNESS_PNG, truth["openness"], preds, fps, metrics)
        rows = _sample_rows(truth["openness"], options.samples)
        labels = [f"frame {int(test.ds.frame_index[test.rows[r]][1])}" for r in rows]
        plot_atlases(out / ATLASES_PNG, truth["atlas"], preds, ref_atlas, box, rows, labels)
    doc = _document(config, model_dir, test, metrics, truth, options, time.perf_counter() - t0)
    storage.write_json(out / RESULT_JSON, doc)
    return EvaluationResult(out / RESULT_JSON, n, metrics, doc["ground_truth"], time.perf_counter() - t0)


def _predict_all(model_dir: Path, train: _Frames, test: _Frames, options: EvaluateOptions, cancel, tick) -> dict:
    """method name -> MethodOutput for the held-out frames."""
    spec = np.asarray(test.ds.spectrograms[test.rows])
    model_spec = spec
    config = json.loads((Path(model_dir) / "config.json").read_text())
    lookahead = model_lookahead_ms(config)
    if lookahead != PAPER_LOOKAHEAD_MS:        # a low-latency model hears its window shifted (lookahead.py)
        model_spec = speaker_spectrograms(test.ds.path, lookahead)[test.rows]
    phones = speaker_phones(test.ds.path, lookahead, rows=test.rows)[test.rows] \
        if config["dims"].get("phone_context") else None     # only the held-out takes are recognised
    preds = {"model": model_prediction(model_dir, model_spec, test.breaks, options.device, cancel, tick,
                                       texture=options.texture, phones=phones),
             "static": static_baseline(train, len(spec)), "envelope": envelope_baseline(train, spec),
             "retrieval": retrieval_baseline(train, spec, options.batch_frames)}
    tick(len(spec), "baselines")
    return preds


def _document(config: dict, model_dir: Path, test: _Frames, metrics: dict, truth: dict,
              options: EvaluateOptions, seconds: float) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "engine_version": __version__,
            "model": str(model_dir.resolve()), "model_id": config.get("model_id"),
            "held_out": str(test.ds.path.resolve()), "frames": int(len(test.rows)),
            "rows": [int(test.rows[0]), int(test.rows[-1]) + 1] if len(test.rows) else [0, 0],
            "segments": int(test.breaks.sum()), "metrics": metrics,
            "ground_truth": {"jitter_px": truth["jitter_px"], "texture_jitter": truth["texture_jitter"]},
            "model_beats_baselines": _comparison(metrics), "options": asdict(options),
            "units": {"lmd_px": "pixels of the 256-px atlas", "jitter_px": "pixels per frame^2",
                      "texture_jitter": "intensity in [0, 1] per frame^2"},
            "seconds": round(seconds, 2)}
