"""The add-on's operators on the synthetic demo with the real engine, in real Blender:
train a tiny model (cancel, then resume), predict from a sound strip, import the head,
drive a character, and render the head with the mouth open and closed."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from blender_addon.core import results
from blender_helpers import (emission_render_setup, engine_to_blender, evaluated_coords, make_character,
                             new_sound_strip, texture_as_emission)

bpy = pytest.importorskip("bpy")

START_FRAME = 11          # where the dialogue strip starts on the timeline
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_tiny_model_cancel_and_resume(scene, blender, prepared_demo, demo_video, tmp_path):
    ds, _, _ = prepared_demo
    ws = tmp_path / "ws"
    shutil.copytree(ds.path, ws / "speakers" / "demo")      # already prepared: prepare returns at once
    (ws / "speakers" / "demo" / "blendshapes.npy").unlink(missing_ok=True)   # trained_demo may have fitted it
    s = scene.lipsync3d
    s.workspace, s.speaker_name, s.quality, s.epochs = str(ws), "demo", 'TINY', 3
    s.videos.add().filepath = str(demo_video[0])
    runner = sys.modules[blender.__name__ + ".runner"]
    operators = sys.modules[blender.__name__ + ".operators"]

    class Probe(runner.EngineJobOperator):       # the modal operator's logic, driven by fake TIMER/ESC events
        build_jobs = operators.LIPSYNC3D_OT_train.build_jobs
        on_success = operators.LIPSYNC3D_OT_train.on_success

        def report(self, level, message):
            self.last = message

    probe = Probe()
    assert probe._begin(bpy.context)
    assert [j.label for j in probe._chain.jobs] == ["Prepare", "Fit blendshapes", "Train"]
    timer, deadline = SimpleNamespace(type='TIMER', value='NOTHING'), time.monotonic() + 240
    while not (probe._chain.index == 2 and "epoch 2/3" in probe._chain.current.progress.message):
        assert probe.modal(bpy.context, timer) == {'RUNNING_MODAL'} and time.monotonic() < deadline
        time.sleep(0.05)
    probe.modal(bpy.context, SimpleNamespace(type='ESC', value='PRESS'))
    state = {'RUNNING_MODAL'}
    while state == {'RUNNING_MODAL'}:
        state = probe.modal(bpy.context, timer)
        time.sleep(0.05)
    assert state == {'CANCELLED'} and "cancelled" in probe.last
    model = ws / "models" / "demo"
    first = json.loads((model / "config.json").read_text())
    assert first["epochs_done"] == 1 and (ws / "speakers" / "demo" / "blendshapes.npy").is_file()

    assert bpy.ops.lipsync3d.train() == {'FINISHED'}           # resumes (train --resume), fit is not redone
    config = json.loads((model / "config.json").read_text())
    assert config["epochs_done"] == 3 and config["model_id"] == first["model_id"]
    assert [h["epoch"] for h in config["history"]] == [1, 2, 3]
    assert config["dims"]["freq_channels"][0] <= 4                 # the tiny (1/32) width
    assert s.models[s.model_index].path == str(model) and s.models[s.model_index].summary.startswith("3 epochs")


def _openness(vertices: np.ndarray) -> np.ndarray:
    """Inner-lip gap (landmarks 13 and 14) per frame, engine units."""
    return vertices[:, 13, 1] - vertices[:, 14, 1]


@pytest.mark.slow
def test_predict_import_drive_and_render(scene, blender, trained_demo, demo_video, tmp_path):
    model_dir, _, _ = trained_demo
    s = scene.lipsync3d
    s.workspace = str(tmp_path / "ws")
    scene.render.fps, scene.render.fps_base = 25, 1.0
    sed = scene.sequence_editor_create()
    strip = new_sound_strip(sed, "Line 1", str(demo_video[0]), 2, START_FRAME)
    strip.frame_offset_start = 25                 # trimmed: the first second is not used
    strip.frame_offset_end = 25
    sed.active_strip = strip
    item = s.models.add()
    item.name, item.path = "demo", str(model_dir)
    character = make_character(["JAW_OPEN", "mouth-smile-left", "MOUTH_FUNNEL", "eye_blink_l", "Hat"])
    s.character, s.blinks, s.smoothing, s.audio_source = character, False, 0, 'STRIP'
    s.animation = 'SHAPE_KEYS'

    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    result = results.read_prediction(s.results[0].path)
    assert result.frames == strip.frame_final_duration == 100 and result.fps == 25.0
    assert result.start_s == pytest.approx(1.0) and s.results[0].frame_start == START_FRAME + 25
    first = START_FRAME + 25
    head = next(o for o in scene.objects if o.name.startswith("LipSync3D head"))
    with results.PointCache(result.file("pc2")) as pc:
        verts = np.stack([np.asarray(pc.frame(i)).reshape(-1, 3) for i in range(result.frames)])
    for i in (0, 37, 99):
        scene.frame_set(first + i)
        np.testing.assert_allclose(evaluated_coords(head), engine_to_blender(verts[i]), atol=1e-4)
    # the character: keyed values at given frames equal the prediction's coefficients
    track = results.read_coefficients(result.file("blendshapes_json"))
    key = character.data.shape_keys
    for i in (0, 50, 99):
        scene.frame_set(first + i)
        for kname, arkit in (("JAW_OPEN", "jawOpen"), ("mouth-smile-left", "mouthSmileLeft"),
                             ("MOUTH_FUNNEL", "mouthFunnel"), ("eye_blink_l", "eyeBlinkLeft")):
            assert key.key_blocks[kname].value == pytest.approx(track.frames[i][track.names.index(arkit)], abs=1e-5)
    assert "Hat" in bpy.context.window_manager.lipsync3d_job.last_report
    # predicting the same strip again reuses the folder (no engine run: no file of it is written again)
    folder = Path(s.results[0].path)
    folder = folder.parent if folder.name == "result.json" else folder
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()}
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    assert {f.name: f.stat().st_mtime_ns for f in folder.rglob("*") if f.is_file()} == stamps
    # render: the face region differs between an open- and a closed-mouth frame
    for obj in list(scene.objects):
        if obj.name.startswith("LipSync3D head") and obj != head:
            bpy.data.objects.remove(obj)
    bpy.data.objects.remove(character)
    gap = _openness(verts)
    open_i, closed_i = int(np.argmax(gap)), int(np.argmin(gap))
    assert gap[open_i] - gap[closed_i] > 0.3
    texture_as_emission(head)
    render = emission_render_setup(scene, head, size=96, samples=4)
    frames = {i: render(first + i, tmp_path / f"r{i}.png").astype(float) for i in (open_i, closed_i)}
    face = (slice(20, 90), slice(20, 76))
    diff = np.abs(frames[open_i][face] - frames[closed_i][face]).mean()
    assert diff > 4.0, f"open and closed mouth renders differ by only {diff:.2f} levels"


def test_a_batch_and_repeated_predictions_use_one_warm_engine(scene, blender, untrained_model, tmp_path):
    """Issue 18, with the real engine: a batch of lines is one request to one `lipsync serve`
    process, which stays up for the next Predict and through a cancelled one (Esc, with progress
    in the status bar); its prediction folders equal a one-shot `lipsync predict`'s, number for
    number; unregister (stop_all) ends it. The model is untrained (conftest): no training."""
    import subprocess

    import soundfile

    from lipsync_engine.demo.speech import synthesize_speech

    runner = sys.modules[blender.__name__ + ".runner"]
    operators = sys.modules[blender.__name__ + ".operators"]
    runner.stop_all()                                          # no server of an earlier test
    speech = synthesize_speech(8.0, 16000, seed=4).samples
    wavs = []
    for i in range(4):
        wavs.append(tmp_path / f"line {i}.wav")
        soundfile.write(wavs[-1], speech[i * 32000:(i + 1) * 32000], 16000)       # 2 s each
    soundfile.write(tmp_path / "long.wav", np.resize(speech, 60 * 16000), 16000)
    s = scene.lipsync3d
    s.workspace = str(tmp_path / "ws")
    scene.render.fps, scene.render.fps_base = 25, 1.0
    sed = scene.sequence_editor_create()
    for i, wav in enumerate(wavs[:3]):
        new_sound_strip(sed, f"Line {i}", str(wav), 2, 1 + 60 * i)
    item = s.models.add()
    item.name, item.path = "untrained", str(untrained_model)
    s.audio_source, s.channel, s.import_head, s.drive_after, s.engine_preview = 'CHANNEL', 2, True, False, False
    assert runner.warm_server() is None
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}          # the batch: three lines
    server = runner.warm_server()
    assert server is not None and len(s.results) == 3
    assert len([o for o in scene.objects if o.name.startswith("LipSync3D head")]) == 3
    first = Path(bpy.path.abspath(s.results[0].path))
    out = tmp_path / "one shot"
    r = subprocess.run([sys.executable, "-m", "lipsync_engine", "--json", "predict", str(untrained_model),
                        str(wavs[0]), "-o", str(out), "--fps", "25.000000", "--start", "0.000000", "--end",
                        "2.000000", "--no-preview", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-500:]
    with np.load(first / "vertices.npz") as a, np.load(out / "vertices.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in ("vertices", "blendshapes", "silent", "times"))
    assert (first / "mouth_cues.tsv").read_text() == (out / "mouth_cues.tsv").read_text()
    new_sound_strip(sed, "Line 3", str(wavs[3]), 2, 200)        # a new line: predicted alone, same engine
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    assert runner.warm_server() is server and server.alive and len(s.results) == 4

    class Probe(runner.EngineJobOperator):                     # the modal operator, driven by TIMER / ESC
        build_jobs = operators.LIPSYNC3D_OT_predict.build_jobs
        on_success = operators.LIPSYNC3D_OT_predict.on_success

        def report(self, level, message):
            self.last = message

    s.audio_source, s.audio_file = 'FILE', str(tmp_path / "long.wav")
    probe, timer = Probe(), SimpleNamespace(type='TIMER', value='NOTHING')
    assert probe._begin(bpy.context)
    deadline = time.monotonic() + 120
    while probe._chain.current.progress.done == 0:
        assert probe.modal(bpy.context, timer) == {'RUNNING_MODAL'} and time.monotonic() < deadline
        time.sleep(0.05)
    assert bpy.context.window_manager.lipsync3d_job.text.startswith("Predict long.wav: predict ")
    probe.modal(bpy.context, SimpleNamespace(type='ESC', value='PRESS'))
    state = {'RUNNING_MODAL'}
    while state == {'RUNNING_MODAL'} and time.monotonic() < deadline:
        state = probe.modal(bpy.context, timer)
        time.sleep(0.05)
    assert state == {'CANCELLED'} and "cancelled" in probe.last
    assert runner.warm_server() is server and server.alive       # the engine stays warm
    s.audio_source = 'CHANNEL'
    scene.render.fps = 24                                       # every line again, at a new frame rate
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'} and runner.warm_server() is server
    runner.stop_all()
    assert runner.warm_server() is None and server._proc.poll() is not None
