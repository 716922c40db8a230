"""Where a flow can be trusted: the weights c of the temporal loss (Ruder, Dosovitskiy & Brox,
"Artistic style transfer for videos", GCPR 2016, sec. 3.2; IJCV 2018, sec. 4.2).

For frame i and an earlier frame j, with ŵ the flow from i to j (on i's pixels) and w the flow
from j to i (on j's), w̃(x) = w(x + ŵ(x)) is w brought to i's pixels. A pixel of i gets c = 0

- where the two flows disagree (disocclusion): |w̃ + ŵ|² > 0.01 (|w̃|² + |ŵ|²) + 0.5,
- at motion boundaries: |∇û|² + |∇v̂|² > 0.01 |ŵ|² + 0.002,
- where x + ŵ(x) leaves the frame (the authors' consistency checker does the same),

and c = 1 elsewhere. The paper's c is binary; the authors' checker also blurs it slightly, which
is left out here. ∇ is the central difference (one-sided at the border), as in the checker; Lai
et al.'s warping error uses forward differences, a band one pixel apart at motion boundaries.
"""

from __future__ import annotations

import torch

from nstexp.video.warp import inside, warp


def _sq(flow: torch.Tensor) -> torch.Tensor:
    """|flow|², (B, 2, H, W) -> (B, 1, H, W)."""
    return flow.pow(2).sum(1, keepdim=True)


def disocclusion(out: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool, the forward-backward test: `out` is ŵ (this frame to the other), `back` w."""
    w_tilde = warp(back, out)
    return _sq(w_tilde + out) > 0.01 * (_sq(w_tilde) + _sq(out)) + 0.5


def motion_boundary(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: |∇u|² + |∇v|² > 0.01 |flow|² + 0.002."""
    dy, dx = torch.gradient(flow, dim=(-2, -1))
    return (dx.pow(2) + dy.pow(2)).sum(1, keepdim=True) > 0.01 * _sq(flow) + 0.002


def reliability(out: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """c, (B, 1, H, W) in {0, 1}, on this frame's pixels: `out` the flow from this frame to the
    other one, `back` the flow from the other one to this."""
    bad = disocclusion(out, back) | motion_boundary(out) | ~inside(out)
    return (~bad).to(out.dtype)


def long_term(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """The long-term weights (IJCV 2018, eq. 8): for the earlier frames i − j, j ∈ J ascending,
    c_long(i−j, i) = max(c(i−j, i) − Σ_{k ∈ J, k < j} c(i−k, i), 0), so each pixel is held to the
    nearest earlier frame where it is reliable. `weights`: c(i−j, i) in the order of J."""
    out, seen = [], torch.zeros_like(weights[0])
    for c in weights:
        out.append((c - seen).clamp(min=0))
        seen = seen + c
    return out
