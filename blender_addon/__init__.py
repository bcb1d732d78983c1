# SPDX-License-Identifier: GPL-3.0-or-later
"""LipSync3D for Blender: personalized, audio-driven 3D talking faces (Lahiri et al., CVPR 2021).

register/unregister only. The add-on imports bpy and the standard library; the engine
(torch, MediaPipe) runs in its own Python as a subprocess (client.py), never in Blender's.
Optional modules (cartoon.py, dub.py) plug in by exposing CLASSES and draw(layout, context):
their classes are registered here and their draw() is called by the "Cartoon & Dub" panel.
"""

# Read by Blender before 4.2 and by "Install from Disk" of legacy add-ons; build_addon.py
# writes the version (the one place it is written is lipsync_engine/version.py).
bl_info = {
    "name": "LipSync3D",
    "author": "LipSync3D developers",
    "version": (0, 0, 0),
    "blender": (4, 2, 0),
    "location": "3D View > Sidebar > LipSync3D",
    "description": "Personalized audio-driven 3D talking faces from video",
    "category": "Animation",
}

import importlib

OPTIONAL_MODULES = ("cartoon", "dub", "live")
_registered: list = []


def _optional_modules() -> list:
    found = []
    for name in OPTIONAL_MODULES:
        try:
            found.append(importlib.import_module(f".{name}", __package__))
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise
    return found


def register():
    # imported here, not at the top: `from blender_addon.core import client` works without Blender (tests)
    import bpy

    from . import operators, panels, preferences, properties

    extras = _optional_modules()
    classes = [*preferences.CLASSES, *properties.CLASSES, *operators.CLASSES,
               *(c for m in extras for c in getattr(m, "CLASSES", ())), *panels.CLASSES]
    for cls in classes:
        bpy.utils.register_class(cls)
        _registered.append(cls)
    properties.register_properties()
    panels.LIPSYNC3D_PT_extras.modules = tuple(m for m in extras if hasattr(m, "draw"))
    for m in extras:
        if hasattr(m, "register_extra"):
            m.register_extra()


def unregister():
    import bpy

    from . import panels, properties, runner

    runner.stop_all()
    for m in _optional_modules():
        if hasattr(m, "unregister_extra"):
            m.unregister_extra()
    properties.unregister_properties()
    while _registered:
        bpy.utils.unregister_class(_registered.pop())
    panels.LIPSYNC3D_PT_extras.modules = ()
