"""Content loss (Gatys et al., eq. 1): how far the generated image's features are from the content image's.

F are the generated image's features (B, N, H, W), P the content image's.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import ContentLoss, register


def content_loss(features: torch.Tensor, target: torch.Tensor, normalization: str = "gatys",
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Content loss of one layer; features (B, N, H, W), target (B or 1, N, H, W) -> (B,).

    gatys: 1/2 * sum (F - P)^2 (paper eq. 1); mean: mean squared error.
    mask (B or 1, 1, H, W), weights in [0, 1]: each position's term is weighted by the mask
    (the mean is then over the mask's mass), so content is kept only where the mask is white.
    """
    sq = (features - target).pow(2)  # (B, N, H, W)
    if mask is not None:
        sq = sq * mask
        if normalization == "mean":
            return sq.flatten(1).sum(1) / (features.shape[1] * mask.flatten(1).sum(1)).clamp_min(1e-12)
    sq = sq.flatten(1)  # (B, N*M)
    if normalization == "gatys":
        return 0.5 * sq.sum(1)
    if normalization == "mean":
        return sq.mean(1)
    raise ValueError(f"unknown content normalization {normalization!r}")


@register
class SquaredError(ContentLoss):
    """content.loss=squared_error: the paper's eq. 1, normalized by `content.normalization`."""

    name = "squared_error"

    def __init__(self, content, seed: int = 0):
        super().__init__(content, seed)
        self.normalization = content.normalization

    def distance(self, f, target, guide=None):
        return content_loss(f, target, self.normalization, guide)

    decomposes = "positions"  # Σ (F − P)² over the positions

    def partial(self, f, target, box):
        y0, y1, x0, x1 = box
        return ((f.float() - target[..., y0:y1, x0:x1].float()).pow(2).flatten(1).sum(1),)

    def finish(self, sums, target, positions):
        (s,) = sums  # (B,)
        return 0.5 * s if self.normalization == "gatys" else s / (target.shape[1] * positions)
