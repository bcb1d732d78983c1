"""`lipsync predict` on a model trained on the synthetic demo: frame counts at any frame rate,
chunked == whole-file, silence, every output file read back, bad input, the CLI."""

import json
from pathlib import Path
import math
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile

import lipsync_engine
from lipsync_engine import cli
from lipsync_engine.io import media
from lipsync_engine.core.errors import Cancelled, EngineError, InputError
from lipsync_engine.prepare.normalize import mouth_openness
from lipsync_engine.inference.folder import OutputOptions, predict_to_folder, write_outputs
from lipsync_engine.inference.predictor import PredictOptions, frame_count, load_predictor
from lipsync_engine.inference.render import compose_atlas
from lipsync_engine.core.progress import CancelToken

pytestmark = pytest.mark.slow
RATE = 16000


def encode_audio(path, samples: np.ndarray, rate: int, codec: str, channels: int = 1) -> None:
    """Encode float32 mono samples with PyAV (duplicated into `channels` channels)."""
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        formats = [f.name for f in stream.codec_context.codec.audio_formats]
        fmt = next(f for f in ("fltp", "flt", "s16p", "s16", "s32p", "s32") if f in formats)
        pcm = np.repeat(samples[None].astype(np.float32), channels, axis=0)
        if not fmt.endswith("p"):
            pcm = pcm.T.reshape(1, -1)
        if fmt.startswith("s"):
            bits = 15 if fmt.startswith("s16") else 31
            pcm = (np.clip(pcm, -1, 1) * (2 ** bits - 1)).astype(np.int16 if bits == 15 else np.int32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format=fmt, layout=layout)
        frame.sample_rate = rate
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def model(trained_demo):
    return load_predictor(trained_demo[0], "cpu")


@pytest.fixture(scope="module")
def voice(demo_video, tmp_path_factory):
    """(16 kHz wav of the demo's audio, its samples)."""
    samples = media.load_audio(demo_video[0]).samples
    path = tmp_path_factory.mktemp("audio") / "line 1.wav"
    soundfile.write(path, samples, RATE, subtype="FLOAT")
    return path, samples


@pytest.mark.parametrize("fps", [24.0, 25.0, 29.97, 30.0, 60.0])
def test_frame_count_and_clock_at_any_frame_rate(model, voice, fps):
    pred = model.predict(voice[0], PredictOptions(fps=fps, atlas=False))
    duration = len(voice[1]) / RATE
    assert len(pred.times) == round(duration * fps) == frame_count(duration, fps)
    np.testing.assert_allclose(pred.times, np.arange(len(pred.times)) / fps)
    assert pred.vertices.shape == (len(pred.times), 468, 3) and pred.vertices.dtype == np.float32
    assert pred.blendshapes.shape == (len(pred.times), 52) and pred.lips is None
    assert pred.blendshapes.min() >= 0 and pred.blendshapes.max() <= 1 and pred.names[17] == "jawOpen"
    part = model.predict(voice[0], PredictOptions(fps=fps, start_s=1.0, end_s=3.5, atlas=False))
    expected = {24.0: 60, 25.0: 63, 29.97: 75, 30.0: 75, 60.0: 150}[fps]     # 62.5 frames: halves round up
    assert len(part.times) == expected and part.times[0] == 1.0 and part.start_s == 1.0


def test_mouth_opens_where_the_audio_is_voiced(model, trained_demo):
    """Openness of the predicted mesh vs the tracked video's, resampled to the prediction's clock."""
    _, ds, truth = trained_demo
    video_times = np.asarray(ds.frame_times)
    tracked = mouth_openness(np.asarray(ds.vertices))
    for fps in (25.0, 30.0):
        pred = model.predict(trained_demo[1].meta["takes"][0]["path"], PredictOptions(fps=fps))
        ours = mouth_openness(pred.vertices)
        r = np.corrcoef(ours, np.interp(pred.times, video_times, tracked))[0, 1]
        assert r >= 0.8, (fps, r)
    closed = mouth_openness(model.reference_vertices)
    assert pred.silent.sum() >= 10                          # the demo voice has pauses
    assert ours[pred.silent].max() <= closed + 0.15 * (ours.max() - closed)   # near the closed reference


def test_chunked_prediction_equals_whole_file(model, voice):
    whole = model.predict(voice[0], PredictOptions(fps=30.0, end_s=3.0))
    chunked = model.predict(voice[0], PredictOptions(fps=30.0, end_s=3.0, chunk_frames=7))
    assert whole.silent.any() and not whole.silent.all()     # the span has silence and speech
    np.testing.assert_allclose(chunked.vertices, whole.vertices, atol=2e-5)
    np.testing.assert_allclose(chunked.blendshapes, whole.blendshapes, atol=2e-5)
    assert np.abs(chunked.lips.astype(int) - whole.lips.astype(int)).max() <= 1


def test_silent_audio_rests_closed_and_still(model, tmp_path):
    path = tmp_path / "silence.flac"
    soundfile.write(path, np.zeros(2 * 44100), 44100)
    pred = model.predict(path, PredictOptions(fps=25.0))
    assert len(pred.times) == 50 and pred.silent.all()
    np.testing.assert_array_equal(pred.vertices, np.broadcast_to(model.reference_vertices, pred.vertices.shape))
    assert not pred.blendshapes.any()
    ref_lips = ((model.reference_lips[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    assert (pred.lips == ref_lips).all()


def test_silence_in_speech_eases_in_and_out(model, voice):
    x = voice[1][: 3 * RATE].copy()
    x[RATE:2 * RATE] = 0.0                                     # one second of silence in speech
    opts = PredictOptions(fps=30.0)
    pred = model.predict(media.AudioTrack(x, RATE, 0.0), opts)
    gap = (pred.times > 1.05) & (pred.times < 1.95)
    assert pred.silent[gap].all()
    moved = np.abs(pred.vertices - model.reference_vertices).max(axis=(1, 2))
    middle = (pred.times > 1.05 + opts.silence_ramp_s) & (pred.times < 1.95 - opts.silence_ramp_s)
    assert (moved[middle] == 0).all()                          # at rest in the middle of the gap
    ramp = pred.silent & (moved > 0)
    assert ramp.sum() >= 2                                     # eased, not snapped, at the edges
    no_silence = model.predict(media.AudioTrack(x, RATE, 0.0), PredictOptions(fps=30.0, silence_db=-np.inf))
    assert not no_silence.silent.any()


@pytest.mark.parametrize("codec,suffix,rate,channels", [("libmp3lame", "mp3", 44100, 2), ("libopus", "ogg", 48000, 1),
                                                        ("aac", "m4a", 22050, 2), ("pcm_s16le", "wav", 8000, 2)])
def test_compressed_formats_any_rate_and_channels(model, voice, tmp_path, codec, suffix, rate, channels):
    from scipy.signal import resample_poly

    g = math.gcd(rate, RATE)
    x = resample_poly(voice[1][: 3 * RATE], rate // g, RATE // g).astype(np.float32)
    path = tmp_path / f"line.{suffix}"
    encode_audio(path, x, rate, codec, channels)
    ref = model.predict(voice[0], PredictOptions(fps=30.0, end_s=3.0, atlas=False))
    pred = model.predict(path, PredictOptions(fps=30.0, atlas=False))
    decoded = len(media.load_audio(path).samples) / RATE
    assert len(pred.times) == round(decoded * 30.0) and abs(len(pred.times) - 90) <= 2
    a, b = mouth_openness(ref.vertices), mouth_openness(pred.vertices)
    n = min(len(a), len(b)) - 4               # encoders may add a few ms of priming: allow a frame of shift
    r = max(np.corrcoef(a[2:2 + n], b[2 + k:2 + k + n])[0, 1] for k in (-1, 0, 1))
    assert r > 0.9, r


def test_prediction_folder_reads_back(model, voice, tmp_path, trained_demo):
    from lipsync_engine.io.exports import read_coefficients_json, read_livelink_csv, read_rhubarb_json
    from lipsync_engine.io.pointcache import read_obj, read_pc2
    from lipsync_engine.io.media import stream_durations
    from lipsync_engine.inference.render import read_atlas

    out = tmp_path / "take 1"
    opts = PredictOptions(fps=29.97, end_s=2.5, chunk_frames=16)
    result = predict_to_folder(model, voice[0], out, opts, OutputOptions(preview_size=256))
    doc = json.loads((out / "result.json").read_text())
    n = round(2.5 * 29.97)
    assert result.frames == doc["frames"] == n and doc["fps"] == 29.97 and doc["model_id"] == model.model_id
    assert doc["format"] == "lipsync3d-prediction" and doc["format_version"] == 1 and len(doc["blendshape_names"]) == 52
    with np.load(out / "vertices.npz") as z:
        verts, times, bs, silent = z["vertices"], z["times"], z["blendshapes"], z["silent"]
    pred = model.predict(voice[0], opts)
    np.testing.assert_array_equal(verts, pred.vertices)
    np.testing.assert_array_equal(bs, pred.blendshapes)
    assert verts.shape == (n, 468, 3) and times.shape == (n,) and silent.dtype == bool
    header, cache = read_pc2(out / doc["files"]["pc2"])
    assert (header.points, header.samples, header.start_frame, header.sample_rate) == (468, n, 0.0, 1.0)
    np.testing.assert_array_equal(cache, verts)
    mesh = read_obj(out / doc["files"]["obj"])
    np.testing.assert_allclose(mesh.vertices, model.reference_vertices, atol=1e-5)
    assert mesh.faces.shape == (898, 3) and mesh.uvs.shape == (468, 2) and mesh.material_library == "head.mtl"
    assert 0 < mesh.uvs.min() and mesh.uvs.max() < 1
    uv_px = model.cylinder.project(model.reference_vertices)
    np.testing.assert_allclose(mesh.uvs[:, 0] * 256 - 0.5, uv_px[:, 0], atol=1e-3)
    np.testing.assert_allclose((1 - mesh.uvs[:, 1]) * 256 - 0.5, uv_px[:, 1], atol=1e-3)
    atlases = sorted((out / "atlas").glob("atlas_*.png"))
    assert len(atlases) == n and atlases[0].name == "atlas_000000.png"
    reference = read_atlas(trained_demo[0] / "reference_atlas_normalized.png")
    np.testing.assert_array_equal(read_atlas(atlases[-1]), compose_atlas(reference, pred.lips[-1], model.lip_box))
    assert read_livelink_csv(out / doc["files"]["livelink_csv"], fps=29.97).coefficients.shape == (n, 52)
    names, values, fps = read_coefficients_json(out / doc["files"]["blendshapes_json"])
    assert values.shape == (n, 52) and fps == 29.97
    names, values, _ = read_coefficients_json(out / doc["files"]["visemes_json"])
    assert values.shape == (n, 15) and "viseme_sil" in names
    cues = read_rhubarb_json(out / doc["files"]["rhubarb_json"])
    assert cues[0].start == 0 and abs(cues[-1].end - n / 29.97) < 0.011
    assert (out / doc["files"]["rhubarb_tsv"]).read_text().splitlines()[-1].endswith("\tX")
    d = stream_durations(out / "preview.mp4")
    assert abs(d["video"] - n / 29.97) < 1e-3 and abs(d["audio"] - n / 29.97) < 0.07, d
    with av.open(str(out / "preview.mp4")) as c:
        assert c.streams.video[0].width == 256 and c.streams.audio[0].codec_context.name == "aac"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take 1"]    # no temporaries left


def test_existing_result_is_refused_then_overwritten_and_cancel_leaves_nothing(model, voice, tmp_path):
    out = tmp_path / "out"
    opts, fast = PredictOptions(fps=25.0, end_s=1.0, atlas=False), OutputOptions(preview=False)
    predict_to_folder(model, voice[0], out, opts, fast)
    assert "atlas_dir" not in json.loads((out / "result.json").read_text())["files"]
    with pytest.raises(EngineError, match="already holds a prediction$"):
        predict_to_folder(model, voice[0], out, opts, fast)
    predict_to_folder(model, voice[0], out, PredictOptions(fps=50.0, end_s=1.0, atlas=False),
                      OutputOptions(preview=False, overwrite=True))
    assert json.loads((out / "result.json").read_text())["frames"] == 50
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(EngineError, match="not empty and holds no prediction"):
        predict_to_folder(model, voice[0], other, opts, OutputOptions(overwrite=True))
    token = CancelToken()
    with pytest.raises(Cancelled):
        predict_to_folder(model, voice[0], tmp_path / "cancelled", PredictOptions(fps=25.0, chunk_frames=10),
                          OutputOptions(preview=False), on_progress=lambda p: token.set(), cancel=token)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out"]


def test_bad_inputs_are_one_clear_line(model, trained_demo, tmp_path):
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), RATE)
    with pytest.raises(InputError, match="empty.wav: audio has no samples"):
        model.predict(empty)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(b"ID3" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="corrupt.mp3"):
        model.predict(corrupt)
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, np.full(100, 0.1, np.float32), RATE)
    with pytest.raises(InputError, match="tiny.wav: .* shorter than one frame at 30 fps"):
        model.predict(tiny, PredictOptions(fps=30.0))
    with pytest.raises(InputError, match="past the end of the audio"):
        model.predict(tiny, PredictOptions(fps=30.0, start_s=5.0))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(trained_demo[0], incomplete)
    (incomplete / "model.safetensors").unlink()
    with pytest.raises(EngineError, match="incomplete model directory, model.safetensors is missing"):
        load_predictor(incomplete)
    newer = tmp_path / "newer"
    shutil.copytree(trained_demo[0], newer)
    config = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(EngineError, match="format version 99 is newer"):
        load_predictor(newer)
    (newer / "config.json").write_text(json.dumps(config))
    (newer / "reference_atlas_normalized.png").unlink()
    with pytest.raises(EngineError, match="reference_atlas_normalized.png is missing"):
        load_predictor(newer)


def test_cli_several_files_one_model_load_and_errors(trained_demo, voice, tmp_path, capsys):
    second = tmp_path / "line 2.flac"
    soundfile.write(second, voice[1][:RATE], RATE)
    code = cli.main(["--json", "predict", str(trained_demo[0]), str(voice[0]), str(second), "-o", str(tmp_path / "o"),
                     "--fps", "24", "--end", "1.5", "--no-preview", "--device", "cpu"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and lines[-1] == ["DONE", {"exit_code": 0, "protocol": lines[-1][1]["protocol"]}]
    results = [m for t, m in lines if t == "RESULT"]
    assert [r["frames"] for r in results] == [36, 24]
    assert (tmp_path / "o" / "line 1_lipsync" / "result.json").is_file()
    assert (tmp_path / "o" / "line 2_lipsync" / "atlas" / "atlas_000023.png").is_file()
    code = cli.main(["predict", str(trained_demo[0]), str(tmp_path / "missing.wav"), "-o", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"error: missing.wav: file not found ({tmp_path / 'missing.wav'})"]
    assert not (tmp_path / "m").exists()
    with pytest.raises(SystemExit) as stop:     # a usage error now (exit 2), checked when the arguments are parsed
        cli.main(["predict", str(trained_demo[0]), str(second), "-o", str(tmp_path / "m"), "--fps", "0"])
    assert stop.value.code == 2 and "argument --fps: must be > 0 and <= 1000, got '0'" in capsys.readouterr().err


def test_cli_batch_of_strips_one_folder_and_range_per_audio(tmp_path):
    """The add-on's batch: N parts of dialogue (possibly of one file) in one engine call."""
    from lipsync_engine.cli import InputError, _per_audio, _predict_outputs

    a, b = Path("take.wav"), Path("take.wav")
    assert _predict_outputs([a, b], [tmp_path / "x", tmp_path / "y"]) == [tmp_path / "x", tmp_path / "y"]
    assert _predict_outputs([Path("l1.wav"), Path("l2.wav")], [tmp_path]) == [tmp_path / "l1_lipsync",
                                                                               tmp_path / "l2_lipsync"]
    with pytest.raises(InputError, match="share a name"):
        _predict_outputs([a, b], [tmp_path])
    with pytest.raises(InputError, match="3 output folders for 2 audio files"):
        _predict_outputs([a, b], [tmp_path / "x", tmp_path / "y", tmp_path / "z"])
    assert _per_audio([1.5], 3, "--end") == [1.5, 1.5, 1.5] and _per_audio(None, 2, "--end") == [None, None]
    assert _per_audio([0.0, 2.0], 2, "--start") == [0.0, 2.0]
    with pytest.raises(InputError, match="2 --start values for 3 audio files"):
        _per_audio([0.0, 2.0], 3, "--start")
    args = cli.build_parser().parse_args(["predict", "m", "a.wav", "b.wav", "-o", "x", "y", "--start", "0", "2",
                                          "--end", "1", "3"])
    assert args.output == [Path("x"), Path("y")] and args.start == [0.0, 2.0] and args.end == [1.0, 3.0]


def test_cli_subprocess_exit_code_without_traceback(trained_demo, tmp_path):
    (tmp_path / "bad.ogg").write_bytes(b"OggS" + b"\0" * 64)
    r = subprocess.run([sys.executable, "-m", "lipsync_engine", "predict", str(trained_demo[0]),
                        str(tmp_path / "bad.ogg"), "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: bad.ogg:") and len(r.stderr.strip().splitlines()) == 1


def test_public_api_and_write_outputs(trained_demo, voice, tmp_path):
    pred = lipsync_engine.predict(trained_demo[0], voice[0], PredictOptions(fps=25.0, end_s=1.0, device="cpu"))
    assert isinstance(pred, lipsync_engine.Prediction) and pred.lips.shape == (25, 128, 128, 3)
    manifest = write_outputs(pred, trained_demo[0], tmp_path / "w", voice[0], OutputOptions(preview=False))
    with np.load(tmp_path / "w" / "vertices.npz") as z:
        np.testing.assert_array_equal(z["vertices"], pred.vertices)
    assert json.loads(manifest.read_text())["frames"] == 25


def test_relit_atlases_take_the_reference_lighting(model, voice, trained_demo, tmp_path):
    from lipsync_engine.inference.render import read_atlas

    out = tmp_path / "lit"
    predict_to_folder(model, voice[0], out, PredictOptions(fps=25.0, end_s=0.4),
                      OutputOptions(preview=False, relight="reference"))
    raw = read_atlas(trained_demo[0] / "reference_atlas.png").astype(float)
    norm = read_atlas(trained_demo[0] / "reference_atlas_normalized.png").astype(float)
    lit = read_atlas(out / "reference_atlas.png").astype(float)
    face = norm.max(-1) > 0
    assert np.abs(lit - raw)[face].mean() < 0.6 * np.abs(norm - raw)[face].mean()
    assert read_atlas(out / "atlas" / "atlas_000009.png")[~face].max() == 0


def test_compose_atlas_blends_the_crop_without_a_seam(rng):
    from lipsync_engine.inference.render import seam_weights

    ref = np.clip(rng.normal(120, 10, size=(256, 256, 3)), 0, 255).astype(np.uint8)
    box = {"row": 100, "col": 64}
    same = ref[100:228, 64:192]
    np.testing.assert_array_equal(compose_atlas(ref, same, box), ref)           # the reference's own crop: no change
    lips = np.full((128, 128, 3), 30, np.uint8)
    out = compose_atlas(ref, lips, box).astype(int)
    np.testing.assert_array_equal(out[164, 128], [30, 30, 30])                  # the crop's middle is the crop
    assert (out[:100] == ref[:100]).all() and (out[228:] == ref[228:]).all()    # outside the box untouched
    edge = np.abs(out[100, 64:192] - ref[100, 64:192].astype(int))              # first row of the box
    assert edge.max() <= 1                                                      # fades to the reference: no seam
    w = seam_weights()
    assert w[0, 0] < 0.01 and w[64, 64] == 1.0 and np.all(np.diff(w[64, :12]) > 0)
    batch = compose_atlas(ref, np.stack([lips, same]), box)
    assert batch.shape == (2, 256, 256, 3) and (batch[1] == ref).all()
    with pytest.raises(ValueError, match="128"):
        compose_atlas(ref, np.zeros((64, 64, 3), np.uint8), box)


def test_render_samples_the_atlas_at_each_vertex(trained_demo, rng):
    """Known values: without shading, the pixel under a vertex shows the atlas at that vertex's
    cylinder coordinates; back faces are culled and the background is kept."""
    from lipsync_engine.inference.render import BACKGROUND, HeadRenderer, frontal_camera
    from lipsync_engine.face.topology import load_topology

    model = load_predictor(trained_demo[0], "cpu")
    atlas = np.zeros((256, 256, 3), np.uint8)
    atlas[..., 0] = np.arange(256)[None, :]            # red = atlas column, green = atlas row
    atlas[..., 1] = np.arange(256)[:, None]
    v = model.reference_vertices
    cam = frontal_camera(v, 400)
    image = HeadRenderer(model.cylinder, cam, shading=False).render(atlas, v)
    pts, uv = cam.project(v), model.cylinder.project(v)
    topo = load_topology()
    inner = np.setdiff1d(np.arange(468), np.unique(np.ravel(topo.triangles[topo.mouth_triangles])))[::7]
    px = np.rint(pts[inner]).astype(int)
    got = image[px[:, 1], px[:, 0], :2].astype(float)
    close = np.abs(got - uv[inner]).max(1) <= 2.5
    assert close.mean() > 0.9, close.mean()
    assert (image[2, 2] == BACKGROUND).all() and (image[200, 200] != BACKGROUND).any()
    shaded = HeadRenderer(model.cylinder, cam).render(np.full((256, 256, 3), 200, np.uint8), v)
    assert 100 < shaded[200, 200].mean() <= 200
