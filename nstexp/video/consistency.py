"""Temporal consistency of a stylized clip: the warping error of Lai et al., "Learning Blind
Video Temporal Consistency" (ECCV 2018, eq. 8):

    E_warp(O_t, O_t+1) = 1 / Σ_x M_t(x) · Σ_x M_t(x) ‖O_t(x) − Ô_t+1(x)‖²

where Ô_t+1 is the output frame t + 1 warped back to t by the *input* frames' flow from t to
t + 1, and M_t the non-occlusion mask of that flow (Ruder et al.'s test: nstexp.video.reliability).
The squared norm sums the three channels of RGB in [0, 1]; the clip's error is the mean over its
pairs of frames. Where no pixel is reliable the sum is divided by every value (as Lai et al.'s code).
"""

from __future__ import annotations

import torch

from nstexp.video.warp import warp


def warp_error(frame: torch.Tensor, following: torch.Tensor, forward: torch.Tensor, mask: torch.Tensor) -> float:
    """E_warp of output frames t (`frame`) and t + 1 (`following`), (1, 3, H, W) each; `forward` the
    input frames' flow from t to t + 1 (1, 2, H, W), `mask` M_t (1, 1, H, W)."""
    diff = (frame - warp(following, forward)).pow(2).sum(1, keepdim=True) * mask  # (1, 1, H, W)
    n = mask.sum()
    return (diff.sum() / (n if n > 0 else frame.numel())).item()
