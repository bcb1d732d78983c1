"""`lipsync train`: fit the personalized LipSync3D model to a prepared speaker (Section 3.2).

Owns: turning a speaker directory into training tensors (normalized spectrograms, vertex
deltas from the reference face, lip crops in [-1, 1], the previous frame's lip crop for
teacher forcing), the loss R = R_tex + 3.0 R_geo + 0.3 R_bs with an SSIM texture loss, the
loop with a contiguous held-out tail, mixed precision where it helps, checkpoints
(safetensors weights + JSON config, a weights_only training state with the RNG states so
that --resume continues exactly) and the loss curve. Must not: predict from new audio
(inference is its own stage), score held-out data (evaluate.py) or touch Blender.

Mixed precision: bf16 autocast by default ("auto") on CUDA; on a CPU fp32, with the atlas
encoder and texture decoder alone in bf16 where the CPU has bf16 in hardware and the texture
path's gradient does not reach the geometry (texture_autocast_dtype);
benchmarks/bench_train.py measures bf16 against fp32 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..core import storage
from ..core.errors import DatasetError, EngineError, InputError, OutputExists
from ..core.heap import keep_freed_memory
from ..prepare import dataset
from .checkpoint import (CURVE, MOUTH_BANK, copy_reference_files, config_header, holds_model, load_model,
                         load_train_state, pick_device, read_config, republish_state, save_checkpoint)
from ..core.progress import CancelToken, Progress, ProgressCallback, no_progress
from ..face.geometry import CylinderMap
from ..face.topology import load_topology
from ..prepare.normalize import face_shape, mouth_openness
from . import articulation
from .losses import ssim
from .network import LipSync3D, ModelDimensions, preset_dimensions

MEMMAP_ABOVE_BYTES = 2 * 1024 ** 3       # auto: spectrograms + lips larger than this stay memory-mapped
PRECISIONS = ("auto", "off", "bf16", "fp16")
COSINE_FLOOR = 0.05                      # the cosine schedule ends at this fraction of the learning rate
MIN_GAIN_FRAMES = 25                     # validation frames needed to fit the articulation gain
MIN_TRAIN_FRAMES = 25                    # fewer training frames than this: refused (one second of video)
CENTRE_FRAMES = 2000                     # training frames whose mean prediction centres the gain
MIN_STOP_FRAMES = 50                     # validation frames needed to stop the geometry on them (2 s at 25 fps)
PLOT_EVERY_S = 30.0                      # the loss curve is redrawn at most this often (and after the last epoch)
MIN_STOP_EPOCHS = 8                      # the geometry is never stopped before this many epochs


@dataclass(frozen=True)
class TrainOptions:
    preset: str = "cpu"              # network width: "paper" (as published) or "cpu" (1/8 width)
    epochs: int = 30                 # passes over the training frames
    batch_size: int = 32             # frames per step
    learning_rate: float = 1e-3      # Adam (the "fast" recipe; the paper's is 1e-4)
    val_fraction: float = 0.1        # contiguous validation tail before the test tail (0 = none): it stops the
                                     # geometry (geometry_patience) and fits the articulation gain
    test_fraction: float = 0.0       # contiguous last part of the frames that training never reads (evaluation)
    ar_zero_probability: float = 0.2  # previous atlas replaced by zeros (paper, Appendix G.2)
    geometry_weight: float = 30.0    # alpha_1 of the loss (the "fast" recipe; the paper's is 3)
    blendshape_weight: float = 0.3   # alpha_2 of the loss (paper)
    device: str = "auto"             # auto (CUDA, then MPS, then CPU), cpu, cuda, mps
    seed: int = 0
    mixed_precision: str = "auto"    # auto (bf16 autocast on CUDA, fp32 on a CPU), off, bf16, fp16 (CUDA)
    in_memory: bool | None = None    # spectrograms + lips in RAM; None = auto (memory-mapped above 2 GiB)
    augment_gain_db: float = 0.0     # beyond the paper: random spectrogram gain of +-this many dB per frame
    augment_freq_mask: int = 0       # beyond the paper: zero a random band of up to this many frequency bins
    grad_clip: float = 0.0           # clip the gradient norm to this (0 = off)
    atlas_lr_scale: float = 1.0      # learning-rate factor of the AR atlas encoder (its tanh code can saturate)
    lr_schedule: str = "constant"    # "constant" or "cosine" (per epoch, from learning_rate down to 5% of it)
    lip_weight: float = 10.0         # beyond the paper: extra weight of the lip vertices in the vertex loss
    geometry_epochs: int = 0         # beyond the paper: after this many epochs (0 = never) the audio encoder,
                                     # geometry decoder and blendshape head stop learning; the texture goes on
    geometry_patience: int = 5       # beyond the paper: when the validation tail's mouth-openness correlation has
                                     # not improved for this many epochs, the best geometry is restored and
                                     # frozen (0 = off); the articulation gain then fixes its amplitude
    mouth_bank: int = 512            # real lip crops kept for the texture (articulation.MouthBank; 0 = none)
    lookahead_ms: float = 120.0      # future audio the window reaches (ms): 120 = the paper's centred window;
                                     # less shifts it into the past for `lipsync live` (lookahead.py)
    phones: bool = True              # beyond the paper: the audio code also hears the phones PocketSphinx
                                     # recognises around each frame (prepare/phones.py)
    phone_dropout: float = 0.25      # beyond the paper: fraction of training frames whose code is made
                                     # without their phones, so the spectrogram learns too (inner splits of
                                     # GRID and the anchor, docs/evaluation.md "Phone dropout 0.25 as the default")
    weight_average: float = 4.0      # beyond the paper: the geometry kept, judged and saved is a running average
                                     # of its weights over about the last tenth of the steps, at most this many
                                     # epochs of them (GeometryAverage; 0 = off: the last step's weights)
    texture_shapes_code: bool = False  # beyond the paper: the texture path reads the audio code without shaping
                                     # it, so the SSIM loss does not pull the shared encoder away from the
                                     # vertices, and the texture path may run bf16 (GRID's inner split: LMD and
                                     # r better; the reported splits: the same within the seed spread, training
                                     # faster; docs/evaluation.md "The texture reads the code, the vertices
                                     # shape it"); the paper recipe: True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and learning_rate > 0")
        for name in ("epochs", "batch_size", "learning_rate", "val_fraction", "test_fraction", "geometry_weight",
                     "blendshape_weight", "lip_weight", "ar_zero_probability"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5), got {self.val_fraction}")
        if not 0.0 <= self.test_fraction < 0.5:
            raise ValueError(f"test_fraction must be in [0, 0.5), got {self.test_fraction}")
        if self.geometry_patience < 0 or self.mouth_bank < 0:
            raise ValueError("geometry_patience and mouth_bank must be >= 0")
        if self.lip_weight < 0:
            raise ValueError(f"lip_weight must be >= 0, got {self.lip_weight}")
        if not 0.0 <= self.lookahead_ms <= 120.0:
            raise ValueError(f"lookahead_ms must be in [0, 120], got {self.lookahead_ms}")
        if not 0.0 <= self.phone_dropout < 1.0:
            raise ValueError(f"phone_dropout must be in [0, 1), got {self.phone_dropout}")
        if self.geometry_epochs < 0:
            raise ValueError(f"geometry_epochs must be >= 0, got {self.geometry_epochs}")
        if not (math.isfinite(self.weight_average) and self.weight_average >= 0):
            raise ValueError(f"weight_average must be a number of epochs >= 0, got {self.weight_average}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")


@dataclass(frozen=True)
class TrainResult:
    path: Path
    epochs: int
    train_loss: float
    val_loss: float | None
    seconds: float
    warnings: tuple[str, ...] = ()   # e.g. options a resumed run kept from its start (resumed_options)


# What a resumed run may change: how long it trains and where its data and arithmetic live.
# Everything else shapes the result (the split, the recipe, the seed) and is the started run's.
RESUME_MAY_CHANGE = ("epochs", "device", "in_memory")


def resumed_options(model_dir: Path | str, options: TrainOptions) -> tuple[TrainOptions, tuple[str, ...]]:
    """The options a resumed run of MODEL_DIR trains with: those it was started with (its config),
    with `options`' RESUME_MAY_CHANGE; and one line for each other option where `options` differs,
    which the run does not take (resuming with, say, another test fraction would train on the
    frames the first epochs held out). Options the config predates come from `options`."""
    saved = read_config(model_dir).get("options") or {}
    names = {f.name for f in fields(TrainOptions)}
    kept = {k: v for k, v in saved.items() if k in names and k not in RESUME_MAY_CHANGE}
    try:
        started = replace(options, **kept)
    except (TypeError, ValueError) as e:
        raise EngineError(f"{Path(model_dir) / 'config.json'}: its training options cannot be read ({e}); "
                          f"train it again from the start") from e
    differ = tuple(f"{Path(model_dir)}: resumed with {k}={kept[k]!r} as it was started, not {getattr(options, k)!r}"
                   for k in sorted(kept) if getattr(options, k) != kept[k])
    return started, differ


# Named training recipes. "fast" = TrainOptions() (the one default of Python, the CLI and the
# add-on): what measured best within a CPU budget of minutes (docs/evaluation.md): 10x the
# paper's step size, a vertex loss weighted 30 instead of 3 so the shared audio code learns the
# mouth before the texture, 11x weight on the lip loops, the geometry stopped on the validation
# tail. "paper": Section 3.2 / Appendix G as published (alpha_1 = 3, Adam 1e-4, meant for ~500
# epochs on a GPU).
RECIPES = {
    "fast": {},
    "paper": {"learning_rate": 1e-4, "geometry_weight": 3.0, "lip_weight": 0.0, "geometry_patience": 0,
              "phones": False, "weight_average": 0.0, "texture_shapes_code": True},
}


def recipe_options(name: str, **overrides) -> TrainOptions:
    """TrainOptions of a named recipe (RECIPES), with any field overridden."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return TrainOptions(**{**RECIPES[name], **overrides})


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 autocast
    is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def texture_autocast_dtype(precision: str, device: torch.device, geometry_apart: bool) -> torch.dtype | None:
    """The dtype the atlas encoder and texture decoder alone are autocast to, or None.

    "auto" on a CPU with bf16 in hardware (cpu_has_bf16), where the texture path's gradient does
    not reach the geometry (`geometry_apart`: TrainOptions.texture_shapes_code False, the default,
    or the geometry frozen): bf16, epochs 1.25-1.5x faster; the rest of the network stays
    fp32. Whole-network bf16 autocast ("bf16") is 1.2x faster but one audio convolution's bf16
    weight gradient differs from run to run (the same seed would not give the same weights, and
    --resume would not continue exactly); the texture path's do not (tests/engine/test_train.py).
    Where the texture loss shapes the shared audio code (the paper recipe) the texture path stays
    fp32 while the geometry learns: its bf16 gradient would reach the audio encoder, and on GRID's
    inner split that cost openness r and LMD (0.778 -> 0.762 and 1.068 -> 1.104 px over two
    seeds; docs/evaluation.md, "The texture path in bf16 once the geometry is frozen"). So the
    geometry is the fp32 run's bit for bit either way."""
    if precision == "auto" and geometry_apart and device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the whole network for a TrainOptions.mixed_precision on a device, or
    None for fp32. "auto": bf16 on CUDA; fp32 on a CPU, where the texture path alone may run bf16
    (texture_autocast_dtype). "bf16" on a CPU is opt-in (not
    reproducible run to run)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision fp16 needs a CUDA device; use bf16 or off")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class SpeakerTensors:
    """A prepared speaker as training tensors.

    Spectrograms and lip crops (the bulk) are read into RAM, or, for large speakers
    (in_memory None and more than MEMMAP_ABOVE_BYTES, or in_memory False), read batch by
    batch from the speaker directory's memory maps; lips stay uint8 until batched.
    """

    def __init__(self, speaker_dir: Path, in_memory: bool | None = None, lookahead_ms: float = 120.0,
                 phones: bool = False, on_take=None):
        ds = dataset.open_speaker(speaker_dir)
        self.meta = ds.meta
        bulk = ds.spectrograms.nbytes + ds.lips.nbytes
        self.in_memory = bulk <= MEMMAP_ABOVE_BYTES if in_memory is None else bool(in_memory)
        self.spec = np.array(ds.spectrograms, np.float32) if self.in_memory else ds.spectrograms
        if lookahead_ms != 120.0:              # the window shifted into the past, recomputed from the takes
            from ..prepare.lookahead import speaker_spectrograms
            self.spec = speaker_spectrograms(speaker_dir, lookahead_ms)
        self.lips = np.array(ds.lips) if self.in_memory else ds.lips                 # (N, 128, 128, 3) uint8
        ref = np.asarray(ds.reference_vertices, np.float32)
        self.reference_vertices = torch.from_numpy(ref)
        self.deltas = torch.from_numpy(np.asarray(ds.vertices, np.float32) - ref)
        crop = ds.reference_lips()                                                   # (128, 128, 3) uint8
        self.reference_lips = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 127.5 - 1
        # the previous frame for teacher forcing, -1 at the start of a take, after a gap or a jump cut
        prev = np.arange(len(ds)) - 1
        self.previous = torch.from_numpy(np.where(ds.breaks, -1, prev))
        bs = ds.blendshapes()
        self.blendshapes = torch.from_numpy(np.array(bs, np.float32)) if bs is not None else None
        self.phones = None                      # (N, phone context) uint8 labels (prepare/phones.py)
        if phones:
            from ..prepare.phones import speaker_phones
            self.phones = torch.from_numpy(speaker_phones(speaker_dir, lookahead_ms, on_take))

    def __len__(self) -> int:
        return len(self.deltas)

    @staticmethod
    def _rows(array: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
        """array[idx] as a tensor; a memory map is read in sorted row order (sequential I/O)."""
        rows = idx.numpy()
        if isinstance(array, np.memmap):
            uniq, inverse = np.unique(rows, return_inverse=True)
            return torch.from_numpy(np.ascontiguousarray(array[uniq])[inverse])
        return torch.from_numpy(array[rows])

    def spec_at(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, 256, 24, 2) float32 spectrograms, unscaled."""
        return self._rows(self.spec, idx)

    def phones_at(self, idx: torch.Tensor) -> torch.Tensor | None:
        """(B, phone context) int64 phone labels, or None for a model without phone input."""
        return None if self.phones is None else self.phones[idx].long()

    def lips_at(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, 3, 128, 128) float in [-1, 1]; zeros where idx < 0."""
        out = self._rows(self.lips, idx.clamp_min(0)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return out * (idx >= 0).float()[:, None, None, None]


@functools.lru_cache(maxsize=4)
def _vertex_weights(lip_weight: float) -> torch.Tensor:
    """(468,) weights of the vertex loss: 1, plus lip_weight on the inner and outer lip loops."""
    topo = load_topology()
    w = torch.ones(len(topo.vertices))
    w[np.unique(np.r_[topo.lips_outer, topo.lips_inner])] += lip_weight
    return w


def _losses(model, batch: dict, data: SpeakerTensors, options: TrainOptions, device, amp=None,
            texture_amp=None) -> dict:
    """amp : the whole network's autocast dtype (autocast_dtype); texture_amp : the texture path's
    alone (texture_autocast_dtype)."""
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        out = model(batch["spec"], batch["prev"], batch["phones"], batch.get("phone_keep"), texture_amp,
                    not options.texture_shapes_code)
    out = {k: v.float() for k, v in out.items()}  # the losses in fp32
    # the delta first: the sum takes its layout (channels-last on a CPU), not the reference's (3, H, W)
    pred = (out["atlas_delta"] + data.reference_lips.to(device)).clamp(-1, 1)
    tex = 1 - ssim((pred + 1) / 2, (batch["lips"] + 1) / 2)
    geo = (out["vertex_deltas"] - batch["deltas"]).square().sum(-1)
    geo = (geo * _vertex_weights(options.lip_weight).to(device)).mean() if options.lip_weight else geo.mean()
    losses = {"texture": tex, "geometry": geo}
    if batch.get("blendshapes") is not None:
        losses["blendshapes"] = (out["blendshapes"] - batch["blendshapes"]).abs().mean()
    losses["total"] = tex + options.geometry_weight * geo + options.blendshape_weight * losses.get("blendshapes", 0)
    return losses


def _batch(data: SpeakerTensors, idx: torch.Tensor, spec_scale: float, options, gen, device, train: bool) -> dict:
    prev = data.previous[idx]
    if train:  # teacher forcing; zeros with probability ar_zero_probability (the first frame's case)
        prev = torch.where(torch.rand(len(idx), generator=gen) < options.ar_zero_probability, -1, prev)
    spec = data.spec_at(idx) * spec_scale
    if train:
        spec = _augment(spec, options, gen)
    phones = data.phones_at(idx)
    keep = None
    if train and phones is not None and options.phone_dropout > 0:  # drawn only then: other runs keep their stream
        keep = (torch.rand(len(idx), generator=gen) >= options.phone_dropout).float()
    b = {"spec": spec, "prev": data.lips_at(prev).contiguous(memory_format=_memory_format(device)),
         "lips": data.lips_at(idx),
         "deltas": data.deltas[idx], "phones": phones, "phone_keep": keep,
         "blendshapes": data.blendshapes[idx] if data.blendshapes is not None else None}
    return {k: (v.to(device) if v is not None else None) for k, v in b.items()}


def _memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU: oneDNN's convolutions (the texture decoder's and the atlas encoder's)
    run 1.2-1.5x faster in it here (benchmarks/bench_train.py profile); the values are the same."""
    return torch.channels_last if device.type == "cpu" else torch.preserve_format


def _augment(spec: torch.Tensor, options: TrainOptions, gen: torch.Generator) -> torch.Tensor:
    """Random gain and a random masked frequency band (SpecAugment) per frame; (B, 256, 24, 2)."""
    n = len(spec)
    if options.augment_gain_db > 0:
        db = (torch.rand(n, generator=gen) * 2 - 1) * options.augment_gain_db
        spec = spec * (10 ** (db / 20))[:, None, None, None]
    if options.augment_freq_mask > 0:
        width = torch.randint(0, options.augment_freq_mask + 1, (n,), generator=gen)
        start = torch.randint(0, spec.shape[1] - options.augment_freq_mask, (n,), generator=gen)
        f = torch.arange(spec.shape[1])
        keep = (f[None] < start[:, None]) | (f[None] >= (start + width)[:, None])
        spec = spec * keep[:, :, None, None]
    return spec


def _split(n: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows): the validation tail (val_fraction of the frames before the
    test tail) follows the training frames; the test tail (test_fraction of all) is never read."""
    usable = n - int(round(n * test_fraction))
    n_val = int(round(usable * val_fraction))
    if usable - n_val < MIN_TRAIN_FRAMES:
        raise DatasetError(f"too few frames to train on: {usable - n_val} of {n} are for training, at least "
                           f"{MIN_TRAIN_FRAMES} are needed (about a second of video; a minute or more is recommended)")
    return torch.arange(usable - n_val), torch.arange(usable - n_val, usable)


def spectrogram_scale(data: SpeakerTensors, rows: torch.Tensor, chunk: int = 1024) -> float:
    """1 / standard deviation of the training frames' spectrogram values (read in chunks)."""
    total, square, count = 0.0, 0.0, 0
    for s in range(0, len(rows), chunk):
        x = data.spec_at(rows[s:s + chunk]).double()
        total, square, count = total + float(x.sum()), square + float(x.square().sum()), count + x.numel()
    var = max(square / count - (total / count) ** 2, 0.0)
    return float(1.0 / max(var ** 0.5, 1e-8))


def _config(dims: ModelDimensions, options: TrainOptions, data: SpeakerTensors, spec_scale: float,
            epoch: int, history: list, speaker_dir: Path, model_id: str, n_train: int, n_val: int,
            articulation: dict) -> dict:
    return {**config_header(),
            "dims": dims.to_dict(), "options": asdict(options), "spectrogram_scale": spec_scale,
            "fps": data.meta["fps"], "lip_box": data.meta["lip_box"], "cylinder": data.meta["cylinder"],
            "speaker": str(Path(speaker_dir).resolve()), "frames": len(data), "model_id": model_id,
            "split": {"train_frames": n_train, "val_frames": n_val, "test_frames": len(data) - n_train - n_val,
                      "held_out_frames": len(data) - n_train,
                      "rule": "frames in order: training, then the validation tail, then the test tail"},
            "articulation": articulation,
            "has_blendshapes": data.blendshapes is not None, "epochs_done": epoch, "history": history}


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


def _loss_text(sums: dict, count: int) -> str:
    """'loss 0.2134 (tex 0.1900, geo 0.0041, bs 0.0312)' from summed per-frame losses."""
    parts = ", ".join(f"{short} {sums[k] / count:.4f}" for k, short in
                      (("texture", "tex"), ("geometry", "geo"), ("blendshapes", "bs")) if k in sums)
    return f"loss {sums['total'] / count:.4f} ({parts})"


def _epoch(model, optimizer, data, idx, spec_scale, options, gen, device, train, tick, amp=None,
           on_step=None, texture_amp=None) -> dict:
    """One pass over idx; returns the mean of every loss term over its frames. on_step() after
    every optimizer step; amp and texture_amp as _losses'."""
    model.train(train)
    order = idx[torch.randperm(len(idx), generator=gen)] if train else idx
    sums, count = {}, 0
    for s in range(0, len(order), options.batch_size):
        sel = order[s:s + options.batch_size]
        with torch.set_grad_enabled(train):
            losses = _losses(model, _batch(data, sel, spec_scale, options, gen, device, train), data, options,
                             device, amp, texture_amp)
        if train:
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            if on_step is not None:
                on_step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(sel)
        count += len(sel)
        tick(len(sel), _loss_text(sums, count))
    return {k: v / max(count, 1) for k, v in sums.items()}


def _optimizer(model: LipSync3D, options: TrainOptions) -> torch.optim.Adam:
    """Adam; the AR atlas encoder gets its own learning rate (atlas_lr_scale)."""
    atlas = list(model.atlas.parameters()) if model.atlas is not None else []
    ids = {id(p) for p in atlas}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids]}]
    if atlas:
        groups.append({"params": atlas, "lr": options.learning_rate * options.atlas_lr_scale})
    # fused: one kernel for every parameter (0.8 ms a step against 6.3 ms for the per-tensor loop on this CPU)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.Adam(groups, options.learning_rate, fused=fused or None)


def _set_learning_rate(optimizer, options: TrainOptions, epoch: int) -> None:
    """The learning rate of an epoch (0-based) under options.lr_schedule, for every parameter group."""
    factor = 1.0
    if options.lr_schedule == "cosine" and options.epochs > 1:
        factor = COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * epoch / (options.epochs - 1)))
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = options.learning_rate * factor * (options.atlas_lr_scale if i == 1 else 1.0)


GEOMETRY_PARTS = ("audio", "geometry", "blendshapes")   # what stops learning when the geometry is frozen


def _freeze_geometry(model: LipSync3D, options: TrainOptions, epoch: int, stopped: bool = False) -> bool:
    """From epoch options.geometry_epochs (0-based) on, or once the validation tail stopped the
    geometry (`stopped`), the shared audio encoder, the geometry decoder and the blendshape head get
    no gradients (Adam skips them), so only the texture keeps learning: on a short video the
    vertices over-fit epochs before the lip texture stops improving. Returns whether it is frozen."""
    frozen = stopped or 0 < options.geometry_epochs <= epoch
    for name in GEOMETRY_PARTS:
        getattr(model, name).requires_grad_(not frozen)
    return frozen


class GeometryAverage:
    """A running (exponential) average of the geometry parts' weights (GEOMETRY_PARTS), updated
    after every step while they learn: what is judged on the validation tail, kept by the stop
    and saved is the average, while training goes on from the last step's weights.

    The decay of step t is min((1 + t) / (10 + t), 1 - 1 / (epochs * steps_per_epoch)): early on
    the average forgets fast, later it spans about the last tenth of the steps, at most `epochs`
    epochs of them. Epoch to epoch the last step's geometry wanders (on GRID's inner split the
    validation r by 0.012-0.014 an epoch on average, and the articulation gain fitted to it
    between 0.92 and 1.72); the average moves a third as much (gain 1.18-1.36), and the inner
    test tails' LMD and r at the epoch the stop keeps are as good or better (docs/evaluation.md,
    "Averaged weights").
    """

    def __init__(self, model: LipSync3D, epochs: float, steps_per_epoch: int):
        self.params = [p for name in GEOMETRY_PARTS for p in getattr(model, name).parameters()]
        self.names = [f"{name}.{k}" for name in GEOMETRY_PARTS for k, _ in getattr(model, name).named_parameters()]
        self.cap = 1.0 - 1.0 / max(1.0, epochs * steps_per_epoch)
        self.average = [p.detach().clone() for p in self.params]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        decay = min((1 + self.steps) / (10 + self.steps), self.cap)
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's geometry weights and the average (twice: as before)."""
        for p, a in zip(self.params, self.average):
            held = p.detach().clone()
            p.copy_(a)
            a.copy_(held)

    def state(self) -> dict:
        """What a resumed run needs, taken while the average is in the model (the other weights)."""
        return {"average_other": {n: a.detach().cpu().clone() for n, a in zip(self.names, self.average)},
                "average_steps": torch.tensor(self.steps)}

    def restore(self, state: dict) -> bool:
        """After the model was loaded with a checkpoint (the average in it): put the last step's
        weights back into the model and the average aside. False when `state` has none."""
        other = state.get("average_other")
        if not other or set(other) != set(self.names):
            return False
        with torch.no_grad():
            for n, a in zip(self.names, self.average):
                a.copy_(other[n])
        self.steps = int(state.get("average_steps", 0))
        self.swap()
        return True


def _geometry_state(model: LipSync3D) -> dict:
    return {f"{name}.{k}": v.detach().clone() for name in GEOMETRY_PARTS
            for k, v in getattr(model, name).state_dict().items()}


def _early_stop(model: LipSync3D, options: TrainOptions, stop: dict, val_r: float | None, n_val: int,
                epoch: int) -> None:
    """Keep the geometry of the epoch with the best validation openness correlation; after
    geometry_patience epochs without improvement (and at least MIN_STOP_EPOCHS in all) restore it and
    freeze it (stop["stopped"] = True). Off below MIN_STOP_FRAMES validation frames: too few to judge by.

    The correlation, not the vertex loss, decides: the loss prefers an early, shrunken mouth that
    the articulation gain would have to blow up; the gain can fix amplitude, not timing."""
    if options.geometry_patience <= 0 or val_r is None or stop.get("stopped") or n_val < MIN_STOP_FRAMES:
        return
    step = stop_step(stop, val_r, epoch, options.geometry_patience)
    if step == "best":
        stop["best"] = _geometry_state(model)
    elif step == "stop":
        for name in GEOMETRY_PARTS:
            part = getattr(model, name)
            part.load_state_dict({k[len(name) + 1:]: v for k, v in stop["best"].items() if k.startswith(name + ".")})
        stop["stopped"] = True


def stop_step(stop: dict, val_r: float, epoch: int, patience: int) -> str:
    """The stop rule's bookkeeping after an epoch (0-based) with validation openness r `val_r`:
    "best" (the best epoch so far: its geometry is kept), "stop" (patience epochs without a
    better one, and at least MIN_STOP_EPOCHS in all: restore the best and freeze) or "go".
    Updates stop's best_loss and since (_early_stop; benchmarks/geometry_epoch_curve.py replays it)."""
    loss = -float(val_r)
    if loss < stop.get("best_loss", float("inf")):
        stop.update(best_loss=loss, since=0)
        return "best"
    stop["since"] = stop.get("since", 0) + 1
    return "stop" if stop["since"] >= patience and epoch + 1 >= MIN_STOP_EPOCHS else "go"


@torch.no_grad()
def fit_articulation(model: LipSync3D, data: SpeakerTensors, rows: torch.Tensor, spec_scale: float,
                     device, centre: dict | None, speaker: dict | None = None) -> dict:
    """The articulation gain: how much to scale the model's motion on speech it did not train on.

    The gain scales the predicted motion along the opening direction, about the model's mean
    prediction (`centre`, from articulation_centre), so that the predicted mouth opening (the
    inner-lip gap, articulation.fit_gain_to_lip_gap) varies as much as the speaker's: the
    model's measured on `rows` (the validation tail, frames it did not train on), the speaker's
    given by `speaker` (speaker_articulation of the training and validation frames, which does
    not change from epoch to epoch; default: of `rows`). A tail of a few
    seconds says little about how much the speaker moves: on the anchor's inner split
    (docs/evaluation.md, "The articulation gain") the tail's own amplitude put the unseen frames'
    amplitude ratio at 0.64-0.67, the whole speaker's at 1.00-1.04. Until 2026-12-07 the gain
    matched the opening component instead of the lip gap, which left the lip gap of the phone
    models at 0.61-0.70 of the speaker's on that split ("Phone features"); until 2026-12-08 the
    motion it added was the projection of each frame's motion on the opening direction, now the
    frame's own lip gap read as motion along it (articulation.apply_gain; "component" in the
    returned entry). 1.0 without enough frames. Also returns the tail's openness r.
    """
    if len(rows) < MIN_GAIN_FRAMES or centre is None:
        return {"gain": 1.0, "fitted_on": None}
    deltas, _ = _geometry_outputs(model, data, rows, spec_scale, device)
    ref = data.reference_vertices.numpy()
    breaks = (data.previous[rows] < 0).numpy()
    breaks[0] = True
    true_deltas = data.deltas[rows].numpy()
    pred, true = mouth_openness(ref + deltas), mouth_openness(ref + true_deltas)
    u, mean = centre["opening_direction"], centre["mean_vertex_deltas"]
    speaker = speaker_articulation(data, rows, rows) if speaker is None else speaker
    gain = articulation.fit_gain_to_lip_gap(deltas, ref, mean, u, breaks, speaker["lip_gap_std"])
    return {"gain": gain, "component": articulation.GAIN_ALONG_GAP,
            "fitted_on": "lip gap: validation tail (the model), training and validation frames (the speaker)",
            "frames": int(len(rows)), "speaker_frames": speaker["frames"],
            "raw_amplitude_ratio": articulation.amplitude_ratio(pred, true, breaks),
            "openness_r": float(np.corrcoef(pred, true)[0, 1]) if pred.std() > 0 and true.std() > 0 else 0.0}


@torch.no_grad()
def _geometry_outputs(model: LipSync3D, data: SpeakerTensors, rows: torch.Tensor, spec_scale: float,
                      device) -> tuple[np.ndarray, np.ndarray]:
    """(vertex deltas (n, 468, 3), blendshapes (n, 52)) of the model's geometry branch on rows, in eval mode."""
    was_training = model.training
    model.eval()
    deltas, bs = [], []
    for s in range(0, len(rows), 256):
        phones = data.phones_at(rows[s:s + 256])
        code = model.audio(data.spec_at(rows[s:s + 256]).to(device) * spec_scale,
                           None if phones is None else phones.to(device))
        deltas.append(model.geometry(code).float().cpu())
        bs.append(model.blendshapes(code).float().cpu())
    model.train(was_training)
    return torch.cat(deltas).numpy(), torch.cat(bs).numpy()


def speaker_articulation(data: SpeakerTensors, train_rows: torch.Tensor, seen_rows: torch.Tensor) -> dict:
    """What the articulation gain needs of the speaker, which no epoch changes: the direction of
    vertex motion that goes with opening (from at most CENTRE_FRAMES of the training frames) and
    the pooled std of the lip gap over `seen_rows` (every frame a developer may see)."""
    ref = data.reference_vertices.numpy()
    true = data.deltas[train_rows[::max(1, len(train_rows) // CENTRE_FRAMES)]].numpy()
    breaks = (data.previous[seen_rows] < 0).numpy()
    breaks[0] = True
    return {"opening_direction": articulation.opening_direction(true, mouth_openness(ref + true)),
            "lip_gap_std": articulation.pooled_std(mouth_openness(ref + data.deltas[seen_rows].numpy()), breaks),
            "frames": int(len(seen_rows))}


def articulation_centre(model: LipSync3D, data: SpeakerTensors, rows: torch.Tensor, spec_scale: float,
                        device, speaker: dict) -> dict:
    """The mean of the model's own vertex deltas and coefficients over (at most CENTRE_FRAMES of) the
    training frames: the articulation gain scales the motion about it (articulation.apply_gain),
    along the speaker's opening direction (speaker_articulation)."""
    deltas, bs = _geometry_outputs(model, data, rows[::max(1, len(rows) // CENTRE_FRAMES)], spec_scale, device)
    return {"mean_vertex_deltas": deltas.mean(0), "mean_blendshapes": bs.mean(0),
            "opening_direction": speaker["opening_direction"]}


def _face_shape(data: SpeakerTensors, rows: torch.Tensor) -> np.ndarray:
    """The median face of (at most CENTRE_FRAMES of) the training frames: dubbing compares a
    target video's face with it (normalize.face_shape)."""
    pick = rows[::max(1, len(rows) // CENTRE_FRAMES)]
    return face_shape(data.reference_vertices.numpy()[None] + data.deltas[pick].numpy())


def _save_mouth_bank(out: Path, data: SpeakerTensors, rows: torch.Tensor, size: int, cylinder) -> dict | None:
    """Build the mouth bank from the training frames (once: it does not depend on the weights)."""
    if size <= 0:
        return None
    if not (out / MOUTH_BANK).is_file():
        idx = rows.numpy()
        lips = np.asarray(data.lips[idx]) if data.in_memory else SpeakerTensors._rows(data.lips, rows).numpy()
        vertices = data.reference_vertices.numpy()[None] + data.deltas[rows].numpy()
        window = articulation.mouth_window(data.reference_vertices.numpy(), cylinder, data.meta["lip_box"])
        bank = articulation.MouthBank.build(lips, vertices, cylinder, size, window=window)
        with storage.atomic_path(out / MOUTH_BANK) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **bank.to_arrays())
    with np.load(out / MOUTH_BANK) as z:     # a bank of an older run (resumed) keeps its blend
        neighbours = articulation.BANK_NEIGHBOURS if "teeth" in z else articulation.LEGACY_NEIGHBOURS
        return {"file": MOUTH_BANK, "size": int(len(z["crops"])), "neighbours": neighbours}


def _resume(out: Path, model: LipSync3D, optimizer, gen: torch.Generator, device) -> tuple[int, list, dict]:
    """Load MODEL_DIR's checkpoint into model, optimizer and RNGs; (epochs done, history, config).

    Everything comes from train_state.pt, which save_checkpoint publishes first and whole: a run
    killed while the weights or config.json were written resumes from the state's epoch all the
    same. (A state from before it held weights is read with the weights and config beside it,
    and only when they are of its epoch.)"""
    state = load_train_state(out, device)
    if "weights" in state:
        weights, config = state["weights"], json.loads(state["config"])
        model.load_state_dict({k[6:]: v for k, v in weights.items() if k.startswith("model.")})
    else:
        trained, config, _ = load_model(out, str(device))
        if int(config.get("epochs_done", -1)) != int(state["epochs_done"]):
            raise EngineError(f"{out}: cannot resume exactly, its training state is of epoch {state['epochs_done']} "
                              f"and its model of epoch {config.get('epochs_done')}; train it again from the start")
        model.load_state_dict(trained.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    stop = {k: state[k] for k in ("best", "best_loss", "since", "stopped") if k in state}
    convert = {"best_loss": float, "since": int, "stopped": bool, "best": lambda v: {n: t.cpu() for n, t in v.items()}}
    config["_early_stop"] = {k: convert[k](v) for k, v in stop.items()}
    config["_average"] = {k: state[k] for k in ("average_other", "average_steps") if k in state}
    if "generator" in state:
        gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch"].cpu())
    return int(state["epochs_done"]), list(state["history"]), config


@dataclass
class _RunState:
    """What a training run works with, fresh or resumed (_prepare_run)."""

    data: SpeakerTensors            # the speaker as tensors
    train_idx: torch.Tensor         # frame rows trained on
    val_idx: torch.Tensor           # the held-out tail's rows
    gen: torch.Generator            # shuffles, teacher-forcing zeros, augmentation
    device: torch.device
    dims: ModelDimensions
    model: LipSync3D
    optimizer: torch.optim.Optimizer
    spec_scale: float               # 1 / std of the training spectrograms
    start: int = 0                  # epochs already done
    history: list = field(default_factory=list)     # one dict per epoch done
    model_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stop: dict = field(default_factory=dict)        # the geometry's early stop (_early_stop)
    average: dict = field(default_factory=dict)     # a resumed GeometryAverage's state


def _prepare_run(speaker_dir: Path, out: Path, options: TrainOptions, resume: bool, dims,
                 on_take=None) -> _RunState:
    """Data, split, scale, model, optimizer and the state to start from (fresh or resumed);
    on_take(done, total) while the takes' phones are recognised."""
    if (out / dataset.META).is_file() or out.resolve() == Path(speaker_dir).resolve():
        raise InputError(f"{out}: a prepared speaker directory (it holds {dataset.META}); write the model to "
                         "a folder of its own")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: a file, not a folder; the model is written to a folder")
    if holds_model(out) and not resume:
        raise OutputExists(f"{out}: already holds a model")  # the CLI and the add-on say how to go on
    torch.manual_seed(options.seed)
    gen = torch.Generator().manual_seed(options.seed)
    device = pick_device(options.device)
    resuming = resume and holds_model(out)
    if resuming:
        started = read_config(out)
        dims = ModelDimensions.from_dict(started["dims"])
        frames = len(dataset.open_speaker(speaker_dir))   # before the phones are recognised: said at once
        if int(started.get("frames", frames)) != frames:
            raise InputError(f"{speaker_dir}: has {frames} frames, but {out} was started on "
                             f"{started.get('speaker')} with {started['frames']}; resume it with the speaker it "
                             f"was started on (prepared again, a speaker needs a new model)")
    else:
        dims = dims or preset_dimensions(options.preset)
        dims = dims.with_phones() if options.phones else replace(dims, phone_context=0, n_phones=0)
    data = SpeakerTensors(speaker_dir, options.in_memory, options.lookahead_ms, dims.phone_context > 0, on_take)
    try:
        train_idx, val_idx = _split(len(data), options.val_fraction, options.test_fraction)
    except DatasetError as e:
        raise DatasetError(f"{speaker_dir}: {e}") from None
    model_id = uuid.uuid4().hex[:12]
    model = LipSync3D(dims).to(device, memory_format=_memory_format(device))
    model.geometry.init_from_pca(data.deltas[train_idx])
    optimizer = _optimizer(model, options)
    start, history, spec_scale, stop, average = 0, [], None, {}, {}
    if resuming:
        start, history, config = _resume(out, model, optimizer, gen, device)
        stop, average = config.pop("_early_stop", {}), config.pop("_average", {})
        model_id, spec_scale = config.get("model_id", model_id), config["spectrogram_scale"]
    if spec_scale is None:
        spec_scale = spectrogram_scale(data, train_idx)
    return _RunState(data, train_idx, val_idx, gen, device, dims, model, optimizer, spec_scale, start, history,
                     model_id, stop, average)


def train_speaker(speaker_dir: Path | str, model_dir: Path | str, options: TrainOptions = TrainOptions(),
                  on_progress: ProgressCallback = no_progress, cancel: CancelToken | None = None, *,
                  resume: bool = False, dims: ModelDimensions | None = None) -> TrainResult:
    """Train a LipSync3D model on SPEAKER_DIR into MODEL_DIR, checkpointing every epoch.

    resume : continue from MODEL_DIR's last checkpoint (after Ctrl-C or a crash) with the same
    step, losses and random state, and the options it was started with (resumed_options: only
    epochs, device and in_memory come from `options`; TrainResult.warnings names any other option
    given differently). Without it, an existing model directory is refused.
    Progress messages carry the running losses of the epoch ("epoch 3/30 loss ...").
    On glibc it sets the process's malloc to keep freed memory (core/heap.py), for the rest of
    the process.
    """
    t0 = time.perf_counter()
    keep_freed_memory()         # a step's tensors reuse freed heap instead of fresh pages (core/heap.py)
    cancel = cancel or CancelToken()
    out, speaker_dir = Path(model_dir), Path(speaker_dir)

    def heard(done: int, total: int) -> None:     # the phones of every take, before the first epoch
        on_progress(Progress("phones", done, total, "recognising the phones of the takes"))
        cancel.check()
    warnings: tuple[str, ...] = ()
    if resume and holds_model(out):
        options, warnings = resumed_options(out, options)
    r = _prepare_run(speaker_dir, out, options, resume, dims, heard)
    if r.start:                 # resumed: the state's epoch may lack its weights or config (killed between them)
        republish_state(out)
    data, train_idx, val_idx, history = r.data, r.train_idx, r.val_idx, r.history
    amp = autocast_dtype(options.mixed_precision, r.device)
    out.mkdir(parents=True, exist_ok=True)
    copy_reference_files(dataset.reference_atlas_files(speaker_dir), out)
    per_epoch = len(train_idx) + len(val_idx)
    total = per_epoch * options.epochs
    done = {"n": r.start * per_epoch, "last": ""}

    def tick(n: int, text: str, what: str = "") -> None:
        done["n"] += n
        held = f"; held-out {history[-1]['val']:.4f}" if history and history[-1].get("val") is not None else ""
        on_progress(Progress("train", done["n"], total, f"epoch {len(history) + 1}/{options.epochs} {what}{text}{held}"))
        cancel.check()

    bank = _save_mouth_bank(out, data, train_idx, options.mouth_bank, CylinderMap.from_dict(data.meta["cylinder"]))
    stop, plotted = r.stop, time.perf_counter()
    face_shape = _face_shape(data, train_idx)
    # every frame a developer may look at: the speaker's amplitude (fixed: computed once)
    speaker = speaker_articulation(data, train_idx, torch.cat([train_idx, val_idx]))
    fixed = None    # (centre, art) of a frozen geometry: later epochs train only the texture and keep them
    average = None
    if options.weight_average > 0 and not stop.get("stopped"):
        average = GeometryAverage(r.model, options.weight_average, math.ceil(len(train_idx) / options.batch_size))
        if r.start and not average.restore(r.average):
            average = None      # resumed from a state without one: the last step's weights, as it began
    for epoch in range(r.start, options.epochs):
        _set_learning_rate(r.optimizer, options, epoch)
        frozen = _freeze_geometry(r.model, options, epoch, bool(stop.get("stopped")))
        averaging = average is not None and not frozen
        texture_amp = None if amp is not None else texture_autocast_dtype(
            options.mixed_precision, r.device, frozen or not options.texture_shapes_code)
        tr = _epoch(r.model, r.optimizer, data, train_idx, r.spec_scale, options, r.gen, r.device,
                    True, tick, amp, average.step if averaging else None, texture_amp)
        if averaging:
            average.swap()      # the average is judged, kept and saved; the last step's weights go on training
        va = _epoch(r.model, r.optimizer, data, val_idx, r.spec_scale, options, r.gen, r.device,
                    False, lambda n, t: tick(n, t, "held-out "), amp, texture_amp=texture_amp) if len(val_idx) else None
        history.append({"epoch": epoch + 1, "train": tr["total"], "val": va["total"] if va else None,
                        "train_terms": {k: v for k, v in tr.items() if k != "total"},
                        "val_terms": {k: v for k, v in va.items() if k != "total"} if va else None})
        if not math.isfinite(tr["total"]):
            raise EngineError(f"training diverged at epoch {epoch + 1} (loss {tr['total']}); lower the learning rate")
        was_stopped = bool(stop.get("stopped"))
        if frozen and fixed is not None:
            centre, art = fixed
        else:
            centre = articulation_centre(r.model, data, train_idx, r.spec_scale, r.device, speaker)
            art = fit_articulation(r.model, data, val_idx, r.spec_scale, r.device, centre, speaker)
        history[-1]["val_openness_r"] = art.get("openness_r")
        _early_stop(r.model, options, stop, art.get("openness_r"), len(val_idx), epoch)
        if stop.get("stopped") and not was_stopped:
            history[-1]["geometry_stopped"] = epoch + 1 - stop["since"]   # the epoch whose geometry is kept
            centre = articulation_centre(r.model, data, train_idx, r.spec_scale, r.device, speaker)
            art = fit_articulation(r.model, data, val_idx, r.spec_scale, r.device, centre, speaker)
        fixed = (centre, art) if frozen else None
        # the geometry learns on next epoch: the last step's weights go back into the model after saving
        goes_on = averaging and not stop.get("stopped") and not 0 < options.geometry_epochs <= epoch + 1
        config = _config(r.dims, options, data, r.spec_scale, epoch + 1, history, speaker_dir, r.model_id,
                         len(train_idx), len(val_idx), art)
        config["mouth_bank"] = bank
        save_checkpoint(out, r.model, r.optimizer, config, data.reference_vertices, data.reference_lips,
                        {"generator": r.gen.get_state(), "torch": torch.get_rng_state(), **stop,
                         **(average.state() if goes_on else {})},
                        {**centre, "face_shape": face_shape})
        if goes_on:
            average.swap()
        if epoch + 1 == options.epochs or time.perf_counter() - plotted >= PLOT_EVERY_S:
            _plot(out / CURVE, history)         # 0.3 s a drawing: at most every PLOT_EVERY_S, and at the end
            plotted = time.perf_counter()
    last = history[-1] if history else {"train": float("nan"), "val": None}
    return TrainResult(out, len(history), last["train"], last["val"], time.perf_counter() - t0, warnings)
