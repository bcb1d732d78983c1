"""Cartoon line-art and dubbing in real Blender (bpy 5.0.1, headless, the add-on installed from
its zip): Grease Pencil strokes that follow the head's contours frame by frame, the toon
material, the Cartoon operator running the real engine, and Dub placing its movie in the VSE."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf

from blender_helpers import engine_to_blender, vse_strips
from handmade import make_result

bpy = pytest.importorskip("bpy")   # bpy is pinned in requirements.lock: this never skips in `make test`
pytestmark = pytest.mark.slow


def _prediction_with_contours(folder, frames=6):
    """A hand-made prediction folder plus vertices.npz, and the real engine's cartoon pass on it."""
    from lipsync_engine.apps.cartoon import CartoonOptions, cartoon_prediction

    data = make_result(folder, frames=frames)
    np.savez(folder / "vertices.npz", vertices=data["vertices"])
    doc = json.loads((folder / "result.json").read_text())
    doc["files"]["vertices"] = "vertices.npz"
    (folder / "result.json").write_text(json.dumps(doc))
    cartoon_prediction(folder, CartoonOptions(size=128, preview=False))
    return data


def _module(blender, name):
    return sys.modules[f"{blender.__name__}.{name}"]


def _head(blender, folder, start):
    from blender_addon.core import results

    obj = _module(blender, "importer").import_head(bpy.context, results.read_prediction(folder), start, 'SHAPE_KEYS')
    bpy.context.view_layer.objects.active = obj
    return obj


def _strokes(gp_obj, frame) -> dict:
    """The strokes of one frame, read the same way on Grease Pencil v3 (4.3+) and legacy (4.2)."""
    f = next(f for f in gp_obj.data.layers["Contours"].frames if f.frame_number == frame)
    if hasattr(f, "drawing"):
        d = f.drawing
        pos = np.zeros(len(d.attributes["position"].data) * 3, np.float32)
        d.attributes["position"].data.foreach_get("vector", pos)
        return {"sizes": [len(s.points) for s in d.strokes], "cyclic": [s.cyclic for s in d.strokes],
                "radius": d.strokes[0].points[0].radius if len(d.strokes) else None, "pos": pos.reshape(-1, 3)}
    pos = [p.co[:] for s in f.strokes for p in s.points]
    return {"sizes": [len(s.points) for s in f.strokes], "cyclic": [s.use_cyclic for s in f.strokes],
            "radius": f.strokes[0].line_width / 2000 if len(f.strokes) else None,
            "pos": np.array(pos, np.float32).reshape(-1, 3)}


def test_line_art_strokes_follow_the_contours_frame_by_frame(scene, blender, tmp_path):
    data = _prediction_with_contours(tmp_path / "pred")
    cartoon = _module(blender, "cartoon")
    head = _head(blender, tmp_path / "pred", 21)
    gp_obj = cartoon.build_line_art(bpy.context, head, width_mm=2.0)
    assert gp_obj.type in ('GREASEPENCIL', 'GPENCIL') and gp_obj.parent == head     # v3 / 4.2's legacy
    lines = json.loads((tmp_path / "pred" / "contours.json").read_text())["contours"]
    ids = [i for c in lines for i in c["vertex_ids"]]
    layer = gp_obj.data.layers["Contours"]
    assert [f.frame_number for f in layer.frames] == list(range(21, 28))        # 6 drawings + the empty end
    cyl = data["cylinder"]
    for i in (0, 3, 5):
        strokes = _strokes(gp_obj, 21 + i)
        pos = strokes["pos"]
        assert strokes["sizes"] == [len(c["vertex_ids"]) for c in lines]
        assert strokes["cyclic"] == [c["closed"] for c in lines]
        v = data["vertices"][i][ids].astype(np.float64)
        out = np.stack([v[:, 0] - cyl.cx, np.zeros(len(v)), v[:, 2] - cyl.cz], 1)
        expected = v + cartoon.SKIN_OFFSET * out / np.linalg.norm(out, axis=1, keepdims=True)
        np.testing.assert_allclose(pos, engine_to_blender(expected), atol=1e-4)
        # on the skin: each point is the head's vertex of that frame, within the offset
        scene.frame_set(21 + i)
        assert np.abs(pos - engine_to_blender(v)).max() <= cartoon.SKIN_OFFSET + 1e-5
    radius = strokes["radius"] * 0.01                                     # the head's 0.01 scale
    assert radius == pytest.approx(0.001, rel=1e-2)                       # 2 mm wide (legacy: integer widths)
    assert _strokes(gp_obj, 27)["sizes"] == []
    assert gp_obj.data.materials[0].is_grease_pencil


def test_toon_material_shades_the_atlas_in_two_tones(scene, blender, tmp_path):
    _prediction_with_contours(tmp_path / "pred")
    head = _head(blender, tmp_path / "pred", 1)
    before = head.active_material
    mat = _module(blender, "cartoon").toon_material(head)
    assert head.active_material == mat and mat != before and mat.name.endswith("toon")
    nodes = {n.bl_idname: n for n in mat.node_tree.nodes}
    assert nodes["ShaderNodeValToRGB"].color_ramp.interpolation == 'CONSTANT'
    assert nodes["ShaderNodeTexImage"].image == next(n for n in before.node_tree.nodes
                                                     if n.bl_idname == "ShaderNodeTexImage").image
    out = nodes["ShaderNodeOutputMaterial"].inputs["Surface"].links[0].from_node
    assert out.bl_idname == "ShaderNodeEmission"
    assert nodes["ShaderNodeShaderToRGB"].outputs["Color"].links[0].to_node.bl_idname == "ShaderNodeValToRGB"


def test_cartoon_operator_runs_the_engine_and_builds_the_line_art(scene, blender, tmp_path):
    """The bundled engine (the zip's, run with this Python) writes contours.json, then the strokes appear."""
    data = make_result(tmp_path / "pred", frames=4)
    np.savez(tmp_path / "pred" / "vertices.npz", vertices=data["vertices"])
    doc = json.loads((tmp_path / "pred" / "result.json").read_text())
    doc["files"]["vertices"] = "vertices.npz"
    (tmp_path / "pred" / "result.json").write_text(json.dumps(doc))
    scene.lipsync3d.workspace = str(tmp_path / "ws")
    head = _head(blender, tmp_path / "pred", 1)
    assert bpy.ops.lipsync3d.cartoon() == {'FINISHED'}
    assert (tmp_path / "pred" / "contours.json").is_file()
    assert len(list((tmp_path / "pred" / "cartoon").glob("cartoon_*.png"))) == 4
    gp_obj = next(o for o in scene.objects if o.type in ('GREASEPENCIL', 'GPENCIL'))
    assert gp_obj.parent == head and "toon" in head.active_material.name
    bpy.context.view_layer.objects.active = None
    with pytest.raises(RuntimeError, match="select a head imported by LipSync3D"):
        bpy.ops.lipsync3d.cartoon()


def _movie(path, frames=30):
    from lipsync_engine.io.videowriter import write_mp4

    write_mp4(path, (np.full((64, 64, 3), 8 * k, np.uint8) for k in range(frames)), 25.0,
              (np.zeros(int(48000 * frames / 25), np.float32), 48000))


def test_dub_operator_command_line_and_vse_placement(fake_engine, scene, blender, tmp_path):
    log = fake_engine("ok")
    s = scene.lipsync3d
    s.workspace = str(tmp_path / "ws")
    model = tmp_path / "ws" / "models" / "anna"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"format": "lipsync3d-model", "format_version": 1, "fps": 25.0}))
    wav = tmp_path / "line.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    s.audio_source, s.audio_file, s.file_frame_start = 'FILE', str(wav), 10
    scene.lipsync3d_dub.video = str(tmp_path / "target.mp4")
    with pytest.raises(RuntimeError, match="target video not found"):
        bpy.ops.lipsync3d.dub()
    _movie(tmp_path / "target.mp4")
    scene.lipsync3d_dub.loop = 'hold'
    with pytest.raises(RuntimeError, match="wrote no video"):       # the fake engine writes nothing
        bpy.ops.lipsync3d.dub()
    argv = json.loads(log.read_text().splitlines()[-1])
    assert argv[:7] == ["--json", "dub", str(model), "--audio", str(wav), "--video", str(tmp_path / "target.mp4")]
    out = argv[argv.index("-o") + 1]
    assert out.startswith(str(tmp_path / "ws" / "dubs")) and out.endswith(".mp4")
    assert argv[argv.index("--loop") + 1] == "hold" and "--overwrite" in argv
    _movie(out, frames=25)                                          # as if the engine had written it
    assert bpy.ops.lipsync3d.dub() == {'FINISHED'}                  # already there: placed without a run
    strips = vse_strips(scene.sequence_editor, every=True)
    movie = next(x for x in strips if x.type == 'MOVIE')
    sound = next(x for x in strips if x.type == 'SOUND')
    assert movie.frame_final_start == 10 and movie.frame_final_duration == 25 and sound.frame_final_start == 10
    assert movie.channel != sound.channel and scene.frame_end >= 34


def test_dub_operator_with_the_real_engine(scene, blender, trained_demo, demo_video, tmp_path):
    """One second of new audio on the demo video: the engine dubs it and the VSE shows it."""
    model_dir = trained_demo[0]
    from lipsync_engine.io import media

    track = media.load_audio(demo_video[0], 16000)
    wav = tmp_path / "line.wav"
    sf.write(wav, track.samples[16000:32000], 16000)
    s = scene.lipsync3d
    s.workspace = str(tmp_path / "ws")
    item = s.models.add()
    item.name, item.path = "demo", str(model_dir)
    s.model_index = 0
    s.audio_source, s.audio_file, s.file_frame_start = 'FILE', str(wav), 1
    scene.lipsync3d_dub.video = str(demo_video[0])
    assert bpy.ops.lipsync3d.dub() == {'FINISHED'}
    movie = next(x for x in scene.sequence_editor.strips_all if x.type == 'MOVIE')
    assert movie.frame_final_duration == 25 and movie.frame_final_start == 1
    assert next(x for x in scene.sequence_editor.strips_all if x.type == 'SOUND').frame_final_start == 1


class _Layout:
    """Records what a draw() function puts in the panel (the real UILayout needs a window)."""

    def __init__(self, calls):
        self.calls, self.enabled = calls, True

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.calls.append((name, args[1] if name == "prop" else args[0] if args else kwargs.get("text")))
            return self
        return record


def test_panel_boxes_draw_their_settings_and_operators(scene, blender, tmp_path):
    calls = []
    _module(blender, "cartoon").draw(_Layout(calls), bpy.context)
    _module(blender, "dub").draw(_Layout(calls), bpy.context)
    drawn = {c[1] for c in calls}
    assert {"line_width_mm", "line_color", "filter_strength", "toon", "lipsync3d.cartoon"} <= drawn
    assert {"video", "loop", "lipsync3d.dub"} <= drawn
    assert ("label", "Select an imported head") in calls          # no head selected in an empty scene
    panel = bpy.types.LIPSYNC3D_PT_extras
    assert {m.__name__.rsplit(".", 1)[1] for m in panel.modules} == {"cartoon", "dub"}
