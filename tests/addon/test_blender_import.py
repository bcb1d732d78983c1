"""The add-on in real Blender (bpy 5.0.1, headless), installed from the built zip, on hand-made
prediction folders: the head's per-frame geometry, its atlas material, and driving a character."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from blender_addon.core import results

from blender_helpers import (emission_render_setup, engine_to_blender, ensure_fcurve, evaluated_coords,
                             make_character, texture_as_emission)
from handmade import atlas_colour, make_result

bpy = pytest.importorskip("bpy")   # bpy is pinned in requirements.lock: this never skips in `make test`


def test_zip_is_built_validated_and_holds_the_engine(addon_zip):
    import zipfile

    from lipsync_engine.core.version import __version__

    path, notes = addon_zip
    assert path.name == f"lipsync3d-{__version__}.zip"
    assert any("Blender's validator" in n and "skipped" not in n for n in notes), notes
    names = zipfile.ZipFile(path).namelist()
    assert "lipsync3d/blender_manifest.toml" in names and "lipsync3d/engine/lipsync_engine/cli.py" in names
    assert "lipsync3d/engine/blendshape_rigs/presets/arkit.json" in names
    assert not [n for n in names if "__pycache__" in n or "/tests/" in n or n.endswith(".pyc")]
    manifest = zipfile.ZipFile(path).read("lipsync3d/blender_manifest.toml").decode()
    assert f'version = "{__version__}"' in manifest and 'license = ["SPDX:GPL-3.0-or-later"]' in manifest


def test_addon_is_enabled_with_its_operators_panels_and_preferences(scene, blender):
    assert blender.__name__ == "bl_ext.lipsync_test.lipsync3d"
    assert blender.__file__.startswith(bpy.context.preferences.extensions.repos["lipsync_test"].directory)
    for op in ("train", "predict", "import_head", "drive_character", "check_engine", "cancel_job",
               "create_engine_env", "video_add", "models_refresh"):
        assert hasattr(bpy.ops.lipsync3d, op), op
    for panel in ("LIPSYNC3D_PT_main", "LIPSYNC3D_PT_speaker", "LIPSYNC3D_PT_dialogue", "LIPSYNC3D_PT_character"):
        cls = getattr(bpy.types, panel)
        assert cls.bl_category == "LipSync3D" and cls.bl_space_type == 'VIEW_3D'
    assert scene.lipsync3d.audio_source == 'STRIP'
    client = sys.modules[blender.__name__ + ".core.client"]
    assert client.bundled_engine_dir().name == "engine"     # the zip's engine runs, not the checkout's


@pytest.mark.parametrize("animation", ["SHAPE_KEYS", "MESH_CACHE"])
def test_imported_head_follows_the_prediction_frame_by_frame(scene, blender, tmp_path, animation):
    data = make_result(tmp_path / "pred", frames=6)
    importer = sys.modules[blender.__name__ + ".importer"]
    result = results.read_prediction(tmp_path / "pred")
    start = 101
    obj = importer.import_head(bpy.context, result, start, animation)
    assert len(obj.data.vertices) == 468 and len(obj.data.polygons) == 898
    assert tuple(obj.scale) == pytest.approx((0.01,) * 3)
    for i in (0, 3, 5):
        scene.frame_set(start + i)
        np.testing.assert_allclose(evaluated_coords(obj), engine_to_blender(data["vertices"][i]), atol=1e-5)
    scene.frame_set(start + 2)      # between keys nothing else leaks in
    np.testing.assert_allclose(evaluated_coords(obj), engine_to_blender(data["vertices"][2]), atol=1e-5)
    if animation == 'SHAPE_KEYS':
        assert len(obj.data.shape_keys.key_blocks) == 7
        assert obj.data.shape_keys.animation_data.action.name.endswith("frames")
    else:
        assert obj.modifiers[0].type == 'MESH_CACHE' and obj.data.shape_keys is None
    assert scene.frame_end >= start + 5


def test_head_uvs_and_cylinder_nodes_match_the_engine(scene, blender, tmp_path):
    data = make_result(tmp_path / "pred", frames=3)
    importer = sys.modules[blender.__name__ + ".importer"]
    result = results.read_prediction(tmp_path / "pred")
    obj = importer.import_head(bpy.context, result, 1)
    uv = np.zeros(len(obj.data.loops) * 2)
    obj.data.uv_layers["UVMap"].data.foreach_get("uv", uv)
    vi = np.zeros(len(obj.data.loops), int)
    obj.data.loops.foreach_get("vertex_index", vi)
    np.testing.assert_allclose(uv.reshape(-1, 2), data["obj_uv"][vi], atol=1e-5)
    # the node graph's formula, evaluated here on the object-space positions, gives the OBJ's UVs
    nt = obj.active_material.node_tree
    ops = {n.label: n for n in nt.nodes if n.bl_idname == "ShaderNodeMath"}
    co = np.array([v.co for v in obj.data.vertices])
    X, Y, Z = co.T
    theta = np.arctan2(X - ops["x - cx"].inputs[1].default_value,
                       Y * ops["z - cz = -Y - cz"].inputs[1].default_value + ops["z - cz = -Y - cz"].inputs[2].default_value)
    u_node = ops["U = (u0 + k theta + 0.5) / 256"]
    v_node = ops["V = 1 - (v0 - s y + 0.5) / 256"]
    U = theta * u_node.inputs[1].default_value + u_node.inputs[2].default_value
    V = Z * v_node.inputs[1].default_value + v_node.inputs[2].default_value
    np.testing.assert_allclose(np.stack([U, V], 1), data["obj_uv"], atol=1e-5)
    tex = next(n for n in nt.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert tex.image.source == 'SEQUENCE' and tex.image_user.frame_duration == 3
    assert tex.image_user.frame_start == 1 and tex.image_user.frame_offset == -1


def test_atlas_sequence_frame_i_shows_at_start_plus_i(scene, blender, tmp_path):
    make_result(tmp_path / "pred", frames=6)
    importer = sys.modules[blender.__name__ + ".importer"]
    obj = importer.import_head(bpy.context, results.read_prediction(tmp_path / "pred"), 10)
    texture_as_emission(obj)
    render = emission_render_setup(scene, obj)
    for i in (0, 3, 5):
        centre = render(10 + i, tmp_path / f"f{i}.png")[20:28, 20:28].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(centre, atlas_colour(i), atol=3)


def test_drive_character_keys_equal_the_prediction_and_keep_the_users_action(scene, blender, tmp_path):
    data = make_result(tmp_path / "pred", frames=6)
    character = sys.modules[blender.__name__ + ".character"]
    mapping = sys.modules[blender.__name__ + ".core.mapping"]
    obj = make_character(["JAW_OPEN", "mouth-smile-left", "eyeBlink_L", "Mouth Funnel", "Hat"])
    key = obj.data.shape_keys
    users = bpy.data.actions.new("Hand keyed")
    key.animation_data_create().action = users
    fc = ensure_fcurve(users, key, 'key_blocks["Hat"].value')
    fc.keyframe_points.insert(1, 0.7)
    result = results.read_prediction(tmp_path / "pred")
    report = character.drive_character(obj, [(result, 50)], mapping.DriveOptions(blinks=False))
    assert report.preset == "arkit" and report.kept == "Hand keyed"
    assert report.match.unmapped_keys == ("Hat",)
    assert "Hat" in report.text() and "kept on an NLA track" in report.text()
    assert key.animation_data.action.name == "LipSync3D line" and bpy.data.actions.get("Hand keyed") is not None
    assert key.animation_data.nla_tracks[0].strips[0].action.name == "Hand keyed"
    cols = {"JAW_OPEN": "jawOpen", "mouth-smile-left": "mouthSmileLeft", "eyeBlink_L": "eyeBlinkLeft",
            "Mouth Funnel": "mouthFunnel"}
    from lipsync_engine.rig.names import ARKIT_NAMES
    for i in (0, 2, 5):
        scene.frame_set(50 + i)
        for kname, arkit in cols.items():
            assert key.key_blocks[kname].value == pytest.approx(
                float(data["blendshapes"][i, ARKIT_NAMES.index(arkit)]), abs=1e-5), (kname, i)
    assert key.key_blocks["Hat"].value == pytest.approx(0.7)        # the user's action still plays underneath


def test_drive_character_strength_blinks_and_head_motion(scene, blender, tmp_path):
    make_result(tmp_path / "pred", frames=200, seed=3)
    character = sys.modules[blender.__name__ + ".character"]
    mapping = sys.modules[blender.__name__ + ".core.mapping"]
    obj = make_character(["jawOpen", "eyeBlinkLeft", "eyeBlinkRight"])
    result = results.read_prediction(tmp_path / "pred")
    track = results.read_coefficients(tmp_path / "pred" / "blendshapes.json")
    options = mapping.DriveOptions(strength=0.5, blinks=True, head_motion=True, head_amplitude_deg=3.0)
    report = character.drive_character(obj, [(result, 1)], options, head=obj)
    key = obj.data.shape_keys
    jaw = track.names.index("jawOpen")
    blink = []
    for f in range(1, 201):
        scene.frame_set(f)
        assert key.key_blocks["jawOpen"].value == pytest.approx(0.5 * track.frames[f - 1][jaw], abs=1e-5)
        blink.append(key.key_blocks["eyeBlinkLeft"].value)
    assert max(blink) >= 0.45        # at least one full blink (x strength 0.5) in 8 s
    angles = []
    for f in range(1, 201, 5):
        scene.frame_set(f)
        angles.append(tuple(obj.rotation_euler))
    amp = np.abs(np.array(angles)).max(0)
    assert 0.2 < np.degrees(amp.max()) <= 3.0 + 1e-6 and report.head_action == "LipSync3D head line"


def test_head_motion_on_an_armature_bone(scene, blender, tmp_path):
    make_result(tmp_path / "pred", frames=120, seed=5)
    character = sys.modules[blender.__name__ + ".character"]
    mapping = sys.modules[blender.__name__ + ".core.mapping"]
    arm = bpy.data.objects.new("Rig", bpy.data.armatures.new("Rig"))
    scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode='EDIT')
    bone = arm.data.edit_bones.new("head")
    bone.head, bone.tail = (0, 0, 1.5), (0, 0, 1.7)
    bpy.ops.object.mode_set(mode='OBJECT')
    arm.pose.bones["head"].rotation_mode = 'QUATERNION'
    obj = make_character(["jawOpen"])
    options = mapping.DriveOptions(blinks=False, head_motion=True, head_amplitude_deg=2.5)
    report = character.drive_character(obj, [(results.read_prediction(tmp_path / "pred"), 1)], options,
                                       head=arm, bone="head")
    assert report.head_action == "LipSync3D head line" and arm.animation_data.action.name == report.head_action
    angles = []
    for f in range(1, 121, 7):
        scene.frame_set(f)
        q = arm.pose.bones["head"].rotation_quaternion
        assert q.magnitude == pytest.approx(1.0, abs=1e-4)
        angles.append(np.degrees(q.angle))
    assert 0.2 < max(angles) <= 2.5 * np.sqrt(3) + 1e-6
    with pytest.raises(ValueError, match="has no bone named 'neck'"):
        character.drive_character(obj, [(results.read_prediction(tmp_path / "pred"), 1)], options, head=arm,
                                  bone="neck")
