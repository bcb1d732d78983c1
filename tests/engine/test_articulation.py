"""Articulation (issue 13): the measures, the fitted gain, the mouth bank and a held-out check on the demo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lipsync_engine.model import articulation
from lipsync_engine.model.articulation import (GAIN_RANGE, MouthBank, MouthRenderer, amplitude_ratio, apply_gain,
                                               fit_gain, fit_gain_to_lip_gap, gain_rest, mouth_window, opening_component,
                                               opening_direction, pooled_std, speed_ratio, teeth_fraction)
from lipsync_engine.face.topology import LOWER_LIP_INNER, UPPER_LIP_INNER
from lipsync_engine.prepare.normalize import mouth_openness


def test_amplitude_and_speed_ratios_are_pooled_per_take():
    t = np.linspace(0, 6 * np.pi, 300)
    true = np.sin(t)
    breaks = np.zeros(300, bool)
    breaks[[0, 150]] = True
    # a constant offset per take is not articulation: only the variation about each take's mean counts
    pred = 0.5 * true + np.where(np.arange(300) < 150, 0.0, 3.0)
    assert amplitude_ratio(pred, true, breaks) == pytest.approx(0.5, rel=1e-6)
    assert speed_ratio(pred, true, breaks) == pytest.approx(0.5, rel=1e-3)
    assert pooled_std(np.full(10, 2.0), np.r_[True, np.zeros(9, bool)]) == 0.0


def test_fitted_gain_scales_openness_by_the_expected_factor(prepared_demo):
    """Motion shrunk to 40% about its mean: the fitted gain is 2.5 and, applied about the model's
    mean, restores the amplitude and the mean mouth; up to 1 the gain scales about the rest face."""
    ds = prepared_demo[0]
    rest = np.asarray(ds.reference_vertices, np.float32)
    true = np.asarray(ds.vertices, np.float32) - rest           # deltas from the rest face
    breaks = np.asarray(ds.breaks)
    centre = true.mean(0)
    shrunk = centre + 0.4 * (true - centre)
    gain = fit_gain(mouth_openness(rest + shrunk), mouth_openness(rest + true), breaks)
    assert gain == pytest.approx(2.5, rel=0.03)
    restored = apply_gain(shrunk, gain, centre)
    assert amplitude_ratio(mouth_openness(rest + restored), mouth_openness(rest + true), breaks) == \
        pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(restored.mean(0), centre, atol=1e-5)
    np.testing.assert_allclose(apply_gain(shrunk, 0.0, centre), 0.0)              # 0 = the rest face
    np.testing.assert_allclose(apply_gain(shrunk, 1.0, centre), shrunk)           # 1 = the raw output
    np.testing.assert_allclose(apply_gain(shrunk, 0.5, centre), 0.5 * shrunk)     # <= 1: about the rest face
    assert fit_gain(mouth_openness(rest + true), mouth_openness(rest + true), breaks) == pytest.approx(1.0, abs=0.01)
    # a flat prediction cannot be rescued, a tiny one is clipped to the range
    flat = np.full(len(true), float(mouth_openness(rest)))
    assert fit_gain(flat, mouth_openness(rest + true), breaks) == 1.0
    assert fit_gain(mouth_openness(rest + 0.01 * true), mouth_openness(rest + true), breaks) == GAIN_RANGE[1]


def test_gain_along_the_opening_direction_leaves_other_motion_alone(prepared_demo):
    """Above 1 the gain scales only the motion along the opening direction: a delta orthogonal to
    it is unchanged, the opening component grows by the gain."""
    ds = prepared_demo[0]
    rest = np.asarray(ds.reference_vertices, np.float32)
    true = np.asarray(ds.vertices, np.float32) - rest
    u = opening_direction(true, mouth_openness(rest + true))
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-5)
    centre = true.mean(0)
    c = opening_component(true, centre, u)
    assert np.corrcoef(c, mouth_openness(rest + true))[0, 1] > 0.9
    other = np.random.default_rng(0).normal(size=(468, 3)).astype(np.float32)
    other -= (other.ravel() @ u.ravel()) * u                                  # orthogonal to the opening
    moved = apply_gain(np.stack([centre + other, centre + 0.01 * u]), 3.0, centre, u)
    np.testing.assert_allclose(moved[0], centre + other, atol=1e-5)
    np.testing.assert_allclose(moved[1], centre + 0.03 * u, atol=1e-6)


def _demo_motion(prepared_demo):
    """(rest face, true deltas from it, breaks, true openness, opening direction, mean delta) of the demo speaker."""
    ds = prepared_demo[0]
    rest = np.asarray(ds.reference_vertices, np.float32)
    true = np.asarray(ds.vertices, np.float32) - rest
    openness = mouth_openness(rest + true)
    return rest, true, np.asarray(ds.breaks), openness, opening_direction(true, openness), true.mean(0)


def test_gain_adds_the_opening_the_lip_gap_predicts_and_never_closes_the_lips_past_touching(prepared_demo):
    """The predicted motion shrunk to half about its mean, plus per-frame noise on the brow and cheeks
    (the face the audio explains least) that projects onto the opening direction. Read from the lip
    gap, the motion the gain adds opens the mouth exactly where the prediction does: the gap
    follows the speaker's as closely as before (r > 0.99) and varies g times as much; read from
    the projection (models before 2026-12-08) the noise opens and closes the mouth at random. A
    closed mouth pushed further closed stops where the lips touch."""
    rest, true, breaks, openness, u, centre = _demo_motion(prepared_demo)
    far = np.linalg.norm(rest - rest[[UPPER_LIP_INNER, LOWER_LIP_INNER]].mean(0), axis=1) > \
        0.35 * np.linalg.norm(rest[10] - rest[152])
    far[[10, 152]] = False                                     # the face height mouth_openness divides by stays
    pattern = np.where(far[:, None], u, 0.0).astype(np.float32)
    noise = np.random.default_rng(1).normal(size=len(true)).astype(np.float32)
    # as much noise in the projection on the opening direction as the shrunk opening itself carries
    scale = 0.5 * pooled_std(opening_component(true, centre, u), breaks) / float(pattern.ravel() @ u.ravel())
    pred = centre + 0.5 * (true - centre) + (noise * scale)[:, None, None] * pattern
    raw = mouth_openness(rest + pred)
    assert np.corrcoef(raw, openness)[0, 1] > 0.99                # the noise leaves the lips alone
    by_gap = mouth_openness(rest + apply_gain(pred, 2.0, centre, u, rest))
    by_projection = mouth_openness(rest + apply_gain(pred, 2.0, centre, u))
    assert np.corrcoef(by_gap, openness)[0, 1] > 0.99
    assert amplitude_ratio(by_gap, raw, breaks) == pytest.approx(2.0, rel=0.05)
    assert np.corrcoef(by_projection, openness)[0, 1] < 0.95
    # the closed mouth: closing past the touching lips would cross them, and the gap (a distance) would grow
    closed = true[np.argmin(openness)]
    along = u[UPPER_LIP_INNER] - u[LOWER_LIP_INNER]
    for g in (3.0, 5.0):
        v = rest + apply_gain(closed[None], g, centre, u, rest)[0]
        gap = v[UPPER_LIP_INNER] - v[LOWER_LIP_INNER]
        assert gap @ along >= -1e-5 * float(np.linalg.norm(gap) * np.linalg.norm(along))   # not through each other
        assert mouth_openness(v) < mouth_openness(rest + closed)
        rest_gap = abs(rest[UPPER_LIP_INNER, 1] - rest[LOWER_LIP_INNER, 1])
        assert v[UPPER_LIP_INNER, 1] > v[LOWER_LIP_INNER, 1] - 0.02 * rest_gap
    # which rule a model's gain was fitted with is in its config
    assert gain_rest({"gain": 1.4, "component": "lip_gap"}, rest) is rest
    assert gain_rest({"gain": 1.4}, rest) is None and gain_rest(None, rest) is None


def test_gain_fitted_to_the_lip_gap_restores_the_speakers_mouth_opening(prepared_demo):
    """Motion shrunk to 40% about its mean: the gain fitted on the lip gap is 2.5 and makes the gap
    vary as much as the speaker's. With the projection older models' gains were applied with
    (along_gap=False), a lip motion across the opening direction that keeps the lips apart leaves
    the lip gap short when the opening component is matched; fitted on the lip gap itself, the gap
    varies as much as the speaker's."""
    rest, true, breaks, openness, u, centre = _demo_motion(prepared_demo)
    shrunk = centre + 0.4 * (true - centre)
    target = pooled_std(openness, breaks)
    g = fit_gain_to_lip_gap(shrunk, rest, centre, u, breaks, target)
    assert g == pytest.approx(2.5, rel=0.03)
    assert amplitude_ratio(mouth_openness(rest + apply_gain(shrunk, g, centre, u, rest)), openness, breaks) == \
        pytest.approx(1.0, abs=0.005)
    # the lower inner lip pulled towards the upper one as the mouth opens, across the opening
    # direction: the lip gap then grows less than the opening component
    pull = np.zeros((468, 3), np.float32)
    pull[LOWER_LIP_INNER] = rest[UPPER_LIP_INNER] - rest[LOWER_LIP_INNER]
    pull -= (pull.ravel() @ u.ravel()) * u
    c = opening_component(shrunk, centre, u)
    shrunk = shrunk + 0.5 * (c / c.std() * openness.std() / (openness.mean() + 1e-9))[:, None, None] * pull
    g_component = fit_gain(opening_component(shrunk, centre, u), opening_component(true, centre, u), breaks)
    g_old = fit_gain_to_lip_gap(shrunk, rest, centre, u, breaks, target, along_gap=False)   # models before 2026-12-08
    assert amplitude_ratio(mouth_openness(rest + apply_gain(shrunk, g_old, centre, u)), openness, breaks) == \
        pytest.approx(1.0, abs=0.005)
    assert amplitude_ratio(mouth_openness(rest + apply_gain(shrunk, g_component, centre, u)), openness, breaks) < 0.8
    assert g_old > g_component
    # what does not move cannot be rescued; too little motion is clipped to the range
    assert fit_gain_to_lip_gap(np.repeat(centre[None], len(true), 0), rest, centre, u, breaks, target) == 1.0
    assert fit_gain_to_lip_gap(0.01 * true, rest, 0.01 * centre, u, breaks, target) == GAIN_RANGE[1]
    assert fit_gain_to_lip_gap(shrunk, rest, centre, u, breaks, float("nan")) == 1.0


def test_mouth_bank_texture_opens_as_far_as_the_mesh(prepared_demo, monkeypatch):
    """Crops from the bank, warped to a mesh, look like the recorded crop of that mesh (SSIM), and a
    wide-open mesh gives a crop whose mouth window is darker than a closed one's."""
    from lipsync_engine.apps.evaluate import ssim_per_frame

    ds = prepared_demo[0]
    lips, vertices = np.asarray(ds.lips), np.asarray(ds.vertices, np.float32)
    n = len(lips)
    bank = MouthBank.build(lips[: n // 2], vertices[: n // 2], ds.cylinder, size=64)
    assert len(bank) == 64 and bank.crops.dtype == np.uint8
    renderer = MouthRenderer(bank, ds.cylinder, ds.meta["lip_box"])
    held = slice(n // 2, n)
    out = renderer.render(vertices[held])
    assert out.shape == (n - n // 2, 128, 128, 3)
    ssim = ssim_per_frame(out, lips[held])
    assert ssim.mean() > 0.9, ssim.mean()
    # chunked rendering with a halo equals the whole sequence
    part = renderer.render(vertices[held][:40], rows=slice(10, 30))
    np.testing.assert_array_equal(part[3:17], renderer.render(vertices[held][:40])[13:27])
    # the frames are warped on RENDER_THREADS threads: the same crops as on one
    monkeypatch.setattr(articulation, "RENDER_THREADS", 1)
    np.testing.assert_array_equal(renderer.render(vertices[held]), out)

    rest = np.asarray(ds.reference_vertices, np.float32)
    opened = mouth_openness(vertices)
    widest = vertices[int(np.argmax(opened))]
    crops = renderer.render(np.stack([rest, rest + 1.5 * (widest - rest)]))
    rows, cols = mouth_window(rest, ds.cylinder, ds.meta["lip_box"])
    dark = [(c[rows, cols].mean(-1) < 0.6 * np.median(c.mean(-1))).mean() for c in crops]
    assert dark[1] > dark[0] + 0.03, dark
    assert teeth_fraction(lips[:5], (rows, cols)).shape == (5,)


def test_teeth_are_kept_in_the_bank_and_not_blended_away(prepared_demo):
    """Frames that show teeth are kept in the bank before the lip-shape medoids, their teeth
    fractions travel with the bank, and a blend in which one crop of three shows teeth draws that
    crop's teeth whole in the mouth interior (a plain blend thins them below the teeth test);
    a bank saved without teeth fractions (older models) blends as before, with 3 crops."""
    import cv2

    from lipsync_engine.face.topology import load_topology

    ds = prepared_demo[0]
    lips, vertices = np.asarray(ds.lips), np.asarray(ds.vertices, np.float32)
    rest = np.asarray(ds.reference_vertices, np.float32)
    cyl, box = ds.cylinder, ds.meta["lip_box"]
    window = mouth_window(rest, cyl, box)
    widest = vertices[int(np.argmax(mouth_openness(vertices)))]
    opened = rest + 1.5 * (widest - rest)
    px = cyl.project(opened[load_topology().lips_inner]) - np.array([box["col"], box["row"]], np.float32)
    plain = lips[int(np.argmin(teeth_fraction(lips, window)))].copy()
    toothy = plain.copy()
    cv2.fillPoly(toothy, [np.round(px).astype(np.int32)], (250, 248, 240))
    frac = teeth_fraction(np.stack([plain, toothy]), window)
    assert frac[0] < articulation.TEETH_MIN_FRACTION <= frac[1], frac

    # the bank: 4 toothy frames among 60 keep their place in a bank of 16
    crops = lips[:60].copy()
    crops[[5, 17, 33, 50]] = toothy
    bank = MouthBank.build(crops, vertices[:60], cyl, size=16, window=window)
    assert len(bank) == 16 and (bank.teeth > 0.5).sum() == 4, bank.teeth   # (the demo face: others near 0.02)
    assert len(MouthBank.build(crops, vertices[:60], cyl, size=1, window=window)) == 1
    again = MouthBank.from_arrays(bank.to_arrays())
    np.testing.assert_array_equal(again.teeth, bank.teeth)
    legacy = MouthBank.from_arrays({k: v for k, v in bank.to_arrays().items() if k != "teeth"})
    assert legacy.teeth is None and articulation.bank_neighbours({"size": 16}) == 3

    # the render: three crops of one mouth shape whose features lie 0, 1 and 2 steps from the
    # query's (weights 0.57, 0.35, 0.08); the second shows teeth
    shapes = np.stack([opened] * 3)
    feats = articulation.lip_features(shapes, cyl) + np.arange(3, dtype=np.float32)[:, None]
    three = MouthBank(np.stack([plain, toothy, plain]), shapes, feats,
                      teeth_fraction(np.stack([plain, toothy, plain]), window).astype(np.float32))
    picked = MouthRenderer(three, cyl, box).render(opened[None])
    blended = MouthRenderer(three, cyl, box, teeth_pick=False).render(opened[None])
    assert MouthRenderer(legacy, cyl, box).teeth is None
    shown = teeth_fraction(np.concatenate([picked, blended]), window)
    assert shown[0] >= 0.8 * frac[1] and shown[1] < articulation.TEETH_MIN_FRACTION, (shown, frac)
    # a bank of one shape (a still video) still blends: finite weights, summing to 1
    same = MouthBank(three.crops, shapes, articulation.lip_features(shapes, cyl), three.teeth)
    w = MouthRenderer(same, cyl, box).weights(opened[None], np.array([True]))
    assert np.isfinite(w).all() and w.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def held_out_model(prepared_demo, tmp_path_factory):
    """A tiny model trained on the first 70% of the demo, validated on the next 15%; the last 15% unseen."""
    from lipsync_engine.model.network import ModelDimensions
    from lipsync_engine.model.train import TrainOptions, train_speaker

    ds = prepared_demo[0]
    speaker = tmp_path_factory.mktemp("art") / "speaker"
    shutil.copytree(ds.path, speaker)
    from lipsync_engine.rig.fitting import fit_speaker

    fit_speaker(speaker)
    out = tmp_path_factory.mktemp("art") / "model"
    # without phone features: the demo's synthetic voice speaks no language (test_phones.py trains with them)
    train_speaker(speaker, out, TrainOptions(epochs=40, batch_size=16, seed=1, val_fraction=0.2,
                                             test_fraction=0.15, mouth_bank=128, phones=False),
                  dims=ModelDimensions().scaled(1 / 32))
    return out, speaker


def test_held_out_demo_is_as_lively_as_the_speaker(held_out_model, tmp_path):
    """Trained on the first part of the demo, the model's held-out predictions move the mouth as much
    as the recording (amplitude ratio 0.8-1.25) and in sync (r >= 0.8), with the gain fitted on the
    validation tail (never on the scored frames)."""
    from lipsync_engine.apps.evaluate import EvaluateOptions, evaluate_model

    model_dir, speaker = held_out_model
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format_version"] == 3 and config["articulation"]["fitted_on"].startswith("lip gap: validation tail")
    assert config["split"]["test_frames"] > 0 and 50 <= config["mouth_bank"]["size"] <= 128
    r = evaluate_model(model_dir, speaker, tmp_path / "eval", EvaluateOptions(write_plots=False))
    m = r.metrics["model"]
    assert 0.8 <= m["amplitude_ratio"] <= 1.25, m
    assert m["openness_r"] >= 0.8, m
    assert m["speed_ratio"] >= 0.7, m
    assert m["sharpness_ratio"] >= 0.8, m
    assert 0.7 <= m["texture_amplitude_ratio"] <= 1.4 and m["texture_openness_r"] >= 0.6, m   # the atlases too
    assert r.metrics["static"]["amplitude_ratio"] == pytest.approx(0.0, abs=1e-9)
    # the rig's jaw: the jawOpen coefficient follows the fitted one. Its amplitude is the vertices' gain's
    # doing (no gain of its own): 1.57 on this synthetic speaker, 1.01 on the anchor (docs/evaluation.md)
    assert m["jaw_r"] >= 0.8 and m["jaw_amplitude_ratio"] > 0.8, m
    assert r.metrics["static"]["jaw_amplitude_ratio"] == pytest.approx(0.0, abs=1e-9)


def test_articulation_zero_is_rest_and_one_is_the_raw_network(held_out_model, demo_video):
    import torch

    from lipsync_engine.io import media
    from lipsync_engine.inference.predictor import PredictOptions, load_predictor

    model_dir, _ = held_out_model
    p = load_predictor(model_dir, "cpu")
    assert p.gain != 1.0
    quiet = dict(fps=25.0, end_s=2.0, smoothing=False, silence_db=float("-inf"))
    rest = p.predict(demo_video[0], PredictOptions(articulation=0.0, **quiet))
    np.testing.assert_allclose(rest.vertices, np.broadcast_to(p.reference_vertices, rest.vertices.shape), atol=1e-6)
    assert np.abs(rest.blendshapes).max() == 0.0
    raw = p.predict(demo_video[0], PredictOptions(articulation=1.0, atlas=False, **quiet))
    default = p.predict(demo_video[0], PredictOptions(atlas=False, **quiet))
    assert p.gain_rest is p.reference_vertices                  # trained today: the gain follows the lip gap
    expected = apply_gain(raw.vertices - p.reference_vertices, p.gain, p.centre["mean_vertex_deltas"],
                          p.centre["opening_direction"], p.gain_rest)
    np.testing.assert_allclose(default.vertices - p.reference_vertices, expected, atol=1e-4)
    # the raw output is the network's own: its geometry decoder on the audio code
    from lipsync_engine.prepare import audio

    track = media.load_audio(demo_video[0])
    spec = audio.spectrogram_frames(track.samples, raw.times)
    with torch.no_grad():
        deltas = p.model.geometry(p.model.audio(torch.from_numpy(spec) * p.scale)).numpy()
    np.testing.assert_allclose(raw.vertices, p.reference_vertices + deltas, atol=1e-4)


def test_a_gain_fitted_before_keeps_the_motion_it_was_fitted_with(held_out_model, demo_video, tmp_path):
    """A model whose gain was fitted before 2026-12-08 (no "component" in its config's articulation
    entry) adds the projection of the motion, as it did; the same weights fitted today add the
    motion that follows the lip gap. The raw network and the rest face are the same for both."""
    from lipsync_engine.inference.predictor import PredictOptions, load_predictor

    model_dir, _ = held_out_model
    old = tmp_path / "fitted before"
    shutil.copytree(model_dir, old)
    config = json.loads((old / "config.json").read_text())
    assert config["articulation"].pop("component") == "lip_gap"
    (old / "config.json").write_text(json.dumps(config))
    p_new, p_old = load_predictor(model_dir, "cpu"), load_predictor(old, "cpu")
    assert p_old.gain_rest is None and p_old.gain == p_new.gain > 1.0
    quiet = dict(fps=25.0, end_s=2.0, smoothing=False, silence_db=float("-inf"), atlas=False)
    a, b = p_new.predict(demo_video[0], PredictOptions(**quiet)), p_old.predict(demo_video[0], PredictOptions(**quiet))
    raw = p_new.predict(demo_video[0], PredictOptions(articulation=1.0, **quiet)).vertices - p_new.reference_vertices
    expected = apply_gain(raw, p_old.gain, p_old.centre["mean_vertex_deltas"], p_old.centre["opening_direction"])
    np.testing.assert_allclose(b.vertices - p_old.reference_vertices, expected, atol=1e-4)
    assert np.abs(a.vertices - b.vertices).max() > 1e-3
    np.testing.assert_allclose(p_old.predict(demo_video[0], PredictOptions(articulation=1.0, **quiet)).vertices,
                               p_new.reference_vertices + raw, atol=1e-6)


def test_version_1_model_still_predicts(held_out_model, demo_video, tmp_path):
    """A model folder of format version 1 (no gain, no mouth bank) predicts with the network texture."""
    from lipsync_engine.inference.predictor import PredictOptions, load_predictor

    model_dir, _ = held_out_model
    old = tmp_path / "old model"
    shutil.copytree(model_dir, old)
    (old / "mouth_bank.npz").unlink()
    config = json.loads((old / "config.json").read_text())
    config["format_version"] = 1
    for key in ("articulation", "mouth_bank"):
        config.pop(key)
    (old / "config.json").write_text(json.dumps(config))
    p = load_predictor(old, "cpu")
    assert p.gain == 1.0 and p.renderer is None
    pred = p.predict(demo_video[0], PredictOptions(fps=25.0, end_s=1.0))
    assert pred.lips.shape == (25, 128, 128, 3)
    with pytest.raises(Exception, match="no mouth bank"):
        p.predict(demo_video[0], PredictOptions(fps=25.0, end_s=1.0, texture="bank"))
