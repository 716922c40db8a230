"""SSIM (Wang et al., "Image Quality Assessment: From Error Visibility to Structural
Similarity", 2004) with the usual settings: an 11x11 Gaussian window of σ 1.5, K1 = 0.01,
K2 = 0.03, each channel on its own, the image mirrored at its borders (reflection) for the
windows there, the map averaged over every position and channel. This is what torchmetrics'
structural_similarity_index_measure computes (tests/test_metrics.py checks it against it);
it is written out here because importing torchmetrics takes seconds (it imports torchvision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The normalized 2-D Gaussian window, one per channel: (channels, 1, size, size)."""
    d = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """SSIM of images x and y (B, C, H, W) -> (B,); 1 for identical images.

    μ, σ² and σ_xy are Gaussian-weighted local statistics; with c1 = (K1 L)², c2 = (K2 L)²:
    SSIM = (2 μ_x μ_y + c1)(2 σ_xy + c2) / ((μ_x² + μ_y² + c1)(σ_x² + σ_y² + c2)).
    """
    b, c = x.shape[:2]
    window = gaussian_window(size, sigma, c, x)
    pad = (size - 1) // 2
    x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), window, groups=c)  # (5B, C, H, W)
    mu_x, mu_y, xx, yy, xy = stats.split(b)
    var_x, var_y = (xx - mu_x**2).clamp(min=0), (yy - mu_y**2).clamp(min=0)  # not negative by rounding
    cov = xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)
