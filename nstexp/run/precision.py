"""The network's arithmetic for a run: what `precision=auto` resolves to for its config.

`auto` is bf16 where the device computes it natively (nstexp.network.hardware.native_bf16), fp32
elsewhere, and fp32 where an L-BFGS would not survive bf16's rounding (about 0.4% per
activation). L-BFGS steps along the differences of gradients taken at nearby points (its
curvature pairs) and, with a line search, compares losses along a line; both are small
differences of large numbers. Measured on the 2-core Xeon (tubingen_starry_night, the default
L-BFGS, 256 px; docs/speed-and-memory.md): every style loss but two gives the same result in bf16
and fp32 (the yardstick within a few percent), while `nnst` turns to noise in bf16 (TV 96.6
against 7.6) and `nnst_split` ends further from the style (style_sw 0.60 against 0.46). Those
losses say so (StyleLoss.lbfgs_in_bf16), and a run that uses one in any pass keeps fp32.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from nstexp.loss_options import style_mix
from nstexp.losses.base import STYLE_LOSSES
from nstexp.network import hardware


def keeps_fp32(cfg: DictConfig) -> bool:
    """Whether `precision=auto` keeps fp32 for `cfg` whatever the device: an L-BFGS with a line
    search, or on a style loss (of the run's passes: `style.loss`, and `scales.final_loss` in a
    final pass) whose curvature pairs bf16 drowns."""
    if cfg.optimizer.name != "lbfgs":
        return False
    if cfg.optimizer.line_search != "none":
        return True
    return not all(STYLE_LOSSES[name].lbfgs_in_bf16 for name in style_losses(cfg))


def style_losses(cfg: DictConfig) -> list[str]:
    """The style losses of a run's passes: `style.loss` (each of a mix), and `scales.final_loss`
    in a final pass."""
    names = list(style_mix(cfg.style.loss))
    if cfg.scales.final_pass and cfg.scales.final_loss:
        names.append(cfg.scales.final_loss)
    return names


def network_precision(cfg: DictConfig, device: torch.device) -> str:
    """fp32, bf16 or fp16: the network's arithmetic for `cfg.precision` on `device`."""
    return hardware.resolve_precision(cfg.precision, device, keep_fp32=keeps_fp32(cfg))
