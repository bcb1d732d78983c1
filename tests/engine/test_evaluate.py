"""Evaluation: metrics on known inputs, baselines, and the trained demo model on held-out speech."""

import json
import shutil

import numpy as np
import pytest

from lipsync_engine.prepare import audio, dataset
from lipsync_engine.apps import evaluate
from lipsync_engine.cli import main
from lipsync_engine.core.errors import DatasetError, EngineError
from lipsync_engine.face.geometry import CylinderMap
from lipsync_engine.prepare.normalize import mouth_openness

CYL = CylinderMap(cx=0.0, cz=-5.0, radius=8.0, k=100.0, u0=128.0, s=12.0, v0=120.0)


def _face(rng, n=6):
    from lipsync_engine.face.topology import load_topology

    base = load_topology().vertices.astype(np.float32)
    return base[None] + rng.normal(0, 0.05, (n, 468, 3)).astype(np.float32)


def test_lmd_is_zero_for_identical_and_the_shift_for_a_shifted_mouth(rng):
    faces = _face(rng)
    px = evaluate.landmark_pixels(faces, CYL)
    assert px.shape == (6, 40, 2) and evaluate.landmark_distance(px, px) == 0.0
    lifted = faces + np.array([0, 0.25, 0], np.float32)          # 0.25 units up = 0.25 * s = 3 px up
    assert evaluate.landmark_distance(evaluate.landmark_pixels(lifted, CYL), px) == pytest.approx(3.0, abs=1e-4)
    shifted = px + np.array([3.0, 4.0])
    assert evaluate.landmark_distance(shifted, px) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate.landmark_distance(px[:2], px)


def test_jitter_counts_second_differences_inside_segments_only():
    t = np.arange(10, dtype=np.float64)
    linear = np.stack([t, 2 * t], -1)[:, None, :]                  # (10, 1, 2) uniform motion
    no_break = np.zeros(10, bool)
    no_break[0] = True
    assert evaluate.landmark_jitter(linear, no_break) == pytest.approx(0.0)
    zigzag = np.zeros((10, 1, 2))
    zigzag[:, 0, 0] = 0.5 * (-1.0) ** t                            # second difference is +-2
    assert evaluate.landmark_jitter(zigzag, no_break) == pytest.approx(2.0)
    jump = linear.copy()
    jump[5:] += 100.0                                              # a cut between two takes
    breaks = no_break.copy()
    breaks[5] = True
    assert evaluate.landmark_jitter(jump, breaks) == pytest.approx(0.0)
    assert evaluate.landmark_jitter(jump, no_break) > 10
    lips = np.zeros((5, 2, 2, 3), np.uint8)
    lips[1::2] = 255                                               # 0, 1, 0, 1, 0 -> |second difference| = 2
    assert evaluate.texture_jitter(lips, no_break[:5]) == pytest.approx(2.0)


def test_pearson_known_values_and_constant_series():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert evaluate.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert evaluate.pearson(a, -a) == pytest.approx(-1.0)
    assert evaluate.pearson(a, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert evaluate.pearson(a, np.full(4, 7.0)) == 0.0


def test_ssim_per_frame_and_compose():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    s = evaluate.ssim_per_frame(a, a)
    assert s.shape == (3,) and np.allclose(s, 1.0, atol=1e-5)
    b = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert (evaluate.ssim_per_frame(a, b) < 0.2).all()
    ref = np.full((256, 256, 3), 90, np.uint8)
    out = evaluate.compose_atlas(ref, np.full((2, 128, 128, 3), 200, np.uint8), {"row": 100, "col": 64})
    assert out.shape == (2, 256, 256, 3) and out[0, 164, 128, 0] == 200 and out[0, 10, 10, 0] == 90


def test_full_atlas_ssim_from_the_lip_region_only():
    """SSIM of a composed atlas = the reference's SSIM outside the lip region + the region's own."""
    rng = np.random.default_rng(1)
    box = {"row": 118, "col": 60}
    gt = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    ref = np.clip(gt[0].astype(int) + rng.integers(-40, 40, (256, 256, 3)), 0, 255).astype(np.uint8)
    lips = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    composed = evaluate.compose_atlas(ref, lips, box)
    direct = evaluate.ssim_per_frame(composed, gt)
    rows, cols = evaluate.lip_region(box)
    total, count = evaluate.ssim_sums(np.broadcast_to(ref, gt.shape), gt)
    inside, _ = evaluate.ssim_sums(np.broadcast_to(ref, gt.shape)[:, rows, cols], gt[:, rows, cols])
    region, _ = evaluate.ssim_sums(composed[:, rows, cols], gt[:, rows, cols])
    assert np.allclose((total - inside + region) / count, direct, atol=1e-6)


def test_spectrogram_envelope_matches_the_sample_envelope():
    """The envelope from the stored STFT (Parseval) follows audio.envelope of the raw samples."""
    sr = audio.SAMPLE_RATE
    t = np.arange(4 * sr) / sr
    gain = 0.05 + 0.5 * (np.sin(2 * np.pi * 1.3 * t) > 0) * np.abs(np.sin(2 * np.pi * 0.7 * t))
    x = (gain * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    times = np.arange(0.1, 3.9, 0.04)
    ours = evaluate.spectrogram_envelope(audio.spectrogram_frames(x, times))
    reference = audio.envelope(x, times)
    assert np.corrcoef(ours, reference)[0, 1] > 0.97
    assert np.median(ours / reference) == pytest.approx(1.0, abs=0.1)


@pytest.fixture(scope="module")
def evaluated(trained_demo, tmp_path_factory):
    model_dir, ds, _ = trained_demo
    out = tmp_path_factory.mktemp("eval") / "evaluation"
    return evaluate.evaluate_model(model_dir, ds.path, out), out, trained_demo


@pytest.mark.slow
def test_held_out_tail_beats_the_baselines(evaluated):
    """The issue's test: trained on the first 90% of the synthetic video, it predicts the held-out 10%."""
    result, out, (model_dir, ds, _) = evaluated
    config = json.loads((model_dir / "config.json").read_text())
    n_train = config["split"]["train_frames"]
    assert result.frames == len(ds) - n_train > 10
    m = result.metrics
    assert set(m) == set(evaluate.METHODS)
    assert m["model"]["openness_r"] >= 0.8, m["model"]
    assert m["static"]["openness_r"] == 0.0 and m["static"]["jitter_px"] == 0.0
    assert m["model"]["lmd_px"] < m["static"]["lmd_px"]
    for name in evaluate.METHODS:
        assert 0 < m[name]["lip_ssim"] <= 1 and 0 < m[name]["atlas_ssim"] <= 1 and m[name]["lmd_px"] >= 0
        assert m[name]["blendshape_mae"] is None or m[name]["blendshape_mae"] >= 0
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["format"] == "lipsync3d-evaluation" and doc["rows"] == [n_train, len(ds)]
    assert doc["metrics"]["model"]["lmd_px"] == pytest.approx(m["model"]["lmd_px"])
    assert (out / "openness.png").stat().st_size > 10_000 and (out / "atlases.png").stat().st_size > 10_000


@pytest.mark.slow
def test_baselines_have_the_right_shapes(evaluated):
    _, _, (model_dir, ds, _) = evaluated
    config = json.loads((model_dir / "config.json").read_text())
    n_train = config["split"]["train_frames"]
    train = evaluate._frames(ds, np.arange(n_train))
    spec = np.asarray(ds.spectrograms[n_train:])
    n = len(spec)
    for pred in (evaluate.static_baseline(train, n), evaluate.envelope_baseline(train, spec),
                 evaluate.retrieval_baseline(train, spec)):
        assert pred.vertices.shape == (n, 468, 3) and pred.vertices.dtype == np.float32
        assert pred.lips.shape == (n, 128, 128, 3) and pred.lips.dtype == np.uint8
        assert pred.blendshapes is None or pred.blendshapes.shape == (n, 52)
    # retrieval of a training frame's own audio finds that frame
    again = evaluate.retrieval_baseline(train, np.asarray(ds.spectrograms[:5]))
    assert np.array_equal(again.vertices, np.asarray(ds.vertices[:5]))


@pytest.mark.slow
def test_tiny_model_overfits_its_training_frames(evaluated):
    """The issue's test: openness correlation >= 0.9 on the frames it was trained on (auto-regressive)."""
    _, _, (model_dir, ds, _) = evaluated
    n_train = json.loads((model_dir / "config.json").read_text())["split"]["train_frames"]
    train = evaluate._frames(ds, np.arange(n_train))
    pred = evaluate.model_prediction(model_dir, np.asarray(ds.spectrograms[:n_train]), train.breaks, "cpu")
    r = evaluate.pearson(mouth_openness(pred.vertices), mouth_openness(np.asarray(ds.vertices[:n_train])))
    assert r >= 0.9, r
    assert pred.lips.shape == (n_train, 128, 128, 3)


def _relinked_speaker(src, dst, **meta_changes):
    """A speaker directory sharing src's arrays (symlinks) with changed meta.json fields."""
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name != "meta.json":
            (dst / f.name).symlink_to(f)
    meta = json.loads((src / "meta.json").read_text())
    meta.update(meta_changes)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.slow
def test_other_held_out_speakers_and_clear_errors(trained_demo, tmp_path):
    model_dir, ds, _ = trained_demo
    same = _relinked_speaker(ds.path, tmp_path / "same space", fingerprint="another")
    r = evaluate.evaluate_model(model_dir, same, tmp_path / "e1", evaluate.EvaluateOptions(write_plots=False))
    assert r.frames == len(ds)                                    # all frames of a held-out directory
    cylinder = dict(ds.meta["cylinder"], k=ds.meta["cylinder"]["k"] * 1.1)
    other = _relinked_speaker(ds.path, tmp_path / "other", fingerprint="x", cylinder=cylinder)
    with pytest.raises(DatasetError, match="different reference face"):
        evaluate.evaluate_model(model_dir, other, tmp_path / "e2")
    with pytest.raises(EngineError, match="not a LipSync3D model"):
        evaluate.evaluate_model(ds.path, ds.path, tmp_path / "e3")
    no_tail = tmp_path / "no tail"
    shutil.copytree(model_dir, no_tail)
    config = json.loads((no_tail / "config.json").read_text())
    config["split"]["train_frames"] = config["frames"]
    (no_tail / "config.json").write_text(json.dumps(config))
    with pytest.raises(DatasetError, match="trained on all of its frames"):
        evaluate.evaluate_model(no_tail, ds.path, tmp_path / "e4")


@pytest.mark.slow
def test_cli_evaluate(trained_demo, tmp_path, capsys):
    model_dir, ds, _ = trained_demo
    assert main(["evaluate", str(model_dir), str(ds.path), "-o", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "retrieval" in printed and "LMD px" in printed and (tmp_path / "ev" / "evaluation.json").is_file()
    # the texture decoder's crops instead of the mouth bank's: the same mesh, other lips
    assert main(["evaluate", str(model_dir), str(ds.path), "-o", str(tmp_path / "net"), "--texture", "network"]) == 0
    bank, net = (json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("ev", "net"))
    assert net["options"]["texture"] == "network" and bank["options"]["texture"] == "auto"
    assert net["metrics"]["model"]["lmd_px"] == pytest.approx(bank["metrics"]["model"]["lmd_px"], abs=1e-9)
    assert abs(net["metrics"]["model"]["lip_ssim"] - bank["metrics"]["model"]["lip_ssim"]) > 1e-4
    assert net["metrics"]["retrieval"] == bank["metrics"]["retrieval"]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path), str(ds.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a LipSync3D model" in err[0]


@pytest.mark.slow
def test_held_out_videos_are_prepared_in_the_model_space(trained_demo, demo_video, tmp_path):
    """Videos as HELD_OUT: prepared against the model's speaker, they land in its normalized space."""
    model_dir, ds, _ = trained_demo
    video, _ = demo_video
    r = evaluate.evaluate_model(model_dir, [video], tmp_path / "ev", evaluate.EvaluateOptions(write_plots=False))
    held = dataset.open_speaker(tmp_path / "ev" / "held_out_speaker")
    assert r.frames == len(held) == len(ds)
    assert held.meta["cylinder"] == ds.meta["cylinder"] and held.meta["reference"]["speaker"]
    assert np.abs(np.asarray(held.vertices) - np.asarray(ds.vertices)).max() < 1e-3   # the same video, same space
    diff = np.abs(np.asarray(held.lips, np.int16) - np.asarray(ds.lips, np.int16))
    assert diff.mean() < 2.0, diff.mean()
    fitted = (ds.path / "blendshapes.npy").is_file()     # blendshapes are fitted when training had them
    assert (tmp_path / "ev" / "held_out_speaker" / "blendshapes.npy").is_file() == fitted
    assert (r.metrics["model"]["blendshape_mae"] is not None) == fitted
