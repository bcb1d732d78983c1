"""Real torch training on the prepared synthetic speaker: loss falls, checkpoints reload, resume works."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from lipsync_engine.core.errors import Cancelled, EngineError
from lipsync_engine.model.network import LipSync3D, ModelDimensions
from lipsync_engine.core.progress import CancelToken
from lipsync_engine.model.checkpoint import load_model
from lipsync_engine.model.losses import ssim
from lipsync_engine.model.train import (GEOMETRY_PARTS, RECIPES, GeometryAverage, TrainOptions, autocast_dtype,
                                        cpu_has_bf16, recipe_options, texture_autocast_dtype, train_speaker)
from safetensors.torch import load_file
from lipsync_engine.prepare.phones import speaker_phones

pytestmark = pytest.mark.slow
TINY = ModelDimensions().scaled(1 / 32)


def test_ssim_known_values():
    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(a, torch.rand(2, 3, 32, 32))) < 0.2


def test_training_learns_mouth_motion_from_audio(prepared_demo, tmp_path):
    """12 epochs of a 1/32-width model: the loss falls and predicted mouth opening follows the video."""
    from lipsync_engine.prepare.normalize import mouth_openness

    ds, _, _ = prepared_demo
    opts = recipe_options("fast", epochs=12, batch_size=16, seed=1)
    result = train_speaker(ds.path, tmp_path / "model", opts, dims=TINY)
    hist = json.loads((tmp_path / "model" / "config.json").read_text())["history"]
    assert len(hist) == 12 and hist[-1]["train"] < 0.9 * hist[0]["train"], hist
    assert (tmp_path / "model" / "loss_curve.png").stat().st_size > 5000
    model, config, extra = load_model(tmp_path / "model")
    assert ModelDimensions.from_dict(config["dims"]) == TINY.with_phones() and extra["reference_lips"].shape == (3, 128, 128)
    spec = torch.from_numpy(np.array(ds.spectrograms[:4])) * config["spectrogram_scale"]
    heard = torch.from_numpy(speaker_phones(ds.path)).long()          # the default recipe hears phones
    with torch.no_grad():
        out = model(spec, phones=heard[:4])
        every = model(torch.from_numpy(np.array(ds.spectrograms)) * config["spectrogram_scale"], phones=heard)
    assert out["vertex_deltas"].shape == (4, 468, 3) and torch.isfinite(out["atlas_delta"]).all()
    predicted = mouth_openness(every["vertex_deltas"].numpy() + extra["reference_vertices"].numpy())
    assert np.corrcoef(predicted, mouth_openness(np.asarray(ds.vertices)))[0, 1] > 0.7
    assert result.epochs == 12


def _cancel_in_epoch_3(ds, out, opts):
    """Train ds into out and press Ctrl-C halfway through epoch 3 (one epoch = every frame of ds)."""
    token = CancelToken()

    def stop_in_epoch_3(p):
        if p.stage == "train" and p.done > 2.5 * len(ds):
            token.set()

    with pytest.raises(Cancelled):
        train_speaker(ds.path, out, opts, on_progress=stop_in_epoch_3, cancel=token, dims=TINY)


def test_resume_continues_at_the_same_step_with_the_same_loss(prepared_demo, tmp_path):
    """Ctrl-C in epoch 3, then --resume: the same epochs, the same losses as an uninterrupted run."""
    ds, _, _ = prepared_demo
    opts = TrainOptions(epochs=4, batch_size=32, seed=2)
    straight = train_speaker(ds.path, tmp_path / "straight", opts, dims=TINY)
    out = tmp_path / "model"
    _cancel_in_epoch_3(ds, out, opts)
    _, config, _ = load_model(out)
    assert config["epochs_done"] == 2                       # the last finished epoch was kept
    with pytest.raises(EngineError, match="already holds a model$"):  # the library's words; the CLI adds the flag
        train_speaker(ds.path, out, opts, dims=TINY)
    seen = []
    result = train_speaker(ds.path, out, opts, resume=True, on_progress=seen.append)
    assert seen[0].stage == "phones" and (seen[0].done, seen[0].total) == (1, 1)   # the take's phones first
    steps = [p for p in seen if p.stage == "train"]
    assert result.epochs == 4 and steps[0].done == 2 * len(ds) + min(32, len(ds))  # resumed at epoch 3's first step
    a = json.loads((tmp_path / "straight" / "config.json").read_text())["history"]
    b = json.loads((out / "config.json").read_text())["history"]
    assert [h["train"] for h in b] == pytest.approx([h["train"] for h in a], rel=1e-5)
    assert [h["val"] for h in b] == pytest.approx([h["val"] for h in a], rel=1e-5)
    assert result.train_loss == pytest.approx(straight.train_loss, rel=1e-5)
    # the saved geometry is the weight average (GeometryAverage), resumed with the last step's weights beside it
    wa, wb = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for k in (k for k in wa if k.startswith("model.geometry.")):
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k
    assert "loss" in steps[-1].message and "tex" in steps[-1].message  # the bar shows running losses


def test_resume_keeps_the_options_the_run_was_started_with(prepared_demo, tmp_path):
    """Stopped in epoch 2, then resumed with another seed, no test tail and more epochs: the run goes
    on with the seed and test tail it was started with (the same losses as an uninterrupted run,
    the held-out frames still never trained on), takes the new epoch count, and says which options
    it kept."""
    ds, _, _ = prepared_demo
    opts = TrainOptions(epochs=3, batch_size=32, seed=2, test_fraction=0.2)
    straight = train_speaker(ds.path, tmp_path / "straight", opts, dims=TINY)
    out, token = tmp_path / "model", CancelToken()
    per_epoch = len(ds) - int(round(len(ds) * 0.2))

    def stop_in_epoch_2(p):
        if p.stage == "train" and p.done > 1.5 * per_epoch:
            token.set()

    with pytest.raises(Cancelled):
        train_speaker(ds.path, out, opts, on_progress=stop_in_epoch_2, cancel=token, dims=TINY)
    result = train_speaker(ds.path, out, TrainOptions(epochs=3, batch_size=32, seed=5), resume=True)
    assert result.epochs == 3
    assert any("seed=2" in w for w in result.warnings) and any("test_fraction=0.2" in w for w in result.warnings)
    assert len(result.warnings) == 2
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["seed"] == 2 and config["split"]["test_frames"] == len(ds) - per_epoch
    a = json.loads((tmp_path / "straight" / "config.json").read_text())["history"]
    assert [h["train"] for h in config["history"]] == pytest.approx([h["train"] for h in a], rel=1e-5)
    assert result.train_loss == pytest.approx(straight.train_loss, rel=1e-5)
    # more epochs: the one thing besides where it runs that a resumed run takes from the new call
    longer = train_speaker(ds.path, out, replace(opts, epochs=4), resume=True)
    assert longer.epochs == 4 and longer.warnings == ()
    assert json.loads((out / "config.json").read_text())["options"]["epochs"] == 4


@pytest.fixture(scope="module")
def one_epoch_model(prepared_demo, tmp_path_factory):
    ds, _, _ = prepared_demo
    out = tmp_path_factory.mktemp("m") / "model"
    train_speaker(ds.path, out, TrainOptions(epochs=1, seed=3), dims=TINY)
    return out


def test_geometry_epochs_freeze_the_audio_path_and_train_the_texture_on(one_epoch_model, prepared_demo, tmp_path):
    """geometry_epochs=1: epoch 2 leaves encoder, geometry and blendshape weights exactly as epoch 1 left them."""
    ds, _, _ = prepared_demo
    train_speaker(ds.path, tmp_path / "m", TrainOptions(epochs=2, seed=3, geometry_epochs=1), dims=TINY)
    first, second = load_model(one_epoch_model)[0].state_dict(), load_model(tmp_path / "m")[0].state_dict()
    frozen = [k for k in first if k.split(".")[0] in ("audio", "geometry", "blendshapes")]
    learning = [k for k in first if k.split(".")[0] in ("texture", "atlas")]
    assert frozen and learning
    assert all(torch.equal(first[k], second[k]) for k in frozen)
    moved = [float((first[k] - second[k]).abs().max()) for k in learning if first[k].is_floating_point()]
    assert max(moved) > 1e-4 and np.mean([m > 0 for m in moved]) > 0.9
    with pytest.raises(ValueError, match="geometry_epochs"):
        TrainOptions(geometry_epochs=-1)


def _weight_names(weights: dict) -> tuple[list, list]:
    """(the geometry parts' tensor names, the texture path's floating-point ones) of a saved model.safetensors."""
    part = {k: k.split(".")[1] if k.startswith("model.") else "" for k in weights}
    return ([k for k in part if part[k] in GEOMETRY_PARTS],
            [k for k in part if part[k] in ("texture", "atlas") and weights[k].is_floating_point()])


def test_texture_epochs_run_bf16_where_the_cpu_has_it_and_resume_exactly(prepared_demo, tmp_path):
    """mixed_precision "auto" on a CPU: the atlas encoder and texture decoder in bf16 where the CPU has it in
    hardware and their gradient misses the geometry (by default, whose texture path does not shape the audio
    code; in the paper recipe once the geometry is frozen). The geometry is the fp32 run's bit for bit, two
    runs of one seed are the same, and Ctrl-C in a bf16 epoch, then --resume, ends with the uninterrupted
    run's weights exactly (whole-network bf16 could not promise that)."""
    ds, _, _ = prepared_demo
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and texture_autocast_dtype("off", cpu, True) is None
    assert texture_autocast_dtype("auto", cpu, False) is None
    assert texture_autocast_dtype("auto", cpu, True) == (torch.bfloat16 if cpu_has_bf16() else None)
    opts = TrainOptions(epochs=3, seed=5, geometry_epochs=1, texture_shapes_code=True)
    for name, o in (("auto", opts), ("again", opts), ("off", replace(opts, mixed_precision="off"))):
        train_speaker(ds.path, tmp_path / name, o, dims=TINY)
    auto, again, off = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("auto", "again", "off"))
    assert all(torch.equal(auto[k], again[k]) for k in auto)
    geometry, texture = _weight_names(auto)
    assert all(torch.equal(auto[k], off[k]) for k in geometry)
    differ = [not torch.equal(auto[k], off[k]) for k in texture]
    assert (np.mean(differ) > 0.5) if cpu_has_bf16() else not any(differ)     # bf16 rounding, or fp32 both
    assert max(float((auto[k] - off[k]).abs().max()) for k in texture) < 0.05
    _cancel_in_epoch_3(ds, tmp_path / "resumed", opts)
    train_speaker(ds.path, tmp_path / "resumed", opts, resume=True)
    resumed = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.equal(auto[k], resumed[k]) for k in auto)


def test_the_texture_path_leaves_the_geometry_alone_except_in_the_paper_recipe(prepared_demo, tmp_path):
    """By default (TrainOptions.texture_shapes_code False) the texture loss's gradient stops at the audio
    code: the audio encoder, vertices and blendshapes learn the same bit for bit whatever the texture
    path is shown (teacher forcing with the previous crop, or always zeros; bf16 or fp32 where the CPU
    has bf16), while the texture path itself learns differently. The paper recipe (True) trains end to
    end: the same change moves the geometry."""
    ds, _, _ = prepared_demo
    assert not TrainOptions().texture_shapes_code and recipe_options("paper").texture_shapes_code
    weights = {}
    for shared in (False, True):
        for zeros in (0.2, 1.0):
            out = tmp_path / f"{shared}-{zeros}"
            train_speaker(ds.path, out, TrainOptions(epochs=2, seed=4, texture_shapes_code=shared,
                                                     ar_zero_probability=zeros), dims=TINY)
            weights[shared, zeros] = load_file(str(out / "model.safetensors"))
    train_speaker(ds.path, tmp_path / "fp32", TrainOptions(epochs=2, seed=4, mixed_precision="off"), dims=TINY)
    weights["fp32"] = load_file(str(tmp_path / "fp32" / "model.safetensors"))
    geometry, texture = _weight_names(weights[False, 0.2])
    assert geometry and texture
    assert all(torch.equal(weights[False, 0.2][k], weights[False, 1.0][k]) for k in geometry)
    assert all(torch.equal(weights[False, 0.2][k], weights["fp32"][k]) for k in geometry)
    assert not all(torch.equal(weights[False, 0.2][k], weights[False, 1.0][k]) for k in texture)
    assert not all(torch.equal(weights[True, 0.2][k], weights[True, 1.0][k]) for k in geometry)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupted_weights_are_a_clear_error(one_epoch_model, tmp_path):
    bad = _copy(one_epoch_model, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(EngineError, match=r"model\.safetensors: corrupted or not a safetensors"):
        load_model(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(EngineError, match="model.safetensors is missing"):
        load_model(bad)


def test_damaged_training_state_refuses_to_resume(one_epoch_model, prepared_demo, tmp_path):
    ds, _, _ = prepared_demo
    bad = _copy(one_epoch_model, tmp_path / "bad")
    (bad / "train_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(EngineError, match=r"train_state\.pt: cannot resume"):
        train_speaker(ds.path, bad, TrainOptions(epochs=2, seed=3), resume=True)


def test_foreign_files_and_newer_versions_are_refused(one_epoch_model, tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(EngineError, match="is a file, not a model directory"):
        load_model(tmp_path / "clip.mp4")
    with pytest.raises(EngineError, match="not a LipSync3D model directory"):
        load_model(tmp_path)
    foreign = _copy(one_epoch_model, tmp_path / "foreign")
    (foreign / "config.json").write_text(json.dumps({"format": "something-else", "format_version": 1}))
    with pytest.raises(EngineError, match="not a LipSync3D model"):
        load_model(foreign)
    (foreign / "config.json").write_text("{ not json")
    with pytest.raises(EngineError, match="unreadable"):
        load_model(foreign)
    newer = _copy(one_epoch_model, tmp_path / "newer")
    config = json.loads((newer / "config.json").read_text())
    config["format_version"] = 99
    (newer / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="format version 99 is newer"):
        load_model(newer)
    other = _copy(one_epoch_model, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["dims"] = ModelDimensions().scaled(1 / 16).to_dict()
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="weights do not fit the network"):
        load_model(other)


def test_memory_mapped_batches_and_bf16_autocast(prepared_demo, tmp_path):
    """Memory-mapped batches give the same losses as in-memory ones; bf16 autocast trains (CPU)."""
    ds, _, _ = prepared_demo
    base = TrainOptions(epochs=1, batch_size=32, seed=4, val_fraction=0.2)
    a = train_speaker(ds.path, tmp_path / "ram", replace(base, in_memory=True), dims=TINY)
    b = train_speaker(ds.path, tmp_path / "mmap", replace(base, in_memory=False), dims=TINY)
    assert b.train_loss == pytest.approx(a.train_loss, rel=1e-6) and b.val_loss == pytest.approx(a.val_loss, rel=1e-6)
    c = train_speaker(ds.path, tmp_path / "bf16", replace(base, mixed_precision="bf16"), dims=TINY)
    assert np.isfinite(c.train_loss) and c.train_loss == pytest.approx(a.train_loss, rel=0.05)
    config = json.loads((tmp_path / "ram" / "config.json").read_text())
    n_val = int(round(len(ds) * 0.2))
    assert config["split"] == {"train_frames": len(ds) - n_val, "val_frames": n_val, "test_frames": 0,
                               "held_out_frames": n_val,
                               "rule": "frames in order: training, then the validation tail, then the test tail"}
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        train_speaker(ds.path, tmp_path / "fp16", replace(base, mixed_precision="fp16", device="cpu"), dims=TINY)


def test_cosine_schedule_and_the_atlas_encoder_learning_rate():
    from lipsync_engine.model.network import LipSync3D
    from lipsync_engine.model.train import COSINE_FLOOR, _optimizer, _set_learning_rate

    opts = TrainOptions(epochs=5, learning_rate=1e-3, lr_schedule="cosine", atlas_lr_scale=0.1)
    optimizer = _optimizer(LipSync3D(TINY), opts)
    assert len(optimizer.param_groups) == 2
    rates = []
    for epoch in range(5):
        _set_learning_rate(optimizer, opts, epoch)
        rates.append([g["lr"] for g in optimizer.param_groups])
    assert rates[0] == pytest.approx([1e-3, 1e-4]) and rates[-1] == pytest.approx([1e-3 * COSINE_FLOOR, 1e-4 * COSINE_FLOOR])
    assert rates[2][0] == pytest.approx(1e-3 * (COSINE_FLOOR + (1 - COSINE_FLOOR) / 2))
    assert all(a[0] > b[0] for a, b in zip(rates, rates[1:]))
    constant = TrainOptions(epochs=5, learning_rate=1e-3)
    no_ar = _optimizer(LipSync3D(replace(TINY, atlas_code=0)), constant)
    _set_learning_rate(no_ar, constant, 3)
    assert [g["lr"] for g in no_ar.param_groups] == [1e-3]
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainOptions(lr_schedule="step")


def test_lip_weight_weights_the_lip_loops_of_the_vertex_loss():
    from lipsync_engine.face.topology import load_topology
    from lipsync_engine.model.train import _vertex_weights

    topo = load_topology()
    w = _vertex_weights(10.0).numpy()
    lips = np.unique(np.r_[topo.lips_outer, topo.lips_inner])
    assert w.shape == (468,) and len(lips) >= 40
    assert np.all(w[lips] == 11.0) and np.all(np.delete(w, lips) == 1.0)
    with pytest.raises(ValueError, match="lip_weight"):
        TrainOptions(lip_weight=-1.0)


def test_recipes():
    paper = recipe_options("paper", epochs=500)
    assert (paper.learning_rate, paper.geometry_weight, paper.lip_weight, paper.blendshape_weight) == (1e-4, 3.0, 0.0, 0.3)
    assert paper == TrainOptions(epochs=500, learning_rate=1e-4, geometry_weight=3.0, lip_weight=0.0,
                                 geometry_patience=0, phones=False,    # as published: the spectrogram alone,
                                 weight_average=0.0,                    # the last step's weights,
                                 texture_shapes_code=True)              # end to end
    assert recipe_options("fast") == TrainOptions()              # one default: Python, the CLI and the add-on
    fast = recipe_options("fast", learning_rate=5e-4)
    assert (fast.learning_rate, fast.geometry_weight, fast.lip_weight) == (5e-4, 30.0, 10.0)
    assert set(RECIPES) == {"paper", "fast"}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_options("slow")


def test_geometry_average_follows_its_decay_and_swaps_back():
    """GeometryAverage: decay min((1 + t) / (10 + t), 1 - 1 / (epochs * steps)); swap() exchanges the
    model's geometry weights and the average, twice gives them back; the texture is not averaged."""
    model = LipSync3D(TINY)
    geo = [p for name in GEOMETRY_PARTS for p in getattr(model, name).parameters()]
    with torch.no_grad():
        for p in geo:
            p.zero_()
    texture_before = [p.detach().clone() for p in model.texture.parameters()]
    avg = GeometryAverage(model, epochs=0.5, steps_per_epoch=10)        # cap: 1 - 1/5 = 0.8
    expected = 0.0
    for t in range(1, 9):
        with torch.no_grad():
            for p in geo:
                p.fill_(float(t))
        avg.step()
        decay = min((1 + t) / (10 + t), 0.8)
        expected = decay * expected + (1 - decay) * t
    assert expected == pytest.approx(7.10, abs=0.01) and avg.steps == 8     # lags the last step (8) by a little
    assert all(torch.allclose(a, torch.full_like(a, expected)) for a in avg.average)
    avg.swap()
    assert all(torch.allclose(p, torch.full_like(p, expected)) for p in geo)
    assert all(torch.equal(a, torch.full_like(a, 8.0)) for a in avg.average)
    state = avg.state()                  # taken while the average is in the model, as train saves it
    # a resumed run: the model loaded with the average, the last step's weights from the state
    other = LipSync3D(TINY)
    other.load_state_dict(model.state_dict())
    again = GeometryAverage(other, epochs=0.5, steps_per_epoch=10)
    assert again.restore(state) and again.steps == 8
    assert all(torch.equal(p, torch.full_like(p, 8.0)) for name in GEOMETRY_PARTS
               for p in getattr(other, name).parameters())
    assert all(torch.allclose(a, torch.full_like(a, expected)) for a in again.average)
    avg.swap()
    assert all(torch.equal(p, torch.full_like(p, 8.0)) for p in geo)
    assert all(torch.equal(a, b) for a, b in zip(texture_before, model.texture.parameters()))
    assert not again.restore({})
