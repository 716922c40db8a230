"""HistoGAN's colour distance: the Hellinger distance between RGB-uv log-chroma histograms.

Afifi, Brubaker and Brown, "HistoGAN: Controlling Colors of GAN-Generated and Real Images via
Color Histograms", CVPR 2021 (the histogram block of mahmoudnafifi/HistoGAN), as StyleID (Chung
et al., CVPR 2024) scores its results against the style image in `evaluation/eval_histogan.py`:

- every pixel I = (R, G, B) in [0, 1] gives, for each channel c with the other two c', c'',
  the log-chroma coordinates u = log(I_c + ε) − log(I_c' + ε), v = log(I_c + ε) − log(I_c'' + ε),
  ε = 1e-6, and the weight I_y = sqrt(R² + G² + B² + ε);
- each of the three histograms H_c (64 × 64 bins, centres 64 equal steps over [−3, 3]) counts a
  pixel with the inverse-quadratic kernel k(d) = 1 / (1 + d² / σ²), σ = 0.02, of its distance to
  each bin centre: H_c[a, b] = Σ_pixels I_y k(u − t_a) k(v − t_b);
- the three are divided by their joint sum (+ ε), and
  H(X, Y) = (1/√2) ‖√H_X − √H_Y‖₂, in [0, 1]: 0 for the same colour distribution.

An image with a side over 256 px is first resized to 256 × 256 (bilinear, no antialiasing), as
StyleID's evaluation does. Computed in float64 (the reference mixes float32 and float64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BINS = 64  # h: bins per axis
EXTENT = 3.0  # bin centres from −3 to 3
SIGMA = 0.02  # the inverse-quadratic kernel's σ
EPS = 1e-6
MAX_SIDE = 256  # StyleID's max_input_size
# For each histogram channel c, the two channels its chroma is measured against: (c', c'').
OTHERS = ((1, 2), (0, 2), (0, 1))


def rgb_uv_histogram(image: torch.Tensor) -> torch.Tensor:
    """The normalized RGB-uv histogram (3, BINS, BINS) of an image (1, 3, H, W) in [0, 1]."""
    x = image.clamp(0.0, 1.0).to(torch.float64)
    if x.shape[-2] > MAX_SIDE or x.shape[-1] > MAX_SIDE:
        x = F.interpolate(x, size=(MAX_SIDE, MAX_SIDE), mode="bilinear", align_corners=False)
    pixels = x[0].flatten(1)  # (3, N)
    log_i = torch.log(pixels + EPS)
    weight = torch.sqrt(pixels.pow(2).sum(0) + EPS)  # I_y, (N,)
    centres = torch.linspace(-EXTENT, EXTENT, BINS, dtype=torch.float64, device=x.device)
    hists = []
    for c, (c1, c2) in enumerate(OTHERS):
        k_u = _kernel(log_i[c] - log_i[c1], centres)  # (N, BINS)
        k_v = _kernel(log_i[c] - log_i[c2], centres)
        hists.append((weight[:, None] * k_u).T @ k_v)  # (BINS, BINS)
    h = torch.stack(hists)
    return h / (h.sum() + EPS)


def _kernel(coordinate: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """k(d) = 1 / (1 + d²/σ²) of each value's distance d to each bin centre: (N, BINS)."""
    d = coordinate[:, None] - centres[None, :]
    return d.div_(SIGMA).square_().add_(1.0).reciprocal_()  # in place: (N, BINS) is the cost here


def hellinger(h_x: torch.Tensor, h_y: torch.Tensor) -> float:
    """(1/√2) ‖√h_x − √h_y‖₂ of two normalized histograms."""
    return ((h_x.sqrt() - h_y.sqrt()).pow(2).sum().sqrt() / math.sqrt(2.0)).item()


class ColourHellinger:
    """The distance of result images' colours to one style image's; build once, call often."""

    def __init__(self, style: torch.Tensor):
        self.target = rgb_uv_histogram(style)

    def __call__(self, image: torch.Tensor) -> float:
        return hellinger(rgb_uv_histogram(image), self.target)
