"""Hypercolumns at random positions, as STROTSS reads its features (Kolkin et al., CVPR 2019;
nkolkin13/STROTSS, stylize_objectives.py `spatial_feature_extract`).

The hypercolumn of pixel (y, x) of an image (B, 3, H, W) whose features at layers l are
F_l (B, N_l, H_l, W_l), with layer weights w_l, is the column of D = 3 + Σ_l N_l values

    A(y, x) = [ RGB(y, x),  ω_1 F_1(u_1, v_1) / s,  …,  ω_L F_L(u_L, v_L) / s ],   ω_l = w_l / max_k w_k,

each layer read bilinearly at the pixel's centre on its grid, u_l = (y + ½) H_l / H − ½ and
v_l = (x + ½) W_l / W − ½, clamped to the grid: what upsampling F_l to H × W bilinearly
(align_corners=False) gives at (y, x), for the n positions read only. The RGB is the image in
[0, 1], as STROTSS stacks it; s (`scale`) divides the network's features, to put the Caffe
VGG-19's on the scale of the torchvision VGG-16's that STROTSS used (fed the RGB in [0, 1]
unnormalized, so s = 255 for the Caffe network's 255 x − mean); equal layer weights,
whatever their value, are STROTSS's hypercolumn (ω_l = 1).

Positions are drawn from a torch.Generator on the CPU, so a seed gives the same positions on
every device; the bilinear taps are gathered with index_select, whose gradient (index_add) is
deterministic where torch is asked to be. `unit` gives the columns unit length for the cosines of
the losses that compare them (nstexp.losses.strotss, nstexp.losses.self_similarity).
"""

from __future__ import annotations

import torch

from nstexp.losses.base import LayerStack

# ε of the norms ‖a‖_ε = (‖a‖² + ε²)^½ of `unit`, in the hypercolumn's units (RGB in [0, 1],
# features / s): a black pixel or an all-zero column gets a finite gradient, and any column of
# norm ≥ 0.1 is unit to 1e-4.
EPS = 1e-3


def unit(a: torch.Tensor) -> torch.Tensor:
    """Columns a (..., D) divided by their norms ‖a‖_ε."""
    return a / (a.pow(2).sum(-1, keepdim=True) + EPS**2).sqrt()


def sample_positions(h: int, w: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct positions of an h × w grid drawn uniformly (all of them, in a random
    order, when there are fewer), as row-major indices y W + x, (n,) int64 on the CPU."""
    return torch.randperm(h * w, generator=generator)[:count]


def bilinear_taps(positions: torch.Tensor, h: int, w: int, hl: int, wl: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The four grid points of an hl × wl layer that pixel centres (`positions` of the h × w image)
    fall between, as row-major indices (4, n), and their bilinear weights (4, n), float64."""
    y, x = (positions // w).double(), (positions % w).double()
    u = ((y + 0.5) * hl / h - 0.5).clamp(0, hl - 1)
    v = ((x + 0.5) * wl / w - 0.5).clamp(0, wl - 1)
    u0, v0 = u.floor().long(), v.floor().long()
    u1, v1 = (u0 + 1).clamp(max=hl - 1), (v0 + 1).clamp(max=wl - 1)
    fu, fv = u - u0, v - v0
    index = torch.stack([u0 * wl + v0, u0 * wl + v1, u1 * wl + v0, u1 * wl + v1])
    weight = torch.stack([(1 - fu) * (1 - fv), (1 - fu) * fv, fu * (1 - fv), fu * fv])
    return index, weight


def read(f: torch.Tensor, positions: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Features f (B, N, H_l, W_l) read bilinearly at the centres of pixels `positions` of an h × w
    image -> (B, N, n)."""
    b, n_ch, hl, wl = f.shape
    if (hl, wl) == (h, w):  # the image's own grid: the values themselves
        return f.flatten(2).index_select(2, positions.to(f.device))
    index, weight = bilinear_taps(positions, h, w, hl, wl)
    taps = f.flatten(2).index_select(2, index.flatten().to(f.device)).view(b, n_ch, 4, -1)
    return (taps * weight.to(device=f.device, dtype=f.dtype)).sum(2)  # (4, n) weights broadcast


def hypercolumns(stack: LayerStack, positions: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The hypercolumns A (B, n, D) of `stack` at `positions` (n,) of its image's grid,
    D = 3 + Σ_l N_l: the RGB, then each layer's features times ω_l / s in the stack's order."""
    h, w = stack.image.shape[-2:]
    top = max(stack.weights.values())
    parts = [read(stack.image, positions, h, w)]
    parts += [read(f, positions, h, w) * (stack.weights[k] / (top * scale)) for k, f in stack.feats.items()]
    return torch.cat(parts, 1).transpose(1, 2)

