"""Live Link Face CSV, JSON animation and Rhubarb mouth-cue exports (synthetic data only)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lipsync_engine.core.errors import InputError
from lipsync_engine.io.exports import (frame_timecode, mouth_cues, read_coefficients_json, read_livelink_csv,
                                    read_rhubarb_json, timecode_seconds, write_coefficients_json,
                                    write_livelink_csv, write_rhubarb_json, write_rhubarb_tsv)
from lipsync_engine.rig.names import ARKIT_NAMES

# The header of a Live Link Face take, typed here independently of the engine's constant.
STANDARD_HEADER = (
    b"Timecode,BlendShapeCount,EyeBlinkLeft,EyeLookDownLeft,EyeLookInLeft,EyeLookOutLeft,EyeLookUpLeft,"
    b"EyeSquintLeft,EyeWideLeft,EyeBlinkRight,EyeLookDownRight,EyeLookInRight,EyeLookOutRight,EyeLookUpRight,"
    b"EyeSquintRight,EyeWideRight,JawForward,JawRight,JawLeft,JawOpen,MouthClose,MouthFunnel,MouthPucker,"
    b"MouthRight,MouthLeft,MouthSmileLeft,MouthSmileRight,MouthFrownLeft,MouthFrownRight,MouthDimpleLeft,"
    b"MouthDimpleRight,MouthStretchLeft,MouthStretchRight,MouthRollLower,MouthRollUpper,MouthShrugLower,"
    b"MouthShrugUpper,MouthPressLeft,MouthPressRight,MouthLowerDownLeft,MouthLowerDownRight,MouthUpperUpLeft,"
    b"MouthUpperUpRight,BrowDownLeft,BrowDownRight,BrowInnerUp,BrowOuterUpLeft,BrowOuterUpRight,CheekPuff,"
    b"CheekSquintLeft,CheekSquintRight,NoseSneerLeft,NoseSneerRight,TongueOut,HeadYaw,HeadPitch,HeadRoll,"
    b"LeftEyeYaw,LeftEyePitch,LeftEyeRoll,RightEyeYaw,RightEyePitch,RightEyeRoll"
)
TIMECODE = re.compile(r"^\d{2}:\d{2}:\d{2}:\d{2}\.\d{3}$")


@pytest.fixture
def coefficients(rng):
    return rng.uniform(0.0, 1.0, (40, 52))


# --- Live Link Face --------------------------------------------------------------------------

def test_livelink_header_is_byte_identical_and_rows_have_61_values(tmp_path, coefficients):
    path = tmp_path / "take é.csv"
    missing = write_livelink_csv(path, coefficients, ARKIT_NAMES, fps=30.0)
    raw = path.read_bytes()
    assert raw.split(b"\n")[0] == STANDARD_HEADER
    assert missing == ()
    rows = raw.decode().strip("\n").split("\n")[1:]
    assert len(rows) == 40
    for i, row in enumerate(rows):
        cells = row.split(",")
        assert len(cells) == 63 and cells[1] == "61" and TIMECODE.match(cells[0])
        assert cells[0] == frame_timecode(i, 30.0)
    assert not list(tmp_path.glob(".*tmp*"))                  # written atomically, nothing left behind


def test_livelink_round_trip_and_column_order(tmp_path, coefficients):
    path = tmp_path / "take.csv"
    pose = np.tile(np.arange(9.0), (40, 1))
    write_livelink_csv(path, coefficients, ARKIT_NAMES, fps=30.0, start_timecode="01:02:03:04.000", pose=pose)
    take = read_livelink_csv(path, fps=30.0)
    np.testing.assert_allclose(take.coefficients, coefficients, atol=1e-6)
    np.testing.assert_allclose(take.pose, pose)
    np.testing.assert_allclose(take.seconds, 3723 + 4 / 30 + np.arange(40) / 30, atol=1e-9)
    header = path.read_text().split("\n")[0].split(",")
    first = path.read_text().split("\n")[1].split(",")
    for column, name in (("JawLeft", "jawLeft"), ("JawRight", "jawRight"), ("MouthRight", "mouthRight")):
        assert float(first[header.index(column)]) == pytest.approx(coefficients[0, ARKIT_NAMES.index(name)], abs=1e-6)


def test_livelink_partial_names_are_reported_and_zero(tmp_path):
    path = tmp_path / "mouth.csv"
    missing = write_livelink_csv(path, np.full((3, 2), 0.5), ["JawOpen", "mouth_close"], fps=25.0)
    assert len(missing) == 50 and "eyeBlinkLeft" in missing
    take = read_livelink_csv(path, fps=25.0)
    assert take.coefficients[:, ARKIT_NAMES.index("jawOpen")].tolist() == [0.5] * 3
    assert take.coefficients.sum() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="not one of the 52"):
        write_livelink_csv(path, np.zeros((3, 1)), ["smirk"], fps=25.0)


def test_reads_a_take_as_the_app_writes_it(tmp_path):
    header = STANDARD_HEADER.decode().replace("BlendShapeCount", "BlendshapeCount")
    row = ["14:03:52:28.207", "61"] + ["0.25"] * 52 + ["0.1"] * 9
    path = tmp_path / "MySlate_1_iPhone.csv"
    path.write_text(header + "\r\n" + ",".join(row) + "\r\n")
    take = read_livelink_csv(path, fps=60.0)
    assert take.coefficients.shape == (1, 52) and np.all(take.coefficients == 0.25)
    assert take.seconds[0] == pytest.approx(14 * 3600 + 3 * 60 + 52 + 28.207 / 60)


@pytest.mark.parametrize("frame, fps, expected", [
    (0, 30.0, "00:00:00:00.000"), (29, 30.0, "00:00:00:29.000"), (30, 30.0, "00:00:01:00.000"),
    (45, 60.0, "00:00:00:45.000"), (60 * 3600, 60.0, "01:00:00:00.000"), (30, 29.97, "00:00:01:00.030"),
])
def test_frame_timecode_known_values(frame, fps, expected):
    assert frame_timecode(frame, fps) == expected
    assert timecode_seconds(expected, fps) == pytest.approx(frame / fps, abs=1e-9)


def test_frame_timecode_never_overflows():
    for fps in (23.976, 29.97, 59.94, 25.0):
        for i in range(400):
            tc = frame_timecode(i, fps)
            ff, sub = int(tc[9:11]), int(tc[12:])
            assert 0 <= ff < np.ceil(fps) and 0 <= sub <= 999
            assert timecode_seconds(tc, fps) == pytest.approx(i / fps, abs=0.6e-3 / fps)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_livelink_csv(tmp_path / "no" / "x.csv", np.zeros((1, 52)), ARKIT_NAMES, fps=30.0)
    bad = tmp_path / "bad.csv"
    bad.write_text("Frame,JawOpen\n0,0.5\n")
    with pytest.raises(InputError, match="bad.csv"):
        read_livelink_csv(bad)
    with pytest.raises(ValueError, match="fps"):
        frame_timecode(3, 0.0)


# --- JSON animation --------------------------------------------------------------------------

def test_coefficients_json_round_trip(tmp_path, coefficients):
    path = tmp_path / "anim.json"
    write_coefficients_json(path, coefficients, ARKIT_NAMES, fps=25.0, metadata={"speaker": "demo"})
    d = json.loads(path.read_text())
    assert d["names"] == list(ARKIT_NAMES) and d["fps"] == 25.0 and d["frame_count"] == 40
    assert len(d["frames"]) == 40 and len(d["frames"][0]) == 52
    names, frames, fps = read_coefficients_json(path)
    assert names == ARKIT_NAMES and fps == 25.0
    np.testing.assert_allclose(frames, coefficients, atol=1e-6)
    with pytest.raises(ValueError, match="frames"):
        write_coefficients_json(path, coefficients[:, :3], ARKIT_NAMES, fps=25.0)


# --- Rhubarb ---------------------------------------------------------------------------------

def test_mouth_cues_merge_runs_on_the_10ms_grid():
    cues, duration = mouth_cues(list("XXXAAABBBBBCX"), fps=25.0)
    assert [(c.start, c.end, c.value) for c in cues] == [
        (0.0, 0.12, "X"), (0.12, 0.24, "A"), (0.24, 0.44, "B"), (0.44, 0.48, "C"), (0.48, 0.52, "X")]
    assert duration == 0.52
    cues, _ = mouth_cues(list("XAXBBB"), fps=120.0)              # sub-10 ms runs are absorbed
    assert all(c.end > c.start for c in cues)
    assert all(a.end == b.start for a, b in zip(cues, cues[1:]))


def test_rhubarb_tsv_format(tmp_path):
    path = tmp_path / "cues.tsv"
    write_rhubarb_tsv(path, list("XXDDDDCBXX"), fps=25.0)
    lines = path.read_text().splitlines()
    assert lines == ["0.00\tX", "0.08\tD", "0.24\tC", "0.28\tB", "0.32\tX", "0.40\tX"]


def test_rhubarb_json_format_and_preston_blair_names(tmp_path):
    path = tmp_path / "cues.json"
    write_rhubarb_json(path, list("XXDDDDCBXX"), fps=25.0, sound_file="line1.wav",
                       rename={"D": "AI", "C": "E", "B": "etc", "X": "rest"})
    d = json.loads(path.read_text())
    assert d["metadata"] == {"soundFile": "line1.wav", "duration": 0.4}
    assert d["mouthCues"][0] == {"start": 0.0, "end": 0.08, "value": "rest"}
    assert [c["value"] for c in d["mouthCues"]] == ["rest", "AI", "E", "etc", "rest"]
    cues = read_rhubarb_json(path)
    assert cues[-1].end == 0.4 and all(a.end == b.start for a, b in zip(cues, cues[1:]))
