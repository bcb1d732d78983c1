"""Add-on preferences: which Python runs the engine, which engine copy, the device.

Owns: the AddonPreferences class and its draw(); the "Check engine" and "Create engine
environment" operators (engine jobs like any other: status bar, Esc cancels).
Must not: run anything at registration time.
"""

from pathlib import Path

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from . import runner
from .core import client, engine_env


class LIPSYNC3D_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = runner.PACKAGE

    engine_python: StringProperty(
        name="Engine Python", subtype='FILE_PATH', default="",
        description="Python interpreter of the engine's environment (the README's .venv/bin/python, or the one "
                    "created below). Empty: $LIPSYNC3D_ENGINE_PYTHON, then the environment created by the add-on")
    engine_source: EnumProperty(
        name="Engine", default='BUNDLED',
        items=[('BUNDLED', "Bundled with the add-on", "Run the engine shipped in this add-on (versions always match)"),
               ('INSTALLED', "Installed in that Python", "Run the lipsync_engine installed in the engine Python")])
    device: EnumProperty(
        name="Device", default='AUTO',
        items=[('AUTO', "Auto", "A GPU when the engine finds one (CUDA, Apple MPS), else the CPU"),
               ('CPU', "CPU", "Always the CPU"),
               ('GPU', "GPU", "CUDA (Apple: MPS); fails if there is none")])
    hang_timeout_s: FloatProperty(
        name="Hang timeout", default=600.0, min=10.0, soft_max=3600.0, subtype='TIME_ABSOLUTE', unit='TIME_ABSOLUTE',
        description="Stop the engine when it prints nothing at all for this long")
    base_python: StringProperty(
        name="Base Python 3.11", subtype='FILE_PATH', default="",
        description="Python 3.11 to create the engine environment from (empty: python3.11 on PATH, or Blender's own)")
    engine_info: StringProperty(name="Engine check", default="")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "engine_python")
        python = self.engine_python or client.default_engine_python(user_dir=runner.user_dir())
        col.label(text=f"Using: {python or 'none found'}", icon='CHECKMARK' if python else 'ERROR')
        col.prop(self, "engine_source")
        col.prop(self, "device")
        col.prop(self, "hang_timeout_s")
        row = col.row(align=True)
        row.operator("lipsync3d.check_engine", icon='PLAY')
        if self.engine_info:
            for line in self.engine_info.split("\n"):
                col.label(text=line)
        box = layout.box()
        box.label(text="Create the engine environment (downloads about 1 GB with pip)", icon='CONSOLE')
        box.prop(self, "base_python")
        box.operator("lipsync3d.create_engine_env", icon='ADD')


class LIPSYNC3D_OT_check_engine(runner.EngineJobOperator, bpy.types.Operator):
    """Start the engine and report its versions and the GPU it finds"""

    bl_idname = "lipsync3d.check_engine"
    bl_label = "Check Engine"

    def build_jobs(self, context):
        spec = runner.engine_spec(context)
        return [spec.job("Check engine", "info", "--device", spec.device, log_path=runner.log_path(context, "check"))]

    def on_success(self, context, outcome):
        info = outcome.results[-1] if outcome.results else {}
        text = info.get("message", "engine started")
        prefs = runner.preferences(context)
        if prefs is not None:
            prefs.engine_info = f"{text}\nengine: {info.get('engine_path', '?')}"
        self.report({'INFO'}, text)
        return {'FINISHED'}


class LIPSYNC3D_OT_create_engine_env(runner.EngineJobOperator, bpy.types.Operator):
    """Create a Python environment for the engine in the add-on's user folder (pip downloads torch and the rest)"""

    bl_idname = "lipsync3d.create_engine_env"
    bl_label = "Create Engine Environment"

    def build_jobs(self, context):
        prefs = runner.preferences(context)
        base = bpy.path.abspath(prefs.base_python) if prefs and prefs.base_python.strip() else \
            engine_env.find_base_python()
        if not base:
            raise runner.UserError("no Python 3.11 found to create the environment from; set 'Base Python 3.11'")
        engine_dir = client.bundled_engine_dir()
        venv = runner.user_dir() / engine_env.VENV_NAME
        return engine_env.venv_jobs(base, venv, engine_env.requirements_file(engine_dir),
                                    runner.workspace(context) / "logs" / "engine-env", engine_dir)

    def on_success(self, context, outcome):
        prefs = runner.preferences(context)
        python = client.venv_python(runner.user_dir() / engine_env.VENV_NAME)
        if prefs is not None:
            prefs.engine_python = str(python)
            prefs.engine_info = outcome.results[-1].get("message", "") if outcome.results else ""
        self.report({'INFO'}, f"engine environment ready: {Path(python)}")
        return {'FINISHED'}


CLASSES = (LIPSYNC3D_AddonPreferences, LIPSYNC3D_OT_check_engine, LIPSYNC3D_OT_create_engine_env)
