"""Name matching, mapping files and the presets of blendshape_rigs/presets (synthetic data only)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lipsync_engine.core.errors import InputError
from lipsync_engine.rig.names import (ARKIT_NAMES, LIVELINK_SHAPES, ClassifierPreset, LinearPreset, arkit_index,
                                  best_preset, convert_coefficients, list_presets, load_mapping_file, load_preset,
                                  match_names, normalize_name, reorder_to_arkit)

EXPECTED_PRESETS = {"arkit", "livelinkface", "cc4", "vrm", "visemes_oculus", "rhubarb"}
OCULUS_VISEMES = ("viseme_sil", "viseme_PP", "viseme_FF", "viseme_TH", "viseme_DD", "viseme_kk", "viseme_CH",
                  "viseme_SS", "viseme_nn", "viseme_RR", "viseme_aa", "viseme_E", "viseme_I", "viseme_O", "viseme_U")


def arkit_vector(**values) -> np.ndarray:
    """(1, 52) ARKit coefficients with the given names set."""
    c = np.zeros((1, len(ARKIT_NAMES)))
    for k, v in values.items():
        c[0, arkit_index(k)] = v
    return c


# --- normalization and matching --------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["jawOpen", "JawOpen", "jaw_open", "Jaw Open", "JAW-OPEN", "jaw.open",
                                      "jaw_Open "])
def test_normalize_ignores_case_and_separators(spelling):
    assert normalize_name(spelling) == normalize_name("jawOpen") == "jawopen"
    assert ARKIT_NAMES[arkit_index(spelling)] == "jawOpen"


def test_match_names_spellings_and_unmapped_reported():
    keys = ["JawOpen", "jaw_open", "Jaw Open", "eye_blink_left", "Hat", "MouthSmileRight", "Basis"]
    m = match_names(keys, ARKIT_NAMES)
    assert m.assignments == {"JawOpen": "jawOpen", "jaw_open": "jawOpen", "Jaw Open": "jawOpen",
                             "eye_blink_left": "eyeBlinkLeft", "MouthSmileRight": "mouthSmileRight"}
    assert m.unmapped_keys == ("Hat", "Basis")                  # reported, in key order
    assert len(m.unused_channels) == 52 - 3 and "tongueOut" in m.unused_channels
    assert "Hat" in m.report() and "Basis" in m.report()


def test_explicit_mapping_file_wins_and_nulls_are_reported(tmp_path):
    path = tmp_path / "my character.json"
    path.write_text(json.dumps({"format": "lipsync3d-shape-key-mapping",
                                "mapping": {"Mouth_Open_Big": "JAW OPEN", "Jaw Open": "mouthClose", "Hat": None}}))
    mapping = load_mapping_file(path)
    m = match_names(["Mouth_Open_Big", "jaw_open", "Hat", "Glasses"], ARKIT_NAMES, explicit=mapping)
    assert m.assignments == {"Mouth_Open_Big": "jawOpen", "jaw_open": "mouthClose"}
    assert m.ignored_keys == ("Hat",) and m.unmapped_keys == ("Glasses",)
    assert "Hat" in m.report() and "Glasses" in m.report()


def test_explicit_mapping_to_unknown_channel_raises():
    with pytest.raises(ValueError, match="not a channel name"):
        match_names(["Jaw"], ARKIT_NAMES, explicit={"Jaw": "jawOpenWide"})


def test_mapping_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mapping": {"a": 3}}))
    with pytest.raises(InputError, match="bad.json"):
        load_mapping_file(bad)
    with pytest.raises(InputError, match="not found"):
        load_mapping_file(tmp_path / "missing.json")


def test_aliases_match():
    vrm = load_preset("vrm")
    m = match_names(["aa", "blink_left", "Happy", "Neutral"], vrm.outputs, aliases=vrm.aliases)
    assert m.assignments == {"aa": "A", "blink_left": "Blink_L", "Happy": "Joy"}
    assert m.unmapped_keys == ("Neutral",)


def test_reorder_to_arkit_reports_missing_and_rejects_unknown():
    c = np.array([[0.3, 0.7]])
    arkit, missing = reorder_to_arkit(c, ["JawOpen", "mouth_close"])
    assert arkit[0, ARKIT_NAMES.index("jawOpen")] == 0.3 and arkit[0, ARKIT_NAMES.index("mouthClose")] == 0.7
    assert len(missing) == 50 and "jawOpen" not in missing
    with pytest.raises(ValueError, match="not one of the 52"):
        reorder_to_arkit(c, ["jawOpen", "smirk"])
    with pytest.raises(ValueError, match="twice"):
        reorder_to_arkit(c, ["jawOpen", "Jaw_Open"])


# --- presets ---------------------------------------------------------------------------------

def test_all_presets_present_and_documented():
    assert set(list_presets()) == EXPECTED_PRESETS
    for name in list_presets():
        p = load_preset(name)
        assert p.description and len(p.names) == len(set(p.names))


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_every_preset_maps_every_name_it_claims(name):
    p = load_preset(name)
    assert match_names(p.names, p.names).unmapped_keys == ()
    if isinstance(p, ClassifierPreset):
        for shape, proto in zip(p.shapes, p.prototypes):          # each prototype classifies as itself
            c = np.zeros((1, 52))
            c[0, [arkit_index(f) for f in p.features]] = proto
            assert p.classify(c)[0] == shape
        assert p.classify(np.zeros((1, 52)))[0] == p.rest
        return
    assert isinstance(p, LinearPreset)
    for i, out in enumerate(p.outputs):                             # every output can be driven
        drive = (p.matrix[i] > 0).astype(float)[None]
        assert p.apply(drive)[0, i] > 0 or p.bias[i] > 0, out
    if p.kind == "rename":
        assert np.all(p.matrix.sum(axis=1) == 1) and set(np.unique(p.matrix)) == {0.0, 1.0}
        covered = {ARKIT_NAMES[k] for k in np.flatnonzero(p.matrix.sum(axis=0))}
        assert covered | set(p.unused_arkit) == set(ARKIT_NAMES)  # every ARKit name: a target or declared absent


def test_rename_presets_values():
    ll = load_preset("livelinkface")
    assert set(ll.outputs) == set(LIVELINK_SHAPES)
    c = arkit_vector(jawLeft=0.4, mouthRight=0.9)
    out = dict(zip(ll.outputs, ll.apply(c)[0]))
    assert out["JawLeft"] == 0.4 and out["MouthRight"] == 0.9 and out["JawRight"] == 0.0
    names, values = convert_coefficients(np.array([[0.5, 1.0]]), ["mouthFunnel", "eye_look_in_left"], "cc4")
    cc4 = dict(zip(names, values[0]))
    assert cc4["Mouth_Funnel_Up_L"] == cc4["Mouth_Funnel_Down_R"] == 0.5
    assert cc4["Eye_L_Look_R"] == 1.0                             # the left eye looks in = to its right
    assert cc4["Jaw_Open"] == 0.0


def test_visemes_respond_to_their_mouth_shapes():
    p = load_preset("visemes_oculus")
    assert p.outputs == OCULUS_VISEMES
    cases = {"viseme_sil": {}, "viseme_aa": {"jawOpen": 0.8}, "viseme_U": {"mouthPucker": 0.9},
             "viseme_O": {"mouthFunnel": 0.8, "jawOpen": 0.2}, "viseme_PP": {"mouthClose": 0.5, "mouthPressLeft": 0.5,
                                                                         "mouthPressRight": 0.5},
             "viseme_FF": {"mouthRollLower": 0.8}}
    for expected, values in cases.items():
        out = p.apply(arkit_vector(**values))[0]
        assert p.outputs[int(np.argmax(out))] == expected, (expected, dict(zip(p.outputs, out.round(2))))
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_vrm_vowels_and_blinks():
    p = load_preset("vrm")
    out = dict(zip(p.outputs, p.apply(arkit_vector(jawOpen=0.7, eyeBlinkLeft=1.0))[0]))
    assert max("AIUEO", key=out.get) == "A"
    assert out["Blink_L"] == 1.0 and out["Blink_R"] == 0.0 and out["Blink"] == 0.5


def test_rhubarb_classification_sequence():
    p = load_preset("rhubarb")
    assert set(p.shapes) == set("ABCDEFGX") and p.display_names["A"] == "MBP"
    frames = [{}] * 3 + [{"jawOpen": 0.75}] * 3 + [{"mouthPucker": 0.7, "mouthFunnel": 0.3}] * 3 + [{}] * 3
    c = np.concatenate([arkit_vector(**f) for f in frames])
    assert "".join(p.classify(c)) == "XXXDDDFFFXXX"


def test_best_preset_picks_the_matching_naming():
    assert best_preset(["Eye_Blink_L", "Jaw_Open", "Mouth_Smile_L", "Brow_Drop_R"]) == "cc4"
    assert best_preset(["viseme_aa", "viseme_PP", "viseme_sil", "eyeBlinkLeft"]) == "visemes_oculus"
    assert best_preset(["A", "I", "U", "E", "O", "Blink"]) == "vrm"


def test_broken_preset_file_raises_input_error_naming_it(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"format": "lipsync3d-blendshape-preset", "kind": "linear", "description": "x",
                                "outputs": {"Open": {"weights": {"jawOpenn": 1.0}}}}))
    with pytest.raises(InputError, match=r"mine\.json.*jawOpenn"):
        load_preset(path)
    path.write_text("{not json")
    with pytest.raises(InputError, match="mine.json"):
        load_preset(str(path))


def test_user_preset_file_loads(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"format": "lipsync3d-blendshape-preset", "kind": "linear", "description": "mine",
                                "outputs": {"MouthOpen": {"weights": {"Jaw Open": 2.0}}}}))
    p = load_preset(path)
    np.testing.assert_allclose(p.apply(arkit_vector(jawOpen=0.3)), [[0.6]])


def test_a_preset_output_that_is_not_an_object_is_a_one_line_error(tmp_path):
    from lipsync_engine.core.errors import EngineError
    from lipsync_engine.rig.names import load_preset

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "lipsync3d-blendshape-preset", "kind": "linear", "description": "x", '
                   '"outputs": {"A": 3}}')
    with pytest.raises(EngineError, match=r"bad\.json: an entry is not a JSON object"):
        load_preset(bad)
