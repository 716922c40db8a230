"""What the optimizer moves: the image's pixels, or the bands of a Laplacian pyramid of it.

A parameterization maps the image (B, 3, H, W) to the optimizer's variable, (B, ...), and
back; the network always sees the image. Every variable is one tensor per batch, so that the
batched L-BFGS and the per-sample Adam or RMSprop groups work on it as they do on pixels.

STROTSS (Kolkin et al. 2019) optimizes the bands of a Laplacian pyramid with RMSprop: each band
then moves by about the learning rate per step, the coarse ones too, so large structures change
as fast as fine detail does; on the pixels, the gradient of a smooth change is spread thinly
over many pixels and the coarse structure moves slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Pixels:
    """The image itself: the variable is (B, 3, H, W)."""

    name = "pixels"
    # Adam's and RMSprop's moments live on the pixel grid, so they resize with the image.
    resizable_state = True

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def decode(self, variable: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return variable

    @torch.no_grad()
    def clamp_(self, variable: torch.Tensor, hw: tuple[int, int]) -> None:
        variable.clamp_(0.0, 1.0)


class LaplacianPyramid:
    """`levels` band-pass images and a low-pass residual, flattened into one (B, N) variable.

    Band k is g_k - up(g_{k+1}), where g_0 is the image and g_{k+1} = down(g_k) has half its
    sides (rounded down, at least 1 px); the residual is g_levels. down and up are bilinear
    resizes (align_corners=False: at an even side, down is the mean of 2 x 2 blocks), without a
    Gaussian blur. The reconstruction, from the residual up, image = band_0 + up(band_1 +
    up(... + up(residual))), telescopes back to the image exactly (to rounding). STROTSS's
    pyramid has 5 bands and resizes with align_corners=True.
    """

    name = "laplacian_pyramid"
    # A band's moments are tied to its place in the pyramid of one size: at a new
    # coarse-to-fine level the optimizer starts afresh on the new pyramid, as STROTSS's does.
    resizable_state = False

    def __init__(self, levels: int = 5):
        if levels < 1:
            raise ValueError(f"a Laplacian pyramid needs at least 1 band, got {levels}")
        self.levels = levels

    def sizes(self, hw: tuple[int, int]) -> list[tuple[int, int]]:
        """The sides of band 0 … band levels - 1 and of the residual (the last)."""
        out = [(int(hw[0]), int(hw[1]))]
        for _ in range(self.levels):
            h, w = out[-1]
            out.append((max(h // 2, 1), max(w // 2, 1)))
        return out

    def bands(self, variable: torch.Tensor, hw: tuple[int, int]) -> list[torch.Tensor]:
        """Views of the flat variable (B, N): band 0 (B, 3, H, W) … the residual."""
        sizes = self.sizes(hw)
        parts = variable.split([3 * h * w for h, w in sizes], dim=1)
        return [p.view(variable.shape[0], 3, h, w) for p, (h, w) in zip(parts, sizes)]

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N): the bands, finest first, then the residual."""
        out, current = [], image
        for h, w in self.sizes(image.shape[-2:])[1:]:
            smaller = _resize(current, (h, w))
            out.append(current - _resize(smaller, current.shape[-2:]))
            current = smaller
        out.append(current)
        return torch.cat([band.flatten(1) for band in out], dim=1)

    def decode(self, variable: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, N) -> (B, 3, H, W): the residual upsampled and each band added, coarsest first."""
        bands = self.bands(variable, hw)
        image = bands[-1]
        for band in reversed(bands[:-1]):
            image = band + _resize(image, band.shape[-2:])
        return image

    @torch.no_grad()
    def clamp_(self, variable: torch.Tensor, hw: tuple[int, int]) -> None:
        """Make the reconstruction the clamped image: what clamping moves goes into band 0 (the
        image is band 0 plus the coarser bands' upsampled sum), the other bands stay as they are."""
        image = self.decode(variable, hw)
        self.bands(variable, hw)[0].add_(image.clamp(0.0, 1.0) - image)


def _resize(x: torch.Tensor, hw) -> torch.Tensor:
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)


def build(name: str = "pixels", levels: int = 5) -> Pixels | LaplacianPyramid:
    """The parameterization `param` names; `levels` is the pyramid's number of bands."""
    if name == "pixels":
        return Pixels()
    if name == "laplacian_pyramid":
        return LaplacianPyramid(levels)
    raise ValueError(f"unknown param {name!r} (allowed: pixels, laplacian_pyramid)")
