"""The add-on's settings stored in the .blend (scene.lipsync3d) and its runtime job status.

Owns: PropertyGroups for the speaker videos, the trained models found, the dialogue source,
the head import and the character options; `drive_options()` turns the character settings
into one mapping.DriveOptions (the one place the UI's properties become engine/animation options).
Must not: run the engine or change scene data in update callbacks.
"""

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

from . import mapping_table
from .core import client, mapping

_PRESET_ITEMS: list = []    # Blender needs the enum items kept alive while they are shown
_PRESET_STAMP: list = [None]


PRESET_LABELS = {"arkit": "ARKit", "cc4": "CC4", "livelinkface": "Live Link Face", "vrm": "VRM",
                 "visemes_oculus": "Oculus Visemes", "rhubarb": "Rhubarb (Preston Blair)"}


def preset_label(name: str) -> str:
    """The UI's name of a preset file: "livelinkface" -> "Live Link Face"; others by their words."""
    return PRESET_LABELS.get(name, name.replace("_", " ").title())


def preset_items(self, context):
    """AUTO plus every preset file in blendshape_rigs/presets (re-read when a file changes)."""
    root = client.bundled_engine_dir()
    folder = root / "blendshape_rigs" / "presets" if root is not None else None
    files = sorted(folder.glob("*.json")) if folder is not None and folder.is_dir() else []
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in files)
    if stamp != _PRESET_STAMP[0] or not _PRESET_ITEMS:
        _PRESET_STAMP[0] = stamp
        _PRESET_ITEMS[:] = [('AUTO', "Auto (best name match)", "The preset whose names match most shape keys")]
        for name, preset in mapping.list_presets(folder) if files else []:
            _PRESET_ITEMS.append((name, preset_label(name), preset.description[:200]))
    return _PRESET_ITEMS


def _is_shape_key_mesh(self, obj) -> bool:
    return obj.type == 'MESH' and obj.data.shape_keys is not None and len(obj.data.shape_keys.key_blocks) > 1


def _is_character(self, obj) -> bool:
    """A mesh with shape keys, or an armature (its jaw bone follows jawOpen)."""
    return _is_shape_key_mesh(self, obj) or obj.type == 'ARMATURE'


def _is_armature(self, obj) -> bool:
    return obj.type == 'ARMATURE'


class LIPSYNC3D_PG_video(bpy.types.PropertyGroup):
    filepath: StringProperty(name="Video", subtype='FILE_PATH', description="A take of the speaker")


class LIPSYNC3D_PG_model(bpy.types.PropertyGroup):
    path: StringProperty(name="Folder", subtype='DIR_PATH')
    summary: StringProperty(name="Summary")


_RELATIVE = {'PATH_SUPPORTS_BLEND_RELATIVE'} if bpy.app.version >= (4, 5, 0) else set()   # "//..." paths


class LIPSYNC3D_PG_result(bpy.types.PropertyGroup):
    path: StringProperty(name="Prediction", subtype='DIR_PATH', options=_RELATIVE)
    frame_start: IntProperty(name="Start frame")
    strip: StringProperty(name="Sound strip")


class LIPSYNC3D_PG_cast(bpy.types.PropertyGroup):
    """A rule of the cast: which sound strips animate which character."""

    prefix: StringProperty(name="Name prefix", description="Strips whose name starts with this (e.g. 'ANNA_')")
    channel: IntProperty(name="Channel", default=0, min=0, max=128, description="Strips on this VSE channel (0: any)")
    character: PointerProperty(name="Character", type=bpy.types.Object, poll=lambda self, o: _is_character(self, o))


def _viseme_items() -> list:
    """The visemes a row may use: the Rhubarb preset's shapes ("viseme:D", labelled "D (AI)")."""
    root = client.bundled_engine_dir()
    if root is None:
        return []
    path = root / "blendshape_rigs" / "presets" / f"{mapping.VISEME_PRESET}.json"
    return [(src, f"viseme {label}", f"1 on the frames whose mouth shape is {label} (the Rhubarb preset's "
             "classification of the coefficients), else 0; keyed constant")
            for src, label in mapping_table.viseme_items(path)]


_SOURCE_ITEMS = [("none", "none", "Leave this channel alone")] + [(n, n, f"Driven by the ARKit coefficient {n}")
                                                                   for n in mapping.ARKIT_NAMES] + _viseme_items()
SOURCES = frozenset(i[0] for i in _SOURCE_ITEMS)     # what a table row's source may be


class LIPSYNC3D_PG_map_row(bpy.types.PropertyGroup):
    """A row of the mapping table: the channel (name: a shape key, "bone: rotation X", or a pose asset
    "pose asset: AI") and what drives it: value = offset + gain * source (mapping_table.Row); a pose
    asset is blended in with the value as weight."""

    source: EnumProperty(name="Source", items=_SOURCE_ITEMS, default="none",
                         description="The ARKit coefficient or viseme that drives this channel (none: left alone)")
    gain: FloatProperty(name="Gain", default=1.0, soft_min=-2.0, soft_max=2.0, precision=3)
    offset: FloatProperty(name="Offset", default=0.0, soft_min=-1.0, soft_max=1.0, precision=3)


class LIPSYNC3D_PG_settings(bpy.types.PropertyGroup):
    workspace: StringProperty(
        name="Workspace", subtype='DIR_PATH', default="",
        description="Folder for speakers, models, predictions and logs (empty: the add-on's user folder)")
    # speaker
    videos: CollectionProperty(type=LIPSYNC3D_PG_video)
    video_index: IntProperty()
    speaker_name: StringProperty(name="Speaker", default="speaker",
                                 description="Name of the speaker and its model folder")
    quality: EnumProperty(
        name="Model size", default='CPU',
        items=[('TINY', "Tiny (1/32)", "A quick test: minutes on a CPU, rough lips"),
               ('CPU', "CPU (1/8)", "The CPU preset: good on a few minutes of video"),
               ('PAPER', "Paper (full)", "The published network: use a GPU")])
    epochs: IntProperty(name="Epochs", default=30, min=1, soft_max=500)
    shape_epochs: IntProperty(
        name="Shape Epochs", default=0, min=0, soft_max=500,
        description="After this many epochs only the lip texture keeps learning; the mouth shapes stop "
                    "(0 = they learn every epoch). On a minute of video 12 of 30 measured best: the shapes "
                    "over-fit first")
    phones: BoolProperty(
        name="Phones", default=True,
        description="The network also hears the (English) phones PocketSphinx recognises around each frame: "
                    "on a minute of video the mouth follows new speech markedly better. For another language, "
                    "try a model without and compare")
    models: CollectionProperty(type=LIPSYNC3D_PG_model)
    model_index: IntProperty(name="Model")
    # dialogue
    audio_source: EnumProperty(
        name="Audio", default='STRIP',
        items=[('STRIP', "Active strip", "The active sound strip of the Video Sequencer"),
               ('SELECTED', "Selected", "Every selected sound strip of the Video Sequencer, as a batch"),
               ('CHANNEL', "Channel", "Every sound strip on a channel, as a batch"),
               ('FILE', "File", "An audio or video file; a sound strip is added at the start frame")])
    channel: IntProperty(name="Channel", default=1, min=1, max=128)
    audio_file: StringProperty(name="Audio file", subtype='FILE_PATH')
    file_frame_start: IntProperty(name="Start frame", default=1,
                                  description="Scene frame of the audio file's first frame")
    engine_smoothing: BoolProperty(name="Temporal smoothing", default=True,
                                   description="The engine's smoothing of the predicted motion")
    use_articulation: BoolProperty(
        name="Articulation", default=False,
        description="Override how much the mouth moves (off: the model's own gain, fitted so the mouth opens as "
                    "much as the speaker's)")
    articulation: FloatProperty(
        name="Gain", default=1.0, min=0.0, max=5.0, soft_max=3.0,
        description="Mouth movement about the rest face: 0 = the rest face, 1 = the raw network output, "
                    "higher = livelier")
    engine_preview: BoolProperty(name="Preview MP4", default=False,
                                 description="Also let the engine render preview.mp4 (a frontal view with the audio)")
    import_head: BoolProperty(name="Import head", default=True, description="Import the textured head afterwards")
    drive_after: BoolProperty(name="Drive character", default=True,
                              description="Animate the chosen character afterwards")
    results: CollectionProperty(type=LIPSYNC3D_PG_result)
    result_index: IntProperty()
    # head
    animation: EnumProperty(
        name="Animation", default='SHAPE_KEYS',
        items=[('SHAPE_KEYS', "Shape keys", "One shape key per frame, keyed per frame (stored in the .blend)"),
               ('MESH_CACHE', "Mesh Cache", "A Mesh Cache modifier reading head.pc2 (light; for long dialogue)")])
    # character
    character: PointerProperty(name="Character", type=bpy.types.Object, poll=_is_character,
                               description="A mesh with shape keys, or an armature with a jaw bone, to animate")
    cast: CollectionProperty(type=LIPSYNC3D_PG_cast,
                             description="Which strips animate which character (first matching rule wins)")
    cast_index: IntProperty()
    preset: EnumProperty(name="Mapping", items=preset_items,
                         description="How the 52 ARKit coefficients become the character's shape keys")
    strength: FloatProperty(name="Strength", default=1.0, min=0.0, soft_max=2.0)
    smoothing: IntProperty(name="Smoothing", default=0, min=0, soft_max=10,
                           description="Extra smoothing window radius in frames (0 = off)")
    blinks: BoolProperty(name="Eye blinks", default=True, description="Add procedural eye blinks")
    head_motion: BoolProperty(name="Head motion", default=False, description="Add a subtle head sway and nods")
    head_amplitude: FloatProperty(name="Amplitude", default=2.0, min=0.0, soft_max=10.0,
                                  description="Largest head rotation in degrees")
    head_target: EnumProperty(
        name="Head", default='OBJECT',
        items=[('OBJECT', "Object", "Rotate the character object"),
               ('BONE', "Bone", "Rotate a bone of an armature")])
    armature: PointerProperty(name="Armature", type=bpy.types.Object, poll=_is_armature)
    bone: StringProperty(name="Bone", default="head")
    ease_frames: IntProperty(name="Ease", default=3, min=0, soft_max=24,
                             description="Frames from the rest pose into each line and back to rest after it")
    replace_takes: BoolProperty(name="Replace", default=False,
                                description="Re-driving a line removes its older take (off: the older take is "
                                            "muted and kept on the NLA)")

    key_driver_inputs: BoolProperty(
        name="Key Driver Inputs", default=False,
        description="A shape key controlled by a driver that passes one custom property through (e.g. "
                    "obj[\"jaw_ctrl\"]) is animated by keying that property (off: such keys are only reported)")
    mapping_rows: CollectionProperty(type=LIPSYNC3D_PG_map_row,
                                     description="The mapping table: when it has rows, Drive Character uses it")
    mapping_index: IntProperty()
    mapping_object: PointerProperty(name="Table of", type=bpy.types.Object,
                                     description="The character the mapping table was made for")

    def drive_options(self) -> mapping.DriveOptions:
        return mapping.DriveOptions(preset=self.preset, strength=self.strength, smoothing_frames=self.smoothing,
                                    blinks=self.blinks, head_motion=self.head_motion,
                                    head_amplitude_deg=self.head_amplitude)


class LIPSYNC3D_PG_job(bpy.types.PropertyGroup):
    """Runtime status for the panel (on the window manager, never saved)."""

    running: BoolProperty()
    text: StringProperty()
    fraction: FloatProperty(subtype='FACTOR', min=0.0, max=1.0)
    last_error: StringProperty()
    last_log: StringProperty()
    last_report: StringProperty()


CLASSES = (LIPSYNC3D_PG_video, LIPSYNC3D_PG_model, LIPSYNC3D_PG_result, LIPSYNC3D_PG_cast, LIPSYNC3D_PG_map_row,
           LIPSYNC3D_PG_settings,
           LIPSYNC3D_PG_job)


def register_properties() -> None:
    bpy.types.Scene.lipsync3d = PointerProperty(type=LIPSYNC3D_PG_settings)
    bpy.types.WindowManager.lipsync3d_job = PointerProperty(type=LIPSYNC3D_PG_job)


def unregister_properties() -> None:
    del bpy.types.WindowManager.lipsync3d_job
    del bpy.types.Scene.lipsync3d
