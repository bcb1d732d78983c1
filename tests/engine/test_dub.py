"""`lipsync dub`: reverse lighting, the frame schedule, the per-frame blend, and real dubs of the
synthetic demo video with the shared tiny model (real MediaPipe, real torch, real H.264/AAC)."""

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
from skimage.metrics import structural_similarity

from lipsync_engine.prepare import lighting
from lipsync_engine.io import media
from lipsync_engine.prepare.lighting import LightingOptions
from lipsync_engine.apps.dub import DubOptions, dub_video, source_schedule, split_segments
from lipsync_engine.core.errors import Cancelled, EngineError, InputError, NoFaceError
from lipsync_engine.apps.faceblend import FaceFrame, composite, model_assets, relight_lips
from lipsync_engine.core.progress import CancelToken

pytestmark = pytest.mark.slow


def _frames(path) -> list[np.ndarray]:
    return [f.image for f in media.iter_video_frames(path)]


def _face_ssim(a: np.ndarray, b: np.ndarray, landmarks: np.ndarray) -> float:
    """Grey-level SSIM inside the bounding box of the tracked face (the issue's face box)."""
    x0, y0 = np.floor(landmarks[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(landmarks[:, :2].max(0)).astype(int)
    grey = [cv2.cvtColor(im[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY) for im in (a, b)]
    return structural_similarity(grey[0], grey[1], data_range=255)


def _stream_seconds(path) -> dict:
    with av.open(str(path)) as c:
        return {s.type: float(s.duration * s.time_base) for s in c.streams}


# ----------------------------------------------------------------------------- pure parts

def test_reverse_lighting_undoes_the_forward_one_on_a_synthetic_gain_field(trained_demo):
    """A reference atlas put under a known smooth gain field and colour cast; normalizing it back
    to the reference and then denormalizing returns it, and the Relighter relights reference lips
    to what the relit frame holds there."""
    model_dir, _, _ = trained_demo
    assets = model_assets(model_dir)
    ref = assets["reference_normalized"].astype(np.float32) / 255.0
    valid = ref.max(-1) > 0
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    gain = (0.75 + 0.35 * xx + 0.2 * yy).astype(np.float32)                 # known, smooth
    a, b = np.array([0.92, 1.0, 1.08], np.float32), np.array([0.02, 0.0, -0.01], np.float32)
    frame = lighting.denormalize_frame(ref, 1.0 / gain, 1.0 / a, -b / a)    # frame = its lighting applied to ref
    frame[~valid] = 0
    opts = LightingOptions(remove_specularities=False)
    res = lighting.normalize_frame(frame, ref, valid, opts)
    back = lighting.denormalize_frame(res.image, res.gain, res.a, res.b)
    inside = valid & (frame.max(-1) < 0.99) & (frame.min(-1) > 0.01)
    assert np.abs(back - frame)[inside].max() < 2e-3                       # exact inverse where not clipped
    assert np.abs(res.image - ref)[inside].mean() < 0.01                    # and the forward pass found the lighting
    r, c = assets["lip_box"]
    relit = relight_lips(np.rint(ref[r:r + 128, c:c + 128] * 255).astype(np.uint8), res.gain, res.a, res.b, (r, c))
    lips_inside = inside[r:r + 128, c:c + 128]
    assert np.abs(relit - frame[r:r + 128, c:c + 128])[lips_inside].mean() < 2.0 / 255


def test_source_schedule_pingpong_and_hold():
    assert source_schedule(7, 3).tolist() == [0, 1, 2, 1, 0, 1, 2]
    assert source_schedule(5, 3, "hold").tolist() == [0, 1, 2, 2, 2]
    assert source_schedule(4, 10).tolist() == [0, 1, 2, 3]          # audio shorter: the video is cut
    assert source_schedule(3, 1).tolist() == [0, 0, 0]
    s = source_schedule(500, 40)
    assert np.abs(np.diff(s)).max() == 1 and s.min() == 0 and s.max() == 39   # no jump cut anywhere
    with pytest.raises(ValueError, match="loop"):
        source_schedule(5, 3, "bounce")
    segs = split_segments(source_schedule(12, 4), 3)
    assert segs == [(0, 3), (3, 4), (4, 7), (7, 10), (10, 12)]
    assert [b - a for a, b in split_segments(source_schedule(100, 60), 100)] == [60, 25, 15]


def test_pose_smoothing_restarts_at_a_jump_cut(prepared_demo):
    """A face that jumps 30 px between two frames (the anchor clip's edits do) is a new shot."""
    from lipsync_engine.prepare.normalize import detect_cuts

    lm = np.repeat(np.asarray(prepared_demo[0].landmarks[:1], np.float64), 12, axis=0)
    lm[:, :, 0] += np.arange(12)[:, None] * 1.5                     # steady head motion
    lm[7:, :, 1] += 30.0                                             # the cut
    assert np.flatnonzero(detect_cuts(lm)).tolist() == [7]
    lm[7:, :, 1] -= 30.0
    lm[7:] = lm[7:].mean(1, keepdims=True) + 1.10 * (lm[7:] - lm[7:].mean(1, keepdims=True))   # a 10% zoom
    assert np.flatnonzero(detect_cuts(lm)).tolist() == [7]


def test_composite_is_the_identity_when_nothing_moves(demo_video, prepared_demo, trained_demo):
    ds = prepared_demo[0]
    model_dir = trained_demo[0]
    image = _frames(demo_video[0])[10]
    lm = np.asarray(ds.landmarks[10], np.float64)
    face = FaceFrame(lm, lm, model_assets(model_dir)["cylinder"].project(ds.vertices[10]),
                     np.zeros((256, 256, 3), np.float32), np.zeros((256, 256), np.float32))
    out, alpha, box = composite(image, face)
    assert np.array_equal(out, image) and alpha.max() == 0 and box[2] > box[0]
    # the jaw 6 px lower: the chin and the neck below it move, the forehead and the frame's corners do not
    moved = lm.copy()
    moved[:, 1] += 6.0 * (lm[:, 1] > lm[152, 1] - 0.35 * (lm[152, 1] - lm[10, 1]))
    out, _, _ = composite(image, FaceFrame(lm, moved, face.uv, face.atlas, face.alpha_atlas))
    diff = np.abs(out.astype(int) - image).sum(-1)
    assert diff[: int(lm[10, 1]) - 5].max() == 0 and diff[:, :20].max() == 0
    chin = (int(lm[152, 1]) - 4, int(lm[152, 0]))
    assert diff[chin[0] - 3:chin[0] + 4, chin[1] - 10:chin[1] + 10].mean() > 5


# ----------------------------------------------------------------------------- real dubs

def test_dub_with_its_own_audio_reproduces_the_video(trained_demo, demo_video, tmp_path):
    model_dir, ds, _ = trained_demo
    video = demo_video[0]
    seen = []
    r = dub_video(model_dir, video, video, tmp_path / "self.mp4", DubOptions(workers=2), seen.append)
    original, dubbed = _frames(video), _frames(r.path)
    assert r.frames == len(original) == len(dubbed) == 150 and r.faces == 150 and not r.looped
    scores = [_face_ssim(original[i], dubbed[i], ds.landmarks[i]) for i in range(len(dubbed))]
    assert np.mean(scores) >= 0.9 and np.min(scores) > 0.8, (np.mean(scores), np.min(scores))
    durations = _stream_seconds(r.path)
    assert durations["video"] == pytest.approx(6.0, abs=0.05) and durations["audio"] == pytest.approx(6.0, abs=0.1)
    assert {p.stage for p in seen} >= {"track", "predict", "dub", "mux"}
    assert not (tmp_path / ".self.mp4.dub").exists()              # the work folder is gone
    with pytest.raises(EngineError, match="already exists"):
        dub_video(model_dir, video, video, r.path)


def test_dub_with_new_audio_moves_the_mouth_with_it(trained_demo, demo_video, prepared_demo, tmp_path):
    """Different speech (another seed of the synthetic speaker): the mouth in the dubbed video,
    tracked again with MediaPipe, opens and closes with the new audio's known openness."""
    from lipsync_engine.prepare.normalize import mouth_openness
    from lipsync_engine.demo.speech import synthesize_speech
    from lipsync_engine.face.tracking import track_frames

    model_dir = trained_demo[0]
    video = demo_video[0]
    speech = synthesize_speech(4.0, sample_rate=16000, seed=11)
    wav = tmp_path / "line.wav"
    sf.write(wav, speech.samples, 16000)
    r = dub_video(model_dir, wav, video, tmp_path / "dub.mp4", DubOptions(workers=1))
    assert r.frames == 100 and not r.looped
    track = track_frames(media.iter_video_frames(r.path))
    assert track.usable.all()
    opened = mouth_openness(track.landmarks)
    truth = speech.openness_at(np.arange(r.frames) / r.fps)
    original = mouth_openness(np.asarray(prepared_demo[0].landmarks[:100]))
    r_new = np.corrcoef(opened, truth)[0, 1]
    r_old = np.corrcoef(original, truth)[0, 1]
    # the tiny test model's lip texture opens less than its geometry (its own predicted openness
    # follows this audio with r ~0.95); re-tracked from pixels, the dub gave r 0.74-0.88 over training
    # seeds with the fixture's 60 epochs of the fast recipe (0.25-0.79 with 30 epochs)
    assert r_new >= 0.45 and r_new > r_old + 0.3, (r_new, r_old)
    # and it opens about as wide as the speaker's recorded mouth (issue 13: amplitude ratio >= 0.7;
    # 0.71 with the fixture's model, r 0.91)
    amplitude = opened.std() / original.std()
    assert amplitude >= 0.7, amplitude


def test_audio_longer_than_the_video_plays_it_back_and_forth(trained_demo, demo_video, tmp_path):
    model_dir = trained_demo[0]
    video = demo_video[0]
    r = dub_video(model_dir, video, video, tmp_path / "loop.mp4",                  # video 1-2 s, audio 2 s
                  DubOptions(video_start_s=1.0, video_end_s=2.0, audio_end_s=2.0, workers=1, segment_frames=20))
    assert r.frames == 50 and r.looped and r.faces == 50
    original, dubbed = _frames(video)[25:50], _frames(r.path)
    assert len(dubbed) == 50
    expected = source_schedule(50, 25)
    for i in (5, 30, 45, 49):       # the top rows (hair, background) are the target frame's own
        errors = [np.abs(dubbed[i][:60].astype(int) - o[:60]).mean() for o in original]
        assert int(np.argmin(errors)) == expected[i] and min(errors) < 3, (i, np.argmin(errors), expected[i])


def test_an_interrupted_dub_resumes_from_its_finished_segments(trained_demo, demo_video, tmp_path):
    model_dir = trained_demo[0]
    video = demo_video[0]
    options = DubOptions(video_end_s=1.2, audio_end_s=1.2, workers=1, segment_frames=10)
    cancel = CancelToken()

    def stop_after_first_segment(p):
        if p.stage == "dub" and p.done >= 12:
            cancel.set()

    with pytest.raises(Cancelled):
        dub_video(model_dir, video, video, tmp_path / "r.mp4", options, stop_after_first_segment, cancel)
    work = tmp_path / ".r.mp4.dub"
    assert sorted(p.name for p in work.glob("segment_*.mp4")) == ["segment_00000000_00000010.mp4"]
    assert not (tmp_path / "r.mp4").exists()
    r = dub_video(model_dir, video, video, tmp_path / "r.mp4", options)
    assert r.resumed == 1 and r.frames == 30 and len(_frames(r.path)) == 30 and not work.exists()


def test_bad_inputs_give_clear_errors(trained_demo, demo_video, tmp_path):
    model_dir = trained_demo[0]
    video = demo_video[0]
    short = tmp_path / "click.wav"
    sf.write(short, np.zeros(200, np.float32), 16000)                      # 12.5 ms: less than a frame
    with pytest.raises(InputError, match="click.wav.*shorter than one video frame"):
        dub_video(model_dir, short, video, tmp_path / "a.mp4")
    with pytest.raises(InputError, match="must be an .mp4"):
        dub_video(model_dir, video, video, tmp_path / "a.avi")
    with pytest.raises(InputError, match="nothing.wav: file not found"):
        dub_video(model_dir, tmp_path / "nothing.wav", video, tmp_path / "a.mp4")
    with pytest.raises(EngineError, match="model"):
        dub_video(tmp_path, video, video, tmp_path / "a.mp4")
    noise = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(noise), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width = s.height = 128
        s.pix_fmt = "yuv420p"
        for _ in range(10):
            c.mux(s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 255, (128, 128, 3), np.uint8), format="rgb24")))
        c.mux(s.encode(None))
    with pytest.raises(NoFaceError, match="noise.mp4: no single face"):
        dub_video(model_dir, video, noise, tmp_path / "a.mp4", DubOptions(workers=1))
    with pytest.raises(ValueError, match="loop"):
        DubOptions(loop="forever")
