"""The content loss of STROTSS (Kolkin, Salavon & Shakhnarovich, CVPR 2019;
nkolkin13/STROTSS, contextual_loss.py `dp_loss`): the result keeps the content's pattern of
self-similarity, not its features.

At n = `content.self_similarity.samples` random positions, drawn anew at every evaluation and
the same for the result and the content, with hypercolumns X_i and C_i
(nstexp.losses.hypercolumn), the cosine self-distances D^X_ij = 1 − cos(X_i, X_j) (D^C of the
content likewise), each column normalized to sum 1, are compared entry by entry:

    L = 1/n Σ_i,j | D^X_ij / Σ_k D^X_kj − D^C_ij / Σ_k D^C_kj |,

(|·| smoothed within 1e-4 / n of 0, see KINK),

STROTSS's code's normalization (its paper writes 1/n²): each normalized column sums to 1, so L
is in [0, 2] whatever n. A cosine ignores a column's length, so scaling the features (all
positions together, or each by its own factor) leaves L unchanged; L is 0 on the content itself.

Given its sum, each column is independent of the others, so the n × n matrices are computed a
chunk of columns at a time, at most CHUNK_ELEMENTS entries; with more than one chunk each is
recomputed in the backward pass (torch.utils.checkpoint), so one chunk's matrices are held.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nstexp.losses.base import ContentLoss, register
from nstexp.losses.hypercolumn import hypercolumns, sample_positions, unit

CHUNK_ELEMENTS = 2**24  # entries of D^X held at once (64 MiB in fp32); the chunk of columns is this / (B n)
SUM_FLOOR = 1e-12  # under a column's sum: all-equal columns (a flat image) give 0, not 0/0
# |d| is smoothed below KINK / n (a normalized entry is 1/n on average): d² n / (2 KINK) there, |d| − KINK / (2n)
# above. On the content itself every d is 0 up to rounding, where |d|'s slope ±1 would take its
# sign from the last bits of the convolutions (which differ between a batch and one image, or
# after a pyramid's round trip); smoothed, a difference of rounding's size has a slope of its
# size. L moves by at most KINK / 2.
KINK = 1e-2


def _columns(ux: torch.Tensor, uc: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Σ_i Σ_j∈[start, stop) of the normalized distances' |difference| for unit hypercolumns
    ux (B, n, D) and uc (1 or B, n, D) -> (B,)."""
    dx = 1 - ux @ ux[:, start:stop].transpose(1, 2)  # D^X's columns start..stop, (B, n, r)
    dc = 1 - uc @ uc[:, start:stop].transpose(1, 2)
    px = dx / dx.sum(1, keepdim=True).clamp_min(SUM_FLOOR)
    pc = dc / dc.sum(1, keepdim=True).clamp_min(SUM_FLOOR)
    return F.smooth_l1_loss(px, pc.expand_as(px), reduction="none", beta=KINK / ux.shape[1]).sum((1, 2))


def self_similarity_loss(x: torch.Tensor, c: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """L of the result's hypercolumns x (B, n, D) against the content's c (1 or B, n, D) at the
    same positions -> (B,); `chunk` columns at a time (None: as many as keep B × n × chunk
    within CHUNK_ELEMENTS)."""
    b, n, _ = x.shape
    cols = chunk or max(1, CHUNK_ELEMENTS // (b * n))
    ux, uc = unit(x), unit(c.detach().to(x.dtype))
    if cols >= n:
        return _columns(ux, uc, 0, n) / n
    parts = [checkpoint(_columns, ux, uc, start, min(start + cols, n), use_reentrant=False)
             for start in range(0, n, cols)]
    return torch.stack(parts).sum(0) / n


@register
class SelfSimilarity(ContentLoss):
    """content.loss=self_similarity: the L1 distance between the result's and the content's
    column-normalized cosine self-distances of hypercolumns of all the content layers at once."""
    stateful = True  # its positions, drawn at each evaluation

    name = "self_similarity"
    guided = False  # a mask has no place in a comparison of all pairs of positions
    joint = True
    # decomposes: none — all pairs of positions drawn at random over the whole image, each column of
    # distances normalized by its sum over all of them

    def __init__(self, content, seed: int = 0):
        super().__init__(content, seed)
        o = content.self_similarity
        self.samples, self.scale = int(o.samples), float(o.scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.chunk: int | None = None  # columns per chunk; None: CHUNK_ELEMENTS / (B n)

    def target(self, p):
        return p  # the content's LayerStack, read at each evaluation's positions

    def distance(self, f, target, guide=None):
        h, w = f.image.shape[-2:]
        if target.image.shape[-2:] != (h, w):
            raise ValueError(f"content.loss=self_similarity: the result is {h}x{w} px, the content "
                             f"{target.image.shape[-2]}x{target.image.shape[-1]} (they must match)")
        positions = sample_positions(h, w, self.samples, self.generator)
        return self_similarity_loss(hypercolumns(f, positions, self.scale),
                                    hypercolumns(target, positions, self.scale), self.chunk)

    def working_bytes(self, result, batch=1):
        """Both images' n hypercolumns (and unit copies), and one chunk's matrices: both
        distances, both normalized, their difference and its absolute value."""
        d, h, w = result
        n = min(self.samples, h * w)
        cols = min(n, max(1, CHUNK_ELEMENTS // (batch * n)))
        return 4 * (2 * (batch + 1) * n * d + 6 * batch * n * cols)
