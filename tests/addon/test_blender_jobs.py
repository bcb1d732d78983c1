"""Engine jobs from Blender's side against a fake engine: errors in the UI, crashes, a missing
engine, and the modal path (timer ticks that never block, Esc and the Cancel button)."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import pytest
from blender_helpers import action_fcurves, make_character, new_sound_strip, vse_strips

bpy = pytest.importorskip("bpy")


def _videos(scene, tmp_path, n=2):
    for i in range(n):
        p = tmp_path / f"take {i}.mp4"
        p.write_bytes(b"not really a video; the fake engine does not read it")
        scene.lipsync3d.videos.add().filepath = str(p)
    scene.lipsync3d.speaker_name = "anna"
    scene.lipsync3d.workspace = str(tmp_path / "ws")


def test_train_runs_prepare_fit_train_with_the_right_command_lines(fake_engine, scene, tmp_path):
    log = fake_engine("ok")
    _videos(scene, tmp_path)
    scene.lipsync3d.quality, scene.lipsync3d.epochs = 'TINY', 3
    assert bpy.ops.lipsync3d.train() == {'FINISHED'}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ws = tmp_path / "ws"
    assert [c[1] for c in calls] == ["prepare", "fit", "train"]
    assert calls[0] == ["--json", "prepare", str(tmp_path / "take 0.mp4"), str(tmp_path / "take 1.mp4"), "-o",
                        str(ws / "speakers" / "anna")]
    assert calls[2] == ["--json", "train", str(ws / "speakers" / "anna"), "-o", str(ws / "models" / "anna"),
                        "--epochs", "3", "--device", "cpu", "--width", "0.03125"]
    assert bpy.context.window_manager.lipsync3d_job.running is False
    # Shape Epochs: the mouth shapes stop learning after them (lipsync train --geometry-epochs)
    scene.lipsync3d.speaker_name, scene.lipsync3d.shape_epochs = "ben", 2
    assert bpy.ops.lipsync3d.train() == {'FINISHED'}
    last = json.loads(log.read_text().splitlines()[-1])
    assert last[1] == "train" and last[-2:] == ["--geometry-epochs", "2"]


def test_engine_error_is_shown_in_the_ui(fake_engine, scene, tmp_path):
    fake_engine("error")
    _videos(scene, tmp_path, 1)
    with pytest.raises(RuntimeError, match="Prepare: clip.mp4: no face found in any of its 75 frames"):
        bpy.ops.lipsync3d.train()
    assert bpy.context.window_manager.lipsync3d_job.last_error.endswith("no face found in any of its 75 frames")


def test_engine_crash_is_shown_with_its_log(fake_engine, scene, tmp_path):
    fake_engine("crash")
    _videos(scene, tmp_path, 1)
    with pytest.raises(RuntimeError, match="signal 9 before finishing"):
        bpy.ops.lipsync3d.train()
    job = bpy.context.window_manager.lipsync3d_job
    assert "MemoryError: fake out of memory" in job.last_error
    with open(job.last_log, encoding="utf-8") as f:
        assert "Traceback (most recent call last)" in f.read()
    assert bpy.ops.lipsync3d.show_log() == {'FINISHED'}
    assert any("MemoryError" in t.as_string() for t in bpy.data.texts)


def test_missing_engine_is_shown_in_the_ui(scene, blender, tmp_path):
    prefs = bpy.context.preferences.addons[blender.__name__].preferences
    prefs.engine_python = str(tmp_path / "no-such-env" / "bin" / "python")
    with pytest.raises(RuntimeError, match="engine Python not found or not runnable: .*no-such-env"):
        bpy.ops.lipsync3d.check_engine()
    _videos(scene, tmp_path, 1)
    with pytest.raises(RuntimeError, match="no-such-env"):
        bpy.ops.lipsync3d.train()


def test_bad_inputs_are_one_line_errors(scene, blender, tmp_path):
    scene.lipsync3d.workspace = str(tmp_path / "ws")
    with pytest.raises(RuntimeError, match="add at least one video"):
        bpy.ops.lipsync3d.train()
    scene.lipsync3d.videos.add().filepath = str(tmp_path / "gone.mp4")
    with pytest.raises(RuntimeError, match="gone.mp4: video not found"):
        bpy.ops.lipsync3d.train()
    with pytest.raises(RuntimeError, match="no trained model: train one"):
        bpy.ops.lipsync3d.predict()
    model = tmp_path / "ws" / "models" / "anna"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"format": "lipsync3d-model", "epochs_done": 3, "fps": 25}))
    scene.sequence_editor_create()
    with pytest.raises(RuntimeError, match="make a sound strip active"):
        bpy.ops.lipsync3d.predict()
    assert scene.lipsync3d.models[0].summary == "3 epochs, ? frames, 25 fps"
    with pytest.raises(RuntimeError, match="no prediction yet"):
        bpy.ops.lipsync3d.import_head()


def _probe(blender, operator_name: str):
    """The operator's job logic on a plain object (Blender operators cannot be made from Python):
    the same EngineJobOperator methods the modal operator runs on each TIMER event."""
    runner = sys.modules[blender.__name__ + ".runner"]
    operators = sys.modules[blender.__name__ + ".operators"]
    op_cls = getattr(operators, operator_name)

    class Probe(runner.EngineJobOperator):
        build_jobs = op_cls.build_jobs
        on_success = op_cls.on_success

        def __init__(self):
            self.reports = []

        def report(self, level, message):
            self.reports.append((set(level), message))
    return Probe()


@pytest.mark.parametrize("how", ["esc", "cancel button"])
def test_modal_ticks_never_block_and_cancel_stops_the_chain(fake_engine, scene, blender, tmp_path, how):
    log = fake_engine("slow")
    _videos(scene, tmp_path, 1)
    probe = _probe(blender, "LIPSYNC3D_OT_train")
    ctx = bpy.context
    assert probe._begin(ctx)
    timer = SimpleNamespace(type='TIMER', value='NOTHING')
    slowest, state = 0.0, {'RUNNING_MODAL'}
    while probe._chain.current.progress.done < 3:
        t0 = time.perf_counter()
        state = probe.modal(ctx, timer)
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.02)
    assert state == {'RUNNING_MODAL'} and ctx.window_manager.lipsync3d_job.running
    assert probe.modal(ctx, SimpleNamespace(type='MOUSEMOVE', value='NOTHING')) == {'PASS_THROUGH'}
    if how == "esc":
        assert probe.modal(ctx, SimpleNamespace(type='ESC', value='PRESS')) == {'RUNNING_MODAL'}
    else:
        assert bpy.ops.lipsync3d.cancel_job() == {'FINISHED'}
    deadline = time.monotonic() + 20
    while state == {'RUNNING_MODAL'} and time.monotonic() < deadline:
        t0 = time.perf_counter()
        state = probe.modal(ctx, timer)
        slowest = max(slowest, time.perf_counter() - t0)
        time.sleep(0.02)
    assert state == {'CANCELLED'}
    assert slowest < 0.05, f"a modal tick took {slowest * 1000:.0f} ms"
    assert any("cancelled" in m for _, m in probe.reports)
    assert len(log.read_text().splitlines()) == 1          # prepare was stopped; fit and train never started
    assert ctx.window_manager.lipsync3d_job.running is False
    assert sys.modules[blender.__name__ + ".runner"].active_chain() is None


def test_only_one_job_at_a_time(fake_engine, scene, blender, tmp_path):
    fake_engine("slow")
    _videos(scene, tmp_path, 1)
    first = _probe(blender, "LIPSYNC3D_OT_train")
    assert first._begin(bpy.context)
    try:
        second = _probe(blender, "LIPSYNC3D_OT_train")
        assert not second._begin(bpy.context)
        assert "another LipSync3D job is running" in second.reports[0][1]
    finally:
        first._chain.kill()
        first._chain.wait(20)
        first._cleanup(bpy.context)


def test_check_engine_reports_versions_of_the_bundled_engine(scene, blender):
    from lipsync_engine.core.version import __version__

    assert bpy.ops.lipsync3d.check_engine() == {'FINISHED'}
    info = bpy.context.preferences.addons[blender.__name__].preferences.engine_info
    assert info.startswith(f"lipsync {__version__} (Python 3.11") and "device cpu" in info
    repo = bpy.context.preferences.extensions.repos["lipsync_test"].directory
    assert f"engine: {repo}/lipsync3d/engine/lipsync_engine" in info      # the engine inside the installed zip


def _wav(path, seconds: float, rate: int = 16000):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * int(seconds * rate))
    return path


def _fake_model(scene, tmp_path):
    model = tmp_path / "ws" / "models" / "anna"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"format": "lipsync3d-model", "epochs_done": 3, "fps": 25}))
    scene.lipsync3d.workspace = str(tmp_path / "ws")
    return model


def test_channel_batch_predicts_each_strip_where_it_sits(fake_engine, scene, tmp_path, monkeypatch):
    """Frames follow the strips: trims and the scene's fractional fps reach the engine; each strip gets
    its head (visible during its strip only) and the character one action with rest keys between."""
    from handmade import make_result

    log = fake_engine("ok")
    make_result(tmp_path / "canned", frames=6, fps=29.97)
    monkeypatch.setenv("LIPSYNC_FAKE_RESULT", str(tmp_path / "canned"))
    model = _fake_model(scene, tmp_path)
    scene.render.fps, scene.render.fps_base = 30, 1.001
    sed = scene.sequence_editor_create()
    a = new_sound_strip(sed, "Line A", str(_wav(tmp_path / "a.wav", 2.0)), 3, 1)
    b = new_sound_strip(sed, "Line B", str(_wav(tmp_path / "b.wav", 2.0)), 3, 100)
    b.frame_offset_start = 12                             # trimmed: starts 12 frames into its sound
    new_sound_strip(sed, "Other channel", str(_wav(tmp_path / "c.wav", 1.0)), 4, 1)
    s = scene.lipsync3d
    s.audio_source, s.channel, s.animation = 'CHANNEL', 3, 'MESH_CACHE'
    s.character, s.blinks = make_character(["jawOpen"]), False
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[1] for c in calls] == ["predict", "predict"]
    fps = 30 / 1.001

    def arg(call, name):
        return float(call[call.index(name) + 1])
    assert calls[0][2:4] == [str(model), str(tmp_path / "a.wav")] and arg(calls[0], "--fps") == pytest.approx(fps)
    assert arg(calls[0], "--start") == 0.0 and arg(calls[0], "--end") == pytest.approx(a.frame_final_duration / fps)
    assert arg(calls[1], "--start") == pytest.approx(12 / fps, abs=1e-6)
    assert arg(calls[1], "--end") == pytest.approx((12 + b.frame_final_duration) / fps, abs=1e-6)
    assert "--no-preview" in calls[0] and "--overwrite" in calls[0]
    assert [(r.frame_start, r.strip) for r in s.results] == [(1, "Line A"), (112, "Line B")]
    heads = sorted((o for o in scene.objects if o.name.startswith("LipSync3D head")), key=lambda o: o.name)
    assert len(heads) == 2
    scene.frame_set(50)
    assert [h.hide_render for h in heads] == [True, True]
    scene.frame_set(113)
    assert sorted(h["lipsync3d_frame_start"] for h in heads if not h.hide_render) == [112]
    fc = s.character.data.shape_keys.animation_data.action
    keys = sorted({int(k.co[0]) for c in action_fcurves(fc) for k in c.keyframe_points})
    assert keys == [1, 2, 3, 4, 5, 6, 7, 111, 112, 113, 114, 115, 116, 117]    # two takes, rest keys in the gap


def test_file_source_adds_the_sound_strip_at_the_start_frame(fake_engine, scene, tmp_path, monkeypatch):
    from handmade import make_result

    log = fake_engine("ok")
    make_result(tmp_path / "canned", frames=6, fps=24.0)
    monkeypatch.setenv("LIPSYNC_FAKE_RESULT", str(tmp_path / "canned"))
    _fake_model(scene, tmp_path)
    scene.render.fps, scene.render.fps_base = 24, 1.0
    s = scene.lipsync3d
    s.audio_source, s.audio_file, s.file_frame_start, s.drive_after = 'FILE', str(_wav(tmp_path / "l.wav", 1)), 40, False
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    call = json.loads(log.read_text().splitlines()[0])
    assert "--end" not in call and call[call.index("--start") + 1] == "0.000000"
    strips = [x for x in vse_strips(scene.sequence_editor) if x.type == 'SOUND']
    assert len(strips) == 1 and strips[0].frame_start == 40 and scene.sync_mode == 'AUDIO_SYNC'
    assert scene.frame_end >= 45
