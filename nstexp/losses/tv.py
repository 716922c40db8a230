"""Total variation: a smoothness prior on the pixels."""

from __future__ import annotations

import torch


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: sum of squared differences of neighbouring pixels; (B, C, H, W) -> (B,)."""
    dh = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    dw = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw
