"""CFSD, the content feature structural distance of StyleID (Chung, Hyun and Heo, "Style
Injection in Diffusion", CVPR 2024; `evaluation/image_metrics.py`, class PatchSimi).

The relu3_1 features F (HW, C) of an image, divided by C, give the self-similarity matrix
S = (F/C)(F/C)ᵀ (HW × HW), whose every row is turned into a distribution by a softmax. With
P the content image's rows and Q the result's,

    CFSD = Σ_i KL(P_i ‖ Q_i) = Σ_i Σ_j P_ij (log P_ij − log Q_ij),

a sum over the HW rows (`F.kl_div(..., reduction="batchmean")` with a batch of one): 0 when the
result's features relate to each other as the content's do, however their values differ.

The matrix has (HW)² entries, so rows are taken in blocks (the memory stays bounded at any
size) and the cost grows as (HW)² C. Computed in float64: the logits reach hundreds on the
Caffe VGG-19's features, where float32 rounding would move the value in its sixth digit.
"""

from __future__ import annotations

import torch

LAYER = "relu3_1"
BLOCK = 1024  # rows of the similarity matrices at a time


def _normalized(f: torch.Tensor) -> torch.Tensor:
    """F/C of features (1, C, H, W) as (HW, C) in float64."""
    c = f.shape[1]
    return f[0].flatten(1).T.to(torch.float64) / c


class CFSD:
    """The structural distance of result features (at LAYER) to one content image's."""

    def __init__(self, content_features: torch.Tensor):
        self.content = _normalized(content_features)

    def __call__(self, features: torch.Tensor) -> float:
        x = _normalized(features)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], BLOCK):
            rows = slice(start, start + BLOCK)
            log_p = torch.log_softmax(self.content[rows] @ self.content.T, dim=1)
            log_q = torch.log_softmax(x[rows] @ x.T, dim=1)
            total += (log_p.exp() * (log_p - log_q)).sum()
        return total.item()
