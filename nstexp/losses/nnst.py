"""The style loss of Neural Neighbor Style Transfer (Kolkin, Kovacs, Shakhnarovich & Salavon,
"Neural Neighbor Style Transfer", 2022; code: nkolkin13/NeuralNeighborStyleTransfer,
utils/stylize.py `replace_features` and `optimize_output_im`, utils/featureExtract.py).

A hypercolumn here is NNST's: at every cell of a grid of (H / s) × (W / s) cells, s =
`style.nnst.stride` (NNST's 4), the features of all the style layers, each layer read bilinearly
at the cell's centre (align_corners=False, the pixel-centre convention of
nstexp.losses.hypercolumn; NNST resizes with align_corners=True) and divided by its channel count
N_l, so that no layer dominates the cosines by its width (times ω_l = w_l / max_k w_k: equal
layer weights are NNST's). No RGB: NNST's hypercolumns have none. A global factor on the
features (the Caffe VGG-19's activations are about 57.6 times torchvision's) changes no cosine,
so there is no `scale` option.

The style's hypercolumns Y = {y_j} are those of every view of every style image whose blend share
is > 0 (a nearest neighbour has no weights to mix); `views` adds the style image rotated by 90°,
180° and 270° (NNST's flip_aug, made with flips and transposes; `augment=rotations`), and
optionally each rotation's mirror image (`rotations_mirrored`, not NNST's).

Targets: each query hypercolumn q_i is replaced by its nearest style hypercolumn under the
centred cosine (each set centred by its own mean, as NNST's `pairwise_distances_cos_center`),

    T_i = y_NN(i),   NN(i) = argmax_j (q_i − μ_q) · (y_j − μ_y) / (‖q_i − μ_q‖ ‖y_j − μ_y‖),

and the loss is the mean cosine distance of the result's hypercolumns a_i to them (plain, not
centred, as NNST's loss), the targets held constant:

    L = 1/n Σ_i (1 − a_i · T_i / (‖a_i‖ ‖T_i‖)).

The query is the result itself (`alpha=0`) or, for alpha > 0, the hypercolumns of the image
(1 − α) x + α c, a blend of the result x and the content c in pixels (NNST's `c_tmp`, with its
default α = 0.75); the objective makes that image's features when the targets are refreshed
(LayerStack.query). NNST computes its targets once at the start of each of its levels and keeps
them for that level's 200 steps; here they are computed from the evaluation that needs them:
at the first evaluation of each level (each level builds its objective anew) and then every
`refresh` evaluations (0: never again in that level, NNST's schedule; 1: at every evaluation, the
limit of a refresh every N steps, where the targets follow the result). The search runs without a
graph over chunks of the query, at most CHUNK_ELEMENTS similarities at a time, as matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nstexp.losses.base import LayerStack, StyleLoss, register

CHUNK_ELEMENTS = 2**24  # similarities held at once (64 MiB in fp32); the chunk of query rows is this / K
# Under a hypercolumn's norm (NNST's get_feat_norms clamps the squared norm at 1e-8): an all-zero
# column gets a finite gradient, and a column equal to its target costs 0 to rounding.
NORM_FLOOR = 1e-4


def unit(a: torch.Tensor) -> torch.Tensor:
    """Columns a (..., D) divided by their norms, at least NORM_FLOOR."""
    return a / a.pow(2).sum(-1, keepdim=True).clamp_min(NORM_FLOOR**2).sqrt()


def grid_hypercolumns(stack: LayerStack, stride: int = 4) -> torch.Tensor:
    """NNST's hypercolumns (B, n, D) of `stack` on its (H // s) × (W // s) grid, row-major:
    D = Σ_l N_l, each layer's features times ω_l / N_l, in fp32."""
    h, w = stack.image.shape[-2:]
    size = (max(1, h // stride), max(1, w // stride))
    top = max(stack.weights.values())
    parts = []
    for k, f in stack.feats.items():
        f = f.float()
        if tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        parts.append(f * (stack.weights[k] / (top * f.shape[1])))
    return torch.cat(parts, 1).flatten(2).transpose(1, 2)


class StylePoints:
    """The style's hypercolumns Y (K, D), and their centred unit copies for the search."""

    def __init__(self, points: torch.Tensor):
        self.points = points.contiguous()
        self.centred = unit(points - points.mean(0))

    def __len__(self) -> int:
        return self.points.shape[0]


def nearest(query: torch.Tensor, style: StylePoints, chunk: int | None = None) -> torch.Tensor:
    """For query hypercolumns q (B, n, D): the index of each one's nearest style hypercolumn under
    the centred cosine (B, n), each sample's query centred by its own mean; no graph. `chunk` query
    rows at a time (None: as many as keep chunk × K within CHUNK_ELEMENTS). A query's own norm does
    not change its argmax, so only the style side is normalized."""
    b, n, d = query.shape
    rows = chunk or max(1, CHUNK_ELEMENTS // len(style))
    # fp32 whatever the autocast: an argmax of bf16 products would pick among near-ties at random.
    with torch.no_grad(), torch.autocast(query.device.type, enabled=False):
        q = query.detach().to(style.centred.dtype)
        q = (q - q.mean(1, keepdim=True)).reshape(b * n, d)
        out = torch.empty(b * n, dtype=torch.long, device=q.device)
        for start in range(0, b * n, rows):
            out[start:start + rows] = (q[start:start + rows] @ style.centred.T).argmax(1)  # (chunk, K) -> (chunk,)
    return out.reshape(b, n)


def targets(query: torch.Tensor, style: StylePoints, chunk: int | None = None) -> torch.Tensor:
    """Each query hypercolumn (B, n, D) replaced by its nearest style hypercolumn -> (B, n, D), constants."""
    b, n, d = query.shape
    return style.points.index_select(0, nearest(query, style, chunk).flatten()).view(b, n, d)


def nnst_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = 1/n Σ_i (1 − cos(a_i, T_i)) of the result's hypercolumns x (B, n, D) against targets
    (B, n, D), held constant -> (B,)."""
    return 1 - (unit(x) * unit(target.detach().to(x.dtype))).sum(-1).mean(1)


def rotated(image: torch.Tensor, augment: str) -> list[torch.Tensor]:
    """The image and its copies for `augment`: rotations by 90°, 180°, 270° (exact, torch.rot90),
    and with rotations_mirrored each of the four mirrored left to right as well."""
    if augment == "none":
        return [image]
    turns = [torch.rot90(image, k, dims=(-2, -1)) if k else image for k in range(4)]
    return turns + ([t.flip(-1) for t in turns] if augment == "rotations_mirrored" else [])


@register
class NNST(StyleLoss):
    """style.loss=nnst: the cosine distance of the result's hypercolumns to their neural
    neighbours among the style's, searched with the features of the result (or of its blend with
    the content, `style.nnst.alpha`) and refreshed every `style.nnst.refresh` evaluations."""
    stateful = True  # its targets, refreshed from the result

    name = "nnst"
    guided = False  # NNST has no regions; a nearest neighbour search over all positions
    joint = True
    lbfgs_in_bf16 = False  # its cosines' small decreases: see StyleLoss.lbfgs_in_bf16
    # decomposes: none — hypercolumns of layers resized to one grid (bilinear across block edges) matched under a
    # cosine centred by the mean of all the query's positions

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)  # the search is exact: no randomness, the seed is unused
        o = style.nnst
        self.stride, self.refresh, self.augment = int(o.stride), int(o.refresh), o.augment
        self.query_blend = float(o.alpha)
        self.chunk: int | None = None  # query rows per chunk of the search; None: CHUNK_ELEMENTS / K
        self.evaluations = 0  # distances taken since the targets were last refreshed
        self.cached: tuple | None = None  # (the StylePoints, the batch's shape, the targets)

    def views(self, image):
        return rotated(image, self.augment)

    def target(self, feats, shares):
        return StylePoints(torch.cat([grid_hypercolumns(stack, self.stride)[0]
                                      for stack, share in zip(feats, shares) if share > 0]))

    def distance(self, f, target, guide=None):
        x = grid_hypercolumns(f, self.stride)
        cached = self.cached
        stale = (cached is None or cached[0] is not target or cached[1] != x.shape
                 or (self.refresh and self.evaluations >= self.refresh))
        if stale:
            if self.query_blend and f.query is None:
                raise ValueError("style.loss=nnst with style.nnst.alpha > 0 searches with the blend of the "
                                 "result and the content: its LayerStack needs a query (the objective makes it)")
            query = f.query() if self.query_blend else f
            with torch.no_grad():
                self.cached = cached = (target, x.shape, targets(grid_hypercolumns(query, self.stride), target,
                                                                 self.chunk))
            self.evaluations = 0
        self.evaluations += 1
        return nnst_loss(x, cached[2])

    def working_bytes(self, result, styles, batch=1):
        """The style's K hypercolumns and their centred unit copies; per refresh the query's n
        (with its centred copy) and one chunk of similarities; the targets, the result's n
        hypercolumns and their unit copies (kept for the backward pass)."""
        d = result[0] - 3  # the stack's shape counts the RGB, which NNST's hypercolumns leave out
        n = batch * max(1, result[1] // self.stride) * max(1, result[2] // self.stride)
        views = len(rotated(torch.zeros(1, 1, 1, 1), self.augment))
        k = views * sum(max(1, hh // self.stride) * max(1, ww // self.stride) for _, hh, ww in styles)
        chunk = min(n, max(1, CHUNK_ELEMENTS // max(k, 1))) * k
        return 4 * (2 * k * d + 2 * n * d + chunk + 4 * n * d)
