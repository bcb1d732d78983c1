"""Takes in production (issue 14), in real Blender (bpy 5.0.1, headless): every line is its own
take on the NLA, eased to rest; blinks and head motion add on top of the user's animation;
results made at another frame rate are resampled to the scene's."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from blender_addon.core import results

from blender_helpers import ensure_fcurve, make_character
from handmade import make_result

bpy = pytest.importorskip("bpy")


def _mods(blender):
    return (sys.modules[blender.__name__ + ".character"], sys.modules[blender.__name__ + ".core.mapping"],
            sys.modules[blender.__name__ + ".anim"])


def _value_at(scene, obj, name: str, frame: float) -> float:
    scene.frame_set(int(frame), subframe=frame - int(frame))
    return obj.data.shape_keys.key_blocks[name].value


def _coeff(folder, name: str) -> np.ndarray:
    d = json.loads((folder / "blendshapes.json").read_text())
    return np.array(d["frames"])[:, d["names"].index(name)]


def _take(id_data, line: str, muted: bool = False):
    return [s for t in id_data.animation_data.nla_tracks for s in t.strips
            if s.action is not None and s.action.get("lipsync3d_line") == line and s.mute == muted]


def test_line_a_then_line_b_both_play_and_a_hand_edit_survives_a_re_drive_of_b(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=20, seed=1)
    make_result(tmp_path / "b", frames=20, seed=2)
    a, b = results.read_prediction(tmp_path / "a"), results.read_prediction(tmp_path / "b")
    obj = make_character(["jawOpen", "mouthFunnel"])
    key = obj.data.shape_keys
    options = mapping.DriveOptions(blinks=False)
    character.drive_character(obj, [(a, 10, "Line A")], options)          # Predict, active strip A
    character.drive_character(obj, [(b, 60, "Line B")], options)          # then active strip B
    jaw_a, jaw_b = _coeff(tmp_path / "a", "jawOpen"), _coeff(tmp_path / "b", "jawOpen")
    for i in (0, 7, 19):
        assert _value_at(scene, obj, "jawOpen", 10 + i) == pytest.approx(jaw_a[i], abs=1e-5)
        assert _value_at(scene, obj, "jawOpen", 60 + i) == pytest.approx(jaw_b[i], abs=1e-5)
    # an animator fixes one key of line A by hand...
    take_a = _take(key, "Line A")[0].action
    fc = next(c for c in take_a.layers[0].strips[0].channelbags[0].fcurves if "jawOpen" in c.data_path)
    kp = next(k for k in fc.keyframe_points if k.co[0] == 15)
    kp.co[1] = kp.handle_left[1] = kp.handle_right[1] = 0.9
    fc.update()
    assert _value_at(scene, obj, "jawOpen", 15) == pytest.approx(0.9)
    # ...then line B is driven again: a new take, the old one muted, A's edit holds
    report = character.drive_character(obj, [(b, 62, "Line B")], options)
    assert _value_at(scene, obj, "jawOpen", 15) == pytest.approx(0.9)
    assert report.nla.muted == ["LipSync3D Line B"] and "muted older take 'LipSync3D Line B'" in report.text()
    assert len(_take(key, "Line B", muted=True)) == 1 and len(_take(key, "Line B")) == 1
    for i in (0, 19):
        assert _value_at(scene, obj, "jawOpen", 62 + i) == pytest.approx(jaw_b[i], abs=1e-5)
    assert bpy.data.actions.get("LipSync3D Line B") is not None          # the older take is still there
    # Replace removes the older takes of the line, and says so
    report = character.drive_character(obj, [(b, 64, "Line B")], options, replace=True)
    assert sorted(report.nla.replaced) == ["LipSync3D Line B", "LipSync3D Line B.001"]
    assert [s.action.name for s in _take(key, "Line B")] == ["LipSync3D Line B"]      # the name is free again
    assert not _take(key, "Line B", muted=True)
    assert _value_at(scene, obj, "jawOpen", 15) == pytest.approx(0.9)
    assert _value_at(scene, obj, "jawOpen", 64 + 5) == pytest.approx(jaw_b[5], abs=1e-5)


def test_the_users_action_is_moved_into_the_nla_by_name_and_never_changed(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=10)
    obj = make_character(["jawOpen", "Hat"])
    key = obj.data.shape_keys
    users = bpy.data.actions.new("Anna face")
    key.animation_data_create().action = users
    for f, v in ((1, 0.2), (200, 0.6)):
        ensure_fcurve(users, key, 'key_blocks["Hat"].value').keyframe_points.insert(f, v)
        ensure_fcurve(users, key, 'key_blocks["jawOpen"].value').keyframe_points.insert(f, v)
    before = [(c.data_path, tuple(tuple(k.co) for k in c.keyframe_points))
              for c in users.layers[0].strips[0].channelbags[0].fcurves]
    texts = [character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), frame, line)],
                                       mapping.DriveOptions(blinks=False)).text()
             for line, frame in (("A", 50), ("B", 80), ("A", 50), ("A", 52))]
    assert "your action 'Anna face' moved into the NLA" in texts[0]
    assert "already driven, unchanged: A" in texts[2]         # same inputs: nothing redone, nothing stacked
    assert "muted older take 'LipSync3D A'" in texts[3]
    after = [(c.data_path, tuple(tuple(k.co) for k in c.keyframe_points))
             for c in users.layers[0].strips[0].channelbags[0].fcurves]
    assert after == before and users.users >= 1
    curve = {c.data_path: c for c in users.layers[0].strips[0].channelbags[0].fcurves}
    assert _value_at(scene, obj, "Hat", 100.5) == pytest.approx(curve['key_blocks["Hat"].value'].evaluate(100.5))
    assert _value_at(scene, obj, "jawOpen", 150) == pytest.approx(                     # between takes
        curve['key_blocks["jawOpen"].value'].evaluate(150))


def test_after_a_take_the_character_is_at_rest_within_the_ease(scene, blender, tmp_path):
    """The demo's defect: the last frame (eyes 82% closed, jaw half open) held for the rest of the shot."""
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=150, seed=4)           # 6 s: at least one procedural blink
    path = tmp_path / "a" / "blendshapes.json"
    d = json.loads(path.read_text())
    for row in d["frames"][-3:] + d["frames"][:1]:
        row[d["names"].index("jawOpen")], row[d["names"].index("eyeBlinkLeft")] = 0.5, 0.82
    path.write_text(json.dumps(d))
    obj = make_character(["jawOpen", "eyeBlinkLeft"])
    result = results.read_prediction(tmp_path / "a")
    report = character.drive_character(obj, [(result, 20, "Line")], mapping.DriveOptions(blinks=True), ease=3)
    last = 20 + 149
    assert _value_at(scene, obj, "jawOpen", last) == pytest.approx(0.5, abs=1e-5)
    assert _value_at(scene, obj, "eyeBlinkLeft", last) >= 0.82 - 1e-5
    assert _value_at(scene, obj, "jawOpen", last + 1.5) == pytest.approx(0.25, abs=1e-5)   # halfway down the ease
    for f in (last + 3, last + 4, last + 40, 20 - 3, 5, 1):
        assert _value_at(scene, obj, "jawOpen", f) == pytest.approx(0.0, abs=1e-6), f
        assert _value_at(scene, obj, "eyeBlinkLeft", f) == pytest.approx(0.0, abs=1e-6), f
    strips = [s for t in obj.data.shape_keys.animation_data.nla_tracks for s in t.strips if s.action.get("lipsync3d_line")]
    assert {s.extrapolation for s in strips} == {'NOTHING'} and report.takes == ["LipSync3D Line"]
    assert sorted(s.blend_type for s in strips) == ['ADD', 'REPLACE']      # blinks: their own ADD strip


def _armature(scene, rotation_mode='XYZ'):
    arm = bpy.data.objects.new("Rig", bpy.data.armatures.new("Rig"))
    scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode='EDIT')
    for name, head, tail in (("head", (0, 0, 1.5), (0, 0, 1.7)), ("jaw", (0, -0.02, 1.55), (0, -0.1, 1.5))):
        b = arm.data.edit_bones.new(name)
        b.head, b.tail = head, tail
    bpy.ops.object.mode_set(mode='OBJECT')
    for pb in arm.pose.bones:
        pb.rotation_mode = rotation_mode
    return arm


def _fcurves(action):
    return [c for layer in action.layers for st in layer.strips for cb in st.channelbags for c in cb.fcurves]


def test_head_motion_adds_to_a_keyed_head_bone_and_a_keyed_object_rotation(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=120, seed=5)
    result = results.read_prediction(tmp_path / "a")
    options = mapping.DriveOptions(blinks=False, head_motion=True, head_amplitude_deg=3.0)
    # a head bone keyed at 0.4 rad by the animator
    arm = _armature(scene)
    users = bpy.data.actions.new("Rig anim")
    arm.animation_data_create().action = users
    for f in (1, 300):
        ensure_fcurve(users, arm, 'pose.bones["head"].rotation_euler').keyframe_points.insert(f, 0.4)
    obj = make_character(["jawOpen"])
    report = character.drive_character(obj, [(result, 10, "L")], options, head=arm, bone="head")
    sway = next(c for c in _fcurves(bpy.data.actions[report.head_action]) if c.array_index == 0)
    added = []
    for f in range(10, 130, 9):
        scene.frame_set(f)
        x = arm.pose.bones["head"].rotation_euler[0]
        assert x == pytest.approx(0.4 + sway.evaluate(f), abs=1e-5), f
        added.append(abs(x - 0.4))
    assert 0.002 < max(added) < math.radians(3.0) + 1e-6           # the sway is there, and subtle
    for f in (5, 140, 250):                                           # before / after the take: the key
        scene.frame_set(f)
        assert arm.pose.bones["head"].rotation_euler[0] == pytest.approx(0.4, abs=1e-6)
    assert "your action 'Rig anim' moved into the NLA" in report.text()
    # an object whose rotation is keyed (and one rotated by hand, not keyed): both untouched
    head = make_character(["jawOpen"])
    head.name = "Keyed head"
    act = bpy.data.actions.new("Head turn")
    head.animation_data_create().action = act
    for f, v in ((1, 0.3), (200, 0.5)):
        ensure_fcurve(act, head, "rotation_euler").keyframe_points.insert(f, v)
    head.rotation_euler[2] = 0.25                                     # unkeyed channel, posed by hand
    report = character.drive_character(obj, [(result, 10, "L2")], options, head=head)
    moved, turn = [], _fcurves(act)[0]
    for f in (10, 50, 90, 129, 160):
        scene.frame_set(f)
        assert head.rotation_euler[0] == pytest.approx(turn.evaluate(f), abs=1e-6)
        assert head.rotation_euler[2] == pytest.approx(0.25)
        moved.append(max(abs(x) for x in head.delta_rotation_euler))
    assert max(moved) > 0.002 and moved[-1] == 0.0 and head.animation_data.action == act


def test_a_25_fps_result_in_a_24_fps_scene_plays_at_the_right_time(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps, scene.render.fps_base = 24, 1.0
    make_result(tmp_path / "a", frames=50, fps=25.0, seed=6)
    jaw = _coeff(tmp_path / "a", "jawOpen")
    obj = make_character(["jawOpen"])
    report = character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), 1, "L")],
                                       mapping.DriveOptions(blinks=False))
    assert "predicted at 25 fps and resampled to the scene's 24 fps" in report.text()
    worst = 0.0
    for f in range(1, 48):
        t = (f - 1) / 24.0                                   # scene time since the line's start
        expected = np.interp(t * 25.0, np.arange(50), jaw)   # the result at that time
        worst = max(worst, abs(_value_at(scene, obj, "jawOpen", f) - expected))
    assert worst <= 1e-3, worst


def test_resync_moves_the_takes_with_their_sound_strips(scene, blender, tmp_path):
    from blender_helpers import new_sound_strip

    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=20, seed=1)
    jaw = _coeff(tmp_path / "a", "jawOpen")
    obj = make_character(["jawOpen", "eyeBlinkLeft"])
    sed = scene.sequence_editor_create()
    import wave
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\0\0" * 16000)
    strip = new_sound_strip(sed, "Line A", str(tmp_path / "a.wav"), 1, 10)
    character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), 10, "Line A")],
                              mapping.DriveOptions(head_motion=True), head=obj)
    strip.frame_start = 40                                   # the editor moves the line 30 frames later
    assert bpy.ops.lipsync3d.resync() == {'FINISHED'}
    for i in (0, 9, 19):
        assert _value_at(scene, obj, "jawOpen", 40 + i) == pytest.approx(jaw[i], abs=1e-5)
    assert _value_at(scene, obj, "jawOpen", 12) == pytest.approx(0.0, abs=1e-6)
    head = [s for t in obj.animation_data.nla_tracks for s in t.strips]
    assert [s.frame_start for s in head] == [40 - 3]          # the head motion moved with it


def test_an_armature_characters_jaw_bone_turns_with_jaw_open(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=30, seed=7)
    jaw = _coeff(tmp_path / "a", "jawOpen")
    for mode in ('XYZ', 'QUATERNION'):
        arm = _armature(scene, mode)
        report = character.drive_character(arm, [(results.read_prediction(tmp_path / "a"), 5, "L")],
                                           mapping.DriveOptions(blinks=False))
        assert report.match.assignments == {"jaw: rotation X": "jawOpen"}
        for i in (0, 11, 29):
            scene.frame_set(5 + i)
            pb = arm.pose.bones["jaw"]
            angle = pb.rotation_euler[0] if mode == 'XYZ' else 2 * math.atan2(pb.rotation_quaternion[1],
                                                                              pb.rotation_quaternion[0])
            assert angle == pytest.approx(math.radians(25.0) * jaw[i], abs=1e-5)
        scene.frame_set(5 + 29 + 3)
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("animation", ["SHAPE_KEYS", "MESH_CACHE"])
def test_an_imported_25_fps_head_is_resampled_to_a_24_fps_scene(scene, blender, tmp_path, animation):
    from blender_helpers import engine_to_blender, evaluated_coords

    importer = sys.modules[blender.__name__ + ".importer"]
    scene.render.fps = 24
    data = make_result(tmp_path / "a", frames=10, fps=25.0)
    obj = importer.import_head(bpy.context, results.read_prediction(tmp_path / "a"), 1, animation)
    assert "resampled" in obj["lipsync3d_warning"]
    verts = data["vertices"]
    for f in (1, 4, 8):
        x = (f - 1) / 24 * 25                                    # the result frame at this scene time
        i = int(x)
        want = verts[i] + (x - i) * (verts[min(i + 1, 9)] - verts[i])
        scene.frame_set(f)
        np.testing.assert_allclose(evaluated_coords(obj), engine_to_blender(want), atol=1e-4)


def test_mapping_table_round_trip_preston_blair_correctives_and_drivers(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    table = sys.modules[blender.__name__ + ".mapping_table"]
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=12, seed=8)
    result = results.read_prediction(tmp_path / "a")
    jaw, close = _coeff(tmp_path / "a", "jawOpen"), _coeff(tmp_path / "a", "mouthClose")
    # a corrective is left alone; a driver-controlled key is reported
    obj = make_character(["jawOpen", "mouthClose", "fix_mouthClose", "mouthFunnel", "Hat"])
    key = obj.data.shape_keys
    key.key_blocks["fix_mouthClose"].value = 0.3
    fcd = key.key_blocks["mouthFunnel"].driver_add("value")
    fcd.driver.expression = "0.25"
    report = character.drive_character(obj, [(result, 1, "L")], mapping.DriveOptions(blinks=False))
    assert "fix_mouthClose" not in report.match.assignments and "fix_mouthClose" in report.match.unmapped_keys
    assert "controlled by a driver" in report.text() and "mouthFunnel" in report.text()
    assert _value_at(scene, obj, "fix_mouthClose", 5) == pytest.approx(0.3)         # untouched
    assert not [c for a in bpy.data.actions for c in _fcurves(a) if "fix_mouthClose" in c.data_path]
    assert _value_at(scene, obj, "mouthClose", 5) == pytest.approx(close[4], abs=1e-5)
    assert table.is_corrective("corr_jawOpen") and table.is_corrective("jawOpen_corrective")
    assert not table.is_corrective("fixture") and not table.is_corrective("correctShape")
    # the table: edit a row (gain, offset, none), save it as a preset, load it back, drive from it
    names = [kb.name for kb in key.key_blocks[1:]]
    preset, match, _ = character.shape_key_targets(obj, mapping.DriveOptions())
    rows = table.rows_from_preset(names, preset, match)
    assert table.Row("jawOpen", "jawOpen", 1.0, 0.0) in rows and table.Row("Hat", "none") in rows
    rows = [table.Row("jawOpen", "jawOpen", 0.5, 0.1) if r.key == "jawOpen" else
            table.Row("Hat", "jawOpen", 1.0, 0.0) if r.key == "Hat" else
            table.Row(r.key, "none") if r.key == "mouthClose" else r for r in rows]
    path = table.save_preset(rows, tmp_path / "anna.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "lipsync3d-blendshape-preset" and doc["kind"] == "linear"
    loaded = table.load_rows(path, names)
    assert {r.key: r for r in loaded}["jawOpen"] == table.Row("jawOpen", "jawOpen", 0.5, 0.1)
    assert {r.key: r for r in loaded}["Hat"] == table.Row("Hat", "jawOpen", 1.0, 0.0)
    assert {r.key: r for r in loaded}["mouthClose"].source == "none"
    targets = character.shape_key_targets(obj, mapping.DriveOptions(), table=loaded)
    character.drive_character(obj, [(result, 1, "L")], mapping.DriveOptions(blinks=False), targets=targets)
    assert _value_at(scene, obj, "jawOpen", 5) == pytest.approx(0.1 + 0.5 * jaw[4], abs=1e-5)
    assert _value_at(scene, obj, "Hat", 5) == pytest.approx(jaw[4], abs=1e-5)
    # Preston Blair names map to the Rhubarb shapes, keyed CONSTANT (a 2D mouth swaps, never blends)
    pb = make_character(["MBP", "etc", "E", "AI", "O", "U", "FV", "rest"])
    report = character.drive_character(pb, [(result, 1, "L")], mapping.DriveOptions(preset="rhubarb", blinks=False))
    assert report.match.assignments == {"MBP": "A", "etc": "B", "E": "C", "AI": "D", "O": "E", "U": "F", "FV": "G",
                                        "rest": "X"}
    take = _take(pb.data.shape_keys, "L")[0].action
    assert {k.interpolation for c in _fcurves(take) for k in c.keyframe_points} == {'CONSTANT'}
    frame_values = [[_value_at(scene, pb, n, f) for n in ("MBP", "etc", "E", "AI", "O", "U", "FV", "rest")]
                    for f in (2.5, 7.5)]
    assert all(sorted(v)[-1] == 1.0 and sum(v) == 1.0 for v in frame_values)     # one mouth at a time


def _drive_selected(scene, folder, frame_start: int, strip: str):
    s = scene.lipsync3d
    item = s.results.add()
    item.name, item.path, item.frame_start, item.strip = strip, str(folder), frame_start, strip
    s.result_index = len(s.results) - 1
    assert bpy.ops.lipsync3d.drive_character() == {'FINISHED'}


def test_mapping_table_panel_fill_edit_save_clear_load_and_drive(scene, blender, tmp_path):
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=12, seed=9)
    jaw, funnel = _coeff(tmp_path / "a", "jawOpen"), _coeff(tmp_path / "a", "mouthFunnel")
    obj = make_character(["jawOpen", "mouthFunnel", "fix_mouthClose", "Hat"])
    s = scene.lipsync3d
    s.character, s.blinks, s.preset = obj, False, "arkit"
    assert not bpy.ops.lipsync3d.mapping_save.poll() and not bpy.ops.lipsync3d.mapping_clear.poll()
    assert bpy.ops.lipsync3d.mapping_fill() == {'FINISHED'}
    rows = {r.name: (r.source, r.gain, r.offset) for r in s.mapping_rows}
    assert rows == {"jawOpen": ("jawOpen", 1.0, 0.0), "mouthFunnel": ("mouthFunnel", 1.0, 0.0),
                    "fix_mouthClose": ("none", 1.0, 0.0), "Hat": ("none", 1.0, 0.0)}
    assert s.mapping_object == obj
    # the animator edits rows: jaw at half gain with an offset, the hat follows jawOpen, the funnel is excluded
    s.mapping_rows["jawOpen"].gain, s.mapping_rows["jawOpen"].offset = 0.5, 0.1
    s.mapping_rows["Hat"].source, s.mapping_rows["Hat"].gain = "jawOpen", 0.8
    s.mapping_rows["mouthFunnel"].source = "none"
    path = tmp_path / "anna.json"
    assert bpy.ops.lipsync3d.mapping_save(filepath=str(path)) == {'FINISHED'}
    doc = json.loads(path.read_text())
    assert doc["format"] == "lipsync3d-blendshape-preset" and doc["kind"] == "linear"
    assert doc["outputs"]["jawOpen"] == {"weights": {"jawOpen": 0.5}, "bias": pytest.approx(0.1)}
    assert "mouthFunnel" not in doc["outputs"]
    assert bpy.ops.lipsync3d.mapping_clear() == {'FINISHED'} and len(s.mapping_rows) == 0
    assert bpy.ops.lipsync3d.mapping_load(filepath=str(path)) == {'FINISHED'}
    rows = {r.name: (r.source, round(r.gain, 6), round(r.offset, 6)) for r in s.mapping_rows}
    assert rows["jawOpen"] == ("jawOpen", 0.5, 0.1) and rows["Hat"] == ("jawOpen", 0.8, 0.0)
    assert rows["mouthFunnel"][0] == "none" and rows["fix_mouthClose"][0] == "none"
    _drive_selected(scene, tmp_path / "a", 1, "L")
    for i in (0, 4, 11):
        assert _value_at(scene, obj, "jawOpen", 1 + i) == pytest.approx(0.1 + 0.5 * jaw[i], abs=1e-5)
        assert _value_at(scene, obj, "Hat", 1 + i) == pytest.approx(0.8 * jaw[i], abs=1e-5)
    assert funnel.max() > 0.01 and not [c for a in bpy.data.actions for c in _fcurves(a)
                                         if "mouthFunnel" in c.data_path]          # excluded: never keyed
    # an empty table: Drive matches by name again (the funnel follows mouthFunnel)
    assert bpy.ops.lipsync3d.mapping_clear() == {'FINISHED'}
    _drive_selected(scene, tmp_path / "a", 1, "L2")
    assert _value_at(scene, obj, "mouthFunnel", 5) == pytest.approx(funnel[4], abs=1e-5)


def test_a_key_driven_by_a_custom_property_keys_that_property_with_the_option_on(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=12, seed=10)
    jaw, funnel = _coeff(tmp_path / "a", "jawOpen"), _coeff(tmp_path / "a", "mouthFunnel")
    result = results.read_prediction(tmp_path / "a")

    def rig():
        obj = make_character(["jawOpen", "mouthFunnel"])
        obj["jaw_ctrl"] = 0.0
        fcd = obj.data.shape_keys.key_blocks["jawOpen"].driver_add("value")
        var = fcd.driver.variables.new()
        var.name, var.type = "ctrl", 'SINGLE_PROP'
        var.targets[0].id_type, var.targets[0].id, var.targets[0].data_path = 'OBJECT', obj, '["jaw_ctrl"]'
        fcd.driver.type, fcd.driver.expression = 'SCRIPTED', "ctrl"
        return obj

    # off (the default): the driven key is keyed in vain and reported; the property is left alone
    assert scene.lipsync3d.key_driver_inputs is False
    obj = rig()
    report = character.drive_character(obj, [(result, 1, "L")], mapping.DriveOptions(blinks=False))
    assert "controlled by a driver" in report.text() and "jawOpen" in report.text()
    assert obj.animation_data is None or not obj.animation_data.nla_tracks
    # on: the custom property carries jawOpen's values (and the driver turns them into the key)
    obj = rig()
    report = character.drive_character(obj, [(result, 1, "L")], mapping.DriveOptions(blinks=False),
                                       driver_inputs=True)
    assert "controlled by a driver" not in report.text()
    assert f'jawOpen -> {obj.name}["jaw_ctrl"]' in report.text()
    for i in (0, 5, 11):
        scene.frame_set(1 + i)
        assert obj["jaw_ctrl"] == pytest.approx(jaw[i], abs=1e-5)
        assert obj.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(jaw[i], abs=1e-5)
        assert obj.data.shape_keys.key_blocks["mouthFunnel"].value == pytest.approx(funnel[i], abs=1e-5)
    key_take, = _take(obj.data.shape_keys, "L")                       # the key's take drives the funnel only
    assert [c.data_path for c in _fcurves(key_take.action)] == ['key_blocks["mouthFunnel"].value']
    prop_take, = _take(obj, "L")                                      # the property's take, on the object
    assert [c.data_path for c in _fcurves(prop_take.action)] == ['["jaw_ctrl"]']
    scene.frame_set(1 + 11 + 3)                                          # eased back to rest
    assert obj["jaw_ctrl"] == pytest.approx(0.0, abs=1e-6)
    # a driver that reshapes its input is not redirected: reported as before
    obj = rig()
    obj.data.shape_keys.animation_data.drivers[0].driver.expression = "ctrl * 2"
    report = character.drive_character(obj, [(result, 1, "L")], mapping.DriveOptions(blinks=False),
                                       driver_inputs=True)
    assert "controlled by a driver" in report.text()


def test_an_armature_characters_lip_bone_moves_with_its_mouth_coefficient(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=20, seed=11)
    smile, jaw = _coeff(tmp_path / "a", "mouthSmileLeft"), _coeff(tmp_path / "a", "jawOpen")
    assert smile.max() > 0.01
    arm = _armature(scene)
    bpy.ops.object.mode_set(mode='EDIT')
    b = arm.data.edit_bones.new("lipCorner.L")                  # matched to mouthSmileLeft (alias + side)
    b.head, b.tail = (0.03, -0.1, 1.5), (0.03, -0.12, 1.5)
    bpy.ops.object.mode_set(mode='OBJECT')
    report = character.drive_character(arm, [(results.read_prediction(tmp_path / "a"), 5, "L")],
                                       mapping.DriveOptions(blinks=False))
    assert report.match.assignments == {"jaw: rotation X": "jawOpen", "lipCorner.L: location Z": "mouthSmileLeft"}
    for i in (0, 9, 19):
        scene.frame_set(5 + i)
        assert arm.pose.bones["lipCorner.L"].location[2] == pytest.approx(0.006 * smile[i], abs=1e-6)
        assert arm.pose.bones["lipCorner.L"].location[0] == 0.0 and arm.pose.bones["lipCorner.L"].location[1] == 0.0
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(math.radians(25.0) * jaw[i], abs=1e-5)
    # the panel's table lists the bone channels; a row edited there drives the bone
    s = scene.lipsync3d
    s.character, s.blinks = arm, False
    assert bpy.ops.lipsync3d.mapping_fill() == {'FINISHED'}
    assert {r.name: r.source for r in s.mapping_rows} == {"jaw: rotation X": "jawOpen",
                                                          "lipCorner.L: location Z": "mouthSmileLeft"}
    s.mapping_rows["lipCorner.L: location Z"].gain, s.mapping_rows["lipCorner.L: location Z"].offset = 0.02, 0.001
    s.mapping_rows["jaw: rotation X"].source = "none"
    path = tmp_path / "rig.json"
    assert bpy.ops.lipsync3d.mapping_save(filepath=str(path)) == {'FINISHED'}
    assert bpy.ops.lipsync3d.mapping_clear() == {'FINISHED'}
    assert bpy.ops.lipsync3d.mapping_load(filepath=str(path)) == {'FINISHED'}
    assert s.mapping_rows["lipCorner.L: location Z"].gain == pytest.approx(0.02)
    _drive_selected(scene, tmp_path / "a", 40, "L2")
    for i in (0, 9, 19):
        scene.frame_set(40 + i)
        assert arm.pose.bones["lipCorner.L"].location[2] == pytest.approx(0.001 + 0.02 * smile[i], abs=1e-6)
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(0.0, abs=1e-6)     # excluded
    # an axis changes by renaming the channel in a saved mapping file
    doc = json.loads(path.read_text())
    doc["outputs"] = {"lipCorner.L: location X": doc["outputs"]["lipCorner.L: location Z"]}
    path.write_text(json.dumps(doc))
    assert bpy.ops.lipsync3d.mapping_load(filepath=str(path)) == {'FINISHED'}
    assert {r.name: r.source for r in s.mapping_rows} == {"jaw: rotation X": "none", "lipCorner.L: location Z": "none",
                                                          "lipCorner.L: location X": "mouthSmileLeft"}
    _drive_selected(scene, tmp_path / "a", 80, "L3")
    scene.frame_set(80 + 9)
    loc = arm.pose.bones["lipCorner.L"].location           # (Z holds the rest of the earlier take's row: 0.001)
    assert (loc[0], loc[1]) == pytest.approx((0.001 + 0.02 * smile[9], 0.0), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Issue 14's last items: viseme rows, Re-sync of imported heads, the rest track's order, pose assets
# ---------------------------------------------------------------------------------------------

VISEME_RUNS = [(10, {}), (10, {"jawOpen": 0.7}), (10, {"mouthClose": 0.3, "mouthPressLeft": 0.5,   # X, D (AI),
                                                        "mouthPressRight": 0.5, "mouthRollLower": 0.2}),  # A (MBP),
               (10, {})]                                                                               # X


def _viseme_result(folder, seed: int = 12):
    """A result whose coefficients are the Rhubarb prototypes of rest, AI, MBP, rest for 10 frames each;
    returns the visemes of its frames as the add-on's Rhubarb preset classifies them."""
    make_result(folder, frames=40, seed=seed)
    path = folder / "blendshapes.json"
    d = json.loads(path.read_text())
    rows = [dict(proto) for n, proto in VISEME_RUNS for _ in range(n)]
    d["frames"] = [[row.get(name, 0.0) for name in d["names"]] for row in rows]
    path.write_text(json.dumps(d))
    return d


def _visemes(blender, folder) -> list:
    character = sys.modules[blender.__name__ + ".character"]
    preset = character.viseme_preset()
    result = results.read_prediction(folder)
    return [preset.outputs[r.index(1.0)] for r in preset.apply(character.arkit_rows(result))]


def test_a_viseme_row_keys_its_shape_key_1_while_the_viseme_is_active_and_survives_save_and_load(
        scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    table = sys.modules[blender.__name__ + ".mapping_table"]
    scene.render.fps = 25
    _viseme_result(tmp_path / "a")
    visemes = _visemes(blender, tmp_path / "a")
    assert visemes[:10] == ["X"] * 10 and visemes[11:19] == ["D"] * 8 and visemes[21:29] == ["A"] * 8
    jaw = _coeff(tmp_path / "a", "jawOpen")
    obj = make_character(["MouthAI", "MouthMBP", "Jaw"])
    rows = [table.Row("MouthAI", "viseme:D"), table.Row("MouthMBP", "viseme:A", 0.8, 0.1),
            table.Row("Jaw", "jawOpen", 0.5)]
    result = results.read_prediction(tmp_path / "a")
    report = character.drive_character(obj, [(result, 5, "L")], mapping.DriveOptions(blinks=False),
                                       targets=character.table_targets(obj, rows))
    assert report.match.assignments == {"MouthAI": "viseme:D", "MouthMBP": "viseme:A", "Jaw": "jawOpen"}

    def check(start):
        for i in range(40):
            assert _value_at(scene, obj, "MouthAI", start + i) == (1.0 if visemes[i] == "D" else 0.0), i
            assert _value_at(scene, obj, "MouthMBP", start + i) == pytest.approx(
                0.1 + (0.8 if visemes[i] == "A" else 0.0)), i
            assert _value_at(scene, obj, "Jaw", start + i) == pytest.approx(0.5 * jaw[i], abs=1e-6), i
        assert _value_at(scene, obj, "MouthAI", start + 15.5) == 1.0          # CONSTANT: no blend between keys
        assert _value_at(scene, obj, "MouthAI", start + 10.5) == 1.0
        assert _value_at(scene, obj, "MouthAI", start + 9.5) == 0.0
        for f in (start - 4, start + 39 + 4, start + 80):                     # outside the take: rest
            assert _value_at(scene, obj, "MouthAI", f) == 0.0
            assert _value_at(scene, obj, "MouthMBP", f) == pytest.approx(0.1)

    check(5)
    take = _take(obj.data.shape_keys, "L")[0].action
    interp = {c.data_path: {k.interpolation for k in c.keyframe_points} for c in _fcurves(take)}
    assert interp == {'key_blocks["MouthAI"].value': {'CONSTANT'}, 'key_blocks["MouthMBP"].value': {'CONSTANT'},
                      'key_blocks["Jaw"].value': {'LINEAR'}}
    # save -> load: the preset JSON keeps the viseme rows, and the loaded table drives the same keys
    path = table.save_preset(rows, tmp_path / "visemes.json")
    doc = json.loads(path.read_text())
    assert doc["viseme_preset"] == "rhubarb" and doc["viseme_outputs"] == {
        "MouthAI": {"viseme": "D", "gain": 1.0, "bias": 0.0}, "MouthMBP": {"viseme": "A", "gain": 0.8, "bias": 0.1}}
    assert doc["outputs"] == {"Jaw": {"weights": {"jawOpen": 0.5}, "bias": 0.0}}
    loaded = table.load_rows(path, ["MouthAI", "MouthMBP", "Jaw"])
    assert loaded == rows
    preset = mapping.load_preset(path, (character.presets_folder(),))     # the file as a preset of the Mapping menu
    column = preset.outputs.index("MouthAI")
    assert [r[column] for r in preset.apply(character.arkit_rows(result))] == [float(v == "D") for v in visemes]
    assert preset.stepwise("MouthAI") and not preset.stepwise("Jaw")
    character.drive_character(obj, [(result, 105, "L2")], mapping.DriveOptions(blinks=False),
                              targets=character.table_targets(obj, loaded))
    check(105)


def test_the_panel_fills_a_viseme_table_from_the_rhubarb_preset_and_round_trips_it(scene, blender, tmp_path):
    scene.render.fps = 25
    _viseme_result(tmp_path / "a")
    visemes = _visemes(blender, tmp_path / "a")
    obj = make_character(["MBP", "AI", "etc", "rest", "Hat"])
    s = scene.lipsync3d
    s.character, s.blinks, s.preset = obj, False, "rhubarb"
    assert bpy.ops.lipsync3d.mapping_fill() == {'FINISHED'}             # a mouth-swap preset fills a table now
    assert {r.name: r.source for r in s.mapping_rows} == {"MBP": "viseme:A", "AI": "viseme:D", "etc": "viseme:B",
                                                          "rest": "viseme:X", "Hat": "none"}
    s.mapping_rows["Hat"].source = "viseme:D"                           # a hand-set viseme row
    path = tmp_path / "chart.json"
    assert bpy.ops.lipsync3d.mapping_save(filepath=str(path)) == {'FINISHED'}
    assert bpy.ops.lipsync3d.mapping_clear() == {'FINISHED'}
    assert bpy.ops.lipsync3d.mapping_load(filepath=str(path)) == {'FINISHED'}
    assert {r.name: r.source for r in s.mapping_rows} == {"MBP": "viseme:A", "AI": "viseme:D", "etc": "viseme:B",
                                                          "rest": "viseme:X", "Hat": "viseme:D"}
    _drive_selected(scene, tmp_path / "a", 1, "L")
    for i in range(40):
        assert _value_at(scene, obj, "Hat", 1 + i) == (1.0 if visemes[i] == "D" else 0.0), i
        assert _value_at(scene, obj, "rest", 1 + i) == (1.0 if visemes[i] == "X" else 0.0), i
    assert _value_at(scene, obj, "rest", 70) == 1.0 and _value_at(scene, obj, "AI", 70) == 0.0     # at rest


@pytest.mark.parametrize("animation", ["SHAPE_KEYS", "MESH_CACHE"])
def test_resync_moves_an_imported_head_with_its_sound_strip(scene, blender, tmp_path, animation):
    import wave

    from blender_helpers import emission_render_setup, evaluated_coords, new_sound_strip, texture_as_emission
    from handmade import atlas_colour

    importer = sys.modules[blender.__name__ + ".importer"]
    operators = sys.modules[blender.__name__ + ".operators"]
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=6)
    with wave.open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\0\0" * 4000)
    strip = new_sound_strip(scene.sequence_editor_create(), "Line A", str(tmp_path / "a.wav"), 1, 1)
    obj = importer.import_head(bpy.context, results.read_prediction(tmp_path / "a"), 1, animation, line="Line A")
    operators._show_only_during(obj, 1, 6)                    # as a batch head: visible on its frames only
    texture_as_emission(obj)
    render = emission_render_setup(scene, obj)
    before = {}
    for k in (0, 2, 5):
        scene.frame_set(1 + k)
        before[k] = evaluated_coords(obj)
    colours = {k: render(1 + k, tmp_path / f"b{k}.png")[20:28, 20:28].reshape(-1, 3).mean(0) for k in (0, 5)}
    strip.frame_start = 41                                     # the editor moves the line 40 frames later
    assert bpy.ops.lipsync3d.resync() == {'FINISHED'}
    assert f"head '{obj.name}' 1 -> 41" in bpy.context.window_manager.lipsync3d_job.last_report
    for k in (0, 2, 5):
        scene.frame_set(41 + k)
        np.testing.assert_allclose(evaluated_coords(obj), before[k], atol=1e-6)
    for k in (0, 5):
        after = render(41 + k, tmp_path / f"a{k}.png")[20:28, 20:28].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(after, colours[k], atol=1) and np.testing.assert_allclose(after, atlas_colour(k),
                                                                                               atol=3)
    tex = next(n for n in obj.active_material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert tex.image_user.frame_start == 41 and obj["lipsync3d_frame_start"] == 41
    for f, hidden in ((40, True), (41, False), (46, False), (47, True)):
        scene.frame_set(f)
        assert obj.hide_render == hidden, f
    assert bpy.ops.lipsync3d.resync() == {'FINISHED'}          # nothing left to move
    assert "already sits" in bpy.context.window_manager.lipsync3d_job.last_report


def _user_track(key, name: str = "User track", value: float = 0.7):
    """The animator's own NLA track: an action keying jawOpen to `value` from frame 1 to 300, held."""
    action = bpy.data.actions.new(f"{name} action")
    ad = key.animation_data or key.animation_data_create()
    ad.action = action
    fc = ensure_fcurve(action, key, 'key_blocks["jawOpen"].value')
    for f in (1, 300):
        fc.keyframe_points.insert(f, value)
    ad.action = None
    track = ad.nla_tracks.new()
    track.name = name
    strip = track.strips.new(name, 1, action)
    strip.extrapolation, strip.blend_in = 'HOLD', 2.0
    return track, action


def test_a_users_older_nla_track_plays_between_takes_and_the_take_still_eases_to_rest(scene, blender, tmp_path):
    character, mapping, anim = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=20, seed=13)
    jaw = _coeff(tmp_path / "a", "jawOpen")
    obj = make_character(["jawOpen", "Hat"])
    key = obj.data.shape_keys
    _, action = _user_track(key)
    before = [tuple(k.co) for c in _fcurves(action) for k in c.keyframe_points]
    report = character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), 50, "L")],
                                       mapping.DriveOptions(blinks=False), ease=3)
    assert [t.name for t in key.animation_data.nla_tracks] == ["LipSync3D rest", "User track", "LipSync3D"]
    assert report.nla.restacked == ["User track"] and "your NLA track 'User track' recreated" in report.text()
    user = key.animation_data.nla_tracks["User track"].strips[0]
    assert (user.name, user.action, user.frame_start, user.frame_end, user.extrapolation, user.blend_in) == \
        ("User track", action, 1.0, 300.0, 'HOLD', 2.0)
    assert [tuple(k.co) for c in _fcurves(action) for k in c.keyframe_points] == before      # never altered
    last = 50 + 19
    for f in (5, 30, 46, last + 4, last + 40):                # between takes: the user's track plays
        assert _value_at(scene, obj, "jawOpen", f) == pytest.approx(0.7), f
    for i in (0, 9, 19):                                      # inside the take: the take
        assert _value_at(scene, obj, "jawOpen", 50 + i) == pytest.approx(jaw[i], abs=1e-5)
    assert _value_at(scene, obj, "jawOpen", last + 1.5) == pytest.approx(jaw[19] / 2, abs=1e-5)    # easing to rest
    assert _value_at(scene, obj, "jawOpen", last + 3) == pytest.approx(0.0, abs=1e-6)
    assert _value_at(scene, obj, "Hat", 30) == key.key_blocks["Hat"].slider_max == 1.0    # not driven, not keyed
    # a second line and the user's active action: takes stay on top, Kept goes below them, above the user's track
    users = bpy.data.actions.new("Anna face")
    key.animation_data.action = users
    ensure_fcurve(users, key, 'key_blocks["Hat"].value').keyframe_points.insert(1, 0.4)
    character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), 150, "L2")],
                              mapping.DriveOptions(blinks=False))
    assert [t.name for t in key.animation_data.nla_tracks] == ["LipSync3D rest", "User track", "Kept: Anna face",
                                                               "LipSync3D"]
    assert _value_at(scene, obj, "jawOpen", 100) == pytest.approx(0.7) \
        and _value_at(scene, obj, "Hat", 100) == pytest.approx(0.4)
    assert _value_at(scene, obj, "jawOpen", 155) == pytest.approx(jaw[5], abs=1e-5)


def test_a_rest_track_made_above_the_users_track_moves_below_it_and_an_uncopyable_track_is_reported(
        scene, blender, tmp_path):
    character, mapping, anim = _mods(blender)
    scene.render.fps = 25
    make_result(tmp_path / "a", frames=20, seed=13)
    obj = make_character(["jawOpen"])
    key = obj.data.shape_keys
    _user_track(key)
    # what an older version of the add-on made: the rest track on top of the user's track
    rest = bpy.data.actions.new("old rest")
    key.animation_data.action = rest
    ensure_fcurve(rest, key, 'key_blocks["jawOpen"].value').keyframe_points.insert(0, 0.0)
    key.animation_data.action = None
    track = key.animation_data.nla_tracks.new()
    track.name = "LipSync3D rest"
    track.strips.new("rest", 0, rest).extrapolation = 'HOLD'
    assert _value_at(scene, obj, "jawOpen", 30) == 0.0                     # masked
    report = character.drive_character(obj, [(results.read_prediction(tmp_path / "a"), 50, "L")],
                                       mapping.DriveOptions(blinks=False))
    assert [t.name for t in key.animation_data.nla_tracks] == ["LipSync3D rest", "User track", "LipSync3D"]
    assert report.nla.restacked == ["User track"]
    assert _value_at(scene, obj, "jawOpen", 30) == pytest.approx(0.7)      # plays again
    # a track the add-on does not recreate (an F-modifier on its strip's influence) stays, and is reported
    other = make_character(["jawOpen"])
    okey = other.data.shape_keys
    utrack, _ = _user_track(okey, "Noisy")
    strip = utrack.strips[0]
    strip.use_animated_influence = True
    strip.fcurves.find("influence").modifiers.new('NOISE')
    report = character.drive_character(other, [(results.read_prediction(tmp_path / "a"), 50, "L")],
                                       mapping.DriveOptions(blinks=False))
    assert [t.name for t in okey.animation_data.nla_tracks] == ["Noisy", "LipSync3D rest", "LipSync3D"]
    assert report.nla.masked == ["Noisy"] and "could not go below your NLA track 'Noisy'" in report.text()


def _pose_asset(arm, name: str, angle: float):
    action = bpy.data.actions.new(name)
    arm.animation_data_create().action = action
    fc = action.fcurve_ensure_for_datablock(arm, 'pose.bones["jaw"].rotation_euler', index=0)
    fc.keyframe_points.insert(1, angle)
    arm.animation_data.action = None
    action.asset_mark()
    return action


def test_pose_assets_as_visemes_of_an_armature(scene, blender, tmp_path):
    character, mapping, _ = _mods(blender)
    table = sys.modules[blender.__name__ + ".mapping_table"]
    scene.render.fps = 25
    _viseme_result(tmp_path / "a")
    visemes = _visemes(blender, tmp_path / "a")
    jaw = _coeff(tmp_path / "a", "jawOpen")
    arm = _armature(scene)
    _pose_asset(arm, "MBP", 0.0)
    _pose_asset(arm, "AI", 0.3)
    bpy.data.actions.new("not an asset")
    assert [a.name for a in character.pose_assets(arm)] == ["AI", "MBP"]
    s = scene.lipsync3d
    s.character, s.blinks = arm, False
    assert bpy.ops.lipsync3d.mapping_fill() == {'FINISHED'}
    assert {r.name: r.source for r in s.mapping_rows} == {      # the poses take the jaw: its own row is none
        "jaw: rotation X": "none", "pose asset: AI": "viseme:D", "pose asset: MBP": "viseme:A"}
    _drive_selected(scene, tmp_path / "a", 5, "L")
    for i in range(40):
        scene.frame_set(5 + i)
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(0.3 if visemes[i] == "D" else 0.0,
                                                                         abs=1e-6), i
    for f in (1, 5 + 39 + 3, 90):
        scene.frame_set(f)
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(0.0, abs=1e-6)
    # save -> load the table, then drive the AI pose by a coefficient instead: blended by jawOpen
    path = tmp_path / "rig.json"
    assert bpy.ops.lipsync3d.mapping_save(filepath=str(path)) == {'FINISHED'}
    assert json.loads(path.read_text())["viseme_outputs"]["pose asset: AI"] == {"viseme": "D", "gain": 1.0,
                                                                                 "bias": 0.0}
    assert bpy.ops.lipsync3d.mapping_clear() == {'FINISHED'}
    assert bpy.ops.lipsync3d.mapping_load(filepath=str(path)) == {'FINISHED'}
    assert s.mapping_rows["pose asset: AI"].source == "viseme:D"
    s.mapping_rows["pose asset: AI"].source, s.mapping_rows["pose asset: AI"].gain = "jawOpen", 0.5
    _drive_selected(scene, tmp_path / "a", 100, "L2")
    for i in (5, 15, 25):
        scene.frame_set(100 + i)
        assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx(0.3 * 0.5 * jaw[i], abs=1e-6), i
    # two poses on the same bone add up, each by its weight, on top of the rest pose
    rows = [table.Row("pose asset: AI", "jawOpen"), table.Row("pose asset: Wide", "jawOpen", 0.5)]
    _pose_asset(arm, "Wide", -0.2)
    character.drive_character(arm, [(results.read_prediction(tmp_path / "a"), 200, "L3")],
                              mapping.DriveOptions(blinks=False), targets=character.table_targets(arm, rows))
    scene.frame_set(215)
    assert arm.pose.bones["jaw"].rotation_euler[0] == pytest.approx((0.3 - 0.5 * 0.2) * jaw[15], abs=1e-6)
