"""The add-on's operators: thin layers of validate -> engine job -> apply.

Owns: the speaker's video list, Prepare & Train (prepare -> fit -> train, resumable), the model
list, Predict (audio from the active sound strip, every strip of a channel, or a file; frames
follow the strip and the scene's fps), Import Head, Drive Character, Cancel and Show Log.
Must not: parse engine output (client.py, results.py) or build scene data itself
(importer.py, character.py).
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import CollectionProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import character, importer, runner
from .core import results

TINY_WIDTH = 1 / 32                # "Tiny" model size: channels as a fraction of the paper's
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "take") -> str:
    """A folder name from any text. Example: ``safe_name("Line 3: Anna.wav") == "Line_3_Anna.wav"``."""
    return _UNSAFE.sub("_", text).strip("._") or fallback


def settings(context):
    return context.scene.lipsync3d


# ---------------------------------------------------------------------------------------------
# Speaker videos and training
# ---------------------------------------------------------------------------------------------

class LIPSYNC3D_OT_video_add(bpy.types.Operator, ImportHelper):
    """Add videos of the speaker (one or many takes of ONE person)"""

    bl_idname = "lipsync3d.video_add"
    bl_label = "Add Videos"
    bl_options = {'REGISTER', 'UNDO'}

    files: CollectionProperty(type=bpy.types.OperatorFileListElement, options={'HIDDEN', 'SKIP_SAVE'})
    directory: StringProperty(subtype='DIR_PATH', options={'HIDDEN', 'SKIP_SAVE'})
    filter_glob: StringProperty(default="*.mp4;*.mov;*.mkv;*.avi;*.webm;*.m4v", options={'HIDDEN'})

    def execute(self, context):
        s = settings(context)
        paths = [Path(self.directory) / f.name for f in self.files if f.name] or [Path(self.filepath)]
        known = {v.filepath for v in s.videos}
        for p in paths:
            if not p.is_file():
                self.report({'ERROR'}, f"{p}: not a file")
                return {'CANCELLED'}
            if str(p) not in known:
                s.videos.add().filepath = str(p)
        s.video_index = len(s.videos) - 1
        return {'FINISHED'}


class LIPSYNC3D_OT_video_remove(bpy.types.Operator):
    """Remove the selected video from the list"""

    bl_idname = "lipsync3d.video_remove"
    bl_label = "Remove Video"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        s = settings(context)
        if 0 <= s.video_index < len(s.videos):
            s.videos.remove(s.video_index)
            s.video_index = min(s.video_index, len(s.videos) - 1)
        return {'FINISHED'}


def model_args(quality: str) -> list:
    """Model-size arguments of `lipsync train` for the UI's choice."""
    return {"TINY": ["--width", f"{TINY_WIDTH:g}"], "CPU": ["--preset", "cpu"], "PAPER": ["--preset", "paper"]}[quality]


class LIPSYNC3D_OT_train(runner.EngineJobOperator, bpy.types.Operator):
    """Prepare the speaker's videos, fit blendshapes and train a model, as a background job (Esc cancels; run it
    again to resume)"""

    bl_idname = "lipsync3d.train"
    bl_label = "Prepare & Train"

    def build_jobs(self, context):
        s = settings(context)
        videos = [bpy.path.abspath(v.filepath) for v in s.videos]
        if not videos:
            raise runner.UserError("add at least one video of the speaker first")
        missing = [v for v in videos if not Path(v).is_file()]
        if missing:
            raise runner.UserError(f"{missing[0]}: video not found")
        name = safe_name(s.speaker_name, "speaker")
        ws = runner.workspace(context)
        speaker, model = ws / "speakers" / name, ws / "models" / name
        spec = runner.engine_spec(context)
        jobs = [spec.job("Prepare", "prepare", *videos, "-o", speaker, log_path=runner.log_path(context, "prepare"))]
        if not (speaker / "blendshapes.npy").is_file():
            jobs.append(spec.job("Fit blendshapes", "fit", speaker, log_path=runner.log_path(context, "fit")))
        done = _epochs_done(model)
        if done is not None and done >= s.epochs:
            self.report({'INFO'}, f"{model}: already trained ({done} epochs); choose another speaker name to retrain")
        else:
            extra = ["--resume"] if done is not None else model_args(s.quality)
            if s.shape_epochs:
                extra += ["--geometry-epochs", s.shape_epochs]
            jobs.append(spec.job("Train", "train", speaker, "-o", model, "--epochs", s.epochs, "--device",
                                 spec.device, *extra, log_path=runner.log_path(context, "train")))
        self._model = model
        return jobs

    def on_success(self, context, outcome):
        refresh_models(context, select=self._model)
        self.report({'INFO'}, f"model ready: {self._model}")
        return {'FINISHED'}


def _epochs_done(model_dir: Path) -> int | None:
    """Epochs in an existing model folder (None: no model there yet)."""
    try:
        return int(results.read_model_config(model_dir).get("epochs_done", 0))
    except results.ResultError:
        return None


def refresh_models(context, select: Path | None = None) -> None:
    """Fill the model list from <workspace>/models plus folders added by hand that still exist."""
    s = settings(context)
    manual = [m.path for m in s.models if m.path and Path(m.path).parent != runner.workspace(context) / "models"]
    found = sorted(p.parent for p in (runner.workspace(context) / "models").glob("*/config.json"))
    s.models.clear()
    for path in found + [Path(p) for p in manual]:
        try:
            c = results.read_model_config(path)
        except results.ResultError:
            continue
        item = s.models.add()
        item.name, item.path = path.name, str(path)
        item.summary = f"{c.get('epochs_done', '?')} epochs, {c.get('frames', '?')} frames, {c.get('fps', 0):g} fps"
    if select is not None:
        s.model_index = next((i for i, m in enumerate(s.models) if Path(m.path) == Path(select)), s.model_index)


class LIPSYNC3D_OT_models_refresh(bpy.types.Operator):
    """Look for trained models in the workspace"""

    bl_idname = "lipsync3d.models_refresh"
    bl_label = "Refresh Models"

    def execute(self, context):
        refresh_models(context)
        return {'FINISHED'}


class LIPSYNC3D_OT_model_add(bpy.types.Operator):
    """Add a trained model folder (one holding config.json and model.safetensors)"""

    bl_idname = "lipsync3d.model_add"
    bl_label = "Add Model Folder"
    bl_options = {'REGISTER', 'UNDO'}

    directory: StringProperty(subtype='DIR_PATH')

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        path = Path(bpy.path.abspath(self.directory))
        try:
            results.read_model_config(path)
        except results.ResultError as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        s = settings(context)
        item = s.models.add()
        item.name, item.path = path.name, str(path)
        refresh_models(context, select=path)
        return {'FINISHED'}


# ---------------------------------------------------------------------------------------------
# Dialogue -> prediction
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioSource:
    """One piece of dialogue to predict: where the audio is, which part, where it goes."""

    name: str           # strip or file name
    path: str           # the audio (or video) file
    start_s: float      # seconds into the file of the first frame
    end_s: float | None  # seconds into the file of the end (None = the file's end)
    frame_start: int    # scene frame of prediction frame 0
    from_file: bool     # True: no strip yet, the import adds one


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


def _sound_file(context, strip) -> str:
    """The file of a sound strip; packed sounds are written to the workspace first."""
    sound = strip.sound
    if sound.packed_file is not None:
        out = runner.workspace(context) / "audio" / safe_name(Path(sound.filepath).name or strip.name + ".wav")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(bytes(sound.packed_file.data))
        return str(out)
    path = bpy.path.abspath(sound.filepath, library=sound.library)
    if not Path(path).is_file():
        raise runner.UserError(f"{path}: the sound of strip '{strip.name}' is missing")
    return path


def strip_source(context, strip) -> AudioSource:
    """The part of the strip's sound that is visible on the timeline, at the scene's fps."""
    fps = scene_fps(context.scene)
    start = (strip.frame_final_start - strip.frame_start) / fps + float(getattr(strip, "sound_offset", 0.0))
    return AudioSource(strip.name, _sound_file(context, strip), max(start, 0.0),
                       max(start, 0.0) + strip.frame_final_duration / fps, int(strip.frame_final_start), False)


def _all_strips(sed):
    return list(sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all)


def audio_sources(context) -> list:
    """The dialogue the user picked: the active sound strip, every sound strip on a channel, or a file."""
    s, scene = settings(context), context.scene
    if s.audio_source == 'FILE':
        path = bpy.path.abspath(s.audio_file)
        if not Path(path).is_file():
            raise runner.UserError(f"{path or '(no file chosen)'}: audio file not found")
        return [AudioSource(Path(path).name, path, 0.0, None, s.file_frame_start, True)]
    sed = scene.sequence_editor
    if sed is None:
        raise runner.UserError("the scene has no Video Sequencer strips; add a sound strip or choose 'File'")
    if s.audio_source == 'STRIP':
        strip = sed.active_strip
        if strip is None or strip.type != 'SOUND':
            raise runner.UserError("make a sound strip active in the Video Sequencer (or choose 'Channel' or 'File')")
        return [strip_source(context, strip)]
    strips = sorted((x for x in _all_strips(sed) if x.type == 'SOUND' and x.channel == s.channel and not x.mute),
                    key=lambda x: x.frame_final_start)
    if not strips:
        raise runner.UserError(f"no sound strips on channel {s.channel}")
    return [strip_source(context, x) for x in strips]


def active_model(context) -> Path:
    s = settings(context)
    if not s.models:
        refresh_models(context)
    if not (0 <= s.model_index < len(s.models)):
        raise runner.UserError("no trained model: train one (Speaker) or add a model folder")
    return Path(s.models[s.model_index].path)


def prediction_dir(context, model: Path, src: AudioSource, smoothing: bool, preview: bool) -> Path:
    """A folder per (model, audio, range, fps): predicting the same thing again reuses it."""
    st = Path(src.path).stat()
    stamp = (Path(model) / "config.json").stat().st_mtime_ns
    key = f"{Path(src.path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{src.start_s:.6f}|{src.end_s}|" \
          f"{scene_fps(context.scene):.6f}|{Path(model).resolve()}|{stamp}|{smoothing}|{preview}"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return runner.workspace(context) / "predictions" / safe_name(model.name) / f"{safe_name(src.name)}-{digest}"


class LIPSYNC3D_OT_predict(runner.EngineJobOperator, bpy.types.Operator):
    """Predict the talking head from the chosen dialogue, then import the head and drive the character"""

    bl_idname = "lipsync3d.predict"
    bl_label = "Predict"
    bl_options = {'REGISTER', 'UNDO'}

    def build_jobs(self, context):
        s = settings(context)
        model, sources = active_model(context), audio_sources(context)
        spec = runner.engine_spec(context)
        self._work, jobs = [], []
        for src in sources:
            out = prediction_dir(context, model, src, s.engine_smoothing, s.engine_preview)
            self._work.append((src, out))
            if (out / "result.json").is_file():
                continue        # already predicted: same model, audio, range and fps
            args = [model, src.path, "-o", out, "--fps", f"{scene_fps(context.scene):.6f}", "--overwrite",
                    "--device", spec.device, "--start", f"{src.start_s:.6f}"]
            args += ["--end", f"{src.end_s:.6f}"] if src.end_s is not None else []
            args += [] if s.engine_smoothing else ["--no-smoothing"]
            args += [] if s.engine_preview else ["--no-preview"]
            jobs.append(spec.job(f"Predict {src.name}", "predict", *args, log_path=runner.log_path(context, "predict")))
        return jobs

    def on_success(self, context, outcome):
        s = settings(context)
        segments = []
        for src, out in self._work:
            result = results.read_prediction(out)
            item = s.results.add()
            item.name, item.path, item.frame_start, item.strip = src.name, str(out), src.frame_start, src.name
            segments.append((result, src.frame_start, src))
        s.result_index = len(s.results) - 1
        if s.import_head:
            for result, start, src in segments:
                obj = importer.import_head(context, result, start, s.animation,
                                           sound_file=src.path if src.from_file else "")
                if len(segments) > 1:
                    _show_only_during(obj, start, start + result.frames - 1)
        if s.drive_after and s.character is not None:
            report = _drive(context, [(r, f) for r, f, _ in segments])
            self.report({'INFO'}, report.text())
        else:
            self.report({'INFO'}, f"predicted {sum(r.frames for r, _, _ in segments)} frames")
        return {'FINISHED'}


def _show_only_during(obj, first: int, last: int) -> None:
    """Key the object's visibility so that it shows only on frames first..last (batch heads)."""
    for attr in ("hide_viewport", "hide_render"):
        for frame, hidden in ((first - 1, True), (first, False), (last + 1, True)):
            setattr(obj, attr, hidden)
            obj.keyframe_insert(attr, frame=frame)


def _drive(context, segments: list):
    s = settings(context)
    head = s.armature if s.head_target == 'BONE' and s.armature is not None else s.character
    bone = s.bone if s.head_target == 'BONE' else ""
    report = character.drive_character(s.character, segments, s.drive_options(), head=head, bone=bone)
    context.window_manager.lipsync3d_job.last_report = report.text()
    return report


def _selected_result(context) -> tuple:
    s = settings(context)
    if not (0 <= s.result_index < len(s.results)):
        raise runner.UserError("no prediction yet: run Predict first")
    item = s.results[s.result_index]
    return results.read_prediction(item.path), item


class LIPSYNC3D_OT_import_head(bpy.types.Operator):
    """Import the selected prediction as an animated, textured head"""

    bl_idname = "lipsync3d.import_head"
    bl_label = "Import Head"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        try:
            result, item = _selected_result(context)
            obj = importer.import_head(context, result, item.frame_start, settings(context).animation)
        except (runner.UserError, results.ResultError, ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        self.report({'INFO'}, f"imported {obj.name}: {result.frames} frames from frame {item.frame_start}")
        return {'FINISHED'}


class LIPSYNC3D_OT_drive_character(bpy.types.Operator):
    """Animate the character's shape keys from the selected prediction (in a new action)"""

    bl_idname = "lipsync3d.drive_character"
    bl_label = "Drive Character"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        s = settings(context)
        try:
            if s.character is None:
                raise runner.UserError("choose a character (a mesh with shape keys) first")
            result, item = _selected_result(context)
            report = _drive(context, [(result, item.frame_start)])
        except (runner.UserError, results.ResultError, ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        level = 'WARNING' if report.match.unmapped_keys else 'INFO'
        self.report({level}, report.text())
        return {'FINISHED'}


class LIPSYNC3D_OT_cancel_job(bpy.types.Operator):
    """Stop the running LipSync3D job (finished work is kept; run it again to resume)"""

    bl_idname = "lipsync3d.cancel_job"
    bl_label = "Cancel"

    def execute(self, context):
        if not runner.request_cancel():
            self.report({'INFO'}, "no LipSync3D job is running")
        return {'FINISHED'}


class LIPSYNC3D_OT_show_log(bpy.types.Operator):
    """Open the last failed job's engine log in the Text Editor"""

    bl_idname = "lipsync3d.show_log"
    bl_label = "Show Log"

    def execute(self, context):
        path = context.window_manager.lipsync3d_job.last_log
        if not path or not Path(path).is_file():
            self.report({'ERROR'}, "no engine log to show")
            return {'CANCELLED'}
        text = bpy.data.texts.load(path)
        for area in context.screen.areas if context.screen else []:
            if area.type == 'TEXT_EDITOR':
                area.spaces.active.text = text
        self.report({'INFO'}, f"log loaded as text '{text.name}'")
        return {'FINISHED'}


CLASSES = (LIPSYNC3D_OT_video_add, LIPSYNC3D_OT_video_remove, LIPSYNC3D_OT_train, LIPSYNC3D_OT_models_refresh,
           LIPSYNC3D_OT_model_add, LIPSYNC3D_OT_predict, LIPSYNC3D_OT_import_head, LIPSYNC3D_OT_drive_character,
           LIPSYNC3D_OT_cancel_job, LIPSYNC3D_OT_show_log)
