"""Image losses of training, also used to score predictions (apps/evaluate.py).

Owns: SSIM (Wang et al. 2004) of torch images in [0, 1], and its hand-derived gradient for
training (_SSIMLoss). Must not: know the model or the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5       # Wang et al. 2004
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # for images in [0, 1]


def _gaussian(dtype: torch.dtype, device) -> torch.Tensor:
    """(11,) normalised Gaussian window (sigma 1.5)."""
    x = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _blur(maps: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """The separable 11x11 Gaussian over every channel of (B, n, H, W): an 11x1 then a 1x11 depthwise
    convolution ("valid": H-10 x W-10), or with transpose its adjoint (H+10 x W+10), which carries a
    gradient back. Channels-last, where oneDNN's depthwise kernels are fast on this CPU."""
    n = maps.shape[1]
    g = _gaussian(maps.dtype, maps.device)
    conv = F.conv_transpose2d if transpose else F.conv2d
    x = conv(maps.contiguous(memory_format=torch.channels_last), g.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
    return conv(x, g.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)


def _stack(maps: list[torch.Tensor]) -> torch.Tensor:
    """(B, C, H, W) maps stacked along the channels, laid out channels-last (one copy, no conversion)."""
    return torch.cat([m.permute(0, 2, 3, 1) for m in maps], -1).permute(0, 3, 1, 2)


def _stacked(like: torch.Tensor, n: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """An empty (B, n*C, H, W) channels-last tensor shaped like (B, C, H, W) `like`, and its n parts."""
    b, c, h, w = like.shape
    stack = torch.empty((b, h, w, n * c), dtype=like.dtype, device=like.device).permute(0, 3, 1, 2)
    return stack, stack.split(c, 1)


def _moments(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Local means, second moments and cross moment of a and b (B, C, H, W), blurred in one pass.
    Without autograd the products are written straight into the stack (no copies, no temporaries)."""
    c = a.shape[1]
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _blur(_stack([a, b, a * a, b * b, a * b])).split(c, 1)
    stack, (m_a, m_b, m_aa, m_bb, m_ab) = _stacked(a, 5)
    m_a.copy_(a)
    m_b.copy_(b)
    torch.mul(a, a, out=m_aa)
    torch.mul(b, b, out=m_bb)
    torch.mul(a, b, out=m_ab)
    return _blur(stack).split(c, 1)


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> (B, C, H-10, W-10) SSIM map (Gaussian window 11, sigma 1.5)."""
    mu_a, mu_b, aa, bb, ab = _moments(a, b)
    var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))


def _ssim_and_partials(a: torch.Tensor, b: torch.Tensor, partials: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSIM map of a and b and, with `partials`, dS/d(mu_a, e_aa, e_ab) stacked channels-last (for
    _SSIMLoss.backward). In place where it can be: each step is a pass over B x C x (H-10) x (W-10) floats."""
    mu_a, mu_b, e_aa, e_bb, e_ab = _moments(a, b)
    a1 = torch.mul(mu_a, mu_b).mul_(2).add_(SSIM_C1)                  # 2 mu_a mu_b + C1
    a2 = torch.rsub(a1, SSIM_C1 + SSIM_C2).add_(e_ab, alpha=2)        # 2 (e_ab - mu_a mu_b) + C2
    b1 = torch.mul(mu_a, mu_a).addcmul_(mu_b, mu_b).add_(SSIM_C1)     # mu_a^2 + mu_b^2 + C1
    b2 = torch.add(e_aa, e_bb).sub_(b1).add_(SSIM_C1 + SSIM_C2)       # var_a + var_b + C2
    inv_b1, inv_b2 = torch.reciprocal(b1), torch.reciprocal(b2)
    s = torch.mul(a1, a2).mul_(inv_b1).mul_(inv_b2)
    if not partials:
        return s, None
    stack, (d_mu_a, d_e_aa, d_e_ab) = _stacked(s, 3)
    torch.mul(a1, inv_b1, out=d_e_ab).mul_(inv_b2).mul_(2)                        # 2 a1 / (b1 b2)
    torch.mul(s, inv_b2, out=d_e_aa).neg_()                                       # -s / b2
    torch.sub(a2, a1, out=d_mu_a).mul_(mu_b).mul_(inv_b1).mul_(inv_b2)            # 2 mu_b (a2 - a1) / (b1 b2)
    d_mu_a.add_(torch.sub(inv_b2, inv_b1).mul_(mu_a).mul_(s)).mul_(2)            # + 2 mu_a s (1/b2 - 1/b1)
    return s, stack


class _SSIMLoss(torch.autograd.Function):
    """Mean SSIM of a against a fixed b, with the gradient written out: S = A1 A2 / (B1 B2) is a function
    of the five blurred moments, so dS/da = blur^T(dS/dmu_a) + 2a blur^T(dS/dE[aa]) + b blur^T(dS/dE[ab]),
    three adjoint blurs instead of autograd's trace through ten maps (2x faster on this CPU, the same
    gradient to float rounding: tests/engine/test_losses.py)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        s, partials = _ssim_and_partials(a, b, partials=True)
        ctx.save_for_backward(a, b, partials)
        ctx.count = s.numel()
        return s.mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, partials = ctx.saved_tensors
        g_mu, g_aa, g_ab = _blur(partials * (grad / ctx.count), transpose=True).split(a.shape[1], 1)
        return torch.addcmul(g_mu, a, g_aa, value=2).addcmul_(b, g_ab), None


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) images in [0, 1] (Gaussian window 11, sigma 1.5); differentiable in a
    (the prediction; b, the target, takes no gradient)."""
    if b.requires_grad:
        return ssim_map(a, b).mean()
    if torch.is_grad_enabled() and a.requires_grad:
        return _SSIMLoss.apply(a, b)
    return _ssim_and_partials(a, b, partials=False)[0].mean()     # no gradient wanted (held-out frames)
