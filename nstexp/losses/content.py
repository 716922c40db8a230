"""Content loss (Gatys et al., eq. 1): how far the generated image's features are from the content image's.

F are the generated image's features (B, N, H, W), P the content image's.
"""

from __future__ import annotations

import torch


def content_loss(features: torch.Tensor, target: torch.Tensor, normalization: str = "gatys") -> torch.Tensor:
    """Content loss of one layer; features (B, N, H, W), target (B or 1, N, H, W) -> (B,).

    gatys: 1/2 * sum (F - P)^2 (paper eq. 1); mean: mean squared error.
    """
    sq = (features - target).pow(2).flatten(1)  # (B, N*M)
    if normalization == "gatys":
        return 0.5 * sq.sum(1)
    if normalization == "mean":
        return sq.mean(1)
    raise ValueError(f"unknown content normalization {normalization!r}")
