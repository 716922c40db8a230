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
- nnst: a plain RGB transfer, then NNST's post-process (Kolkin et al. 2022, its
  utils/colorization.py `color_match`): in OkLab, the result's lightness with the content's
  chroma (a, b) given the style's mean and covariance (`match_colours`), smoothed by a
  lightness-guided filter, and each channel clamped to the style's range (see `nnst_colours`).
Images are RGB in [0, 1], shape (B, 3, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
    """Mean (C,) and covariance (C, C) of one image's (1, C, H, W) pixels, in float64."""
    x = image[0].flatten(1).double()  # (C, M)
    mu = x.mean(1)
    xc = x - mu[:, None]
    return mu, xc @ xc.T / x.shape[1]


def match_colours(image: torch.Tensor, reference: torch.Tensor, eps: float = COVARIANCE_EPS) -> torch.Tensor:
    """Linear colour transfer: `image` (1, C, H, W) with the mean and covariance of `reference`.

    x' = Σ_r^½ Σ_x^-½ (x − μ_x) + μ_r with symmetric square roots (eigendecomposition), each
    covariance plus `eps` I. Values may leave [0, 1]; the caller clamps.
    """
    mu, cov = colour_stats(image)
    mu_r, cov_r = colour_stats(reference)
    eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
    transform = _sym_power(cov_r + eps * eye, 0.5) @ _sym_power(cov + eps * eye, -0.5)
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


# OkLab (Ottosson 2020, his current matrices; NNST's code has an earlier revision's, within 1e-4):
# linear sRGB -> LMS, cube roots, -> (L, a, b). NNST applies it to the image's values as they are
# (no sRGB decoding), and so does `nnst_colours`.
RGB_TO_LMS = torch.tensor([
    [0.4122214708, 0.5363325363, 0.0514459929],
    [0.2119034982, 0.6806995451, 0.1073969566],
    [0.0883024619, 0.2817188376, 0.6299787005],
], dtype=torch.float64)
LMS_TO_LAB = torch.tensor([
    [0.2104542553, 0.7936177850, -0.0040720468],
    [1.9779984951, -2.4285922050, 0.4505937099],
    [0.0259040371, 0.7827717662, -0.8086757660],
], dtype=torch.float64)
# NNST's: a style whose chroma covariance is below this everywhere is grey (its own colours kept).
GREY_COVARIANCE = 6e-5
NNST_COVARIANCE_EPS = 1e-4  # NNST's, added to both covariances in its colour match
FILTER_ITERATIONS, FILTER_SHARPNESS = 5, 10.0  # NNST's filter: 5 passes, weights exp(−10 |ΔL|)


def to_oklab(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] (clamped) -> OkLab (L, a, b)."""
    lms = _apply(RGB_TO_LMS, image.clamp(0.0, 1.0)).clamp_min(0.0)
    return _apply(LMS_TO_LAB, lms.pow(1.0 / 3.0))


def from_oklab(lab: torch.Tensor) -> torch.Tensor:
    """OkLab (B, 3, H, W) -> RGB clamped to [0, 1]."""
    lms = _apply(torch.linalg.inv(LMS_TO_LAB), lab).pow(3)
    return _apply(torch.linalg.inv(RGB_TO_LMS), lms).clamp(0.0, 1.0)


def guided_filter(ab: torch.Tensor, lightness: torch.Tensor, iterations: int = FILTER_ITERATIONS) -> torch.Tensor:
    """NNST's filter of the chroma ab (B, 2, H, W): `iterations` passes of a 3 × 3 average whose
    weights exp(−10 |L_p − L_q|) come from the lightness (B, 1, H, W), edges replicated, so that
    chroma stops at the lightness's edges."""
    h, w = ab.shape[-2:]
    shifts = [(i, j) for i in range(3) for j in range(3)]
    padded = F.pad(lightness, (1, 1, 1, 1), mode="replicate")
    weights = [torch.exp(-FILTER_SHARPNESS * (lightness - padded[..., i:i + h, j:j + w]).abs()) for i, j in shifts]
    total = sum(weights)
    for _ in range(iterations):
        padded = F.pad(ab, (1, 1, 1, 1), mode="replicate")
        ab = sum(wt * padded[..., i:i + h, j:j + w] for wt, (i, j) in zip(weights, shifts)) / total
    return ab


def nnst_colours(image: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """NNST's colour post-process of a result `image` (1, 3, H, W) for `content` (its size) and
    `style`, in OkLab: the result's lightness, clamped to the style's range, with the content's
    chroma given the style's chroma mean and covariance (`match_colours`), filtered
    (`guided_filter`), then each channel clamped to the style's range. A grey style (chroma
    covariance < 6e-5) instead gives the result's own L, a, b the style's mean and covariance."""
    out, lab_c, lab_s = to_oklab(image.double()), to_oklab(content.double()), to_oklab(style.double())
    low, high = lab_s.amin((0, 2, 3), keepdim=True), lab_s.amax((0, 2, 3), keepdim=True)
    lightness = torch.maximum(torch.minimum(out[:, :1], high[:, :1]), low[:, :1])
    if colour_stats(lab_s[:, 1:])[1].abs().max() < GREY_COVARIANCE:
        lab = match_colours(torch.cat([lightness, out[:, 1:]], 1), lab_s, NNST_COVARIANCE_EPS)
    else:
        ab = match_colours(lab_c[:, 1:], lab_s[:, 1:], NNST_COVARIANCE_EPS)
        lab = torch.cat([lightness, guided_filter(ab, lightness)], 1)
    return from_oklab(torch.maximum(torch.minimum(lab, high), low)).to(image.dtype)


def present(mode: str, image: torch.Tensor, content: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
    """The image a user sees of the optimized `image`: with the content's colours when asked, or
    with NNST's colour post-process against `style` (color.preserve=nnst)."""
    if mode in ("luminance", "swap"):
        return with_chrominance(image, content)
    if mode == "nnst":
        return nnst_colours(image, content, style)
    return image
