"""The synthetic demo video: MediaPipe sees its face in every frame, and the tracked mouth and
head roll follow the ground truth it was made from; the file holds what the truth says."""

import json
from types import SimpleNamespace

import av
import numpy as np
import pytest

from lipsync_engine.demo import video as synthetic
from lipsync_engine.core.errors import InputError
from lipsync_engine.face.geometry import euler_to_rotation
from lipsync_engine.face.topology import CHIN, FOREHEAD_TOP, LOWER_LIP_INNER, UPPER_LIP_INNER, load_topology

DURATION_S = 3.0
FPS = 25.0
SEED = 3


def _decoded_frames(path):
    """Frames with .index, .time_s, .image (RGB), through the engine's reader if it exists."""
    try:
        from lipsync_engine.io.media import iter_video_frames
    except ImportError:
        with av.open(str(path)) as c:
            return [SimpleNamespace(index=k, time_s=float(f.time), image=f.to_ndarray(format="rgb24"))
                    for k, f in enumerate(c.decode(video=0))]
    return list(iter_video_frames(path))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(path, truth, progress calls) of a 3 s demo video."""
    path = tmp_path_factory.mktemp("synthetic") / "talk.mp4"
    calls = []
    truth = synthetic.make_demo_video(path, duration_s=DURATION_S, fps=FPS, seed=SEED,
                                      on_frame=lambda done, total: calls.append((done, total)))
    return path, truth, calls


@pytest.fixture(scope="module")
def tracked(demo):
    from lipsync_engine.face.tracking import track_frames

    return track_frames(_decoded_frames(demo[0]))


def _roll_2d_deg(src: np.ndarray, dst: np.ndarray) -> float:
    """In-plane rotation (degrees, counter-clockwise with y up) of the best 2D similarity src -> dst."""
    a, b = src - src.mean(0), dst - dst.mean(0)
    return float(np.degrees(np.arctan2((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum(), (a * b).sum())))


@pytest.mark.slow
def test_mediapipe_finds_exactly_one_face_in_every_frame(demo, tracked):
    assert len(tracked.face_count) == round(DURATION_S * FPS)
    assert (tracked.face_count == 1).all(), np.flatnonzero(tracked.face_count != 1)


@pytest.mark.slow
def test_tracked_inner_lip_gap_follows_the_true_openness(demo, tracked):
    lm = tracked.landmarks[..., :2].astype(np.float64)
    gap = np.linalg.norm(lm[:, UPPER_LIP_INNER] - lm[:, LOWER_LIP_INNER], axis=1)
    gap /= np.linalg.norm(lm[:, FOREHEAD_TOP] - lm[:, CHIN], axis=1)
    truth = demo[1]
    assert np.ptp(truth.openness) > 0.5  # the clip really talks
    r = np.corrcoef(gap, truth.openness)[0, 1]
    assert r >= 0.9, f"Pearson r = {r:.3f}"


@pytest.mark.slow
def test_tracked_head_roll_follows_the_true_roll(demo, tracked):
    rigid = load_topology().rigid
    xy = tracked.landmarks[:, rigid, :2].astype(np.float64) * [1.0, -1.0]  # y up, like the truth
    measured = np.array([_roll_2d_deg(xy[0], p) for p in xy])
    roll = demo[1].euler_deg[:, 2]
    expected = roll - roll[0]
    assert np.ptp(expected) > 4.0
    rms = np.sqrt(np.mean((measured - expected) ** 2))
    assert rms <= 2.0, f"roll RMS error {rms:.2f} degrees"


@pytest.mark.slow
def test_video_streams_frame_times_and_progress(demo):
    path, truth, calls = demo
    n = round(DURATION_S * FPS)
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 512, 512)
        assert audio.codec_context.name == "aac" and audio.channels == 1
        times = np.array([f.time for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio_frames = list(c.decode(audio=0))
    assert len(times) == n == truth.n_frames
    assert np.allclose(times, np.arange(n) / FPS, atol=1e-3)
    audio_s = sum(f.samples for f in audio_frames) / audio_frames[0].sample_rate
    assert abs(audio_s - DURATION_S) <= 0.1 and abs(audio_frames[0].time) <= 0.01
    assert calls[-1] == (n, n) and len(calls) == n
    assert sorted(p.name for p in path.parent.iterdir()) == ["talk.mp4", "talk.truth.json"]  # no temp files


@pytest.mark.slow
def test_truth_json_round_trips_and_documents_the_mapping(demo):
    path, truth, _ = demo
    doc = json.loads(synthetic.truth_path(path).read_text())
    assert doc["frame_count"] == truth.n_frames and doc["fps"] == FPS and doc["image_size"] == [512, 512]
    assert "y-up" in doc["mapping"] and "Rz(roll) Ry(yaw) Rx(pitch)" in doc["mapping"]
    loaded = synthetic.load_demo_truth(synthetic.truth_path(path))
    for name in ("openness", "rotation", "euler_deg", "translation_px", "scale", "gain_coeffs", "colour_cast"):
        assert np.allclose(getattr(loaded, name), getattr(truth, name), atol=1e-12), name
    assert (loaded.fps, loaded.size, loaded.audio_sample_rate) == (truth.fps, truth.size, truth.audio_sample_rate)
    assert np.allclose(truth.rotation, euler_to_rotation(*truth.euler_deg.T))


def test_motion_curves_are_deterministic_smooth_and_in_range():
    times = np.arange(250) / 25.0
    a, b = synthetic.motion_curves(times, 0, 512), synthetic.motion_curves(times, 0, 512)
    other = synthetic.motion_curves(times, 1, 512)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["euler_deg"], other["euler_deg"])
    assert (np.abs(a["euler_deg"]) <= np.array(synthetic.POSE_AMPLITUDE_DEG) + 1e-9).all()
    assert np.abs(a["translation_px"]).max() <= 15.0 and np.abs(a["scale"] - 1).max() <= 0.03
    assert np.abs(np.diff(a["euler_deg"], axis=0)).max() < 1.0  # degrees per frame: smooth
    assert np.allclose(a["rotation"], euler_to_rotation(*a["euler_deg"].T))


def test_jaw_weights_move_chin_and_lower_lip_but_not_upper_face():
    topo = load_topology()
    upper, lower = synthetic._lip_chains(topo.lips_inner, topo.vertices)
    assert UPPER_LIP_INNER in upper and LOWER_LIP_INNER in lower
    jaw, rise, pull = synthetic.mouth_weights(topo.vertices, upper, lower)
    assert jaw[[CHIN, LOWER_LIP_INNER, 17]].min() > 0.95  # 17: lower outer lip
    assert jaw[[UPPER_LIP_INNER, FOREHEAD_TOP, 1, 234, 454]].max() < 0.01  # 1: nose tip; ears
    assert rise[UPPER_LIP_INNER] > 0.5 and rise[LOWER_LIP_INNER] < 0.05
    assert pull[61] > 0.9 and pull[291] < -0.9  # corners pull towards the middle (x)
    assert ((jaw >= 0) & (jaw <= 1)).all()


def test_pose_points_and_lighting_known_values():
    g = euler_to_rotation(0.0, 0.0, 90.0)
    p = synthetic.pose_points(np.array([[2.0, 1.0, 0.0]]), g, 2.0, np.array([5.0, -1.0]), np.array([1.0, 1.0, 0.0]))
    assert np.allclose(p, [[1.0 + 5.0, 1.0 + 2.0 - 1.0, 0.0]])  # (1, 0) -> rotated (0, 1) -> scaled (0, 2)
    frame = np.full((4, 8, 3), 100, np.uint8)
    lit = synthetic.apply_lighting(frame, (0.4, 0.0), (1.1, 1.0, 0.5))
    assert lit[0, 4].tolist() == [110, 100, 50]            # x = W/2: gain 1
    assert lit[0, 0].tolist() == [88, 80, 40]              # x = 0: gain 1 - 0.4 / 2
    assert synthetic.apply_lighting(np.full((2, 2, 3), 250, np.uint8), (0, 0), (1.2, 1, 1))[0, 0, 0] == 255


@pytest.mark.slow
def test_cancelling_from_the_progress_callback_leaves_no_files(tmp_path):
    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthetic.make_demo_video(tmp_path / "x.mp4", duration_s=1.0, on_frame=cancel)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_and_bad_truth_files_are_reported(tmp_path):
    with pytest.raises(ValueError, match="duration_s"):
        synthetic.make_demo_video(tmp_path / "x.mp4", duration_s=0)
    bad = tmp_path / "x.truth.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="x.truth.json"):
        synthetic.load_demo_truth(bad)
