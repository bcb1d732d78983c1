"""The "LipSync3D" tab of the 3D View sidebar: draw() only.

Owns: the panels (job status, Engine, Speaker, Dialogue, Head, Character, Cartoon & Dub) and
their lists. The Cartoon & Dub panel draws the optional modules that plug in (each module
with a `draw(layout, context)`, see __init__.OPTIONAL_MODULES).
Must not: change data while drawing.
"""

from __future__ import annotations

from pathlib import Path

import bpy

from . import runner


class _Panel:
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "LipSync3D"


class LIPSYNC3D_UL_videos(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        layout.label(text=Path(item.filepath).name or "(empty)", icon='FILE_MOVIE')


class LIPSYNC3D_UL_models(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row()
        row.label(text=item.name, icon='OUTLINER_OB_ARMATURE')
        row.label(text=item.summary)


class LIPSYNC3D_UL_results(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        layout.label(text=f"{item.name} @ {item.frame_start}", icon='SOUND')


class LIPSYNC3D_UL_mapping(bpy.types.UIList):
    """The mapping table: channel, source (ARKit coefficient, viseme or none), gain, offset."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        icon = 'POSE_HLT' if item.name.startswith("pose asset: ") else \
            'SHAPEKEY_DATA' if ": " not in item.name else 'BONE_DATA'
        row.label(text=item.name, icon=icon)
        row.prop(item, "source", text="")
        row.prop(item, "gain", text="")
        row.prop(item, "offset", text="")


class LIPSYNC3D_PT_main(_Panel, bpy.types.Panel):
    bl_label = "LipSync3D"

    def draw(self, context):
        layout, job = self.layout, context.window_manager.lipsync3d_job
        if job.running:
            row = layout.row(align=True)
            if hasattr(row, "progress"):
                row.progress(factor=job.fraction, text=job.text or "working...")
            else:
                row.label(text=job.text or "working...")
            row.operator("lipsync3d.cancel_job", text="", icon='CANCEL')
        if job.last_error:
            box = layout.box()
            box.alert = True
            for i, chunk in enumerate(_wrap(job.last_error, 60)):
                box.label(text=chunk, icon='ERROR' if i == 0 else 'BLANK1')
            if job.last_log:
                box.operator("lipsync3d.show_log", icon='TEXT')
        layout.prop(context.scene.lipsync3d, "workspace")


class LIPSYNC3D_PT_engine(_Panel, bpy.types.Panel):
    bl_label = "Engine"
    bl_parent_id = "LIPSYNC3D_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        prefs = runner.preferences(context)
        if prefs is None:
            self.layout.label(text="Add-on preferences unavailable", icon='ERROR')
            return
        col = self.layout.column()
        col.prop(prefs, "engine_python", text="Python")
        col.prop(prefs, "device")
        col.operator("lipsync3d.check_engine", icon='PLAY')
        for line in prefs.engine_info.split("\n") if prefs.engine_info else []:
            col.label(text=line)


class LIPSYNC3D_PT_speaker(_Panel, bpy.types.Panel):
    bl_label = "Speaker"
    bl_parent_id = "LIPSYNC3D_PT_main"

    def draw(self, context):
        s, layout = context.scene.lipsync3d, self.layout
        row = layout.row()
        row.template_list("LIPSYNC3D_UL_videos", "", s, "videos", s, "video_index", rows=2)
        col = row.column(align=True)
        col.operator("lipsync3d.video_add", text="", icon='ADD')
        col.operator("lipsync3d.video_remove", text="", icon='REMOVE')
        col = layout.column()
        col.prop(s, "speaker_name")
        col.prop(s, "quality")
        col.prop(s, "epochs")
        col.prop(s, "shape_epochs")
        col.prop(s, "phones")
        col.operator("lipsync3d.train", icon='PLAY')
        layout.label(text="Trained models")
        row = layout.row()
        row.template_list("LIPSYNC3D_UL_models", "", s, "models", s, "model_index", rows=2)
        col = row.column(align=True)
        col.operator("lipsync3d.models_refresh", text="", icon='FILE_REFRESH')
        col.operator("lipsync3d.model_add", text="", icon='FILE_FOLDER')


class LIPSYNC3D_PT_dialogue(_Panel, bpy.types.Panel):
    bl_label = "Dialogue"
    bl_parent_id = "LIPSYNC3D_PT_main"

    def draw(self, context):
        s, col = context.scene.lipsync3d, self.layout.column()
        col.prop(s, "audio_source", expand=True)
        if s.audio_source == 'CHANNEL':
            col.prop(s, "channel")
        elif s.audio_source == 'FILE':
            col.prop(s, "audio_file")
            col.prop(s, "file_frame_start")
        row = col.row()
        row.prop(s, "engine_smoothing")
        row.prop(s, "engine_preview")
        row = col.row(align=True)
        row.prop(s, "use_articulation")
        sub = row.row(align=True)
        sub.active = s.use_articulation
        sub.prop(s, "articulation", slider=True)
        row = col.row()
        row.prop(s, "import_head")
        row.prop(s, "drive_after")
        row = col.row(align=True)
        row.operator("lipsync3d.predict", icon='SPEAKER')
        row.operator("lipsync3d.resync", text="", icon='FILE_REFRESH')
        if hasattr(context.scene, "lipsync3d_live"):      # live.py: Dialogue from text
            from . import live
            live.draw_dialogue(col, context)
        if s.results:
            col.template_list("LIPSYNC3D_UL_results", "", s, "results", s, "result_index", rows=2)


class LIPSYNC3D_PT_head(_Panel, bpy.types.Panel):
    bl_label = "Textured Head"
    bl_parent_id = "LIPSYNC3D_PT_main"

    def draw(self, context):
        s, col = context.scene.lipsync3d, self.layout.column()
        col.prop(s, "animation", expand=True)
        col.operator("lipsync3d.import_head", icon='IMPORT')


class LIPSYNC3D_PT_character(_Panel, bpy.types.Panel):
    bl_label = "Character"
    bl_parent_id = "LIPSYNC3D_PT_main"

    def draw(self, context):
        s, col = context.scene.lipsync3d, self.layout.column()
        col.prop(s, "character")
        col.prop(s, "preset")
        col.prop(s, "strength", slider=True)
        col.prop(s, "smoothing")
        col.prop(s, "blinks")
        row = col.row(align=True)
        row.prop(s, "ease_frames")
        row.prop(s, "replace_takes", toggle=True)
        col.prop(s, "key_driver_inputs")
        col.prop(s, "head_motion")
        if s.head_motion:
            sub = col.box()
            sub.prop(s, "head_amplitude")
            sub.prop(s, "head_target", expand=True)
            if s.head_target == 'BONE':
                sub.prop(s, "armature")
                if s.armature is not None:
                    sub.prop_search(s, "bone", s.armature.pose, "bones")
        box = col.box()
        row = box.row()
        table = len(s.mapping_rows) > 0
        row.label(text=f"Mapping table ({s.mapping_object.name if table and s.mapping_object else 'empty'})")
        row.operator("lipsync3d.mapping_fill", text="", icon='FILE_REFRESH')
        row.operator("lipsync3d.mapping_load", text="", icon='FILEBROWSER')
        row.operator("lipsync3d.mapping_save", text="", icon='FILE_TICK')
        row.operator("lipsync3d.mapping_clear", text="", icon='X')
        if table:
            box.template_list("LIPSYNC3D_UL_mapping", "", s, "mapping_rows", s, "mapping_index", rows=4)
            if s.mapping_object != s.character:
                box.label(text="made for another character: not used", icon='INFO')
        col.operator("lipsync3d.drive_character", icon='SHAPEKEY_DATA')
        box = col.box()
        row = box.row()
        row.label(text="Cast (strips -> characters)")
        row.operator("lipsync3d.cast_add", text="", icon='ADD')
        for i, rule in enumerate(s.cast):
            row = box.row(align=True)
            row.prop(rule, "prefix", text="")
            row.prop(rule, "channel", text="Ch")
            row.prop(rule, "character", text="")
            row.operator("lipsync3d.cast_remove", text="", icon='X').index = i
        if hasattr(context.scene, "lipsync3d_live"):      # live.py (optional module): the Live button
            from . import live
            live.draw_character(col, context)
        report = context.window_manager.lipsync3d_job.last_report
        for chunk in _wrap(report, 60) if report else []:
            col.label(text=chunk)


class LIPSYNC3D_PT_extras(_Panel, bpy.types.Panel):
    bl_label = "Cartoon & Dub"
    bl_parent_id = "LIPSYNC3D_PT_main"
    bl_options = {'DEFAULT_CLOSED'}
    modules = ()                    # set by __init__.register: the optional modules found

    @classmethod
    def poll(cls, context):
        return bool(cls.modules)

    def draw(self, context):
        for module in self.modules:
            box = self.layout.box()
            module.draw(box, context)


class LIPSYNC3D_PT_sequencer(bpy.types.Panel):
    """The Video Sequencer's sidebar: predict from the selected sound strips, re-sync the takes."""

    bl_space_type = 'SEQUENCE_EDITOR'
    bl_region_type = 'UI'
    bl_category = "LipSync3D"
    bl_label = "LipSync3D"

    def draw(self, context):
        s, col = context.scene.lipsync3d, self.layout.column()
        col.template_list("LIPSYNC3D_UL_models", "", s, "models", s, "model_index", rows=2)
        col.prop(s, "audio_source", text="Audio")
        col.prop(s, "character")
        row = col.row()
        row.prop(s, "import_head")
        row.prop(s, "drive_after")
        sed = context.scene.sequence_editor
        every = (sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all) if sed else ()
        selected = [x for x in every if x.type == 'SOUND' and x.select]
        col.operator("lipsync3d.predict", icon='SPEAKER',
                     text=f"Predict {len(selected)} Selected" if s.audio_source == 'SELECTED' else "Predict")
        col.operator("lipsync3d.resync", icon='FILE_REFRESH')


def _wrap(text: str, width: int) -> list:
    """Split a long message into label-sized lines at spaces."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


CLASSES = (LIPSYNC3D_UL_videos, LIPSYNC3D_UL_models, LIPSYNC3D_UL_results, LIPSYNC3D_UL_mapping, LIPSYNC3D_PT_main,
           LIPSYNC3D_PT_engine, LIPSYNC3D_PT_speaker, LIPSYNC3D_PT_dialogue, LIPSYNC3D_PT_head, LIPSYNC3D_PT_character,
           LIPSYNC3D_PT_extras, LIPSYNC3D_PT_sequencer)
