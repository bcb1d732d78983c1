"""LipSync3D engine: personalized, audio-driven 3D talking faces (Lahiri et al., CVPR 2021).

Public API only; each stage lives in its own subpackage (core, face, io, prepare, rig, model,
inference, apps, demo; README.md "Layout"). This package never imports bpy. Names are
loaded on first use (PEP 562), so `import lipsync_engine` stays light (no torch, no
MediaPipe): worker processes import it before they pin their thread pools (core/jobs.py).

    from lipsync_engine import prepare_speaker, fit_speaker, train_speaker, recipe_options, predict
    prepare_speaker(["take1.mp4", "take2.mp4"], "speakers/anna")
    fit_speaker("speakers/anna")
    train_speaker("speakers/anna", "models/anna", recipe_options("fast", epochs=60))
    pred = predict("models/anna", "line_042.wav")       # pred.vertices: (F, 468, 3)

Every stage has one call shape: its inputs, its output (if any), the options (a frozen
dataclass), `on_progress(Progress)` and a `CancelToken`; what decides how an existing output is
treated (`overwrite`, `resume`) is keyword-only. Errors say what is wrong and name the file;
the CLI adds which of its flags would help (cli.error_line).

Options are frozen dataclasses that check themselves; a tiny network for tests:

>>> from lipsync_engine import ModelDimensions, TrainOptions, recipe_options
>>> TrainOptions(epochs=5).epochs
5
>>> recipe_options("fast", epochs=60).learning_rate
0.001
>>> ModelDimensions().scaled(1 / 32).texture_channels
(32, 16, 8, 4, 4)
>>> TrainOptions(val_fraction=0.7)
Traceback (most recent call last):
...
ValueError: val_fraction must be in [0, 0.5), got 0.7
"""

from importlib import import_module

from .core.version import __version__

_PUBLIC = {
    "prepare_speaker": "prepare.pipeline", "PrepareOptions": "prepare.pipeline", "PrepareResult": "prepare.pipeline",
    "open_speaker": "prepare.dataset", "SpeakerDataset": "prepare.dataset",
    "fit_speaker": "rig.fitting", "fit_coefficients": "rig.fitting", "FitOptions": "rig.fitting",
    "train_speaker": "model.train", "TrainOptions": "model.train", "TrainResult": "model.train",
    "recipe_options": "model.train", "ModelDimensions": "model.dims", "load_model": "model.checkpoint",
    "make_demo_video": "demo.video", "load_demo_truth": "demo.video",
    "evaluate_model": "apps.evaluate", "EvaluateOptions": "apps.evaluate", "EvaluationResult": "apps.evaluate",
    "predict": "inference.predictor", "load_predictor": "inference.predictor", "Predictor": "inference.predictor",
    "PredictOptions": "inference.predictor", "Prediction": "inference.predictor", "compose_atlas": "inference.render",
    "OutputOptions": "inference.folder", "PredictResult": "inference.folder", "predict_to_folder": "inference.folder",
    "write_outputs": "inference.folder",
    "LightingOptions": "prepare.lighting", "EngineError": "core.errors", "CancelToken": "core.progress",
    "Progress": "core.progress",
    "dub_video": "apps.dub", "DubOptions": "apps.dub", "DubResult": "apps.dub",
    "cartoon_prediction": "apps.cartoon", "cartoon_frame": "apps.cartoon", "CartoonOptions": "apps.cartoon",
    "CartoonResult": "apps.cartoon",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'lipsync_engine' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(__all__)
