"""Total variation: a smoothness prior on the pixels (Mahendran & Vedaldi, 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tv_loss(image: torch.Tensor, exponent: float = 1.0, wrap: bool = False) -> torch.Tensor:
    """TV = sum over pixels and channels of ((Δx)² + (Δy)²)^exponent; (B, C, H, W) -> (B,).

    Δx, Δy are the differences to the right and lower neighbour; the last column's Δx and
    the last row's Δy are 0 (the image is padded by repeating its edge), or with `wrap` the
    differences to the first column and row (the image on a torus: a seamless texture's). With
    exponent 1 this is the sum of all squared neighbour differences; seed 000 (Keras) uses 1.25.
    """
    padded = F.pad(image, (0, 1, 0, 1), mode="circular" if wrap else "replicate")  # (B, C, H + 1, W + 1)
    dx = padded[:, :, :-1, 1:] - padded[:, :, :-1, :-1]  # (B, C, H, W)
    dy = padded[:, :, 1:, :-1] - padded[:, :, :-1, :-1]
    sq = dx.pow(2) + dy.pow(2)
    return (sq if exponent == 1 else sq.pow(exponent)).flatten(1).sum(1)
