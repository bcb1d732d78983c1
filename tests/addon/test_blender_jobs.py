"""Engine jobs from Blender's side against a fake engine: errors in the UI, crashes, a missing
engine, and the modal path (timer ticks that never block, Esc and the Cancel button)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
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
    # Phones off: the spectrogram-only network (lipsync train --no-phones)
    scene.lipsync3d.speaker_name, scene.lipsync3d.shape_epochs, scene.lipsync3d.phones = "cleo", 0, False
    assert bpy.ops.lipsync3d.train() == {'FINISHED'}
    last = json.loads(log.read_text().splitlines()[-1])
    assert last[1] == "train" and last[-1] == "--no-phones" and "--geometry-epochs" not in last


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
    assert [c[1] for c in calls] == ["predict"]          # one engine process for the batch
    fps = 30 / 1.001
    call = calls[0]

    def args(name, n=2):
        return call[call.index(name) + 1:call.index(name) + 1 + n]
    assert call[2:5] == [str(model), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert float(args("--fps", 1)[0]) == pytest.approx(fps)
    starts, ends = [float(x) for x in args("--start")], [float(x) for x in args("--end")]
    assert starts[0] == 0.0 and ends[0] == pytest.approx(a.frame_final_duration / fps)
    assert starts[1] == pytest.approx(12 / fps, abs=1e-6)
    assert ends[1] == pytest.approx((12 + b.frame_final_duration) / fps, abs=1e-6)
    assert [Path(p).name.split("-")[0] for p in args("-o")] == ["Line_A", "Line_B"]
    calls = [call]
    assert "--no-preview" in calls[0] and "--overwrite" in calls[0]
    assert [(r.frame_start, r.strip) for r in s.results] == [(1, "Line A"), (112, "Line B")]
    heads = sorted((o for o in scene.objects if o.name.startswith("LipSync3D head")), key=lambda o: o.name)
    assert len(heads) == 2
    scene.frame_set(50)
    assert [h.hide_render for h in heads] == [True, True]
    scene.frame_set(113)
    assert sorted(h["lipsync3d_frame_start"] for h in heads if not h.hide_render) == [112]
    takes = {st.name: st for t in s.character.data.shape_keys.animation_data.nla_tracks for st in t.strips
             if st.action.get("lipsync3d_line")}
    assert sorted(takes) == ["Line A", "Line B"]         # one take per strip, named after it, where it sits
    for name, first in (("Line A", 1), ("Line B", 112)):
        keys = sorted({round(k.co[0], 3) for c in action_fcurves(takes[name].action) for k in c.keyframe_points})
        assert keys == [first - 3] + [first + i for i in range(6)] + [first + 5 + 3]   # eased to rest over 3 frames
        assert takes[name].frame_start == first - 3 and takes[name].extrapolation == 'NOTHING'


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


def test_a_batch_of_three_strips_is_one_engine_process_and_again_adds_nothing(fake_engine, scene, tmp_path,
                                                                              monkeypatch):
    """Issue 14: each strip of a batch started its own engine (about 7 s each before any work), and
    predicting the same strips again stacked duplicate heads and results. The cast sends strips to
    characters by name prefix or channel."""
    from handmade import make_result

    log = fake_engine("ok")
    make_result(tmp_path / "canned", frames=6, fps=25.0)
    monkeypatch.setenv("LIPSYNC_FAKE_RESULT", str(tmp_path / "canned"))
    _fake_model(scene, tmp_path)
    scene.render.fps, scene.render.fps_base = 25, 1.0
    sed = scene.sequence_editor_create()
    wav = str(_wav(tmp_path / "scene.wav", 6.0))
    for name, frame in (("ANNA_1", 1), ("BEN_1", 40), ("ANNA_2", 80)):     # three parts of one recording
        strip = new_sound_strip(sed, name, wav, 2, frame)
        strip.frame_offset_start = frame - 1
        strip.frame_final_duration = 30
    s = scene.lipsync3d
    s.audio_source, s.channel, s.animation, s.blinks = 'CHANNEL', 2, 'MESH_CACHE', False
    anna, ben = make_character(["jawOpen"]), make_character(["JAW_OPEN"])
    s.character = anna
    rule = s.cast.add()
    rule.prefix, rule.character = "BEN_", ben
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 1 and calls[0][1] == "predict" and calls[0][3:6] == [wav] * 3
    objects, actions, results_ = len(bpy.data.objects), len(bpy.data.actions), len(s.results)
    assert results_ == 3 and len([o for o in scene.objects if o.name.startswith("LipSync3D head")]) == 3

    def lines(obj):
        return sorted(st.name for t in obj.data.shape_keys.animation_data.nla_tracks for st in t.strips
                      if st.action.get("lipsync3d_line") and not st.mute)
    assert lines(anna) == ["ANNA_1", "ANNA_2"] and lines(ben) == ["BEN_1"]
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}             # again: cached, nothing new
    assert len(log.read_text().splitlines()) == 1
    assert (len(bpy.data.objects), len(bpy.data.actions), len(s.results)) == (objects, actions, results_)
    assert lines(anna) == ["ANNA_1", "ANNA_2"] and lines(ben) == ["BEN_1"]
    assert "--articulation" not in calls[0]                  # by default the model's own fitted gain
    # issue 13: the Articulation slider passes its gain, and a new gain is a new prediction
    s.use_articulation, s.articulation = True, 1.75
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 2 and calls[1][calls[1].index("--articulation") + 1] == "1.7500"


def test_blender_conventions_poll_undo_workspace_sequencer_panel_offline_and_labels(fake_engine, scene, blender,
                                                                                     tmp_path, monkeypatch):
    from handmade import make_result

    ops = sys.modules[blender.__name__ + ".operators"]
    # poll() greys out what cannot run, and says why
    assert not bpy.ops.lipsync3d.drive_character.poll() and not bpy.ops.lipsync3d.import_head.poll()
    assert not bpy.ops.lipsync3d.train.poll() and not bpy.ops.lipsync3d.video_remove.poll()
    with pytest.raises(RuntimeError, match="add at least one video"):
        bpy.ops.lipsync3d.train()
    # every operator that edits data can be undone
    editing = {"video_add", "video_remove", "model_add", "predict", "import_head", "drive_character", "resync",
               "cast_add", "cast_remove", "models_refresh", "show_log"}
    for cls in ops.CLASSES:
        if cls.bl_idname.split(".")[1] in editing:
            assert 'UNDO' in cls.bl_options, cls.bl_idname
    # the workspace defaults to a folder next to the saved .blend, and results are stored relative to it
    blend = tmp_path / "shot" / "shot010.blend"
    blend.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    scene.lipsync3d.workspace = ""
    runner = sys.modules[blender.__name__ + ".runner"]
    assert runner.workspace(bpy.context) == blend.parent / "lipsync3d"
    assert runner.blend_path(blend.parent / "lipsync3d" / "predictions" / "x") == "//lipsync3d/predictions/x"
    # the Video Sequencer's sidebar predicts from the selected strips
    fake_engine("ok")
    make_result(tmp_path / "canned", frames=6, fps=25.0)
    monkeypatch.setenv("LIPSYNC_FAKE_RESULT", str(tmp_path / "canned"))
    model = blend.parent / "lipsync3d" / "models" / "anna"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"format": "lipsync3d-model", "epochs_done": 3, "fps": 25}))
    scene.render.fps = 25
    sed = scene.sequence_editor_create()
    a = new_sound_strip(sed, "A", str(_wav(tmp_path / "a.wav", 1.0)), 1, 1)
    b = new_sound_strip(sed, "B", str(_wav(tmp_path / "b.wav", 1.0)), 2, 50)
    a.select, b.select = False, True
    s = scene.lipsync3d
    s.audio_source, s.import_head, s.character = 'SELECTED', True, make_character(["jawOpen"])
    panel = bpy.types.LIPSYNC3D_PT_sequencer
    assert panel.bl_space_type == 'SEQUENCE_EDITOR' and panel.bl_region_type == 'UI'
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    assert [r.strip for r in s.results] == ["B"] and s.results[0].path.startswith("//lipsync3d/predictions/")
    head = next(o for o in scene.objects if o.name.startswith("LipSync3D head"))
    assert head.active_material.node_tree.nodes["Image Texture"].image.filepath.startswith("//lipsync3d/")
    assert bpy.ops.lipsync3d.drive_character.poll() and bpy.ops.lipsync3d.import_head.poll()
    # offline: Create Engine Environment greys out and says why
    prefs_mod = sys.modules[blender.__name__ + ".preferences"]
    monkeypatch.setattr(prefs_mod, "online_allowed", lambda: False)
    assert not bpy.ops.lipsync3d.create_engine_env.poll()
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.lipsync3d.create_engine_env()
    # readable preset labels
    props = sys.modules[blender.__name__ + ".properties"]
    labels = {i[0]: i[1] for i in props.preset_items(None, bpy.context)}
    assert labels["arkit"] == "ARKit" and labels["cc4"] == "CC4" and labels["livelinkface"] == "Live Link Face"
    assert labels["vrm"] == "VRM"


def _serve_scene(scene, tmp_path, monkeypatch, strips=("A", "B")):
    """A model, canned results and one sound strip per name on channel 2 (frames 1, 60, 120, ...)."""
    from handmade import make_result

    make_result(tmp_path / "canned", frames=6, fps=25.0)
    monkeypatch.setenv("LIPSYNC_FAKE_RESULT", str(tmp_path / "canned"))
    monkeypatch.setenv("LIPSYNC_FAKE_STARTS", str(tmp_path / "starts.log"))
    _fake_model(scene, tmp_path)
    scene.render.fps, scene.render.fps_base = 25, 1.0
    sed = scene.sequence_editor_create()
    made = [new_sound_strip(sed, name, str(_wav(tmp_path / f"{name}.wav", 1.0)), 2, 1 + 60 * i)
            for i, name in enumerate(strips)]
    s = scene.lipsync3d
    s.audio_source, s.channel, s.animation, s.drive_after, s.import_head = 'CHANNEL', 2, 'MESH_CACHE', False, False
    return made


def _starts(tmp_path) -> list:
    path = tmp_path / "starts.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_predictions_go_to_one_warm_engine_that_restarts_when_it_died(fake_engine, scene, blender, tmp_path,
                                                                     monkeypatch):
    """Issue 18: every Predict started an engine (process start, imports, model load: ~7 s a line
    before any work). A batch is one request to one `lipsync serve`, which stays up for the next
    Predict; a server that died is started again; unregister (stop_all) ends it."""
    import os
    import signal

    runner = sys.modules[blender.__name__ + ".runner"]
    log = fake_engine("ok")
    strips = _serve_scene(scene, tmp_path, monkeypatch)
    assert runner.warm_server() is None or runner.warm_server().key != ()
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}                       # the batch of two lines
    server = runner.warm_server()
    assert server is not None and [s[0] for s in _starts(tmp_path)] == ["serve"] and _starts(tmp_path)[0][1] == server.pid
    strips[1].frame_offset_start = 5                                          # a changed line: predicted again
    s = scene.lipsync3d
    s.use_articulation, s.articulation = True, 1.5                            # and a new gain for both
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[1] for c in calls] == ["predict", "predict"] and len(calls[0]) > 3
    assert calls[1][calls[1].index("--articulation") + 1] == "1.5000"
    assert runner.warm_server() is server and server.alive and len(_starts(tmp_path)) == 1   # the same process
    assert len(s.results) == 4 and all((Path(r.path) / "result.json").is_file() for r in s.results)
    os.kill(server.pid, signal.SIGKILL)                                        # it died (out of memory, ...)
    server._proc.wait(10)
    s.articulation = 1.25
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    again = runner.warm_server()
    assert again is not server and again.alive and [p for _, p in _starts(tmp_path)] == [server.pid, again.pid]
    runner.stop_all()                                                          # unregister / quit
    assert runner.warm_server() is None and again._proc.poll() is not None


def test_warm_engine_errors_crashes_and_cancel_reach_the_ui(fake_engine, scene, blender, tmp_path, monkeypatch):
    runner = sys.modules[blender.__name__ + ".runner"]
    fake_engine("error")
    _serve_scene(scene, tmp_path, monkeypatch, strips=("A",))
    with pytest.raises(RuntimeError, match="Predict A: clip.mp4: no face found"):
        bpy.ops.lipsync3d.predict()
    server = runner.warm_server()
    assert server is not None and server.alive                                # an error is one request's
    # a cancelled request (Esc) leaves the server running; the status bar shows the request's progress
    fake_engine("slow")
    probe = _probe(blender, "LIPSYNC3D_OT_predict")
    assert probe._begin(bpy.context)
    timer = SimpleNamespace(type='TIMER', value='NOTHING')
    deadline = time.monotonic() + 30
    while probe._chain.current.progress.done < 3:
        assert probe.modal(bpy.context, timer) == {'RUNNING_MODAL'} and time.monotonic() < deadline
        time.sleep(0.02)
    assert probe._chain.status_text().startswith("Predict A: train ")
    assert bpy.context.window_manager.lipsync3d_job.text.startswith("Predict A: train ")
    probe.modal(bpy.context, SimpleNamespace(type='ESC', value='PRESS'))
    state = {'RUNNING_MODAL'}
    while state == {'RUNNING_MODAL'} and time.monotonic() < deadline:
        state = probe.modal(bpy.context, timer)
        time.sleep(0.02)
    assert state == {'CANCELLED'} and any("cancelled" in m for _, m in probe.reports)
    assert runner.warm_server() is server and server.alive and len(_starts(tmp_path)) == 1
    # a crash of the server is shown with its log, and the next job starts a new one
    fake_engine("crash")
    with pytest.raises(RuntimeError, match="signal 9"):
        bpy.ops.lipsync3d.predict()
    job = bpy.context.window_manager.lipsync3d_job
    assert "MemoryError: fake out of memory" in Path(job.last_log).read_text()
    fake_engine("ok")
    assert bpy.ops.lipsync3d.predict() == {'FINISHED'}
    assert runner.warm_server() is not server and len(_starts(tmp_path)) == 2
