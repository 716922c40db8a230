"""Optical flow between consecutive input frames: OpenCV's DIS (Kroeger et al., "Fast Optical
Flow using Dense Inverse Search", ECCV 2016), offline and without weights to download.

The preset is MEDIUM, DIS's most accurate: on the sample clip (nstexp.video.sample) at 256 px its
end-point error against the ground truth is lower than FAST's and ULTRAFAST's (docs/video.md),
and it takes milliseconds a pair where stylizing a frame takes seconds, so speed buys nothing.
Flows are tensors (B, 2, H, W) as nstexp.video.warp describes.
"""

from __future__ import annotations

import numpy as np
import torch

PRESETS = ("ultrafast", "fast", "medium")
PRESET = "medium"


def _grey(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W) uint8, the luma DIS works on (ITU-R BT.601, as OpenCV's)."""
    r, g, b = image[0].detach().clamp(0, 1).cpu().double()
    return (255 * (0.299 * r + 0.587 * g + 0.114 * b)).round().to(torch.uint8).numpy()


def flow(a: torch.Tensor, b: torch.Tensor, preset: str = PRESET) -> torch.Tensor:
    """The flow from frame a to frame b, (1, 2, H, W) float32, on a's device; frames (1, 3, H, W)."""
    import cv2  # here: the command's start and its refusals need no OpenCV

    dis = cv2.DISOpticalFlow.create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    out = dis.calc(_grey(a), _grey(b), None)  # (H, W, 2): u, v
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].to(a.device)


def both_ways(a: torch.Tensor, b: torch.Tensor, preset: str = PRESET) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward a → b, backward b → a)."""
    return flow(a, b, preset), flow(b, a, preset)
