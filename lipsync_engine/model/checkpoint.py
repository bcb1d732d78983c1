"""The model folder (`lipsync train`'s output): its format, writing it, reading it, and the device.

Layout of MODEL_DIR (format "lipsync3d-model", version 3; version 2 added the articulation gain and
mouth bank, version 3 the phone input, whose weights are "model.audio.phones.*"):

    config.json                     format, dims, options, spectrogram scale, fps, lip box, cylinder,
                                    split, history (written last)
    model.safetensors               the network's weights ("model.*"), reference_vertices (468, 3),
                                    reference_lips (3, 128, 128) in [-1, 1]; no pickle
    train_state.pt                  for --resume (weights_only torch.save): optimizer and RNG states,
                                    and a copy of the epoch's weights and config, so that this one
                                    file is a whole checkpoint (written first, the others after it)
    loss_curve.png                  the loss curve
    reference_atlas.png             copied from the speaker folder, so that a model folder is
    reference_atlas_normalized.png  self-contained (predicting needs no speaker folder)

Owns: every read and write of those files, and pick_device / resolve_device. Must not: train
(train.py) or predict (inference/). Torch is imported only by the functions that need it, so
reading a model's config, weights as numpy arrays (load_arrays: predicting on a CPU),
reference face and atlases (dubbing workers, evaluation) stays light.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from ..core import storage
from ..core.errors import EngineError
from ..core.version import __version__
from ..face.geometry import ATLAS_SIZE
from .dims import ModelDimensions

MODEL_FORMAT = "lipsync3d-model"
MODEL_FORMAT_VERSION = 3   # 2: articulation gain and centre, mouth bank, test split; 3: phone input
                           # (dims.phone_context); version 1 and 2 models still load
WEIGHTS, CONFIG, STATE, CURVE = "model.safetensors", "config.json", "train_state.pt", "loss_curve.png"
MOUTH_BANK = "mouth_bank.npz"   # real lip crops of the training frames with their meshes (model/articulation.py)
# copied from the speaker directory so that a model directory is self-contained (predict needs no speaker)
REFERENCE_FILES = ("reference_atlas.png", "reference_atlas_normalized.png")


def pick_device(name: str):
    """torch.device of a device name: "auto" is CUDA, then MPS, then CPU."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str) -> str:
    """The device a name stands for, as text ("cpu", "cuda", "cuda:1", "mps"); "auto" is CUDA, then
    MPS, then CPU. On a machine that cannot have either (no NVIDIA or ROCm driver, not Apple
    silicon), "auto" is "cpu" without importing torch (1.3 s here: longer than predicting a line)."""
    if name != "auto":
        return name
    if not _accelerator_possible():
        return "cpu"
    return str(pick_device("auto"))


def _accelerator_possible() -> bool:
    """False only where torch could not find CUDA, ROCm or MPS (checked without importing it)."""
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    if sys.platform.startswith("linux"):
        return Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()
    if os.name == "nt":
        return (Path(os.environ.get("SystemRoot", r"C:\Windows")) / "System32" / "nvcuda.dll").exists()
    return True


def config_header() -> dict:
    """The first keys of every config.json: format, format_version, engine_version."""
    return {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "engine_version": __version__}


def holds_model(model_dir: Path | str) -> bool:
    """True if MODEL_DIR already holds a (possibly partial) model: its config.json exists."""
    return (Path(model_dir) / CONFIG).is_file()


def read_config(model_dir: Path | str) -> dict:
    """config.json of MODEL_DIR, checked for format and version (EngineError naming the file)."""
    return storage.read_versioned_json(Path(model_dir) / CONFIG, MODEL_FORMAT, MODEL_FORMAT_VERSION,
                                       "LipSync3D model")


def read_reference_vertices(model_dir: Path | str) -> np.ndarray:
    """(468, 3) float64 normalized reference face of MODEL_DIR, without torch."""
    return _read_tensor(model_dir, "reference_vertices")


def read_face_shape(model_dir: Path | str) -> np.ndarray | None:
    """(468, 3) median face of the training frames (normalize.face_shape), None for a model made
    before it was stored: what dubbing compares a target video's face with."""
    from safetensors import safe_open

    root = Path(model_dir)
    try:
        with safe_open(str(root / WEIGHTS), "numpy") as f:
            if "face_shape" not in f.keys():
                return None
    except Exception as e:
        raise EngineError(f"{root / WEIGHTS}: missing or unreadable model weights ({e})") from e
    return _read_tensor(root, "face_shape")


def _read_tensor(model_dir: Path | str, name: str) -> np.ndarray:
    from safetensors import safe_open

    root = Path(model_dir)
    try:
        with safe_open(str(root / WEIGHTS), "numpy") as f:
            return np.asarray(f.get_tensor(name), np.float64)
    except Exception as e:  # missing file or tensor, damaged file: safetensors raises its own types
        raise EngineError(f"{root / WEIGHTS}: missing or unreadable model weights ({e})") from e


def read_reference_atlas(model_dir: Path | str, normalized: bool = True) -> np.ndarray:
    """(256, 256, 3) uint8 RGB reference atlas of MODEL_DIR (lighting-normalized or raw);
    EngineError naming the file if it is missing or not a 256x256 image."""
    import cv2

    path = Path(model_dir) / REFERENCE_FILES[1 if normalized else 0]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (ATLAS_SIZE, ATLAS_SIZE, 3):
        raise EngineError(f"{path}: missing, unreadable or not a {ATLAS_SIZE}x{ATLAS_SIZE} atlas")
    return np.ascontiguousarray(bgr[..., ::-1])


def copy_reference_files(sources: tuple[Path, Path], model_dir: Path) -> None:
    """The speaker's (raw, normalized) reference atlas files into MODEL_DIR, atomically."""
    import shutil

    for src, name in zip(sources, REFERENCE_FILES):
        with storage.atomic_path(Path(model_dir) / name) as tmp:
            shutil.copyfile(src, tmp)


def check_reference_files(model_dir: Path) -> None:
    """EngineError if MODEL_DIR lacks a reference atlas file."""
    for name in REFERENCE_FILES:
        if not (Path(model_dir) / name).is_file():
            raise EngineError(f"{model_dir}: incomplete model directory, {name} is missing")


def save_checkpoint(out: Path, model, optimizer, config: dict, reference_vertices, reference_lips,
                    rng: dict | None = None, extra: dict | None = None) -> None:
    """Weights (safetensors: no pickle) + config, then the resumable training state; all atomic.

    model : a LipSync3D; reference_vertices (468, 3) and reference_lips (3, 128, 128) tensors.
    rng : {"generator": ByteTensor, "torch": ByteTensor} so that a resumed run draws the same
    shuffles, teacher-forcing zeros and dropout masks as an uninterrupted one.
    extra : more named arrays for the weights file (the articulation centre: mean_vertex_deltas,
    mean_blendshapes, opening_direction).
    """
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["reference_vertices"] = reference_vertices.contiguous()
    tensors["reference_lips"] = reference_lips.contiguous()
    for k, v in (extra or {}).items():
        tensors[k] = torch.as_tensor(v).float().contiguous()
    epoch = str(int(config["epochs_done"]))
    # The training state is the checkpoint of record: one file, one rename, so a run killed at
    # any instant resumes from one whole epoch. The weights and config that predicting reads
    # follow it, each stamped with its epoch (load_arrays / load_model refuse a mix).
    with storage.atomic_path(out / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "epochs_done": config["epochs_done"],
                    "history": config["history"], "weights": tensors, "config": json.dumps(config),
                    **(rng or {})}, tmp)
    with storage.atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"epochs_done": epoch})
    storage.write_json(out / CONFIG, config)


def republish_state(model_dir: Path) -> bool:
    """Write the weights and config.json of the training state's epoch again when they are missing
    or of another epoch (a run killed between its files, in its last epoch too, where no further
    epoch would write them). True when it wrote them."""
    import torch
    from safetensors.torch import save_file

    out = Path(model_dir)
    state = torch.load(out / STATE, weights_only=True, map_location="cpu")
    if "weights" not in state or "config" not in state:
        return False
    epoch = int(state["epochs_done"])
    try:
        on_disk = int(json.loads((out / CONFIG).read_text(encoding="utf-8")).get("epochs_done", -1))
    except (OSError, ValueError):
        on_disk = None
    stamped = (_weights_metadata(out / WEIGHTS) or {}).get("epochs_done") if (out / WEIGHTS).is_file() else None
    if on_disk == epoch and stamped is not None and int(stamped) == epoch:
        return False
    with storage.atomic_path(out / WEIGHTS) as tmp:
        save_file(state["weights"], str(tmp), metadata={"epochs_done": str(epoch)})
    storage.write_json(out / CONFIG, json.loads(state["config"]))
    return True


def _check_same_epoch(root: Path, metadata: dict | None, config: dict) -> None:
    """Weights and config of one epoch, or an EngineError saying how to repair the folder."""
    stamped = (metadata or {}).get("epochs_done")
    if stamped is not None and "epochs_done" in config and int(stamped) != int(config["epochs_done"]):
        raise EngineError(f"{root}: its weights are of epoch {stamped} and {CONFIG} of epoch "
                          f"{config['epochs_done']} (training stopped while saving); resume the training "
                          "to repair it")


def _weights_metadata(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "numpy") as f:
            return f.metadata()
    except Exception:  # damaged: _load_weights says so
        return None


def _load_weights(path: Path, device: str | None) -> dict:
    """{name: tensor} of a weights file; device None: numpy arrays (no torch)."""
    if not path.is_file():
        raise EngineError(f"{path.parent}: incomplete model directory, {path.name} is missing")
    try:
        if device is None:
            from safetensors.numpy import load_file as load_numpy

            return load_numpy(str(path))
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise EngineError(f"{path}: corrupted or not a safetensors weights file ({type(e).__name__}: {e})") from e


def _config_and_dims(model_dir: Path) -> tuple[dict, ModelDimensions]:
    """config.json of MODEL_DIR and the network's dimensions in it (EngineError naming the file)."""
    root = Path(model_dir)
    if root.is_file():
        raise EngineError(f"{root}: is a file, not a model directory (one made by `lipsync train`)")
    config = read_config(root)
    try:
        return config, ModelDimensions.from_dict(config["dims"])
    except (KeyError, TypeError, ValueError) as e:
        raise EngineError(f"{root / CONFIG}: damaged model config ({type(e).__name__}: {e})") from e


def _check_references(root: Path, tensors: dict) -> None:
    for name in ("reference_vertices", "reference_lips"):
        if name not in tensors:
            raise EngineError(f"{root / WEIGHTS}: the {name} tensor is missing")


def load_arrays(model_dir: Path | str) -> tuple[dict, ModelDimensions, dict]:
    """(config, dims, {name: numpy array}) of MODEL_DIR without torch: the weights as in the file
    ("model.*" the network's, reference_vertices (468, 3), reference_lips (3, 128, 128), ...).
    EngineError naming the file for a missing, foreign, newer or damaged model."""
    root = Path(model_dir)
    config, dims = _config_and_dims(root)
    tensors = _load_weights(root / WEIGHTS, None)
    _check_same_epoch(root, _weights_metadata(root / WEIGHTS), config)
    _check_references(root, tensors)
    return config, dims, tensors


def load_model(model_dir: Path, device: str = "cpu") -> tuple:
    """(model in eval mode, config, extra tensors) from MODEL_DIR; never unpickles.

    Raises EngineError naming the file for a missing, foreign, newer or damaged model.
    """
    from .network import LipSync3D

    root = Path(model_dir)
    config, dims = _config_and_dims(root)
    tensors = _load_weights(root / WEIGHTS, device)
    _check_same_epoch(root, _weights_metadata(root / WEIGHTS), config)
    model = LipSync3D(dims).to(device)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise EngineError(f"{root / WEIGHTS}: weights do not fit the network in {CONFIG} "
                          f"({str(e).splitlines()[0]})") from e
    _check_references(root, tensors)
    model.eval()
    return model, config, {k: v for k, v in tensors.items() if not k.startswith("model.")}


def load_train_state(model_dir: Path, device) -> dict:
    """train_state.pt of MODEL_DIR (weights_only): optimizer, epochs_done, history, RNG states."""
    import torch

    path = Path(model_dir) / STATE
    try:
        return torch.load(path, weights_only=True, map_location=device)
    except FileNotFoundError as e:
        raise EngineError(f"{path.parent}: cannot resume, {path.name} is missing") from e
    except Exception as e:  # a truncated or foreign file: torch raises several error types
        raise EngineError(f"{path}: cannot resume, the training state is damaged ({type(e).__name__})") from e


