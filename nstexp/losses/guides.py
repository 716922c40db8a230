"""Guides for spatially controlled losses: a mask taken to a layer's resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_layer(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A mask (1, 1, H, W) at a layer's resolution (h, w), by area averaging."""
    if tuple(mask.shape[-2:]) == tuple(shape):
        return mask
    return F.adaptive_avg_pool2d(mask, shape)
