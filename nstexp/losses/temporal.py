"""The temporal loss of Ruder, Dosovitskiy & Brox ("Artistic style transfer for videos", GCPR
2016, eq. 7): frame i held to the earlier stylized frames warped to it, on the pixels,

    L_temporal(x, ω, c) = 1/D Σ_k c_k (x_k − ω_k)²

with D = C × H × W the number of values of the image, ω the earlier stylized frame warped along
the input frames' flow, c the reliability of that flow (nstexp.video.reliability: 0 where it is
disoccluded, at motion boundaries or leaves the frame, 1 elsewhere), the same for the three
channels. With long-term consistency (IJCV 2018, eq. 8) the loss is the sum of one such term per
earlier frame j ∈ J, each with its long-term weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def temporal_loss(image: torch.Tensor, warped: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/D) Σ_k c_k (x_k − ω_k)²: image x (B, C, H, W), warped ω (1, C, H, W), weights c (1, 1, H, W) -> (B,)."""
    return (weights * (image - warped).pow(2)).flatten(1).mean(1)


@dataclass
class TemporalTargets:
    """A frame's temporal term: its weight and, per earlier frame j, (ω_j (1, 3, H, W), c_j (1, 1, H, W))."""

    weight: float
    pairs: list[tuple[torch.Tensor, torch.Tensor]]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """weight × Σ_j L_temporal(x, ω_j, c_j), (B,)."""
        return self.weight * sum((temporal_loss(image, w, c) for w, c in self.pairs), image.new_zeros(image.shape[0]))

    def at(self, hw: tuple[int, int]) -> "TemporalTargets":
        """The targets at a coarse-to-fine level's smaller size: ω and c averaged over areas (c then
        weighs a pixel by the share of reliable pixels it covers)."""
        if tuple(self.pairs[0][0].shape[-2:]) == tuple(hw):
            return self
        return TemporalTargets(self.weight, [(F.interpolate(w, size=hw, mode="area"), F.interpolate(c, size=hw, mode="area"))
                                             for w, c in self.pairs])
