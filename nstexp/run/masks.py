"""Spatial control (Gatys et al., CVPR 2017): masks that say where each style, and the content, applies.

A mask is a greyscale image, white (1) where its style applies, black (0) where not, grey a
partial weight. It is read, converted to luminance and resized to the generated image's size,
then taken to each layer's resolution by area averaging: a feature position's weight is the
fraction of its pooling cell inside the region (the "simple" propagation of the authors'
code and of pystiche, with an area filter instead of their cubic and max resampling, so a
binary mask gives soft weights along its boundary only).
"""

from __future__ import annotations

import numpy as np
import torch

from nstexp import images
from nstexp.errors import NstexpError


def load(spec: str, key: str, size_wh: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A mask file at the generated image's size (W, H) as (1, 1, H, W) weights in [0, 1]."""
    pil = images.load_image(spec, key).convert("L").resize(size_wh, images.Image.Resampling.BILINEAR)
    mask = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)[None, None].to(device)
    if not mask.max() > 0:
        raise NstexpError(f"{key}={spec}: the mask is all black, so it selects nothing (white marks where it applies)")
    return mask
