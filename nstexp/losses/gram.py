"""Gram-matrix style loss (Gatys et al., eqs. 3-5) and the tutorials' normalizations of it.

N is a layer's number of channels and M = H * W its number of positions.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register


class _OuterProduct(torch.autograd.Function):
    """f fᵀ with one matrix product in the backward pass, (dG + dGᵀ) f, where autograd would
    make two (one per operand) and add two tensors the size of f."""

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:  # (B, N, M) -> (B, N, N)
        ctx.save_for_backward(f)
        return f @ f.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (f,) = ctx.saved_tensors
        return (grad + grad.transpose(1, 2)).to(f.dtype) @ f  # under autocast grad may be bf16


def outer_product(f: torch.Tensor) -> torch.Tensor:
    """f fᵀ per sample: (B, N, M) -> (B, N, N)."""
    return _OuterProduct.apply(f)


def gram_matrix(features: torch.Tensor, normalization: str = "gatys",
                guide: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrices per position; features (B, N, H, W) -> (B, N, N).

    gatys: G / M with G_ij = sum_k F_ik F_jk (paper eq. 3). Dividing by the image's own M
      makes a style image's target independent of its pixel count; `style_loss` puts the
      paper's 1 / (4 N^2 M^2) back together, exactly so when both images have M positions;
    mean: G / (N * M) (the PyTorch tutorial's);
    cosine: G of channel vectors normalized to unit L2 norm (seed 004's).
    guide (B or 1, 1, H, W), weights in [0, 1]: the guided Gram matrix of Gatys et al. (CVPR
      2017), G = (F∘T)(F∘T)ᵀ with M replaced by the guide's mass Σ T²: the statistics of a
      region, so an all-ones guide changes nothing.
    """
    b, n, h, w = features.shape
    f = features.reshape(b, n, h * w)  # (B, N, M)
    m = h * w
    if guide is not None:
        t = guide.reshape(guide.shape[0], 1, h * w)  # (B or 1, 1, M)
        f = f * t
        m = t.pow(2).sum(2, keepdim=True)  # (B or 1, 1, 1)
    if normalization == "cosine":
        f = f / (f.norm(dim=2, keepdim=True) + 1e-8)
    gram = outer_product(f)  # (B, N, N)
    if normalization == "gatys":
        gram = gram / m
    elif normalization == "mean":
        gram = gram / (n * m)
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


@register
class Gram(StyleLoss):
    """style.loss=gram: E_l between Gram matrices (Gatys et al., eq. 4), normalized by `style.normalization`."""

    name = "gram"

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        self.normalization = style.normalization

    def target(self, feats, shares):
        # Blending averages the images' Gram matrices (each normalized by its own M).
        return sum(w * gram_matrix(f, self.normalization) for f, w in zip(feats, shares))

    def distance(self, f, target, guide=None):
        return style_loss(gram_matrix(f, self.normalization, guide), target, f.shape[1], self.normalization)

    decomposes = "statistics"  # Σ_k F_ik F_jk over the positions: the unnormalized Gram matrix

    def partial(self, f, target, box):
        flat = f.float().flatten(2)  # (B, N, m)
        return (outer_product(flat),)

    def finish(self, sums, target, positions):
        (s,) = sums  # (B, N, N)
        n = s.shape[1]
        if self.normalization == "cosine":  # the channels' norms are the diagonal's roots
            norms = s.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt() + 1e-8  # (B, N)
            gram = s / (norms[:, :, None] * norms[:, None, :])
        else:
            gram = s / (positions if self.normalization == "gatys" else n * positions)
        return style_loss(gram, target, n, self.normalization)
