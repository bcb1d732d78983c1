"""Live mode and dialogue from text (`lipsync live`, `lipsync say`) in Blender.

Owns: the Live operator (starts `lipsync --json live` through runner.py's job machinery,
applies each streamed FRAME's 52 coefficients to the character's shape keys through the
preset mapping and strength of the Character panel on a timer at the viewport's rate, never
blocking; Esc or the button again stops it; with Record on, the engine writes what it streamed
as a prediction folder and this module keys it into a new action, the character's take, and
puts the recorded audio in the VSE at the frame where recording started), the Dialogue from
text operator (`lipsync say` -> a sound strip at the current frame and the prediction, driven
like Predict), their settings (scene.lipsync3d_live) and their rows in the Character and
Dialogue panels.
Must not: import engine modules, or run the engine other than through runner.py/client.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import character, importer, operators, runner
from .core import mapping, results

LIVE_TIMER_S = 1.0 / 60.0      # apply the newest frame this often (a 60 Hz viewport)


class LIPSYNC3D_PG_live(bpy.types.PropertyGroup):
    source: EnumProperty(name="Input", default='MIC',
                         items=[('MIC', "Microphone", "The default input device"),
                                ('FILE', "File", "An audio file played in real time")])
    audio_file: StringProperty(name="Audio file", subtype='FILE_PATH')
    record: BoolProperty(name="Record", default=True,
                         description="Key what was streamed into a new take and put its audio in the VSE")
    lookahead: FloatProperty(name="Lookahead (ms)", default=0.0, min=0.0, max=120.0,
                             description="Future audio a frame waits for; 0 = the model's own (120 ms unless "
                                         "trained with a lookahead)")
    text: StringProperty(name="Text", description="Dialogue to speak (espeak-ng) and predict")
    voice: StringProperty(name="Voice", default="en-us", description="espeak-ng language, e.g. en-us, en-gb, de, fr")
    rate: IntProperty(name="Words/min", default=175, min=80, max=450)
    frames: IntProperty(name="Frames", default=0)
    dropped: IntProperty(name="Dropped", default=0)


def _settings(context):
    return context.scene.lipsync3d_live


class LiveApplier:
    """The character's shape keys set from ARKit rows (preset + strength, clipped to the sliders)."""

    def __init__(self, obj, options: mapping.DriveOptions):
        key = obj.data.shape_keys if obj is not None and obj.type == 'MESH' else None
        if key is None or len(key.key_blocks) < 2:
            raise runner.UserError(f"{obj.name if obj else 'no character'}: choose a character with shape keys")
        self.key, self.options = key, options
        names = [kb.name for kb in key.key_blocks[1:]]
        self.preset = character.choose_preset(names, options.preset)
        self.match = mapping.match_names(names, self.preset.outputs, aliases=self.preset.aliases)
        column = {c: j for j, c in enumerate(self.preset.outputs)}
        self.targets = [(key.key_blocks[k], column[c]) for k, c in self.match.assignments.items()]

    def values(self, arkit_row: list) -> dict:
        """{shape key name: value} for one ARKit row, as drive_character keys it (no blinks or smoothing)."""
        row = self.preset.apply([arkit_row])[0]
        return {kb.name: min(max(row[j] * self.options.strength, kb.slider_min), kb.slider_max)
                for kb, j in self.targets}

    def apply(self, arkit_row: list) -> dict:
        vals = self.values(arkit_row)
        for kb, _ in self.targets:
            kb.value = vals[kb.name]
        return vals


class LIPSYNC3D_OT_live(runner.EngineJobOperator, bpy.types.Operator):
    """Animate the character from the microphone (or a file) in real time; press again or Esc to stop"""

    bl_idname = "lipsync3d.live"
    bl_label = "Live"
    bl_options = {'REGISTER'}

    as_fast_as_possible: BoolProperty(default=False, options={'HIDDEN', 'SKIP_SAVE'})   # tests: no pacing

    streamed: list = []           # (frame index, {key: value}) of the last run, for the take and the tests

    def invoke(self, context, event):
        chain = runner.active_chain()
        if chain is not None and getattr(chain.current, "label", "").startswith("Live"):
            runner.request_cancel()           # the button again: stop
            return {'FINISHED'}
        result = super().invoke(context, event)
        if self._timer is not None:           # faster than the jobs' 0.1 s: frames at viewport rate
            wm = context.window_manager
            wm.event_timer_remove(self._timer)
            self._timer = wm.event_timer_add(LIVE_TIMER_S, window=context.window)
        return result

    def build_jobs(self, context):
        s, live = operators.settings(context), _settings(context)
        options = replace(s.drive_options(), blinks=False, smoothing_frames=0, head_motion=False)
        self._applier = LiveApplier(s.character, options)
        model = operators.active_model(context)
        spec = runner.engine_spec(context)
        args = [model, "--fps", f"{operators.scene_fps(context.scene):.6f}",
                "--device", "cpu" if spec.device == "auto" else spec.device]
        if live.source == 'FILE':
            path = Path(bpy.path.abspath(live.audio_file)) if live.audio_file.strip() else None
            if path is None or not path.is_file():
                raise runner.UserError(f"{path or '(no audio file chosen)'}: audio file not found")
            args += ["--input", path]
        else:
            args += ["--input", "mic"]
        args += ["--as-fast-as-possible"] if self.as_fast_as_possible else []
        args += ["--lookahead", f"{live.lookahead:g}"] if live.lookahead > 0 else []
        self._record = None
        if live.record:
            self._record = runner.workspace(context) / "live" / time.strftime("take-%Y%m%d-%H%M%S")
            self._record.parent.mkdir(parents=True, exist_ok=True)
            args += ["--record", self._record, "--no-preview", "--overwrite"]
        self._start = context.scene.frame_current
        LIPSYNC3D_OT_live.streamed = []
        live.frames = live.dropped = 0
        return [spec.job("Live", "live", *args, log_path=runner.log_path(context, "live"))]

    def _tick_messages(self, context) -> None:
        newest = None
        for m in self._chain.poll():
            if m.kind == "FRAME":
                newest = m.payload
                LIPSYNC3D_OT_live.streamed.append((int(m.payload["frame"]), self._applier.values(
                    m.payload["blendshapes"])))
            elif m.kind == "WARN":
                self.report({'WARNING'}, str(m.payload.get("message", "")))
            elif m.kind == "STATUS":
                self._set_text(context, f"Live: {m.payload.get('message', '')}")
        if newest is not None:                 # only the newest frame is shown: the UI never queues
            self._applier.apply(newest["blendshapes"])
            _settings(context).frames = int(newest["frame"]) + 1
            self._applier.key.update_tag()

    def on_success(self, context, outcome):
        stats = next((r.get("stats") for r in outcome.results if "stats" in r), None)
        if stats:
            _settings(context).dropped = sum(stats.get("dropped", {}).values())
        if self._record is None:
            self.report({'INFO'}, f"live: {len(self.streamed)} frames")
            return {'FINISHED'}
        s = operators.settings(context)
        result = results.read_prediction(self._record)
        options = replace(s.drive_options(), blinks=False, smoothing_frames=0, head_motion=False)
        report = character.drive_character(s.character, [(result, self._start)], options,
                                           take=f"Live {self._record.name}")
        importer.add_sound_strip(context.scene, str(self._record / "audio.wav"), self._start,
                                 f"Live {self._record.name}")
        item = s.results.add()
        item.name, item.path, item.frame_start = self._record.name, str(self._record), self._start
        s.result_index = len(s.results) - 1
        context.scene.frame_end = max(context.scene.frame_end, self._start + result.frames - 1)
        self.report({'INFO'}, f"recorded {result.frames} frames from frame {self._start}: {report.text()}")
        return {'FINISHED'}


class LIPSYNC3D_OT_say(runner.EngineJobOperator, bpy.types.Operator):
    """Speak the text with espeak-ng, add it as a sound strip at the current frame and predict it"""

    bl_idname = "lipsync3d.say"
    bl_label = "Dialogue from Text"
    bl_options = {'REGISTER', 'UNDO'}

    def build_jobs(self, context):
        live = _settings(context)
        if not live.text.strip():
            raise runner.UserError("type the dialogue's text first")
        model = operators.active_model(context)
        spec = runner.engine_spec(context)
        stem = operators.safe_name(live.text[:24], "line")
        self._out = runner.workspace(context) / "say" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        self._out.parent.mkdir(parents=True, exist_ok=True)
        self._start = context.scene.frame_current
        args = [model, live.text, "-o", self._out, "--voice", live.voice, "--rate", str(live.rate),
                "--fps", f"{operators.scene_fps(context.scene):.6f}", "--device", spec.device, "--overwrite"]
        args += [] if operators.settings(context).engine_preview else ["--no-preview"]
        return [spec.job("Say", "say", *args, log_path=runner.log_path(context, "say"))]

    def on_success(self, context, outcome):
        s = operators.settings(context)
        result = results.read_prediction(self._out)
        strip = importer.add_sound_strip(context.scene, str(self._out / "speech.wav"), self._start,
                                         f"Say {self._out.name}")
        item = s.results.add()
        item.name, item.path, item.frame_start, item.strip = self._out.name, str(self._out), self._start, strip.name
        s.result_index = len(s.results) - 1
        context.scene.frame_end = max(context.scene.frame_end, self._start + result.frames - 1)
        if s.import_head:
            importer.import_head(context, result, self._start, s.animation)
        if s.drive_after and s.character is not None:
            report = character.drive_character(s.character, [(result, self._start)], s.drive_options())
            self.report({'INFO'}, report.text())
        else:
            self.report({'INFO'}, f"spoke and predicted {result.frames} frames at frame {self._start}")
        return {'FINISHED'}


CLASSES = (LIPSYNC3D_PG_live, LIPSYNC3D_OT_live, LIPSYNC3D_OT_say)


def register_extra() -> None:
    bpy.types.Scene.lipsync3d_live = PointerProperty(type=LIPSYNC3D_PG_live)


def unregister_extra() -> None:
    if hasattr(bpy.types.Scene, "lipsync3d_live"):
        del bpy.types.Scene.lipsync3d_live


def draw_character(layout, context) -> None:
    """The Live rows of the Character panel."""
    live = _settings(context)
    box = layout.box()
    row = box.row()
    row.prop(live, "source", expand=True)
    if live.source == 'FILE':
        box.prop(live, "audio_file")
    row = box.row()
    row.prop(live, "record")
    row.prop(live, "lookahead")
    chain = runner.active_chain()
    running = chain is not None and getattr(chain.current, "label", "") == "Live"
    box.operator(LIPSYNC3D_OT_live.bl_idname, text="Stop Live" if running else "Live",
                 icon='PAUSE' if running else 'REC', depress=running)
    if running or live.frames:
        box.label(text=f"{live.frames} frames" + (f", {live.dropped} dropped" if live.dropped else ""))


def draw_dialogue(layout, context) -> None:
    """The Dialogue from text rows of the Dialogue panel."""
    live = _settings(context)
    box = layout.box()
    box.prop(live, "text")
    row = box.row()
    row.prop(live, "voice")
    row.prop(live, "rate")
    box.operator(LIPSYNC3D_OT_say.bl_idname, icon='OUTLINER_DATA_SPEAKER')
