"""Loss functions of neural style transfer, pure and per sample.

Every function takes batched tensors and returns one value per sample, shape (B,),
so independent images can share a forward pass. Notation follows Gatys et al.:
F are the generated image's features, P the content image's, N the number of
channels of a layer and M = H * W its number of positions.
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


def gram_matrix(features: torch.Tensor, normalization: str = "gatys") -> torch.Tensor:
    """Gram matrices per position; features (B, N, H, W) -> (B, N, N).

    gatys: G / M with G_ij = sum_k F_ik F_jk (paper eq. 3). Dividing by the image's own M
      makes a style image's target independent of its pixel count; `style_loss` puts the
      paper's 1 / (4 N^2 M^2) back together, exactly so when both images have M positions;
    mean: G / (N * M) (the PyTorch tutorial's);
    cosine: G of channel vectors normalized to unit L2 norm (seed 004's).
    """
    b, n, h, w = features.shape
    f = features.reshape(b, n, h * w)  # (B, N, M)
    if normalization == "cosine":
        f = f / (f.norm(dim=2, keepdim=True) + 1e-8)
    gram = f @ f.transpose(1, 2)  # (B, N, N)
    if normalization == "gatys":
        gram = gram / (h * w)
    elif normalization == "mean":
        gram = gram / (n * h * w)
    return gram


def style_loss(gram: torch.Tensor, target_gram: torch.Tensor, n: int, normalization: str = "gatys") -> torch.Tensor:
    """Style loss E_l of one layer from `gram_matrix` outputs (B, N, N) -> (B,).

    gatys: sum (G/M - A/M_s)^2 / (4 N^2), which is the paper's eq. 4,
      sum (G - A)^2 / (4 N^2 M^2), when the style image has as many positions as the
      generated one (M_s = M); mean and cosine: mean squared error of the Gram matrices.
    """
    sq = (gram - target_gram).pow(2).flatten(1)  # (B, N*N)
    if normalization == "gatys":
        return sq.sum(1) / (4.0 * n**2)
    if normalization in ("mean", "cosine"):
        return sq.mean(1)
    raise ValueError(f"unknown style normalization {normalization!r}")


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: sum of squared differences of neighbouring pixels; (B, C, H, W) -> (B,)."""
    dh = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).flatten(1).sum(1)
    dw = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).flatten(1).sum(1)
    return dh + dw
