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
    "LightingOptions": "config", "EngineError": "errors", "CancelToken": "progress", "Progress": "progress",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'lipsync_engine' has no attribute {name!r}")
