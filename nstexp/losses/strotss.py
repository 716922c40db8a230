"""The style loss of STROTSS (Kolkin, Salavon & Shakhnarovich, "Style Transfer by Relaxed Optimal
Transport and Self-Similarity", CVPR 2019; code: nkolkin13/STROTSS, contextual_loss.py
`remd_loss` and `moment_loss`, stylize_objectives.py).

The style and the result are point clouds of hypercolumns (nstexp.losses.hypercolumn): the
result's A = {A_i}, i ≤ n = `style.strotss.samples` random positions drawn anew at every
evaluation, and the style's B = {B_j}, j ≤ K = `style.strotss.style_samples` random positions
drawn once with the target (each style image's share of them by its blend share). Three terms:

- the relaxed earth mover's distance with the cosine cost C_ij = 1 − A_i·B_j / (‖A_i‖ ‖B_j‖),

      ℓ_r = max( 1/n Σ_i min_j C_ij ,  1/K Σ_j min_i C_ij ):

  with masses 1/n and 1/K, each mean is the cheapest transport when one of the EMD's two
  marginal constraints is dropped, so each, and their max, is at most the EMD;
- the moment term ℓ_m = 1/D Σ_d |μ^A_d − μ^B_d| + 1/D² Σ_d,e |Σ^A_de − Σ^B_de|, the points' means
  and (biased) covariances, D = 3 + Σ_l N_l;
- the palette term ℓ_p: ℓ_r of the RGB channels alone, with the cost 1 − cos(a_i, b_j) plus the
  RMS distance ((‖a_i − b_j‖² / 3) ∨ 10⁻⁵)^½ (STROTSS takes the RGB to an orthonormal colour
  basis first, which changes neither).

The loss is E = ℓ_r + α_m (ℓ_m + α_p ℓ_p), α_m = `style.strotss.moment_weight` and α_p =
`style.strotss.palette_weight` (STROTSS: 1, and 1 / max(content weight, 1)); STROTSS divides its
total by (content weight + 1 + α_m), a constant factor left out here.

The minima are found without a graph over chunks of the result's points, at most
CHUNK_ELEMENTS costs at a time (the style side's as a running minimum over the chunks); the
matched pairs' costs are then recomputed with one, which is the min's value and gradient
(through the chosen entries) in memory linear in n and K.
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register
from nstexp.losses.hypercolumn import hypercolumns, sample_positions, unit

CHUNK_ELEMENTS = 2**24  # costs held at once (64 MiB in fp32); the chunk of result points is this / (B K)
RMS_FLOOR = 1e-5  # STROTSS's floor under the palette cost's squared RMS distance: its slope at 0 stays finite


def cosine_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos between every point a (B, r, D) and every point b (K, D) -> (B, r, K)."""
    return 1 - unit(a) @ unit(b).T


def cosine_cost_paired(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − cos between aligned points a, b (..., D) -> (...)."""
    return 1 - (unit(a) * unit(b)).sum(-1)


def palette_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The palette's cost, 1 − cos + RMS distance, between every a (B, r, 3) and b (K, 3) -> (B, r, K)."""
    sq = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1) - 2 * a @ b.T).clamp_min(0)
    return cosine_cost(a, b) + (sq / a.shape[-1]).clamp_min(RMS_FLOOR).sqrt()


def palette_cost_paired(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The palette's cost between aligned points a, b (..., 3) -> (...)."""
    return cosine_cost_paired(a, b) + (a - b).pow(2).mean(-1).clamp_min(RMS_FLOOR).sqrt()


COSINE = (cosine_cost, cosine_cost_paired)
PALETTE = (palette_cost, palette_cost_paired)


def nearest(x: torch.Tensor, y: torch.Tensor, cost=cosine_cost, chunk: int | None = None):
    """Under `cost` (pairwise), the index of each x_i's cheapest y (B, n) and of each y_j's
    cheapest x (B, K), for points x (B, n, D) and y (K, D); no graph. `chunk` rows of x at a time
    (None: as many as keep B × chunk × K within CHUNK_ELEMENTS)."""
    b, n, _ = x.shape
    k = y.shape[0]
    rows = chunk or max(1, CHUNK_ELEMENTS // (b * k))
    to_y = torch.empty(b, n, dtype=torch.long, device=x.device)
    to_x = torch.zeros(b, k, dtype=torch.long, device=x.device)
    best = None
    with torch.no_grad():
        x, y = x.detach(), y.detach()
        for start in range(0, n, rows):
            c = cost(x[:, start:start + rows], y)  # (B, r, K)
            to_y[:, start:start + rows] = c.argmin(2)
            low, at = c.min(1)  # (B, K)
            if best is None:
                best, to_x = low, at
            else:  # an equal cost keeps the earlier chunk's point, as one argmin over all rows would
                closer = low < best
                best, to_x = torch.where(closer, low, best), torch.where(closer, at + start, to_x)
    return to_y, to_x


def relaxed_emd(x: torch.Tensor, y: torch.Tensor, cost=COSINE, chunk: int | None = None) -> torch.Tensor:
    """ℓ_r = max(1/n Σ_i min_j C_ij, 1/K Σ_j min_i C_ij) of points x (B, n, D) against constants
    y (K, D) under `cost`, a (pairwise, paired) pair of functions -> (B,)."""
    pairwise, paired = cost
    y = y.detach().to(x.dtype)
    b, n, d = x.shape
    to_y, to_x = nearest(x, y, pairwise, chunk)
    matched_y = y.index_select(0, to_y.flatten()).view(b, n, d)  # each x_i's match, (B, n, D)
    rows = (to_x + n * torch.arange(b, device=x.device)[:, None]).flatten()
    matched_x = x.reshape(b * n, d).index_select(0, rows).view(b, -1, d)  # each y_j's match, (B, K, D)
    return torch.maximum(paired(x, matched_y).mean(1), paired(matched_x, y).mean(1))


def moments(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean (..., D) and biased covariance (..., D, D) of points (..., m, D)."""
    mean = points.mean(-2)
    centred = points - mean.unsqueeze(-2)
    return mean, centred.transpose(-1, -2) @ centred / points.shape[-2]


def moment_loss(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """ℓ_m = 1/D Σ_d |μ_d − μ^B_d| + 1/D² Σ_d,e |Σ_de − Σ^B_de| of points x (B, n, D) against the
    style's mean (D,) and covariance (D, D) -> (B,)."""
    mu, sigma = moments(x)
    return (mu - mean).abs().mean(-1) + (sigma - cov).abs().mean((-2, -1))


class Cloud:
    """A style's hypercolumns B (K, D), with their mean (D,) and covariance (D, D)."""

    def __init__(self, points: torch.Tensor):
        self.points = points.contiguous()
        self.mean, self.cov = moments(points)

    def __len__(self) -> int:
        return self.points.shape[0]


def strotss_loss(x: torch.Tensor, target: Cloud, moment_weight: float = 1.0, palette_weight: float = 1.0,
                 chunk: int | None = None) -> torch.Tensor:
    """E = ℓ_r + α_m (ℓ_m + α_p ℓ_p) of the result's hypercolumns x (B, n, D) against the style's -> (B,).
    The RGB is the first 3 of the D values."""
    value = relaxed_emd(x, target.points, COSINE, chunk)
    if moment_weight:
        moment = moment_loss(x, target.mean.to(x.dtype), target.cov.to(x.dtype))
        if palette_weight:
            moment = moment + palette_weight * relaxed_emd(x[..., :3], target.points[:, :3], PALETTE, chunk)
        value = value + moment_weight * moment
    return value


@register
class STROTSS(StyleLoss):
    """style.loss=strotss: the relaxed EMD, moment and palette terms of hypercolumns of all the
    style layers at once, at positions drawn from a generator seeded with the run's seed."""
    stateful = True  # its positions, drawn at each evaluation

    name = "strotss"
    guided = False  # STROTSS's own guidance (matched regions) is not the harness's masks
    joint = True
    # decomposes: none — positions drawn at random over the whole image, each matched to its nearest
    # style point and the style's to their nearest result point (a min over all of them), and the max of both means

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        o = style.strotss
        self.samples, self.style_samples = int(o.samples), int(o.style_samples)
        self.moment_weight, self.palette_weight = float(o.moment_weight), float(o.palette_weight)
        self.scale = float(o.scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.chunk: int | None = None  # result points per chunk of the search; None: CHUNK_ELEMENTS / (B K)

    def target(self, feats, shares):
        clouds = []
        for stack, share in zip(feats, shares):
            if share > 0:  # an image's share of the K points is its blend share
                h, w = stack.image.shape[-2:]
                count = min(h * w, max(1, round(self.style_samples * share)))
                clouds.append(hypercolumns(stack, sample_positions(h, w, count, self.generator), self.scale)[0])
        return Cloud(torch.cat(clouds))

    def distance(self, f, target, guide=None):
        h, w = f.image.shape[-2:]
        x = hypercolumns(f, sample_positions(h, w, self.samples, self.generator), self.scale)
        return strotss_loss(x, target, self.moment_weight, self.palette_weight, self.chunk)

    def working_bytes(self, result, styles, batch=1):
        """The style's K points (and their unit copies, made per search) and moments; per
        evaluation the result's n points, their matches both ways (with unit copies), one chunk of
        costs and the covariances' difference."""
        d, h, w = result
        n = min(self.samples, h * w)
        k = min(self.style_samples, sum(hh * ww for _, hh, ww in styles))
        chunk = batch * min(n, max(1, CHUNK_ELEMENTS // (batch * k))) * k
        return 4 * (2 * k * d + d * d + 4 * batch * n * d + 2 * batch * k * d + 2 * chunk + 3 * batch * d * d)
