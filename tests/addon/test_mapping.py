"""The add-on's stdlib-only parts, checked against the engine (no Blender): name matching and
presets, the time-series helpers, the file readers, the engine-environment steps, and the
rule that the add-on imports only bpy and the standard library."""

from __future__ import annotations

import ast
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from blender_addon.core import client, engine_env, mapping, results
from lipsync_engine.core import interop
from lipsync_engine.core.errors import InputError
from lipsync_engine.rig import names
from lipsync_engine.io import pointcache

ADDON = Path(__file__).resolve().parents[2] / "blender_addon"
PRESETS = client.bundled_engine_dir() / "blendshape_rigs" / "presets"


@pytest.mark.parametrize("key, channel", [
    ("JAW_OPEN", "jawOpen"), ("mouth-smile-left", "mouthSmileLeft"), ("mouthSmile_L", "mouthSmileLeft"),
    ("MouthSmileR", "mouthSmileRight"), ("eye_blink_r", "eyeBlinkRight"), ("blendShape1.jawOpen", "jawOpen"),
    ("BS_eye_blink_left", "eyeBlinkLeft"), ("Face.mouthFrown_R", "mouthFrownRight"), ("Ball", None),
    ("Hat", None), ("jawLeft", "jawLeft"),
])
def test_match_names_rules(key, channel):
    m = mapping.match_names([key], mapping.ARKIT_NAMES)
    assert m.assignments.get(key) == channel
    assert (key in m.unmapped_keys) == (channel is None)


def test_explicit_mapping_wins_and_null_leaves_a_key_alone():
    m = mapping.match_names(["Smile", "jawOpen"], mapping.ARKIT_NAMES, explicit={"smile": "mouthSmileLeft",
                                                                                  "JAWOPEN": None})
    assert m.assignments == {"Smile": "mouthSmileLeft"}


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.json")))
def test_every_preset_gives_the_engines_numbers(preset, rng):
    ours = mapping.load_preset(PRESETS / f"{preset}.json")
    theirs = names.load_preset(preset)
    coeffs = rng.uniform(0, 1, (40, 52)) * (rng.uniform(0, 1, (40, 1)) > 0.3)
    got = np.asarray(ours.apply(coeffs.tolist()))
    if theirs.kind == "classify":
        labels = theirs.classify(coeffs)
        assert list(np.asarray(ours.outputs)[got.argmax(1)]) == list(labels)
        assert (got.sum(1) == 1).all()
    else:
        assert ours.outputs == theirs.outputs and ours.aliases == theirs.aliases
        np.testing.assert_allclose(got, theirs.apply(coeffs), atol=1e-12)


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS.glob("*.json")))
def test_one_parser_both_sides_apply_the_same_preset_spec(preset, rng):
    """interop.read_preset is the one parser of a preset file: the engine's numpy form and the add-on's
    plain-Python form of the same PresetSpec give the same channels, and both loaders are these forms."""
    assert Path(mapping.interop.__file__).resolve() == Path(interop.__file__).resolve()    # one file
    spec = interop.read_preset(PRESETS / f"{preset}.json")
    engine, addon = names.from_spec(spec), mapping.Preset.from_spec(spec)
    coeffs = rng.uniform(0, 1, (5, 52))
    got = np.asarray(addon.apply(coeffs.tolist()))
    if spec.kind == "classify":
        assert engine.shapes == spec.outputs
        want = (engine.classify(coeffs)[:, None] == np.asarray(spec.outputs)[None]).astype(float)   # one-hot
    else:
        assert engine.outputs == spec.outputs and engine.aliases == addon.aliases == dict(spec.aliases)
        want = engine.apply(coeffs)
    assert addon.outputs == spec.outputs
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(mapping.load_preset(PRESETS / f"{preset}.json").apply(coeffs.tolist())),
                                  got)
    loaded = names.load_preset(preset)
    np.testing.assert_array_equal(loaded.classify(coeffs) if spec.kind == "classify" else loaded.apply(coeffs),
                                  engine.classify(coeffs) if spec.kind == "classify" else want)


def preset_doc(**fields) -> dict:
    return {"format": interop.PRESET_FORMAT, "description": "x", **fields}


@pytest.mark.parametrize("doc, message", [
    ([1, 2], "a blendshape preset must be a JSON object"),
    ({"kind": "linear", "outputs": {}}, "not a blendshape preset"),
    (preset_doc(kind="linear", outputs={"Open": {"weights": {"jawOpenn": 1.0}}}), "'jawOpenn' is not one of the 52"),
    (preset_doc(kind="linear", outputs={"Open": {}}), "has no weights and no bias"),
    (preset_doc(kind="classify", features={"jawOpen": 1}, shapes={"A": {"prototype": {}}}, rest="X"),
     "\"rest\" 'X' is not one of the shapes"),
])
def test_a_broken_preset_reads_the_same_on_both_sides(tmp_path, doc, message):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as engine:
        names.load_preset(path)
    with pytest.raises(ValueError) as addon:
        mapping.load_preset(path)
    assert str(engine.value).replace(str(path.resolve()), "P") == str(addon.value).replace(str(path), "P")
    assert message in str(addon.value) and str(addon.value).startswith(str(path))


def test_a_saved_table_with_a_gain_0_row_loads_on_both_sides(tmp_path):
    """A mapping-table row of gain 0 and offset 0 lists its weight: it is the user's, not a broken output."""
    path = tmp_path / "table.json"
    path.write_text(json.dumps(preset_doc(kind="linear", clip=[-10.0, 10.0],
                                          outputs={"Jaw": {"weights": {"jawOpen": 0.0}, "bias": 0.0}})))
    assert names.load_preset(path).apply(np.ones((1, 52))).tolist() == [[0.0]]
    assert mapping.load_preset(path).apply([[1.0] * 52]) == [[0.0]]


def test_best_preset_picks_the_rig_the_names_come_from():
    presets = mapping.list_presets(PRESETS)
    assert mapping.best_preset(["JAW_OPEN", "mouth-smile-left", "Hat"], presets) == "arkit"
    assert mapping.best_preset(["Eye_Blink_L", "Mouth_Smile_L", "Jaw_Open", "Eye_L_Look_R"], presets) == "cc4"
    assert mapping.best_preset(["viseme_aa", "viseme_PP", "viseme_sil"], presets) == "visemes_oculus"
    assert mapping.best_preset(["A", "I", "U", "E", "O", "Blink", "Joy"], presets) == "vrm"


def test_box_filter_equals_scipy_and_smoothing_reduces_jitter(rng):
    from scipy.ndimage import uniform_filter1d

    x = rng.normal(size=(50, 3))
    np.testing.assert_allclose(mapping.box_filter(x.tolist(), 2), uniform_filter1d(x, 5, axis=0, mode="nearest"),
                               atol=1e-12)
    assert mapping.smooth(x.tolist(), 0) == x.tolist()
    assert np.diff(np.asarray(mapping.smooth(x.tolist(), 3)), axis=0).std() < 0.3 * np.diff(x, axis=0).std()


def test_blinks_are_seeded_bounded_and_about_17_a_minute():
    fps = 30.0
    curve = np.asarray(mapping.blink_curve(int(60 * fps), fps, seed=4))
    assert curve.min() == 0.0 and curve.max() == pytest.approx(1.0)
    starts = np.flatnonzero((curve[1:] > 0) & (curve[:-1] == 0))
    assert 8 <= len(starts) <= 30
    assert np.diff(starts).min() >= mapping.BLINK_INTERVAL_S[0] * fps
    assert mapping.blink_curve(300, fps, seed=4) == curve[:300].tolist()
    rows = mapping.add_blinks([[0.2] * 52] * 300, fps, seed=4)
    left = mapping.ARKIT_NAMES.index("eyeBlinkLeft")
    assert [r[left] for r in rows] == [max(0.2, b) for b in curve[:300]]


def test_head_motion_is_subtle_and_follows_speech():
    fps, n = 30.0, 900
    jaw = mapping.ARKIT_NAMES.index("jawOpen")
    rows = [[0.0] * 52 for _ in range(n)]
    for i in range(300, 600):
        rows[i][jaw] = 0.8
    a = np.degrees(np.asarray(mapping.head_motion(rows, fps, amplitude_deg=2.0, seed=1)))
    assert np.abs(a).max() <= 2.0 + 1e-9 and np.abs(a).max() > 0.5
    quiet = mapping.head_motion([[0.0] * 52] * n, fps, amplitude_deg=2.0, seed=1)
    assert np.degrees(np.asarray(quiet))[300:600, 0].mean() < a[300:600, 0].mean()     # nods while speaking


def test_euler_to_quaternion_matches_blenders_xyz_order():
    from scipy.spatial.transform import Rotation

    for e in [(0.1, -0.2, 0.3), (0.0, 0.5, 0.0), (-0.4, 0.05, 0.2)]:
        w, x, y, z = mapping.euler_to_quaternion(*e)
        q = Rotation.from_euler("xyz", e).as_quat()       # extrinsic x, y, z = Blender's 'XYZ' mode
        assert np.allclose([x, y, z, w], q) or np.allclose([x, y, z, w], -q)
    assert math.isclose(sum(c * c for c in mapping.euler_to_quaternion(0.3, 0.2, 0.1)), 1.0)


def test_readers_read_what_the_engine_writes(tmp_path, rng):
    verts = rng.normal(size=(7, 468, 3)).astype(np.float32)
    pointcache.write_pc2(tmp_path / "a.pc2", verts)
    with results.PointCache(tmp_path / "a.pc2") as pc:
        assert (pc.header.points, pc.header.samples) == (468, 7)
        np.testing.assert_array_equal(np.asarray(pc.frame(6)).reshape(468, 3), verts[6])
        with pytest.raises(IndexError):
            pc.frame(7)
    from lipsync_engine.face import topology
    topo = topology.load_topology()
    uv = rng.uniform(0, 1, (468, 2))
    pointcache.write_obj(tmp_path / "h.obj", topo.vertices, topo.triangles, uv, texture="t.png")
    ours, theirs = results.read_obj(tmp_path / "h.obj"), pointcache.read_obj(tmp_path / "h.obj")
    np.testing.assert_allclose(ours.vertices, theirs.vertices)
    assert ours.faces == [tuple(f) for f in theirs.faces.tolist()] and ours.material_library == "h.mtl"
    np.testing.assert_allclose(np.asarray(ours.uvs), uv, atol=1e-6)
    (tmp_path / "bad.pc2").write_bytes(b"POINTCACHE2\0" + b"\0" * 8)
    with pytest.raises(results.ResultError, match="bad.pc2: not a PC2 point cache"):
        results.PointCache(tmp_path / "bad.pc2")
    with pytest.raises(results.ResultError, match="result.json: prediction manifest .* not found"):
        results.read_prediction(tmp_path)
    assert results.engine_to_blender(1, 2, 3) == (1, -3, 2) and results.blender_to_engine(1, -3, 2) == (1, 2, 3)


def test_engine_environment_steps(tmp_path):
    lock = engine_env.requirements_file()
    torch, pins = engine_env.split_requirements(lock.read_text())
    assert torch == "torch==2.13.0" and "mediapipe==0.10.21" in pins
    assert not [p for p in pins if p.split("==")[0].lower() in engine_env.SKIPPED_REQUIREMENTS]
    makefile = (lock.parent / "Makefile").read_text()
    assert f"install -q --disable-pip-version-check {torch}" in makefile     # the same pin as `make venv`
    jobs = engine_env.venv_jobs("/usr/bin/python3.11", tmp_path / "venv", lock, tmp_path / "logs", lock.parent)
    assert [j.label for j in jobs] == ["Create environment", "Install torch", "Install engine packages",
                                       "Check engine"]
    assert jobs[0].command == ["/usr/bin/python3.11", "-m", "venv", str(tmp_path / "venv")]
    assert jobs[1].command[-1] == torch and "--no-deps" in jobs[2].command
    assert jobs[3].command[-2:] == ["--json", "info"] and not jobs[0].protocol and jobs[3].protocol
    assert (tmp_path / "logs" / "engine-requirements.txt").read_text().split() == pins


def test_non_protocol_job_streams_lines_as_status(tmp_path):
    job = client.EngineJob("pip", [sys.executable, "-c", "print('Collecting torch'); print('Installed')"],
                           protocol=False).start()
    seen = []
    outcome = job.wait(30, on_message=seen.append)
    assert outcome.ok and [m.payload["message"] for m in seen] == ["Collecting torch", "Installed"]
    failing = client.EngineJob("pip", [sys.executable, "-c", "import sys; print('no net'); sys.exit(1)"],
                               protocol=False).start().wait(30)
    assert failing.status == "error" and "exited with code 1" in failing.error


def test_the_addon_imports_only_bpy_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"bpy", "bpy_extras", "addon_utils", "mathutils"}
    for path in ADDON.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in allowed, f"{path.name} imports {m}"
