"""`lipsync train`: fit the personalized LipSync3D model to a prepared speaker (Section 3.2).

Owns: turning a speaker directory into training tensors (normalized spectrograms, vertex
deltas from the reference face, lip crops in [-1, 1], the previous frame's lip crop for
teacher forcing), the loss R = R_tex + 3.0 R_geo + 0.3 R_bs with an SSIM texture loss, the
loop with a contiguous held-out tail, checkpoints (safetensors weights + JSON config, a
weights_only training state for --resume) and the loss curve. Must not: predict from new
audio (inference is its own stage) or touch Blender.
"""

from __future__ import annotations

import math
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import dataset, storage
from .errors import DatasetError, EngineError
from .model import LipSync3D, ModelDimensions, preset_dimensions
from .progress import CancelToken, Progress, ProgressCallback, no_progress
from .version import __version__

MODEL_FORMAT = "lipsync3d-model"
MODEL_FORMAT_VERSION = 1
WEIGHTS, CONFIG, STATE, CURVE = "model.safetensors", "config.json", "train_state.pt", "loss_curve.png"
# copied from the speaker directory so that a model directory is self-contained (predict needs no speaker)
REFERENCE_FILES = ("reference_atlas.png", "reference_atlas_normalized.png")
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5       # Wang et al. 2004
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # for images in [0, 1]


@dataclass(frozen=True)
class TrainOptions:
    preset: str = "cpu"              # network width: "paper" (as published) or "cpu" (1/8 width)
    epochs: int = 30                 # passes over the training frames
    batch_size: int = 32             # frames per step
    learning_rate: float = 1e-4      # Adam
    val_fraction: float = 0.1        # contiguous held-out tail of the frames (0 = none)
    ar_zero_probability: float = 0.2  # previous atlas replaced by zeros (paper, Appendix G.2)
    geometry_weight: float = 3.0     # alpha_1 of the loss (paper)
    blendshape_weight: float = 0.3   # alpha_2 of the loss (paper)
    device: str = "auto"             # auto (CUDA, then MPS, then CPU), cpu, cuda, mps
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainResult:
    path: Path
    epochs: int
    train_loss: float
    val_loss: float | None
    seconds: float


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    x = torch.arange(SSIM_WINDOW, dtype=a.dtype, device=a.device) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return F.conv2d(t, kernel, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return s.mean()


class SpeakerTensors:
    """A prepared speaker as training tensors (kept in memory; lips stay uint8 until batched)."""

    def __init__(self, speaker_dir: Path):
        ds = dataset.open_speaker(speaker_dir)
        self.meta = ds.meta
        self.spec = torch.from_numpy(np.array(ds.spectrograms, np.float32))
        ref = np.asarray(ds.reference_vertices, np.float32)
        self.reference_vertices = torch.from_numpy(ref)
        self.deltas = torch.from_numpy(np.asarray(ds.vertices, np.float32) - ref)
        self.lips = torch.from_numpy(np.array(ds.lips))                              # (N, 128, 128, 3) uint8
        box = ds.meta["lip_box"]
        img = cv2.imread(str(Path(speaker_dir) / "reference_atlas_normalized.png"))[..., ::-1]
        crop = img[box["row"]:box["row"] + 128, box["col"]:box["col"] + 128]
        self.reference_lips = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1
        # the previous frame for teacher forcing, -1 at the start of a take or after a gap
        prev = np.arange(len(ds)) - 1
        self.previous = torch.from_numpy(np.where(dataset.segment_breaks(ds.frame_index), -1, prev))
        bs = Path(speaker_dir) / "blendshapes.npy"
        self.blendshapes = torch.from_numpy(np.load(bs).astype(np.float32)) if bs.is_file() else None

    def __len__(self) -> int:
        return len(self.deltas)

    def lips_at(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, 3, 128, 128) float in [-1, 1]; zeros where idx < 0."""
        out = self.lips[idx.clamp_min(0)].permute(0, 3, 1, 2).float() / 127.5 - 1
        return out * (idx >= 0).float()[:, None, None, None]


def _losses(model, batch: dict, data: SpeakerTensors, options: TrainOptions, device) -> dict:
    out = model(batch["spec"], batch["prev"])
    pred = (data.reference_lips.to(device) + out["atlas_delta"]).clamp(-1, 1)
    tex = 1 - ssim((pred + 1) / 2, (batch["lips"] + 1) / 2)
    geo = (out["vertex_deltas"] - batch["deltas"]).square().sum(-1).mean()
    losses = {"texture": tex, "geometry": geo}
    if batch.get("blendshapes") is not None:
        losses["blendshapes"] = (out["blendshapes"] - batch["blendshapes"]).abs().mean()
    losses["total"] = tex + options.geometry_weight * geo + options.blendshape_weight * losses.get("blendshapes", 0)
    return losses


def _batch(data: SpeakerTensors, idx: torch.Tensor, spec_scale: float, options, gen, device, train: bool) -> dict:
    prev = data.previous[idx]
    if train:  # teacher forcing; zeros with probability ar_zero_probability (the first frame's case)
        prev = torch.where(torch.rand(len(idx), generator=gen) < options.ar_zero_probability, -1, prev)
    b = {"spec": data.spec[idx] * spec_scale, "prev": data.lips_at(prev), "lips": data.lips_at(idx),
         "deltas": data.deltas[idx],
         "blendshapes": data.blendshapes[idx] if data.blendshapes is not None else None}
    return {k: (v.to(device) if v is not None else None) for k, v in b.items()}


def _split(n: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    n_val = int(round(n * val_fraction))
    if n - n_val < 1:
        raise DatasetError(f"too few frames to train on ({n})")
    return torch.arange(n - n_val), torch.arange(n - n_val, n)


def _config(dims: ModelDimensions, options: TrainOptions, data: SpeakerTensors, spec_scale: float,
            epoch: int, history: list, speaker_dir: Path, model_id: str) -> dict:
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__,
            "dims": dims.to_dict(), "options": asdict(options), "spectrogram_scale": spec_scale,
            "fps": data.meta["fps"], "lip_box": data.meta["lip_box"], "cylinder": data.meta["cylinder"],
            "speaker": str(Path(speaker_dir).resolve()), "frames": len(data), "model_id": model_id,
            "has_blendshapes": data.blendshapes is not None, "epochs_done": epoch, "history": history}


def save_checkpoint(out: Path, model: LipSync3D, optimizer, config: dict, data: SpeakerTensors) -> None:
    """Weights (safetensors: no pickle) + config, then the resumable training state; all atomic."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["reference_vertices"] = data.reference_vertices.contiguous()
    tensors["reference_lips"] = data.reference_lips.contiguous()
    with storage.atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    with storage.atomic_path(out / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "epochs_done": config["epochs_done"],
                    "history": config["history"]}, tmp)
    storage.write_json(out / CONFIG, config)


def load_model(model_dir: Path, device: str = "cpu") -> tuple[LipSync3D, dict, dict]:
    """(model in eval mode, config, extra tensors) from MODEL_DIR; never unpickles."""
    from safetensors.torch import load_file

    root = Path(model_dir)
    config = storage.read_versioned_json(root / CONFIG, MODEL_FORMAT, MODEL_FORMAT_VERSION, "LipSync3D model")
    if not (root / WEIGHTS).is_file():
        raise EngineError(f"{root}: incomplete model directory, {WEIGHTS} is missing")
    tensors = load_file(str(root / WEIGHTS), device=device)
    model = LipSync3D(ModelDimensions.from_dict(config["dims"])).to(device)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    return model, config, {k: v for k, v in tensors.items() if not k.startswith("model.")}


def _plot(path: Path, history: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train"] for h in history], label="train (total)")
    if history and history[0].get("val") is not None:
        ax.plot(ep, [h["val"] for h in history], label="held-out tail (total)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _epoch(model, optimizer, data, idx, spec_scale, options, gen, device, train, tick) -> float:
    model.train(train)
    order = idx[torch.randperm(len(idx), generator=gen)] if train else idx
    total, count = 0.0, 0
    for s in range(0, len(order), options.batch_size):
        sel = order[s:s + options.batch_size]
        with torch.set_grad_enabled(train):
            losses = _losses(model, _batch(data, sel, spec_scale, options, gen, device, train), data, options, device)
        if train:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
        total += float(losses["total"].detach()) * len(sel)
        count += len(sel)
        tick(len(sel))
    return total / max(count, 1)


def train_speaker(speaker_dir: Path | str, model_dir: Path | str, options: TrainOptions = TrainOptions(),
                  on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None,
                  resume: bool = False, dims: ModelDimensions | None = None) -> TrainResult:
    """Train a LipSync3D model on SPEAKER_DIR into MODEL_DIR, checkpointing every epoch.

    resume : continue from MODEL_DIR's last checkpoint (after Ctrl-C or a crash). Without it,
    an existing model directory is refused rather than overwritten.
    """
    t0 = time.perf_counter()
    cancel = cancel or CancelToken()
    out = Path(model_dir)
    if (out / CONFIG).is_file() and not resume:
        raise EngineError(f"{out}: already holds a model; pass --resume to continue it or choose another folder")
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    device = pick_device(options.device)
    data = SpeakerTensors(Path(speaker_dir))
    train_idx, val_idx = _split(len(data), options.val_fraction)
    spec_scale = float(1.0 / data.spec[train_idx].std().clamp_min(1e-8))
    dims = dims or preset_dimensions(options.preset)
    model = LipSync3D(dims).to(device)
    model.geometry.init_from_pca(data.deltas[train_idx])
    optimizer = torch.optim.Adam(model.parameters(), options.learning_rate)
    start, history, model_id = 0, [], uuid.uuid4().hex[:12]
    if resume and (out / CONFIG).is_file():
        model, config, _ = load_model(out, str(device))
        model_id = config.get("model_id", model_id)
        optimizer = torch.optim.Adam(model.parameters(), options.learning_rate)
        state = torch.load(out / STATE, weights_only=True, map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        start, history, spec_scale = state["epochs_done"], state["history"], config["spectrogram_scale"]
    out.mkdir(parents=True, exist_ok=True)
    for name in REFERENCE_FILES:
        with storage.atomic_path(out / name) as tmp:
            shutil.copyfile(Path(speaker_dir) / name, tmp)
    per_epoch = len(train_idx) + len(val_idx)
    total = per_epoch * options.epochs
    done = {"n": start * per_epoch}

    def tick(n: int) -> None:
        done["n"] += n
        on_progress(Progress("train", done["n"], total, f"epoch {len(history) + 1}/{options.epochs}"))
        cancel.check()

    for epoch in range(start, options.epochs):
        train_loss = _epoch(model, optimizer, data, train_idx, spec_scale, options, gen, device, True, tick)
        val_loss = _epoch(model, optimizer, data, val_idx, spec_scale, options, gen, device, False, tick) \
            if len(val_idx) else None
        history.append({"epoch": epoch + 1, "train": train_loss, "val": val_loss})
        if not math.isfinite(train_loss):
            raise EngineError(f"training diverged at epoch {epoch + 1} (loss {train_loss}); lower the learning rate")
        save_checkpoint(out, model, optimizer, _config(dims, options, data, spec_scale, epoch + 1, history,
                                                       Path(speaker_dir), model_id), data)
        _plot(out / CURVE, history)
    last = history[-1] if history else {"train": float("nan"), "val": None}
    return TrainResult(out, len(history), last["train"], last["val"], time.perf_counter() - t0)
