"""LipSync3D engine: personalized, audio-driven 3D talking faces (Lahiri et al., CVPR 2021).

Public API only; each stage lives in its own module. This package never imports bpy.
Names are loaded on first use (PEP 562), so `import lipsync_engine` stays light: worker
processes import it before they pin their thread pools (jobs.py).

    from lipsync_engine import prepare_speaker, PrepareOptions, open_speaker, fit_speaker
    result = prepare_speaker(["take1.mp4", "take2.mp4"], "speakers/anna")
    fit_speaker("speakers/anna")
"""

from importlib import import_module

from .version import __version__

_PUBLIC = {
    "prepare_speaker": "prepare", "PrepareOptions": "prepare", "PrepareResult": "prepare",
    "open_speaker": "dataset", "SpeakerDataset": "dataset",
    "fit_speaker": "blendshapes", "fit_coefficients": "blendshapes", "FitOptions": "blendshapes",
    "make_demo_video": "synthetic", "load_demo_truth": "synthetic",
    "evaluate_model": "evaluate", "EvaluateOptions": "evaluate", "EvaluationResult": "evaluate",
    "predict": "predict", "load_predictor": "predict", "Predictor": "predict", "PredictOptions": "predict",
    "Prediction": "predict", "compose_atlas": "predict", "OutputOptions": "prediction_folder",
    "PredictResult": "prediction_folder", "predict_to_folder": "prediction_folder", "write_outputs": "prediction_folder",
    "LightingOptions": "config", "EngineError": "errors", "CancelToken": "progress", "Progress": "progress",
    "dub_video": "dub", "DubOptions": "dub", "DubResult": "dub",
    "cartoon_prediction": "cartoon", "cartoon_frame": "cartoon", "CartoonOptions": "cartoon", "CartoonResult": "cartoon",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'lipsync_engine' has no attribute {name!r}")
