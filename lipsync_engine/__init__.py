"""LipSync3D engine: personalized, audio-driven 3D talking faces (Lahiri et al., CVPR 2021).

Public API only; each stage lives in its own module. This package never imports bpy.
Names are loaded on first use (PEP 562), so `import lipsync_engine` stays light: worker
processes import it before they pin their thread pools (jobs.py).

    from lipsync_engine import prepare_speaker, PrepareOptions, open_speaker, fit_speaker
    result = prepare_speaker(["take1.mp4", "take2.mp4"], "speakers/anna")
    fit_speaker("speakers/anna")
"""

from importlib import import_module

from .core.version import __version__

_PUBLIC = {
    "prepare_speaker": "prepare.pipeline", "PrepareOptions": "prepare.pipeline", "PrepareResult": "prepare.pipeline",
    "open_speaker": "prepare.dataset", "SpeakerDataset": "prepare.dataset",
    "fit_speaker": "rig.fitting", "fit_coefficients": "rig.fitting", "FitOptions": "rig.fitting",
    "make_demo_video": "demo.video", "load_demo_truth": "demo.video",
    "evaluate_model": "apps.evaluate", "EvaluateOptions": "apps.evaluate", "EvaluationResult": "apps.evaluate",
    "predict": "inference.predictor", "load_predictor": "inference.predictor", "Predictor": "inference.predictor", "PredictOptions": "inference.predictor",
    "Prediction": "inference.predictor", "compose_atlas": "inference.render", "OutputOptions": "inference.folder",
    "PredictResult": "inference.folder", "predict_to_folder": "inference.folder", "write_outputs": "inference.folder",
    "LightingOptions": "prepare.lighting", "EngineError": "core.errors", "CancelToken": "core.progress", "Progress": "core.progress",
    "dub_video": "apps.dub", "DubOptions": "apps.dub", "DubResult": "apps.dub",
    "cartoon_prediction": "apps.cartoon", "cartoon_frame": "apps.cartoon", "CartoonOptions": "apps.cartoon", "CartoonResult": "apps.cartoon",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'lipsync_engine' has no attribute {name!r}")
