"""Colour control (Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer", CVPR 2017).

`color.preserve` keeps the content photo's colours while the style's strokes are transferred:
- luminance: the transfer runs on luminance only; the result's luminance is then combined with
  the content's chrominance (YIQ). The style's luminance is first given the content's mean and
  standard deviation (the paper's formula; the authors' notebook matches the mean only).
- histogram: each style image's colours get the content's mean and covariance before the
  transfer (linear colour transfer with symmetric matrix square roots, the notebook's 'pca'
  mode); the transfer then runs in RGB.
- swap: a plain RGB transfer whose result's luminance is combined with the content's
  chrominance afterwards (jcjohnson/neural-style's -original_colors, which uses YUV: both
  chrominance pairs have rows that sum to 0, so either gives the same image).
Images are RGB in [0, 1], shape (B, 3, H, W).
"""

from __future__ import annotations

import torch

# NTSC YIQ (FCC): Y is Rec. 601 luma; the I and Q rows sum to 0, so grey has no chrominance.
RGB_TO_YIQ = torch.tensor([
    [0.299, 0.587, 0.114],
    [0.596, -0.274, -0.322],
    [0.211, -0.523, 0.312],
], dtype=torch.float64)
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)
# Added to both covariances before their square roots, as in the authors' code.
COVARIANCE_EPS = 1e-5


def _apply(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A 3x3 colour matrix applied to every pixel of (B, 3, H, W)."""
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return _apply(RGB_TO_YIQ, image)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _apply(YIQ_TO_RGB, image)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """Y of (B, 3, H, W) -> (B, 1, H, W)."""
    return rgb_to_yiq(image)[:, :1]


def grey(y: torch.Tensor) -> torch.Tensor:
    """Luminance (B, 1, H, W) as a grey RGB image (B, 3, H, W), what the network sees."""
    return y.expand(-1, 3, -1, -1).contiguous()


def match_luminance(y: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Luminance y with the mean and standard deviation of `reference` (paper: (σ_c/σ_s)(L_s − μ_s) + μ_c)."""
    mu, sigma = y.mean(dim=(1, 2, 3), keepdim=True), y.std(dim=(1, 2, 3), keepdim=True)
    mu_r, sigma_r = reference.mean(dim=(1, 2, 3), keepdim=True), reference.std(dim=(1, 2, 3), keepdim=True)
    return (y - mu) * (sigma_r / sigma.clamp_min(1e-8)) + mu_r


def _sym_power(cov: torch.Tensor, power: float) -> torch.Tensor:
    """Symmetric power of an SPD matrix (3, 3) through its eigendecomposition (E Λ^p Eᵀ)."""
    evals, evecs = torch.linalg.eigh(cov)
    return evecs @ torch.diag(evals.clamp_min(1e-12) ** power) @ evecs.T


def colour_stats(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3,) and covariance (3, 3) of one image's (1, 3, H, W) pixels, in float64."""
    x = image[0].flatten(1).double()  # (3, M)
    mu = x.mean(1)
    xc = x - mu[:, None]
    return mu, xc @ xc.T / x.shape[1]


def match_colours(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Linear colour transfer: `image` (1, 3, H, W) with the mean and covariance of `reference`.

    x' = Σ_r^½ Σ_x^-½ (x − μ_x) + μ_r with symmetric square roots (eigendecomposition), each
    covariance plus 1e-5 I. Values may leave [0, 1]; the caller clamps.
    """
    mu, cov = colour_stats(image)
    mu_r, cov_r = colour_stats(reference)
    eye = torch.eye(3, dtype=torch.float64, device=cov.device)
    transform = _sym_power(cov_r + COVARIANCE_EPS * eye, 0.5) @ _sym_power(cov + COVARIANCE_EPS * eye, -0.5)
    x = image[0].flatten(1).double() - mu[:, None]
    out = transform @ x + mu_r[:, None]
    return out.reshape(image.shape).to(image.dtype)


def with_chrominance(image: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """The luminance of `image` with the chrominance (I, Q) of `colours`, clamped to [0, 1]."""
    yiq = torch.cat([luminance(image), rgb_to_yiq(colours)[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0.0, 1.0)


def prepare(mode: str, content: torch.Tensor, styles: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The content and style images the network sees under colour mode `mode`."""
    if mode == "luminance":
        y = luminance(content)
        return grey(y), [grey(match_luminance(luminance(s), y).clamp(0.0, 1.0)) for s in styles]
    if mode == "histogram":
        return content, [match_colours(s, content).clamp(0.0, 1.0) for s in styles]
    return content, styles


def present(mode: str, image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The image a user sees of the optimized `image`: with the content's colours when asked."""
    if mode in ("luminance", "swap"):
        return with_chrominance(image, content)
    return image
