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
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import character, importer, mapping_table, runner
from .core import results

TINY_WIDTH = 1 / 32                # "Tiny" model size: channels as a fraction of the paper's
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, fallback: str = "take") -> str:
    """A folder name from any text. Example: ``safe_name("Line 3: Anna.wav") == "Line_3_Anna.wav"``."""
    return _UNSAFE.sub("_", text).strip("._") or fallback


def settings(context):
    return context.scene.lipsync3d


def _poll(cls, ok: bool, why: str) -> bool:
    """poll(): grey the button out, and say why in its tooltip (and in the error of a script's call)."""
    if not ok and hasattr(cls, "poll_message_set"):
        cls.poll_message_set(why)
    return ok


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

    @classmethod
    def poll(cls, context):
        return len(settings(context).videos) > 0

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

    @classmethod
    def poll(cls, context):
        return _poll(cls, not runner.busy(), "a LipSync3D job is running") and \
            _poll(cls, len(settings(context).videos) > 0, "add at least one video of the speaker first")

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
            if not s.phones and done is None:     # a resumed model keeps the network it was started with
                extra += ["--no-phones"]
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
    bl_options = {'REGISTER', 'UNDO'}

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
    channel: int = 0    # the strip's VSE channel (0: a file)


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
                       max(start, 0.0) + strip.frame_final_duration / fps, int(strip.frame_final_start), False,
                       int(strip.channel))


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
    if s.audio_source == 'SELECTED':
        strips = sorted((x for x in _all_strips(sed) if x.type == 'SOUND' and x.select), key=lambda x: x.frame_final_start)
        if not strips:
            raise runner.UserError("select one or more sound strips in the Video Sequencer")
        return [strip_source(context, x) for x in strips]
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


def articulation_arg(s) -> str | None:
    """`lipsync predict --articulation` of the settings, None for the model's own fitted gain."""
    return f"{s.articulation:.4f}" if s.use_articulation else None


def prediction_dir(context, model: Path, src: AudioSource, smoothing: bool, preview: bool,
                   articulation: str | None = None) -> Path:
    """A folder per (model, audio, range, fps, options): predicting the same thing again reuses it."""
    st = Path(src.path).stat()
    stamp = (Path(model) / "config.json").stat().st_mtime_ns
    key = f"{Path(src.path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{src.start_s:.6f}|{src.end_s}|" \
          f"{scene_fps(context.scene):.6f}|{Path(model).resolve()}|{stamp}|{smoothing}|{preview}" \
          + (f"|{articulation}" if articulation is not None else "")
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return runner.workspace(context) / "predictions" / safe_name(model.name) / f"{safe_name(src.name)}-{digest}"


class LIPSYNC3D_OT_predict(runner.EngineJobOperator, bpy.types.Operator):
    """Predict the talking head from the chosen dialogue, then import the head and drive the character"""

    bl_idname = "lipsync3d.predict"
    bl_label = "Predict"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _poll(cls, not runner.busy(), "a LipSync3D job is running")

    def build_jobs(self, context):
        s = settings(context)
        model, sources = active_model(context), audio_sources(context)
        spec = runner.engine_spec(context)
        self._work, todo = [], []
        for src in sources:
            out = prediction_dir(context, model, src, s.engine_smoothing, s.engine_preview, articulation_arg(s))
            self._work.append((src, out))
            if not (out / "result.json").is_file():     # else: already predicted (same model, audio, range, fps)
                todo.append((src, out))
        if not todo:
            return []
        # one request for the whole batch (lipsync predict A1 A2 ... -o O1 O2 ...), to the warm engine server
        args = [model, *(src.path for src, _ in todo), "-o", *(out for _, out in todo),
                "--fps", f"{scene_fps(context.scene):.6f}", "--overwrite", "--device", spec.device,
                "--start", *(f"{src.start_s:.6f}" for src, _ in todo)]
        if all(src.end_s is not None for src, _ in todo):
            args += ["--end", *(f"{src.end_s:.6f}" for src, _ in todo)]
        elif len(todo) > 1:
            raise runner.UserError("a batch needs the end of every piece of audio")
        args += [] if s.engine_smoothing else ["--no-smoothing"]
        args += [] if s.engine_preview else ["--no-preview"]
        args += [] if articulation_arg(s) is None else ["--articulation", articulation_arg(s)]
        label = f"Predict {todo[0][0].name}" if len(todo) == 1 else f"Predict {len(todo)} lines"
        # the warm engine (lipsync serve): the model stays loaded for the next prediction
        return [runner.engine_server(context, spec).job(label, "predict", *args)]

    def on_success(self, context, outcome):
        s = settings(context)
        segments = []
        for src, out in self._work:
            result = results.read_prediction(out)
            known = next((r for r in s.results if Path(bpy.path.abspath(r.path)) == out
                          and r.frame_start == src.frame_start), None)
            item = known or s.results.add()          # predicting the same strip again: the same entry
            item.name, item.path, item.frame_start, item.strip = src.name, runner.blend_path(out), src.frame_start, \
                src.name
            segments.append((result, src.frame_start, src))
        s.result_index = next(i for i, r in enumerate(s.results)
                              if Path(bpy.path.abspath(r.path)) == self._work[-1][1])
        reused = 0
        if s.import_head:
            for result, start, src in segments:
                if _imported_head(context, result, start) is not None:
                    reused += 1                      # the head of this prediction is already in the scene
                    continue
                obj = importer.import_head(context, result, start, s.animation,
                                           sound_file=src.path if src.from_file else "", line=src.name)
                if len(segments) > 1:
                    _show_only_during(obj, start, start + result.frames - 1)
        texts = [f"predicted {sum(r.frames for r, _, _ in segments)} frames"]
        if reused:
            texts.append(f"{reused} head(s) already in the scene, reused")
        if s.drive_after:
            for obj, group in cast_groups(context, [src for _, _, src in segments]).items():
                report = _drive(context, [(r, f, src.name) for r, f, src in segments if src in group], obj)
                texts.append(f"{obj.name}: {report.text()}")
        self.report({'INFO'}, "; ".join(texts))
        return {'FINISHED'}


def _imported_head(context, result, start: int):
    return next((o for o in context.scene.objects if o.get("lipsync3d_result") == str(result.path)
                 and o.get("lipsync3d_frame_start") == int(start)), None)


def cast_groups(context, sources: list) -> dict:
    """{character: [sources]}: each strip goes to the character of the first cast rule that matches it
    (name prefix, or VSE channel), else to the Character panel's character (none: not driven)."""
    s = settings(context)
    groups: dict = {}
    for src in sources:
        rule = next((c for c in s.cast if c.character is not None and (
            (c.prefix and src.name.startswith(c.prefix)) or (c.channel and src.channel == c.channel))), None)
        obj = rule.character if rule is not None else s.character
        if obj is not None:
            groups.setdefault(obj, []).append(src)
    return groups


def _show_only_during(obj, first: int, last: int) -> None:
    """Key the object's visibility so that it shows only on frames first..last (batch heads)."""
    for attr in ("hide_viewport", "hide_render"):
        for frame, hidden in ((first - 1, True), (first, False), (last + 1, True)):
            setattr(obj, attr, hidden)
            obj.keyframe_insert(attr, frame=frame)


def _drive(context, segments: list, obj=None):
    s = settings(context)
    obj = obj or s.character
    head = s.armature if s.head_target == 'BONE' and s.armature is not None else obj
    bone = s.bone if s.head_target == 'BONE' else ""
    targets = None
    if len(s.mapping_rows) and s.mapping_object == obj:         # the mapping table made for this character
        targets = character.table_targets(obj, table_rows(s))
    report = character.drive_character(obj, segments, s.drive_options(), head=head, bone=bone,
                                       replace=s.replace_takes, ease=s.ease_frames, scene=context.scene,
                                       targets=targets, driver_inputs=s.key_driver_inputs)
    context.window_manager.lipsync3d_job.last_report = report.text()
    return report


def _selected_result(context) -> tuple:
    s = settings(context)
    if not (0 <= s.result_index < len(s.results)):
        raise runner.UserError("no prediction yet: run Predict first")
    item = s.results[s.result_index]
    return results.read_prediction(bpy.path.abspath(item.path)), item


class LIPSYNC3D_OT_import_head(bpy.types.Operator):
    """Import the selected prediction as an animated, textured head"""

    bl_idname = "lipsync3d.import_head"
    bl_label = "Import Head"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _poll(cls, len(settings(context).results) > 0, "no prediction yet: run Predict first")

    def execute(self, context):
        try:
            result, item = _selected_result(context)
            obj = importer.import_head(context, result, item.frame_start, settings(context).animation,
                                       line=item.strip)
        except (runner.UserError, results.ResultError, ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        warning = obj.get("lipsync3d_warning", "")
        self.report({'WARNING'} if warning else {'INFO'},
                    f"imported {obj.name}: {result.frames} frames from frame {item.frame_start}"
                    + (f"; {warning}" if warning else ""))
        return {'FINISHED'}


class LIPSYNC3D_OT_drive_character(bpy.types.Operator):
    """Animate the character's shape keys from the selected prediction (in a new action)"""

    bl_idname = "lipsync3d.drive_character"
    bl_label = "Drive Character"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        s = settings(context)
        return _poll(cls, s.character is not None, "choose a character (a mesh with shape keys, or an armature) "
                     "first") and _poll(cls, len(s.results) > 0, "no prediction yet: run Predict first")

    def execute(self, context):
        s = settings(context)
        try:
            if s.character is None:
                raise runner.UserError("choose a character (a mesh with shape keys) first")
            result, item = _selected_result(context)
            report = _drive(context, [(result, item.frame_start, item.strip or item.name)])
        except (runner.UserError, results.ResultError, ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        level = 'WARNING' if report.match.unmapped_keys or report.nla.masked else 'INFO'
        self.report({level}, report.text())
        return {'FINISHED'}


class LIPSYNC3D_OT_resync(bpy.types.Operator):
    """Move every LipSync3D take, and every imported head, to where its sound strip now starts (after
    strips were moved in the Video Sequencer)"""

    bl_idname = "lipsync3d.resync"
    bl_label = "Re-sync Takes"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return context.scene.sequence_editor is not None

    def execute(self, context):
        from . import anim

        starts = {x.name: int(x.frame_final_start) for x in _all_strips(context.scene.sequence_editor)
                  if x.type == 'SOUND'}
        report = anim.TakeReport()
        holders = {o.data.shape_keys for o in context.scene.objects if o.type == 'MESH' and o.data.shape_keys}
        for id_data in [*context.scene.objects, *(h for h in holders if h is not None)]:
            if id_data.animation_data is not None:
                anim.resync(id_data, starts, report)
        for obj in context.scene.objects:          # imported heads: shape keys / Mesh Cache, atlas sequence
            line = obj.get(anim.LINE)
            if obj.get("lipsync3d_result") and line in starts:
                moved = importer.move_head(obj, starts[line])
                if moved:
                    report.moved.append(moved)
        text = report.text() or "every take and head already sits at its sound strip"
        context.window_manager.lipsync3d_job.last_report = text
        self.report({'INFO'}, text)
        return {'FINISHED'}


class LIPSYNC3D_OT_cast_add(bpy.types.Operator):
    """Add a cast rule: strips whose name starts with a prefix (or on a channel) animate a character"""

    bl_idname = "lipsync3d.cast_add"
    bl_label = "Add Cast Rule"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        settings(context).cast.add()
        return {'FINISHED'}


class LIPSYNC3D_OT_cast_remove(bpy.types.Operator):
    """Remove this cast rule"""

    bl_idname = "lipsync3d.cast_remove"
    bl_label = "Remove Cast Rule"
    bl_options = {'REGISTER', 'UNDO'}

    index: bpy.props.IntProperty(options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        return len(settings(context).cast) > 0

    def execute(self, context):
        cast = settings(context).cast
        if 0 <= self.index < len(cast):
            cast.remove(self.index)
        return {'FINISHED'}


# ---------------------------------------------------------------------------------------------
# The mapping table
# ---------------------------------------------------------------------------------------------

def table_rows(s) -> list:
    """The Character panel's table as mapping_table.Row."""
    return [mapping_table.Row(r.name, r.source, r.gain, r.offset) for r in s.mapping_rows]


def set_table(s, obj, rows: list) -> list:
    """Write rows (mapping_table.Row) into the panel's table for obj; returns the sources that are not
    ARKit coefficients or visemes (those rows get "none")."""
    from .properties import SOURCES

    valid = SOURCES
    s.mapping_rows.clear()
    bad = []
    for r in rows:
        item = s.mapping_rows.add()
        item.name, item.gain, item.offset = r.key, r.gain, r.offset
        if r.source in valid:
            item.source = r.source
        else:
            bad.append(r.source)
    s.mapping_object = obj
    s.mapping_index = 0
    return bad


def _table_poll(cls, context) -> bool:
    return _poll(cls, settings(context).character is not None, "choose a character first")


class LIPSYNC3D_OT_mapping_fill(bpy.types.Operator):
    """Fill the mapping table from the character: every shape key (or bone channel) with the channel that
    automatic name matching gives it (the Mapping preset)"""

    bl_idname = "lipsync3d.mapping_fill"
    bl_label = "Fill from Character"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _table_poll(cls, context)

    def execute(self, context):
        s = settings(context)
        try:
            rows = character.table_rows(s.character, s.drive_options())
        except (ValueError, OSError) as e:
            self.report({'ERROR'}, str(e))
            return {'CANCELLED'}
        set_table(s, s.character, rows)
        used = sum(r.source != mapping_table.NONE for r in rows)
        self.report({'INFO'}, f"mapping table of {s.character.name}: {len(rows)} rows, {used} driven")
        return {'FINISHED'}


class LIPSYNC3D_OT_mapping_clear(bpy.types.Operator):
    """Empty the mapping table (Drive Character matches by name again)"""

    bl_idname = "lipsync3d.mapping_clear"
    bl_label = "Clear Mapping"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return len(settings(context).mapping_rows) > 0

    def execute(self, context):
        s = settings(context)
        s.mapping_rows.clear()
        s.mapping_object = None
        return {'FINISHED'}


def _presets_dir() -> str:
    try:
        return str(character.presets_folder())
    except FileNotFoundError:
        return ""


class LIPSYNC3D_OT_mapping_save(bpy.types.Operator, ExportHelper):
    """Save the mapping table as a preset JSON (blendshape_rigs/presets/ format; saved in that folder it
    shows in the Mapping menu)"""

    bl_idname = "lipsync3d.mapping_save"
    bl_label = "Save Mapping"
    bl_options = {'REGISTER'}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        return _poll(cls, len(settings(context).mapping_rows) > 0, "the mapping table is empty: Fill it first")

    def invoke(self, context, event):
        s, folder = settings(context), _presets_dir()
        name = safe_name(s.mapping_object.name if s.mapping_object else "mapping", "mapping")
        self.filepath = str(Path(folder) / f"{name}.json") if folder else f"{name}.json"
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        s = settings(context)
        try:
            path = mapping_table.save_preset(table_rows(s), bpy.path.abspath(self.filepath),
                                             f"Mapping table of {s.mapping_object.name if s.mapping_object else '?'}")
        except OSError as e:
            self.report({'ERROR'}, f"cannot save the mapping: {e}")
            return {'CANCELLED'}
        self.report({'INFO'}, f"mapping saved to {path}")
        return {'FINISHED'}


class LIPSYNC3D_OT_mapping_load(bpy.types.Operator, ImportHelper):
    """Load a mapping table from a preset JSON (its outputs matched to the character's shape keys or bone
    channels by name)"""

    bl_idname = "lipsync3d.mapping_load"
    bl_label = "Load Mapping"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={'HIDDEN'})

    @classmethod
    def poll(cls, context):
        return _table_poll(cls, context)

    def invoke(self, context, event):
        folder = _presets_dir()
        if folder:
            self.filepath = folder + "/"
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        s = settings(context)
        path = bpy.path.abspath(self.filepath)
        try:
            rows = mapping_table.load_rows(path, character.table_channels(s.character, path))
        except (ValueError, OSError, KeyError) as e:
            self.report({'ERROR'}, f"cannot load {path}: {e}")
            return {'CANCELLED'}
        bad = set_table(s, s.character, rows)
        used = sum(r.source != mapping_table.NONE for r in rows) - len(bad)
        self.report({'WARNING'} if bad else {'INFO'},
                    f"mapping loaded: {len(rows)} rows, {used} driven"
                    + (f"; not ARKit coefficients or visemes, left as none: {', '.join(sorted(set(bad)))}"
                       if bad else ""))
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
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        return _poll(cls, bool(context.window_manager.lipsync3d_job.last_log), "no engine log to show")

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
           LIPSYNC3D_OT_cancel_job, LIPSYNC3D_OT_show_log, LIPSYNC3D_OT_cast_add, LIPSYNC3D_OT_cast_remove,
           LIPSYNC3D_OT_resync, LIPSYNC3D_OT_mapping_fill, LIPSYNC3D_OT_mapping_clear, LIPSYNC3D_OT_mapping_save,
           LIPSYNC3D_OT_mapping_load)
