"""End-to-end `prepare` on the synthetic talking face (real MediaPipe, real warping)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lipsync_engine.prepare import dataset, normalize
from lipsync_engine.face import geometry
from lipsync_engine.core.errors import Cancelled, EngineError
from lipsync_engine.io import media
from lipsync_engine.prepare.pipeline import (PrepareOptions, TrackJob, _reference_image, _split, _track_job,
                                              prepare_speaker)
from lipsync_engine.core.progress import CancelToken
from lipsync_engine.face.topology import load_topology
from lipsync_engine.face.warp import Raster

pytestmark = pytest.mark.slow


def _reference_index(ds) -> int:
    ref = ds.meta["reference"]
    hits = (ds.frame_index[:, 0] == ref["take"]) & (ds.frame_index[:, 1] == ref["frame"])
    return int(np.flatnonzero(hits)[0])


def test_every_frame_is_tracked_and_arrays_line_up(prepared_demo):
    ds, result, truth = prepared_demo
    n = len(truth.openness)
    assert len(ds) == n and result.frames == n and not result.excluded
    assert np.array_equal(ds.frame_index[:, 1], np.arange(n))
    assert ds.spectrograms.shape == (n, 256, 24, 2) and ds.lips.shape == (n, 128, 128, 3)
    assert np.allclose(ds.frame_times, np.arange(n) / truth.fps, atol=1e-3)
    assert ds.meta["format_version"] == dataset.FORMAT_VERSION
    # one continuous shot: no jump cut, so the only break is the first frame
    assert ds.meta["takes"][0]["cuts"] == [] and not result.cuts and np.flatnonzero(ds.breaks).tolist() == [0]


def test_recovers_known_head_rotation_within_2_degrees(prepared_demo):
    """Every frame's recovered head rotation matches the applied one within 2 degrees.

    The normalized space is the reference frame's, so recovered rotations carry one constant
    rotation (the reference frame's own tracking error) that is not a per-frame error: it is
    removed by one best-fit constant rotation before the per-frame comparison.
    """
    ds, _, truth = prepared_demo
    head = np.transpose(ds.poses()["rotation"], (0, 2, 1))       # normalized -> y-up image, per frame
    offset = np.einsum("fij,fkj->fik", head, truth.rotation)      # head_t G_t^T: constant if exact
    u, _, vt = np.linalg.svd(offset.sum(0))
    err = geometry.rotation_angle_deg(np.einsum("ji,fjk->fik", u @ vt, offset))
    assert err.max() < 2.0, f"max rotation error {err.max():.2f} deg at frame {err.argmax()}"
    assert err.mean() < 1.0


def test_mouth_openness_follows_ground_truth(prepared_demo):
    ds, _, truth = prepared_demo
    measured = normalize.mouth_openness(np.asarray(ds.vertices))
    assert np.corrcoef(measured, truth.openness)[0, 1] >= 0.9


def test_atlases_match_the_reference_atlas_on_skin(prepared_demo):
    """Pose and lighting normalized atlases look like the reference on skin: SSIM >= 0.9.

    Measured: mean 0.94, worst frame 0.909 with the skin registration (normalize.py); the
    mesh alone gives mean 0.84, worst 0.75, because MediaPipe's landmarks slide on the skin.
    """
    ds, _, _ = prepared_demo
    topo = load_topology()
    import cv2

    ref = cv2.imread(str(ds.path / "reference_atlas_normalized.png"))[..., ::-1]
    ref_uv = ds.cylinder.project(ds.reference_vertices)
    skin_tris = np.zeros(len(topo.triangles), bool)
    skin_tris[topo.skin_triangles] = True
    scores = []
    for i in range(0, len(ds), 5):
        raster = Raster(ds.cylinder.project(ds.vertices[i]), topo.triangles, (256, 256))
        aligned = raster.warp(ref, ref_uv)
        skin = cv2.erode(raster.triangle_mask(skin_tris).astype(np.uint8), np.ones((5, 5))) > 0
        _, ssim = structural_similarity(ds.atlas[i], aligned, channel_axis=2, full=True, data_range=255)
        scores.append(ssim.mean(axis=2)[skin].mean())
    assert np.mean(scores) >= 0.92 and min(scores) >= 0.9, f"skin SSIM min {min(scores):.3f}, mean {np.mean(scores):.3f}"


def test_skin_registration_undoes_a_texture_slide_and_leaves_the_lips(prepared_demo):
    """A 2 px texture slide on the skin is registered back; lips away from the skin stay as they were."""
    import cv2

    from lipsync_engine.prepare.lighting import LightingOptions

    ds, _, _ = prepared_demo
    topo = load_topology()
    norm = normalize.PoseNormalization(np.asarray(ds.reference_vertices, np.float64), ds.cylinder, (0, 0))
    builder = normalize.AtlasBuilder(norm, LightingOptions())
    raster = builder.raster(norm.reference_vertices)
    ref = cv2.imread(str(ds.path / "reference_atlas_normalized.png"))[..., ::-1].astype(np.float32) / 255
    slid = cv2.warpAffine(np.rint(ref * 255).astype(np.uint8), np.float32([[1, 0, 2], [0, 1, -1]]), (256, 256),
                          borderMode=cv2.BORDER_REPLICATE)
    out = builder._register_skin(slid, ref, raster)
    sel = np.zeros(len(topo.triangles), bool)
    sel[topo.skin_triangles] = True
    skin_full = raster.triangle_mask(sel)
    skin = cv2.erode(skin_full.astype(np.uint8), np.ones((9, 9))) > 0
    before = np.abs(slid / 255 - ref)[skin].mean()
    after = np.abs(out / 255 - ref)[skin].mean()
    assert after < 0.5 * before, (before, after)
    sel[:] = False
    sel[np.r_[topo.lip_triangles, topo.mouth_triangles]] = True
    far_from_skin = cv2.distanceTransform((~skin_full).astype(np.uint8), cv2.DIST_L2, 5) > 12
    lips = raster.triangle_mask(sel) & far_from_skin
    assert lips.sum() > 100 and np.abs(out[lips].astype(int) - slid[lips]).max() <= 1, lips.sum()


def test_lighting_normalization_removes_the_known_illumination(prepared_demo):
    """The known gain field and colour cast vary skin brightness; normalized atlases hold it still."""
    ds, _, truth = prepared_demo
    topo = load_topology()
    skin_tris = np.zeros(len(topo.triangles), bool)
    skin_tris[topo.skin_triangles] = True
    ref_raster = Raster(ds.cylinder.project(ds.reference_vertices), topo.triangles, (256, 256))
    skin = ref_raster.triangle_mask(skin_tris)
    rows = np.nonzero(skin.any(1))[0]
    upper = skin & (np.arange(256)[:, None] < rows.mean())  # upper face: no jaw motion there
    means = np.asarray(ds.atlas)[:, upper].astype(np.float32).mean(axis=1)  # (N, 3)
    # what the frames were given: a colour cast and a gain field that move over time
    assert truth.colour_cast.std(0).max() > 0.02 and np.abs(truth.gain_coeffs).max() > 0.1
    spread = means.std(0) / means.mean(0)
    assert spread.max() < 0.02, f"normalized skin colour still varies by {spread}"


def test_rerun_skips_finished_work(prepared_demo):
    ds, result, _ = prepared_demo
    stages = []
    # other worker counts, chunk sizes or report settings do not change the result: still skipped
    again = prepare_speaker([ds.meta["takes"][0]["path"]], result.path, PrepareOptions(workers=1, report=False),
                            on_progress=lambda p: stages.append(p.stage))
    assert again.skipped and again.frames == result.frames
    assert "track" not in stages and "atlas" not in stages


ARRAYS = ("landmarks", "vertices", "atlas", "lips", "gain", "color_transform", "spectrograms", "frame_index",
          "frame_times")


@pytest.fixture(scope="module")
def prepared_one_worker(demo_video, tmp_path_factory):
    """The demo video prepared by this process alone: one MediaPipe graph for the whole take, one atlas chunk."""
    out = tmp_path_factory.mktemp("one_worker") / "speaker"
    prepare_speaker([demo_video[0]], out, PrepareOptions(workers=1, report=False))
    return dataset.open_speaker(out)


def test_job_sizes_spread_a_short_take_over_the_workers():
    assert _split(302, 151) == [(0, 151), (151, 302)]
    assert _split(150, 40) == [(0, 38), (38, 75), (75, 112), (112, 150)]
    assert _split(10, 1000) == [(0, 10)]
    # tracking parts after the first re-track 10 frames first: the first part is 10 frames longer
    assert _split(75, 38, 10) == [(0, 42), (42, 75)]                    # 42 and 10 + 33 frames of work
    assert _split(150, 40, 10) == [(0, 45), (45, 80), (80, 115), (115, 150)]
    assert _split(7, 3, 10) == [(0, 7)]                                  # no part would keep a frame
    for n, size, warmup in ((1, 1, 0), (7, 3, 0), (1530, 765, 0), (7650, 1000, 0), (1530, 765, 10),
                            (7650, 1000, 10), (25, 3, 10)):
        parts = _split(n, size, warmup)
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert min(b - a for a, b in parts) >= 1 and max(b - a for a, b in parts) <= size + warmup
        work = [b - a + (warmup if a else 0) for a, b in parts]
        assert max(work) - min(work) <= 1


def test_two_workers_match_one_worker(prepared_demo, prepared_one_worker):
    """prepared_demo ran on 2 workers: its 150 frames were tracked in two parts, frames 0-79 and
    80-149 (the second graph started 10 frames early, at frame 70, and dropped those: 80 frames of
    work each), and unrolled in two atlas chunks. One worker tracked them with one graph, in one
    chunk.

    MediaPipe's video mode carries its face region from frame to frame, so a graph that starts
    elsewhere lands on slightly different landmarks, and the difference does not die out: one
    graph started on frame 1 instead of 0 differs from it by up to 1.24 px (mean 0.05 px) on the
    frames after 10 (measured on this video). The split measured here: 0.17-0.31 px on frames
    80-84 after the warm-up (a part started cold there: 0.6-4.4 px), up to 0.52 px further on
    (mean 0.02 px), against a median frame-to-frame motion of 2.2 px; the atlases differ by 0.33
    grey levels on average.
    """
    two, one = prepared_demo[0], prepared_one_worker
    for name in ("frame_index", "frame_times", "spectrograms"):
        assert np.array_equal(np.asarray(getattr(two, name)), np.asarray(getattr(one, name))), name
    assert two.meta["reference"] == one.meta["reference"]
    lm2, lm1 = np.asarray(two.landmarks), np.asarray(one.landmarks)
    assert np.array_equal(lm2[:80], lm1[:80])                     # the first part: the same graph, the same frames
    step = np.abs(lm2 - lm1)[..., :2].max(axis=(1, 2))           # per frame, the largest landmark difference (px)
    assert step[80:85].max() < 0.5, step[80:85]                   # just after the boundary: warmed up
    assert step.max() < 2.0 and np.abs(lm2 - lm1)[..., :2].mean() < 0.1
    dv = np.abs(np.asarray(two.vertices) - np.asarray(one.vertices))
    assert dv.max() < 0.15 and dv.mean() < 0.005                  # normalized space, ~cm
    assert np.abs(np.asarray(two.atlas, np.float32) - np.asarray(one.atlas, np.float32)).mean() < 1.0
    assert np.abs(np.asarray(two.lips, np.float32) - np.asarray(one.lips, np.float32)).mean() < 1.5
    assert np.abs(np.asarray(two.gain, np.float32) - np.asarray(one.gain, np.float32)).mean() < 0.005
    assert np.abs(np.asarray(two.color_transform) - np.asarray(one.color_transform)).max() < 0.01


FORK_SCRIPT = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    import cv2, numpy as np
    from lipsync_engine.core import jobs
    from lipsync_engine.prepare.pipeline import PrepareOptions, prepare_speaker

    video, out = Path(sys.argv[1]), Path(sys.argv[2])
    started, opened = [], jobs.WorkerPool._open
    def record(self):
        opened(self)
        started.append(self.start_method)
    jobs.WorkerPool._open = record
    cv2.GaussianBlur(np.zeros((1024, 1024), np.float32), (0, 0), 5)  # OpenCV's thread pool is running
    options = PrepareOptions(workers=2, chunk_frames=60, report=False)
    prepare_speaker([video], out / "forked", options)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()  # another thread runs: the workers are spawned
    prepare_speaker([video], out / "spawned", options)
    stop.set()
    for thread in threading.enumerate():  # ours, and the pool's manager (its workers exit while prepare assembles)
        if thread is not threading.main_thread():
            thread.join()
    with jobs._opencv_pool_emptied():
        safe = [jobs._fork_is_safe()]
    from lipsync_engine.face import tracking
    tracking.track_image(np.zeros((64, 64, 3), np.uint8))  # MediaPipe ran here: a forked child would die in it
    with jobs._opencv_pool_emptied():
        safe.append(jobs._fork_is_safe())
    print(" ".join(started), *safe)
""")


def test_a_tracking_part_keeps_its_best_reference_frame_as_decoded(demo_video, tmp_path):
    """A tracking part keeps the frame with the lowest reference score among its one-face frames,
    with its image: the frame that seeking and decoding it alone gives, byte for byte (so the main
    process uses it instead of decoding the chosen reference again)."""
    video = demo_video[0]
    fps = media.probe(video).fps
    job = TrackJob(str(video), str(tmp_path / "part.npz"), "fingerprint", start=40, stop=100, fps=fps)
    _track_job(job)         # in this process: progress and cancellation are no-ops outside a pool
    with np.load(job.out) as z:
        counts, frame, image = z["face_count"], int(z["candidate_frame"]), z["candidate_image"]
        one = np.flatnonzero(counts == 1)
        scores = normalize.reference_scores(z["landmarks"][one])
    assert len(counts) == 60 and len(one) == 60
    assert frame == 40 + one[np.argmin(scores)]
    assert np.array_equal(image, _reference_image(video, frame, max(0.0, frame / fps - 1.0)))


def test_forked_and_spawned_workers_prepare_the_same(demo_video, tmp_path):
    """A fresh process forks its workers (they start with its imports, MediaPipe's included: 0.3 s
    less each, docs/benchmarks.md), OpenCV's thread pool emptied around the fork; a process that
    runs another thread, or has made a MediaPipe graph, spawns them. Both make the same dataset,
    byte for byte."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(demo_video[0]), str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["fork", "spawn", "True", "False"]
    forked, spawned = tmp_path / "forked", tmp_path / "spawned"
    for name in ("landmarks.npy", "vertices.npy", "atlas.npy", "lips.npy", "gain.npy", "color_transform.npy"):
        assert (forked / name).read_bytes() == (spawned / name).read_bytes(), name



def test_interrupted_run_resumes_and_matches(demo_video, tmp_path):
    """Stopped in tracking, then in the atlas stage, the run resumes from its finished parts and
    chunks, and ends with exactly the arrays of an uninterrupted run with the same options."""
    video, _ = demo_video
    opts = PrepareOptions(workers=2, chunk_frames=32, max_chunk_frames=40, report=False)  # 4 parts, 4 chunks
    whole = tmp_path / "whole"
    prepare_speaker([video], whole, opts)
    out = tmp_path / "speaker"

    def stop_at(stage, done, token):
        def on_progress(p):
            if p.stage == stage and p.done >= done:
                token.set()
        return on_progress

    # tracking parts of 45, 35, 35, 35 frames (10 of warm-up before each but the first): 82 frames
    # done > 45 + 35, so a worker has finished a part and begun another
    token = CancelToken()
    with pytest.raises(Cancelled):
        prepare_speaker([video], out, opts, on_progress=stop_at("track", 82, token), cancel=token)
    parts = sorted((out / ".work").glob("track_*.npz"))
    assert 1 <= len(parts) < 4
    kept = sum(len(np.load(p)["face_count"]) for p in parts)
    token, seen = CancelToken(), []
    stop = stop_at("atlas", 77, token)
    with pytest.raises(Cancelled):
        prepare_speaker([video], out, opts, on_progress=lambda p: (seen.append(p), stop(p)), cancel=token)
    track_start = next(p for p in seen if p.stage == "track")
    assert track_start.total == 150 - kept and track_start.done == 0   # only the parts not finished were tracked
    assert not (out / "meta.json").exists()
    assert not list(out.glob("*.npy"))          # nothing final, nothing half-written
    assert not list(out.rglob(".*.tmp-*"))
    chunks = [c for c in (out / ".work").glob("atlas_*") if (c / "done").is_file()]
    assert 1 <= len(chunks) < 4
    finished = sum(len(np.load(c / "color.npy")) for c in chunks)
    seen = []
    prepare_speaker([video], out, opts, on_progress=lambda p: seen.append(p))
    atlas_start = next(p for p in seen if p.stage == "atlas")
    assert atlas_start.done == finished          # finished chunks were not redone, and said so
    assert "track" not in {p.stage for p in seen if p.total > 0}
    ds, ref = dataset.open_speaker(out), dataset.open_speaker(whole)
    for name in ARRAYS:
        assert np.array_equal(np.asarray(getattr(ds, name)), np.asarray(getattr(ref, name))), name
    assert ds.meta["reference"] == ref.meta["reference"]


def test_refuses_to_overwrite_another_speaker(prepared_demo, demo_video, tmp_path):
    ds, _, _ = prepared_demo
    video, _ = demo_video
    with pytest.raises(EngineError, match="other videos or options"):
        prepare_speaker([video], ds.path, PrepareOptions(workers=1, min_usable_fraction=0.3))
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(EngineError, match="not empty"):
        prepare_speaker([video], tmp_path, PrepareOptions(workers=1))
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_report_is_written(prepared_demo):
    ds, _, _ = prepared_demo
    report = ds.path / "report"
    assert "Prepared speaker" in (report / "index.html").read_text()
    assert "<th>jump cuts (frames)</th>" in (report / "index.html").read_text()
    for name in ("tracking.png", "normalized_meshes.png", "atlases.png", "reference.png", "openness.png"):
        assert (report / name).stat().st_size > 10000, name
        assert f'src="{name}"' in (report / "index.html").read_text()
