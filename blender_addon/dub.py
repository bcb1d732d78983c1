"""Dubbing from Blender (paper Section 3.3, Figure 1b): `lipsync dub` on a target video of the
speaker with the dialogue chosen in the Dialogue panel, and the result placed in the Video
Sequencer.

Owns: the Dub operator (model from the Speaker panel's list, audio from the Dialogue panel's
source: the active sound strip, the first strip of a channel or a file, target video and
looping from this module's settings, output in WORKSPACE/dubs), placing the dubbed movie in
the VSE (a movie strip at the dialogue's start frame on a free channel, plus its sound when
the dialogue came from a file rather than a strip already there), this module's settings
(scene.lipsync3d_dub) and its box in the "Cartoon & Dub" panel.
Must not: import engine modules or run the engine other than through runner.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import bpy
from bpy.props import EnumProperty, PointerProperty, StringProperty

from . import importer, operators, runner


class LIPSYNC3D_PG_dub(bpy.types.PropertyGroup):
    video: StringProperty(name="Target video", subtype='FILE_PATH',
                          description="A video of the same speaker (any lighting) whose mouth is replaced")
    loop: EnumProperty(
        name="Longer audio", default='pingpong',
        items=[('pingpong', "Ping-pong", "Play the video forward and backward (no jump cut)"),
               ('hold', "Hold", "Hold the video's last frame")],
        description="What the video does when the audio is longer than it")


def _settings(context):
    return context.scene.lipsync3d_dub


def dub_output(context, model: Path, src: operators.AudioSource, video: Path, loop: str) -> Path:
    """WORKSPACE/dubs/<video>-<audio>-<digest>.mp4, one per (model, audio range, video, loop)."""
    key = "|".join(str(x) for x in (Path(model).resolve(), Path(src.path).resolve(), Path(src.path).stat().st_mtime_ns,
                                    f"{src.start_s:.6f}", src.end_s, Path(video).resolve(),
                                    Path(video).stat().st_mtime_ns, loop))
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    name = f"{operators.safe_name(Path(video).stem)}-{operators.safe_name(Path(src.name).stem)}-{digest}.mp4"
    return runner.workspace(context) / "dubs" / name


def place_dub(scene, path: Path, frame_start: int, name: str, with_sound: bool):
    """The dubbed movie as a VSE movie strip at frame_start (and its sound strip); returns the strips."""
    sed = scene.sequence_editor or scene.sequence_editor_create()
    strips = sed.strips if hasattr(sed, "strips") else sed.sequences          # 4.4+ / older
    every = sed.strips_all if hasattr(sed, "strips_all") else sed.sequences_all
    used = {s.channel for s in every}
    channel = next(c for c in range(1, 128) if c not in used and c + 1 not in used)
    movie = strips.new_movie(name[:63], str(path), channel, int(frame_start))
    out = [movie]
    if with_sound:
        out.append(importer.add_sound_strip(scene, str(path), int(frame_start), name))
    scene.frame_end = max(scene.frame_end, movie.frame_final_end - 1)
    return out


class LIPSYNC3D_OT_dub(runner.EngineJobOperator, bpy.types.Operator):
    """Dub the target video with the chosen dialogue (the model's mouth, the video's everything else)
    and place the result in the Video Sequencer"""

    bl_idname = "lipsync3d.dub"
    bl_label = "Dub Video"
    bl_options = {'REGISTER', 'UNDO'}

    def build_jobs(self, context):
        s = _settings(context)
        video = Path(bpy.path.abspath(s.video)) if s.video.strip() else None
        if video is None or not video.is_file():
            raise runner.UserError(f"{video or '(no target video chosen)'}: target video not found")
        model, src = operators.active_model(context), operators.audio_sources(context)[0]
        out = dub_output(context, model, src, video, s.loop)
        self._src, self._out = src, out
        if out.is_file():
            return []                   # the same dub was made before
        out.parent.mkdir(parents=True, exist_ok=True)
        spec = runner.engine_spec(context)
        args = [model, "--audio", src.path, "--video", video, "-o", out, "--audio-start", f"{src.start_s:.6f}",
                "--loop", s.loop, "--device", spec.device, "--overwrite"]
        args += ["--audio-end", f"{src.end_s:.6f}"] if src.end_s is not None else []
        return [spec.job(f"Dub {video.name}", "dub", *args, log_path=runner.log_path(context, "dub"))]

    def on_success(self, context, outcome):
        if not self._out.is_file():
            raise runner.UserError(f"{self._out}: the engine finished but wrote no video")
        strips = place_dub(context.scene, self._out, self._src.frame_start, f"Dub {self._src.name}",
                           with_sound=self._src.from_file)
        fps = operators.scene_fps(context.scene)
        movie_fps = strips[0].fps if hasattr(strips[0], "fps") else fps
        if abs(movie_fps - fps) > 1e-3:
            self.report({'WARNING'}, f"the dubbed video runs at {movie_fps:g} fps, the scene at {fps:g} fps")
        self.report({'INFO'}, f"{self._out.name}: placed at frame {self._src.frame_start} "
                              f"({strips[0].frame_final_duration} frames)")
        return {'FINISHED'}


def draw(layout, context) -> None:
    s = _settings(context)
    layout.label(text="Dub a video", icon='FILE_MOVIE')
    col = layout.column()
    col.prop(s, "video")
    col.prop(s, "loop")
    col.label(text="Audio: the Dialogue panel's source; model: the Speaker panel's", icon='INFO')
    col.operator(LIPSYNC3D_OT_dub.bl_idname, icon='SEQUENCE')


CLASSES = (LIPSYNC3D_PG_dub, LIPSYNC3D_OT_dub)


def register_extra() -> None:
    bpy.types.Scene.lipsync3d_dub = PointerProperty(type=LIPSYNC3D_PG_dub)


def unregister_extra() -> None:
    del bpy.types.Scene.lipsync3d_dub
