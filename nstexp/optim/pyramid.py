"""Coarse-to-fine: the image sizes of the levels, and what carries over from one level to the next.

Each level optimizes at one size, from the previous level's result upsampled; the targets are
recomputed at each size (see runner). As crowsonkb/style-transfer-pytorch does, Adam's moments
are resized with the image (the first moment bicubically, the second bilinearly and clamped at
0, as it is a mean of squares), and so is RMSprop's mean of squares; L-BFGS starts afresh, its
curvature pairs being tied to the old size. On a Laplacian pyramid (param=laplacian_pyramid)
every optimizer starts afresh, on the pyramid of the upsampled image. A level may weigh the
content more than the next finer one and the finest level may have its own learning rate, as
STROTSS's schedule does (`level_settings`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from nstexp.optim.levels import levels


def level_settings(cfg: DictConfig, level: int, n_levels: int) -> DictConfig:
    """The run's settings at coarse-to-fine level `level` of `n_levels` (0 the coarsest): the
    content weight times `scales.content_weight_ratio` per level below the finest, content.weight
    being the finest level's or, with `scales.content_weight_at=coarsest`, the coarsest level's
    (STROTSS: ratio 2 and 16 at the coarsest, so 16, 8, 4, 2 from 64 to 512 px), and at the finest
    level `scales.last_lr` as the learning rate where it is set. Level `n_levels` is the final
    pass (`scales.final_pass`): the finest level's settings with style.loss `scales.final_loss`
    where it is set. `cfg` itself is left alone; with nothing to change it is returned as it is."""
    if level >= n_levels:
        out = level_settings(cfg, n_levels - 1, n_levels)
        if cfg.scales.final_loss is None:
            return out
        out = copy.deepcopy(out)
        out.style.loss = cfg.scales.final_loss
        return out
    ratio, last_lr = cfg.scales.content_weight_ratio, cfg.scales.last_lr
    below = n_levels - 1 - level  # levels between this one and the finest
    # The power of the ratio that multiplies content.weight: levels to the finest, or minus levels from the coarsest.
    power = below if cfg.scales.content_weight_at == "finest" else -level
    if (ratio == 1 or power == 0) and (last_lr is None or below > 0):
        return cfg
    out = copy.deepcopy(cfg)
    out.content.weight = float(cfg.content.weight) * float(ratio) ** power
    if last_lr is not None and below == 0:
        out.optimizer.lr = float(last_lr)
    return out


def schedule(size: int, steps: int, scales) -> tuple[list[int], list[int]]:
    """The longest side and the steps of every level: `steps` a level (`scales.first_steps` at the
    first of several), and last, with `scales.final_pass`, the final pass at the finest size
    (`scales.final_steps`, or `steps`)."""
    sizes = levels(size, scales.min, scales.factor)
    first = scales.first_steps if scales.first_steps is not None and len(sizes) > 1 else steps
    level_steps = [first] + [steps] * (len(sizes) - 1)
    if scales.final_pass:
        final = scales.final_steps if scales.final_steps is not None else steps
        sizes, level_steps = sizes + [sizes[-1]], level_steps + [final]
    return sizes, level_steps


def upsample(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 3, h, w) in [0, 1] -> (B, 3, H, W), bicubic, clamped back into [0, 1]."""
    return F.interpolate(image, size=tuple(hw), mode="bicubic", align_corners=False).clamp(0.0, 1.0)


# The per-pixel moments of Adam (exp_avg, exp_avg_sq) and RMSprop (square_avg), and how each resizes.
MOMENTS = {"exp_avg": "bicubic", "exp_avg_sq": "bilinear", "square_avg": "bilinear"}


def resize_state(state: dict, hw: tuple[int, int]) -> dict:
    """An Adam or RMSprop state_dict for the image at size `hw`, warm-started from the previous
    level's: the means of squares bilinearly and clamped at 0, the first moment bicubically."""
    state = copy.deepcopy(state)
    for s in state["state"].values():
        for key in MOMENTS.keys() & s.keys():
            s[key] = F.interpolate(s[key], size=tuple(hw), mode=MOMENTS[key], align_corners=False)
            if MOMENTS[key] == "bilinear":
                s[key].clamp_(min=0)
    return state
