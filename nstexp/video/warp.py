"""Backward warping along an optical flow.

A flow from frame a to frame b is a tensor (B, 2, H, W) on a's pixels: channel 0 the horizontal
displacement u, channel 1 the vertical v, in pixels, so that the point (x, y) of a is seen at
(x + u, y + v) in b. Pixel (x, y) is the centre of column x and row y.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def positions(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a lands in b: x + u(x, y) and y + v(x, y), (B, H, W) each."""
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    return xs + flow[:, 0], ys + flow[:, 1]


def inside(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixel lands inside b, between its first and last pixel centres
    (where bilinear sampling has all four neighbours)."""
    x, y = positions(flow)
    h, w = flow.shape[-2:]
    return ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1))[:, None]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """b's image (B, C, H, W) seen from a: out(x) = image(x + flow(x)), bilinear; a point outside
    b takes the nearest border pixel's value. `flow` (B or 1, 2, H, W), from a to b."""
    x, y = positions(flow)
    h, w = image.shape[-2:]
    # grid_sample's coordinates with align_corners=True: -1 and 1 are the first and last pixel centres.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)  # (B, H, W, 2)
    grid = grid.expand(image.shape[0], -1, -1, -1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def blend(old: torch.Tensor, warped: torch.Tensor, weights: torch.Tensor, delta: float) -> torch.Tensor:
    """A later pass's start (Ruder et al., IJCV 2018, eq. 10): x' = δ c ∘ ω + (δ̄ 1 + δ (1 − c)) ∘ x_old
    = δ c ∘ ω + (1 − δ c) ∘ x_old, δ̄ = 1 − δ; images (B, C, H, W), weights c (B, 1, H, W)."""
    share = delta * weights
    return share * warped + (1 - share) * old
