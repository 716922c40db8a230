"""NNST's final pass, "feature splitting" (Kolkin et al. 2022; nkolkin13/NeuralNeighborStyleTransfer,
utils/stylize.py `optimize_output_im` with final_pass=True): `style.loss=nnst_split`.

Where nstexp.losses.nnst matches whole hypercolumns once per level, this loss matches each style
layer l on its own, anew at every evaluation. For the result's features F_l (B, N_l, H_l, W_l),
a sub-grid of one position every s_l = max(1, ⌊max(H_l, W_l) / S⌋) rows and columns, S =
`style.nnst.split_side` (NNST's 64) when max(H_l, W_l) > S and every position otherwise, from an
offset (o_y, o_x) drawn uniformly in [0, s_l)² at each evaluation, gives the result's points
a_i (n_l of them), and the same sub-grid of every view of the style (nstexp.losses.nnst.rotated)
gives the style's y_j (K_l of them). Each set is centred by its own mean (ā, ȳ), and

    L = Σ_l ω_l · 1/n_l Σ_i min_j [ 1 − cos(a_i − ā, y_j − ȳ) ],     ω_l = w_l / max_k w_k,

over the style layers (or those of `style.nnst.split_layers`): the distance to each point's
nearest style point under the centred cosine (NNST's `pairwise_distances_cos_center`), its
gradient through the matched pair and through ā, as the source's torch.min gives it. The matches
are nstexp.losses.nnst's search (`nearest`: without a graph, over chunks of the result's points),
then the matched pairs' distances are recomputed with one.

Where the source differs: at a layer of at most S positions a side it compares the style's
layer with the previous layer's sub-sampled result features reshaped to this layer's channels
(its `cs_tmp` is only set inside the sub-sampling branch; at 512 px that is every relu4 layer):
here every layer is compared with its own features, and `style.nnst.split_layers` names the
layers the sum runs over (empty: every style layer; experiment=nnst: relu1_1 to relu3_3, the
layers their code does match at 512 px). The offsets come from a torch.Generator seeded with the
run's seed (theirs from Python's `random`).
"""

from __future__ import annotations

import torch

from nstexp.losses.base import StyleLoss, register
from nstexp.losses.nnst import CHUNK_ELEMENTS, StylePoints, nearest, rotated, unit


def subgrid_stride(h: int, w: int, side: int) -> int:
    """s_l: one position every s_l rows and columns keeps about `side` a side (1: every position)."""
    return max(1, max(h, w) // side) if max(h, w) > side else 1


def sample(f: torch.Tensor, stride: int, offset: tuple[int, int]) -> torch.Tensor:
    """The positions (y, x) = (o_y + s i, o_x + s j) of features f (B, N, H, W) -> (B, n, N), row-major."""
    oy, ox = offset
    return f[:, :, oy::stride, ox::stride].flatten(2).transpose(1, 2)


def split_distance(a: torch.Tensor, y: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """1/n Σ_i min_j (1 − cos(a_i − ā, y_j − ȳ)) of result points a (B, n, N), each sample centred by
    its own mean, against style points y (K, N) -> (B,)."""
    b, n, d = a.shape
    style = StylePoints(y)  # its centred unit copies are the ones the search compares with
    matched = style.centred.index_select(0, nearest(a, style, chunk).flatten()).view(b, n, d)
    a_c = a - a.mean(1, keepdim=True)
    return (1 - (unit(a_c) * matched.to(a_c.dtype)).sum(-1)).mean(1)


@register
class NNSTSplit(StyleLoss):
    """style.loss=nnst_split: each style layer's points matched on their own to their nearest style
    points, on a random sub-grid drawn at every evaluation (NNST's final pass)."""
    stateful = True  # its offsets, drawn at each evaluation

    name = "nnst_split"
    guided = False
    joint = True
    lbfgs_in_bf16 = False  # its cosines' small decreases: see StyleLoss.lbfgs_in_bf16
    # decomposes: none — a sub-grid from a random offset over the whole image, its points centred by their
    # mean over all of them (ā) before the nearest-neighbour search

    def __init__(self, style, seed: int = 0):
        super().__init__(style, seed)
        o = style.nnst
        self.side, self.augment = int(o.split_side), o.augment
        self.layers = set(o.split_layers)  # empty: every style layer
        self.generator = torch.Generator().manual_seed(seed)
        self.chunk: int | None = None  # result points per chunk of the search; None: CHUNK_ELEMENTS / K

    def views(self, image):
        return rotated(image, self.augment)

    def target(self, feats, shares):
        """Every view's LayerStack of the style images with a share > 0 (the sub-grid is drawn per evaluation)."""
        return [stack for stack, share in zip(feats, shares) if share > 0]

    def distance(self, f, target, guide=None):
        top = max(f.weights.values())
        total = 0
        for k, fl in f.feats.items():
            if self.layers and k not in self.layers:
                continue
            stride = subgrid_stride(*fl.shape[-2:], self.side)
            offset = tuple(int(v) for v in torch.randint(stride, (2,), generator=self.generator))
            y = torch.cat([sample(s.feats[k].float(), stride, offset)[0] for s in target])
            total = total + (f.weights[k] / top) * split_distance(sample(fl.float(), stride, offset), y, self.chunk)
        return total

    def working_bytes(self, result, styles, batch=1):
        """Per layer, at most: the result's n sampled points and their centred and unit copies, the
        style's K (with copies) and one chunk of similarities; bounded here by the stack's width at
        the images' resolution, sampled to `split_side` a side."""
        d, h, w = result
        side = lambda hh, ww: (max(1, hh // subgrid_stride(hh, ww, self.side))  # noqa: E731
                               * max(1, ww // subgrid_stride(hh, ww, self.side)))
        n = batch * side(h, w)
        views = len(rotated(torch.zeros(1, 1, 1, 1), self.augment))
        k = views * sum(side(hh, ww) for _, hh, ww in styles)
        chunk = min(n, max(1, CHUNK_ELEMENTS // max(k, 1))) * k
        return 4 * (4 * n * d + 3 * k * d + chunk)
