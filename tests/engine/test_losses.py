"""The SSIM loss of training (model/losses.py): the separable, channels-last blur and the
hand-derived gradient give the textbook SSIM (Wang et al. 2004) and its exact gradient."""

import torch
import torch.nn.functional as F

from lipsync_engine.model.losses import SSIM_C1, SSIM_C2, SSIM_SIGMA, SSIM_WINDOW, ssim, ssim_map


def _textbook_ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The 11x11 Gaussian window applied per map, each moment blurred on its own."""
    x = torch.arange(SSIM_WINDOW, dtype=a.dtype) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return F.conv2d(t, kernel, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))


def _pair(dtype=torch.float64, shape=(3, 3, 36, 44)):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(shape, generator=g, dtype=dtype)
    b = (a + 0.3 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return a, b


def test_ssim_map_is_the_textbook_ssim():
    a, b = _pair()
    assert torch.allclose(ssim_map(a, b), _textbook_ssim_map(a, b), atol=1e-12)
    assert ssim_map(a, b).shape == (3, 3, 26, 34)
    assert abs(float(ssim(a, a)) - 1.0) < 1e-9            # identical images score 1
    a32, b32 = _pair(torch.float32, (4, 3, 128, 128))
    assert float((ssim_map(a32, b32) - _textbook_ssim_map(a32, b32)).abs().max()) < 1e-4
    # the three ways ssim() computes its mean (autograd's, the written-out gradient's, no gradient) agree
    textbook = float(_textbook_ssim_map(a, b).mean())
    with torch.no_grad():
        assert abs(float(ssim(a, b)) - textbook) < 1e-12
    assert abs(float(ssim(a.clone().requires_grad_(True), b).detach()) - textbook) < 1e-12
    assert abs(float(ssim(a, b.clone().requires_grad_(True)).detach()) - textbook) < 1e-12


def test_the_written_out_gradient_is_exact():
    small, target = _pair(shape=(1, 2, 14, 16))           # gradcheck perturbs every input: keep it small
    small.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ssim(x, target), (small,))
    a, b = _pair()
    a.requires_grad_(True)
    fast, = torch.autograd.grad(ssim(a, b), a)
    reference, = torch.autograd.grad(_textbook_ssim_map(a, b).mean(), a)
    assert float((fast - reference).abs().max() / reference.abs().max()) < 1e-10
    # a target that carries a gradient takes autograd's path, and both inputs get one
    b.requires_grad_(True)
    ga, gb = torch.autograd.grad(ssim(a, b), (a, b))
    assert torch.allclose(ga, reference) and float(gb.abs().sum()) > 0
