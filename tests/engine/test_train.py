"""Real torch training on the prepared synthetic speaker: loss falls, checkpoints reload, resume works."""

import numpy as np
import pytest
import torch

from lipsync_engine.errors import Cancelled, EngineError
from lipsync_engine.model import ModelDimensions
from lipsync_engine.progress import CancelToken
from lipsync_engine.train import TrainOptions, load_model, ssim, train_speaker

pytestmark = pytest.mark.slow
TINY = ModelDimensions().scaled(1 / 32)


def test_ssim_known_values():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(a, torch.rand(2, 3, 32, 32))) < 0.2


def test_training_learns_mouth_motion_from_audio(prepared_demo, tmp_path):
    """12 epochs of a 1/32-width model: the loss falls and predicted mouth opening follows the video."""
    from lipsync_engine.normalize import mouth_openness

    ds, _, _ = prepared_demo
    opts = TrainOptions(epochs=12, batch_size=16, learning_rate=1e-3, seed=1)
    result = train_speaker(ds.path, tmp_path / "model", opts, dims=TINY)
    import json

    hist = json.loads((tmp_path / "model" / "config.json").read_text())["history"]
    assert len(hist) == 12 and hist[-1]["train"] < 0.9 * hist[0]["train"], hist
    assert (tmp_path / "model" / "loss_curve.png").stat().st_size > 5000
    model, config, extra = load_model(tmp_path / "model")
    assert ModelDimensions.from_dict(config["dims"]) == TINY and extra["reference_lips"].shape == (3, 128, 128)
    spec = torch.from_numpy(np.array(ds.spectrograms[:4])) * config["spectrogram_scale"]
    with torch.no_grad():
        out = model(spec)
        every = model(torch.from_numpy(np.array(ds.spectrograms)) * config["spectrogram_scale"])
    assert out["vertex_deltas"].shape == (4, 468, 3) and torch.isfinite(out["atlas_delta"]).all()
    predicted = mouth_openness(every["vertex_deltas"].numpy() + extra["reference_vertices"].numpy())
    assert np.corrcoef(predicted, mouth_openness(np.asarray(ds.vertices)))[0, 1] > 0.7
    assert result.epochs == 12


def test_resume_continues_and_refuses_to_overwrite(prepared_demo, tmp_path):
    ds, _, _ = prepared_demo
    out = tmp_path / "model"
    token = CancelToken()

    def stop_in_epoch_3(p):
        if p.stage == "train" and p.done > 2.5 * len(ds):
            token.set()

    opts = TrainOptions(epochs=4, batch_size=32, seed=2)
    with pytest.raises(Cancelled):
        train_speaker(ds.path, out, opts, on_progress=stop_in_epoch_3, cancel=token, dims=TINY)
    _, config, _ = load_model(out)
    assert config["epochs_done"] == 2                       # the last finished epoch was kept
    with pytest.raises(EngineError, match="--resume"):
        train_speaker(ds.path, out, opts, dims=TINY)
    first = []
    result = train_speaker(ds.path, out, opts, resume=True, dims=TINY, on_progress=first.append)
    assert result.epochs == 4 and first[0].done >= 2 * len(ds)   # resumed, not restarted
