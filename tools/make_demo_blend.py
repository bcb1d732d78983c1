#!/usr/bin/env python3
"""The last step of `make demo`: a .blend with the talking head, a driven character and the audio,
plus a rendered preview image and MP4.

Runs in the engine's venv, where Blender is importable as a module (bpy 5.0.1). It builds the
add-on zip, installs it into a throw-away Blender user folder (the user's Blender is never
touched) and uses the add-on's own operators, as an animator would from the sidebar:
Predict (from a sound strip holding the demo video's audio, with the model `lipsync demo`
trained), which imports the textured head and drives a clay face whose 52 ARKit shape keys
are named in another case style (JAW_OPEN, MOUTH_SMILE_LEFT, ...). Then it adds a camera and
lights, renders one frame (PNG) and the whole take (MP4 with the audio) with Cycles, and
saves the .blend with relative paths.

    python tools/make_demo_blend.py [--demo out/demo] [--image docs/images/blender_demo.png] [--samples 24]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "lipsync_demo"
HEAD_OFFSET_X, CHARACTER_OFFSET_X = -0.11, 0.11     # metres: the head left, the character right


def _find_model(demo: Path) -> Path:
    import json

    for cfg in sorted(demo.rglob("config.json")):
        try:
            if json.loads(cfg.read_text()).get("format") == "lipsync3d-model":
                return cfg.parent
        except ValueError:
            continue
    raise SystemExit(f"error: no trained model under {demo}; run `lipsync demo -o {demo}` first")


def _install_addon(bpy, work: Path) -> str:
    sys.path.insert(0, str(ROOT))
    import build_addon

    zip_path = build_addon.build(work / "dist")
    repo = bpy.context.preferences.extensions.repos.new(name=REPO, module=REPO,
                                                        custom_directory=str(work / "extensions"), source='USER')
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo=repo.module, enable_on_install=True)
    module = f"bl_ext.{REPO}.lipsync3d"
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.engine_python, prefs.device = sys.executable, 'AUTO'
    return module


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def make_character(bpy, name: str = "Clay face"):
    """The ARKit-52 rig of blendshape_rigs/arkit52 as a mesh with 52 shape keys in UPPER_SNAKE case."""
    import numpy as np

    from lipsync_engine.face.topology import load_topology

    rig = np.load(ROOT / "blendshape_rigs" / "arkit52" / "basis.npz")
    to_blender = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)      # engine y-up -> Blender z-up
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata((rig["neutral"] @ to_blender.T).tolist(), [], load_topology().triangles.tolist())
    mesh.shade_smooth()
    obj = bpy.data.objects.new(name, mesh)
    obj.scale = (0.01,) * 3
    obj.location.x = CHARACTER_OFFSET_X
    bpy.context.scene.collection.objects.link(obj)
    obj.shape_key_add(name="Basis")
    for n, delta in zip(rig["names"], rig["deltas"]):
        kb = obj.shape_key_add(name=_upper_snake(str(n)), from_mix=False)
        kb.data.foreach_set("co", ((rig["neutral"] + delta) @ to_blender.T).ravel())
    mat = bpy.data.materials.new("Clay")
    mat.diffuse_color = (0.75, 0.55, 0.45, 1.0)
    bsdf = next(n for n in mat.node_tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    bsdf.inputs["Base Color"].default_value = (0.75, 0.55, 0.45, 1.0)
    bsdf.inputs["Roughness"].default_value = 0.5
    mesh.materials.append(mat)
    return obj


def stage(bpy, scene, head, character) -> None:
    """A camera framing both faces, a key, a fill and a rim light, a dim world."""
    from mathutils import Vector

    head.location.x = HEAD_OFFSET_X
    bpy.context.view_layer.update()
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    cam.data.lens = 85
    scene.collection.objects.link(cam)
    scene.camera = cam
    z = sum((head.matrix_world @ v.co).z for v in head.data.vertices) / len(head.data.vertices)
    cam.location, cam.rotation_euler = (0.0, -1.25, z), (math.pi / 2, 0.0, 0.0)
    for name, energy, loc, size in (("Key", 12.0, (-0.6, -0.8, z + 0.5), 0.5), ("Fill", 4.0, (0.7, -0.7, z), 0.8),
                                    ("Rim", 6.0, (0.0, 0.6, z + 0.4), 0.4)):
        light = bpy.data.objects.new(name, bpy.data.lights.new(name, 'AREA'))
        light.data.energy, light.data.size = energy, size
        light.location = loc
        scene.collection.objects.link(light)
        away = Vector(loc) - Vector((0.0, 0.0, z))          # the light shines along its -Z: at the faces
        light.rotation_euler = away.to_track_quat('Z', 'Y').to_euler()
    scene.world = bpy.data.worlds.new("Studio")
    scene.world.color = (0.05, 0.05, 0.06)
    if scene.world.node_tree is not None:
        bg = next((n for n in scene.world.node_tree.nodes if n.bl_idname == "ShaderNodeBackground"), None)
        if bg is not None:
            bg.inputs["Color"].default_value = (0.05, 0.05, 0.06, 1.0)


def render_settings(scene, size: tuple, samples: int) -> None:
    scene.render.engine = 'CYCLES'
    scene.cycles.samples, scene.cycles.device = samples, 'CPU'
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = 'Standard'


def render_still(bpy, scene, frame: int, path: Path) -> None:
    scene.frame_set(frame)
    scene.render.image_settings.file_format = 'PNG'
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)


def render_movie(bpy, scene, path: Path) -> None:
    s = scene.render
    if hasattr(s.image_settings, "media_type"):
        s.image_settings.media_type = 'VIDEO'           # Blender 5.0
    s.image_settings.file_format = 'FFMPEG'
    s.ffmpeg.format, s.ffmpeg.codec, s.ffmpeg.constant_rate_factor = 'MPEG4', 'H264', 'MEDIUM'
    s.ffmpeg.audio_codec, s.ffmpeg.audio_bitrate = 'AAC', 128
    s.filepath = str(path.with_suffix(""))
    s.use_file_extension = True
    bpy.ops.render.render(animation=True)
    produced = sorted(path.parent.glob(path.with_suffix("").name + "*.mp4"), key=os.path.getmtime)
    if not produced:
        raise SystemExit(f"error: Blender wrote no MP4 next to {path}")
    os.replace(produced[-1], path)


def open_mouth_frame(scene) -> int:
    """The scene frame where the predicted lips are furthest apart (inner-lip landmarks 13 and 14)."""
    from lipsync_engine.io.pointcache import read_pc2

    item = scene.lipsync3d.results[0]
    _, verts = read_pc2(Path(item.path) / "head.pc2")
    return item.frame_start + int((verts[:, 13, 1] - verts[:, 14, 1]).argmax())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", type=Path, default=ROOT / "out" / "demo", help="output folder of `lipsync demo`")
    p.add_argument("--image", type=Path, help="also copy the rendered still here (docs/images/blender_demo.png "
                                              "is the one the README shows)")
    p.add_argument("--samples", type=int, default=24, help="Cycles samples of the still (the MP4 uses a third)")
    args = p.parse_args(argv)
    demo = args.demo.resolve()
    video, model = demo / "demo_speaker.mp4", _find_model(demo)
    if not video.is_file():
        raise SystemExit(f"error: {video} not found; run `lipsync demo -o {demo}` first")
    out = demo / "blender"
    out.mkdir(parents=True, exist_ok=True)
    user = tempfile.mkdtemp(prefix="lipsync3d-blender-user-")
    os.environ["BLENDER_USER_RESOURCES"] = user        # before bpy is imported: a throw-away Blender user folder
    t0 = time.perf_counter()
    try:
        import bpy

        bpy.ops.wm.read_homefile(use_empty=True, use_factory_startup=True)
        _install_addon(bpy, Path(user))
        build(bpy, video, model, out, args)
    finally:
        shutil.rmtree(user, ignore_errors=True)
    print("Blender demo finished. Outputs:\n"
          f"  scene (open in Blender 4.2+) : {out / 'lipsync3d_demo.blend'}\n"
          f"  rendered still               : {out / 'preview.png'}\n"
          f"  rendered take with audio     : {out / 'preview.mp4'}\n"
          f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


def build(bpy, video: Path, model: Path, out: Path, args) -> None:
    from lipsync_engine.io.media import probe

    scene = bpy.context.scene
    info = probe(video)
    fps = float(info.fps)
    scene.render.fps, scene.render.fps_base = round(fps * 1000), 1000.0
    sed = scene.sequence_editor_create()
    strip = sed.strips.new_sound("Demo dialogue", str(video), 1, 1)
    sed.active_strip = strip
    s = scene.lipsync3d
    s.workspace = str(out / "workspace")
    item = s.models.add()
    item.name, item.path = model.name, str(model)
    s.model_index = 0
    character = make_character(bpy)
    s.character, s.preset, s.blinks, s.head_motion, s.head_amplitude = character, 'AUTO', True, True, 1.5
    s.audio_source, s.animation, s.import_head, s.drive_after = 'STRIP', 'SHAPE_KEYS', True, True
    bpy.ops.lipsync3d.predict()
    print(bpy.context.window_manager.lipsync3d_job.last_report)
    head = next(o for o in scene.objects if o.name.startswith("LipSync3D head"))
    stage(bpy, scene, head, character)
    scene.frame_start, scene.frame_end = strip.frame_final_start, strip.frame_final_end - 1
    frame = open_mouth_frame(scene)
    render_settings(scene, (960, 540), args.samples)
    render_still(bpy, scene, frame, out / "preview.png")
    if args.image:
        args.image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "preview.png", args.image)
    render_settings(scene, (640, 360), max(4, args.samples // 3))
    render_movie(bpy, scene, out / "preview.mp4")
    blend = out / "lipsync3d_demo.blend"
    bpy.context.preferences.filepaths.save_version = 0      # no .blend1 backups (throw-away preferences)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    bpy.ops.file.make_paths_relative()          # the folder can move: atlases, cache and audio stay beside it
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))


if __name__ == "__main__":
    sys.exit(main())
