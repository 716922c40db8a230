"""The neural-patch (MRF) style loss of CNNMRF (Li & Wand, "Combining Markov Random Fields and
Convolutional Neural Networks for Image Synthesis", CVPR 2016; code: chuanli11/CNNMRF,
mylib/mrf.lua and transfer_CNNMRF_wrapper.lua).

A layer's k × k neural patches Ψ_i (every position's N × k × k block of features, k =
`style.mrf.patch_size`, sampled every `style.mrf.stride` positions) are matched to the style's:
each of the result's m patches to the style patch of highest normalized cross-correlation,

    NN(i) = argmax_j  Ψ_i · Ψ^s_j / (‖Ψ_i‖ ‖Ψ^s_j‖),

the matching held constant (no gradient through it, as in the paper and its code). The loss
(`style.mrf.reduction=mean`, the default) is the mean squared distance to the matched patches,

    L = 1 / (m D) · Σ_i ‖Ψ_i − Ψ^s_NN(i)‖²,   D = N k²,

the paper's E_s = Σ_i ‖Ψ_i − Ψ^s_NN(i)‖² divided by m D, so that the image size does not change
its strength (a mean, as every nstexp style loss is); `reduction=sum` is E_s itself, whose
strength grows with the number of patches, as CNNMRF's does. ‖Ψ_i‖ does not change the argmax,
so only the style patches are normalized (a result patch of norm 0, all zeros after a ReLU,
correlates with none and takes the first style patch, as CNNMRF's max does). The search runs
over chunks of the result's patches, at most CHUNK_ELEMENTS similarities at a time (chunk × K
for K style patches), as matrix products.

The style patches are those of every style image whose blend share is > 0: a nearest neighbour
has no weights to mix, so the shares select images and otherwise do not count. `views` adds
copies of each style image rotated by `style.mrf.rotations` (degrees) and scaled by
`style.mrf.scales` (the paper's and CNNMRF's augmentation; it is done on the image, not the
features, which do not rotate with it). With a guide (style.masks), each result patch's squared
distance is weighed by the guide's T² averaged over the patch (normalized to sum 1 for the mean).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from nstexp.errors import NstexpError
from nstexp.loss_options import rotated_size, scaled_size
from nstexp.losses.base import StyleLoss, register

CHUNK_ELEMENTS = 2**24  # similarities held at once (64 MiB in fp32); the chunk of result patches is this / K
EPS = 1e-8  # in a style patch's norm: a flat (all-zero) patch matches nothing better than any other


def grid(size: int, patch: int, stride: int) -> list[int]:
    """The first rows (or columns) of the patches along a side of `size` positions: every
    `stride`-th, then the last one if the stride skipped it, so every position is covered (as
    CNNMRF's computegrid with flag_all)."""
    starts = list(range(0, size - patch + 1, stride))
    if starts and starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def extract(f: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """The k × k patches of features (B, N, H, W) on the grid -> (B, m, D), D = N k² ordered (N, k, k)."""
    h, w = f.shape[-2:]
    if (h - patch) % stride == 0 and (w - patch) % stride == 0:  # a regular grid: im2col takes it as it is
        return F.unfold(f, patch, stride=stride).transpose(1, 2)
    # Else im2col at every position, then the grid's (unfold's own is faster than a strided view's selection).
    return F.unfold(f, patch).index_select(2, grid_positions(h, w, patch, stride, f.device)).transpose(1, 2)


@functools.lru_cache(maxsize=64)
def grid_positions(h: int, w: int, patch: int, stride: int, device: torch.device) -> torch.Tensor:
    """The grid's patches among every position's, in im2col's order (row-major), on `device`: made
    once per size, so that a step copies nothing from the host."""
    rows, cols = grid(h, patch, stride), grid(w, patch, stride)
    return (torch.tensor(rows)[:, None] * (w - patch + 1) + torch.tensor(cols)).flatten().to(device)


class Patches:
    """A layer's style patches (K, D) and the inverse of their norms (K,)."""

    def __init__(self, patches: torch.Tensor):
        self.patches = patches.contiguous()
        self.inverse_norms = 1.0 / (patches.norm(dim=1) + EPS)

    def __len__(self) -> int:
        return self.patches.shape[0]


def nearest(x: torch.Tensor, target: Patches, chunk: int | None = None) -> torch.Tensor:
    """For result patches x (B, m, D): the index of each one's style patch of highest
    normalized cross-correlation, (B, m), no graph; `chunk` result patches at a time (None:
    as many as keep chunk × K within CHUNK_ELEMENTS)."""
    b, m, d = x.shape
    k = len(target)
    rows = chunk or max(1, CHUNK_ELEMENTS // k)
    flat = x.detach().reshape(b * m, d)
    style = target.patches.to(flat.dtype)
    out = torch.empty(b * m, dtype=torch.long, device=x.device)
    with torch.no_grad():
        for start in range(0, b * m, rows):
            similarity = flat[start:start + rows] @ style.T  # (chunk, K)
            out[start:start + rows] = (similarity * target.inverse_norms.to(similarity.dtype)).argmax(1)
    return out.reshape(b, m)


def patch_weights(guide: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """Each patch's weight (B or 1, m) from a guide (B or 1, 1, H, W): T² averaged over the patch."""
    return extract(guide.pow(2), patch, stride).mean(2)


def mrf_loss(f: torch.Tensor, target: Patches, patch: int, stride: int, guide: torch.Tensor | None = None,
             chunk: int | None = None, reduction: str = "mean") -> torch.Tensor:
    """The squared distances of the patches of features f (B, N, H, W) to their matches -> (B,):
    reduction mean, 1 / (m D) Σ_i ‖Ψ_i − Ψ^s_NN(i)‖²; sum, Σ_i ‖Ψ_i − Ψ^s_NN(i)‖² (the paper's E_s).
    A guide weighs patch i by w_i, its T²: normalized to sum 1 (mean), or as it is (sum)."""
    h, w = f.shape[-2:]
    if h < patch or w < patch:
        raise NstexpError(f"style.loss=mrf: a style layer's features are {h}x{w} positions, smaller than "
                          f"style.mrf.patch_size={patch} (raise size or scales.min, or drop the deepest style layer)")
    x = extract(f, patch, stride)  # (B, m, D)
    matched = target.patches[nearest(x, target, chunk)].to(x.dtype)  # (B, m, D), constants
    sq = (x - matched).pow(2)
    d = sq.mean(2) if reduction == "mean" else sq.sum(2)  # (B, m)
    if guide is None:
        return d.mean(1) if reduction == "mean" else d.sum(1)
    weights = patch_weights(guide.to(d.dtype), patch, stride)
    if reduction == "mean":
        weights = weights / weights.sum(1, keepdim=True).clamp_min(1e-30)
    return (d * weights).sum(1)


def rotate(image: torch.Tensor, degrees: float) -> torch.Tensor:
    """An image (B, C, H, W) rotated counter-clockwise about its centre by `degrees`, bilinearly,
    and cropped to the largest centred rectangle of its aspect ratio inside the rotated one, so
    that no blank corner enters the style (CNNMRF crops too, its computeBB)."""
    h, w = image.shape[-2:]
    a = math.radians(degrees)
    ho, wo = rotated_size(h, w, degrees)
    # Output pixel (X, Y) from the centre (in pixels, y downwards) samples the input at
    # (cos X − sin Y, sin X + cos Y): content turns counter-clockwise on the screen, as torch.rot90.
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor([[cos * wo / w, -sin * ho / w, 0.0], [sin * wo / h, cos * ho / h, 0.0]],
                         dtype=image.dtype, device=image.device)
    grid_ = F.affine_grid(theta.expand(image.shape[0], 2, 3), [image.shape[0], image.shape[1], ho, wo],
                          align_corners=False)
    return F.grid_sample(image, grid_, mode="bilinear", padding_mode="border", align_corners=False)


def rescale(image: torch.Tensor, factor: float) -> torch.Tensor:
    """An image (B, C, H, W) resized by `factor` (bilinear, antialiased when shrinking)."""
    size = scaled_size(*image.shape[-2:], factor)
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)


def augmented(image: torch.Tensor, rotations, scales) -> list[torch.Tensor]:
    """The image, and its copies for every rotation × every scale (each rotation also unscaled,
    each scale also unrotated), as CNNMRF rotates, crops, then scales; their sizes are
    nstexp.loss_options.mrf_view_sizes's, which the checks before a run read."""
    out = []
    for r in dict.fromkeys([0.0, *map(float, rotations)]):
        turned = rotate(image, r) if r else image
        out.extend(rescale(turned, s) if s != 1 else turned for s in dict.fromkeys([1.0, *map(float, scales)]))
    return out


@register
class MRF(StyleLoss):
    """style.loss=mrf: each result patch's squared distance to its most correlated style patch."""

    name = "mrf"
    min_positions = "mrf.patch_size"  # a k × k patch at each style layer, of the result and of a view of the style
    # decomposes: none for now. Each result patch's match and distance are its own (no gradient through the match),
    # so L is a sum over patches (divided by their count m for reduction=mean): "positions", given each block a halo
    # of k − 1 positions below and to the right, the layer's whole H and W in `partial` (box and positions do not
    # give them) to place the grid (`grid`'s last row and column are off the stride) and count each patch in the
    # one block where it starts, and m (from H, W, k and the stride) in `finish`.

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        o = style.mrf
        self.patch, self.stride, self.reduction = int(o.patch_size), int(o.stride), o.reduction
        self.rotations, self.scales = list(o.rotations), list(o.scales)
        self.chunk: int | None = None  # result patches per chunk of the search; None: CHUNK_ELEMENTS / K

    def views(self, image):
        return augmented(image, self.rotations, self.scales)

    def target(self, feats, shares):
        fits = [f for f, share in zip(feats, shares) if share > 0 and min(f.shape[-2:]) >= self.patch]
        if not fits:
            sizes = ", ".join("x".join(map(str, f.shape[-2:])) for f in feats)
            raise NstexpError(f"style.loss=mrf: the style's features ({sizes} positions) are smaller than "
                              f"style.mrf.patch_size={self.patch} (raise size or style.scale)")
        return Patches(torch.cat([extract(f, self.patch, self.stride)[0] for f in fits]))

    def distance(self, f, target, guide=None):
        return mrf_loss(f, target, self.patch, self.stride, guide, self.chunk, self.reduction)

    def working_bytes(self, result, styles, batch=1):
        """The style patches K × D kept as the target, the similarities of one chunk, and the
        result's patches: extracted, matched, and their difference (kept for the backward pass)."""
        n, h, w = result
        d = n * self.patch**2
        def count(hh, ww):
            return len(grid(hh, self.patch, self.stride)) * len(grid(ww, self.patch, self.stride))

        copies = (1 + len(self.rotations)) * sum(s * s for s in [1.0, *self.scales])  # crops make rotations smaller
        k = int(copies * sum(count(hh, ww) for _, hh, ww in styles))
        m = batch * count(h, w)
        return 4 * (k * (d + 1) + min(m, max(1, CHUNK_ELEMENTS // max(k, 1))) * k + 3 * m * d)
