"""Where an image's tiles lie, and why the features of a tile's interior are the whole image's.

A feature of a layer whose total stride is s (2^poolings) is computed from a cell of s × s
pixels and `reach` pixels beyond it on each side: its receptive field R = s + 2 reach (VGG-19:
relu5_1 sees 156 px, reach 70). A tile is a block of the image, its *interior*, with a *halo*
of at least the deepest layer's reach around it (clipped at the image's borders); if the
interior's and the halo's corners lie on multiples of the deepest stride, every pooling of the
tile pools the same pixels as the whole image's, and every feature of the interior sees only
pixels of the tile: it is the whole image's, bit for bit up to the order of additions. At the
image's borders the tile has the image's own padding. The interiors cover each position of
every layer exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

from nstexp.network.layout import layer_names


def stride_and_reach(arch: str, layer: str) -> tuple[int, int]:
    """(s, reach) of `layer`'s output: its stride in pixels and how far beyond its s × s cell its
    receptive field reaches on each side. A 3x3 convolution at stride s widens the field by 2s,
    a 2x2 pooling by s, and then doubles the stride."""
    field, stride = 1, 1
    for name in layer_names(arch)[: layer_names(arch).index(layer) + 1]:
        if name.startswith("conv"):
            field += 2 * stride
        elif name.startswith("pool"):
            field += stride
            stride *= 2
    return stride, (field - stride) // 2


@dataclass(frozen=True)
class Tile:
    crop: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the pixels the network sees
    interior: tuple[int, int, int, int]  # (y0, y1, x0, x1) of the pixels whose features it keeps

    def box(self, stride: int) -> tuple[int, int, int, int]:
        """The interior at a layer of `stride`: its positions in the whole layer."""
        return tuple(v // stride for v in self.interior)

    def local(self, stride: int) -> tuple[slice, slice]:
        """The interior at a layer of `stride`, as slices of the tile's own features."""
        y0, y1, x0, x1 = self.interior
        return (slice((y0 - self.crop[0]) // stride, (y1 - self.crop[0]) // stride),
                slice((x0 - self.crop[2]) // stride, (x1 - self.crop[2]) // stride))


def halo(arch: str, layers) -> tuple[int, int]:
    """(the deepest stride, the halo): the largest reach of `layers`, up to a multiple of that stride."""
    pairs = [stride_and_reach(arch, k) for k in layers]
    step = max(s for s, _ in pairs)
    reach = max(r for _, r in pairs)
    return step, -(-reach // step) * step


def tiles(h: int, w: int, size: int, arch: str, layers) -> list[Tile]:
    """The tiles of an h × w image with interiors of `size` px (down to a multiple of the deepest
    stride, at least one), row by row; h and w are multiples of that stride (the runner's sizes
    are: nstexp.run.inputs)."""
    step, margin = halo(arch, layers)
    if h % step or w % step:
        raise ValueError(f"a tiled image's sides must be multiples of {step} px, not {h}x{w}")
    size = max(step, size // step * step)
    out = []
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            y1, x1 = min(y0 + size, h), min(x0 + size, w)
            out.append(Tile((max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)),
                            (y0, y1, x0, x1)))
    return out
