"""The add-on's live mode (real bpy, the real engine on a file input) and Dialogue from text:
the streamed coefficients drive the character, the recorded take keys equal them, and the
recorded audio / the spoken text land in the VSE."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import soundfile

from blender_addon.core import results
from blender_helpers import make_character

bpy = pytest.importorskip("bpy")

START_FRAME = 7
KEYS = (("JAW_OPEN", "jawOpen"), ("mouth-smile-left", "mouthSmileLeft"), ("MOUTH_FUNNEL", "mouthFunnel"))


def _setup(scene, tmp_path, model_dir):
    s = scene.lipsync3d
    s.workspace = str(tmp_path / "ws")
    scene.render.fps, scene.render.fps_base = 30, 1.0
    item = s.models.add()
    item.name, item.path = "demo", str(model_dir)
    character = make_character([k for k, _ in KEYS] + ["eye_blink_l"])
    s.character, s.blinks, s.smoothing, s.strength = character, False, 0, 0.8
    scene.frame_current = START_FRAME
    return s, character


@pytest.mark.slow
def test_live_file_input_records_a_take(scene, blender, trained_demo, tmp_path):
    from lipsync_engine.demo.speech import synthesize_speech

    wav = tmp_path / "mic take.wav"
    x = synthesize_speech(2.5, 16000, seed=5).samples
    soundfile.write(wav, np.concatenate([x, np.zeros(4000, np.float32)]), 16000)
    s, character = _setup(scene, tmp_path, trained_demo[0])
    live = scene.lipsync3d_live
    live.source, live.audio_file, live.record = 'FILE', str(wav), True
    assert bpy.ops.lipsync3d.live(as_fast_as_possible=True) == {'FINISHED'}
    streamed = sys.modules[f"{blender.__name__}.live"].LIPSYNC3D_OT_live.streamed
    assert [i for i, _ in streamed] == list(range(int(2.75 * 30 + 0.5)))
    assert max(v["JAW_OPEN"] for _, v in streamed) > 0
    key = character.data.shape_keys
    takes = [st for t in key.animation_data.nla_tracks for st in t.strips if "Live" in st.action.name]
    assert len(takes) == 1 and takes[0].action.name.startswith("LipSync3D")    # a take on the NLA
    assert START_FRAME - 3 <= takes[0].frame_start <= START_FRAME           # with the ease to rest before it
    for i, values in streamed[::5]:
        scene.frame_set(START_FRAME + i)
        for name, value in values.items():
            assert key.key_blocks[name].value == pytest.approx(value, abs=1e-4)
    result = results.read_prediction(s.results[-1].path)
    assert result.frames == len(streamed) and s.results[-1].frame_start == START_FRAME
    strips = list(scene.sequence_editor.strips_all)
    assert [(st.type, st.frame_final_start) for st in strips] == [('SOUND', START_FRAME)]
    assert strips[0].sound.filepath.endswith("audio.wav")


@pytest.mark.slow
def test_dialogue_from_text(scene, blender, trained_demo, tmp_path):
    s, character = _setup(scene, tmp_path, trained_demo[0])
    s.import_head, s.drive_after = False, True
    scene.lipsync3d_live.text = "Hello there, how are you today?"
    assert bpy.ops.lipsync3d.say() == {'FINISHED'}
    strips = list(scene.sequence_editor.strips_all)
    assert len(strips) == 1 and strips[0].type == 'SOUND' and strips[0].frame_final_start == START_FRAME
    result = results.read_prediction(s.results[-1].path)
    assert 1.0 < result.frames / 30 < 5.0 and s.results[-1].frame_start == START_FRAME
    ad = character.data.shape_keys.animation_data
    assert any(st.action.get("lipsync3d_line") for t in ad.nla_tracks for st in t.strips)   # the line's take
