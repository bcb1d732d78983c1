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
    across seeds, with 60 r 0.74-0.88 (the texture decoder needs the longer run).
    """
    from lipsync_engine.rig.fitting import fit_speaker
    from lipsync_engine.model.network import ModelDimensions
    from lipsync_engine.model.train import recipe_options, train_speaker

    ds, _, truth = prepared_demo
    fit_speaker(ds.path)  # blendshape targets, so the model's blendshape head is trained too
    out = tmp_path_factory.mktemp("model") / "demo model"
    train_speaker(ds.path, out, recipe_options("fast", epochs=60, batch_size=16, seed=1),
                  dims=ModelDimensions().scaled(1 / 32))
    return out, ds, truth
