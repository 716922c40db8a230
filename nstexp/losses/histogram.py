"""Histogram style loss (Risser, Wilmot and Barnes, "Stable and Controllable Neural Texture
Synthesis and Style Transfer Using Histogram Losses", 2017; code: pierre-wilmot/NeuralTextureSynthesis,
main.py, computeLoss).

Per layer and channel j, the generated image's M values F_j are remapped onto the style's
distribution: the value of rank r becomes the style's quantile at level (r + ½) / M,

    R(F)_j,i = Q_s,j((rank(F_j,i) + ½) / M),
    L = 1 / (N M) · Σ_j Σ_i (F_j,i − R(F)_j,i)²,

with R held constant (no gradient through the remap), as the authors' matchHistogram output is.
They remap through a 256-bin histogram; this is the exact remap by sorting, which their bins
approximate: per channel, the 1-D optimal transport map to the style's values. The style's
quantiles are read off its sorted values by linear interpolation, so styles of any size compare;
blending styles mixes their values, each weighed by its share over its own positions.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register


class Quantiles:
    """The style mixture's quantile function per channel: its values sorted, (N, K), and their
    cumulative levels, (N, K), the midpoint of each value's probability mass, where a quantile
    function passes through it. `at_ranks(M)` reads it at the M levels (r + ½) / M of a generated
    image's ranks, once per M: a run's image keeps its size, so each step only sorts."""

    def __init__(self, ordered: torch.Tensor, levels: torch.Tensor):
        self.ordered, self.levels = ordered, levels
        self._at: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def at_ranks(self, m: int, dtype: torch.dtype) -> torch.Tensor:
        """Q_s,j((r + ½) / M) for r = 0 .. M-1, per channel: (N, M)."""
        key = (m, dtype)
        if key not in self._at:
            n = self.ordered.shape[0]
            at = ((torch.arange(m, device=self.ordered.device, dtype=self.ordered.dtype) + 0.5) / m).expand(n, m)
            self._at[key] = interpolate(at, self.levels, self.ordered).to(dtype)
        return self._at[key]


def style_quantiles(feats: list[torch.Tensor], shares: list[float]) -> Quantiles:
    """The quantile function of the style images' features (1, N, H_i, W_i), each image weighed
    by its blend share over its own positions."""
    values = torch.cat([f[0].flatten(1) for f in feats], dim=1)  # (N, K)
    mass = torch.cat([torch.full((f[0, 0].numel(),), w / f[0, 0].numel(), dtype=torch.float64, device=f.device)
                      for f, w in zip(feats, shares)])  # (K,)
    ordered, order = values.sort(dim=1)
    m = mass[order]  # (N, K)
    levels = m.cumsum(1) - m / 2
    return Quantiles(ordered.double(), levels)  # float64: the levels of a large style stay distinct


def interpolate(levels: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Row-wise np.interp: each row of fp (N, K) over increasing xp (N, K), read at levels (N, L)."""
    k = xp.shape[1]
    if k == 1:  # a single point (a style layer of one position): its value everywhere, as np.interp
        return fp.expand(-1, levels.shape[1])
    hi = torch.searchsorted(xp.contiguous(), levels.contiguous()).clamp(1, k - 1)
    lo = hi - 1
    x0, x1, y0, y1 = xp.gather(1, lo), xp.gather(1, hi), fp.gather(1, lo), fp.gather(1, hi)
    t = ((levels - x0) / (x1 - x0).clamp_min(1e-30)).clamp(0, 1)
    return y0 + t * (y1 - y0)


def histogram_remap(features: torch.Tensor, target: Quantiles) -> torch.Tensor:
    """R(F): features (B, N, H, W) remapped per channel onto the style's distribution, no graph."""
    b, n, h, w = features.shape
    m = h * w
    with torch.no_grad():
        f = features.reshape(b, n, m)
        order = f.argsort(dim=2)  # (B, N, M): the positions in increasing order
        sorted_target = target.at_ranks(m, features.dtype)  # (N, M); the style's own sizes: its values
        remap = torch.empty_like(f).scatter_(2, order, sorted_target.unsqueeze(0).expand(b, n, m))
    return remap.reshape(b, n, h, w)


def histogram_loss(features: torch.Tensor, target: Quantiles) -> torch.Tensor:
    """MSE between features (B, N, H, W) and their remap R(F) -> (B,)."""
    return (features - histogram_remap(features, target)).pow(2).flatten(1).mean(1)


@register
class Histogram(StyleLoss):
    """style.loss=histogram: the MSE to the exact per-channel histogram match of the style."""

    name = "histogram"
    guided = False  # the remap matches whole distributions, not a region's
    # decomposes: none — a global sort of each channel's values (a position's remap is its rank among all M)

    def target(self, feats, shares):
        return style_quantiles(feats, shares)

    def distance(self, f, target, guide=None):
        return histogram_loss(f, target)
