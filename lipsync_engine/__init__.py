"""LipSync3D engine: personalized, audio-driven 3D talking faces (Lahiri et al., CVPR 2021).

Public API only; each stage lives in its own module. This package never imports bpy.
"""

from .version import __version__

__all__ = ["__version__"]
