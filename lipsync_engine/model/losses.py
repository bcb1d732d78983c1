"""Image losses of training, also used to score predictions (apps/evaluate.py).

Owns: SSIM (Wang et al. 2004) of torch images in [0, 1]. Must not: know the model or the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5       # Wang et al. 2004
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # for images in [0, 1]


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> (B, C, H-10, W-10) SSIM map (Gaussian window 11, sigma 1.5)."""
    x = torch.arange(SSIM_WINDOW, dtype=a.dtype, device=a.device) - SSIM_WINDOW // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return F.conv2d(t, kernel, groups=a.shape[1])
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    return ssim_map(a, b).mean()
