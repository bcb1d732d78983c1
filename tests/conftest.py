"""Shared fixtures. Everything is synthetic and made here: no test reads ../shared.

The synthetic talking-face video (built from scikit-image's public-domain astronaut photo)
and its prepared speaker directory are made once per session, since real MediaPipe
tracking and atlas building take a few seconds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")

DEMO_SECONDS = 6.0
DEMO_FPS = 25.0
# fixtures that run MediaPipe tracking or training: a test using one (directly or through another
# fixture) is slow, so `make test-fast` (-m "not slow") leaves it out
SLOW_FIXTURES = {"demo_video", "prepared_demo", "trained_demo"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def demo_video(tmp_path_factory):
    """(video path, DemoTruth) of a 6 s synthetic talking face with known pose, openness, lighting."""
    from lipsync_engine.demo.video import make_demo_video

    path = tmp_path_factory.mktemp("demo") / "demo speaker é.mp4"  # a space and non-ASCII on purpose
    truth = make_demo_video(path, duration_s=DEMO_SECONDS, fps=DEMO_FPS, seed=7)
    return path, truth


@pytest.fixture(scope="session")
def prepared_demo(demo_video, tmp_path_factory):
    """(SpeakerDataset, PrepareResult, DemoTruth) of the demo video, prepared with 2 worker processes."""
    from lipsync_engine.prepare.dataset import open_speaker
    from lipsync_engine.prepare.pipeline import PrepareOptions, prepare_speaker

    path, truth = demo_video
    out = tmp_path_factory.mktemp("speaker") / "speaker"
    result = prepare_speaker([path], out, PrepareOptions(workers=2, chunk_frames=60))
    return open_speaker(out), result, truth


@pytest.fixture(scope="session")
def trained_demo(prepared_demo, tmp_path_factory):
    """(model dir, SpeakerDataset, DemoTruth): a tiny (1/32 width) model trained on the demo speaker.

    Shared by prediction, Blender and dubbing tests; about a minute on 2 CPU cores. 60 epochs of the
    fast recipe: with 30 the dubbed video's re-tracked mouth followed new audio with r 0.25-0.79
    across seeds, with 60 r 0.74-0.88 (the texture decoder needs the longer run). Without phone
    features: the demo's synthetic voice speaks no language, and a model that hears the spectrogram
    alone streams exactly as it predicts (tests/engine/test_live.py); test_phones.py trains its own.
    """
    from lipsync_engine.rig.fitting import fit_speaker
    from lipsync_engine.model.network import ModelDimensions
    from lipsync_engine.model.train import recipe_options, train_speaker

    ds, _, truth = prepared_demo
    fit_speaker(ds.path)  # blendshape targets, so the model's blendshape head is trained too
    out = tmp_path_factory.mktemp("model") / "demo model"
    train_speaker(ds.path, out, recipe_options("fast", epochs=60, batch_size=16, seed=1, phones=False),
                  dims=ModelDimensions().scaled(1 / 32))
    return out, ds, truth


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory):
    """A model folder made without training, in about a second: the tiny (1/32 width) network at
    seeded initial weights, the canonical face as the reference, grey atlases, an articulation
    gain and centre, and a mouth bank of 24 synthetic crops on jittered meshes. Predicting from it
    runs every part of `lipsync predict` (the numbers mean nothing): protocol, serve and speed tests."""
    import json

    import cv2
    import torch
    from safetensors.torch import save_file

    from lipsync_engine.face.geometry import reference_cylinder
    from lipsync_engine.face.topology import NOSE_TIP, load_topology
    from lipsync_engine.model.articulation import MouthBank
    from lipsync_engine.model.checkpoint import MOUTH_BANK, config_header
    from lipsync_engine.model.network import LipSync3D, ModelDimensions

    out = tmp_path_factory.mktemp("untrained") / "untrained model"
    out.mkdir()
    topo = load_topology()
    ref = topo.vertices.astype(np.float32)
    cylinder = reference_cylinder(ref.astype(np.float64), topo.right_eye, topo.left_eye, NOSE_TIP)
    lips_uv = cylinder.project(ref[topo.lips_outer]).mean(0)
    box = {"row": int(round(lips_uv[1] - 64)), "col": int(round(lips_uv[0] - 64)), "size": 128}
    torch.manual_seed(5)
    dims = ModelDimensions().scaled(1 / 32)
    rng = np.random.default_rng(5)
    tensors = {f"model.{k}": v.contiguous() for k, v in LipSync3D(dims).state_dict().items()}
    tensors.update(reference_vertices=torch.from_numpy(ref), reference_lips=torch.zeros(3, 128, 128),
                   mean_vertex_deltas=torch.zeros(468, 3), mean_blendshapes=torch.full((52,), 0.1),
                   opening_direction=torch.from_numpy(rng.normal(size=(468, 3)).astype(np.float32) / 30))
    save_file(tensors, str(out / "model.safetensors"))
    for name, grey in (("reference_atlas.png", 140), ("reference_atlas_normalized.png", 150)):
        cv2.imwrite(str(out / name), np.full((256, 256, 3), grey, np.uint8))
    jitter = ref[None] + rng.normal(0, 0.05, (24, 468, 3)).astype(np.float32)
    crops = rng.integers(0, 256, (24, 128, 128, 3), dtype=np.uint8)
    np.savez(out / MOUTH_BANK, **MouthBank.build(crops, jitter, cylinder, size=24).to_arrays())
    config = {**config_header(), "dims": dims.to_dict(), "spectrogram_scale": 1.0, "fps": 25.0, "lip_box": box,
              "cylinder": cylinder.to_dict(), "model_id": "untrained", "has_blendshapes": True,
              "articulation": {"gain": 1.3, "fitted_on": None}, "mouth_bank": {"file": MOUTH_BANK, "size": 24},
              "epochs_done": 0}
    (out / "config.json").write_text(json.dumps(config))
    return out
