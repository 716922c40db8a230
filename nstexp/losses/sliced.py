"""Sliced Wasserstein style loss (Heitz et al., "A Sliced Wasserstein Loss for Neural Texture
Synthesis", CVPR 2021).

Per layer, the features of each position are projected on D random unit directions; along
each direction the generated image's sorted projections are compared with the style's, which
is the 1-D Wasserstein-2 distance between the two distributions of projections:

    SW² = 1 / (D M) · Σ_d Σ_i (sort(F_dᵀ)_i − Q_s,d((i + ½) / M))²

where Q_s,d is the style's quantile function along direction d. Reading the style at the
generated image's M quantile levels compares distributions of any two sizes (Heitz et al.
interpolate the sorted style projections to M values; the quantile levels do the same).
Several style images form a mixture: each position carries its image's blend weight divided
by that image's number of positions. Directions are drawn anew at every evaluation (D = N, as
Heitz et al.), from a generator the caller seeds.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register


def random_directions(n: int, count: int, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """`count` random unit vectors in R^n, (count, n), drawn on the CPU so every device sees the same."""
    d = torch.randn(count, n, generator=generator)
    return (d / d.norm(dim=1, keepdim=True)).to(device=like.device, dtype=like.dtype)


def quantiles(values: torch.Tensor, weights: torch.Tensor, m: int) -> torch.Tensor:
    """The weighted distribution of each row of `values` (D, K), read at levels (i + ½) / m -> (D, m).

    weights (K,) are the positions' probabilities (summing to 1); nearest rank, no interpolation.
    """
    ordered, order = values.sort(dim=1)  # (D, K)
    cumulative = weights[order].cumsum(dim=1)  # (D, K)
    levels = (torch.arange(m, device=values.device, dtype=values.dtype) + 0.5) / m
    index = torch.searchsorted(cumulative.contiguous(), levels.expand(values.shape[0], m).contiguous())
    return ordered.gather(1, index.clamp(max=values.shape[1] - 1))


def sliced_loss(
    features: torch.Tensor, target_features: torch.Tensor, target_weights: torch.Tensor, directions: torch.Tensor
) -> torch.Tensor:
    """SW² of one layer; features (B, N, H, W), target (N, K) with weights (K,), directions (D, N) -> (B,)."""
    b, n, h, w = features.shape
    projected = (directions @ features.reshape(b, n, h * w)).sort(dim=2).values  # (B, D, M)
    with torch.no_grad():
        target = quantiles(directions @ target_features, target_weights, h * w)  # (D, M)
    return (projected - target).pow(2).mean(dim=(1, 2))


@register
class Sliced(StyleLoss):
    """style.loss=sliced: SW² along N random directions per layer, drawn anew at every
    evaluation from a generator seeded with the run's seed (one generator for all layers)."""
    stateful = True  # its directions, drawn afresh at each evaluation

    name = "sliced"
    guided = False  # the quantile match has no notion of a region
    # decomposes: none — a global sort of the projections on each direction (drawn at random, anew each evaluation)

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        self.generator = torch.Generator().manual_seed(seed)

    def target(self, feats, shares):
        # Blending mixes the images' positions: each carries its image's share over its own M.
        points = torch.cat([f[0].flatten(1) for f in feats], dim=1)  # (N, sum of M_i)
        weights = torch.cat([torch.full((f[0, 0].numel(),), w / f[0, 0].numel(), dtype=f.dtype, device=f.device)
                             for f, w in zip(feats, shares)])
        return points, weights

    def distance(self, f, target, guide=None):
        n = f.shape[1]
        return sliced_loss(f, *target, random_directions(n, n, self.generator, f))
