"""The network of Section 3.2 / Appendix G: shapes, published sizes, PCA initialisation."""

import pytest
import torch

from lipsync_engine.model.network import (AtlasEncoder, GeometryDecoder, LipSync3D, ModelDimensions,
                                  UpsampledConv2d, preset_dimensions)

TINY = ModelDimensions().scaled(1 / 32)


def test_forward_shapes_and_ranges():
    torch.manual_seed(0)
    model = LipSync3D(TINY)
    spec = torch.randn(3, 256, 24, 2)
    out = model(spec, torch.rand(3, 3, 128, 128) * 2 - 1)
    assert out["vertex_deltas"].shape == (3, 468, 3)
    assert out["atlas_delta"].shape == (3, 3, 128, 128)
    assert out["blendshapes"].shape == (3, 52)
    assert out["atlas_delta"].abs().max() <= 1.0
    first = model(spec)  # the first frame: an all-zeros previous atlas
    assert first["atlas_delta"].shape == (3, 3, 128, 128)


@pytest.mark.parametrize("kernel", [3, 5])
def test_upsampled_convolution_is_upsampling_then_convolution(kernel):
    """The texture decoder's last layer, computed in phase space on a CPU, is bilinear 2x upsampling
    (align_corners=False, edges included) followed by the convolution, values and gradients."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    layer = UpsampledConv2d(8, 3, kernel).double()
    x = torch.randn(2, 8, 9, 12, dtype=torch.float64, requires_grad=True)   # odd and even sizes
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), layer.weight,
                   layer.bias, padding=kernel // 2)
    out = layer(x)
    assert out.shape == (2, 3, 18, 24)
    assert float((out - ref).detach().abs().max()) < 1e-12
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, layer.weight, layer.bias), g),
                    torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)):
        assert float((a - b).abs().max()) < 1e-10 * max(1.0, float(b.abs().max()))
    # a channels-last input (the phases interleaved by another path) gives the same, channels-last
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_cl = layer(x_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last) and not out_cl.is_contiguous()
    assert float((out_cl - ref).detach().abs().max()) < 1e-12
    grad_cl, grad = torch.autograd.grad(out_cl, x_cl, g)[0], torch.autograd.grad(layer(x), x, g)[0]
    assert float((grad_cl - grad).abs().max()) < 1e-10 * float(grad.abs().max())
    # channels-last float32, as training runs it: the same to float rounding
    layer32 = UpsampledConv2d(8, 3, kernel)
    layer32.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x32 = x.detach().float().contiguous(memory_format=torch.channels_last)
    assert float((layer32(x32).detach().double() - ref.detach()).abs().max()) < 1e-4


def test_the_texture_decoder_keeps_its_checkpoint_names():
    """The last upsampling and convolution became one layer; a checkpoint's names are unchanged."""
    names = [k for k in LipSync3D(TINY).state_dict() if k.startswith("texture.convs.")]
    depth = len(TINY.texture_channels) - 1
    assert names[-2:] == [f"texture.convs.{3 * depth + 1}.weight", f"texture.convs.{3 * depth + 1}.bias"]


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = LipSync3D(TINY)
    out = model(torch.randn(2, 256, 24, 2), torch.rand(2, 3, 128, 128))
    loss = sum(v.square().mean() for v in out.values())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_published_sizes():
    dims = preset_dimensions("paper")
    enc = AtlasEncoder(dims)
    n = sum(p.numel() for p in enc.parameters())
    assert 69.0e6 < n < 70.5e6  # "the paper's AR encoder alone has ~70M parameters"
    model = LipSync3D(dims)
    assert model.texture.fc[0].in_features == 34 and model.texture.fc[0].out_features == 16384
    assert model.geometry.hidden.out_features == 150 and model.geometry.out.out_features == 1404
    no_ar = LipSync3D(ModelDimensions(atlas_code=0).scaled(1 / 32))
    assert no_ar.atlas is None and no_ar.texture.fc[0].in_features == 32


def test_bad_input_shapes_name_the_shape():
    model = LipSync3D(TINY)
    with pytest.raises(ValueError, match=r"\(2, 24, 256, 2\)"):
        model(torch.zeros(2, 24, 256, 2))


def test_pca_initialisation_reproduces_the_training_deltas():
    torch.manual_seed(0)
    basis = torch.randn(5, 468 * 3)
    weights = torch.randn(200, 5) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5])
    deltas = (weights @ basis + 0.3).view(200, 468, 3)
    dec = GeometryDecoder(ModelDimensions())
    explained = dec.init_from_pca(deltas)
    assert explained > 0.999
    mean = dec.out.bias.view(468, 3)
    assert torch.allclose(mean, deltas.mean(0), atol=1e-4)
    # every training delta is reachable through the output layer: residual of a least-squares fit
    w = dec.out.weight.double()
    centred = (deltas.view(200, -1) - deltas.view(200, -1).mean(0)).double()
    coef = torch.linalg.lstsq(w, centred.T).solution
    assert (w @ coef - centred.T).abs().max() < 1e-4  # float32 weights, deltas of size ~10


def test_dimensions_round_trip():
    d = ModelDimensions().scaled(0.25)
    assert ModelDimensions.from_dict(d.to_dict()) == d
    with pytest.raises(ValueError, match="unknown preset"):
        preset_dimensions("huge")


@pytest.mark.parametrize("dims", [TINY, preset_dimensions("cpu")], ids=["tiny", "cpu"])
def test_numpy_audio_path_equals_the_torch_network(dims):
    """model/numpy_heads.py runs the audio encoder and the vertex and blendshape decoders without
    torch (predicting a line never imports it); same weights, same numbers to float32 rounding."""
    import numpy as np

    from lipsync_engine.model.numpy_heads import AudioHeads

    torch.manual_seed(3)
    model = LipSync3D(dims).eval()
    heads = AudioHeads.from_tensors({f"model.{k}": v.numpy() for k, v in model.state_dict().items()}, dims)
    spec = np.random.default_rng(3).normal(size=(37, 256, 24, 2)).astype(np.float32)   # 37: two BATCHes and a rest
    with torch.no_grad():
        codes = model.audio(torch.from_numpy(spec))
        deltas, bs = model.geometry(codes).numpy(), model.blendshapes(codes).numpy()
    ours = heads.codes(spec)
    assert ours.dtype == np.float32 and ours.shape == (37, dims.audio_code)
    np.testing.assert_allclose(ours, codes.numpy(), rtol=1e-5, atol=1e-6 * float(codes.abs().max()))
    np.testing.assert_allclose(heads.geometry(ours), deltas, rtol=1e-5, atol=1e-5 * float(np.abs(deltas).max()))
    np.testing.assert_allclose(heads.blendshapes(ours), bs, rtol=1e-5, atol=1e-5 * float(np.abs(bs).max()))
    state = {f"model.{k}": v.numpy() for k, v in model.state_dict().items()}
    del state["model.audio.convs.4.weight"]
    with pytest.raises(ValueError, match="model.audio.convs.4.weight is missing"):
        AudioHeads.from_tensors(state, dims)
    with pytest.raises(ValueError, match=r"model\.audio\.convs\.\d+\.weight is \(.*\), the network in the config needs"):
        AudioHeads.from_tensors({f"model.{k}": v.numpy() for k, v in model.state_dict().items()},
                                ModelDimensions().scaled(1 / 16))



def test_geometry_stop_rule_restores_the_best_epochs_weights():
    """Patience 5, never before epoch 8: the best validation correlation (epoch 3, a spike) is
    kept once 5 epochs have not beaten it, with that epoch's weights."""
    from lipsync_engine.model.network import LipSync3D
    from lipsync_engine.model.train import TrainOptions, _early_stop

    model = LipSync3D(TINY)
    options = TrainOptions(geometry_patience=5)
    r = [0.50, 0.60, 0.80, 0.55, 0.60, 0.62, 0.66, 0.70, 0.72, 0.74]
    stop: dict = {}
    weight = next(model.geometry.parameters())
    for epoch, value in enumerate(r):
        with torch.no_grad():
            weight.fill_(epoch + 1)               # the weights say which epoch they are
        _early_stop(model, options, stop, value, n_val=200, epoch=epoch)
        if stop.get("stopped"):
            break
    assert stop.get("stopped") and epoch + 1 == 8
    assert float(next(model.geometry.parameters()).detach().flatten()[0]) == 3


def test_phone_dropout_leaves_a_frames_phones_out_of_its_code():
    """phone_keep (TrainOptions.phone_dropout, training only): 0 gives the spectrogram's code alone,
    1 the code with the phones; frames of one batch are independent. The option is range-checked."""
    from dataclasses import replace

    from lipsync_engine.model.train import TrainOptions

    dims = replace(TINY, phone_context=3, n_phones=40)
    torch.manual_seed(5)
    model = LipSync3D(dims)
    torch.nn.init.normal_(model.audio.phones.weight)    # trained phones: a nonzero contribution
    spec = torch.randn(4, 256, 24, 2)
    phones = torch.randint(0, dims.n_phones, (4, 3))
    with torch.no_grad():
        with_phones = model.audio(spec, phones)
        alone = model.audio.fc(model.audio.convs(spec.permute(0, 3, 1, 2)).flatten(1))
        mixed = model.audio(spec, phones, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert (with_phones - alone).abs().min() > 0
    torch.testing.assert_close(mixed[[0, 2]], with_phones[[0, 2]])
    torch.testing.assert_close(mixed[[1, 3]], alone[[1, 3]])
    assert TrainOptions(phone_dropout=0.5).phone_dropout == 0.5
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="phone_dropout"):
            TrainOptions(phone_dropout=bad)
